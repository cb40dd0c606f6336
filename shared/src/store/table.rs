//! The `Table` port: items keyed by (pk, sk) with DynamoDB semantics.

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{now_secs, StoreError, StoreResult};

/// The free-form attributes of an item (anything JSON can hold).
pub type Attrs = serde_json::Map<String, Value>;

/// The stored names of an item's version and expiry (the DynamoDB TTL attribute).
pub const VERSION_ATTR: &str = "_version";
pub const EXPIRES_ATTR: &str = "_expires_at";

/// Attribute names the port manages itself; they may not appear in [`Attrs`].
pub const RESERVED_ATTRS: [&str; 4] = ["pk", "sk", VERSION_ATTR, EXPIRES_ATTR];

/// Most operations one transaction may hold (DynamoDB's limit).
pub const MAX_TRANSACT_OPS: usize = 25;

/// Most items one query or scan page may return.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Most segments a scan may be split into.
pub const MAX_SCAN_SEGMENTS: u32 = 1024;

/// Most writes one batch may hold (DynamoDB's BatchWriteItem limit).
pub const MAX_BATCH_WRITES: usize = 25;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Key {
            pk: pk.into(),
            sk: sk.into(),
        }
    }
}

/// One stored item.
///
/// `version` is stored as given; optimistic writers read an item, bump the
/// version and write with [`Cond::Version`] of the version they read.
/// `expires_at` (Unix seconds) makes the item read as absent from that second on,
/// whether or not the backend has physically deleted it yet.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub key: Key,
    pub version: u64,
    pub expires_at: Option<i64>,
    pub attrs: Attrs,
}

impl Item {
    pub fn new(key: Key, attrs: Attrs) -> Self {
        Item {
            key,
            version: 1,
            expires_at: None,
            attrs,
        }
    }

    pub fn is_expired(&self, now: i64) -> bool {
        is_expired(self.expires_at, now)
    }

    /// A numeric attribute, or 0 when absent.
    pub fn number(&self, attr: &str) -> i64 {
        self.attrs.get(attr).and_then(Value::as_i64).unwrap_or(0)
    }
}

pub(crate) fn is_expired(expires_at: Option<i64>, now: i64) -> bool {
    matches!(expires_at, Some(t) if t <= now)
}

/// A condition on the stored item, checked atomically with the write.
/// An expired item counts as absent.
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Always,
    /// No (unexpired) item under the key.
    Absent,
    /// An (unexpired) item exists under the key.
    Exists,
    /// The item exists with exactly this version.
    Version(u64),
    /// The numeric attribute (0 when absent or when the item is absent) is at most `max`.
    AtMost {
        attr: String,
        max: i64,
    },
}

impl Cond {
    /// Whether the condition holds against the given stored item (None = absent).
    pub fn holds(&self, stored: Option<&Item>) -> bool {
        match (self, stored) {
            (Cond::Always, _) => true,
            (Cond::Absent, s) => s.is_none(),
            (Cond::Exists, s) => s.is_some(),
            (Cond::Version(v), Some(item)) => item.version == *v,
            (Cond::Version(_), None) => false,
            (Cond::AtMost { attr, max }, s) => s.map_or(0, |i| i.number(attr)) <= *max,
        }
    }
}

/// An in-place update: atomic adds to numeric attributes, plain sets, and expiry.
/// Creates the item when absent (counters start at 0); leaves `version` alone
/// (a created item gets version 0).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Update {
    pub key: Key,
    pub add: Vec<(String, i64)>,
    pub set: Attrs,
    pub expires_at: Option<i64>,
    pub cond: Option<Cond>,
}

impl Default for Key {
    fn default() -> Self {
        Key::new("", "")
    }
}

impl Update {
    pub fn new(key: Key) -> Self {
        Update {
            key,
            ..Default::default()
        }
    }
    pub fn add(mut self, attr: impl Into<String>, delta: i64) -> Self {
        self.add.push((attr.into(), delta));
        self
    }
    pub fn set(mut self, attr: impl Into<String>, value: Value) -> Self {
        self.set.insert(attr.into(), value);
        self
    }
    pub fn expires_at(mut self, at: i64) -> Self {
        self.expires_at = Some(at);
        self
    }
    pub fn when(mut self, cond: Cond) -> Self {
        self.cond = Some(cond);
        self
    }
    pub fn condition(&self) -> &Cond {
        self.cond.as_ref().unwrap_or(&Cond::Always)
    }
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum TxOp {
    Put(Item, Cond),
    Update(Update),
    Delete(Key, Cond),
    Check(Key, Cond),
}

impl TxOp {
    pub fn key(&self) -> &Key {
        match self {
            TxOp::Put(item, _) => &item.key,
            TxOp::Update(u) => &u.key,
            TxOp::Delete(k, _) | TxOp::Check(k, _) => k,
        }
    }
}

/// A query of the items under one partition key, in sort-key order.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub pk: String,
    pub sk_prefix: String,
    pub forward: bool,
    pub limit: usize,
    /// The `next` token of the previous page.
    pub cursor: Option<String>,
}

impl Query {
    pub fn new(pk: impl Into<String>) -> Self {
        Query {
            pk: pk.into(),
            sk_prefix: String::new(),
            forward: true,
            limit: 100,
            cursor: None,
        }
    }
    pub fn prefix(mut self, p: impl Into<String>) -> Self {
        self.sk_prefix = p.into();
        self
    }
    pub fn backward(mut self) -> Self {
        self.forward = false;
        self
    }
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n;
        self
    }
    pub fn after(mut self, cursor: Option<String>) -> Self {
        self.cursor = cursor;
        self
    }
}

/// A scan of the whole table, split into `total_segments` disjoint segments that
/// may be read in parallel; every item belongs to exactly one segment. For
/// backups and jobs, never for the request path.
#[derive(Clone, Debug, PartialEq)]
pub struct Scan {
    pub segment: u32,
    pub total_segments: u32,
    pub limit: usize,
    /// The `next` token of the previous page of this segment.
    pub cursor: Option<String>,
}

impl Scan {
    /// Segment `segment` of `total` (the whole table with `segment(0, 1)`).
    pub fn segment(segment: u32, total: u32) -> Self {
        Scan {
            segment,
            total_segments: total,
            limit: 100,
            cursor: None,
        }
    }
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n;
        self
    }
    pub fn after(mut self, cursor: Option<String>) -> Self {
        self.cursor = cursor;
        self
    }
}

/// One unconditional write of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Put(Item),
    Delete(Key),
}

impl Write {
    pub fn key(&self) -> &Key {
        match self {
            Write::Put(item) => &item.key,
            Write::Delete(key) => key,
        }
    }
}

/// One page of results and the opaque token of the next page, if there may be one.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

#[async_trait]
pub trait Table: Send + Sync {
    /// A strongly consistent read; an expired item reads as `None`.
    async fn get(&self, key: &Key) -> StoreResult<Option<Item>>;
    /// Writes the whole item if `cond` holds, else [`StoreError::ConditionFailed`].
    async fn put(&self, item: &Item, cond: &Cond) -> StoreResult<()>;
    /// Applies an update atomically; returns the new values of the added attributes.
    async fn update(&self, update: &Update) -> StoreResult<BTreeMap<String, i64>>;
    /// Deletes the item if `cond` holds; deleting an absent item with `Cond::Always` succeeds.
    async fn delete(&self, key: &Key, cond: &Cond) -> StoreResult<()>;
    /// One page of the items under `pk` whose sort key starts with the prefix.
    async fn query(&self, query: &Query) -> StoreResult<Page<Item>>;
    /// All or nothing: either every operation applies or none does, and the
    /// error names the first operation whose condition failed.
    async fn transact(&self, ops: &[TxOp]) -> StoreResult<()>;
    /// One page of one segment of the whole table, unexpired items only, in no
    /// promised order; consistent reads where the backend offers them (each page
    /// is read consistently, the scan as a whole is not a snapshot).
    async fn scan(&self, scan: &Scan) -> StoreResult<Page<Item>>;
    /// Up to [`MAX_BATCH_WRITES`] unconditional puts and deletes of distinct
    /// items. Each write applies exactly once when the call succeeds; on an error
    /// some may have applied (every write is idempotent: retry the batch).
    async fn write_batch(&self, writes: &[Write]) -> StoreResult<()>;
}

// ---- checks shared by both adapters ----

fn check_attr_name(name: &str) -> StoreResult<()> {
    if name.is_empty() || RESERVED_ATTRS.contains(&name) {
        return Err(StoreError::Invalid(format!(
            "attribute name '{name}' is empty or reserved"
        )));
    }
    Ok(())
}

pub(crate) fn check_key(key: &Key) -> StoreResult<()> {
    if key.pk.is_empty() || key.sk.is_empty() {
        return Err(StoreError::Invalid(
            "partition and sort keys must not be empty".into(),
        ));
    }
    if key.pk.len() > 2048 || key.sk.len() > 1024 {
        return Err(StoreError::Invalid("key too long".into()));
    }
    Ok(())
}

pub(crate) fn check_item(item: &Item) -> StoreResult<()> {
    check_key(&item.key)?;
    item.attrs.keys().try_for_each(|k| check_attr_name(k))
}

pub(crate) fn check_update(u: &Update) -> StoreResult<()> {
    check_key(&u.key)?;
    let mut seen = HashSet::new();
    for name in u.add.iter().map(|(n, _)| n).chain(u.set.keys()) {
        check_attr_name(name)?;
        if !seen.insert(name) {
            return Err(StoreError::Invalid(format!(
                "attribute '{name}' appears twice in one update"
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_query(q: &Query) -> StoreResult<()> {
    if q.pk.is_empty() {
        return Err(StoreError::Invalid("query needs a partition key".into()));
    }
    if q.limit == 0 || q.limit > MAX_PAGE_SIZE {
        return Err(StoreError::Invalid(format!(
            "page size must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    Ok(())
}

pub(crate) fn check_scan(s: &Scan) -> StoreResult<()> {
    if s.total_segments == 0 || s.total_segments > MAX_SCAN_SEGMENTS {
        return Err(StoreError::Invalid(format!(
            "a scan has 1 to {MAX_SCAN_SEGMENTS} segments"
        )));
    }
    if s.segment >= s.total_segments {
        return Err(StoreError::Invalid(format!(
            "segment {} is outside 0..{}",
            s.segment, s.total_segments
        )));
    }
    if s.limit == 0 || s.limit > MAX_PAGE_SIZE {
        return Err(StoreError::Invalid(format!(
            "page size must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    Ok(())
}

pub(crate) fn check_batch(writes: &[Write]) -> StoreResult<()> {
    if writes.is_empty() || writes.len() > MAX_BATCH_WRITES {
        return Err(StoreError::Invalid(format!(
            "a batch holds 1 to {MAX_BATCH_WRITES} writes, got {}",
            writes.len()
        )));
    }
    let mut keys = HashSet::new();
    for w in writes {
        match w {
            Write::Put(item) => check_item(item)?,
            Write::Delete(key) => check_key(key)?,
        }
        if !keys.insert(w.key()) {
            return Err(StoreError::Invalid(
                "a batch may touch each item only once".into(),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_transaction(ops: &[TxOp]) -> StoreResult<()> {
    if ops.is_empty() || ops.len() > MAX_TRANSACT_OPS {
        return Err(StoreError::Invalid(format!(
            "a transaction holds 1 to {MAX_TRANSACT_OPS} operations, got {}",
            ops.len()
        )));
    }
    let mut keys = HashSet::new();
    for op in ops {
        match op {
            TxOp::Put(item, _) => check_item(item)?,
            TxOp::Update(u) => check_update(u)?,
            TxOp::Delete(k, _) | TxOp::Check(k, _) => check_key(k)?,
        }
        if !keys.insert(op.key()) {
            return Err(StoreError::Invalid(
                "a transaction may touch each item only once".into(),
            ));
        }
    }
    Ok(())
}

/// The current time as the adapters see it for expiry.
pub(crate) fn expiry_now() -> i64 {
    now_secs()
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    pk: String,
    sk: String,
}

/// A page token that makes a query start after the sort key `sk` of `pk`
/// (which need not exist): how an API's `after=<id>` becomes a query.
pub fn cursor_after(pk: &str, sk: &str) -> String {
    encode_cursor(pk, sk)
}

/// An opaque continuation token: the last sort key returned, bound to its partition.
pub(crate) fn encode_cursor(pk: &str, sk: &str) -> String {
    let json = serde_json::json!({ "pk": pk, "sk": sk }).to_string();
    URL_SAFE_NO_PAD.encode(json)
}

pub(crate) fn decode_cursor(pk: &str, token: &str) -> StoreResult<String> {
    let invalid = || StoreError::Invalid("malformed page token".into());
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if cursor.pk != pk {
        return Err(StoreError::Invalid(
            "page token belongs to another query".into(),
        ));
    }
    Ok(cursor.sk)
}

#[derive(Serialize, Deserialize)]
struct ScanCursor {
    seg: u32,
    of: u32,
    pk: String,
    sk: String,
}

/// An opaque scan token: the last key returned, bound to its segment.
pub(crate) fn encode_scan_cursor(scan: &Scan, last: &Key) -> String {
    let json = serde_json::json!({
        "seg": scan.segment, "of": scan.total_segments, "pk": last.pk, "sk": last.sk,
    });
    URL_SAFE_NO_PAD.encode(json.to_string())
}

/// The last key a scan token holds, if it belongs to this segment.
pub(crate) fn decode_scan_cursor(scan: &Scan, token: &str) -> StoreResult<Key> {
    let invalid = || StoreError::Invalid("malformed page token".into());
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let c: ScanCursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if c.seg != scan.segment || c.of != scan.total_segments {
        return Err(StoreError::Invalid(
            "page token belongs to another scan segment".into(),
        ));
    }
    Ok(Key::new(c.pk, c.sk))
}

/// The segment of `total` that a partition key falls in (FNV-1a of the key),
/// for adapters that split a scan themselves. Stable across processes.
pub fn segment_of(pk: &str, total: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pk.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(total.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(n: i64) -> Item {
        let mut attrs = Attrs::new();
        attrs.insert("n".into(), json!(n));
        Item::new(Key::new("p", "s"), attrs)
    }

    #[test]
    fn conditions_against_stored_state() {
        let it = item(5);
        assert!(Cond::Absent.holds(None));
        assert!(!Cond::Absent.holds(Some(&it)));
        assert!(Cond::Exists.holds(Some(&it)));
        assert!(Cond::Version(1).holds(Some(&it)));
        assert!(!Cond::Version(2).holds(Some(&it)));
        assert!(!Cond::Version(1).holds(None));
        let at_most = |max| Cond::AtMost {
            attr: "n".into(),
            max,
        };
        assert!(at_most(5).holds(Some(&it)));
        assert!(!at_most(4).holds(Some(&it)));
        assert!(at_most(0).holds(None));
        assert!(!at_most(-1).holds(None));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any string is a page token or a clean refusal; a token made for one
        /// partition (one tenant's) never opens another.
        #[test]
        fn page_tokens_decode_cleanly_and_stay_in_their_partition(
            junk in "\\PC{0,64}",
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            pk in "[A-Z]{1,6}#[a-z0-9_]{0,12}",
            other in "[A-Z]{1,6}#[a-z0-9_]{0,12}",
            sk in "\\PC{0,40}",
        ) {
            let _ = decode_cursor(&pk, &junk);
            let forged = URL_SAFE_NO_PAD.encode(&bytes);
            if let Ok(found) = decode_cursor(&pk, &forged) {
                // Only a JSON cursor naming this very partition decodes.
                let c: Cursor = serde_json::from_slice(&bytes).unwrap();
                proptest::prop_assert_eq!(c.pk, pk.clone());
                proptest::prop_assert_eq!(found, c.sk);
            }
            let token = encode_cursor(&pk, &sk);
            proptest::prop_assert_eq!(decode_cursor(&pk, &token).unwrap(), sk);
            if other != pk {
                proptest::prop_assert!(decode_cursor(&other, &token).is_err());
            }
            let scan = Scan::segment(0, 1);
            let _ = decode_scan_cursor(&scan, &junk);
            let _ = decode_scan_cursor(&scan, &forged);
        }
    }

    #[test]
    fn cursor_round_trip_and_binding() {
        let token = encode_cursor("tenant#1", "usage#2026-11-24");
        assert_eq!(
            decode_cursor("tenant#1", &token).unwrap(),
            "usage#2026-11-24"
        );
        assert!(matches!(
            decode_cursor("tenant#2", &token),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            decode_cursor("tenant#1", "not a token!"),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn transaction_checks() {
        let put = |sk: &str| TxOp::Put(Item::new(Key::new("p", sk), Attrs::new()), Cond::Always);
        assert!(check_transaction(&[]).is_err());
        assert!(check_transaction(&[put("a"), put("a")]).is_err());
        let many: Vec<_> = (0..26).map(|i| put(&i.to_string())).collect();
        assert!(check_transaction(&many).is_err());
        assert!(check_transaction(&many[..25]).is_ok());
    }

    #[test]
    fn scan_checks_and_tokens() {
        assert!(check_scan(&Scan::segment(0, 1)).is_ok());
        assert!(check_scan(&Scan::segment(1, 1)).is_err());
        assert!(check_scan(&Scan::segment(0, 0)).is_err());
        assert!(check_scan(&Scan::segment(0, 2).limit(0)).is_err());
        let s = Scan::segment(1, 4);
        let token = encode_scan_cursor(&s, &Key::new("a", "b"));
        assert_eq!(decode_scan_cursor(&s, &token).unwrap(), Key::new("a", "b"));
        assert!(decode_scan_cursor(&Scan::segment(2, 4), &token).is_err());
        assert!(decode_scan_cursor(&s, "junk!").is_err());
        let spread: HashSet<u32> = (0..64).map(|i| segment_of(&format!("T#{i}"), 4)).collect();
        assert_eq!(spread.len(), 4);
    }

    #[test]
    fn batch_checks() {
        let put = |sk: &str| Write::Put(Item::new(Key::new("p", sk), Attrs::new()));
        assert!(check_batch(&[]).is_err());
        assert!(check_batch(&[put("a"), Write::Delete(Key::new("p", "a"))]).is_err());
        let many: Vec<_> = (0..26).map(|i| put(&i.to_string())).collect();
        assert!(check_batch(&many).is_err());
        assert!(check_batch(&many[..25]).is_ok());
    }

    #[test]
    fn reserved_attributes_are_refused() {
        let mut it = item(1);
        it.attrs.insert(VERSION_ATTR.into(), json!(3));
        assert!(matches!(check_item(&it), Err(StoreError::Invalid(_))));
        let u = Update::new(Key::new("p", "s"))
            .add("n", 1)
            .set("n", json!(1));
        assert!(check_update(&u).is_err());
    }
}
