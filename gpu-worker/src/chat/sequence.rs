//! One generation in flight: its prompt, cache, sampler, and the text it has sent.

use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::attention::SeqCache;
use super::sampling::{Sampler, SamplingParams};
use super::scheduler::Schedulable;
use super::stop::StopMatcher;
use super::tokenizer::{ChatTokenizer, Detokenizer};

/// Why a generation ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` (or the context) ran out.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a generation sends its client, in order: text pieces, then one `Done` (or
/// `Failed`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

/// A request for the engine: a tokenised prompt and how to continue it.
#[derive(Debug)]
pub struct ChatJob {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stops: Vec<String>,
    pub events: UnboundedSender<Event>,
    pub enqueued: Instant,
}

pub(crate) struct Sequence {
    pub job: ChatJob,
    pub cache: Option<SeqCache>,
    /// Prompt tokens already in the cache.
    pub read: usize,
    /// The last sampled token, not yet fed to the model.
    pub pending: Option<u32>,
    pub generated: usize,
    pub sampler: Sampler,
    detok: Detokenizer,
    stop: StopMatcher,
    pub finished: bool,
    pub first_token_at: Option<Instant>,
    pub last_token_at: Option<Instant>,
}

impl Schedulable for Sequence {
    fn reservation(&self) -> usize {
        self.job.prompt.len() + self.job.max_tokens
    }

    fn prefill_left(&self) -> usize {
        self.job.prompt.len() - self.read
    }
}

impl Sequence {
    pub fn new(job: ChatJob) -> Sequence {
        Sequence {
            sampler: Sampler::new(job.sampling),
            stop: StopMatcher::new(job.stops.clone()),
            job,
            cache: None,
            read: 0,
            pending: None,
            generated: 0,
            detok: Detokenizer::default(),
            finished: false,
            first_token_at: None,
            last_token_at: None,
        }
    }

    /// The client went away (its receiver was dropped).
    pub fn abandoned(&self) -> bool {
        self.job.events.is_closed()
    }

    /// Takes a sampled token: sends the text it completes and decides whether the
    /// generation is over. Returns the seconds since the previous token (None for
    /// the first).
    pub fn accept(&mut self, tokenizer: &ChatTokenizer, token: u32, now: Instant) -> Option<f64> {
        let gap = self
            .last_token_at
            .map(|t| now.duration_since(t).as_secs_f64());
        self.first_token_at.get_or_insert(now);
        self.last_token_at = Some(now);
        self.generated += 1;
        if tokenizer.is_end(token) {
            let rest = self.stop.finish() + &self.detok.flush(tokenizer);
            self.finish(rest, FinishReason::Stop);
            return gap;
        }
        let piece = self.detok.push(tokenizer, token);
        let (text, stopped) = self.stop.push(&piece);
        if stopped {
            self.finish(text, FinishReason::Stop);
        } else if self.generated >= self.job.max_tokens {
            let (tail, stopped) = self.stop.push(&self.detok.flush(tokenizer));
            let rest = if stopped {
                tail
            } else {
                tail + &self.stop.finish()
            };
            self.finish(text + &rest, FinishReason::Length);
        } else {
            self.send_text(text);
            self.pending = Some(token);
        }
        gap
    }

    fn send_text(&self, text: String) {
        if !text.is_empty() {
            let _ = self.job.events.send(Event::Text(text));
        }
    }

    fn finish(&mut self, text: String, finish: FinishReason) {
        self.send_text(text);
        let _ = self.job.events.send(Event::Done {
            finish,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated,
        });
        self.finished = true;
        self.pending = None;
    }

    /// Ends the generation with an error.
    pub fn fail(&mut self, message: String) {
        let _ = self.job.events.send(Event::Failed(message));
        self.finished = true;
    }
}
