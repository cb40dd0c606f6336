//! A batch's validation job: the input file streamed once, every line checked
//! (envelope, unique `custom_id`, one model), and the lines split into chunks
//! bounded by lines and tokens; then the batch is `in_progress` (its holds
//! adjusted to the chunks' exact shares) and its chunks go to the jobs queue.
//! A redelivered validation plans the same chunks again and resends them
//! (a chunk counted once stays counted once).

use std::sync::Arc;

use super::batches::{self, BatchRecord, Status};
use super::chunk::ChunkJob;
use super::jobs::{self, WorkerConfig};
use super::lines::{Bound, LineError, RawLine, Scanner, Validator};
use crate::app::App;
use crate::billing::amounts;
use crate::error::{ApiError, ApiResult};
use crate::store::{now_secs, Cond, StoreError, TxOp, Update};

/// Validates and plans the batch (see the module).
pub async fn validate(
    app: &Arc<App>,
    cfg: &WorkerConfig,
    tenant_id: &str,
    batch_id: &str,
) -> ApiResult<()> {
    let table = app.storage.table.clone();
    let b = batches::get_record(table.as_ref(), tenant_id, batch_id).await?;
    match b.status {
        Status::Validating => {}
        Status::Cancelling if b.chunks == 0 => {
            batches::fail(table.as_ref(), tenant_id, batch_id, Vec::new()).await?;
            return Ok(());
        }
        Status::InProgress | Status::Cancelling if b.chunks > 0 => {}
        _ => return Ok(()),
    }
    let plan = match scan(app, cfg, &b).await? {
        Ok(plan) => plan,
        Err(errors) => {
            let failed = batches::fail(table.as_ref(), tenant_id, batch_id, errors).await?;
            tracing::info!(
                batch_id,
                status = failed.status.as_str(),
                "batch failed validation"
            );
            return Ok(());
        }
    };
    let jobs = shares(app, &b, plan).await?;
    if b.status == Status::Validating {
        start(app, b, &jobs).await?;
    }
    jobs::enqueue_chunks(app, &jobs).await
}

/// The chunks of a batch whose lines all passed, or the errors.
async fn scan(
    app: &App,
    cfg: &WorkerConfig,
    b: &BatchRecord,
) -> ApiResult<Result<Vec<ChunkJob>, Vec<LineError>>> {
    let (_, mut reader) = app.files()?.content(&b.tenant_id, &b.input_file_id).await?;
    let mut v = Validator::new(b.endpoint.as_str());
    let mut planner = Planner {
        cfg,
        b,
        chunks: Vec::new(),
        open: None,
    };
    let each = |l: RawLine<'_>| -> Result<(), LineError> {
        if let Some(bound) = v.check(&l) {
            planner.take(&l, bound);
        }
        Ok(())
    };
    let scanned = Scanner::starting_at(0, 1)
        .read_all(&mut reader, each)
        .await
        .map_err(|e| ApiError::Internal(format!("input file: {e}")))?;
    if let Err(e) = scanned {
        v.fail(e);
    }
    if v.lines == 0 {
        v.fail(LineError {
            code: "empty_file".into(),
            message: "The input file holds no requests.".into(),
            param: None,
            line: None,
        });
    }
    if v.error_count > 0 {
        return Ok(Err(v.errors));
    }
    planner.close();
    Ok(Ok(planner.chunks))
}

/// Splits lines into chunks of at most `chunk_lines` lines and about
/// `chunk_tokens` tokens of bound (a line bigger than that is a chunk alone).
struct Planner<'a> {
    cfg: &'a WorkerConfig,
    b: &'a BatchRecord,
    chunks: Vec<ChunkJob>,
    open: Option<ChunkJob>,
}

impl Planner<'_> {
    fn take(&mut self, l: &RawLine<'_>, bound: Bound) {
        let fits = |c: &ChunkJob| {
            let mut next = c.bound;
            next.add(bound);
            c.lines < self.cfg.chunk_lines
                && next.prompt + next.capped + next.uncapped * 4096 <= self.cfg.chunk_tokens
        };
        if self.open.as_ref().is_some_and(|c| !fits(c)) {
            self.close();
        }
        let c = self.open.get_or_insert_with(|| ChunkJob {
            tenant_id: self.b.tenant_id.clone(),
            batch_id: self.b.id.clone(),
            index: self.chunks.len() as u64,
            start: l.start,
            end: l.end,
            first_line: l.number,
            lines: 0,
            bound: Bound::default(),
            tokens: 0,
            micros: 0,
        });
        c.end = l.end;
        c.lines += 1;
        c.bound.add(bound);
    }

    fn close(&mut self) {
        if let Some(c) = self.open.take() {
            self.chunks.push(c);
        }
    }
}

/// Each chunk's share of the batch's holds: its own estimate.
async fn shares(app: &App, b: &BatchRecord, mut jobs: Vec<ChunkJob>) -> ApiResult<Vec<ChunkJob>> {
    let tenant = app.tenant(&b.tenant_id).await?;
    let routes = batches::routes(app, &tenant, b).await.unwrap_or_default();
    for j in &mut jobs {
        (j.micros, j.tokens) =
            batches::estimate(&routes, &j.bound).map_err(crate::gateway::pipeline::money)?;
    }
    Ok(jobs)
}

/// `validating` → `in_progress`, the holds moved from the upload's estimate to
/// the sum of the chunks' shares, in one transaction.
async fn start(app: &App, mut b: BatchRecord, jobs: &[ChunkJob]) -> ApiResult<()> {
    let tokens: u64 = jobs.iter().map(|j| j.tokens).fold(0, u64::saturating_add);
    let micros: u64 = jobs.iter().map(|j| j.micros).fold(0, u64::saturating_add);
    let mut ops = Vec::new();
    let dt = amounts::saturating_counter(tokens) - amounts::saturating_counter(b.queued_tokens);
    if dt != 0 {
        ops.push(TxOp::Update(
            Update::new(batches::queued_key(&b.tenant_id)).add("tokens", dt),
        ));
    }
    if let Some(month) = &b.reservation_month {
        let dm =
            amounts::saturating_counter(micros) - amounts::saturating_counter(b.reserved_micros);
        if dm != 0 {
            ops.push(TxOp::Update(
                Update::new(crate::billing::budget::key(&b.tenant_id, month)).add("committed", dm),
            ));
        }
        b.reserved_micros = micros;
    }
    b.queued_tokens = tokens;
    b.chunks = jobs.len() as u64;
    b.total = jobs.iter().map(|j| j.lines).sum();
    b.enter(Status::InProgress, now_secs());
    ops.insert(
        0,
        TxOp::Put(batches::record_item(&b)?, Cond::Version(b.version)),
    );
    match app.storage.table.transact(&ops).await {
        Ok(()) => Ok(()),
        // Cancelled (or started by another delivery) meanwhile: run again.
        Err(StoreError::TransactionCancelled { .. }) => Err(ApiError::Conflict(format!(
            "batch {} changed while it was validated",
            b.id
        ))),
        Err(e) => Err(e.into()),
    }
}
