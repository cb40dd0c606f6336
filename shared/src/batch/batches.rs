//! Batch records and their state machine, and what creating one takes: the
//! input file, the estimate of its cost and tokens, the money gates (the hard
//! cap's reservation and the tier's enqueued-token limit), the idempotency key,
//! and the validation job on the jobs queue.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::files::FileRecord;
use super::lines::{Bound, LineError};
use super::{digest, jobs, new_id, plausible_id, BatchEndpoint};
use crate::app::App;
use crate::billing::amounts::{self, Overflow};
use crate::error::{ApiError, ApiResult};
use crate::gateway::models::{ModelVersion, Route};
use crate::records::{from_item, to_attrs};
use crate::store::table::cursor_after;
use crate::store::{now_secs, Cond, Item, Key, Query, StoreError, Table, TxOp, Update};
use crate::tenancy::tenants::{Tenant, Tier};

/// The one completion window (OpenAI's).
pub const COMPLETION_WINDOW: &str = "24h";
pub const WINDOW_SECS: i64 = 24 * 3600;
/// A batch's price is the sync price less this percentage, unless its version sets one.
pub const DEFAULT_DISCOUNT_PERCENT: u8 = 50;
/// Idempotency keys are remembered this long.
const IDEMPOTENCY_SECS: i64 = 24 * 3600;

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
    pub discount_percent: u8,
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
    /// The batch object as OpenAI's SDK parses it.
    pub fn object(&self, n: &Counts) -> Value {
        let t = |k: &str| self.times.get(k).copied();
        let errors =
            (!self.errors.is_empty()).then(|| json!({"object": "list", "data": self.errors}));
        json!({
            "id": self.id, "object": "batch", "endpoint": self.endpoint.as_str(),
            "errors": errors, "input_file_id": self.input_file_id,
            "completion_window": COMPLETION_WINDOW, "status": self.status.as_str(),
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "in_progress_at": t("in_progress_at"),
            "expires_at": self.expires_at, "finalizing_at": t("finalizing_at"),
            "completed_at": t("completed_at"), "failed_at": t("failed_at"),
            "expired_at": t("expired_at"), "cancelling_at": t("cancelling_at"),
            "cancelled_at": t("cancelled_at"),
            "request_counts": {"total": self.total, "completed": n.completed,
                               "failed": n.failed + n.expired + n.cancelled},
            "metadata": self.metadata, "model": self.model,
            "usage": {
                "input_tokens": n.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": n.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": n.prompt_tokens.saturating_add(n.completion_tokens),
            },
        })
    }

    /// Moves to `status`, stamping `<status>_at`.
    pub fn enter(&mut self, status: Status, now: i64) {
        self.status = status;
        self.times.insert(format!("{}_at", status.as_str()), now);
    }
}

/// What `POST /v1/batches` asks.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub output_expires_after: Option<ExpiresAfter>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiresAfter {
    pub anchor: String,
    pub seconds: i64,
}

impl CreateBatch {
    fn check(&self) -> ApiResult<BatchEndpoint> {
        let endpoint = BatchEndpoint::parse(&self.endpoint)?;
        if self.completion_window != COMPLETION_WINDOW {
            return Err(ApiError::invalid_param(
                "completion_window",
                "completion_window must be '24h'.",
            ));
        }
        if let Some(m) = &self.metadata {
            if m.len() > 16
                || m.iter()
                    .any(|(k, v)| k.chars().count() > 64 || v.chars().count() > 512)
            {
                return Err(ApiError::invalid_param(
                    "metadata",
                    "metadata holds at most 16 pairs, keys of at most 64 characters and values of at most 512.",
                ));
            }
        }
        if let Some(e) = &self.output_expires_after {
            if e.anchor != "created_at" || !super::files::TTL_RANGE.contains(&e.seconds) {
                return Err(ApiError::invalid_param(
                    "output_expires_after",
                    "output_expires_after needs anchor 'created_at' and seconds between 3600 and 2592000.",
                ));
            }
        }
        Ok(endpoint)
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

async fn put_record(table: &dyn Table, b: &BatchRecord, cond: &Cond) -> ApiResult<()> {
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

/// Creates a batch (see the module): answers it `validating`, or the batch an
/// earlier request with the same idempotency key created.
pub async fn create(
    app: &Arc<App>,
    (tenant, tier): (&Tenant, &Tier),
    key_id: &str,
    req: &CreateBatch,
    idempotency_key: Option<&str>,
) -> ApiResult<BatchRecord> {
    let endpoint = req.check()?;
    let file = app.files()?.get(&tenant.id, &req.input_file_id).await?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid_param(
            "input_file_id",
            format!(
                "File {} has purpose '{}'; a batch reads files uploaded with purpose 'batch'.",
                file.id, file.purpose
            ),
        ));
    }
    let stats = file.stats.clone().unwrap_or_default();
    if stats.lines == 0 {
        return Err(ApiError::invalid_param(
            "input_file_id",
            format!("File {} holds no requests.", file.id),
        ));
    }
    let id = new_id("batch_");
    if let Some(k) = idempotency_key {
        if let Some(earlier) =
            claim_idempotency(app.storage.table.as_ref(), &tenant.id, k, &id, req).await?
        {
            return get_record(app.storage.table.as_ref(), &tenant.id, &earlier).await;
        }
    }
    let now = now_secs();
    let mut b = BatchRecord {
        id,
        tenant_id: tenant.id.clone(),
        key_id: key_id.to_string(),
        endpoint,
        input_file_id: file.id.clone(),
        status: Status::Validating,
        created_at: now,
        expires_at: now + WINDOW_SECS,
        times: BTreeMap::new(),
        errors: Vec::new(),
        output_file_id: None,
        error_file_id: None,
        metadata: req.metadata.clone(),
        model: stats.model.clone(),
        total: stats.lines,
        chunks: 0,
        reservation_month: None,
        reserved_micros: 0,
        queued_tokens: 0,
        discount_percent: DEFAULT_DISCOUNT_PERCENT,
        output_expires_after: req.output_expires_after.as_ref().map(|e| e.seconds),
        version: 0,
    };
    gate(app, (tenant, tier), &mut b, &file).await?;
    if let Err(e) = put_record(app.storage.table.as_ref(), &b, &Cond::Absent).await {
        release(app.storage.table.as_ref(), &b).await;
        return Err(e);
    }
    b.version = 1;
    if let Err(e) = jobs::enqueue_validation(app, &b).await {
        tracing::error!(batch_id = %b.id, error = %e, "the batch could not be queued; failing it");
        let failed = fail(
            app.storage.table.as_ref(),
            &b.tenant_id,
            &b.id,
            vec![LineError {
                code: "queue_unavailable".into(),
                message: "The batch could not be queued; create it again.".into(),
                param: None,
                line: None,
            }],
        )
        .await?;
        return Ok(failed);
    }
    Ok(b)
}

/// The money gates: the tier's batch queue, then the hard cap's reservation.
async fn gate(
    app: &App,
    (tenant, tier): (&Tenant, &Tier),
    b: &mut BatchRecord,
    file: &FileRecord,
) -> ApiResult<()> {
    let bound = file.stats.as_ref().map(|s| s.bound).unwrap_or_default();
    // An unknown model costs nothing here: its lines fail as the sync API would.
    let routes = routes(app, tenant, b).await.unwrap_or_default();
    let (cost, tokens) = estimate(&routes, &bound).map_err(crate::gateway::pipeline::money)?;
    if let Some(r) = routes.first() {
        b.discount_percent = discount_of(&r.version);
    }
    let limit = amounts::saturating_counter(tier.batch.max_enqueued_tokens);
    let tokens_i = amounts::saturating_counter(tokens);
    let queued = app
        .storage
        .table
        .update(
            &Update::new(queued_key(&tenant.id))
                .add("tokens", tokens_i)
                .when(Cond::AtMost {
                    attr: "tokens".into(),
                    max: limit.saturating_sub(tokens_i),
                }),
        )
        .await;
    match queued {
        Ok(_) => b.queued_tokens = tokens,
        Err(StoreError::ConditionFailed) => {
            return Err(ApiError::QueueFull(format!(
                "Enqueued token limit reached: this batch may take up to {tokens} tokens and the batches in your queue leave less than that of your tier's {} ('{}'). Wait for them to finish, or split the file.",
                tier.batch.max_enqueued_tokens, tenant.tier
            )))
        }
        Err(e) => return Err(e.into()),
    }
    let month = crate::billing::metering::month_of(crate::store::now_millis());
    match app
        .budget
        .reserve(&tenant.id, &month, &tenant.budget(tier), cost)
        .await
    {
        Ok(Some(r)) => {
            b.reservation_month = Some(month);
            b.reserved_micros = r.reserved();
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            release(app.storage.table.as_ref(), b).await;
            Err(e)
        }
    }
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

/// Gives back everything the batch holds (nothing was spent).
async fn release(table: &dyn Table, b: &BatchRecord) {
    for op in give_back_ops(b, b.queued_tokens, b.reserved_micros, 0) {
        if let TxOp::Update(u) = op {
            if let Err(e) = table.update(&u).await {
                tracing::warn!(batch_id = %b.id, error = %e, "a batch's hold was not given back");
            }
        }
    }
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

/// Remembers `key` for this request: `None` when it is new (the batch `id`
/// will be created), else the batch an earlier request created with it.
async fn claim_idempotency(
    table: &dyn Table,
    tenant_id: &str,
    idempotency_key: &str,
    id: &str,
    req: &CreateBatch,
) -> ApiResult<Option<String>> {
    if idempotency_key.is_empty() || idempotency_key.len() > 255 {
        return Err(ApiError::invalid(
            "Idempotency-Key must hold 1 to 255 characters.",
        ));
    }
    let fingerprint = digest(&[&serde_json::to_string(req).unwrap_or_default()]);
    let key = Key::new(pk(tenant_id), format!("I#{}", digest(&[idempotency_key])));
    let mut item = Item::new(
        key.clone(),
        to_attrs(&json!({"batch_id": id, "request": fingerprint}))?,
    );
    item.expires_at = Some(now_secs() + IDEMPOTENCY_SECS);
    match table.put(&item, &Cond::Absent).await {
        Ok(()) => Ok(None),
        Err(StoreError::ConditionFailed) => {
            let earlier = table
                .get(&key)
                .await?
                .ok_or_else(|| ApiError::Conflict("the idempotency key changed; retry".into()))?;
            if earlier.attrs.get("request").and_then(Value::as_str) != Some(fingerprint.as_str()) {
                return Err(ApiError::WrongState(
                    "This Idempotency-Key was used with a different request; use a new key for a new batch.".into(),
                ));
            }
            let batch = earlier
                .attrs
                .get("batch_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Ok(Some(batch.to_string()))
        }
        Err(e) => Err(e.into()),
    }
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

    #[test]
    fn creation_checks_window_metadata_and_endpoint() {
        let ok = CreateBatch {
            input_file_id: "file-x".into(),
            endpoint: "/v1/embeddings".into(),
            completion_window: "24h".into(),
            metadata: None,
            output_expires_after: None,
        };
        assert!(ok.check().is_ok());
        let mut bad = ok.clone();
        bad.completion_window = "48h".into();
        assert!(bad.check().is_err());
        let mut bad = ok.clone();
        bad.metadata = Some((0..17).map(|i| (i.to_string(), String::new())).collect());
        assert!(bad.check().is_err());
        let mut bad = ok.clone();
        bad.endpoint = "/v1/completions".into();
        assert!(bad.check().is_err());
    }
}
