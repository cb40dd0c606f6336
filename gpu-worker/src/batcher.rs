//! Dynamic batching. Requests put their inputs (already tokenised) on one bounded
//! queue; dedicated model threads take what is waiting, sort it by length, split it
//! into forward passes bounded by `max_batch_tokens` and `max_batch_size`, and send
//! every input its own vector. A model that pads its inputs is planned against padding
//! ([`plan_groups`]); one that packs them end to end, into passes of equal cost
//! ([`plan_packed`]). A full queue refuses a request whole (503 + Retry-After); a
//! forward pass that fails is retried input by input, so one bad input fails only
//! its own request.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::error::EmbedError;
use crate::grouping::{plan_groups, plan_packed, split_for_workers};
use crate::metrics::Metrics;
use crate::model::Embedder;

/// The model side of the batcher: one forward pass over token sequences.
pub trait Forward: Send + 'static {
    fn forward(&mut self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, String>;

    /// Whether a pass lays its inputs end to end (no padding), so that grouping
    /// need not weigh padding.
    fn packs_tokens(&self) -> bool {
        false
    }
}

impl Forward for Embedder {
    fn forward(&mut self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        self.embed(seqs)
    }

    fn packs_tokens(&self) -> bool {
        Embedder::packs_tokens(self)
    }
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Model threads, each with its own copy of the model, taking forward passes
    /// from the same queue (on a CPU: one per core, each single-threaded).
    pub model_threads: usize,
    /// Most tokens in one forward pass (padded ones included when the model pads:
    /// inputs x longest input).
    pub max_batch_tokens: usize,
    /// Most inputs in one forward pass.
    pub max_batch_size: usize,
    /// The fixed cost of one forward pass in token-equivalents, which the planner
    /// weighs against padding: small on a CPU, large on a GPU, where a pass pays
    /// for its kernel launches whatever its size.
    pub pass_overhead_tokens: usize,
    /// Most inputs waiting in the queue; beyond it requests are refused.
    pub max_queue: usize,
    /// Seconds a refused client is told to wait.
    pub retry_after_secs: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            model_threads: 1,
            max_batch_tokens: 16384,
            max_batch_size: 256,
            pass_overhead_tokens: crate::grouping::CPU_PASS_OVERHEAD,
            max_queue: 4096,
            retry_after_secs: 1,
        }
    }
}

/// How many forward passes' worth of inputs the model thread takes from the queue
/// at once to sort by length.
const WINDOW_BATCHES: usize = 4;

/// One input's answer.
type Outcome = Result<Vec<f32>, EmbedError>;
type Reply = oneshot::Sender<Outcome>;

struct Job {
    ids: Vec<u32>,
    enqueued: Instant,
    reply: Reply,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Forward passes planned from a window, not yet taken by a model thread.
    planned: VecDeque<Vec<Job>>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panicking holder; the queue itself is intact.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The handle requests use to reach the model thread. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
    config: BatchConfig,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Starts one model thread around `model`.
    pub fn start<F: Forward>(
        model: F,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Batcher, JoinHandle<()>)> {
        let (batcher, mut handles) = Self::start_many(vec![model], config, metrics)?;
        let handle = handles
            .pop()
            .ok_or_else(|| std::io::Error::other("no model thread"))?;
        Ok((batcher, handle))
    }

    /// Starts one model thread per model, all fed from the same queue.
    pub fn start_many<F: Forward>(
        models: Vec<F>,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Batcher, Vec<JoinHandle<()>>)> {
        let config = BatchConfig {
            model_threads: models.len().max(1),
            ..config
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        });
        let batcher = Batcher {
            shared,
            config,
            metrics,
        };
        let mut handles = Vec::new();
        for (i, model) in models.into_iter().enumerate() {
            let worker = batcher.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("model-{i}"))
                    .spawn(move || worker.run(model))?,
            );
        }
        Ok((batcher, handles))
    }

    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// Embeds the sequences of one request: all are admitted or none is.
    pub async fn embed(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let receivers = self.submit(seqs)?;
        let mut out = Vec::with_capacity(receivers.len());
        for rx in receivers {
            out.push(rx.await.map_err(|_| EmbedError::Stopped)??);
        }
        Ok(out)
    }

    fn submit(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<oneshot::Receiver<Outcome>>, EmbedError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(EmbedError::Stopped);
        }
        if state.queue.len() + seqs.len() > self.config.max_queue {
            return Err(EmbedError::Overloaded {
                retry_after_secs: self.config.retry_after_secs,
            });
        }
        let now = Instant::now();
        let receivers = seqs
            .into_iter()
            .map(|ids| {
                let (reply, rx) = oneshot::channel();
                state.queue.push_back(Job {
                    ids,
                    enqueued: now,
                    reply,
                });
                rx
            })
            .collect();
        self.metrics
            .queue_depth
            .store(state.queue.len() as u64, Ordering::Relaxed);
        drop(state);
        self.shared.ready.notify_one();
        Ok(receivers)
    }

    /// Stops accepting work; the model thread finishes what is queued, then exits.
    pub fn shutdown(&self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }

    fn run<F: Forward>(self, mut model: F) {
        let packed = model.packs_tokens();
        while let Some(group) = self.next_group(packed) {
            self.run_group(&mut model, group);
        }
        tracing::info!("model thread stopped");
    }

    /// Waits for work and returns the next forward pass; `None` once shut down and
    /// drained. When nothing is planned, takes a window of the queue (oldest first)
    /// and plans its forward passes.
    fn next_group(&self, packed: bool) -> Option<Vec<Job>> {
        let mut state = self.shared.lock();
        loop {
            if let Some(group) = state.planned.pop_front() {
                if !state.planned.is_empty() || !state.queue.is_empty() {
                    // More work than this thread: wake another.
                    self.shared.ready.notify_one();
                }
                return Some(group);
            }
            if !state.queue.is_empty() {
                let window = self.take_window(&mut state);
                for jobs in self.plan(window, packed) {
                    state.planned.push_back(jobs);
                }
                continue;
            }
            if state.closed {
                return None;
            }
            state = self
                .shared
                .ready
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Splits a window of jobs into forward passes.
    fn plan(&self, jobs: Vec<Job>, packed: bool) -> Vec<Vec<Job>> {
        let lengths: Vec<usize> = jobs.iter().map(|j| j.ids.len()).collect();
        let (tokens, size, workers) = (
            self.config.max_batch_tokens,
            self.config.max_batch_size,
            self.config.model_threads,
        );
        let groups = if packed {
            plan_packed(&lengths, tokens, size, workers)
        } else {
            let groups = plan_groups(&lengths, tokens, size, self.config.pass_overhead_tokens);
            split_for_workers(groups, &lengths, workers)
        };
        let mut slots: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
        groups
            .iter()
            .map(|group| group.iter().filter_map(|&i| slots[i].take()).collect())
            .collect()
    }

    fn take_window(&self, state: &mut State) -> Vec<Job> {
        let max_jobs = self.config.max_batch_size.saturating_mul(WINDOW_BATCHES);
        let max_tokens = self.config.max_batch_tokens.saturating_mul(WINDOW_BATCHES);
        let (mut jobs, mut tokens) = (Vec::new(), 0usize);
        while let Some(job) = state.queue.front() {
            if !jobs.is_empty() && (jobs.len() >= max_jobs || tokens + job.ids.len() > max_tokens) {
                break;
            }
            tokens += job.ids.len();
            jobs.extend(state.queue.pop_front());
        }
        self.metrics
            .queue_depth
            .store(state.queue.len() as u64, Ordering::Relaxed);
        jobs
    }

    fn run_group<F: Forward>(&self, model: &mut F, jobs: Vec<Job>) {
        let packed = model.packs_tokens();
        // Inputs whose caller went away are not computed.
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if jobs.is_empty() {
            return;
        }
        let start = Instant::now();
        for job in &jobs {
            self.metrics
                .queue_wait
                .observe(start.duration_since(job.enqueued).as_secs_f64());
        }
        match self.forward(model, &jobs, packed) {
            Ok(vectors) => {
                for (job, vector) in jobs.into_iter().zip(vectors) {
                    let _ = job.reply.send(Ok(vector));
                }
            }
            Err(_) if jobs.len() > 1 => {
                // Isolate the culprit: every input on its own.
                for job in jobs {
                    self.run_group(model, vec![job]);
                }
            }
            Err(reason) => {
                tracing::error!(error = %reason, tokens = jobs.iter().map(|j| j.ids.len()).sum::<usize>(), "forward pass failed");
                self.metrics.record_error("inference");
                for job in jobs {
                    let _ = job.reply.send(Err(EmbedError::Inference(reason.clone())));
                }
            }
        }
    }

    fn forward<F: Forward>(
        &self,
        model: &mut F,
        jobs: &[Job],
        packed: bool,
    ) -> Result<Vec<Vec<f32>>, String> {
        let seqs: Vec<&[u32]> = jobs.iter().map(|j| j.ids.as_slice()).collect();
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| model.forward(&seqs)))
            .unwrap_or_else(|_| Err("the model panicked".to_string()))?;
        if result.len() != seqs.len() {
            return Err(format!(
                "the model returned {} vectors for {} inputs",
                result.len(),
                seqs.len()
            ));
        }
        let tokens: usize = seqs.iter().map(|s| s.len()).sum();
        let padded = if packed {
            tokens
        } else {
            seqs.len() * seqs.iter().map(|s| s.len()).max().unwrap_or(0)
        };
        self.metrics
            .record_batch(seqs.len(), tokens, padded, start.elapsed().as_secs_f64());
        Ok(result)
    }
}
