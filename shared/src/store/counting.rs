//! A table that counts the writes it passes on to another: how benchmarks and
//! tests see what a caller costs the table (a claim, a settlement).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Cond, Item, Key, Page, Query, Scan, StoreResult, Table, TxOp, Update, Write};

pub struct CountingTable {
    inner: Arc<dyn Table>,
    writes: AtomicU64,
}

impl CountingTable {
    pub fn new(inner: Arc<dyn Table>) -> Arc<CountingTable> {
        Arc::new(CountingTable {
            inner,
            writes: AtomicU64::new(0),
        })
    }

    /// Write calls so far (a transaction or a batch counts once).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Table for CountingTable {
    async fn get(&self, key: &Key) -> StoreResult<Option<Item>> {
        self.inner.get(key).await
    }
    async fn put(&self, item: &Item, cond: &Cond) -> StoreResult<()> {
        self.count();
        self.inner.put(item, cond).await
    }
    async fn update(&self, update: &Update) -> StoreResult<BTreeMap<String, i64>> {
        self.count();
        self.inner.update(update).await
    }
    async fn delete(&self, key: &Key, cond: &Cond) -> StoreResult<()> {
        self.count();
        self.inner.delete(key, cond).await
    }
    async fn query(&self, query: &Query) -> StoreResult<Page<Item>> {
        self.inner.query(query).await
    }
    async fn transact(&self, ops: &[TxOp]) -> StoreResult<()> {
        self.count();
        self.inner.transact(ops).await
    }
    async fn scan(&self, scan: &Scan) -> StoreResult<Page<Item>> {
        self.inner.scan(scan).await
    }
    async fn write_batch(&self, writes: &[Write]) -> StoreResult<()> {
        self.count();
        self.inner.write_batch(writes).await
    }
}
