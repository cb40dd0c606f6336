//! The `Queue` port: at-least-once messages with SQS semantics.

use std::time::Duration;

use async_trait::async_trait;

use super::{StoreError, StoreResult};

/// Most messages one send or receive may carry (SQS's limit).
pub const MAX_BATCH: usize = 10;
/// Longest long-poll wait (SQS's limit).
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// Longest visibility timeout (SQS's limit).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// Longest delivery delay (SQS's limit).
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// Largest message body (SQS's limit).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A received message. `receipt` identifies this delivery: it is what
/// [`Queue::delete`] and [`Queue::change_visibility`] take.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub id: String,
    pub body: String,
    pub receipt: String,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
}

/// A message to send, with an optional delay before it becomes visible.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub body: String,
    pub delay: Option<Duration>,
}

impl Outgoing {
    pub fn new(body: impl Into<String>) -> Self {
        Outgoing {
            body: body.into(),
            delay: None,
        }
    }
}

/// How to receive: up to `max` messages, waiting up to `wait` for the first,
/// hiding what is received for `visibility`.
#[derive(Clone, Debug, PartialEq)]
pub struct Receive {
    pub max: usize,
    pub wait: Duration,
    pub visibility: Duration,
}

impl Default for Receive {
    fn default() -> Self {
        Receive {
            max: MAX_BATCH,
            wait: Duration::from_secs(20),
            visibility: Duration::from_secs(30),
        }
    }
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends one message; returns its id.
    async fn send(&self, msg: &Outgoing) -> StoreResult<String>;
    /// Sends 1 to 10 messages at once; returns their ids in order.
    async fn send_batch(&self, msgs: &[Outgoing]) -> StoreResult<Vec<String>>;
    /// Receives up to `max` visible messages, long-polling up to `wait`.
    /// A message received more than its queue's max-receives moves to the
    /// dead-letter queue instead of being returned.
    async fn receive(&self, opts: &Receive) -> StoreResult<Vec<Message>>;
    /// Deletes the message received with this receipt.
    async fn delete(&self, receipt: &str) -> StoreResult<()>;
    /// Makes the in-flight message visible again after `timeout` (0 = now).
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> StoreResult<()>;
}

pub(crate) fn check_outgoing(msgs: &[Outgoing]) -> StoreResult<()> {
    if msgs.is_empty() || msgs.len() > MAX_BATCH {
        return Err(StoreError::Invalid(format!(
            "a batch holds 1 to {MAX_BATCH} messages, got {}",
            msgs.len()
        )));
    }
    for m in msgs {
        if m.body.is_empty() || m.body.len() > MAX_BODY_BYTES {
            return Err(StoreError::Invalid(format!(
                "a message body holds 1 to {MAX_BODY_BYTES} bytes, got {}",
                m.body.len()
            )));
        }
        if m.delay.is_some_and(|d| d > MAX_DELAY) {
            return Err(StoreError::Invalid("delay exceeds 15 minutes".into()));
        }
    }
    Ok(())
}

pub(crate) fn check_receive(opts: &Receive) -> StoreResult<()> {
    if opts.max == 0 || opts.max > MAX_BATCH {
        return Err(StoreError::Invalid(format!(
            "receive takes 1 to {MAX_BATCH} messages"
        )));
    }
    if opts.wait > MAX_WAIT {
        return Err(StoreError::Invalid("wait exceeds 20 seconds".into()));
    }
    check_visibility(opts.visibility)
}

pub(crate) fn check_visibility(v: Duration) -> StoreResult<()> {
    if v > MAX_VISIBILITY {
        return Err(StoreError::Invalid(
            "visibility timeout exceeds 12 hours".into(),
        ));
    }
    Ok(())
}

/// SQS counts in whole seconds; round a duration up so a wait is never shortened.
pub(crate) fn whole_secs(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}
