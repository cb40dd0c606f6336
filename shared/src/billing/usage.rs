//! The api's side of metering: usage events leave the response path through an
//! in-process buffer and reach the usage queue in batches of up to ten.
//!
//! A request only pushes its event into a channel; a background task sends what
//! accumulated after `linger` (or at once when ten are waiting). Events of the
//! same tenant, key, model version and day that wait together are merged into
//! one (their counters summed), so a busy host sends a few events per linger
//! however many calls it serves. Where a process
//! may be frozen between requests (Lambda), [`UsageSink::flush_after_request`]
//! runs after each invocation's response, before the environment is frozen, so
//! nothing waits in memory across invocations.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::billing::metering::UsageEvent;
use crate::store::queue::MAX_BATCH;
use crate::store::{Outgoing, Queue};

/// How long an event may wait for neighbours before its batch is sent.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(50);
/// Batches in flight at once when a backlog is sent.
const SEND_CONCURRENCY: usize = 8;
/// Attempts per batch before its events are logged as undelivered.
const SEND_ATTEMPTS: u32 = 4;

enum Cmd {
    Event(Box<UsageEvent>),
    Flush(oneshot::Sender<()>),
}

/// Events waiting to be sent, merged by [`UsageEvent::merge_key`].
#[derive(Default)]
struct Buffer {
    events: Vec<UsageEvent>,
    index: std::collections::HashMap<String, usize>,
}

impl Buffer {
    fn push(&mut self, event: UsageEvent) {
        match self.index.entry(event.merge_key()) {
            std::collections::hash_map::Entry::Occupied(at) => {
                // Sums that would not fit leave the event on its own.
                if self.events[*at.get()].absorb(&event).is_err() {
                    self.events.push(event);
                }
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(self.events.len());
                self.events.push(event);
            }
        }
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    fn take(&mut self) -> Vec<UsageEvent> {
        self.index.clear();
        std::mem::take(&mut self.events)
    }
}

/// Sends usage events to the usage queue off the response path.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::UnboundedSender<Cmd>,
    completed: Arc<watch::Sender<u64>>,
}

impl UsageSink {
    /// Starts the sender task on the current Tokio runtime.
    pub fn new(queue: Arc<dyn Queue>, linger: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(queue, rx, linger));
        UsageSink {
            tx,
            completed: Arc::new(watch::channel(0).0),
        }
    }

    /// Queues one event; never waits.
    pub fn emit(&self, event: &UsageEvent) {
        if self.tx.send(Cmd::Event(Box::new(event.clone()))).is_err() {
            tracing::error!(event_id = %event.event_id, "usage sink is closed; event not sent");
        }
    }

    /// Returns once every event emitted before the call has been sent (or given up on).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Cmd::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Marks the end of one request (its event, if any, is already emitted).
    pub fn request_done(&self) {
        self.completed.send_modify(|n| *n += 1);
    }

    /// For a Lambda invocation: waits (at most `wait`) until a request has ended
    /// since `seen`, then flushes. `seen` carries the count between invocations.
    pub async fn flush_after_request(&self, seen: &mut u64, wait: Duration) {
        let mut rx = self.completed.subscribe();
        let since = *seen;
        let _ = tokio::time::timeout(wait, rx.wait_for(|n| *n > since)).await;
        *seen = *rx.borrow();
        self.flush().await;
    }
}

async fn run(queue: Arc<dyn Queue>, mut rx: mpsc::UnboundedReceiver<Cmd>, linger: Duration) {
    let mut buffer = Buffer::default();
    let mut deadline: Option<Instant> = None;
    loop {
        let cmd = match deadline {
            Some(at) => tokio::select! {
                cmd = rx.recv() => cmd,
                _ = tokio::time::sleep_until(at) => {
                    send_all(&queue, &mut buffer).await;
                    deadline = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match cmd {
            Some(Cmd::Event(event)) => {
                buffer.push(*event);
                // Take whatever else is already waiting before deciding.
                let mut flush = None;
                while flush.is_none() && buffer.len() < MAX_BATCH * SEND_CONCURRENCY {
                    match rx.try_recv() {
                        Ok(Cmd::Event(e)) => buffer.push(*e),
                        Ok(Cmd::Flush(done)) => flush = Some(done),
                        Err(_) => break,
                    }
                }
                if flush.is_some() || buffer.len() >= MAX_BATCH {
                    send_all(&queue, &mut buffer).await;
                    deadline = None;
                } else if deadline.is_none() {
                    deadline = Some(Instant::now() + linger);
                }
                if let Some(done) = flush {
                    let _ = done.send(());
                }
            }
            Some(Cmd::Flush(done)) => {
                send_all(&queue, &mut buffer).await;
                deadline = None;
                let _ = done.send(());
            }
            None => {
                send_all(&queue, &mut buffer).await;
                return;
            }
        }
    }
}

/// Sends the buffer in batches of ten, several at once, retrying each batch
/// with backoff; a batch that still fails is logged event by event (the log
/// line holds the event, so it can be replayed).
async fn send_all(queue: &Arc<dyn Queue>, buffer: &mut Buffer) {
    if buffer.len() == 0 {
        return;
    }
    let mut pending = buffer
        .take()
        .into_iter()
        .filter_map(|event| match serde_json::to_string(&event) {
            Ok(body) => Some(Outgoing::new(body)),
            Err(e) => {
                tracing::error!(error = %e, event_id = %event.event_id, "usage event does not serialise");
                None
            }
        })
        .peekable();
    let mut batches: Vec<Vec<Outgoing>> = Vec::new();
    while pending.peek().is_some() {
        batches.push(pending.by_ref().take(MAX_BATCH).collect());
    }
    stream::iter(batches)
        .for_each_concurrent(SEND_CONCURRENCY, |batch| async move {
            let mut delay = Duration::from_millis(100);
            for attempt in 1..=SEND_ATTEMPTS {
                match queue.send_batch(&batch).await {
                    Ok(_) => return,
                    Err(e) if attempt < SEND_ATTEMPTS => {
                        tracing::warn!(error = %e, attempt, "usage batch not sent; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 4;
                    }
                    Err(e) => {
                        for m in &batch {
                            tracing::error!(error = %e, event = %m.body, "usage event not delivered to the usage queue");
                        }
                    }
                }
            }
        })
        .await;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::embedded::Db;
    use crate::store::{QueueSpec, Receive};

    /// Event `i`, of its own key (events of different keys never merge).
    pub(crate) fn event(i: usize) -> UsageEvent {
        UsageEvent {
            event_id: format!("ev{i}"),
            tenant_id: "t".into(),
            // One key per event: these do not merge.
            key_id: format!("k{i}"),
            model: "m".into(),
            model_version: "1".into(),
            requests: 1,
            inputs: 1,
            tokens: 3,
            completion_tokens: 0,
            cache_hit: false,
            cache_hits: 0,
            latency_ms: 1.0,
            overhead_ms: 0.25,
            compute_ms: 1,
            cost_micros: 1,
            at_ms: 1_700_000_000_000,
            batch: false,
        }
    }

    /// An embedded queue in a temporary directory.
    pub(crate) async fn queue() -> (tempfile::TempDir, Arc<dyn Queue>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("db")).unwrap();
        let spec = QueueSpec {
            name: "u".into(),
            dead_letter: None,
        };
        db.provision_queues(&[spec]).await.unwrap();
        let q = db.queue("u").await.unwrap();
        (dir, Arc::new(q))
    }

    /// Every message on the queue, taken off it.
    pub(crate) async fn drain(q: &dyn Queue) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let got = q
                .receive(&Receive {
                    wait: Duration::ZERO,
                    ..Default::default()
                })
                .await
                .unwrap();
            if got.is_empty() {
                return out;
            }
            for m in got {
                out.push(m.body.clone());
                let _ = q.delete(&m.receipt).await;
            }
        }
    }

    #[tokio::test]
    async fn flush_sends_everything_emitted_before_it() {
        let (_dir, q) = queue().await;
        // A linger far longer than the test: only flush can have sent them.
        let sink = UsageSink::new(q.clone(), Duration::from_secs(3600));
        for i in 0..25 {
            sink.emit(&event(i));
        }
        sink.flush().await;
        let mut got: Vec<UsageEvent> = drain(q.as_ref())
            .await
            .iter()
            .filter_map(|b| serde_json::from_str(b).ok())
            .collect();
        got.sort_by_key(|e| e.event_id[2..].parse::<usize>().unwrap_or(0));
        assert_eq!(got, (0..25).map(event).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn waiting_events_of_one_key_merge_into_one_with_summed_counters() {
        let (_dir, q) = queue().await;
        let sink = UsageSink::new(q.clone(), Duration::from_secs(3600));
        for i in 0..500 {
            let mut e = event(i);
            e.key_id = "same".into();
            e.cache_hit = i % 5 == 0;
            sink.emit(&e);
        }
        let mut other = event(9999);
        other.model = "other".into();
        sink.emit(&other);
        sink.flush().await;
        let got: Vec<UsageEvent> = drain(q.as_ref())
            .await
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        // However the 501 calls were split across sends, the sums are exact.
        let same: Vec<&UsageEvent> = got.iter().filter(|e| e.key_id == "same").collect();
        assert!(same.len() < 10, "{} events sent for one key", same.len());
        assert_eq!(same.iter().map(|e| e.requests).sum::<u64>(), 500);
        assert_eq!(same.iter().map(|e| e.hits()).sum::<u64>(), 100);
        assert_eq!(same.iter().map(|e| e.tokens).sum::<u64>(), 1500);
        assert!(same.iter().all(|e| e.validate().is_ok()));
        let mut ids: Vec<&str> = same.iter().map(|e| e.event_id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), same.len(), "merged events keep distinct ids");
        assert_eq!(got.iter().filter(|e| e.model == "other").count(), 1);
    }

    #[tokio::test]
    async fn a_lone_event_goes_out_after_the_linger() {
        let (_dir, q) = queue().await;
        let sink = UsageSink::new(q.clone(), Duration::from_millis(10));
        sink.emit(&event(1));
        let mut got = Vec::new();
        for _ in 0..200 {
            got = drain(q.as_ref()).await;
            if !got.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn flush_after_request_waits_for_the_request_to_end() {
        let (_dir, q) = queue().await;
        let sink = UsageSink::new(q.clone(), Duration::from_secs(3600));
        let handler = sink.clone();
        // The invocation's handler ends after the flusher has started waiting.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            handler.emit(&event(7));
            handler.request_done();
        });
        let mut seen = 0;
        sink.flush_after_request(&mut seen, Duration::from_secs(30))
            .await;
        assert_eq!(seen, 1);
        assert_eq!(drain(q.as_ref()).await.len(), 1);
    }
}
