//! The `Queue` port on SQS (dead-lettering by the queue's redrive policy).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;

use super::{build_err, sdk_err};
use crate::store::queue::{check_outgoing, check_receive, check_visibility, whole_secs};
use crate::store::{Message, Outgoing, Queue, Receive, StoreError, StoreResult};

/// A queue by name; its URL is looked up on first use (no network call at
/// start-up, which keeps a function's cold start short) and then remembered.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    name: String,
    url: Arc<OnceCell<String>>,
}

impl SqsQueue {
    pub fn new(client: Client, name: &str) -> Self {
        SqsQueue {
            client,
            name: name.to_string(),
            url: Arc::new(OnceCell::new()),
        }
    }

    /// A handle on an existing queue, checked now.
    pub async fn open(client: Client, name: &str) -> StoreResult<Self> {
        let q = SqsQueue::new(client, name);
        q.url().await?;
        Ok(q)
    }

    async fn url(&self) -> StoreResult<&str> {
        let url = self
            .url
            .get_or_try_init(|| async {
                match self
                    .client
                    .get_queue_url()
                    .queue_name(&self.name)
                    .send()
                    .await
                {
                    Ok(out) => Ok(out.queue_url.unwrap_or_default()),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|x| x.is_queue_does_not_exist()) =>
                    {
                        Err(StoreError::NotFound(format!(
                            "queue '{}' does not exist",
                            self.name
                        )))
                    }
                    Err(e) => Err(sdk_err(e)),
                }
            })
            .await?;
        Ok(url.as_str())
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, msg: &Outgoing) -> StoreResult<String> {
        check_outgoing(std::slice::from_ref(msg))?;
        let out = self
            .client
            .send_message()
            .queue_url(self.url().await?)
            .message_body(&msg.body)
            .set_delay_seconds(msg.delay.map(whole_secs))
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(out.message_id.unwrap_or_default())
    }

    async fn send_batch(&self, msgs: &[Outgoing]) -> StoreResult<Vec<String>> {
        check_outgoing(msgs)?;
        let entries = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&m.body)
                    .set_delay_seconds(m.delay.map(whole_secs))
                    .build()
                    .map_err(build_err)
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let out = self
            .client
            .send_message_batch()
            .queue_url(self.url().await?)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sdk_err)?;
        if let Some(f) = out.failed.first() {
            return Err(StoreError::Backend(format!(
                "{} of {} messages were not sent: {}",
                out.failed.len(),
                msgs.len(),
                f.message().unwrap_or(f.code())
            )));
        }
        let mut ids = vec![String::new(); msgs.len()];
        for ok in out.successful {
            if let Some(slot) = ok.id.parse::<usize>().ok().and_then(|i| ids.get_mut(i)) {
                *slot = ok.message_id;
            }
        }
        Ok(ids)
    }

    async fn receive(&self, opts: &Receive) -> StoreResult<Vec<Message>> {
        check_receive(opts)?;
        let out = self
            .client
            .receive_message()
            .queue_url(self.url().await?)
            .max_number_of_messages(opts.max as i32)
            .wait_time_seconds(whole_secs(opts.wait))
            .visibility_timeout(whole_secs(opts.visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                Message {
                    id: m.message_id.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    receipt: m.receipt_handle.unwrap_or_default(),
                    receive_count,
                }
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> StoreResult<()> {
        self.client
            .delete_message()
            .queue_url(self.url().await?)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(())
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> StoreResult<()> {
        check_visibility(timeout)?;
        let res = self
            .client
            .change_message_visibility()
            .queue_url(self.url().await?)
            .receipt_handle(receipt)
            .visibility_timeout(whole_secs(timeout))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|x| {
                    x.is_message_not_inflight() || x.is_receipt_handle_is_invalid()
                }) =>
            {
                Err(StoreError::Invalid(
                    "message is not in flight, or the receipt is stale".into(),
                ))
            }
            Err(e) => Err(sdk_err(e)),
        }
    }
}
