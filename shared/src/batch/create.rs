//! Creating a batch: the request's checks, the input file, the estimate of
//! its cost and tokens, the money gates (the tier's enqueued-token limit and
//! the hard cap's reservation), the idempotency key, and the validation job on
//! the jobs queue.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::batches::{
    estimate, fail, get_record, give_back_ops, pk, put_record, queued_key, routes, BatchRecord,
    Status, COMPLETION_WINDOW, WINDOW_SECS,
};
use super::files::FileRecord;
use super::lines::LineError;
use super::{digest, jobs, new_id, BatchEndpoint};
use crate::app::App;
use crate::billing::amounts;
use crate::error::{ApiError, ApiResult};
use crate::records::to_attrs;
use crate::store::{now_secs, Cond, Item, Key, StoreError, Table, TxOp, Update};
use crate::tenancy::tenants::{Tenant, Tier};

/// Idempotency keys are remembered this long.
const IDEMPOTENCY_SECS: i64 = 24 * 3600;

/// What `POST /v1/batches` asks: a batch of an uploaded file's lines against
/// one endpoint, within the one completion window (`24h`).
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    pub input_file_id: String,
    #[schema(example = "/v1/embeddings")]
    pub endpoint: String,
    #[schema(example = "24h")]
    pub completion_window: String,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub output_expires_after: Option<ExpiresAfter>,
}

/// When the output and error files expire: `seconds` after `created_at`.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
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
    let file = input_file(app, &tenant.id, req).await?;
    let id = new_id("batch_");
    if let Some(k) = idempotency_key {
        if let Some(earlier) =
            claim_idempotency(app.storage.table.as_ref(), &tenant.id, k, &id, req).await?
        {
            return get_record(app.storage.table.as_ref(), &tenant.id, &earlier).await;
        }
    }
    let mut b = new_record(id, &tenant.id, key_id, endpoint, &file, req);
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

/// The batch's input: the tenant's file, uploaded for batches, holding requests.
async fn input_file(app: &App, tenant_id: &str, req: &CreateBatch) -> ApiResult<FileRecord> {
    let file = app.files()?.get(tenant_id, &req.input_file_id).await?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid_param(
            "input_file_id",
            format!(
                "File {} has purpose '{}'; a batch reads files uploaded with purpose 'batch'.",
                file.id, file.purpose
            ),
        ));
    }
    if file.stats.as_ref().is_none_or(|s| s.lines == 0) {
        return Err(ApiError::invalid_param(
            "input_file_id",
            format!("File {} holds no requests.", file.id),
        ));
    }
    Ok(file)
}

/// A new batch of `file`, `validating`, holding nothing yet.
fn new_record(
    id: String,
    tenant_id: &str,
    key_id: &str,
    endpoint: BatchEndpoint,
    file: &FileRecord,
    req: &CreateBatch,
) -> BatchRecord {
    let now = now_secs();
    let stats = file.stats.clone().unwrap_or_default();
    BatchRecord {
        id,
        tenant_id: tenant_id.to_string(),
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
        model: stats.model,
        total: stats.lines,
        chunks: 0,
        reservation_month: None,
        reserved_micros: 0,
        queued_tokens: 0,
        output_expires_after: req.output_expires_after.as_ref().map(|e| e.seconds),
        version: 0,
    }
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
