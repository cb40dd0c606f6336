//! The answer caches (embeddings, deterministic chat completions): L1
//! in-process (moka), L2 in the table with expiry.
//!
//! Key: scope + model id + model version + hash of the canonical request, so a
//! new model version never serves old vectors. The scope is the tenant, or
//! `shared` when the tenant opted into the shared scope of a shared model.
//!
//! A computed answer goes into L1 at once and into L2 off the response path: the
//! table write (a commit on the embedded store, a round trip on DynamoDB) is not
//! the caller's wait. [`Cache::flush`] waits for the writes in flight. On Lambda
//! a write pending when the environment freezes finishes when it thaws, or is
//! lost with it: the next caller computes the answer again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::gateway::embeddings::Embeddings;
use crate::store::{now_secs, Attrs, Cond, Item, Key, Table};

/// Entries above this size stay out of the table (DynamoDB items hold 400 KB).
pub const MAX_L2_BYTES: usize = 300 * 1024;
/// Most L2 writes in flight; beyond it an answer stays in L1 only, so a slow or
/// throttled table cannot pile up writes (and their items) in memory.
const MAX_L2_WRITES: usize = 1024;

/// What a cache holds: sized for L1, written to and read from a table item.
pub trait Entry: Send + Sync + 'static {
    /// Bytes the entry takes in memory (about).
    fn weight(&self) -> usize;
    /// The item's attributes; `None` keeps it out of the table (too big, odd).
    fn encode(&self) -> Option<Attrs>;
    fn decode(attrs: &Attrs) -> Option<Self>
    where
        Self: Sized;
}

impl Entry for Embeddings {
    fn weight(&self) -> usize {
        self.vectors.iter().map(Vec::len).sum::<usize>() * 4 + 64
    }

    fn encode(&self) -> Option<Attrs> {
        let dims = self.vectors.first().map_or(0, Vec::len);
        let size = self.vectors.len() * dims * 4;
        if dims == 0 || size > MAX_L2_BYTES || self.vectors.iter().any(|v| v.len() != dims) {
            return None;
        }
        let mut bytes = Vec::with_capacity(size);
        for x in self.vectors.iter().flatten() {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let mut attrs = Attrs::new();
        attrs.insert("tokens".into(), self.prompt_tokens.into());
        attrs.insert("dims".into(), dims.into());
        attrs.insert("vectors".into(), STANDARD.encode(bytes).into());
        Some(attrs)
    }

    fn decode(attrs: &Attrs) -> Option<Self> {
        let tokens = attrs.get("tokens")?.as_u64()?;
        let dims = usize::try_from(attrs.get("dims")?.as_u64()?).ok()?;
        let bytes = STANDARD.decode(attrs.get("vectors")?.as_str()?).ok()?;
        if dims == 0 || bytes.len() % (dims * 4) != 0 {
            return None;
        }
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(Embeddings {
            vectors: floats.chunks(dims).map(<[f32]>::to_vec).collect(),
            prompt_tokens: tokens,
        })
    }
}

#[derive(Clone)]
pub struct Cache<V: Entry = Embeddings> {
    l1: moka::future::Cache<String, Arc<V>>,
    table: Arc<dyn Table>,
    ttl: Duration,
    /// L2 writes in flight, and a wake-up for [`Cache::flush`] when none are.
    writes: Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>,
}

impl Cache {
    /// The key of a request's answer: scope, model, version, request hash.
    pub fn key(scope: &str, model: &str, version: &str, request_hash: &str) -> String {
        format!("{scope}|{model}|{version}|{request_hash}")
    }
}

impl<V: Entry> Cache<V> {
    pub fn new(table: Arc<dyn Table>, l1_bytes: u64, ttl: Duration) -> Self {
        let l1 = moka::future::Cache::builder()
            .weigher(|k: &String, v: &Arc<V>| {
                u32::try_from(k.len() + v.weight()).unwrap_or(u32::MAX)
            })
            .max_capacity(l1_bytes)
            .time_to_live(ttl)
            .build();
        Cache {
            l1,
            table,
            ttl,
            writes: Arc::default(),
        }
    }

    fn table_key(key: &str) -> Key {
        let (scope, rest) = key.split_once('|').unwrap_or(("", key));
        Key::new(format!("CACHE#{scope}"), rest.to_string())
    }

    pub async fn get(&self, key: &str) -> Option<Arc<V>> {
        if let Some(hit) = self.l1.get(key).await {
            return Some(hit);
        }
        let item = match self.table.get(&Self::table_key(key)).await {
            Ok(item) => item?,
            Err(e) => {
                tracing::warn!(error = %e, "cache read failed; treated as a miss");
                return None;
            }
        };
        let e = Arc::new(V::decode(&item.attrs)?);
        self.l1.insert(key.to_string(), e.clone()).await;
        Some(e)
    }

    /// Stores an answer: in L1 now, in L2 (the table) in the background.
    pub async fn put(&self, key: &str, e: Arc<V>) {
        self.l1.insert(key.to_string(), e.clone()).await;
        let Some(attrs) = e.encode() else {
            return;
        };
        if self.writes.0.load(Ordering::SeqCst) >= MAX_L2_WRITES {
            tracing::debug!("cache write skipped: too many in flight");
            return;
        }
        let mut item = Item::new(Self::table_key(key), attrs);
        item.expires_at = Some(now_secs() + self.ttl.as_secs() as i64);
        let (table, writes) = (self.table.clone(), self.writes.clone());
        writes.0.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            if let Err(e) = table.put(&item, &Cond::Always).await {
                tracing::warn!(error = %e, "cache write failed");
            }
            if writes.0.fetch_sub(1, Ordering::SeqCst) == 1 {
                writes.1.notify_waiters();
            }
        });
    }

    /// Returns once every L2 write started before the call has finished.
    pub async fn flush(&self) {
        loop {
            let idle = self.writes.1.notified();
            if self.writes.0.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}
