//! Batch records and their state machine: reads, versioned updates, the
//! counts, the batch price and estimate, what a batch holds and gives back,
//! failing and cancelling. Creating one is in [`super::create`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::lines::{Bound, LineError};
use super::{plausible_id, BatchEndpoint};
use crate::app::App;
use crate::billing::amounts::{self, Overflow};
use crate::error::{ApiError, ApiResult};
use crate::gateway::models::{ModelVersion, Route};
use crate::records::{from_item, to_attrs};
use crate::store::table::cursor_after;
use crate::store::{now_secs, Cond, Item, Key, Query, StoreError, Table, TxOp, Update};
use crate::tenancy::tenants::Tenant;

/// The one completion window (OpenAI's).
pub const COMPLETION_WINDOW: &str = "24h";
pub const WINDOW_SECS: i64 = 24 * 3600;
/// A batch's price is the sync price less this percentage, unless its version sets one.
pub const DEFAULT_DISCOUNT_PERCENT: u8 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::Failed => "failed",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Expired => "expired",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the batch has ended (nothing changes it any more).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Failed | Status::Completed | Status::Expired | Status::Cancelled
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    pub tenant_id: String,
    pub key_id: String,
    pub endpoint: BatchEndpoint,
    pub input_file_id: String,
    pub status: Status,
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(default)]
    pub times: BTreeMap<String, i64>,
    #[serde(default)]
    pub errors: Vec<LineError>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub model: Option<String>,
    /// Lines of the input file.
    pub total: u64,
    /// Chunks it was split into (known once validated).
    pub chunks: u64,
    /// The hard cap's reservation: its month and amount (none without a cap).
    pub reservation_month: Option<String>,
    pub reserved_micros: u64,
    /// Tokens (their bound) counted against the tenant's batch queue.
    pub queued_tokens: u64,
    pub output_expires_after: Option<i64>,
    #[serde(skip)]
    pub version: u64,
}

/// A batch's running counts (their own item: atomic adds, no version).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub completed: u64,
    pub failed: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub chunks_done: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micros: u64,
}

pub fn pk(tenant_id: &str) -> String {
    format!("BATCH#{tenant_id}")
}

pub fn record_key(tenant_id: &str, id: &str) -> Key {
    Key::new(pk(tenant_id), format!("B#{id}"))
}

pub fn counts_key(tenant_id: &str, id: &str) -> Key {
    Key::new(pk(tenant_id), format!("N#{id}"))
}

pub fn queued_key(tenant_id: &str) -> Key {
    Key::new(pk(tenant_id), "QUEUED")
}

impl Counts {
    pub fn of(item: Option<&Item>) -> Counts {
        let n = |a: &str| item.map_or(0, |i| amounts::from_counter(i.number(a)));
        Counts {
            completed: n("completed"),
            failed: n("failed"),
            expired: n("expired"),
            cancelled: n("cancelled"),
            chunks_done: n("chunks_done"),
            prompt_tokens: n("prompt_tokens"),
            completion_tokens: n("completion_tokens"),
            cost_micros: n("cost_micros"),
        }
    }
}

impl BatchRecord {
    /// Moves to `status`, stamping `<status>_at`.
    pub fn enter(&mut self, status: Status, now: i64) {
        self.status = status;
        self.times.insert(format!("{}_at", status.as_str()), now);
    }
}

/// The batch price of `tokens` at `version`: its cost less the discount, rounded up.
pub fn batch_cost(version: &ModelVersion, prompt: u64, completion: u64) -> Result<u64, Overflow> {
    let full = crate::gateway::pipeline::cost(
        version,
        crate::gateway::pipeline::Tokens {
            prompt,
            completion,
            inputs: 0,
        },
    )?;
    Ok(discounted(full, discount_of(version)))
}

pub fn discount_of(version: &ModelVersion) -> u8 {
    version
        .batch_discount_percent
        .unwrap_or(DEFAULT_DISCOUNT_PERCENT)
        .min(100)
}

fn discounted(full: u64, percent: u8) -> u64 {
    let keep = u128::from(100 - percent.min(100));
    u64::try_from((u128::from(full) * keep).div_ceil(100)).unwrap_or(u64::MAX)
}

/// The most `bound` can cost and take along `routes` (the dearest version).
pub fn estimate(routes: &[Route], bound: &Bound) -> Result<(u64, u64), Overflow> {
    let (mut cost, mut tokens) = (0, 0);
    for r in routes {
        cost = cost.max(batch_cost(
            &r.version,
            bound.prompt,
            bound.completion(&r.version),
        )?);
        tokens = tokens.max(bound.tokens(&r.version));
    }
    Ok((cost, tokens))
}

/// The routes a batch's lines take: resolved once per batch (its id picks the
/// canary share, as a request id does for one request).
pub async fn routes(app: &App, tenant: &Tenant, b: &BatchRecord) -> ApiResult<Vec<Route>> {
    let model = b.model.as_deref().unwrap_or_default();
    let kind = match b.endpoint {
        BatchEndpoint::Embeddings => crate::gateway::models::ModelKind::Embedding,
        BatchEndpoint::ChatCompletions => crate::gateway::models::ModelKind::Chat,
    };
    let chain = app.registry.route_chain(tenant, model, &b.id).await?;
    crate::gateway::pipeline::of_kind(chain, kind, model)
}

/// Reads, changes and writes a batch record under its version, retrying when
/// another writer came first. `change` answers whether to write.
pub async fn update<F>(
    table: &dyn Table,
    tenant_id: &str,
    id: &str,
    mut change: F,
) -> ApiResult<BatchRecord>
where
    F: FnMut(&mut BatchRecord) -> ApiResult<bool>,
{
    for _ in 0..20 {
        let mut b = get_record(table, tenant_id, id).await?;
        if !change(&mut b)? {
            return Ok(b);
        }
        match put_record(table, &b, &Cond::Version(b.version)).await {
            Ok(()) => {
                b.version += 1;
                return Ok(b);
            }
            Err(ApiError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Conflict(format!(
        "batch {id} is changing too often; retry"
    )))
}

/// The record as an item, its version bumped (for a put under `Cond::Version`).
pub fn record_item(b: &BatchRecord) -> ApiResult<Item> {
    let mut item = Item::new(record_key(&b.tenant_id, &b.id), to_attrs(b)?);
    item.version = b.version + 1;
    Ok(item)
}

pub(crate) async fn put_record(table: &dyn Table, b: &BatchRecord, cond: &Cond) -> ApiResult<()> {
    match table.put(&record_item(b)?, cond).await {
        Err(StoreError::ConditionFailed) => Err(ApiError::Conflict("batch changed".into())),
        other => Ok(other?),
    }
}

pub async fn get_record(table: &dyn Table, tenant_id: &str, id: &str) -> ApiResult<BatchRecord> {
    let missing = || ApiError::NotFound {
        message: format!("No such Batch object: {id}"),
        code: "batch_not_found",
    };
    if !plausible_id(id, "batch_") {
        return Err(missing());
    }
    let item = table
        .get(&record_key(tenant_id, id))
        .await?
        .ok_or_else(missing)?;
    let version = item.version;
    let mut b: BatchRecord = from_item(item)?;
    b.version = version;
    Ok(b)
}

/// A batch and its counts.
pub async fn get(table: &dyn Table, tenant_id: &str, id: &str) -> ApiResult<(BatchRecord, Counts)> {
    let b = get_record(table, tenant_id, id).await?;
    let n = Counts::of(table.get(&counts_key(tenant_id, id)).await?.as_ref());
    Ok((b, n))
}

/// The tenant's batches, newest first, after the batch `after`.
pub async fn list(
    table: &dyn Table,
    tenant_id: &str,
    limit: usize,
    after: Option<&str>,
) -> ApiResult<(Vec<(BatchRecord, Counts)>, bool)> {
    let pk = pk(tenant_id);
    let cursor = after.map(|a| cursor_after(&pk, &format!("B#{a}")));
    let page = table
        .query(
            &Query::new(pk.clone())
                .prefix("B#")
                .backward()
                .limit(limit + 1)
                .after(cursor),
        )
        .await?;
    let more = page.items.len() > limit || (page.items.len() == limit + 1 && page.next.is_some());
    let mut out = Vec::new();
    for item in page.items.into_iter().take(limit) {
        let version = item.version;
        let mut b: BatchRecord = from_item(item)?;
        b.version = version;
        let n = Counts::of(table.get(&counts_key(tenant_id, &b.id)).await?.as_ref());
        out.push((b, n));
    }
    Ok((out, more))
}

/// The operations that give back what a batch still holds of `tokens` and
/// `micros` (its queue share and reservation), adding `spent` to the month.
pub fn give_back_ops(b: &BatchRecord, tokens: u64, micros: u64, spent: u64) -> Vec<TxOp> {
    let mut ops = Vec::new();
    if tokens > 0 {
        ops.push(TxOp::Update(
            Update::new(queued_key(&b.tenant_id))
                .add("tokens", -amounts::saturating_counter(tokens)),
        ));
    }
    if let Some(month) = &b.reservation_month {
        let delta = amounts::saturating_counter(spent) - amounts::saturating_counter(micros);
        if delta != 0 {
            ops.push(TxOp::Update(
                Update::new(crate::billing::budget::key(&b.tenant_id, month))
                    .add("committed", delta),
            ));
        }
    }
    ops
}

/// Fails a batch that has not started (validation, or a queue that refused it),
/// giving back what it held, once.
pub async fn fail(
    table: &dyn Table,
    tenant_id: &str,
    id: &str,
    errors: Vec<LineError>,
) -> ApiResult<BatchRecord> {
    for _ in 0..20 {
        let mut b = get_record(table, tenant_id, id).await?;
        if b.status != Status::Validating && b.status != Status::Cancelling {
            return Ok(b);
        }
        let cancelled = b.status == Status::Cancelling;
        let held = give_back_ops(&b, b.queued_tokens, b.reserved_micros, 0);
        if cancelled {
            b.enter(Status::Cancelled, now_secs());
        } else {
            b.errors = errors.clone();
            b.enter(Status::Failed, now_secs());
        }
        let mut ops = vec![TxOp::Put(record_item(&b)?, Cond::Version(b.version))];
        ops.extend(held);
        match table.transact(&ops).await {
            Ok(()) => return Ok(b),
            Err(StoreError::TransactionCancelled { .. } | StoreError::ConditionFailed) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict(format!(
        "batch {id} is changing too often; retry"
    )))
}

/// `POST /v1/batches/{id}/cancel`: `cancelling` until its running chunks end.
pub async fn cancel(table: &dyn Table, tenant_id: &str, id: &str) -> ApiResult<BatchRecord> {
    update(table, tenant_id, id, |b| match b.status {
        Status::Validating | Status::InProgress => {
            b.enter(Status::Cancelling, now_secs());
            Ok(true)
        }
        Status::Cancelling => Ok(false),
        s => Err(ApiError::WrongState(format!(
            "Cannot cancel a batch with status '{}'.",
            s.as_str()
        ))),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_price_is_discounted_and_rounded_up() {
        assert_eq!(discounted(101, 50), 51);
        assert_eq!(discounted(100, 0), 100);
        assert_eq!(discounted(100, 100), 0);
        assert_eq!(discounted(u64::MAX, 50), u64::MAX / 2 + 1);
        let mut v = ModelVersion::live_worker("m", "1", "http://w", 1000);
        assert_eq!(
            batch_cost(&v, 3, 0).unwrap(),
            2,
            "3 tokens at $1/1M is 3 micros; half, rounded up"
        );
        v.batch_discount_percent = Some(0);
        assert_eq!(batch_cost(&v, 3, 0).unwrap(), 3);
    }

    #[test]
    fn only_running_batches_can_be_cancelled() {
        for s in [
            Status::Completed,
            Status::Failed,
            Status::Expired,
            Status::Cancelled,
        ] {
            assert!(s.is_final());
        }
        for s in [
            Status::Validating,
            Status::InProgress,
            Status::Finalizing,
            Status::Cancelling,
        ] {
            assert!(!s.is_final());
        }
    }
}
