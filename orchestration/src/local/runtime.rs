//! The local event-source-mapping runtime: what Lambda's pollers do in AWS.
//!
//! One poller per enabled mapping receives up to `BatchSize` messages (waiting up to the
//! batching window to fill a batch), and invokes the mapping's function under two limits:
//! the mapping's `MaximumConcurrency` (in provisioned mode, its MaximumPollers × 10) and the
//! function's reserved concurrency (or the account's). The function's response is settled with the partial-batch-response rules of
//! AWS; a returned error, a panic or a timeout fails the whole batch, whose messages then
//! reappear after their visibility timeout. As in AWS, a batch received when the function has
//! no concurrency left is throttled: it goes back to the queue and its receive count is spent.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::invocations::{InvocationLog, InvocationOutcome, InvocationRecord};
use super::now_ms;
use crate::ports::{Mapping, MappingConfig, Mappings, QueueError, Queues, ReceivedMessage};

/// A Lambda function as the runtime sees it: an SQS batch in, a batch response out.
#[async_trait]
pub trait Function: Send + Sync {
    async fn invoke(&self, event: SqsEvent) -> Result<SqsBatchResponse, String>;
}

#[async_trait]
impl Function for crate::worker::StageHandler {
    async fn invoke(&self, event: SqsEvent) -> Result<SqsBatchResponse, String> {
        self.handle(event).await.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Function for crate::daemon::Daemon {
    async fn invoke(&self, event: SqsEvent) -> Result<SqsBatchResponse, String> {
        self.handle(event).await.map_err(|e| e.to_string())
    }
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// An invocation running longer fails its batch (Lambda's function timeout).
    pub function_timeout: Duration,
    /// Concurrency shared by functions without reserved concurrency.
    pub account_concurrency: u32,
    /// Longest receive wait, so pollers notice config changes.
    pub poll_wait: Duration,
    /// How often mappings are re-listed (other processes may change them).
    pub resync_interval: Duration,
    /// While an invocation runs, its messages' visibility is extended this often (by twice
    /// this). In AWS the visibility timeout is at least 6× the function timeout, so a running
    /// batch never reappears; locally the stage queues keep a short timeout so that failed
    /// batches come back quickly, and this keeps running ones hidden instead.
    pub visibility_heartbeat: Duration,
    /// How often the engine runs the sweeper (`crate::sweeper`), as the deployment's schedule
    /// does in AWS: a job whose tick chain was lost is restarted, leftovers of ended
    /// attempts are deleted. The first sweep comes one interval after start, so short runs
    /// never pay for it. `None`: never.
    pub sweep_interval: Option<Duration>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            function_timeout: Duration::from_secs(60),
            account_concurrency: 1_000,
            poll_wait: Duration::from_millis(500),
            resync_interval: Duration::from_millis(250),
            visibility_heartbeat: Duration::from_millis(750),
            sweep_interval: Some(Duration::from_secs(10)),
        }
    }
}

/// A counting limit whose size can change while permits are out.
pub struct Limiter {
    state: Mutex<(u32, u32)>, // (active, limit)
    freed: Notify,
}

pub struct Permit(Arc<Limiter>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock() {
            s.0 = s.0.saturating_sub(1);
        }
        self.0.freed.notify_waiters();
    }
}

impl Limiter {
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((0, limit)),
            freed: Notify::new(),
        })
    }

    pub fn set_limit(&self, limit: u32) {
        if let Ok(mut s) = self.state.lock() {
            s.1 = limit;
        }
        self.freed.notify_waiters();
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut s = self.state.lock().ok()?;
        (s.0 < s.1).then(|| {
            s.0 += 1;
            Permit(self.clone())
        })
    }

    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.freed.notified();
            if let Some(p) = self.try_acquire() {
                return p;
            }
            notified.await;
        }
    }

    pub fn active(&self) -> u32 {
        self.state.lock().map(|s| s.0).unwrap_or(0)
    }
}

/// Which messages of a batch to delete, by the partial-batch-response rules of AWS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// Indices of the messages that succeeded (to delete).
    pub succeeded: Vec<usize>,
    pub outcome: InvocationOutcome,
}

/// An error, a panic or a timeout fails the batch. A response with no failures succeeds
/// whole. A response naming failures fails those messages only, unless one of its
/// identifiers is empty or not in the batch: then the whole batch failed.
pub fn settle(ids: &[String], result: Result<SqsBatchResponse, InvocationOutcome>) -> Settlement {
    let failed_whole = |outcome| Settlement {
        succeeded: Vec::new(),
        outcome,
    };
    let response = match result {
        Ok(r) => r,
        Err(outcome) => return failed_whole(outcome),
    };
    if response.batch_item_failures.is_empty() {
        return Settlement {
            succeeded: (0..ids.len()).collect(),
            outcome: InvocationOutcome::Ok,
        };
    }
    let known: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut failed = HashSet::new();
    for f in &response.batch_item_failures {
        if f.item_identifier.is_empty() || !known.contains(f.item_identifier.as_str()) {
            return failed_whole(InvocationOutcome::Error);
        }
        failed.insert(f.item_identifier.as_str());
    }
    Settlement {
        succeeded: (0..ids.len())
            .filter(|i| !failed.contains(ids[*i].as_str()))
            .collect(),
        outcome: InvocationOutcome::Partial,
    }
}

struct Poller {
    config: watch::Sender<MappingConfig>,
    task: JoinHandle<()>,
}

/// Runs every enabled mapping's poller until stopped.
pub struct EsmRuntime {
    queues: Arc<dyn Queues>,
    mappings: Arc<dyn Mappings>,
    changes: Option<watch::Receiver<u64>>,
    functions: HashMap<String, Arc<dyn Function>>,
    limiters: HashMap<String, Arc<Limiter>>,
    log: InvocationLog,
    config: RuntimeConfig,
}

impl EsmRuntime {
    pub fn new(
        queues: Arc<dyn Queues>,
        mappings: Arc<dyn Mappings>,
        changes: Option<watch::Receiver<u64>>,
        log: InvocationLog,
        config: RuntimeConfig,
    ) -> Self {
        Self {
            queues,
            mappings,
            changes,
            functions: HashMap::new(),
            limiters: HashMap::new(),
            log,
            config,
        }
    }

    pub fn register(&mut self, name: &str, function: Arc<dyn Function>) {
        self.functions.insert(name.to_owned(), function);
        self.limiters.insert(
            name.to_owned(),
            Limiter::new(self.config.account_concurrency),
        );
    }

    /// Polls until `shutdown` resolves, then stops every poller (in-flight batches are
    /// abandoned and reappear after their visibility timeout, as after a crash).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut pollers: HashMap<String, Poller> = HashMap::new();
        tokio::pin!(shutdown);
        loop {
            self.sync(&mut pollers).await;
            let changed = async {
                match self.changes.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = changed => {}
                _ = tokio::time::sleep(self.config.resync_interval) => {}
            }
        }
        for (_, p) in pollers {
            p.task.abort();
        }
        self.log.flush().await;
    }

    async fn sync(&self, pollers: &mut HashMap<String, Poller>) {
        let mappings = match self.mappings.list_mappings(None).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cannot list mappings");
                return;
            }
        };
        for (name, limiter) in &self.limiters {
            match self.mappings.get_reserved_concurrency(name).await {
                Ok(Some(n)) => limiter.set_limit(n),
                Ok(None) => limiter.set_limit(self.config.account_concurrency),
                Err(e) => warn!(function = %name, error = %e, "cannot read reserved concurrency"),
            }
        }
        let live: HashSet<&str> = mappings
            .iter()
            .filter(|m| m.config.enabled)
            .map(|m| m.id.as_str())
            .collect();
        pollers.retain(|id, p| {
            let keep = live.contains(id.as_str()) && !p.task.is_finished();
            if !keep {
                p.task.abort();
            }
            keep
        });
        for mapping in mappings.into_iter().filter(|m| m.config.enabled) {
            if let Some(p) = pollers.get(&mapping.id) {
                p.config.send_if_modified(|c| {
                    let changed = *c != mapping.config;
                    *c = mapping.config;
                    changed
                });
                continue;
            }
            let (Some(function), Some(limiter)) = (
                self.functions.get(&mapping.function).cloned(),
                self.limiters.get(&mapping.function).cloned(),
            ) else {
                warn!(function = %mapping.function, "mapping to an unknown function");
                continue;
            };
            let (config, config_rx) = watch::channel(mapping.config);
            let ctx = PollerContext {
                queues: self.queues.clone(),
                function,
                function_limiter: limiter,
                log: self.log.clone(),
                runtime: self.config.clone(),
                job: mapping.tags.get("sluice:job").cloned().unwrap_or_default(),
                attempt: mapping
                    .tags
                    .get("sluice:attempt")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0),
                stage: mapping
                    .tags
                    .get("sluice:stage")
                    .cloned()
                    .unwrap_or_else(|| mapping.function.clone()),
            };
            let id = mapping.id.clone();
            let task = tokio::spawn(poll(ctx, mapping, config_rx));
            pollers.insert(id, Poller { config, task });
        }
    }
}

struct PollerContext {
    queues: Arc<dyn Queues>,
    function: Arc<dyn Function>,
    function_limiter: Arc<Limiter>,
    log: InvocationLog,
    runtime: RuntimeConfig,
    job: String,
    attempt: u32,
    stage: String,
}

async fn poll(ctx: PollerContext, mapping: Mapping, mut config: watch::Receiver<MappingConfig>) {
    let ctx = Arc::new(ctx);
    let slots = Limiter::new(mapping.config.concurrency_cap());
    loop {
        let current = *config.borrow_and_update();
        slots.set_limit(current.concurrency_cap());
        let slot = slots.acquire().await;
        let batch = match receive_batch(&ctx, &mapping.queue_url, &current, &mut config).await {
            Ok(b) => b,
            Err(QueueError::NoSuchQueue(_)) => {
                debug!(mapping = %mapping.id, "queue gone; poller stops");
                return;
            }
            Err(e) => {
                warn!(mapping = %mapping.id, error = %e, "receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let Some(permit) = ctx.function_limiter.try_acquire() else {
            // Throttled: as in AWS, the batch goes back after its visibility timeout.
            ctx.log.record(InvocationRecord {
                job: ctx.job.clone(),
                attempt: ctx.attempt,
                stage: ctx.stage.clone(),
                function: mapping.function.clone(),
                started_ms: now_ms(),
                duration_us: 0,
                batch_size: batch.len() as u32,
                failed: batch.len() as u32,
                outcome: InvocationOutcome::Throttled,
            });
            drop(slot);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ctx = ctx.clone();
        let queue_url = mapping.queue_url.clone();
        let function_name = mapping.function.clone();
        tokio::spawn(async move {
            invoke(&ctx, &queue_url, &function_name, batch).await;
            drop(permit);
            drop(slot);
        });
    }
}

/// Receives up to `batch_size` messages, waiting up to the batching window to fill the batch.
/// An update of the mapping ends the wait with the batch in hand: the daemon drops the window
/// when nothing more is coming, and the last partial batch should not wait out the old one.
async fn receive_batch(
    ctx: &PollerContext,
    url: &str,
    config: &MappingConfig,
    updates: &mut watch::Receiver<MappingConfig>,
) -> Result<Vec<ReceivedMessage>, QueueError> {
    let want = config.batch_size as usize;
    let mut batch = ctx
        .queues
        .receive(url, want, ctx.runtime.poll_wait, None)
        .await?;
    if batch.is_empty() || config.batching_window_secs == 0 {
        return Ok(batch);
    }
    let deadline = Instant::now() + Duration::from_secs(u64::from(config.batching_window_secs));
    while batch.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::select! {
            more = ctx.queues.receive(url, want - batch.len(), left, None) => batch.extend(more?),
            Ok(()) = updates.changed() => break,
        }
    }
    Ok(batch)
}

fn event(url: &str, batch: &[ReceivedMessage]) -> SqsEvent {
    let arn = format!(
        "arn:aws:sqs:local:000000000000:{}",
        url.rsplit('/').next().unwrap_or(url)
    );
    let mut event = SqsEvent::default();
    event.records = batch
        .iter()
        .map(|m| {
            let mut msg = SqsMessage::default();
            msg.message_id = Some(m.message_id.clone());
            msg.receipt_handle = Some(m.receipt_handle.clone());
            msg.body = Some(m.body.clone());
            msg.attributes = HashMap::from([
                (
                    "ApproximateReceiveCount".to_owned(),
                    m.receive_count.to_string(),
                ),
                ("SentTimestamp".to_owned(), m.sent_ms.to_string()),
            ]);
            msg.event_source = Some("aws:sqs".into());
            msg.event_source_arn = Some(arn.clone());
            msg.aws_region = Some("local".into());
            msg
        })
        .collect();
    event
}

async fn invoke(ctx: &PollerContext, url: &str, function_name: &str, batch: Vec<ReceivedMessage>) {
    let ids: Vec<String> = batch.iter().map(|m| m.message_id.clone()).collect();
    let started_ms = now_ms();
    let started = Instant::now();
    let function = ctx.function.clone();
    let event = event(url, &batch);
    // A task of its own, so a panic is caught and a timeout can abort it.
    let name = function_name.to_owned();
    let mut task =
        tokio::spawn(async move { crate::meter::in_function(&name, function.invoke(event)).await });
    let heartbeat = async {
        let every = ctx.runtime.visibility_heartbeat;
        let receipts: Vec<String> = batch.iter().map(|m| m.receipt_handle.clone()).collect();
        loop {
            tokio::time::sleep(every).await;
            // A stale receipt (the message was received again) is a no-op.
            let _ = ctx
                .queues
                .change_visibility_batch(url, &receipts, every * 2)
                .await;
        }
    };
    let finished = async { tokio::time::timeout(ctx.runtime.function_timeout, &mut task).await };
    let outcome = tokio::select! {
        outcome = finished => outcome,
        _ = heartbeat => return,
    };
    let result = match outcome {
        Ok(Ok(Ok(response))) => Ok(response),
        Ok(Ok(Err(e))) => {
            debug!(function = function_name, error = %e, "invocation failed");
            Err(InvocationOutcome::Error)
        }
        Ok(Err(join)) if join.is_panic() => {
            warn!(function = function_name, "invocation panicked");
            Err(InvocationOutcome::Panic)
        }
        Ok(Err(_)) => Err(InvocationOutcome::Error),
        Err(_) => {
            task.abort();
            warn!(function = function_name, "invocation timed out");
            Err(InvocationOutcome::Timeout)
        }
    };
    let duration_us = started.elapsed().as_micros() as u64;
    let settlement = settle(&ids, result);
    let receipts: Vec<String> = settlement
        .succeeded
        .iter()
        .map(|i| batch[*i].receipt_handle.clone())
        .collect();
    let failed = (batch.len() - receipts.len()) as u32;
    if !receipts.is_empty() {
        match ctx.queues.delete(url, receipts).await {
            Ok(()) => {}
            // The job ended and its queues were torn down while a late duplicate ran.
            Err(QueueError::NoSuchQueue(_)) => debug!(function = function_name, "queue gone"),
            Err(e) => warn!(function = function_name, error = %e, "delete after invocation failed"),
        }
    }
    ctx.log.record(InvocationRecord {
        job: ctx.job.clone(),
        attempt: ctx.attempt,
        stage: ctx.stage.clone(),
        function: function_name.to_owned(),
        started_ms,
        duration_us,
        batch_size: batch.len() as u32,
        failed,
        outcome: settlement.outcome,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    fn response(failures: &[&str]) -> SqsBatchResponse {
        let mut r = SqsBatchResponse::default();
        r.set_failures(failures.iter().copied());
        r
    }

    #[test]
    fn partial_batch_response_rules() {
        let ids = ids(3);
        let cases: Vec<(
            Result<SqsBatchResponse, InvocationOutcome>,
            Vec<usize>,
            InvocationOutcome,
        )> = vec![
            (Ok(response(&[])), vec![0, 1, 2], InvocationOutcome::Ok),
            (
                Ok(response(&["m1"])),
                vec![0, 2],
                InvocationOutcome::Partial,
            ),
            (
                Ok(response(&["m0", "m2"])),
                vec![1],
                InvocationOutcome::Partial,
            ),
            (
                Ok(response(&["m0", "m1", "m2"])),
                vec![],
                InvocationOutcome::Partial,
            ),
            // An empty or unknown identifier fails the whole batch.
            (Ok(response(&[""])), vec![], InvocationOutcome::Error),
            (
                Ok(response(&["m1", "nope"])),
                vec![],
                InvocationOutcome::Error,
            ),
            (
                Err(InvocationOutcome::Error),
                vec![],
                InvocationOutcome::Error,
            ),
            (
                Err(InvocationOutcome::Panic),
                vec![],
                InvocationOutcome::Panic,
            ),
            (
                Err(InvocationOutcome::Timeout),
                vec![],
                InvocationOutcome::Timeout,
            ),
        ];
        for (result, succeeded, outcome) in cases {
            let s = settle(&ids, result.clone());
            assert_eq!(s.succeeded, succeeded, "{result:?}");
            assert_eq!(s.outcome, outcome, "{result:?}");
        }
    }

    #[tokio::test]
    async fn limiter_resizes_while_permits_are_out() {
        let l = Limiter::new(2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        l.set_limit(1);
        drop(a);
        assert!(l.try_acquire().is_none(), "still at the new limit of 1");
        l.set_limit(3);
        let _c = l.acquire().await;
        assert_eq!(l.active(), 2);
        l.set_limit(0);
        assert!(l.try_acquire().is_none(), "0 throttles everything");
    }
}

/// The runtime against real local queues and mappings: what a stage function sees.
#[cfg(test)]
mod runtime_tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::local::{SqliteMappings, SqliteQueues};
    use crate::ports::{OutgoingMessage, QueueSpec};

    /// Records every batch it gets; fails messages whose body starts with "fail", panics on
    /// "panic", sleeps on "slow".
    #[derive(Default)]
    struct Probe {
        seen: Mutex<Vec<String>>,
        concurrent: AtomicU32,
        max_concurrent: AtomicU32,
    }

    #[async_trait]
    impl Function for Probe {
        async fn invoke(&self, event: SqsEvent) -> Result<SqsBatchResponse, String> {
            let now = self.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_concurrent.fetch_max(now, Ordering::SeqCst);
            let mut response = SqsBatchResponse::default();
            let mut failures = Vec::new();
            for m in &event.records {
                let body = m.body.clone().unwrap_or_default();
                if let Ok(mut seen) = self.seen.lock() {
                    seen.push(body.clone());
                }
                if body == "panic" {
                    panic!("a handler bug");
                }
                if body == "slow" {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                if body.starts_with("fail") {
                    failures.push(m.message_id.clone().unwrap_or_default());
                }
            }
            self.concurrent.fetch_sub(1, Ordering::SeqCst);
            response.set_failures(failures);
            Ok(response)
        }
    }

    struct Rig {
        _dir: tempfile::TempDir,
        queues: Arc<SqliteQueues>,
        mappings: Arc<SqliteMappings>,
        log: InvocationLog,
        queue: String,
        dlq: String,
    }

    async fn rig(visibility: Duration) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let queues = Arc::new(SqliteQueues::open(&dir.path().join("q.db")).unwrap());
        let mappings = Arc::new(SqliteMappings::open(&dir.path().join("m.db")).unwrap());
        let log = InvocationLog::open(&dir.path().join("i.db")).unwrap();
        let dlq = queues
            .create_queue(&QueueSpec {
                name: "dlq".into(),
                visibility_timeout: Duration::from_secs(30),
                dead_letter: None,
            })
            .await
            .unwrap();
        let queue = queues
            .create_queue(&QueueSpec {
                name: "work".into(),
                visibility_timeout: visibility,
                dead_letter: Some(crate::ports::DeadLetter {
                    queue_url: dlq.clone(),
                    max_receive_count: 3,
                }),
            })
            .await
            .unwrap();
        Rig {
            _dir: dir,
            queues,
            mappings,
            log,
            queue,
            dlq,
        }
    }

    /// Runs the runtime until `done` says so (a hang guard fails the test after 60 s).
    async fn run_until(rig: &Rig, probe: Arc<Probe>, done: impl Fn(&Probe) -> bool) {
        let mut runtime = EsmRuntime::new(
            rig.queues.clone(),
            rig.mappings.clone(),
            Some(rig.mappings.subscribe()),
            rig.log.clone(),
            RuntimeConfig {
                visibility_heartbeat: Duration::from_millis(200),
                ..RuntimeConfig::default()
            },
        );
        runtime.register("probe", probe.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let watch = async {
            let guard = Instant::now();
            while !done(&probe) {
                assert!(
                    guard.elapsed() < Duration::from_secs(60),
                    "runtime never got there"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = stop.send(());
        };
        tokio::join!(
            runtime.run(async {
                let _ = stopped.await;
            }),
            watch
        );
    }

    async fn map(rig: &Rig, batch_size: u32, max_concurrency: u32) {
        map_with(
            rig,
            MappingConfig {
                batch_size,
                batching_window_secs: u32::from(batch_size > 10),
                max_concurrency: Some(max_concurrency),
                provisioned_pollers: None,
                enabled: true,
            },
        )
        .await;
    }

    async fn map_with(rig: &Rig, config: MappingConfig) {
        rig.mappings
            .create_mapping(&rig.queue, "probe", config, Default::default())
            .await
            .unwrap();
    }

    async fn send(rig: &Rig, bodies: &[&str]) {
        let out = bodies.iter().map(|b| OutgoingMessage::new(*b)).collect();
        rig.queues.send(&rig.queue, out).await.unwrap();
    }

    fn count(probe: &Probe, body: &str) -> usize {
        probe
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|b| *b == body)
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partial_failures_are_retried_then_dead_lettered_and_successes_deleted() {
        let rig = rig(Duration::from_millis(300)).await;
        map(&rig, 10, 2).await;
        send(&rig, &["ok-1", "fail-1", "ok-2"]).await;
        let probe = Arc::new(Probe::default());
        let dlq = rig.dlq.clone();
        let queues = rig.queues.clone();
        run_until(&rig, probe.clone(), |p| count(p, "fail-1") >= 3).await;
        // Successes ran once; the failing message ran maxReceiveCount times, then moved.
        assert_eq!(count(&probe, "ok-1"), 1);
        assert_eq!(count(&probe, "ok-2"), 1);
        let guard = Instant::now();
        let moved = loop {
            // The move happens on the next receive after the last failure.
            let _ = queues
                .receive(&rig.queue, 10, Duration::from_millis(400), None)
                .await
                .unwrap();
            let got = queues
                .receive(&dlq, 10, Duration::ZERO, None)
                .await
                .unwrap();
            if !got.is_empty() || guard.elapsed() > Duration::from_secs(30) {
                break got;
            }
        };
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].body, "fail-1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_fails_the_whole_batch() {
        let rig = rig(Duration::from_millis(300)).await;
        map(&rig, 10, 2).await;
        send(&rig, &["ok", "panic"]).await;
        let probe = Arc::new(Probe::default());
        // Both messages come back after the panic: the batch failed as a whole.
        run_until(&rig, probe.clone(), |p| count(p, "ok") >= 2).await;
        rig.log.flush().await;
        let records = rig.log.records("", 0).unwrap();
        assert!(
            records
                .iter()
                .any(|r| r.outcome == InvocationOutcome::Panic),
            "{records:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_batch_is_not_redelivered_after_its_visibility_timeout() {
        // Visibility 500 ms, the batch takes 1.5 s: the heartbeat keeps it hidden.
        let rig = rig(Duration::from_millis(500)).await;
        map(&rig, 10, 2).await;
        send(&rig, &["slow"]).await;
        let probe = Arc::new(Probe::default());
        let queues = rig.queues.clone();
        let url = rig.queue.clone();
        // Done once the message is gone from the queue (deleted after success). The SQLite
        // call inside never waits on another task, so blocking on it is safe.
        run_until(&rig, probe.clone(), |_| {
            futures::executor::block_on(queues.counts(&url))
                .map(|c| c.visible + c.in_flight + c.delayed == 0)
                .unwrap_or(false)
        })
        .await;
        assert_eq!(count(&probe, "slow"), 1, "delivered once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn provisioned_pollers_cap_concurrency_at_ten_invokes_each() {
        let rig = rig(Duration::from_secs(5)).await;
        map_with(
            &rig,
            MappingConfig {
                batch_size: 1,
                batching_window_secs: 0,
                max_concurrency: None,
                provisioned_pollers: Some(crate::ports::ProvisionedPollers {
                    minimum: 2,
                    maximum: 2,
                }),
                enabled: true,
            },
        )
        .await;
        let bodies: Vec<String> = (0..30).map(|_| "slow".to_owned()).collect();
        let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
        send(&rig, &refs).await;
        let probe = Arc::new(Probe::default());
        run_until(&rig, probe.clone(), |p| count(p, "slow") >= 30).await;
        assert_eq!(
            probe.max_concurrent.load(Ordering::SeqCst),
            20,
            "2 pollers × 10 invokes"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_is_capped_by_the_mapping_and_reserved_concurrency() {
        let rig = rig(Duration::from_secs(5)).await;
        map(&rig, 1, 3).await;
        let bodies: Vec<String> = (0..12).map(|_| "slow".to_owned()).collect();
        let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
        send(&rig, &refs).await;
        let probe = Arc::new(Probe::default());
        run_until(&rig, probe.clone(), |p| count(p, "slow") >= 12).await;
        assert_eq!(
            probe.max_concurrent.load(Ordering::SeqCst),
            3,
            "MaximumConcurrency"
        );

        // Reserved concurrency 0 throttles the function entirely.
        rig.mappings
            .put_reserved_concurrency("probe", 0)
            .await
            .unwrap();
        send(&rig, &["ok"]).await;
        let probe = Arc::new(Probe::default());
        let log = rig.log.clone();
        // The log's writer task records within milliseconds; no flush needed to see it.
        run_until(&rig, probe.clone(), |_| {
            log.records("", 0)
                .map(|r| r.iter().any(|r| r.outcome == InvocationOutcome::Throttled))
                .unwrap_or(false)
        })
        .await;
        assert_eq!(count(&probe, "ok"), 0, "never invoked while throttled");
    }
}
