//! The `Table` port on SQLite: one row per item, attributes as JSON text.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;

use super::{sqlite_err, Db};
use crate::store::table::{
    check_batch, check_item, check_key, check_query, check_scan, check_transaction, check_update,
    decode_cursor, decode_scan_cursor, encode_cursor, encode_scan_cursor, expiry_now,
};
use crate::store::{
    Attrs, Cond, Item, Key, Page, Query, Scan, StoreError, StoreResult, Table, TxOp, Update, Write,
};

#[derive(Clone)]
pub struct EmbeddedTable {
    db: Db,
}

impl EmbeddedTable {
    pub(super) fn new(db: Db) -> Self {
        EmbeddedTable { db }
    }
}

fn row_to_item(row: &Row<'_>) -> rusqlite::Result<(Key, i64, Option<i64>, String)> {
    Ok((
        Key::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn decode((key, version, expires_at, attrs): (Key, i64, Option<i64>, String)) -> StoreResult<Item> {
    let attrs: Attrs = serde_json::from_str(&attrs)
        .map_err(|e| StoreError::Backend(format!("corrupt item {key:?}: {e}")))?;
    Ok(Item {
        key,
        version: version as u64,
        expires_at,
        attrs,
    })
}

/// The unexpired item under `key`, read inside the caller's transaction.
fn load_live(conn: &Connection, key: &Key, now: i64) -> StoreResult<Option<Item>> {
    let row = conn
        .prepare_cached(
            "SELECT pk, sk, version, expires_at, attrs FROM items WHERE pk = ?1 AND sk = ?2",
        )
        .map_err(sqlite_err)?
        .query_row(params![key.pk, key.sk], row_to_item)
        .optional()
        .map_err(sqlite_err)?;
    Ok(row
        .map(decode)
        .transpose()?
        .filter(|item| !item.is_expired(now)))
}

fn store(conn: &Connection, item: &Item) -> StoreResult<()> {
    let attrs = Value::Object(item.attrs.clone()).to_string();
    let version = i64::try_from(item.version)
        .map_err(|_| StoreError::Invalid("version out of range".into()))?;
    conn.execute(
        "INSERT OR REPLACE INTO items (pk, sk, version, expires_at, attrs) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![item.key.pk, item.key.sk, version, item.expires_at, attrs],
    )
    .map_err(sqlite_err)?;
    Ok(())
}

fn remove(conn: &Connection, key: &Key) -> StoreResult<()> {
    conn.execute(
        "DELETE FROM items WHERE pk = ?1 AND sk = ?2",
        params![key.pk, key.sk],
    )
    .map_err(sqlite_err)?;
    Ok(())
}

/// The item an update produces from the stored one (or from nothing), and the
/// new values of the added attributes.
pub(crate) fn apply_update(
    stored: Option<Item>,
    u: &Update,
) -> StoreResult<(Item, BTreeMap<String, i64>)> {
    let mut item = stored.unwrap_or_else(|| Item {
        key: u.key.clone(),
        version: 0,
        expires_at: None,
        attrs: Attrs::new(),
    });
    let mut added = BTreeMap::new();
    for (attr, delta) in &u.add {
        let current = match item.attrs.get(attr) {
            None => 0,
            Some(v) => v.as_i64().ok_or_else(|| {
                StoreError::Invalid(format!("attribute '{attr}' is not an integer"))
            })?,
        };
        let new = current
            .checked_add(*delta)
            .ok_or_else(|| StoreError::Invalid(format!("attribute '{attr}' would overflow")))?;
        item.attrs.insert(attr.clone(), Value::from(new));
        added.insert(attr.clone(), new);
    }
    for (attr, value) in &u.set {
        item.attrs.insert(attr.clone(), value.clone());
    }
    if u.expires_at.is_some() {
        item.expires_at = u.expires_at;
    }
    Ok((item, added))
}

#[async_trait]
impl Table for EmbeddedTable {
    async fn get(&self, key: &Key) -> StoreResult<Option<Item>> {
        check_key(key)?;
        let key = key.clone();
        self.db
            .read_point(move |conn| load_live(conn, &key, expiry_now()))
            .await
    }

    async fn put(&self, item: &Item, cond: &Cond) -> StoreResult<()> {
        check_item(item)?;
        let (item, cond) = (item.clone(), cond.clone());
        self.db
            .write(move |tx| {
                let stored = load_live(tx, &item.key, expiry_now())?;
                if !cond.holds(stored.as_ref()) {
                    return Err(StoreError::ConditionFailed);
                }
                store(tx, &item)
            })
            .await
    }

    async fn update(&self, update: &Update) -> StoreResult<BTreeMap<String, i64>> {
        check_update(update)?;
        let u = update.clone();
        self.db
            .write(move |tx| {
                let stored = load_live(tx, &u.key, expiry_now())?;
                if !u.condition().holds(stored.as_ref()) {
                    return Err(StoreError::ConditionFailed);
                }
                let (item, added) = apply_update(stored, &u)?;
                store(tx, &item)?;
                Ok(added)
            })
            .await
    }

    async fn delete(&self, key: &Key, cond: &Cond) -> StoreResult<()> {
        check_key(key)?;
        let (key, cond) = (key.clone(), cond.clone());
        self.db
            .write(move |tx| {
                let stored = load_live(tx, &key, expiry_now())?;
                if !cond.holds(stored.as_ref()) {
                    return Err(StoreError::ConditionFailed);
                }
                remove(tx, &key)
            })
            .await
    }

    async fn query(&self, query: &Query) -> StoreResult<Page<Item>> {
        check_query(query)?;
        let q = query.clone();
        let after = q
            .cursor
            .as_deref()
            .map(|c| decode_cursor(&q.pk, c))
            .transpose()?;
        self.db
            .read(move |conn| {
                let (order, cmp) = if q.forward {
                    ("ASC", ">")
                } else {
                    ("DESC", "<")
                };
                let sql = format!(
                    "SELECT pk, sk, version, expires_at, attrs FROM items
                     WHERE pk = ?1 AND sk >= ?2 AND substr(sk, 1, ?3) = ?2
                       AND (expires_at IS NULL OR expires_at > ?4)
                       AND (?5 IS NULL OR sk {cmp} ?5)
                     ORDER BY sk {order} LIMIT ?6"
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(sqlite_err)?;
                let prefix_chars = q.sk_prefix.chars().count() as i64;
                let rows = stmt
                    .query_map(
                        params![
                            q.pk,
                            q.sk_prefix,
                            prefix_chars,
                            expiry_now(),
                            after,
                            (q.limit + 1) as i64
                        ],
                        row_to_item,
                    )
                    .map_err(sqlite_err)?;
                let mut items = Vec::with_capacity(q.limit + 1);
                for row in rows {
                    items.push(decode(row.map_err(sqlite_err)?)?);
                }
                let next = if items.len() > q.limit {
                    items.truncate(q.limit);
                    items.last().map(|it| encode_cursor(&q.pk, &it.key.sk))
                } else {
                    None
                };
                Ok(Page { items, next })
            })
            .await
    }

    async fn transact(&self, ops: &[TxOp]) -> StoreResult<()> {
        check_transaction(ops)?;
        let ops = ops.to_vec();
        self.db
            .write(move |tx| {
                let now = expiry_now();
                let mut stored = Vec::with_capacity(ops.len());
                for (index, op) in ops.iter().enumerate() {
                    let current = load_live(tx, op.key(), now)?;
                    let cond = match op {
                        TxOp::Put(_, c) | TxOp::Delete(_, c) | TxOp::Check(_, c) => c,
                        TxOp::Update(u) => u.condition(),
                    };
                    if !cond.holds(current.as_ref()) {
                        return Err(StoreError::TransactionCancelled { index });
                    }
                    stored.push(current);
                }
                for (op, current) in ops.iter().zip(stored) {
                    match op {
                        TxOp::Put(item, _) => store(tx, item)?,
                        TxOp::Update(u) => store(tx, &apply_update(current, u)?.0)?,
                        TxOp::Delete(key, _) => remove(tx, key)?,
                        TxOp::Check(..) => {}
                    }
                }
                Ok(())
            })
            .await
    }

    async fn scan(&self, scan: &Scan) -> StoreResult<Page<Item>> {
        check_scan(scan)?;
        let s = scan.clone();
        let after = s
            .cursor
            .as_deref()
            .map(|c| decode_scan_cursor(&s, c))
            .transpose()?;
        self.db
            .read(move |conn| {
                // Segments split by a hash of the partition key (see `segment_of`).
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT pk, sk, version, expires_at, attrs FROM items
                         WHERE (?1 IS NULL OR (pk, sk) > (?1, ?2))
                           AND (expires_at IS NULL OR expires_at > ?3)
                           AND (?4 = 1 OR tenantai_segment(pk, ?4) = ?5)
                         ORDER BY pk, sk LIMIT ?6",
                    )
                    .map_err(sqlite_err)?;
                let (after_pk, after_sk) = match &after {
                    Some(k) => (Some(k.pk.as_str()), Some(k.sk.as_str())),
                    None => (None, None),
                };
                let rows = stmt
                    .query_map(
                        params![
                            after_pk,
                            after_sk,
                            expiry_now(),
                            i64::from(s.total_segments),
                            i64::from(s.segment),
                            (s.limit + 1) as i64
                        ],
                        row_to_item,
                    )
                    .map_err(sqlite_err)?;
                let mut items = Vec::with_capacity(s.limit + 1);
                for row in rows {
                    items.push(decode(row.map_err(sqlite_err)?)?);
                }
                let next = if items.len() > s.limit {
                    items.truncate(s.limit);
                    items.last().map(|it| encode_scan_cursor(&s, &it.key))
                } else {
                    None
                };
                Ok(Page { items, next })
            })
            .await
    }

    async fn write_batch(&self, writes: &[Write]) -> StoreResult<()> {
        check_batch(writes)?;
        let writes = writes.to_vec();
        self.db
            .write(move |tx| {
                for w in &writes {
                    match w {
                        Write::Put(item) => store(tx, item)?,
                        Write::Delete(key) => remove(tx, key)?,
                    }
                }
                Ok(())
            })
            .await
    }
}
