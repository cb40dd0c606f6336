//! The request pipeline every model call goes through, whatever the endpoint:
//!
//! 1. [`admit`]: rate limits (requests and the endpoint's token estimate), routing
//!    along the model hierarchy (with the canary share), and a budget reservation of
//!    the most the request can cost at the dearest version it may fall back to;
//! 2. [`serve`]: the answer cache (its table tier raced against the backend call),
//!    the backends in route order past open circuits and failing backends (503 with
//!    Retry-After when none is left);
//! 3. [`Admitted::finish`]: the real cost (never above the reservation) settles the
//!    budget and the token limits, and one usage event leaves for metering.
//!
//! An endpoint supplies only what is its own through [`Endpoint`]: its scope, token
//! estimate, cost bound, cache hash and cache, the backend call, and what an answer
//! bills. A streamed answer keeps its [`Admitted`] until the stream ends (or its
//! client leaves) and finishes it then; one dropped unfinished releases its
//! reservation.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};

use crate::app::App;
use crate::billing::amounts::{self, Overflow};
use crate::billing::budget::Reservation;
use crate::billing::metering::UsageEvent;
use crate::error::{ApiError, ApiResult};
use crate::gateway::backend::BackendFailure;
use crate::gateway::breaker::Outcome;
use crate::gateway::cache::Cache;
use crate::gateway::models::{ModelKind, ModelVersion, Route};
use crate::gateway::ratelimit::{self, insert_headers, Scope};
use crate::store::now_millis;
use crate::tenancy::auth::TenantContext;
use crate::tenancy::tenants::{CacheScope, Tenant, Tier};

/// What an answer bills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    /// Inputs served (embedding inputs; 1 for a chat completion).
    pub inputs: u64,
}

/// The parts of a request that are its endpoint's own.
#[async_trait::async_trait]
pub trait Endpoint: Send + Sync {
    /// What a backend (or the cache) answers.
    type Answer: Send + Sync;
    /// The kind of model the endpoint serves (another kind is a 400).
    const KIND: ModelKind;

    /// The model the client asked for.
    fn model(&self) -> &str;
    /// Tokens admitted against the per-minute limits before the call.
    fn estimate_tokens(&self) -> u64;
    /// The most the request can cost at `version`'s prices, by construction.
    fn max_cost(&self, version: &ModelVersion) -> Result<u64, Overflow>;
    /// What determines the answer, hashed; `None`: never cached.
    fn cache_hash(&self) -> Option<String>;
    async fn cached(&self, app: &App, key: &str) -> Option<Self::Answer>;
    async fn store(&self, app: &App, key: &str, answer: &Self::Answer);
    /// Asks `version`'s backend.
    async fn call(&self, app: &App, version: &ModelVersion)
        -> Result<Self::Answer, BackendFailure>;
    /// What an answer bills (held to the request's bound).
    fn tokens(&self, answer: &Self::Answer) -> Tokens;
}

/// Cache-Control as a client sends it: `no-cache` skips the read, `no-store` the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheControl {
    pub read: bool,
    pub write: bool,
}

impl CacheControl {
    /// Neither read nor write (batch lines).
    pub const NONE: CacheControl = CacheControl {
        read: false,
        write: false,
    };

    pub fn from_headers(headers: &HeaderMap) -> CacheControl {
        let value = headers
            .get_all("cache-control")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase();
        let has = |d: &str| value.split(',').any(|p| p.trim() == d);
        CacheControl {
            read: !has("no-cache"),
            write: !has("no-store"),
        }
    }
}

/// A request admitted by the limits and the budget, holding what it reserved.
pub struct Admitted {
    pub tenant: Tenant,
    pub routes: Vec<Route>,
    pub limits: ratelimit::Admission,
    reservation: Option<Reservation>,
    /// The most the request may be billed (what the budget reserved for).
    most: u64,
    started: Instant,
    at_ms: i64,
    key_id: String,
    pub request_id: String,
    app: std::sync::Arc<App>,
    /// Set for a batch line: its event id and price.
    line: Option<LineTerms>,
    /// Where the gateway's own time went (on the "served" line).
    pub marks: Marks,
}

/// Milestones of a request in milliseconds since its admission began: the
/// limiter answered, the routes were known, the budget held its reservation,
/// the backend's answer (a stream's first event) was in hand, a stream's first
/// bytes left for the client. Logged on the "served" line to explain overheads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Marks {
    pub limited: f64,
    pub routed: f64,
    pub reserved: f64,
    pub served: f64,
    pub first_sent: f64,
}

/// How a batch line is billed: under an event id derived from its batch and
/// `custom_id` (a redelivered chunk bills nothing twice), at the batch price.
#[derive(Clone, Debug)]
pub struct LineTerms {
    pub event_id: String,
    pub key_id: String,
    pub request_id: String,
}

/// Admits one line of a batch: routed as its batch (`routes`), counted neither
/// against the per-minute limits nor the budget (the batch holds its own
/// reservation and queue share).
pub fn admit_line(
    app: &std::sync::Arc<App>,
    tenant: Tenant,
    routes: Vec<Route>,
    terms: LineTerms,
    most: u64,
) -> Admitted {
    Admitted {
        tenant,
        routes,
        limits: ratelimit::Admission::none(),
        reservation: None,
        most,
        started: Instant::now(),
        at_ms: now_millis(),
        key_id: terms.key_id.clone(),
        request_id: terms.request_id.clone(),
        app: app.clone(),
        line: Some(terms),
        marks: Marks::default(),
    }
}

/// What served a request.
pub struct Served<A> {
    pub version: ModelVersion,
    pub answer: A,
    pub hit: bool,
    /// Time spent waiting on backends (failed attempts included).
    pub backend_ms: f64,
    /// Where the answer is cached, when the client lets it be (a stream's
    /// answer is stored by its end).
    pub store_key: Option<String>,
}

/// What a finished request cost, and the figures its answer reports.
#[derive(Clone, Copy, Debug)]
pub struct Receipt {
    pub tokens: Tokens,
    pub cost_micros: u64,
    pub latency_ms: f64,
    pub overhead_ms: f64,
}

/// The caller's tenant and tier, once the key has the endpoint's scope.
pub async fn caller(app: &App, ctx: &TenantContext, scope: &str) -> ApiResult<(Tenant, Tier)> {
    ctx.require(scope)?;
    let tenant = app.tenant(&ctx.tenant_id).await?;
    let tier = app.config.tiers.get(&tenant.tier)?.clone();
    Ok((tenant, tier))
}

/// A money figure that does not fit: our arithmetic, not the client's request.
pub fn money(e: Overflow) -> ApiError {
    ApiError::Internal(format!("cost: {e}"))
}

/// Admits a request (see the module's step 1).
pub async fn admit<E: Endpoint>(
    app: &std::sync::Arc<App>,
    ctx: &TenantContext,
    (tenant, tier): (Tenant, Tier),
    request_id: &str,
    req: &E,
) -> ApiResult<Admitted> {
    let started = Instant::now();
    let since = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let mut marks = Marks::default();
    let tenant_limits = tenant.rate_limits.unwrap_or_else(|| tier.limits());
    let scopes = [
        Scope::tenant(&tenant.id, tenant_limits),
        Scope::key(
            &tenant.id,
            &ctx.key_id,
            ctx.key_limits.unwrap_or(tenant_limits),
        ),
    ];
    let limits = app
        .limiter
        .admit(
            &scopes,
            req.estimate_tokens(),
            now_millis(),
            app.limiter.home_shard(),
        )
        .await?;
    marks.limited = since(started);
    let routes = of_kind(
        app.registry
            .route_chain(&tenant, req.model(), request_id)
            .await?,
        E::KIND,
        req.model(),
    )?;
    marks.routed = since(started);
    let mut most = 0;
    for r in &routes {
        most = most.max(req.max_cost(&r.version).map_err(money)?);
    }
    let at_ms = now_millis();
    let month = crate::billing::metering::month_of(at_ms);
    let reservation = app
        .budget
        .reserve(&tenant.id, &month, &tenant.budget(&tier), most)
        .await?;
    marks.reserved = since(started);
    Ok(Admitted {
        tenant,
        routes,
        limits,
        reservation,
        most,
        started,
        at_ms,
        key_id: ctx.key_id.clone(),
        request_id: request_id.to_string(),
        app: app.clone(),
        line: None,
        marks,
    })
}

/// The routes that serve `kind`; a model of the other kind is a clear 400.
pub(crate) fn of_kind(routes: Vec<Route>, kind: ModelKind, model: &str) -> ApiResult<Vec<Route>> {
    let other = routes.first().map(|r| r.version.kind);
    let routes: Vec<Route> = routes
        .into_iter()
        .filter(|r| r.version.kind == kind)
        .collect();
    match (routes.is_empty(), other) {
        (true, Some(other)) => Err(ApiError::invalid_param(
            "model",
            format!(
                "'{model}' is {} model; {}",
                if other == ModelKind::Chat {
                    "a chat"
                } else {
                    "an embedding"
                },
                if other == ModelKind::Chat {
                    "ask /v1/chat/completions"
                } else {
                    "ask /v1/embeddings"
                }
            ),
        )),
        _ => Ok(routes),
    }
}

/// The cache key of a request at `version` for this tenant.
fn cache_key(tenant: &Tenant, version: &ModelVersion, hash: &str) -> String {
    let scope = if tenant.cache_scope == CacheScope::Shared && version.is_shared() {
        "shared"
    } else {
        tenant.id.as_str()
    };
    Cache::key(scope, &version.model, &version.version, hash)
}

/// Serves an admitted request (see the module's step 2).
///
/// The cache lookup and the backend call start together: the memory tier
/// answers before the call is ever sent (futures run only when polled, and the
/// lookup is polled first), while a lookup that has to reach the table races the
/// call. A table hit that arrives first cancels the call (dropping it closes its
/// connection, which stops the work); a miss costs the request nothing beyond
/// the backend's own time. A backend that answers first wins, and its answer is
/// served and billed as a miss.
pub async fn serve<E: Endpoint>(
    admitted: &mut Admitted,
    req: &E,
    control: CacheControl,
) -> ApiResult<Served<E::Answer>> {
    let mut backend_ms = 0.0;
    let mut retry_after = Duration::from_secs(1);
    let hash = req.cache_hash();
    for route in &admitted.routes {
        let key = hash
            .as_deref()
            .map(|h| cache_key(&admitted.tenant, &route.version, h));
        match attempt(admitted, req, &route.version, key, control, &mut backend_ms).await {
            Attempt::Served(served) => {
                admitted.marks.served = admitted.elapsed_ms();
                return Ok(*served);
            }
            Attempt::Rejected(e) => return Err(e),
            Attempt::CircuitOpen(wait) => retry_after = retry_after.max(wait),
            Attempt::Failed => {}
        }
    }
    Err(ApiError::Unavailable {
        message: format!(
            "no backend for model '{}' can serve now; retry shortly",
            req.model()
        ),
        retry_after_secs: retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
    })
}

/// How one route of a request went.
enum Attempt<A> {
    Served(Box<Served<A>>),
    /// The backend judged the input: the client's error, no fallback.
    Rejected(ApiError),
    /// The route's circuit is open for this long: the next route is tried.
    CircuitOpen(Duration),
    /// The backend failed: the next route is tried.
    Failed,
}

/// Serves the request on one route: its cache entry `key` (when cached) raced
/// against its backend, past its circuit breaker. `backend_ms` adds the call's time.
async fn attempt<E: Endpoint>(
    admitted: &Admitted,
    req: &E,
    version: &ModelVersion,
    key: Option<String>,
    control: CacheControl,
    backend_ms: &mut f64,
) -> Attempt<E::Answer> {
    let app = &admitted.app;
    let hit = |answer, backend_ms| {
        Attempt::Served(Box::new(Served {
            version: version.clone(),
            answer,
            hit: true,
            backend_ms,
            store_key: None,
        }))
    };
    let lookup = key
        .as_deref()
        .filter(|_| control.read)
        .map(|k| req.cached(app, k));
    let backend = format!("{:?}:{}", version.backend, version.endpoint);
    if let Err(wait) = app.breakers.allow(&backend) {
        if let Some(answer) = match lookup {
            Some(lookup) => lookup.await,
            None => None,
        } {
            return hit(answer, *backend_ms);
        }
        tracing::info!(model = %version.model, backend = %backend, "circuit open; trying the next route");
        return Attempt::CircuitOpen(wait);
    }
    let call = Instant::now();
    let outcome = match race(lookup, req.call(app, version)).await {
        Raced::Cached(answer) => return hit(answer, *backend_ms),
        Raced::Called(outcome) => outcome,
    };
    *backend_ms += call.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        Ok(answer) => {
            app.breakers.record(&backend, Outcome::Success);
            let store_key = key.filter(|_| control.write);
            if let Some(key) = &store_key {
                req.store(app, key, &answer).await;
            }
            Attempt::Served(Box::new(Served {
                version: version.clone(),
                answer,
                hit: false,
                backend_ms: *backend_ms,
                store_key,
            }))
        }
        Err(BackendFailure::Rejected(e)) => {
            app.breakers.record(&backend, Outcome::Success);
            Attempt::Rejected(e)
        }
        Err(BackendFailure::Down { message, timeout }) => {
            tracing::warn!(model = %version.model, version = %version.version, backend = %backend, error = %message, timeout, "backend failed; trying the next route");
            let outcome = if timeout {
                Outcome::Timeout
            } else {
                Outcome::Failure
            };
            app.breakers.record(&backend, outcome);
            Attempt::Failed
        }
    }
}

/// Which of a cache lookup and a backend call answered.
enum Raced<A> {
    Cached(A),
    Called(Result<A, BackendFailure>),
}

/// Runs the lookup (if any) and the call together, the lookup polled first: a
/// hit drops the call, a miss waits for it.
async fn race<A>(
    lookup: Option<impl std::future::Future<Output = Option<A>>>,
    call: impl std::future::Future<Output = Result<A, BackendFailure>>,
) -> Raced<A> {
    let Some(lookup) = lookup else {
        return Raced::Called(call.await);
    };
    tokio::pin!(lookup, call);
    tokio::select! {
        biased;
        cached = &mut lookup => match cached {
            Some(answer) => Raced::Cached(answer),
            None => Raced::Called(call.await),
        },
        outcome = &mut call => Raced::Called(outcome),
    }
}

/// Milliseconds as a whole, non-negative count.
pub fn whole_ms(ms: f64) -> u64 {
    // Float-to-int `as` saturates (NaN is 0): the one safe cast here.
    ms.round().max(0.0) as u64
}

/// The cost of `tokens` at `version`'s prices.
pub fn cost(version: &ModelVersion, tokens: Tokens) -> Result<u64, Overflow> {
    amounts::add(
        amounts::cost_micros(tokens.prompt, version.price_per_1k_tokens_micros)?,
        amounts::cost_micros(
            tokens.completion,
            version.price_per_1k_completion_tokens_micros,
        )?,
        "cost",
    )
}

impl Admitted {
    /// Settles the request served by `version` (see the module's step 3): what is
    /// billed never passes what was reserved.
    pub fn finish(
        self,
        version: &ModelVersion,
        tokens: Tokens,
        hit: bool,
        backend_ms: f64,
    ) -> Receipt {
        let latency_ms = self.elapsed_ms();
        self.settle(
            version,
            tokens,
            hit,
            backend_ms,
            (latency_ms - backend_ms).max(0.0),
        )
    }

    /// Settles a stream at its end: its overhead is the gateway's part of the
    /// time to first token; the rest of the stream is the backend's.
    pub fn finish_stream(
        self,
        version: &ModelVersion,
        tokens: Tokens,
        hit: bool,
        overhead_ms: f64,
    ) -> Receipt {
        let backend_ms = (self.elapsed_ms() - overhead_ms).max(0.0);
        self.settle(version, tokens, hit, backend_ms, overhead_ms)
    }

    /// Milliseconds since the request was admitted.
    pub fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    fn settle(
        self,
        version: &ModelVersion,
        tokens: Tokens,
        hit: bool,
        backend_ms: f64,
        overhead_ms: f64,
    ) -> Receipt {
        let app = self.app.clone();
        let (receipt, event) = self.account(version, tokens, hit, backend_ms, overhead_ms);
        app.usage.emit(&event);
        receipt
    }

    /// Settles a batch line: its receipt and its usage event, which the caller
    /// emits once the line's result is durable.
    pub fn finish_line(
        self,
        version: &ModelVersion,
        tokens: Tokens,
        hit: bool,
        backend_ms: f64,
    ) -> (Receipt, UsageEvent) {
        let latency_ms = self.elapsed_ms();
        self.account(
            version,
            tokens,
            hit,
            backend_ms,
            (latency_ms - backend_ms).max(0.0),
        )
    }

    /// What the request cost (never past its bound) and its usage event; gives
    /// back its budget reservation and unused tokens.
    fn account(
        mut self,
        version: &ModelVersion,
        tokens: Tokens,
        hit: bool,
        backend_ms: f64,
        overhead_ms: f64,
    ) -> (Receipt, UsageEvent) {
        let app = self.app.clone();
        let priced = match &self.line {
            None => cost(version, tokens),
            Some(_) => crate::batch::batches::batch_cost(version, tokens.prompt, tokens.completion),
        };
        let cost = priced.unwrap_or(self.most).min(self.most);
        if let Some(r) = self.reservation.take() {
            let budget = app.budget.clone();
            tokio::spawn(async move { budget.settle(&r, Some(cost)).await });
        }
        let total = tokens.prompt.saturating_add(tokens.completion);
        if self.line.is_none() {
            let (limiter, settled) = (app.limiter.clone(), self.limits.clone());
            tokio::spawn(async move { limiter.settle(&settled, total).await });
        }
        let latency_ms = self.elapsed_ms();
        // Cache hits are billed like misses (the price of the version that served
        // them) and marked as hits; compute time is only what a backend spent.
        let event = UsageEvent {
            event_id: match &self.line {
                Some(t) => t.event_id.clone(),
                None => uuid::Uuid::now_v7().to_string(),
            },
            tenant_id: self.tenant.id.clone(),
            key_id: self.key_id.clone(),
            model: version.model.clone(),
            model_version: version.version.clone(),
            requests: 1,
            inputs: tokens.inputs,
            tokens: tokens.prompt,
            completion_tokens: tokens.completion,
            cache_hit: hit,
            cache_hits: 0,
            latency_ms,
            overhead_ms,
            compute_ms: if hit { 0 } else { whole_ms(backend_ms) },
            cost_micros: cost,
            at_ms: self.at_ms,
            batch: self.line.is_some(),
        };
        tracing::info!(
            tenant_id = %self.tenant.id, key_id = %self.key_id, model = %version.model, version = %version.version,
            inputs = tokens.inputs, prompt_tokens = tokens.prompt, completion_tokens = tokens.completion,
            cache_hit = hit, latency_ms, overhead_ms, request_id = %self.request_id, batch = self.line.is_some(),
            limited_ms = self.marks.limited, routed_ms = self.marks.routed, reserved_ms = self.marks.reserved,
            answered_ms = self.marks.served, first_sent_ms = self.marks.first_sent, "served"
        );
        crate::gateway::telemetry::record(&crate::gateway::telemetry::RequestMetrics {
            model: &version.model,
            version: &version.version,
            tenant_id: &self.tenant.id,
            latency_ms,
            overhead_ms,
            backend_ms,
            cache_hit: hit,
            tokens: total,
            inputs: usize::try_from(tokens.inputs).unwrap_or(usize::MAX),
            cost_micros: cost,
        });
        let receipt = Receipt {
            tokens,
            cost_micros: cost,
            latency_ms,
            overhead_ms,
        };
        (receipt, event)
    }

    /// The headers every answer carries: rate-limit standing, the version that
    /// served and whether the cache did.
    pub fn headers(&self, h: &mut HeaderMap, version: &ModelVersion, hit: bool) {
        insert_headers(h, &self.limits.standing);
        h.insert(
            "x-tenantai-model-version",
            header(&format!("{}@{}", version.model, version.version)),
        );
        h.insert(
            "x-tenantai-cache",
            HeaderValue::from_static(if hit { "hit" } else { "miss" }),
        );
    }
}

impl Drop for Admitted {
    /// An admitted request that never finished (it failed) releases its reservation.
    fn drop(&mut self) {
        if let Some(r) = self.reservation.take() {
            let budget = self.app.budget.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { budget.settle(&r, None).await });
            }
        }
    }
}

/// A header value, or `invalid` for text that cannot be one.
pub fn header(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The receipt's own headers on a whole answer: overhead and cost.
pub fn receipt_headers(h: &mut HeaderMap, r: &Receipt) {
    h.insert(
        "x-tenantai-overhead-ms",
        header(&format!("{:.3}", r.overhead_ms)),
    );
    h.insert("x-tenantai-cost-micros", HeaderValue::from(r.cost_micros));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    async fn call_marking(
        polled: &AtomicBool,
        after: Duration,
    ) -> Result<&'static str, BackendFailure> {
        polled.store(true, Ordering::SeqCst);
        tokio::time::sleep(after).await;
        Ok("backend")
    }

    #[tokio::test]
    async fn a_memory_hit_never_sends_the_call() {
        let polled = AtomicBool::new(false);
        let lookup = Some(async { Some("cached") });
        let got = race(lookup, call_marking(&polled, Duration::ZERO)).await;
        assert!(matches!(got, Raced::Cached("cached")));
        assert!(!polled.load(Ordering::SeqCst), "the call was started");
    }

    // Orders of magnitude apart, so that the order holds on a loaded machine.
    #[tokio::test]
    async fn a_slow_table_lookup_races_the_call() {
        // A miss waits for the call.
        let polled = AtomicBool::new(false);
        let miss = Some(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            None
        });
        let got = race(miss, call_marking(&polled, Duration::from_millis(300))).await;
        assert!(matches!(got, Raced::Called(Ok("backend"))));
        // A table hit before the backend's answer wins and drops the call.
        let hit = Some(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Some("cached")
        });
        let got = race(hit, call_marking(&polled, Duration::from_secs(5))).await;
        assert!(matches!(got, Raced::Cached("cached")));
        // A backend faster than the table is served.
        let late = Some(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Some("cached")
        });
        let got = race(late, call_marking(&polled, Duration::from_millis(5))).await;
        assert!(matches!(got, Raced::Called(Ok("backend"))));
    }
}
