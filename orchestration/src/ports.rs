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

pub use limits::{MAX_MESSAGE_BYTES, MAX_TRANSACTION_ITEMS};

/// A page of a [`JobStore::query`].
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub items: Vec<Item>,
    /// Sort key to pass as `start_after` for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Bytes,
    Items,
}

impl std::fmt::Display for Measure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Measure::Bytes => "bytes",
            Measure::Items => "items",
        })
    }
}

/// A request over one of the services' limits ([`limits`]), refused before anything was
/// written: what was too large, how large, and the limit. Every backend reports the same.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} is {size} {measure}, above the limit of {limit}")]
pub struct Oversize {
    pub what: String,
    pub size: u64,
    pub limit: u64,
    pub measure: Measure,
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
    /// Over one of DynamoDB's limits ([`limits`]): nothing was written.
    #[error("too large: {0}")]
    TooLarge(Oversize),
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
    /// All-or-nothing; at most [`MAX_TRANSACTION_ITEMS`] ops and
    /// [`limits::MAX_TRANSACTION_BYTES`], each key at most once.
    async fn transact(&self, ops: Vec<TxOp>) -> Result<(), StoreError>;
    /// Items under `pk` whose sort key starts with `sk_prefix`, in sort-key order. A page
    /// ends after `limit` items or before the item that would take it past
    /// [`limits::MAX_QUERY_PAGE_BYTES`], as DynamoDB's does: follow `next` until `None`.
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
    /// A message body over [`MAX_MESSAGE_BYTES`]: nothing was sent.
    #[error("too large: {0}")]
    TooLarge(Oversize),
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
    /// A key over [`limits::MAX_KEY_BYTES`] or an object over [`limits::MAX_OBJECT_BYTES`]:
    /// nothing was written.
    #[error("too large: {0}")]
    TooLarge(Oversize),
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

/// Where invocation statistics come from: the local runtime's log, or (AWS) counters the
/// stage functions keep in the job table.
#[async_trait]
pub trait Telemetry: Send + Sync {
    async fn stage_stats(&self, job: &str, attempt: u32)
        -> Result<Vec<StageStats>, TelemetryError>;
    /// Count one invocation of a stage (its `invocations` is 1), where the deployment keeps
    /// no record of invocations but what the functions count themselves (AWS: the stage
    /// functions add to counters in the job table). The local runtime logs every
    /// invocation it runs, so by default this does nothing.
    async fn record(
        &self,
        _job: &str,
        _attempt: u32,
        _invocation: &StageStats,
    ) -> Result<(), TelemetryError> {
        Ok(())
    }
    /// Every invocation of one job attempt that ran (throttled batches did not), for
    /// concurrency over time; none where no records are kept.
    async fn spans(
        &self,
        _job: &str,
        _attempt: u32,
    ) -> Result<Vec<InvocationSpan>, TelemetryError> {
        Ok(Vec::new())
    }
}

/// When one invocation of a stage ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationSpan {
    pub stage: String,
    pub started_ms: u64,
    pub duration_us: u64,
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

/// The services' limits, each with its source, and the pure functions that measure a
/// request against them. Every adapter checks with these before it sends or writes
/// anything, so a request over a limit is refused with the same [`Oversize`] on every
/// backend, and nothing is written.
///
/// Where AWS states a limit in "KB" or "MB" without saying which, the constant takes the
/// decimal reading (400 KB = 400,000 bytes), the stricter one: what the embedded engine
/// accepts, AWS accepts too.
pub mod limits {
    use super::{Attributes, Key, Measure, Oversize, TxOp};
    use serde_json::Value;

    // ESM limits from AWS-FACTS.md: MaximumConcurrency 2–1,000; BatchSize 1–10,000 on
    // standard queues; a batching window of 0–300 s, at least 1 s when BatchSize > 10.
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

    /// DynamoDB item size, as [`item_size`] counts it (AWS-FACTS.md, "DynamoDB and S3":
    /// ≤ 400 KB). DynamoDB itself accepts up to 409,600 bytes; moto refuses above 405,000
    /// by a rougher count of its own (a number by its digits), which the DynamoDB adapter
    /// reports as the same error.
    pub const MAX_ITEM_BYTES: usize = 400_000;
    /// Items in one `TransactWriteItems` (AWS-FACTS.md, "DynamoDB transactions").
    pub const MAX_TRANSACTION_ITEMS: usize = 100;
    /// Aggregate size of a `TransactWriteItems` (AWS-FACTS.md, "DynamoDB transactions":
    /// 4 MB per transaction).
    pub const MAX_TRANSACTION_BYTES: usize = 4_000_000;
    /// A `Query` reads at most 1 MB of items per page, then returns `LastEvaluatedKey`
    /// (not in AWS-FACTS.md: DynamoDB developer guide, "Paginating table query results";
    /// moto cuts its pages at 1,000,000 bytes too).
    pub const MAX_QUERY_PAGE_BYTES: usize = 1_000_000;
    /// Key attribute lengths in UTF-8 bytes (not in AWS-FACTS.md: DynamoDB developer
    /// guide, "Quotas": partition key 2,048 bytes, sort key 1,024 bytes).
    pub const MAX_PARTITION_KEY_BYTES: usize = 2_048;
    pub const MAX_SORT_KEY_BYTES: usize = 1_024;

    /// Largest message body the queues accept. SQS raised its limit to 1 MiB in 2026, but
    /// emulators and older regions still enforce 256 KiB (AWS-FACTS.md, "SQS"); larger
    /// payloads travel as claim-checks in the blob store.
    pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
    /// Entries per `SendMessageBatch`/`DeleteMessageBatch`/`ChangeMessageVisibilityBatch`
    /// (AWS-FACTS.md, "SQS": batch APIs).
    pub const MAX_BATCH_ENTRIES: usize = 10;
    /// A batch's bodies together: the same 256 KiB as one message (SQS API reference,
    /// `SendMessageBatch`), so any message fits in a batch of its own. The port takes any
    /// number of messages and the SQS adapter splits them by both limits.
    pub const MAX_BATCH_BYTES: usize = MAX_MESSAGE_BYTES;

    /// S3 object keys are 1 to 1,024 bytes of UTF-8 (not in AWS-FACTS.md: S3 user guide,
    /// "Naming Amazon S3 objects").
    pub const MAX_KEY_BYTES: usize = 1_024;
    /// One `PutObject` uploads at most 5 GB (not in AWS-FACTS.md: S3 user guide,
    /// "Uploading objects"; larger objects need a multipart upload, which the port does not
    /// offer).
    pub const MAX_OBJECT_BYTES: u64 = 5_000_000_000;

    /// The version attribute as [`item_size`] counts it for a write, which cannot know the
    /// version it will produce: the largest a version can be, so a check never depends on
    /// how often an item was written.
    pub const WRITE_VERSION: u64 = u64::MAX;

    /// The size DynamoDB gives a number written as `text` (DynamoDB developer guide, "Item
    /// sizes and formats"): leading and trailing zeroes are trimmed, then 1 byte per two
    /// significant digits, plus 1; and 1 more for a negative number, which DynamoDB
    /// stores with a terminator byte.
    pub fn number_size(text: &str) -> usize {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let mantissa = unsigned.split(['e', 'E']).next().unwrap_or_default();
        let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
        let significant = match digits.iter().position(|d| *d != b'0') {
            Some(first) => digits
                .iter()
                .rposition(|d| *d != b'0')
                .map_or(0, |last| last + 1 - first),
            None => 0,
        };
        1 + significant.div_ceil(2) + usize::from(negative && significant > 0)
    }

    /// The size of one attribute value, without its name (same source): a string's UTF-8
    /// bytes; 1 for a null or a Boolean; [`number_size`]; a list or map takes 3 bytes plus
    /// 1 per element, plus its elements (a map's element names included).
    pub fn value_size(value: &Value) -> usize {
        match value {
            Value::Null | Value::Bool(_) => 1,
            Value::Number(n) => number_size(&n.to_string()),
            Value::String(s) => s.len(),
            Value::Array(items) => 3 + items.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
            Value::Object(map) => map_size(map),
        }
    }

    fn map_size(map: &Attributes) -> usize {
        3 + map
            .iter()
            .map(|(name, v)| 1 + name.len() + value_size(v))
            .sum::<usize>()
    }

    /// The key as stored: the attributes `pk` and `sk`, names included.
    pub fn key_size(key: &Key) -> usize {
        "pk".len() + key.pk.len() + "sk".len() + key.sk.len()
    }

    /// The size of an item as the DynamoDB adapter stores it, `{pk, sk, v, a}` with the
    /// caller's attributes as the map `a` (ARCHITECTURE.md), counted as DynamoDB counts
    /// items: the sum of the attribute names and values.
    pub fn item_size(key: &Key, version: u64, attrs: &Attributes) -> usize {
        key_size(key) + "v".len() + number_size(&version.to_string()) + "a".len() + map_size(attrs)
    }

    /// `Ok` when `size` is within `limit`; else what `what` names was too large. (`what`
    /// is a closure so that a check that passes formats nothing.)
    fn within(
        size: impl TryInto<u64>,
        limit: impl TryInto<u64>,
        measure: Measure,
        what: impl FnOnce() -> String,
    ) -> Result<(), Oversize> {
        let (size, limit) = (
            size.try_into().unwrap_or(u64::MAX),
            limit.try_into().unwrap_or(u64::MAX),
        );
        if size <= limit {
            return Ok(());
        }
        Err(Oversize {
            what: what(),
            size,
            limit,
            measure,
        })
    }

    /// The key's attributes within DynamoDB's key lengths.
    pub fn check_key(key: &Key) -> Result<(), Oversize> {
        within(
            key.pk.len(),
            MAX_PARTITION_KEY_BYTES,
            Measure::Bytes,
            || "partition key".into(),
        )?;
        within(key.sk.len(), MAX_SORT_KEY_BYTES, Measure::Bytes, || {
            "sort key".into()
        })
    }

    /// The size a write of `attrs` under `key` stores, if it is within [`MAX_ITEM_BYTES`].
    pub fn check_item(key: &Key, attrs: &Attributes) -> Result<usize, Oversize> {
        check_key(key)?;
        let size = item_size(key, WRITE_VERSION, attrs);
        within(size, MAX_ITEM_BYTES, Measure::Bytes, || {
            format!("item {}/{}", key.pk, key.sk)
        })?;
        Ok(size)
    }

    /// A transaction within [`MAX_TRANSACTION_ITEMS`] and [`MAX_TRANSACTION_BYTES`] (a put
    /// counts its item, a delete or check its key), each item within [`MAX_ITEM_BYTES`].
    pub fn check_transaction(ops: &[TxOp]) -> Result<(), Oversize> {
        within(ops.len(), MAX_TRANSACTION_ITEMS, Measure::Items, || {
            "transaction".into()
        })?;
        let mut total = 0;
        for op in ops {
            total += match op {
                TxOp::Put { key, attrs, .. } => check_item(key, attrs)?,
                TxOp::Delete { key, .. } | TxOp::Check { key, .. } => {
                    check_key(key)?;
                    key_size(key)
                }
            };
        }
        within(total, MAX_TRANSACTION_BYTES, Measure::Bytes, || {
            "transaction".into()
        })
    }

    /// A message body within [`MAX_MESSAGE_BYTES`] (SQS counts UTF-8 bytes).
    pub fn check_message(body: &str) -> Result<(), Oversize> {
        within(body.len(), MAX_MESSAGE_BYTES, Measure::Bytes, || {
            "message body".into()
        })
    }

    /// An object key within [`MAX_KEY_BYTES`].
    pub fn check_object_key(key: &str) -> Result<(), Oversize> {
        within(key.len(), MAX_KEY_BYTES, Measure::Bytes, || {
            "object key".into()
        })
    }

    /// An object of `len` bytes within one `PutObject`.
    pub fn check_object(len: u64) -> Result<(), Oversize> {
        within(len, MAX_OBJECT_BYTES, Measure::Bytes, || "object".into())
    }
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

    fn attrs(value: serde_json::Value) -> Attributes {
        value.as_object().cloned().unwrap()
    }

    /// The rules of DynamoDB's "Item sizes and formats", one example each.
    #[test]
    fn values_are_sized_as_dynamodb_documents() {
        use serde_json::json;
        let cases = [
            // Strings: their UTF-8 bytes.
            (json!(""), 0),
            (json!("hello"), 5),
            (json!("héllo"), 6),
            (json!("日本"), 6),
            // Null and Booleans: 1 byte.
            (json!(null), 1),
            (json!(true), 1),
            // Numbers: 1 byte per two significant digits, plus 1; zeroes trimmed.
            (json!(0), 1),
            (json!(7), 2),
            (json!(12), 2),
            (json!(123), 3),
            (json!(12345), 4),
            (json!(1000), 2),
            (json!(0.001), 2),
            (json!(1.5), 2),
            (json!(u64::MAX), 11),
            (json!(-5), 3),
            // Lists and maps: 3 bytes, plus 1 per element, plus the elements (and names).
            (json!([]), 3),
            (json!({}), 3),
            (json!([1, "ab"]), 3 + (1 + 2) + (1 + 2)),
            (json!({"ab": "cd"}), 3 + 1 + 2 + 2),
            (
                json!({"m": {"l": [true]}}),
                3 + 1 + 1 + (3 + 1 + 1 + (3 + 1 + 1)),
            ),
        ];
        for (value, size) in cases {
            assert_eq!(limits::value_size(&value), size, "{value}");
        }
        assert_eq!(limits::number_size("1.50E+3"), 2);
        assert_eq!(limits::number_size("-0"), 1);
    }

    #[test]
    fn items_are_sized_as_the_dynamodb_adapter_stores_them() {
        use serde_json::json;
        let key = Key::new("job#1", "job");
        // pk: 2 + 5, sk: 2 + 3, v: 1 + 2 (version 7), a: 1 + a map of one string.
        let a = attrs(json!({"state": "done"}));
        assert_eq!(
            limits::item_size(&key, 7, &a),
            7 + 5 + 3 + 1 + (3 + 1 + 5 + 4)
        );
        // A write is counted at the largest version, whatever the item's history.
        assert_eq!(
            limits::item_size(&key, limits::WRITE_VERSION, &a),
            limits::item_size(&key, 7, &a) + 9
        );
        assert_eq!(
            limits::check_item(&key, &a),
            Ok(limits::item_size(&key, u64::MAX, &a))
        );
    }

    /// An item whose attribute `s` is a string of `len` bytes, and its size.
    fn item_of(sk: &str, len: usize) -> (Key, Attributes, usize) {
        let key = Key::new("p", sk);
        let a = attrs(serde_json::json!({"s": "x".repeat(len)}));
        let size = limits::item_size(&key, limits::WRITE_VERSION, &a);
        (key, a, size)
    }

    #[test]
    fn items_over_400_kb_are_refused_at_the_first_byte_over() {
        let (key, a, size) = item_of("k", 1000);
        let overhead = size - 1000;
        let (key, a_fits, size) = item_of(&key.sk, limits::MAX_ITEM_BYTES - overhead);
        assert_eq!(size, limits::MAX_ITEM_BYTES);
        assert_eq!(limits::check_item(&key, &a_fits), Ok(size));
        let (key, a_over, size) = item_of(&key.sk, limits::MAX_ITEM_BYTES - overhead + 1);
        assert_eq!(
            limits::check_item(&key, &a_over),
            Err(Oversize {
                what: "item p/k".into(),
                size: size as u64,
                limit: 400_000,
                measure: Measure::Bytes,
            })
        );
        assert!(limits::check_item(&key, &a).is_ok());
        let long = Key::new("p".repeat(2049), "k");
        assert_eq!(
            limits::check_item(&long, &a).unwrap_err().what,
            "partition key"
        );
        let long = Key::new("p", "k".repeat(1025));
        assert_eq!(limits::check_key(&long).unwrap_err().what, "sort key");
        assert!(limits::check_key(&Key::new("p".repeat(2048), "k".repeat(1024))).is_ok());
    }

    #[test]
    fn transactions_are_held_to_100_items_and_4_mb() {
        let put = |i: usize, len: usize| {
            let (key, attrs, _) = item_of(&format!("{i:03}"), len);
            TxOp::Put {
                key,
                attrs,
                condition: Condition::Always,
            }
        };
        let checks: Vec<TxOp> = (0..101)
            .map(|i| TxOp::Check {
                key: Key::new("p", format!("{i:03}")),
                condition: Condition::Always,
            })
            .collect();
        assert!(limits::check_transaction(&checks[..100]).is_ok());
        assert_eq!(
            limits::check_transaction(&checks),
            Err(Oversize {
                what: "transaction".into(),
                size: 101,
                limit: 100,
                measure: Measure::Items,
            })
        );
        // Ten items of ~390 KB fit in 4 MB; an eleventh does not, though each fits alone.
        let ten: Vec<TxOp> = (0..10).map(|i| put(i, 390_000)).collect();
        assert!(limits::check_transaction(&ten).is_ok());
        let eleven: Vec<TxOp> = (0..11).map(|i| put(i, 390_000)).collect();
        let err = limits::check_transaction(&eleven).unwrap_err();
        assert_eq!(
            (err.what.as_str(), err.limit, err.measure),
            ("transaction", 4_000_000, Measure::Bytes)
        );
        assert!(err.size > 11 * 390_000);
        // One item over 400 KB names that item.
        let over = vec![put(0, 10), put(1, 400_001)];
        assert_eq!(
            limits::check_transaction(&over).unwrap_err().what,
            "item p/001"
        );
    }

    #[test]
    fn messages_and_objects_are_held_to_sqs_and_s3_limits() {
        assert!(limits::check_message(&"x".repeat(256 * 1024)).is_ok());
        assert_eq!(
            limits::check_message(&"é".repeat(128 * 1024 + 1)),
            Err(Oversize {
                what: "message body".into(),
                size: 256 * 1024 + 2,
                limit: 256 * 1024,
                measure: Measure::Bytes,
            })
        );
        assert!(limits::check_object_key(&"k".repeat(1024)).is_ok());
        // UTF-8 bytes, not characters.
        assert_eq!(
            limits::check_object_key(&"é".repeat(513)).unwrap_err().size,
            1026
        );
        assert!(limits::check_object(5_000_000_000).is_ok());
        assert_eq!(
            limits::check_object(5_000_000_001).unwrap_err().what,
            "object"
        );
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
