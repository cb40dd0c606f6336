//! The audit log of admin actions: who did what, when, and the record before and after.
//! Secrets in those records (a webhook's signing secret) are stored as
//! [`REDACTED`]: the log outlives the secrets and is read more widely.
//!
//! Append-only and tamper-evident: each tenant (and the platform) has one
//! chain, `AUDIT#<tenant>`, of entries `E#<seq>`; every entry carries the hash
//! of the entry before it and its own hash (SHA-256 of its canonical JSON), and
//! the chain's head item (`HEAD`: last seq and hash) moves in the same
//! transaction as the entry is put, under a condition that never overwrites.
//! [`verify`] walks a chain and names the first broken link.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::records::{from_item, to_attrs};
use crate::store::{now_secs, Attrs, Cond, Item, Key, Page, Query, StoreError, Table, TxOp};

/// One entry of an audit chain: who did what to which target, the target
/// before and after, and the entry's place in its hash chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    pub id: String,
    pub at: i64,
    pub actor: String,
    /// The IAM identity that called the admin API, where it came through IAM auth
    /// (API Gateway's `requestContext.identity.userArn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_arn: Option<String>,
    pub action: String,
    /// The tenant the action concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub target: String,
    pub before: Value,
    pub after: Value,
    /// Position in its chain, from 1.
    #[serde(default)]
    pub seq: u64,
    /// The hash of the entry before (64 zeros for the first).
    #[serde(default)]
    pub prev_hash: String,
    /// SHA-256 (hex) of this entry's canonical JSON without `hash`.
    #[serde(default)]
    pub hash: String,
}

impl AuditRecord {
    /// The hash this entry should carry.
    pub fn compute_hash(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(fields) = v.as_object_mut() {
            fields.remove("hash");
        }
        // serde_json's maps are sorted by key: this text is canonical.
        hex::encode(Sha256::digest(v.to_string().as_bytes()))
    }
}

/// The admin making a call: the admin token's name, and the caller's IAM ARN when the
/// request came through IAM auth.
#[derive(Clone, Debug, PartialEq)]
pub struct Actor {
    pub name: String,
    pub iam_arn: Option<String>,
}

impl Actor {
    pub fn named(name: impl Into<String>) -> Self {
        Actor {
            name: name.into(),
            iam_arn: None,
        }
    }
}

/// Who an audit entry names: an actor's name, and its IAM ARN if known.
#[derive(Clone, Copy, Debug)]
pub struct Who<'a> {
    pub name: &'a str,
    pub iam_arn: Option<&'a str>,
}

impl<'a> From<&'a str> for Who<'a> {
    fn from(name: &'a str) -> Self {
        Who {
            name,
            iam_arn: None,
        }
    }
}

impl<'a> From<&'a String> for Who<'a> {
    fn from(name: &'a String) -> Self {
        Who::from(name.as_str())
    }
}

impl<'a> From<&'a Actor> for Who<'a> {
    fn from(a: &'a Actor) -> Self {
        Who {
            name: &a.name,
            iam_arn: a.iam_arn.as_deref(),
        }
    }
}

/// The `prev_hash` of a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an audit record holds in place of a secret.
pub const REDACTED: &str = "[redacted]";

/// The chain of the platform's own actions (no tenant).
pub const PLATFORM: &str = "_platform";

/// Replaces every field named `secret` or `sealed` (a secret under the vault's
/// key is still a secret), at any depth, by [`REDACTED`].
pub(crate) fn redact(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                if (name == "secret" || name == "sealed") && !field.is_null() {
                    *field = Value::String(REDACTED.into());
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

pub fn chain_pk(tenant: Option<&str>) -> String {
    format!("AUDIT#{}", tenant.unwrap_or(PLATFORM))
}

const HEAD_SK: &str = "HEAD";
const ENTRY_PREFIX: &str = "E#";

fn entry_sk(seq: u64) -> String {
    format!("{ENTRY_PREFIX}{seq:020}")
}

/// Which entries a listing or an export returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, inclusive.
    pub to: Option<i64>,
    pub actor: Option<String>,
    /// An action (`key.revoke`) or a prefix ending in `.` (`key.`).
    pub action: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.from.is_none_or(|t| r.at >= t)
            && self.to.is_none_or(|t| r.at <= t)
            && self.actor.as_ref().is_none_or(|a| *a == r.actor)
            && self.action.as_ref().is_none_or(|a| {
                *a == r.action || (a.ends_with('.') && r.action.starts_with(a.as_str()))
            })
    }
}

/// Most entries one listing call examines before answering with what it has.
const MAX_EXAMINED: usize = 5000;

/// A chain's head: its last entry's seq and hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub at: i64,
}

/// The result of walking a chain.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    pub chain: String,
    pub entries: u64,
    pub ok: bool,
    /// The head's hash when the chain holds (note it to detect later rewrites).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<Broken>,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Broken {
    /// The seq the chain expected next.
    pub seq: u64,
    /// The id of the entry found there, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub reason: String,
}

/// Checks a chain entry by entry, in chain order (seq 1 first), in constant memory.
pub struct ChainCheck {
    chain: String,
    expected_seq: u64,
    prev: String,
    broken: Option<Broken>,
}

impl ChainCheck {
    pub fn new(chain: &str) -> Self {
        ChainCheck {
            chain: chain.to_string(),
            expected_seq: 1,
            prev: GENESIS.to_string(),
            broken: None,
        }
    }

    fn fail(&mut self, id: Option<&str>, reason: String) -> bool {
        self.broken = Some(Broken {
            seq: self.expected_seq,
            id: id.map(str::to_string),
            reason,
        });
        false
    }

    /// Takes the next entry; false once the chain is broken (the rest is moot).
    pub fn push(&mut self, r: &AuditRecord) -> bool {
        if self.broken.is_some() {
            return false;
        }
        if r.seq != self.expected_seq {
            let why = if r.seq > self.expected_seq {
                format!(
                    "entry {} is missing (found {} next)",
                    self.expected_seq, r.seq
                )
            } else {
                format!("entry {} appears out of order", r.seq)
            };
            return self.fail(Some(&r.id), why);
        }
        if r.prev_hash != self.prev {
            return self.fail(
                Some(&r.id),
                "its prev_hash is not the hash of the entry before it".into(),
            );
        }
        if r.hash != r.compute_hash() {
            return self.fail(
                Some(&r.id),
                "its content does not match its hash (altered)".into(),
            );
        }
        self.prev = r.hash.clone();
        self.expected_seq += 1;
        true
    }

    /// The verdict, checking the end of the chain against its head when given.
    pub fn finish(mut self, head: Option<&Head>) -> Verdict {
        let last = self.expected_seq - 1;
        if let (None, Some(h)) = (&self.broken, head) {
            if h.seq > last {
                let why = format!(
                    "the chain ends at entry {last} but its head records {}",
                    h.seq
                );
                self.fail(None, why);
            } else if h.seq == last && h.hash != self.prev {
                self.expected_seq = last;
                self.fail(None, "the last entry's hash differs from the head's".into());
            }
        }
        let ok = self.broken.is_none();
        Verdict {
            chain: self.chain,
            entries: last,
            ok,
            head_hash: ok.then_some(self.prev),
            first_broken: self.broken,
        }
    }
}

/// Checks entries in chain order against each other and, when given, against
/// the chain's head.
pub fn verify<I>(chain: &str, entries: I, head: Option<&Head>) -> Verdict
where
    I: IntoIterator<Item = AuditRecord>,
{
    let mut check = ChainCheck::new(chain);
    for r in entries {
        if !check.push(&r) {
            break;
        }
    }
    check.finish(head)
}

#[derive(Clone)]
pub struct Audit {
    table: Arc<dyn Table>,
}

impl Audit {
    pub fn new(table: Arc<dyn Table>) -> Self {
        Audit { table }
    }

    pub async fn record<'a>(
        &self,
        actor: impl Into<Who<'a>>,
        action: &str,
        tenant_id: Option<&str>,
        target: &str,
        before: Value,
        after: Value,
    ) -> ApiResult<AuditRecord> {
        let chain = tenant_id;
        self.append(actor, action, chain, tenant_id, target, before, after, &[])
            .await
    }

    /// Appends an entry to `chain` (a tenant's, or the platform's with `None`)
    /// in one transaction with `extra` operations: all apply or none does.
    #[allow(clippy::too_many_arguments)]
    pub async fn append<'a>(
        &self,
        actor: impl Into<Who<'a>>,
        action: &str,
        chain: Option<&str>,
        tenant_id: Option<&str>,
        target: &str,
        mut before: Value,
        mut after: Value,
        extra: &[TxOp],
    ) -> ApiResult<AuditRecord> {
        let actor: Who<'_> = actor.into();
        redact(&mut before);
        redact(&mut after);
        let pk = chain_pk(chain);
        for attempt in 0..20u64 {
            let head_item = self.table.get(&Key::new(pk.clone(), HEAD_SK)).await?;
            let (head, head_version) = match &head_item {
                Some(item) => (Some(from_item::<Head>(item.clone())?), item.version),
                None => (None, 0),
            };
            let mut rec = AuditRecord {
                id: format!("aud_{}", uuid::Uuid::now_v7().simple()),
                // Times never run backwards along a chain.
                at: now_secs().max(head.as_ref().map_or(0, |h| h.at)),
                actor: actor.name.to_string(),
                caller_arn: actor.iam_arn.map(str::to_string),
                action: action.to_string(),
                tenant_id: tenant_id.map(str::to_string),
                target: target.to_string(),
                before: before.clone(),
                after: after.clone(),
                seq: head.as_ref().map_or(1, |h| h.seq + 1),
                prev_hash: head
                    .as_ref()
                    .map_or_else(|| GENESIS.to_string(), |h| h.hash.clone()),
                hash: String::new(),
            };
            rec.hash = rec.compute_hash();
            let new_head = Head {
                seq: rec.seq,
                hash: rec.hash.clone(),
                at: rec.at,
            };
            let mut head_item = Item::new(Key::new(pk.clone(), HEAD_SK), to_attrs(&new_head)?);
            head_item.version = head_version + 1;
            let head_cond = match head_version {
                0 => Cond::Absent,
                v => Cond::Version(v),
            };
            let entry = Item::new(Key::new(pk.clone(), entry_sk(rec.seq)), to_attrs(&rec)?);
            let mut ops = vec![
                TxOp::Put(head_item, head_cond),
                TxOp::Put(entry, Cond::Absent),
            ];
            ops.extend_from_slice(extra);
            match self.table.transact(&ops).await {
                Ok(()) => return Ok(rec),
                // Another writer moved the head first: chain onto its entry.
                Err(StoreError::TransactionCancelled { index: 0 | 1 }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(2 + attempt * 3)).await;
                }
                Err(StoreError::TransactionCancelled { index }) => {
                    return Err(ApiError::Conflict(format!(
                        "the audited change's condition {} failed",
                        index - 2
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Conflict(
            "the audit log is being written concurrently; retry".into(),
        ))
    }

    /// Newest first, filtered. A page may hold fewer than `limit` entries while
    /// `next` is set (the filter skipped many).
    pub async fn list(
        &self,
        tenant_id: Option<&str>,
        filter: &Filter,
        cursor: Option<String>,
        limit: usize,
    ) -> ApiResult<Page<AuditRecord>> {
        self.page(tenant_id, filter, cursor, limit, false).await
    }

    /// One page in either direction (oldest first when `forward`).
    pub async fn page(
        &self,
        tenant_id: Option<&str>,
        filter: &Filter,
        mut cursor: Option<String>,
        limit: usize,
        forward: bool,
    ) -> ApiResult<Page<AuditRecord>> {
        let mut items = Vec::new();
        let mut examined = 0;
        loop {
            let mut q = Query::new(chain_pk(tenant_id))
                .prefix(ENTRY_PREFIX)
                .limit(limit - items.len())
                .after(cursor);
            if !forward {
                q = q.backward();
            }
            let page = self.table.query(&q).await?;
            examined += page.items.len();
            let mut past_range = false;
            for item in page.items {
                let rec: AuditRecord = from_item(item)?;
                // Entries are in time order: past the range, nothing more can match.
                past_range |= if forward {
                    filter.to.is_some_and(|t| rec.at > t)
                } else {
                    filter.from.is_some_and(|t| rec.at < t)
                };
                if filter.matches(&rec) {
                    items.push(rec);
                }
            }
            cursor = page.next;
            if past_range {
                cursor = None;
            }
            if cursor.is_none() || items.len() == limit || examined >= MAX_EXAMINED {
                return Ok(Page {
                    items,
                    next: cursor,
                });
            }
        }
    }

    /// The chain's head, if it has entries.
    pub async fn head(&self, tenant_id: Option<&str>) -> ApiResult<Option<Head>> {
        match self
            .table
            .get(&Key::new(chain_pk(tenant_id), HEAD_SK))
            .await?
        {
            Some(item) => Ok(Some(from_item(item)?)),
            None => Ok(None),
        }
    }

    /// Walks a whole chain from its first entry and checks it against its head.
    pub async fn verify(&self, tenant_id: Option<&str>) -> ApiResult<Verdict> {
        let pk = chain_pk(tenant_id);
        let head = self.head(tenant_id).await?;
        let mut check = ChainCheck::new(&pk);
        let mut cursor = None;
        loop {
            let page = self
                .table
                .query(
                    &Query::new(pk.clone())
                        .prefix(ENTRY_PREFIX)
                        .limit(1000)
                        .after(cursor),
                )
                .await?;
            for item in page.items {
                if !check.push(&raw_record(item)) {
                    return Ok(check.finish(head.as_ref()));
                }
            }
            cursor = page.next;
            if cursor.is_none() {
                return Ok(check.finish(head.as_ref()));
            }
        }
    }
}

/// An entry as stored, whatever its state (an unreadable one reads as broken).
fn raw_record(item: Item) -> AuditRecord {
    let sk = item.key.sk.clone();
    let attrs: Attrs = item.attrs;
    serde_json::from_value(Value::Object(attrs)).unwrap_or_else(|_| AuditRecord {
        id: sk,
        at: 0,
        actor: String::new(),
        caller_arn: None,
        action: String::new(),
        tenant_id: None,
        target: String::new(),
        before: Value::Null,
        after: Value::Null,
        seq: 0,
        prev_hash: String::new(),
        hash: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut v = json!({"name": "acme", "alert_webhook": {"url": "https://x", "secret": "whsec_abc"},
                           "list": [{"secret": "s2"}], "none": {"secret": null},
                           "vaulted": {"secrets": [{"sealed": "v1:abc", "created_at": 1}]}});
        redact(&mut v);
        assert_eq!(v["alert_webhook"]["secret"], REDACTED);
        assert_eq!(v["alert_webhook"]["url"], "https://x");
        assert_eq!(v["list"][0]["secret"], REDACTED);
        assert_eq!(v["none"]["secret"], Value::Null);
        assert_eq!(v["name"], "acme");
        assert_eq!(v["vaulted"]["secrets"][0]["sealed"], REDACTED);
        assert_eq!(v["vaulted"]["secrets"][0]["created_at"], 1);
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    id: format!("aud_{seq}"),
                    at: 100 + seq as i64,
                    actor: "admin".into(),
                    caller_arn: None,
                    action: "tenant.update".into(),
                    tenant_id: Some("ten_1".into()),
                    target: "ten_1".into(),
                    before: json!({"n": seq}),
                    after: json!({"n": seq + 1}),
                    seq,
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                r.hash = r.compute_hash();
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn a_chain_verifies_and_names_its_first_broken_link() {
        let good = chain(5);
        let head = Head {
            seq: 5,
            hash: good[4].hash.clone(),
            at: 105,
        };
        let v = verify("c", good.clone(), Some(&head));
        assert!(v.ok && v.entries == 5, "{v:?}");
        let mut altered = good.clone();
        altered[2].after = json!({"n": 999});
        let v = verify("c", altered, Some(&head));
        assert_eq!(v.first_broken.as_ref().unwrap().seq, 3);
        assert!(v.first_broken.unwrap().reason.contains("altered"));
        let mut removed = good.clone();
        removed.remove(1);
        let v = verify("c", removed, Some(&head));
        assert_eq!(v.first_broken.unwrap().seq, 2);
        let mut rehashed = good.clone();
        rehashed[3].after = json!("forged");
        rehashed[3].hash = rehashed[3].compute_hash();
        assert_eq!(
            verify("c", rehashed, Some(&head)).first_broken.unwrap().seq,
            5
        );
        let truncated = good[..4].to_vec();
        let v = verify("c", truncated.clone(), Some(&head));
        assert!(!v.ok && v.first_broken.unwrap().reason.contains("head"));
        assert!(verify("c", truncated, None).ok);
    }

    #[test]
    fn filters() {
        let r = &chain(1)[0];
        assert!(Filter::default().matches(r));
        let f = |from, to, actor: Option<&str>, action: Option<&str>| Filter {
            from,
            to,
            actor: actor.map(str::to_string),
            action: action.map(str::to_string),
        };
        assert!(f(Some(101), Some(101), Some("admin"), Some("tenant.update")).matches(r));
        assert!(f(None, None, None, Some("tenant.")).matches(r));
        assert!(!f(None, None, None, Some("tenant")).matches(r));
        assert!(!f(Some(102), None, None, None).matches(r));
        assert!(!f(None, Some(100), None, None).matches(r));
        assert!(!f(None, None, Some("other"), None).matches(r));
    }
}
