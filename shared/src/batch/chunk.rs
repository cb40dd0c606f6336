//! One chunk of a batch: its lines (a byte range of the input file) through the
//! request pipeline, many at once so the worker groups them into forward passes
//! (embeddings) or one running batch (chat). A chunk counts only once its
//! results are durable: both result objects are written (a redelivery
//! overwrites them), its usage events are in the usage queue (ids derived from
//! batch and `custom_id`, so metering folds each line once), and then its claim and its
//! counts go in one transaction, which a second delivery cannot repeat.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::batches::{self, BatchRecord, Status};
use super::lines::{parse_line, Bound, Scanner};
use super::{digest, BatchEndpoint};
use crate::app::App;
use crate::billing::amounts;
use crate::billing::metering::UsageEvent;
use crate::error::{ApiError, ApiResult};
use crate::gateway::chat::{ChatAnswer, ChatRequest};
use crate::gateway::embeddings::{response_body, EmbeddingRequest};
use crate::gateway::models::Route;
use crate::gateway::pipeline::{self, CacheControl, Endpoint, LineTerms};
use crate::store::{now_secs, Cond, Item, Key, StoreError, TxOp, Update};
use crate::tenancy::tenants::{Tenant, Tier};

/// A chunk as the jobs queue carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkJob {
    pub tenant_id: String,
    pub batch_id: String,
    pub index: u64,
    /// Its bytes `[start, end)` of the input file, from line `first_line` on.
    pub start: u64,
    pub end: u64,
    pub first_line: u64,
    pub lines: u64,
    pub bound: Bound,
    /// Its share of the batch's queue tokens and reservation.
    pub tokens: u64,
    pub micros: u64,
}

/// Where a chunk's output (`out`) and error (`err`) lines are kept.
pub fn result_object(tenant_id: &str, batch_id: &str, index: u64, which: &str) -> String {
    format!("batches/{tenant_id}/{batch_id}/{index:06}.{which}.jsonl")
}

fn claim_key(job: &ChunkJob) -> Key {
    Key::new(
        batches::pk(&job.tenant_id),
        format!("C#{}#{:06}", job.batch_id, job.index),
    )
}

/// How a chunk attempt ended.
#[derive(Debug)]
pub enum Ran {
    /// Its results are durable and counted (by this delivery or an earlier one).
    Counted,
    /// A backend could not serve now: the chunk should run again later.
    Retry(String),
}

/// What became of one line.
enum Outcome {
    Done {
        line: Value,
        event: Box<UsageEvent>,
    },
    Failed(Value),
    Skipped(Value, Skip),
    /// A backend failed (not the line's fault): the whole chunk runs again.
    Transient(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Skip {
    Expired,
    Cancelled,
}

/// Runs a chunk (see the module).
pub async fn run(app: &Arc<App>, job: &ChunkJob, line_concurrency: usize) -> ApiResult<Ran> {
    let table = app.storage.table.clone();
    if table.get(&claim_key(job)).await?.is_some() {
        return Ok(Ran::Counted);
    }
    let b = batches::get_record(table.as_ref(), &job.tenant_id, &job.batch_id).await?;
    let lines = match read_lines(app, &b, job).await {
        Ok(lines) => lines,
        Err(ApiError::NotFound { .. }) => {
            // The input file was deleted under the batch: its lines cannot run.
            tracing::warn!(batch_id = %b.id, chunk = job.index, "the batch's input file is gone; its lines fail");
            record(app, &b, job, Vec::new(), job.lines).await?;
            return Ok(Ran::Counted);
        }
        Err(e) => return Err(e),
    };
    let skip = match b.status {
        Status::Cancelling | Status::Cancelled => Some(Skip::Cancelled),
        _ if now_secs() >= b.expires_at => Some(Skip::Expired),
        _ => None,
    };
    let outcomes = match skip {
        Some(s) => lines
            .iter()
            .map(|(id, _)| Outcome::Skipped(skipped_line(&b, id, s), s))
            .collect(),
        None => run_lines(app, &b, lines, line_concurrency).await?,
    };
    if let Some(why) = outcomes.iter().find_map(|o| match o {
        Outcome::Transient(m) => Some(m.clone()),
        _ => None,
    }) {
        return Ok(Ran::Retry(why));
    }
    record(app, &b, job, outcomes, 0).await?;
    Ok(Ran::Counted)
}

/// Counts a chunk whose lines could not run (its message died): every line
/// fails with `code`, nothing is billed.
pub async fn fail_all(app: &Arc<App>, job: &ChunkJob, code: &str, message: &str) -> ApiResult<()> {
    if app.storage.table.get(&claim_key(job)).await?.is_some() {
        return Ok(());
    }
    let b = batches::get_record(app.storage.table.as_ref(), &job.tenant_id, &job.batch_id).await?;
    let ids: Vec<String> = match read_lines(app, &b, job).await {
        Ok(lines) => lines.into_iter().map(|(id, _)| id).collect(),
        Err(e) => {
            tracing::error!(batch_id = %b.id, chunk = job.index, error = %e, "a dead chunk's lines cannot be read");
            Vec::new()
        }
    };
    let outcomes = ids
        .iter()
        .map(|id| {
            Outcome::Failed(error_line(
                &b,
                id,
                None,
                json!({"code": code, "message": message}),
            ))
        })
        .collect();
    let unnamed = job.lines.saturating_sub(ids.len() as u64);
    record(app, &b, job, outcomes, unnamed).await
}

/// The chunk's lines: `(custom_id, body)`, as validation accepted them.
async fn read_lines(
    app: &App,
    b: &BatchRecord,
    job: &ChunkJob,
) -> ApiResult<Vec<(String, String)>> {
    let mut reader = app
        .files()?
        .range(&b.tenant_id, &b.input_file_id, job.start..job.end)
        .await?;
    let mut out = Vec::new();
    let take = |l: super::lines::RawLine<'_>| -> Result<(), super::lines::LineError> {
        let line = parse_line(&l, b.endpoint.as_str())?;
        out.push((line.custom_id, line.body.to_string()));
        Ok(())
    };
    Scanner::starting_at(job.start, job.first_line)
        .read_all(&mut reader, take)
        .await
        .map_err(|e| ApiError::Internal(format!("input file: {e}")))?
        .map_err(|e| {
            ApiError::Internal(format!("a validated line no longer parses: {}", e.message))
        })?;
    Ok(out)
}

async fn run_lines(
    app: &Arc<App>,
    b: &BatchRecord,
    lines: Vec<(String, String)>,
    concurrency: usize,
) -> ApiResult<Vec<Outcome>> {
    let tenant = app.tenant(&b.tenant_id).await?;
    let tier = app.config.tiers.get(&tenant.tier)?.clone();
    let routes = match batches::routes(app, &tenant, b).await {
        Ok(r) => r,
        Err(e) if e.status().is_client_error() => {
            // An unknown model (or one of the other kind): every line fails as
            // the sync API would answer it.
            return Ok(lines
                .iter()
                .map(|(id, _)| Outcome::Failed(http_error_line(b, id, &e)))
                .collect());
        }
        Err(e) => return Err(e),
    };
    let routes = on_local_workers(routes, &app.config.local_workers);
    let ctx = Arc::new(LineCtx {
        app: app.clone(),
        b: b.clone(),
        tenant,
        tier,
        routes,
    });
    let runs = lines.into_iter().map(|(id, body)| {
        let ctx = ctx.clone();
        async move { ctx.run(&id, &body).await }
    });
    Ok(futures::stream::iter(runs)
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await)
}

/// Routes whose model this process serves itself go to its own worker.
fn on_local_workers(
    routes: Vec<Route>,
    local: &std::collections::BTreeMap<String, String>,
) -> Vec<Route> {
    routes
        .into_iter()
        .map(|mut r| {
            if let Some(url) = local.get(&r.version.model) {
                r.version.backend = crate::gateway::models::BackendKind::Worker;
                r.version.endpoint = url.clone();
            }
            r
        })
        .collect()
}

/// What every line of a chunk shares.
struct LineCtx {
    app: Arc<App>,
    b: BatchRecord,
    tenant: Tenant,
    tier: Tier,
    routes: Vec<Route>,
}

impl LineCtx {
    async fn run(&self, custom_id: &str, body: &str) -> Outcome {
        let b = &self.b;
        let answered = match b.endpoint {
            BatchEndpoint::Embeddings => self.embed(custom_id, body).await,
            BatchEndpoint::ChatCompletions => self.chat(custom_id, body).await,
        };
        match answered {
            Ok((body, event)) => Outcome::Done {
                line: ok_line(b, custom_id, body),
                event: Box::new(event),
            },
            Err(
                e
                @ (ApiError::Unavailable { .. } | ApiError::Internal(_) | ApiError::BadGateway(_)),
            ) => Outcome::Transient(format!("line {custom_id}: {e}")),
            Err(e) => Outcome::Failed(http_error_line(b, custom_id, &e)),
        }
    }

    fn admit<E: Endpoint>(&self, custom_id: &str, req: &E) -> ApiResult<pipeline::Admitted> {
        let mut most = 0u64;
        for r in &self.routes {
            most = most.max(req.max_cost(&r.version).map_err(pipeline::money)?);
        }
        let terms = LineTerms {
            event_id: format!("bl_{}", digest(&[&self.b.id, custom_id])),
            key_id: self.b.key_id.clone(),
            request_id: request_id(&self.b, custom_id),
        };
        Ok(pipeline::admit_line(
            &self.app,
            self.tenant.clone(),
            self.routes.clone(),
            terms,
            most,
        ))
    }

    async fn embed(&self, custom_id: &str, body: &str) -> ApiResult<(Value, UsageEvent)> {
        let req = EmbeddingRequest::parse(body.as_bytes(), self.tier.max_inputs_per_request)?;
        if req.dimensions.is_some() {
            return Err(ApiError::invalid_param(
                "dimensions",
                format!("model '{}' does not support choosing dimensions", req.model),
            ));
        }
        let mut admitted = self.admit(custom_id, &req)?;
        let served = pipeline::serve(&mut admitted, &req, CacheControl::NONE).await?;
        let tokens = req.tokens(&served.answer);
        let body = serde_json::to_value(response_body(
            &req.model,
            &served.answer.vectors,
            tokens.prompt,
            req.encoding_format,
        ))
        .map_err(|e| ApiError::Internal(format!("an embeddings answer: {e}")))?;
        let (_, event) =
            admitted.finish_line(&served.version, tokens, served.hit, served.backend_ms);
        Ok((body, event))
    }

    async fn chat(&self, custom_id: &str, body: &str) -> ApiResult<(Value, UsageEvent)> {
        let req = ChatRequest::parse(body.as_bytes())?;
        if req.stream {
            return Err(ApiError::invalid_param(
                "stream",
                "A batch line cannot stream; leave out stream.",
            ));
        }
        let mut admitted = self.admit(custom_id, &req)?;
        let served = pipeline::serve(&mut admitted, &req, CacheControl::NONE).await?;
        let ChatAnswer::Whole(c) = served.answer else {
            return Err(ApiError::Internal(
                "a backend streamed an answer asked whole".into(),
            ));
        };
        let tokens = req.bounded(c.prompt_tokens, c.completion_tokens, Some(&served.version));
        let (_, event) =
            admitted.finish_line(&served.version, tokens, served.hit, served.backend_ms);
        Ok((c.body.clone(), event))
    }
}

fn request_id(b: &BatchRecord, custom_id: &str) -> String {
    format!("req_{}", digest(&[&b.id, custom_id, "request"]))
}

fn line_id(b: &BatchRecord, custom_id: &str) -> String {
    format!("batch_req_{}", digest(&[&b.id, custom_id]))
}

fn ok_line(b: &BatchRecord, custom_id: &str, body: Value) -> Value {
    json!({"id": line_id(b, custom_id), "custom_id": custom_id,
           "response": {"status_code": 200, "request_id": request_id(b, custom_id), "body": body},
           "error": null})
}

/// A line the API refused: its status and OpenAI error, as the sync API answers.
fn http_error_line(b: &BatchRecord, custom_id: &str, e: &ApiError) -> Value {
    json!({"id": line_id(b, custom_id), "custom_id": custom_id,
           "response": {"status_code": e.status().as_u16(), "request_id": request_id(b, custom_id), "body": e.body()},
           "error": null})
}

fn error_line(b: &BatchRecord, custom_id: &str, response: Option<Value>, error: Value) -> Value {
    json!({"id": line_id(b, custom_id), "custom_id": custom_id, "response": response, "error": error})
}

fn skipped_line(b: &BatchRecord, custom_id: &str, s: Skip) -> Value {
    let error = match s {
        Skip::Expired => {
            json!({"code": "batch_expired", "message": "This request could not be executed before the completion window expired."})
        }
        Skip::Cancelled => {
            json!({"code": "batch_cancelled", "message": "This request was not executed because the batch was cancelled."})
        }
    };
    error_line(b, custom_id, None, error)
}

fn jsonl(lines: &[&Value]) -> Bytes {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.to_string().as_bytes());
        out.push(b'\n');
    }
    Bytes::from(out)
}

/// Sends the lines' usage events straight to the usage queue, each on its own
/// (the request path's sink merges events, which would fold a redelivered
/// line under another id), and fails unless all were sent.
async fn send_events(app: &App, events: &[&UsageEvent]) -> ApiResult<()> {
    let (queue, _) = app.storage.usage_queues()?;
    for group in events.chunks(crate::store::queue::MAX_BATCH) {
        let msgs = group
            .iter()
            .map(|e| serde_json::to_string(e).map(crate::store::Outgoing::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::Internal(format!("usage event: {e}")))?;
        queue.send_batch(&msgs).await?;
    }
    Ok(())
}

/// Makes the chunk's results durable, sends its usage events, then claims
/// and counts it in one transaction.
/// (`unnamed` lines, whose `custom_id`s could not be read, count as failed
/// without a line in the error file.)
async fn record(
    app: &Arc<App>,
    b: &BatchRecord,
    job: &ChunkJob,
    outcomes: Vec<Outcome>,
    unnamed: u64,
) -> ApiResult<()> {
    let (mut ok, mut err, mut events) = (Vec::new(), Vec::new(), Vec::new());
    let (mut failed, mut expired, mut cancelled) =
        (amounts::saturating_counter(unnamed), 0i64, 0i64);
    for o in &outcomes {
        match o {
            Outcome::Done { line, event } => {
                ok.push(line);
                events.push(event.as_ref());
            }
            Outcome::Failed(l) => {
                err.push(l);
                failed += 1;
            }
            Outcome::Skipped(l, Skip::Expired) => {
                err.push(l);
                expired += 1;
            }
            Outcome::Skipped(l, Skip::Cancelled) => {
                err.push(l);
                cancelled += 1;
            }
            Outcome::Transient(_) => {}
        }
    }
    let blobs = app.storage.blobs()?;
    blobs
        .put(
            &result_object(&b.tenant_id, &b.id, job.index, "out"),
            jsonl(&ok),
        )
        .await?;
    blobs
        .put(
            &result_object(&b.tenant_id, &b.id, job.index, "err"),
            jsonl(&err),
        )
        .await?;
    send_events(app, &events).await?;
    let sum =
        |f: fn(&UsageEvent) -> u64| events.iter().map(|e| f(e)).fold(0u64, u64::saturating_add);
    let cost = sum(|e| e.cost_micros);
    let counts = Update::new(batches::counts_key(&b.tenant_id, &b.id))
        .add("completed", amounts::saturating_counter(ok.len() as u64))
        .add("failed", failed)
        .add("expired", expired)
        .add("cancelled", cancelled)
        .add("chunks_done", 1)
        .add(
            "prompt_tokens",
            amounts::saturating_counter(sum(|e| e.tokens)),
        )
        .add(
            "completion_tokens",
            amounts::saturating_counter(sum(|e| e.completion_tokens)),
        )
        .add("cost_micros", amounts::saturating_counter(cost));
    let mut claim = Item::new(claim_key(job), serde_json::Map::new());
    claim.attrs.insert("at".into(), json!(now_secs()));
    let mut ops = vec![TxOp::Put(claim, Cond::Absent), TxOp::Update(counts)];
    ops.extend(batches::give_back_ops(b, job.tokens, job.micros, cost));
    match app.storage.table.transact(&ops).await {
        Ok(()) | Err(StoreError::TransactionCancelled { index: 0 }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
