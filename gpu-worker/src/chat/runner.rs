//! The model thread: takes new jobs, lets the scheduler pick each step's work, runs
//! the forward pass, samples, and streams every sequence's text to its client.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::llama::{Chunk, Llama, Logits};
use super::metrics::ChatMetrics;
use super::scheduler::{Schedulable, Scheduler, SchedulerConfig, Work};
use super::sequence::{ChatJob, Sequence};
use super::tokenizer::ChatTokenizer;

pub(crate) struct Runner {
    pub model: Llama,
    pub tokenizer: Arc<ChatTokenizer>,
    pub metrics: Arc<ChatMetrics>,
    pub scheduler: Scheduler<Sequence>,
}

impl Runner {
    pub fn new(
        model: Llama,
        tokenizer: Arc<ChatTokenizer>,
        metrics: Arc<ChatMetrics>,
        config: SchedulerConfig,
    ) -> Runner {
        Runner {
            model,
            tokenizer,
            metrics,
            scheduler: Scheduler::new(config),
        }
    }

    /// Runs until the job channel closes and every accepted job is answered.
    pub fn run(mut self, jobs: Receiver<ChatJob>) {
        let mut open = true;
        loop {
            if self.scheduler.is_idle() {
                if !open {
                    return;
                }
                match jobs.recv_timeout(Duration::from_secs(1)) {
                    Ok(job) => self.enqueue(job),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while open {
                match jobs.try_recv() {
                    Ok(job) => self.enqueue(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.step();
        }
    }

    fn enqueue(&mut self, job: ChatJob) {
        self.scheduler.waiting.push_back(Sequence::new(job));
    }

    /// One continuous-batching step.
    fn step(&mut self) {
        // Clients that left free their place before anything is computed for them.
        let before = self.scheduler.waiting.len();
        self.scheduler.waiting.retain(|s| !s.abandoned());
        self.release_waiting(before - self.scheduler.waiting.len());
        let left = self.scheduler.retire(|s| s.abandoned());
        if !left.is_empty() {
            tracing::debug!(n = left.len(), "clients left; their sequences were freed");
        }
        let joined = self.scheduler.admit();
        self.release_waiting(joined);
        for seq in self
            .scheduler
            .running
            .iter_mut()
            .filter(|s| s.cache.is_none())
        {
            let wait = seq.job.enqueued.elapsed().as_secs_f64();
            self.metrics.queue_wait.observe(wait);
            seq.cache = Some(self.model.new_cache(seq.reservation()));
        }
        let plan = self.scheduler.plan();
        if plan.is_empty() {
            return;
        }
        let started = Instant::now();
        let outcome = self.forward(&plan);
        let now = Instant::now();
        let mut prefill = 0;
        let mut decode = 0;
        for ((i, work), result) in plan.iter().zip(outcome) {
            let seq = &mut self.scheduler.running[*i];
            match work {
                Work::Prefill(n) => {
                    seq.read += n;
                    prefill += n;
                }
                Work::Decode => decode += 1,
            }
            match result {
                Ok(Some(logits)) => {
                    let token = seq.sampler.sample(&logits);
                    if let Some(gap) = seq.accept(&self.tokenizer, token, now) {
                        self.metrics.inter_token.observe(gap);
                    } else {
                        let ttft = now.duration_since(seq.job.enqueued).as_secs_f64();
                        self.metrics.time_to_first_token.observe(ttft);
                    }
                }
                Ok(None) => {}
                Err(e) => seq.fail(e),
            }
        }
        self.metrics
            .record_step(prefill, decode, now.duration_since(started).as_secs_f64());
        let done = self.scheduler.retire(|s| s.finished);
        self.metrics
            .completed
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        self.metrics
            .running
            .store(self.scheduler.running.len() as u64, Ordering::Relaxed);
    }

    fn release_waiting(&self, n: usize) {
        if n > 0 {
            self.metrics.waiting.fetch_sub(n as u64, Ordering::Relaxed);
        }
    }

    /// The logits (when asked for) of each planned chunk; if the batched pass fails,
    /// each chunk is retried alone so a failure stays with its own sequence.
    fn forward(&mut self, plan: &[(usize, Work)]) -> Vec<Result<Option<Vec<f32>>, String>> {
        match self.forward_group(plan) {
            Ok(out) => out.into_iter().map(Ok).collect(),
            Err(e) if plan.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!(error = %e, "batched step failed; retrying its sequences one by one");
                plan.iter()
                    .map(|p| {
                        self.forward_group(std::slice::from_ref(p))
                            .map(|mut v| v.remove(0))
                    })
                    .collect()
            }
        }
    }

    fn forward_group(&mut self, plan: &[(usize, Work)]) -> Result<Vec<Option<Vec<f32>>>, String> {
        let model = &self.model;
        let mut wanted = Vec::with_capacity(plan.len());
        let mut chunks: Vec<Chunk> = Vec::with_capacity(plan.len());
        // Each planned index is distinct, so the sequences can be borrowed apart.
        let mut seqs: Vec<Option<&mut Sequence>> =
            self.scheduler.running.iter_mut().map(Some).collect();
        for (i, work) in plan {
            let Sequence {
                job,
                cache,
                read,
                pending,
                ..
            } = seqs[*i].take().ok_or("a sequence was planned twice")?;
            let (tokens, logits): (&[u32], bool) = match work {
                Work::Prefill(n) => {
                    let end = *read + n;
                    (&job.prompt[*read..end], end == job.prompt.len())
                }
                Work::Decode => match pending {
                    Some(t) => (std::slice::from_ref(&*t), true),
                    None => return Err("a decoding sequence has no token to feed".into()),
                },
            };
            let cache = cache.as_mut().ok_or("a running sequence has no cache")?;
            wanted.push(logits);
            let logits = if logits { Logits::Last } else { Logits::None };
            chunks.push(Chunk {
                tokens,
                cache,
                logits,
            });
        }
        let result = catch_unwind(AssertUnwindSafe(|| model.forward(&mut chunks)))
            .map_err(|_| "the forward pass panicked".to_string())?
            .map_err(|e| e.to_string())?;
        let mut logits = result.into_iter();
        Ok(wanted
            .into_iter()
            .map(|w| if w { logits.next() } else { None })
            .collect())
    }
}
