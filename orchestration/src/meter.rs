//! Counting what a run asks of AWS, in the units AWS bills: each port is wrapped in a
//! `Metered*` decorator that forwards the call and adds its SQS requests (64 KB chunks),
//! DynamoDB read and write units, or S3 requests to a shared [`Meter`].
//!
//! Calls made inside a function invocation ([`in_function`]) are also counted against that
//! function: on AWS each is a round trip inside its billed duration. Calls outside any
//! invocation are the event-source mapping's own (receive, delete) or a client's (submit).
//! The local runtime's empty receives and visibility heartbeats have no AWS counterpart at
//! the same rate (Lambda's pollers long-poll; AWS's visibility timeout outlasts the
//! function) and are left out; [`crate::cost::Usage::with_polling`] models the former.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::cost::{read_units, sqs_chunks, write_units, FunctionUsage, Usage};
use crate::ports::{
    limits, Attributes, BlobError, BlobSize, Blobs, Condition, Item, JobStore, Key,
    OutgoingMessage, Page, QueueCounts, QueueError, QueueSpec, Queues, ReceivedMessage, StoreError,
    TxOp,
};

tokio::task_local! {
    static FUNCTION: String;
}

/// Runs `fut` as an invocation of `function`: the calls it makes are billed inside it.
pub async fn in_function<F: Future>(function: &str, fut: F) -> F::Output {
    FUNCTION.scope(function.to_owned(), fut).await
}

fn in_some_function() -> bool {
    FUNCTION.try_with(|_| ()).is_ok()
}

#[derive(Clone, Copy)]
enum Service {
    Sqs,
    DynamoDb,
    S3,
}

/// Counters of one run. Cheap to share: every count is an atomic add, and the per-function
/// tally takes a lock only inside invocations.
#[derive(Default)]
pub struct Meter {
    sqs_requests: AtomicU64,
    dynamodb_write_units: AtomicU64,
    dynamodb_read_units: AtomicU64,
    s3_write_requests: AtomicU64,
    s3_read_requests: AtomicU64,
    /// function → calls made inside its invocations: [sqs, dynamodb, s3].
    calls: Mutex<BTreeMap<String, [u64; 3]>>,
}

impl Meter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn call(&self, service: Service) {
        // On every call inside an invocation: no allocation once the function is known.
        let _ = FUNCTION.try_with(|function| {
            if let Ok(mut calls) = self.calls.lock() {
                match calls.get_mut(function) {
                    Some(c) => c[service as usize] += 1,
                    None => calls.entry(function.clone()).or_default()[service as usize] += 1,
                }
            }
        });
    }

    fn sqs(&self, requests: u64) {
        self.sqs_requests.fetch_add(requests, Ordering::Relaxed);
        self.call(Service::Sqs);
    }

    fn dynamodb(&self, write_units: u64, read_units: u64) {
        self.dynamodb_write_units
            .fetch_add(write_units, Ordering::Relaxed);
        self.dynamodb_read_units
            .fetch_add(read_units, Ordering::Relaxed);
        self.call(Service::DynamoDb);
    }

    fn s3(&self, write: bool) {
        let counter = if write {
            &self.s3_write_requests
        } else {
            &self.s3_read_requests
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.call(Service::S3);
    }

    /// The usage so far, with each function's invocations (`(function, requests,
    /// billed ms)`, as the invocation log has them) joined to the calls it made.
    pub fn usage(&self, invocations: &[(String, u64, u64)]) -> Usage {
        let calls = self.calls.lock().map(|c| c.clone()).unwrap_or_default();
        let mut functions: BTreeMap<&str, FunctionUsage> = BTreeMap::new();
        for (function, requests, billed_ms) in invocations {
            let f = functions.entry(function).or_insert_with(|| blank(function));
            f.requests += requests;
            f.measured_ms += billed_ms;
        }
        for (function, [sqs, dynamodb, s3]) in &calls {
            let f = functions.entry(function).or_insert_with(|| blank(function));
            f.sqs_calls += sqs;
            f.dynamodb_calls += dynamodb;
            f.s3_calls += s3;
        }
        Usage {
            functions: functions.into_values().collect(),
            sqs_requests: self.sqs_requests.load(Ordering::Relaxed),
            sqs_empty_receives: 0,
            dynamodb_write_units: self.dynamodb_write_units.load(Ordering::Relaxed),
            dynamodb_read_units: self.dynamodb_read_units.load(Ordering::Relaxed),
            s3_write_requests: self.s3_write_requests.load(Ordering::Relaxed),
            s3_read_requests: self.s3_read_requests.load(Ordering::Relaxed),
        }
    }
}

fn blank(function: &str) -> FunctionUsage {
    FunctionUsage {
        function: function.to_owned(),
        memory_mb: crate::cost::memory_mb(function),
        ..Default::default()
    }
}

/// The size DynamoDB would bill an item at, as the DynamoDB adapter stores it.
fn item_bytes(key: &Key, attrs: &Attributes) -> usize {
    limits::item_size(key, limits::WRITE_VERSION, attrs)
}

pub struct MeteredStore {
    inner: Arc<dyn JobStore>,
    meter: Arc<Meter>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn JobStore>, meter: Arc<Meter>) -> Self {
        Self { inner, meter }
    }
}

#[async_trait]
impl JobStore for MeteredStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let item = self.inner.get(key).await?;
        let bytes = item.as_ref().map_or(0, |i| item_bytes(&i.key, &i.attrs));
        self.meter.dynamodb(0, read_units(bytes));
        Ok(item)
    }

    async fn put(
        &self,
        key: &Key,
        attrs: Attributes,
        condition: Condition,
    ) -> Result<u64, StoreError> {
        // A write whose condition fails is billed too.
        self.meter.dynamodb(write_units(item_bytes(key, &attrs)), 0);
        self.inner.put(key, attrs, condition).await
    }

    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.meter.dynamodb(1, 0);
        self.inner.delete(key, condition).await
    }

    async fn transact(&self, ops: Vec<TxOp>) -> Result<(), StoreError> {
        // Transactional writes cost two units per KB of each item.
        let units: u64 = ops
            .iter()
            .map(|op| match op {
                TxOp::Put { key, attrs, .. } => write_units(item_bytes(key, attrs)),
                TxOp::Delete { .. } | TxOp::Check { .. } => 1,
            })
            .sum();
        self.meter.dynamodb(2 * units, 0);
        self.inner.transact(ops).await
    }

    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let page = self.inner.query(pk, sk_prefix, start_after, limit).await?;
        let bytes: usize = page
            .items
            .iter()
            .map(|i| item_bytes(&i.key, &i.attrs))
            .sum();
        self.meter.dynamodb(0, read_units(bytes));
        Ok(page)
    }
}

pub struct MeteredQueues {
    inner: Arc<dyn Queues>,
    meter: Arc<Meter>,
}

impl MeteredQueues {
    pub fn new(inner: Arc<dyn Queues>, meter: Arc<Meter>) -> Self {
        Self { inner, meter }
    }
}

const SQS_BATCH: usize = limits::MAX_BATCH_ENTRIES;

/// Requests a batch call over `entries` entries takes (at least one).
fn batch_requests(entries: usize) -> u64 {
    entries.div_ceil(SQS_BATCH).max(1) as u64
}

#[async_trait]
impl Queues for MeteredQueues {
    async fn create_queue(&self, spec: &QueueSpec) -> Result<String, QueueError> {
        self.meter.sqs(1);
        self.inner.create_queue(spec).await
    }

    async fn delete_queue(&self, url: &str) -> Result<(), QueueError> {
        self.meter.sqs(1);
        self.inner.delete_queue(url).await
    }

    async fn queue_url(&self, name: &str) -> Result<Option<String>, QueueError> {
        self.meter.sqs(1);
        self.inner.queue_url(name).await
    }

    async fn list_queues(&self, prefix: &str) -> Result<Vec<String>, QueueError> {
        self.meter.sqs(1);
        self.inner.list_queues(prefix).await
    }

    async fn send(&self, url: &str, messages: Vec<OutgoingMessage>) -> Result<(), QueueError> {
        let requests: u64 = messages
            .chunks(SQS_BATCH)
            .map(|batch| sqs_chunks(batch.iter().map(|m| m.body.len()).sum()))
            .sum();
        self.meter.sqs(requests);
        self.inner.send(url, messages).await
    }

    async fn receive(
        &self,
        url: &str,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let received = self.inner.receive(url, max, wait, visibility).await?;
        if !received.is_empty() {
            self.meter
                .sqs(sqs_chunks(received.iter().map(|m| m.body.len()).sum()));
        }
        Ok(received)
    }

    async fn delete(&self, url: &str, receipt_handles: Vec<String>) -> Result<(), QueueError> {
        self.meter.sqs(batch_requests(receipt_handles.len()));
        self.inner.delete(url, receipt_handles).await
    }

    async fn change_visibility(
        &self,
        url: &str,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        if in_some_function() {
            self.meter.sqs(1);
        }
        self.inner
            .change_visibility(url, receipt_handle, timeout)
            .await
    }

    async fn counts(&self, url: &str) -> Result<QueueCounts, QueueError> {
        self.meter.sqs(1);
        self.inner.counts(url).await
    }

    async fn change_visibility_batch(
        &self,
        url: &str,
        receipt_handles: &[String],
        timeout: Duration,
    ) -> Result<(), QueueError> {
        if in_some_function() {
            self.meter.sqs(batch_requests(receipt_handles.len()));
        }
        self.inner
            .change_visibility_batch(url, receipt_handles, timeout)
            .await
    }
}

pub struct MeteredBlobs {
    inner: Arc<dyn Blobs>,
    meter: Arc<Meter>,
}

impl MeteredBlobs {
    pub fn new(inner: Arc<dyn Blobs>, meter: Arc<Meter>) -> Self {
        Self { inner, meter }
    }
}

#[async_trait]
impl Blobs for MeteredBlobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.meter.s3(true);
        self.inner.put(key, bytes).await
    }

    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.meter.s3(true);
        self.inner.put_if_absent(key, bytes).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        self.meter.s3(false);
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        self.meter.s3(true);
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        // DELETE is free, but it is still a round trip.
        self.meter.call(Service::S3);
        self.inner.delete(key).await
    }

    async fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        self.meter.s3(false);
        self.inner.get_range(key, start, end).await
    }

    async fn list_sizes(&self, prefix: &str) -> Result<Vec<BlobSize>, BlobError> {
        self.meter.s3(true);
        self.inner.list_sizes(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::{FileBlobs, SqliteJobStore, SqliteQueues};
    use serde_json::json;

    #[tokio::test]
    async fn ports_are_billed_in_aws_units_and_calls_inside_functions_are_attributed() {
        let dir = tempfile::tempdir().unwrap();
        let meter = Meter::new();
        let store = MeteredStore::new(
            Arc::new(SqliteJobStore::open(&dir.path().join("s.db")).unwrap()),
            meter.clone(),
        );
        let queues = MeteredQueues::new(
            Arc::new(SqliteQueues::open(&dir.path().join("q.db")).unwrap()),
            meter.clone(),
        );
        let blobs = MeteredBlobs::new(
            Arc::new(FileBlobs::open(dir.path().join("b")).unwrap()),
            meter.clone(),
        );
        let spec = |name: &str| QueueSpec {
            name: name.into(),
            visibility_timeout: Duration::from_secs(30),
            dead_letter: None,
        };
        let url = queues.create_queue(&spec("q")).await.unwrap();
        // 25 messages: 3 batches; the first carries 100 KB, two chunks.
        let mut messages: Vec<_> = (0..25)
            .map(|i| OutgoingMessage::new(i.to_string()))
            .collect();
        messages[0] = OutgoingMessage::new("x".repeat(100 * 1024));
        in_function("feed", queues.send(&url, messages))
            .await
            .unwrap();
        // A receive of one 100 KB message is two chunks; an empty one is not counted here.
        let big = queues.create_queue(&spec("big")).await.unwrap();
        queues
            .send(&big, vec![OutgoingMessage::new("z".repeat(100 * 1024))])
            .await
            .unwrap();
        let got = queues
            .receive(&big, 10, Duration::ZERO, None)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert!(queues
            .receive(&big, 10, Duration::ZERO, None)
            .await
            .unwrap()
            .is_empty());
        queues
            .delete(&big, got.into_iter().map(|m| m.receipt_handle).collect())
            .await
            .unwrap();
        let key = Key::new("job", "record");
        let attrs = json!({"blob": "y".repeat(1500)})
            .as_object()
            .unwrap()
            .clone();
        in_function("reduce", async {
            store.put(&key, attrs, Condition::NotExists).await.unwrap();
            store.get(&key).await.unwrap();
            blobs.put("k", b"v".to_vec()).await.unwrap();
            blobs.get("k").await.unwrap();
        })
        .await;
        let usage = meter.usage(&[("reduce".into(), 2, 7)]);
        // create 2; send 2 + 1 + 1, then 2; receive 2; delete 1.
        assert_eq!(usage.sqs_requests, 2 + 4 + 2 + 2 + 1);
        assert_eq!(usage.dynamodb_write_units, 2);
        assert_eq!(usage.dynamodb_read_units, 1);
        assert_eq!((usage.s3_write_requests, usage.s3_read_requests), (1, 1));
        let reduce = usage
            .functions
            .iter()
            .find(|f| f.function == "reduce")
            .unwrap();
        assert_eq!((reduce.requests, reduce.measured_ms), (2, 7));
        assert_eq!(
            (reduce.sqs_calls, reduce.dynamodb_calls, reduce.s3_calls),
            (0, 2, 2)
        );
        let feed = usage
            .functions
            .iter()
            .find(|f| f.function == "feed")
            .unwrap();
        assert_eq!(feed.sqs_calls, 1);
        assert_eq!(feed.memory_mb, 512);
    }
}
