//! Usage metering: every billable call emits a usage event; events fold into
//! per-tenant, per-day, per-model aggregates exactly once.
//!
//! Exactly once: the event id is claimed with a conditional put in the same
//! transaction as the adds. A redelivered event fails its claim and adds nothing.
//! The claim lives 30 days, longer than SQS keeps a message (14 days at most).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime};

use crate::error::{ApiError, ApiResult};
use crate::store::{
    now_secs, Attrs, Cond, Item, Key, Outgoing, Query, Queue, Receive, StoreError, Table, TxOp,
    Update,
};

/// How long a claimed event id is remembered.
pub const CLAIM_TTL_SECS: i64 = 30 * 24 * 3600;

/// The counters of one aggregate (`tokens` are prompt tokens, read; a chat call
/// also generates `completion_tokens`).
/// What batch lines add besides (`requests`, `tokens`, `completion_tokens`, `cost_micros`).
pub const BATCH_COUNTERS: [&str; 4] = [
    "batch_requests",
    "batch_tokens",
    "batch_completion_tokens",
    "batch_cost_micros",
];

pub const COUNTERS: [&str; 7] = [
    "requests",
    "inputs",
    "tokens",
    "completion_tokens",
    "cache_hits",
    "cost_micros",
    "compute_ms",
];

fn one() -> u64 {
    1
}

/// One billable call, or several calls of one tenant, key, model version and day
/// that the api merged before sending (`requests` > 1; the counters are sums).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageEvent {
    pub event_id: String,
    pub tenant_id: String,
    pub key_id: String,
    pub model: String,
    pub model_version: String,
    /// Calls this event stands for.
    #[serde(default = "one")]
    pub requests: u64,
    pub inputs: u64,
    /// Prompt (input) tokens.
    pub tokens: u64,
    /// Tokens generated (chat; 0 for embeddings).
    #[serde(default)]
    pub completion_tokens: u64,
    /// A single call served from the cache.
    pub cache_hit: bool,
    /// Cache hits among merged calls (besides the one `cache_hit` marks).
    #[serde(default)]
    pub cache_hits: u64,
    pub latency_ms: f64,
    /// The gateway's own part of the latency: for a stream, of its time to first
    /// token (before the backend's first byte, and between that byte and the
    /// client's); for a whole answer, the latency less the backend's time.
    #[serde(default)]
    pub overhead_ms: f64,
    /// Time the backend spent computing (0 for a cache hit).
    pub compute_ms: u64,
    /// Cost at the price in force when the call was made.
    pub cost_micros: u64,
    /// When the call was made, Unix milliseconds.
    pub at_ms: i64,
    /// A batch line (its counters are also added to the `batch_*` counters).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
}

impl UsageEvent {
    /// Checks what a producer could have got wrong (a malformed event is dead-lettered).
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("event_id", &self.event_id),
            ("tenant_id", &self.tenant_id),
            ("model", &self.model),
        ] {
            if v.is_empty() || v.len() > 256 {
                return Err(format!("{name} must hold 1 to 256 characters"));
            }
        }
        for (name, ms) in [
            ("latency_ms", self.latency_ms),
            ("overhead_ms", self.overhead_ms),
        ] {
            if !ms.is_finite() || ms < 0.0 {
                return Err(format!("{name} must be a non-negative number"));
            }
        }
        if self.at_ms <= 0 {
            return Err("at_ms must be a Unix time in milliseconds".into());
        }
        if self.requests == 0 || self.hits() > self.requests {
            return Err("requests must be at least 1 and at least the cache hits".into());
        }
        // Every counter must fit the table's signed counters.
        self.counters().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The event's counters as the signed deltas its fold adds, in
    /// [`COUNTERS`] order; an error names the first that does not fit.
    pub fn counters(&self) -> Result<[i64; 7], crate::billing::amounts::Overflow> {
        use crate::billing::amounts::to_counter;
        Ok([
            to_counter(self.requests, "requests")?,
            to_counter(self.inputs, "inputs")?,
            to_counter(self.tokens, "tokens")?,
            to_counter(self.completion_tokens, "completion_tokens")?,
            to_counter(self.hits(), "cache_hits")?,
            to_counter(self.cost_micros, "cost_micros")?,
            to_counter(self.compute_ms, "compute_ms")?,
        ])
    }

    /// Cache hits among the calls this event stands for.
    pub fn hits(&self) -> u64 {
        self.cache_hits.saturating_add(u64::from(self.cache_hit))
    }

    /// Events with equal keys fold into the same rows, so they may be merged.
    pub fn merge_key(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            self.tenant_id,
            self.key_id,
            self.model,
            self.model_version,
            self.day()
        )
    }

    /// Adds `other`'s calls to this event (same [`UsageEvent::merge_key`]); this
    /// event keeps its id and time. When a sum would not fit, nothing changes
    /// and the events stay apart.
    pub fn absorb(&mut self, other: &UsageEvent) -> Result<(), crate::billing::amounts::Overflow> {
        use crate::billing::amounts::add;
        let merged = UsageEvent {
            cache_hits: add(self.hits(), other.hits(), "cache_hits")?,
            cache_hit: false,
            requests: add(self.requests, other.requests, "requests")?,
            inputs: add(self.inputs, other.inputs, "inputs")?,
            tokens: add(self.tokens, other.tokens, "tokens")?,
            completion_tokens: add(
                self.completion_tokens,
                other.completion_tokens,
                "completion_tokens",
            )?,
            latency_ms: self.latency_ms + other.latency_ms,
            overhead_ms: self.overhead_ms + other.overhead_ms,
            compute_ms: add(self.compute_ms, other.compute_ms, "compute_ms")?,
            cost_micros: add(self.cost_micros, other.cost_micros, "cost_micros")?,
            ..self.clone()
        };
        merged.counters()?;
        *self = merged;
        Ok(())
    }

    pub fn day(&self) -> String {
        day_of(self.at_ms)
    }
}

pub use crate::billing::amounts::cost_micros;

/// A date as YYYY-MM-DD (how days are stored and reported).
pub fn format_day(date: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The UTC date (YYYY-MM-DD) of a Unix time in milliseconds.
pub fn day_of(at_ms: i64) -> String {
    let date = OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000))
        .map(|t| t.date())
        .unwrap_or(Date::MIN);
    format_day(date)
}

/// The UTC month (YYYY-MM) of a Unix time in milliseconds: what month spend
/// and budgets are kept by.
pub fn month_of(at_ms: i64) -> String {
    let mut day = day_of(at_ms);
    day.truncate(7);
    day
}

/// Parses YYYY-MM-DD.
pub fn parse_day(s: &str) -> Option<Date> {
    let mut parts = s.splitn(3, '-');
    let year = parts.next()?.parse().ok()?;
    let month = Month::try_from(parts.next()?.parse::<u8>().ok()?).ok()?;
    let day = parts.next()?.parse().ok()?;
    if s.len() != 10 {
        return None;
    }
    Date::from_calendar_date(year, month, day).ok()
}

fn claim_key(event_id: &str) -> Key {
    Key::new(format!("EVENT#{event_id}"), "CLAIM")
}

pub fn usage_pk(tenant_id: &str) -> String {
    format!("USAGE#{tenant_id}")
}

/// Sort key of a day's aggregate for one model: days sort in order.
fn day_sk(day: &str, model: &str) -> String {
    format!("D#{day}#M#{model}")
}

/// Sort key of a month's spend (what budgets read).
pub fn month_sk(month: &str) -> String {
    format!("MONTH#{month}")
}

/// What folding one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Folded {
    Added,
    /// Its id was claimed before: a redelivery, nothing added.
    Duplicate,
}

#[derive(Clone)]
pub struct Meter {
    table: Arc<dyn Table>,
}

impl Meter {
    pub fn new(table: Arc<dyn Table>) -> Self {
        Meter { table }
    }

    /// Folds one event into its day/model aggregate and its month's spend, exactly
    /// once. An event that cannot be folded (a counter out of range, or a sum the
    /// store refuses) fails with [`StoreError::Invalid`]: redelivering it cannot help.
    pub async fn fold(&self, e: &UsageEvent) -> Result<Folded, StoreError> {
        let deltas = e
            .counters()
            .map_err(|err| StoreError::Invalid(err.to_string()))?;
        let mut claim = Attrs::new();
        claim.insert("tenant_id".into(), e.tenant_id.clone().into());
        let mut claim = Item::new(claim_key(&e.event_id), claim);
        claim.expires_at = Some(now_secs() + CLAIM_TTL_SECS);
        let day = e.day();
        let aggregate = COUNTERS
            .iter()
            .zip(deltas)
            .fold(
                Update::new(Key::new(usage_pk(&e.tenant_id), day_sk(&day, &e.model))),
                |u, (name, delta)| u.add(*name, delta),
            )
            .set("day", day.clone().into())
            .set("model", e.model.clone().into());
        let [requests, _, tokens, completion, _, cost, _] = deltas;
        let aggregate = if e.batch {
            BATCH_COUNTERS
                .iter()
                .zip([requests, tokens, completion, cost])
                .fold(aggregate, |u, (name, delta)| u.add(*name, delta))
        } else {
            aggregate
        };
        let month = Update::new(Key::new(usage_pk(&e.tenant_id), month_sk(&day[..7])))
            .add("cost_micros", cost)
            .add("requests", requests);
        match self
            .table
            .transact(&[
                TxOp::Put(claim, Cond::Absent),
                TxOp::Update(aggregate),
                TxOp::Update(month),
            ])
            .await
        {
            Ok(()) => {
                self.note_key_use(e).await;
                Ok(Folded::Added)
            }
            Err(StoreError::TransactionCancelled { index: 0 }) => Ok(Folded::Duplicate),
            Err(e) => Err(e),
        }
    }

    /// Records when the event's key was last used (what key listings show).
    /// Best effort, after the fold: the counts are already exact, and the
    /// key's next call records it again.
    async fn note_key_use(&self, e: &UsageEvent) {
        let at = e.at_ms.div_euclid(1000);
        if let Err(err) =
            crate::tenancy::keys::record_use(self.table.as_ref(), &e.tenant_id, &e.key_id, at).await
        {
            tracing::warn!(event_id = %e.event_id, key_id = %e.key_id, error = %err, "key's last use not recorded");
        }
    }

    /// A tenant's spend in a month (YYYY-MM), micro-dollars.
    pub async fn month_spend(&self, tenant_id: &str, month: &str) -> ApiResult<u64> {
        let item = self
            .table
            .get(&Key::new(usage_pk(tenant_id), month_sk(month)))
            .await?;
        Ok(item.map_or(0, |i| {
            crate::billing::amounts::from_counter(i.number("cost_micros"))
        }))
    }

    /// The day/model aggregates of a tenant from `from` to `to` (inclusive).
    pub async fn aggregates(
        &self,
        tenant_id: &str,
        from: Date,
        to: Date,
    ) -> ApiResult<Vec<Aggregate>> {
        let mut out = Vec::new();
        let mut cursor = None;
        let (first, last) = (format_day(from), format_day(to));
        loop {
            let page = self
                .table
                .query(
                    &Query::new(usage_pk(tenant_id))
                        .prefix("D#")
                        .limit(500)
                        .after(cursor),
                )
                .await?;
            for item in page.items {
                let day = item
                    .attrs
                    .get("day")
                    .and_then(|d| d.as_str())
                    .unwrap_or_default()
                    .to_string();
                if day.as_str() < first.as_str() || day.as_str() > last.as_str() {
                    continue;
                }
                let counters = COUNTERS
                    .iter()
                    .chain(BATCH_COUNTERS.iter())
                    .map(|c| {
                        (
                            c.to_string(),
                            crate::billing::amounts::from_counter(item.number(c)),
                        )
                    })
                    .collect();
                let model = item
                    .attrs
                    .get("model")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default()
                    .to_string();
                out.push(Aggregate {
                    day,
                    model,
                    counters,
                });
            }
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        Ok(out)
    }
}

/// One day's usage of one model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Aggregate {
    pub day: String,
    pub model: String,
    pub counters: BTreeMap<String, u64>,
}

/// One queue message to fold: its id (what a partial batch failure names) and body.
#[derive(Clone, Debug)]
pub struct Record {
    pub id: String,
    pub body: String,
}

/// What one batch came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub added: usize,
    pub duplicates: usize,
    /// Events moved to the dead-letter queue: malformed, or out of range to fold.
    pub dead_lettered: usize,
    /// Ids of the records to redeliver (the store or the DLQ failed for them).
    pub failed: Vec<String>,
}

/// Events folded concurrently within one batch (adds commute, so order is free).
const FOLD_CONCURRENCY: usize = 10;

enum RecordOutcome {
    Folded(Folded),
    DeadLettered,
    Failed,
}

impl Meter {
    /// Folds a batch of queue messages: one that is malformed or cannot be folded
    /// (a counter out of range) goes to `dlq` as `{"reason", "body"}` with a log
    /// line saying why, and counts as handled; a fold the store fails is
    /// reported in `failed`, so only it is redelivered.
    pub async fn process(&self, dlq: &dyn Queue, records: &[Record]) -> BatchOutcome {
        // Chunks of concurrent folds: a plain loop (no closures held across an
        // await) keeps the future `Send` for callers that spawn it.
        let mut outcomes: Vec<(String, RecordOutcome)> = Vec::with_capacity(records.len());
        for chunk in records.chunks(FOLD_CONCURRENCY) {
            let mut folds = Vec::with_capacity(chunk.len());
            for r in chunk {
                folds.push(async move { (r.id.clone(), self.process_one(dlq, r).await) });
            }
            outcomes.extend(futures::future::join_all(folds).await);
        }
        let mut out = BatchOutcome::default();
        for (id, outcome) in outcomes {
            match outcome {
                RecordOutcome::Folded(Folded::Added) => out.added += 1,
                RecordOutcome::Folded(Folded::Duplicate) => out.duplicates += 1,
                RecordOutcome::DeadLettered => out.dead_lettered += 1,
                RecordOutcome::Failed => out.failed.push(id),
            }
        }
        out
    }

    async fn process_one(&self, dlq: &dyn Queue, r: &Record) -> RecordOutcome {
        // A dead letter redriven to the usage queue is judged by its event again.
        let unwrapped = dead_letter_body(&r.body);
        let body = unwrapped.as_deref().unwrap_or(&r.body);
        let why = match parse_event(body) {
            Ok(event) => match self.fold(&event).await {
                Ok(f) => return RecordOutcome::Folded(f),
                Err(StoreError::Invalid(why)) => format!("cannot be folded: {why}"),
                Err(e) => {
                    tracing::error!(message_id = %r.id, event_id = %event.event_id, error = %e, "usage event not folded; it will be redelivered");
                    return RecordOutcome::Failed;
                }
            },
            Err(why) => why,
        };
        tracing::warn!(message_id = %r.id, reason = %why, body = %truncated(body), "usage event moved to the dead-letter queue");
        match dlq.send(&Outgoing::new(dead_letter(&why, body))).await {
            Ok(_) => RecordOutcome::DeadLettered,
            Err(e) => {
                tracing::error!(message_id = %r.id, error = %e, "usage event could not be dead-lettered; it will be redelivered");
                RecordOutcome::Failed
            }
        }
    }

    /// Receives one batch from the usage queue, folds it and deletes what was
    /// handled; returns how many messages it received. What failed stays in the
    /// queue and reappears after the visibility timeout (the queue dead-letters it
    /// after its max receives).
    pub async fn drain_once(
        &self,
        queue: &dyn Queue,
        dlq: &dyn Queue,
        wait: Duration,
    ) -> Result<usize, StoreError> {
        let messages = queue
            .receive(&Receive {
                max: crate::store::queue::MAX_BATCH,
                wait,
                visibility: Duration::from_secs(60),
            })
            .await?;
        let records: Vec<Record> = messages
            .iter()
            .map(|m| Record {
                id: m.id.clone(),
                body: m.body.clone(),
            })
            .collect();
        let outcome = self.process(dlq, &records).await;
        for m in &messages {
            if !outcome.failed.contains(&m.id) {
                queue.delete(&m.receipt).await?;
            }
        }
        Ok(messages.len())
    }

    /// Drains the usage queue until `stop` turns true (`tenantai dev`'s stand-in
    /// for the SQS trigger of the metering function).
    pub async fn drain(
        &self,
        queue: Arc<dyn Queue>,
        dlq: Arc<dyn Queue>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let round = self.drain_once(queue.as_ref(), dlq.as_ref(), Duration::from_secs(1));
            tokio::select! {
                r = round => if let Err(e) = r {
                    tracing::error!(error = %e, "usage queue unreadable; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                },
                _ = stopped(&mut stop) => return,
            }
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A dead-lettered event: why it was refused, and the message as received.
pub fn dead_letter(reason: &str, body: &str) -> String {
    serde_json::json!({"reason": reason, "body": body}).to_string()
}

/// The message inside a dead letter (see [`dead_letter`]), if `body` is one.
fn dead_letter_body(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Letter {
        #[serde(rename = "reason")]
        _reason: String,
        body: String,
    }
    serde_json::from_str::<Letter>(body).ok().map(|l| l.body)
}

fn truncated(s: &str) -> &str {
    let mut end = s.len().min(512);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses a usage event from a queue message body.
pub fn parse_event(body: &str) -> Result<UsageEvent, String> {
    let e: UsageEvent =
        serde_json::from_str(body).map_err(|e| format!("not a usage event: {e}"))?;
    e.validate()?;
    Ok(e)
}

pub fn invalid_dates(message: &str) -> ApiError {
    ApiError::invalid_param("from", message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_events_sum_their_calls_and_old_events_read_as_one_call() {
        let old = r#"{"event_id":"e1","tenant_id":"t","key_id":"k","model":"m","model_version":"1","inputs":2,"tokens":9,"cache_hit":true,"latency_ms":1.5,"compute_ms":0,"cost_micros":3,"at_ms":1795521600000}"#;
        let mut a: UsageEvent = serde_json::from_str(old).unwrap();
        assert_eq!((a.requests, a.hits()), (1, 1));
        assert_eq!(a.overhead_ms, 0.0);
        let b = UsageEvent {
            event_id: "e2".into(),
            cache_hit: false,
            overhead_ms: 0.75,
            ..a.clone()
        };
        assert_eq!(a.merge_key(), b.merge_key());
        a.absorb(&b).unwrap();
        assert_eq!(
            (a.requests, a.hits(), a.tokens, a.cost_micros, a.overhead_ms),
            (2, 1, 18, 6, 0.75)
        );
        assert_eq!(a.event_id, "e1");
        assert!(a.validate().is_ok());
        let next_day = UsageEvent {
            at_ms: b.at_ms + 86_400_000,
            ..b.clone()
        };
        assert_ne!(next_day.merge_key(), b.merge_key());
        let bad = UsageEvent {
            cache_hits: 5,
            ..a.clone()
        };
        assert!(bad.validate().is_err());
        let none = UsageEvent { requests: 0, ..b };
        assert!(none.validate().is_err());
    }

    #[test]
    fn days() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_795_489_200_000), "2026-11-24");
        assert_eq!(parse_day("2026-11-24").map(|d| d.day()), Some(24));
        assert!(parse_day("2026-13-01").is_none());
        assert!(parse_day("2026-1-1").is_none());
        assert!(parse_day("yesterday").is_none());
    }
}
