//! The `Queue` port on SQLite, with SQS's visibility, receive-count and
//! dead-letter semantics.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Transaction};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{sqlite_err, Db};
use crate::store::queue::{check_outgoing, check_receive, check_visibility};
use crate::store::{now_millis, Message, Outgoing, Queue, Receive, StoreError, StoreResult};

/// How often a long poll looks for messages sent by other processes (messages
/// sent from this process wake it at once).
const POLL_INTERVAL: Duration = Duration::from_millis(25);

#[derive(Clone)]
pub struct EmbeddedQueue {
    db: Db,
    name: Arc<str>,
    dead_letter: Option<(Arc<str>, u32)>,
    waker: Arc<Notify>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl EmbeddedQueue {
    pub(super) async fn open(db: Db, name: &str) -> StoreResult<Self> {
        let queue = name.to_string();
        let config = db
            .read(move |conn| {
                conn.query_row(
                    "SELECT dlq, max_receives FROM queues WHERE name = ?1",
                    [&queue],
                    |row| {
                        Ok((
                            row.get::<_, Option<String>>(0)?,
                            row.get::<_, Option<u32>>(1)?,
                        ))
                    },
                )
                .optional()
                .map_err(sqlite_err)
            })
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("queue '{name}' does not exist")))?;
        let dead_letter = match config {
            (Some(dlq), Some(max)) => Some((Arc::from(dlq.as_str()), max)),
            _ => None,
        };
        Ok(EmbeddedQueue {
            waker: db.waker(name),
            db,
            name: Arc::from(name),
            dead_letter,
        })
    }

    /// One receive attempt, without waiting.
    async fn receive_now(&self, max: usize, visibility: Duration) -> StoreResult<Vec<Message>> {
        let name = self.name.clone();
        let dead_letter = self.dead_letter.clone();
        let (messages, moved) = self
            .db
            .write(move |tx| take_visible(tx, &name, dead_letter.as_ref(), max, millis(visibility)))
            .await?;
        if moved {
            if let Some((dlq, _)) = &self.dead_letter {
                self.db.waker(dlq).notify_waiters();
            }
        }
        Ok(messages)
    }
}

/// Marks up to `max` visible messages as received; moves those past their
/// max-receives to the dead-letter queue instead.
fn take_visible(
    tx: &Transaction<'_>,
    queue: &str,
    dead_letter: Option<&(Arc<str>, u32)>,
    max: usize,
    visibility_ms: i64,
) -> StoreResult<(Vec<Message>, bool)> {
    let now = now_millis();
    let mut out = Vec::new();
    let mut moved = false;
    loop {
        let mut stmt = tx
            .prepare_cached(
                "SELECT seq, id, body, receive_count FROM messages
                 WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, seq LIMIT ?3",
            )
            .map_err(sqlite_err)?;
        let candidates = stmt
            .query_map(params![queue, now, (max - out.len()) as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, u32>(3)?,
                ))
            })
            .map_err(sqlite_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite_err)?;
        let mut moved_now = false;
        for (seq, id, body, count) in candidates {
            if out.iter().any(|m: &Message| m.id == id) {
                continue; // taken in this call and visible again (visibility 0)
            }
            match dead_letter {
                Some((dlq, max_receives)) if count >= *max_receives => {
                    tx.execute(
                        "UPDATE messages SET queue = ?2, receive_count = 0, receipt = NULL, visible_at = ?3 WHERE seq = ?1",
                        params![seq, dlq.as_ref(), now],
                    )
                    .map_err(sqlite_err)?;
                    tracing::warn!(queue, message_id = %id, receives = count, dead_letter_queue = %dlq, "message moved to the dead-letter queue");
                    moved = true;
                    moved_now = true;
                }
                _ => {
                    let receipt = format!("{}.{}", id, uuid::Uuid::new_v4().simple());
                    tx.execute(
                        "UPDATE messages SET receive_count = receive_count + 1, receipt = ?2, visible_at = ?3 WHERE seq = ?1",
                        params![seq, receipt, now + visibility_ms],
                    )
                    .map_err(sqlite_err)?;
                    out.push(Message {
                        id,
                        body,
                        receipt,
                        receive_count: count + 1,
                    });
                }
            }
        }
        // Dead-lettered messages freed slots: look again, else this is all there is.
        if !moved_now || out.len() >= max {
            return Ok((out, moved));
        }
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn send(&self, msg: &Outgoing) -> StoreResult<String> {
        let mut ids = self.send_batch(std::slice::from_ref(msg)).await?;
        ids.pop()
            .ok_or_else(|| StoreError::Backend("send returned no id".into()))
    }

    async fn send_batch(&self, msgs: &[Outgoing]) -> StoreResult<Vec<String>> {
        check_outgoing(msgs)?;
        let msgs = msgs.to_vec();
        let name = self.name.clone();
        let ids = self
            .db
            .write(move |tx| {
                let now = now_millis();
                let mut ids = Vec::with_capacity(msgs.len());
                for m in &msgs {
                    let id = uuid::Uuid::now_v7().to_string();
                    let visible_at = now + m.delay.map_or(0, millis);
                    tx.execute(
                        "INSERT INTO messages (id, queue, body, visible_at) VALUES (?1, ?2, ?3, ?4)",
                        params![id, name.as_ref(), m.body, visible_at],
                    )
                    .map_err(sqlite_err)?;
                    ids.push(id);
                }
                Ok(ids)
            })
            .await?;
        self.waker.notify_waiters();
        Ok(ids)
    }

    async fn receive(&self, opts: &Receive) -> StoreResult<Vec<Message>> {
        check_receive(opts)?;
        let deadline = Instant::now() + opts.wait;
        loop {
            // Register for a wake-up before looking, so a send in between is not missed.
            let notified = self.waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.receive_now(opts.max, opts.visibility).await?;
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let pause = POLL_INTERVAL.min(deadline - now);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn delete(&self, receipt: &str) -> StoreResult<()> {
        let receipt = receipt.to_string();
        self.db
            .write(move |tx| {
                tx.execute("DELETE FROM messages WHERE receipt = ?1", [receipt])
                    .map_err(sqlite_err)?;
                Ok(())
            })
            .await
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> StoreResult<()> {
        check_visibility(timeout)?;
        let receipt = receipt.to_string();
        let changed = self
            .db
            .write(move |tx| {
                let now = now_millis();
                tx.execute(
                    "UPDATE messages SET visible_at = ?2 WHERE receipt = ?1 AND visible_at > ?3",
                    params![receipt, now + millis(timeout), now],
                )
                .map_err(sqlite_err)
            })
            .await?;
        if changed == 0 {
            return Err(StoreError::Invalid(
                "message is not in flight, or the receipt is stale".into(),
            ));
        }
        if timeout.is_zero() {
            self.waker.notify_waiters();
        }
        Ok(())
    }
}
