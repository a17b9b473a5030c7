//! [`Queues`] over Amazon SQS.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use tracing::debug;

use crate::ports::limits::{self, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use crate::ports::{
    Measure, OutgoingMessage, Oversize, QueueCounts, QueueError, QueueSpec, Queues, ReceivedMessage,
};

/// SQS limits (AWS-FACTS.md): long polls of at most 20 s, delays of at most 900 s,
/// visibility timeouts of at most 12 h. Sizes and batch entries: [`limits`].
const MAX_WAIT_SECS: u64 = 20;
const MAX_DELAY_SECS: u64 = 900;
const MAX_VISIBILITY_SECS: u64 = 43_200;

pub struct SqsQueues {
    client: Client,
    /// Queue ARNs by URL (redrive policies and mappings name queues by ARN).
    arns: Mutex<HashMap<String, String>>,
}

fn is_no_such_queue(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
    )
}

fn sdk_error<E, R>(what: &str, url: &str, e: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if is_no_such_queue(e.code()) {
        return QueueError::NoSuchQueue(url.to_owned());
    }
    match e.code() {
        Some(
            "InvalidParameterValue"
            | "InvalidAttributeValue"
            | "InvalidAttributeName"
            | "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
            | "BatchEntryIdsNotDistinct"
            | "InvalidMessageContents"
            | "QueueAlreadyExists"
            | "QueueNameExists",
        ) => QueueError::Invalid(format!("{what} {url}: {}", DisplayErrorContext(&e))),
        _ => QueueError::Backend(format!("{what} {url}: {}", DisplayErrorContext(&e))),
    }
}

/// Seconds for an SQS duration field: rounded up, clamped to `max`.
fn secs(d: Duration, max: u64) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.min(max) as i32
}

impl SqsQueues {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            arns: Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The queue's ARN (`GetQueueAttributes QueueArn`), cached.
    pub async fn queue_arn(&self, url: &str) -> Result<String, QueueError> {
        if let Some(arn) = self.arns.lock().ok().and_then(|m| m.get(url).cloned()) {
            return Ok(arn);
        }
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", url, e))?;
        let arn = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| QueueError::Backend(format!("{url}: no QueueArn attribute")))?;
        if let Ok(mut m) = self.arns.lock() {
            m.insert(url.to_owned(), arn.clone());
        }
        Ok(arn)
    }

    /// The URL of the queue with this ARN, `None` if there is no such queue.
    pub async fn queue_url_for_arn(&self, arn: &str) -> Result<Option<String>, QueueError> {
        if let Some(url) = self.arns.lock().ok().and_then(|m| {
            m.iter()
                .find(|(_, a)| a.as_str() == arn)
                .map(|(url, _)| url.clone())
        }) {
            return Ok(Some(url));
        }
        // arn:aws:sqs:region:account:name
        let parts: Vec<&str> = arn.split(':').collect();
        let [_, _, "sqs", _, account, name] = parts[..] else {
            return Err(QueueError::Invalid(format!("not an SQS queue ARN: {arn}")));
        };
        let result = self
            .client
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await;
        match result {
            Ok(out) => {
                if let (Some(url), Ok(mut m)) = (&out.queue_url, self.arns.lock()) {
                    m.insert(url.clone(), arn.to_owned());
                }
                Ok(out.queue_url)
            }
            Err(e) if is_no_such_queue(e.code()) => Ok(None),
            Err(e) => Err(sdk_error("GetQueueUrl", name, e)),
        }
    }
}

/// The attributes a queue is created with. Every queue is encrypted at rest with SQS-managed
/// keys, explicitly (AWS turns it on by default for new queues, but a default can change
/// and an account policy may require it stated): no KMS key to pay for or to grant, and no
/// KMS request on the data path.
fn queue_attributes(
    spec: &QueueSpec,
    dead_letter_arn: Option<&str>,
) -> Vec<(QueueAttributeName, String)> {
    let mut attributes = vec![
        (
            QueueAttributeName::VisibilityTimeout,
            secs(spec.visibility_timeout, MAX_VISIBILITY_SECS).to_string(),
        ),
        (QueueAttributeName::SqsManagedSseEnabled, "true".to_owned()),
    ];
    if let (Some(dl), Some(arn)) = (&spec.dead_letter, dead_letter_arn) {
        let policy = serde_json::json!({
            "deadLetterTargetArn": arn,
            "maxReceiveCount": dl.max_receive_count,
        });
        attributes.push((QueueAttributeName::RedrivePolicy, policy.to_string()));
    }
    attributes
}

/// Splits messages into SendMessageBatch calls within the entry and byte limits.
fn send_batches(messages: &[OutgoingMessage]) -> Vec<&[OutgoingMessage]> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, m) in messages.iter().enumerate() {
        let size = m.body.len();
        if i > start && (i - start == MAX_BATCH_ENTRIES || bytes + size > MAX_BATCH_BYTES) {
            batches.push(&messages[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < messages.len() {
        batches.push(&messages[start..]);
    }
    batches
}

#[async_trait]
impl Queues for SqsQueues {
    async fn create_queue(&self, spec: &QueueSpec) -> Result<String, QueueError> {
        let dead_letter_arn = match &spec.dead_letter {
            Some(dl) => Some(self.queue_arn(&dl.queue_url).await?),
            None => None,
        };
        let out = self
            .client
            .create_queue()
            .queue_name(&spec.name)
            .set_attributes(Some(
                queue_attributes(spec, dead_letter_arn.as_deref())
                    .into_iter()
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| sdk_error("CreateQueue", &spec.name, e))?;
        out.queue_url
            .ok_or_else(|| QueueError::Backend(format!("CreateQueue {}: no URL", spec.name)))
    }

    async fn delete_queue(&self, url: &str) -> Result<(), QueueError> {
        match self.client.delete_queue().queue_url(url).send().await {
            Ok(_) => {}
            Err(e) if is_no_such_queue(e.code()) => {}
            Err(e) => return Err(sdk_error("DeleteQueue", url, e)),
        }
        if let Ok(mut m) = self.arns.lock() {
            m.remove(url);
        }
        Ok(())
    }

    async fn queue_url(&self, name: &str) -> Result<Option<String>, QueueError> {
        match self.client.get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(out.queue_url),
            Err(e) if is_no_such_queue(e.code()) => Ok(None),
            Err(e) => Err(sdk_error("GetQueueUrl", name, e)),
        }
    }

    async fn list_queues(&self, prefix: &str) -> Result<Vec<String>, QueueError> {
        let mut urls = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_queues()
                .queue_name_prefix(prefix)
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| sdk_error("ListQueues", prefix, e))?;
            urls.extend(out.queue_urls.unwrap_or_default());
            token = out.next_token;
            if token.is_none() {
                break;
            }
        }
        urls.sort();
        Ok(urls)
    }

    async fn send(&self, url: &str, messages: Vec<OutgoingMessage>) -> Result<(), QueueError> {
        // Every message is checked before the first batch goes, so a refused call sends none.
        for m in &messages {
            limits::check_message(&m.body).map_err(QueueError::TooLarge)?;
        }
        for batch in send_batches(&messages) {
            let mut entries = Vec::with_capacity(batch.len());
            for (i, m) in batch.iter().enumerate() {
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&m.body);
                if !m.delay.is_zero() {
                    entry = entry.delay_seconds(secs(m.delay, MAX_DELAY_SECS));
                }
                entries.push(
                    entry
                        .build()
                        .map_err(|e| QueueError::Invalid(e.to_string()))?,
                );
            }
            // Entries that failed for a reason of the service's (not ours) are sent again.
            let mut attempt = 0;
            while !entries.is_empty() {
                attempt += 1;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries.clone()))
                    .send()
                    .await
                    .map_err(|e| match e.code() {
                        // SQS's own size limit, should a queue's be lower than ours.
                        Some(
                            "AWS.SimpleQueueService.BatchRequestTooLong"
                            | "BatchRequestTooLong"
                            | "MessageTooLong",
                        ) => QueueError::TooLarge(Oversize {
                            what: "message batch (by SQS's count)".into(),
                            size: batch.iter().map(|m| m.body.len() as u64).sum(),
                            limit: MAX_BATCH_BYTES as u64,
                            measure: Measure::Bytes,
                        }),
                        _ => sdk_error("SendMessageBatch", url, e),
                    })?;
                let failed = out.failed();
                if failed.is_empty() {
                    break;
                }
                if let Some(f) = failed.iter().find(|f| f.sender_fault || attempt >= 5) {
                    return Err(QueueError::Backend(format!(
                        "SendMessageBatch {url}: entry failed: {} {}",
                        f.code,
                        f.message.as_deref().unwrap_or("")
                    )));
                }
                let retry: Vec<&str> = failed.iter().map(|f| f.id.as_str()).collect();
                entries.retain(|e| retry.contains(&e.id.as_str()));
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
        Ok(())
    }

    async fn receive(
        &self,
        url: &str,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let mut received = Vec::new();
        // The first call long-polls; the rest only top the batch up.
        let mut wait_secs = secs(wait, MAX_WAIT_SECS);
        while received.len() < max {
            let want = (max - received.len()).min(MAX_BATCH_ENTRIES) as i32;
            let out = self
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(want)
                .wait_time_seconds(wait_secs)
                .set_visibility_timeout(visibility.map(|v| secs(v, MAX_VISIBILITY_SECS)))
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .send()
                .await
                .map_err(|e| sdk_error("ReceiveMessage", url, e))?;
            let messages = out.messages.unwrap_or_default();
            let got = messages.len();
            for m in messages {
                let attrs = m.attributes.unwrap_or_default();
                let number = |name: MessageSystemAttributeName| {
                    attrs.get(&name).and_then(|v| v.parse::<u64>().ok())
                };
                received.push(ReceivedMessage {
                    message_id: m.message_id.unwrap_or_default(),
                    receipt_handle: m.receipt_handle.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    receive_count: number(MessageSystemAttributeName::ApproximateReceiveCount)
                        .unwrap_or(1) as u32,
                    sent_ms: number(MessageSystemAttributeName::SentTimestamp).unwrap_or(0),
                });
            }
            if got < want as usize {
                break;
            }
            wait_secs = 0;
        }
        Ok(received)
    }

    async fn delete(&self, url: &str, receipt_handles: Vec<String>) -> Result<(), QueueError> {
        for chunk in receipt_handles.chunks(MAX_BATCH_ENTRIES) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, receipt) in chunk.iter().enumerate() {
                entries.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .map_err(|e| QueueError::Invalid(e.to_string()))?,
                );
            }
            let out = self
                .client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_error("DeleteMessageBatch", url, e))?;
            // A stale or unknown receipt deletes nothing: not an error (the port's contract).
            for f in out.failed() {
                debug!(queue = url, code = %f.code, "delete entry failed");
            }
        }
        Ok(())
    }

    async fn change_visibility(
        &self,
        url: &str,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.change_visibility_batch(url, &[receipt_handle.to_owned()], timeout)
            .await
    }

    async fn change_visibility_batch(
        &self,
        url: &str,
        receipt_handles: &[String],
        timeout: Duration,
    ) -> Result<(), QueueError> {
        for chunk in receipt_handles.chunks(MAX_BATCH_ENTRIES) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, receipt) in chunk.iter().enumerate() {
                entries.push(
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .visibility_timeout(secs(timeout, MAX_VISIBILITY_SECS))
                        .build()
                        .map_err(|e| QueueError::Invalid(e.to_string()))?,
                );
            }
            let out = self
                .client
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_error("ChangeMessageVisibilityBatch", url, e))?;
            for f in out.failed() {
                debug!(queue = url, code = %f.code, "visibility entry failed");
            }
        }
        Ok(())
    }

    async fn counts(&self, url: &str) -> Result<QueueCounts, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", url, e))?;
        let attrs = out.attributes.unwrap_or_default();
        let get =
            |name: QueueAttributeName| attrs.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(QueueCounts {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_is_created_encrypted() {
        let plain = QueueSpec {
            name: "sl-x-1-dlq".into(),
            visibility_timeout: Duration::from_millis(1500),
            dead_letter: None,
        };
        let with_dlq = QueueSpec {
            name: "sl-x-1-count".into(),
            dead_letter: Some(crate::ports::DeadLetter {
                queue_url: "http://q/sl-x-1-dlq".into(),
                max_receive_count: 5,
            }),
            ..plain.clone()
        };
        for (spec, arn) in [
            (&plain, None),
            (&with_dlq, Some("arn:aws:sqs:r:1:sl-x-1-dlq")),
        ] {
            let attributes = queue_attributes(spec, arn);
            assert!(
                attributes.contains(&(QueueAttributeName::SqsManagedSseEnabled, "true".into())),
                "{attributes:?}"
            );
            assert!(attributes.contains(&(QueueAttributeName::VisibilityTimeout, "2".into())));
        }
        let redrive = queue_attributes(&with_dlq, Some("arn:aws:sqs:r:1:sl-x-1-dlq"))
            .into_iter()
            .find(|(name, _)| *name == QueueAttributeName::RedrivePolicy)
            .expect("a redrive policy");
        let policy: serde_json::Value = serde_json::from_str(&redrive.1).unwrap();
        assert_eq!(policy["deadLetterTargetArn"], "arn:aws:sqs:r:1:sl-x-1-dlq");
        assert_eq!(policy["maxReceiveCount"], 5);
    }

    #[test]
    fn batches_respect_entry_and_byte_limits() {
        let small: Vec<OutgoingMessage> = (0..25)
            .map(|i| OutgoingMessage::new(i.to_string()))
            .collect();
        let sizes: Vec<usize> = send_batches(&small).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [10, 10, 5]);
        let big: Vec<OutgoingMessage> = (0..5)
            .map(|_| OutgoingMessage::new("x".repeat(100 * 1024)))
            .collect();
        let sizes: Vec<usize> = send_batches(&big).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(send_batches(&[]).is_empty());
    }

    #[test]
    fn durations_round_up_and_clamp() {
        assert_eq!(secs(Duration::ZERO, 20), 0);
        assert_eq!(secs(Duration::from_millis(1), 20), 1);
        assert_eq!(secs(Duration::from_millis(2500), 20), 3);
        assert_eq!(secs(Duration::from_secs(60), 20), 20);
    }
}
