//! The `Table` port on one DynamoDB table (pk, sk strings; `expires_at` is the TTL attribute).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, DeleteRequest, Put, PutRequest, ReturnValue,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update as DynUpdate, WriteRequest,
};
use aws_sdk_dynamodb::Client;

use super::{build_err, sdk_err};
use crate::store::table::{
    check_batch, check_item, check_key, check_query, check_scan, check_transaction, check_update,
    decode_cursor, decode_scan_cursor, encode_cursor, encode_scan_cursor, expiry_now, is_expired,
    EXPIRES_ATTR, VERSION_ATTR,
};
use crate::store::{
    Attrs, Cond, Item, Key, Page, Query, Scan, StoreError, StoreResult, Table, TxOp, Update, Write,
};

type AvMap = HashMap<String, AttributeValue>;

/// How often an update retries after clearing an expired item, or a transaction
/// after a conflict with a concurrent one.
const RETRIES: usize = 8;

#[derive(Clone, Debug)]
pub struct DynamoTable {
    client: Client,
    table: String,
}

impl DynamoTable {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoTable {
            client,
            table: table.into(),
        }
    }

    /// The stored item, expired or not.
    async fn get_raw(&self, key: &Key) -> StoreResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_av(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_err)?;
        out.item.map(from_av).transpose()
    }

    /// Physically removes an item that has expired (and only if it still has
    /// that expiry), so a condition can see it as absent.
    async fn clear_expired(&self, key: &Key, expires_at: i64) -> StoreResult<()> {
        let mut e = Expr::default();
        let cond = format!("{} = {}", e.name(EXPIRES_ATTR), e.value(num(expires_at)));
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_av(key)))
            .condition_expression(cond)
            .set_expression_attribute_names(Some(e.names))
            .set_expression_attribute_values(Some(e.values))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|x| x.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(sdk_err(err)),
        }
    }

    /// After a failed condition: if the item was only expired, clear it and say
    /// "retry"; otherwise the condition truly failed.
    async fn expired_in_the_way(&self, key: &Key) -> StoreResult<bool> {
        match self.get_raw(key).await? {
            Some(Item {
                expires_at: Some(t),
                ..
            }) if is_expired(Some(t), expiry_now()) => {
                self.clear_expired(key, t).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

fn num(n: i64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn key_av(key: &Key) -> AvMap {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(key.pk.clone())),
        ("sk".to_string(), AttributeValue::S(key.sk.clone())),
    ])
}

fn to_av(item: &Item) -> StoreResult<AvMap> {
    let mut map: AvMap = serde_dynamo::aws_sdk_dynamodb_1::to_item(&item.attrs)
        .map_err(|e| StoreError::Invalid(format!("attributes cannot be stored: {e}")))?;
    map.extend(key_av(&item.key));
    map.insert(
        VERSION_ATTR.into(),
        AttributeValue::N(item.version.to_string()),
    );
    if let Some(t) = item.expires_at {
        map.insert(EXPIRES_ATTR.to_string(), num(t));
    }
    Ok(map)
}

fn from_av(mut map: AvMap) -> StoreResult<Item> {
    let corrupt = |what: &str| StoreError::Backend(format!("stored item has no valid {what}"));
    let mut string = |name: &str| match map.remove(name) {
        Some(AttributeValue::S(s)) => Ok(s),
        _ => Err(corrupt(name)),
    };
    let key = Key::new(string("pk")?, string("sk")?);
    let number = |v: Option<AttributeValue>| match v {
        Some(AttributeValue::N(n)) => n.parse::<i64>().ok(),
        _ => None,
    };
    let version = number(map.remove(VERSION_ATTR)).unwrap_or(0).max(0) as u64;
    let expires_at = number(map.remove(EXPIRES_ATTR));
    let attrs: Attrs = serde_dynamo::aws_sdk_dynamodb_1::from_item(map)
        .map_err(|e| StoreError::Backend(format!("stored item {key:?} is unreadable: {e}")))?;
    Ok(Item {
        key,
        version,
        expires_at,
        attrs,
    })
}

/// Builds expression attribute names and values with placeholders, so no
/// attribute name can clash with DynamoDB's reserved words.
#[derive(Default)]
struct Expr {
    names: HashMap<String, String>,
    values: AvMap,
}

impl Expr {
    fn name(&mut self, attr: &str) -> String {
        if let Some((p, _)) = self.names.iter().find(|(_, a)| a.as_str() == attr) {
            return p.clone();
        }
        let p = format!("#n{}", self.names.len());
        self.names.insert(p.clone(), attr.to_string());
        p
    }

    fn value(&mut self, v: AttributeValue) -> String {
        let p = format!(":v{}", self.values.len());
        self.values.insert(p.clone(), v);
        p
    }

    /// "The item has not expired" (true for items without expiry).
    fn live(&mut self, now: i64) -> String {
        let exp = self.name(EXPIRES_ATTR);
        let now = self.value(num(now));
        format!("(attribute_not_exists({exp}) OR {exp} > {now})")
    }

    /// The condition as an expression, treating an expired item as absent.
    fn cond(&mut self, cond: &Cond, now: i64) -> Option<String> {
        Some(match cond {
            Cond::Always => return None,
            Cond::Absent => {
                let pk = self.name("pk");
                let exp = self.name(EXPIRES_ATTR);
                let now = self.value(num(now));
                format!("(attribute_not_exists({pk}) OR {exp} <= {now})")
            }
            Cond::Exists => {
                let pk = self.name("pk");
                format!("(attribute_exists({pk}) AND {})", self.live(now))
            }
            Cond::Version(v) => {
                let ver = self.name(VERSION_ATTR);
                let v = self.value(AttributeValue::N(v.to_string()));
                format!("({ver} = {v} AND {})", self.live(now))
            }
            Cond::AtMost { attr, max } => {
                let a = self.name(attr);
                let m = self.value(num(*max));
                if *max >= 0 {
                    // Absent, expired or without the attribute: it counts as 0 <= max.
                    let exp = self.name(EXPIRES_ATTR);
                    let now = self.value(num(now));
                    format!("(attribute_not_exists({a}) OR {a} <= {m} OR {exp} <= {now})")
                } else {
                    format!("({a} <= {m} AND {})", self.live(now))
                }
            }
        })
    }

    /// The update expression of `u`, guarded so it never applies to an expired item.
    fn update(&mut self, u: &Update, now: i64) -> (String, String) {
        let mut adds = Vec::new();
        for (attr, delta) in &u.add {
            adds.push(format!("{} {}", self.name(attr), self.value(num(*delta))));
        }
        let mut sets = Vec::new();
        for (attr, v) in &u.set {
            let av = serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(v)
                .unwrap_or(AttributeValue::Null(true));
            sets.push(format!("{} = {}", self.name(attr), self.value(av)));
        }
        if let Some(t) = u.expires_at {
            sets.push(format!(
                "{} = {}",
                self.name(EXPIRES_ATTR),
                self.value(num(t))
            ));
        }
        let mut expr = String::new();
        if !sets.is_empty() {
            expr.push_str(&format!("SET {} ", sets.join(", ")));
        }
        if !adds.is_empty() {
            expr.push_str(&format!("ADD {}", adds.join(", ")));
        }
        if expr.is_empty() {
            // Nothing to change: still create the item, as an empty update would.
            let v = self.name(VERSION_ATTR);
            let zero = self.value(num(0));
            expr = format!("SET {v} = if_not_exists({v}, {zero})");
        }
        let guard = self.live(now);
        let cond = match self.cond(u.condition(), now) {
            Some(c) => format!("{c} AND {guard}"),
            None => guard,
        };
        (expr.trim().to_string(), cond)
    }

    fn names(&self) -> Option<HashMap<String, String>> {
        Some(self.names.clone()).filter(|n| !n.is_empty())
    }

    fn values(&self) -> Option<AvMap> {
        Some(self.values.clone()).filter(|v| !v.is_empty())
    }
}

fn tx_item(table: &str, op: &TxOp, now: i64) -> StoreResult<TransactWriteItem> {
    let mut e = Expr::default();
    let fail_old = ReturnValuesOnConditionCheckFailure::AllOld;
    let item = match op {
        TxOp::Put(item, cond) => {
            let c = e.cond(cond, now);
            let put = Put::builder()
                .table_name(table)
                .set_item(Some(to_av(item)?))
                .set_condition_expression(c)
                .set_expression_attribute_names(e.names())
                .set_expression_attribute_values(e.values())
                .return_values_on_condition_check_failure(fail_old)
                .build()
                .map_err(build_err)?;
            TransactWriteItem::builder().put(put).build()
        }
        TxOp::Update(u) => {
            let (expr, cond) = e.update(u, now);
            let up = DynUpdate::builder()
                .table_name(table)
                .set_key(Some(key_av(&u.key)))
                .update_expression(expr)
                .condition_expression(cond)
                .set_expression_attribute_names(e.names())
                .set_expression_attribute_values(e.values())
                .return_values_on_condition_check_failure(fail_old)
                .build()
                .map_err(build_err)?;
            TransactWriteItem::builder().update(up).build()
        }
        TxOp::Delete(key, cond) => {
            let c = e.cond(cond, now);
            let del = Delete::builder()
                .table_name(table)
                .set_key(Some(key_av(key)))
                .set_condition_expression(c)
                .set_expression_attribute_names(e.names())
                .set_expression_attribute_values(e.values())
                .return_values_on_condition_check_failure(fail_old)
                .build()
                .map_err(build_err)?;
            TransactWriteItem::builder().delete(del).build()
        }
        TxOp::Check(key, cond) => {
            // A check needs an expression; `Always` becomes one that always holds.
            let c = e.cond(cond, now).unwrap_or_else(|| {
                let pk = e.name("pk");
                format!("(attribute_exists({pk}) OR attribute_not_exists({pk}))")
            });
            let check = ConditionCheck::builder()
                .table_name(table)
                .set_key(Some(key_av(key)))
                .condition_expression(c)
                .set_expression_attribute_names(e.names())
                .set_expression_attribute_values(e.values())
                .return_values_on_condition_check_failure(fail_old)
                .build()
                .map_err(build_err)?;
            TransactWriteItem::builder().condition_check(check).build()
        }
    };
    Ok(item)
}

#[async_trait]
impl Table for DynamoTable {
    async fn get(&self, key: &Key) -> StoreResult<Option<Item>> {
        check_key(key)?;
        Ok(self
            .get_raw(key)
            .await?
            .filter(|i| !i.is_expired(expiry_now())))
    }

    async fn put(&self, item: &Item, cond: &Cond) -> StoreResult<()> {
        check_item(item)?;
        let mut e = Expr::default();
        let c = e.cond(cond, expiry_now());
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_av(item)?))
            .set_condition_expression(c)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(e.values())
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|x| x.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::ConditionFailed)
            }
            Err(err) => Err(sdk_err(err)),
        }
    }

    async fn update(&self, update: &Update) -> StoreResult<BTreeMap<String, i64>> {
        check_update(update)?;
        for _ in 0..RETRIES {
            let mut e = Expr::default();
            let (expr, cond) = e.update(update, expiry_now());
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key_av(&update.key)))
                .update_expression(expr)
                .condition_expression(cond)
                .set_expression_attribute_names(e.names())
                .set_expression_attribute_values(e.values())
                .return_values(ReturnValue::UpdatedNew)
                .send()
                .await;
            match res {
                Ok(out) => {
                    let attrs = out.attributes.unwrap_or_default();
                    let mut added = BTreeMap::new();
                    for (name, _) in &update.add {
                        let value = match attrs.get(name) {
                            Some(AttributeValue::N(n)) => n.parse::<i64>().ok(),
                            _ => None,
                        }
                        .ok_or_else(|| {
                            StoreError::Backend(format!("update returned no value for '{name}'"))
                        })?;
                        added.insert(name.clone(), value);
                    }
                    return Ok(added);
                }
                Err(err)
                    if err
                        .as_service_error()
                        .is_some_and(|x| x.is_conditional_check_failed_exception()) =>
                {
                    if !self.expired_in_the_way(&update.key).await? {
                        return Err(StoreError::ConditionFailed);
                    }
                }
                Err(err) => {
                    return Err(match sdk_err(err) {
                        StoreError::Backend(text)
                            if text.contains("incorrect data type")
                                || text.contains("operand type") =>
                        {
                            StoreError::Invalid(format!(
                                "an added attribute is not a number: {text}"
                            ))
                        }
                        other => other,
                    });
                }
            }
        }
        Err(StoreError::Backend("update kept racing with expiry".into()))
    }

    async fn delete(&self, key: &Key, cond: &Cond) -> StoreResult<()> {
        check_key(key)?;
        let mut e = Expr::default();
        let c = e.cond(cond, expiry_now());
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_av(key)))
            .set_condition_expression(c)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(e.values())
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|x| x.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::ConditionFailed)
            }
            Err(err) => Err(sdk_err(err)),
        }
    }

    async fn query(&self, query: &Query) -> StoreResult<Page<Item>> {
        check_query(query)?;
        let mut e = Expr::default();
        let pk = e.name("pk");
        let pkv = e.value(AttributeValue::S(query.pk.clone()));
        let mut key_cond = format!("{pk} = {pkv}");
        if !query.sk_prefix.is_empty() {
            let sk = e.name("sk");
            let p = e.value(AttributeValue::S(query.sk_prefix.clone()));
            key_cond.push_str(&format!(" AND begins_with({sk}, {p})"));
        }
        let start = match &query.cursor {
            Some(c) => Some(key_av(&Key::new(
                query.pk.clone(),
                decode_cursor(&query.pk, c)?,
            ))),
            None => None,
        };
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression(key_cond)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(e.values())
            .set_exclusive_start_key(start)
            .scan_index_forward(query.forward)
            .limit(i32::try_from(query.limit).unwrap_or(i32::MAX))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_err)?;
        let now = expiry_now();
        let mut items = Vec::new();
        for raw in out.items.unwrap_or_default() {
            let item = from_av(raw)?;
            if !item.is_expired(now) {
                items.push(item);
            }
        }
        let next = match out.last_evaluated_key.as_ref().and_then(|k| k.get("sk")) {
            Some(AttributeValue::S(sk)) => Some(encode_cursor(&query.pk, sk)),
            _ => None,
        };
        Ok(Page { items, next })
    }

    async fn transact(&self, ops: &[TxOp]) -> StoreResult<()> {
        check_transaction(ops)?;
        let mut backoff = Duration::from_millis(10);
        for _ in 0..RETRIES {
            let now = expiry_now();
            let items = ops
                .iter()
                .map(|op| tx_item(&self.table, op, now))
                .collect::<StoreResult<Vec<_>>>()?;
            let res = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await;
            let err = match res {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            let Some(cancelled) = err
                .as_service_error()
                .and_then(|x| match x {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => Some(c),
                    _ => None,
                })
            else {
                if err.as_service_error().is_some_and(|x| x.is_transaction_in_progress_exception()) {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
                return Err(sdk_err(err));
            };
            let codes: Vec<_> = cancelled
                .cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("None").to_string())
                .collect();
            if let Some(index) = codes.iter().position(|c| c == "ConditionalCheckFailed") {
                // An update blocked only by an expired item clears it and retries.
                if matches!(ops[index], TxOp::Update(_))
                    && self.expired_in_the_way(ops[index].key()).await?
                {
                    continue;
                }
                return Err(StoreError::TransactionCancelled { index });
            }
            if codes.iter().any(|c| c == "TransactionConflict") {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                continue;
            }
            return Err(StoreError::Backend(format!(
                "transaction cancelled: {codes:?}"
            )));
        }
        Err(StoreError::Backend(
            "transaction kept conflicting with concurrent writes".into(),
        ))
    }

    async fn scan(&self, scan: &Scan) -> StoreResult<Page<Item>> {
        check_scan(scan)?;
        let start = scan
            .cursor
            .as_deref()
            .map(|c| decode_scan_cursor(scan, c).map(|k| key_av(&k)))
            .transpose()?;
        let mut req = self
            .client
            .scan()
            .table_name(&self.table)
            .set_exclusive_start_key(start)
            .limit(i32::try_from(scan.limit).unwrap_or(i32::MAX))
            .consistent_read(true);
        if scan.total_segments > 1 {
            req = req
                .segment(scan.segment as i32)
                .total_segments(scan.total_segments as i32);
        }
        let out = req.send().await.map_err(sdk_err)?;
        let now = expiry_now();
        let mut items = Vec::new();
        for raw in out.items.unwrap_or_default() {
            let item = from_av(raw)?;
            if !item.is_expired(now) {
                items.push(item);
            }
        }
        let next = match out.last_evaluated_key {
            Some(mut k) => match (k.remove("pk"), k.remove("sk")) {
                (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) => {
                    Some(encode_scan_cursor(scan, &Key::new(pk, sk)))
                }
                _ => None,
            },
            None => None,
        };
        Ok(Page { items, next })
    }

    async fn write_batch(&self, writes: &[Write]) -> StoreResult<()> {
        check_batch(writes)?;
        let mut pending = writes
            .iter()
            .map(|w| match w {
                Write::Put(item) => Ok(WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(to_av(item)?))
                            .build()
                            .map_err(build_err)?,
                    )
                    .build()),
                Write::Delete(key) => Ok(WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .set_key(Some(key_av(key)))
                            .build()
                            .map_err(build_err)?,
                    )
                    .build()),
            })
            .collect::<StoreResult<Vec<_>>>()?;
        // Unprocessed writes (throttling) are retried with exponential backoff.
        let mut backoff = Duration::from_millis(20);
        for _ in 0..RETRIES * 2 {
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, pending)
                .send()
                .await
                .map_err(sdk_err)?;
            pending = out
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            if pending.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        Err(StoreError::Backend(format!(
            "{} writes of a batch stayed unprocessed (throttled)",
            pending.len()
        )))
    }
}
