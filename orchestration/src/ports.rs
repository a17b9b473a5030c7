//! The capabilities the orchestration core needs from the outside world.
//!
//! Each trait mirrors the AWS service it stands for closely enough that an adapter over
//! aws-sdk-rust is a thin translation: [`JobStore`] is a DynamoDB table with conditional
//! writes and transactions, [`Queues`] is SQS, [`Blobs`] is S3, [`Mappings`] is the Lambda
//! control plane (event-source mappings and reserved concurrency). The embedded engine
//! implements them on SQLite and local files (`crate::local`).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The attributes of one stored item, as JSON. DynamoDB adapters map them to attribute values.
pub type Attributes = Map<String, Value>;

/// Primary key of an item: partition key plus sort key, as in a DynamoDB table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Self {
            pk: pk.into(),
            sk: sk.into(),
        }
    }
}

/// An item read from the store, with the version the store maintains for optimistic locking.
/// Every successful write sets `version` to the previous version + 1 (1 for a new item).
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub key: Key,
    pub version: u64,
    pub attrs: Attributes,
}

/// The condition a write must meet, evaluated atomically with the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional.
    Always,
    /// `attribute_not_exists(pk)`: the item must not exist.
    NotExists,
    /// `attribute_exists(pk)`: the item must exist.
    Exists,
    /// The item must exist with exactly this version.
    VersionIs(u64),
}

/// One element of a [`JobStore::transact`] call (DynamoDB `TransactWriteItems`).
#[derive(Clone, Debug, PartialEq)]
pub enum TxOp {
    Put {
        key: Key,
        attrs: Attributes,
        condition: Condition,
    },
    Delete {
        key: Key,
        condition: Condition,
    },
    Check {
        key: Key,
        condition: Condition,
    },
}

impl TxOp {
    pub fn key(&self) -> &Key {
        match self {
            TxOp::Put { key, .. } | TxOp::Delete { key, .. } | TxOp::Check { key, .. } => key,
        }
    }
}

/// DynamoDB allows at most 100 items in one `TransactWriteItems` (AWS-FACTS.md).
pub const MAX_TRANSACTION_ITEMS: usize = 100;

/// A page of a [`JobStore::query`].
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub items: Vec<Item>,
    /// Sort key to pass as `start_after` for the next page; `None` on the last page.
    pub next: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("condition failed on {pk}/{sk}", pk = .0.pk, sk = .0.sk)]
    ConditionFailed(Key),
    /// A transaction was cancelled; `failed[i]` is true where op `i`'s condition failed.
    #[error("transaction cancelled: conditions failed at {failed:?}")]
    TransactionCanceled { failed: Vec<bool> },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("store backend: {0}")]
    Backend(String),
}

/// A key-value table with conditional writes and transactions: DynamoDB's model.
#[async_trait]
pub trait JobStore: Send + Sync {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError>;
    /// Writes the item and returns its new version.
    async fn put(
        &self,
        key: &Key,
        attrs: Attributes,
        condition: Condition,
    ) -> Result<u64, StoreError>;
    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError>;
    /// All-or-nothing; at most [`MAX_TRANSACTION_ITEMS`] ops, each key at most once.
    async fn transact(&self, ops: Vec<TxOp>) -> Result<(), StoreError>;
    /// Items under `pk` whose sort key starts with `sk_prefix`, in sort-key order.
    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError>;
}

/// Attributes of a queue (SQS `CreateQueue`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSpec {
    pub name: String,
    pub visibility_timeout: Duration,
    /// Redrive policy: messages received more than `max_receive_count` times move here.
    pub dead_letter: Option<DeadLetter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub queue_url: String,
    pub max_receive_count: u32,
}

/// Largest message body the queues accept. SQS raised its limit to 1 MiB in 2026, but
/// emulators and older regions still enforce 256 KiB (AWS-FACTS.md); larger payloads travel
/// as claim-checks in the blob store.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub body: String,
    /// SQS `DelaySeconds`; adapters round up to what the service supports.
    pub delay: Duration,
}

impl OutgoingMessage {
    pub fn new(body: impl Into<String>) -> Self {
        Self {
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// `ApproximateReceiveCount`, including this receive.
    pub receive_count: u32,
    /// `SentTimestamp`, ms since the epoch.
    pub sent_ms: u64,
}

/// `ApproximateNumberOfMessages{,NotVisible,Delayed}`: hints, never a completion signal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue does not exist: {0}")]
    NoSuchQueue(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("queue backend: {0}")]
    Backend(String),
}

/// SQS: standard queues with visibility timeouts, receive counts, delays and redrive.
/// Batch calls take any number of entries; adapters split them into the service's limits.
#[async_trait]
pub trait Queues: Send + Sync {
    /// Idempotent: creating an existing queue with the same spec returns its URL.
    async fn create_queue(&self, spec: &QueueSpec) -> Result<String, QueueError>;
    /// Deleting a queue that does not exist succeeds.
    async fn delete_queue(&self, url: &str) -> Result<(), QueueError>;
    async fn queue_url(&self, name: &str) -> Result<Option<String>, QueueError>;
    async fn list_queues(&self, prefix: &str) -> Result<Vec<String>, QueueError>;
    async fn send(&self, url: &str, messages: Vec<OutgoingMessage>) -> Result<(), QueueError>;
    /// Receives up to `max` messages, long-polling up to `wait` when none is visible.
    /// `visibility` overrides the queue's visibility timeout for these messages.
    async fn receive(
        &self,
        url: &str,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;
    /// Deletes by receipt handle. A stale handle (the message was received again since) is
    /// not an error; whether it still deletes the message is the service's choice (SQS
    /// documents both), so callers must not rely on either.
    async fn delete(&self, url: &str, receipt_handles: Vec<String>) -> Result<(), QueueError>;
    async fn change_visibility(
        &self,
        url: &str,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError>;
    async fn counts(&self, url: &str) -> Result<QueueCounts, QueueError>;
    /// `ChangeMessageVisibilityBatch`: the same timeout for many receipts (stale ones are
    /// no-ops). Adapters should override this with one round trip per service batch.
    async fn change_visibility_batch(
        &self,
        url: &str,
        receipt_handles: &[String],
        timeout: Duration,
    ) -> Result<(), QueueError> {
        for receipt in receipt_handles {
            self.change_visibility(url, receipt, timeout).await?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid blob key: {0}")]
    InvalidKey(String),
    #[error("blob backend: {0}")]
    Backend(String),
}

/// S3: objects by key.
#[async_trait]
pub trait Blobs: Send + Sync {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError>;
    /// `PutObject` with `If-None-Match: *`: fails with [`BlobError::AlreadyExists`].
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError>;
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// `GetObject` with `Range: bytes=start-(end-1)`: the bytes `start..end` of the object,
    /// fewer when it ends sooner (none when it ends before `start`); `None` when there is no
    /// such key. Sources read large objects in ranges so no one invocation holds a whole one.
    /// The default slices [`Blobs::get`]: correct, but it reads the whole object.
    async fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        Ok(self.get(key).await?.map(|bytes| {
            let len = bytes.len() as u64;
            let from = start.min(len);
            let to = end.min(len).max(from);
            bytes[from as usize..to as usize].to_vec()
        }))
    }

    /// Objects under `prefix` with their sizes, sorted by key (`ListObjectsV2` returns the
    /// sizes with the keys): what planning byte ranges needs. The default reads every object.
    async fn list_sizes(&self, prefix: &str) -> Result<Vec<BlobSize>, BlobError> {
        let mut out = Vec::new();
        for key in self.list(prefix).await? {
            // Deleted between the listing and the read: S3's listing would not show it either.
            if let Some(bytes) = self.get(&key).await? {
                out.push(BlobSize {
                    key,
                    size: bytes.len() as u64,
                });
            }
        }
        Ok(out)
    }
}

/// A listed object: its key and its size in bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobSize {
    pub key: String,
    pub size: u64,
}

/// The levers of one event-source mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingConfig {
    pub batch_size: u32,
    pub batching_window_secs: u32,
    /// `ScalingConfig.MaximumConcurrency`; `None`: not set (AWS's default scaling, and
    /// required in provisioned mode).
    pub max_concurrency: Option<u32>,
    /// `ProvisionedPollerConfig`: provisioned mode; `None`: the default scaling.
    #[serde(default)]
    pub provisioned_pollers: Option<ProvisionedPollers>,
    pub enabled: bool,
}

/// Provisioned mode of an SQS mapping: event pollers kept between `minimum` and `maximum`,
/// each running up to [`limits::INVOKES_PER_POLLER`] concurrent invokes, billed in Event
/// Poller Units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionedPollers {
    pub minimum: u32,
    pub maximum: u32,
}

/// An event-source mapping: queue → function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub id: String,
    pub queue_url: String,
    pub function: String,
    pub config: MappingConfig,
    /// Tags (AWS ESMs support them): the job and stage a mapping belongs to.
    pub tags: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("no such mapping: {0}")]
    NotFound(String),
    #[error("invalid mapping: {0}")]
    Invalid(String),
    #[error("mappings backend: {0}")]
    Backend(String),
}

/// The Lambda control plane: event-source mappings and reserved concurrency.
#[async_trait]
pub trait Mappings: Send + Sync {
    async fn create_mapping(
        &self,
        queue_url: &str,
        function: &str,
        config: MappingConfig,
        tags: std::collections::BTreeMap<String, String>,
    ) -> Result<Mapping, MappingError>;
    async fn update_mapping(
        &self,
        id: &str,
        config: MappingConfig,
    ) -> Result<Mapping, MappingError>;
    /// Deleting a mapping that does not exist succeeds.
    async fn delete_mapping(&self, id: &str) -> Result<(), MappingError>;
    /// Mappings, optionally only those reading `queue_url`.
    async fn list_mappings(&self, queue_url: Option<&str>) -> Result<Vec<Mapping>, MappingError>;
    async fn put_reserved_concurrency(&self, function: &str, n: u32) -> Result<(), MappingError>;
    async fn get_reserved_concurrency(&self, function: &str) -> Result<Option<u32>, MappingError>;
    async fn delete_reserved_concurrency(&self, function: &str) -> Result<(), MappingError>;
}

/// Per-stage invocation totals of one job attempt, as CloudWatch would report them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStats {
    pub stage: String,
    pub function: String,
    pub invocations: u64,
    /// Messages handled successfully.
    pub messages: u64,
    pub failed_messages: u64,
    /// Invocations that failed as a whole (error, panic, timeout).
    pub failed_invocations: u64,
    pub throttles: u64,
    /// Duration billed by Lambda: each invocation rounded up to the millisecond.
    pub billed_ms: u64,
}

impl StageStats {
    /// Messages one invocation handles per second of billed time: what the `backlog`
    /// policy calls a stage's throughput.
    pub fn throughput(&self) -> Option<f64> {
        (self.billed_ms > 0 && self.messages > 0)
            .then(|| self.messages as f64 * 1000.0 / self.billed_ms as f64)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(pub String);

/// Where invocation statistics come from: the local runtime's log, or CloudWatch.
#[async_trait]
pub trait Telemetry: Send + Sync {
    async fn stage_stats(&self, job: &str, attempt: u32)
        -> Result<Vec<StageStats>, TelemetryError>;
}

/// Wall-clock time in ms since the epoch. A trait so tests can drive time.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// ESM limits from AWS-FACTS.md: MaximumConcurrency 2–1,000; BatchSize 1–10,000 on standard
/// queues; a batching window of 0–300 s, at least 1 s when BatchSize > 10.
pub mod limits {
    pub const MIN_MAX_CONCURRENCY: u32 = 2;
    pub const MAX_MAX_CONCURRENCY: u32 = 1_000;
    pub const MAX_BATCH_SIZE: u32 = 10_000;
    pub const MAX_BATCHING_WINDOW_SECS: u32 = 300;
    /// BatchSize above this needs a batching window of at least 1 s.
    pub const MAX_BATCH_SIZE_WITHOUT_WINDOW: u32 = 10;
    /// An SQS mapping's scaling (AWS-FACTS.md, "default scaling"): it starts at 5
    /// concurrent batches, adds up to 300 a minute, and runs at most 1,250 invokes.
    pub const ESM_START_BATCHES: f64 = 5.0;
    pub const ESM_RAMP_PER_S: f64 = 300.0 / 60.0;
    pub const ESM_MAX_INVOKES: u32 = 1_250;
    /// Provisioned mode (AWS-FACTS.md, "Provisioned mode for SQS event-source mappings"):
    /// MinimumPollers 2–200, MaximumPollers up to 10,000 and at least MinimumPollers; a
    /// poller runs about 10 concurrent invokes; the mapping scales about 1,000 concurrent
    /// invokes a minute, up to 20,000.
    pub const MIN_POLLERS: u32 = 2;
    pub const MAX_MINIMUM_POLLERS: u32 = 200;
    pub const MAX_POLLERS: u32 = 10_000;
    pub const INVOKES_PER_POLLER: u32 = 10;
    pub const PROVISIONED_RAMP_PER_S: f64 = 1_000.0 / 60.0;
    pub const PROVISIONED_MAX_INVOKES: u32 = 20_000;
}

impl MappingConfig {
    /// Rejects what AWS would reject (the emulator accepts all of it, so we check here).
    pub fn validate(&self) -> Result<(), MappingError> {
        use limits::*;
        if let Some(n) = self.max_concurrency {
            if !(MIN_MAX_CONCURRENCY..=MAX_MAX_CONCURRENCY).contains(&n) {
                return Err(MappingError::Invalid(format!(
                    "MaximumConcurrency {n} outside {MIN_MAX_CONCURRENCY}..={MAX_MAX_CONCURRENCY}"
                )));
            }
        }
        if let Some(p) = self.provisioned_pollers {
            if self.max_concurrency.is_some() {
                return Err(MappingError::Invalid(
                    "ProvisionedPollerConfig cannot be set together with \
                     ScalingConfig.MaximumConcurrency"
                        .into(),
                ));
            }
            if !(MIN_POLLERS..=MAX_MINIMUM_POLLERS).contains(&p.minimum) {
                return Err(MappingError::Invalid(format!(
                    "ProvisionedPollerConfig.MinimumPollers {} outside \
                     {MIN_POLLERS}..={MAX_MINIMUM_POLLERS}",
                    p.minimum
                )));
            }
            if !(p.minimum..=MAX_POLLERS).contains(&p.maximum) {
                return Err(MappingError::Invalid(format!(
                    "ProvisionedPollerConfig.MaximumPollers {} outside MinimumPollers ({})..={MAX_POLLERS}",
                    p.maximum, p.minimum
                )));
            }
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(MappingError::Invalid(format!(
                "BatchSize {} outside 1..={MAX_BATCH_SIZE}",
                self.batch_size
            )));
        }
        if self.batching_window_secs > MAX_BATCHING_WINDOW_SECS {
            return Err(MappingError::Invalid(format!(
                "MaximumBatchingWindowInSeconds {} above {MAX_BATCHING_WINDOW_SECS}",
                self.batching_window_secs
            )));
        }
        if self.batch_size > MAX_BATCH_SIZE_WITHOUT_WINDOW && self.batching_window_secs == 0 {
            return Err(MappingError::Invalid(format!(
                "BatchSize {} needs MaximumBatchingWindowInSeconds >= 1",
                self.batch_size
            )));
        }
        Ok(())
    }

    /// The most invocations the mapping runs at once: its MaximumConcurrency; in
    /// provisioned mode, its pollers' invokes (at most 20,000); otherwise the default
    /// scaling's 1,250.
    pub fn concurrency_cap(&self) -> u32 {
        use limits::*;
        match (self.max_concurrency, self.provisioned_pollers) {
            (Some(n), _) => n,
            (None, Some(p)) => p
                .maximum
                .saturating_mul(INVOKES_PER_POLLER)
                .min(PROVISIONED_MAX_INVOKES),
            (None, None) => ESM_MAX_INVOKES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(batch_size: u32, window: u32, max_concurrency: u32) -> MappingConfig {
        MappingConfig {
            batch_size,
            batching_window_secs: window,
            max_concurrency: Some(max_concurrency),
            provisioned_pollers: None,
            enabled: true,
        }
    }

    fn provisioned(minimum: u32, maximum: u32) -> MappingConfig {
        MappingConfig {
            max_concurrency: None,
            provisioned_pollers: Some(ProvisionedPollers { minimum, maximum }),
            ..config(10, 0, 2)
        }
    }

    #[test]
    fn provisioned_pollers_follow_aws() {
        let cases = [
            (provisioned(2, 2), true),
            (provisioned(200, 10_000), true),
            (provisioned(1, 10), false),
            (provisioned(201, 300), false),
            (provisioned(5, 4), false),
            (provisioned(2, 10_001), false),
            (
                MappingConfig {
                    max_concurrency: Some(10),
                    ..provisioned(2, 10)
                },
                false,
            ),
            // Neither: AWS's default scaling.
            (
                MappingConfig {
                    max_concurrency: None,
                    ..config(10, 0, 2)
                },
                true,
            ),
        ];
        for (c, ok) in cases {
            assert_eq!(c.validate().is_ok(), ok, "{c:?}");
        }
        let both = MappingConfig {
            max_concurrency: Some(10),
            ..provisioned(2, 10)
        };
        let err = both.validate().unwrap_err().to_string();
        assert!(err.contains("MaximumConcurrency"), "{err}");
        let err = provisioned(1, 10).validate().unwrap_err().to_string();
        assert!(err.contains("MinimumPollers"), "{err}");
        let err = provisioned(2, 10_001).validate().unwrap_err().to_string();
        assert!(err.contains("MaximumPollers"), "{err}");
    }

    #[test]
    fn the_concurrency_cap_follows_the_mode() {
        assert_eq!(config(10, 0, 7).concurrency_cap(), 7);
        assert_eq!(provisioned(2, 30).concurrency_cap(), 300);
        assert_eq!(provisioned(200, 10_000).concurrency_cap(), 20_000);
        let default = MappingConfig {
            max_concurrency: None,
            ..config(10, 0, 2)
        };
        assert_eq!(default.concurrency_cap(), 1_250);
    }

    #[test]
    fn mapping_limits_follow_aws() {
        let cases = [
            (config(10, 0, 2), true),
            (config(10, 0, 1), false),
            (config(10, 0, 1000), true),
            (config(10, 0, 1001), false),
            (config(11, 0, 2), false),
            (config(11, 1, 2), true),
            (config(10_000, 1, 2), true),
            (config(10_001, 1, 2), false),
            (config(0, 0, 2), false),
            (config(10, 301, 2), false),
        ];
        for (c, ok) in cases {
            assert_eq!(c.validate().is_ok(), ok, "{c:?}");
        }
    }
}
