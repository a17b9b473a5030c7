//! A discrete-event model of sluice on AWS, for sizes no single machine can hold.
//!
//! What is real: each job's scaling decisions are made by the real [`Policy`] on an
//! [`Observation`] built as the daemon builds it, and reserved concurrency is taken,
//! fitted, given back and applied by the real [`reserve`] code over the real store and
//! mappings ports (the embedded SQLite adapters, in a scratch directory). Source plans
//! come from the real planner ([`feed_tasks`]); costs from the real cost model
//! ([`crate::cost`]).
//!
//! What is modelled, each with its source in [`model`]: SQS queues (counts of messages,
//! visibility timeouts, receive counts and redrive to a DLQ), each event-source mapping's
//! scaling (5 concurrent batches at first, +300 per minute, at most 1,250, within
//! MaximumConcurrency; batching windows; in provisioned mode, its pollers ready at once
//! and +1,000 a minute, billed per poller-hour), Lambda (cold and warm starts, reserved
//! concurrency and the account's limit, throttles, the per-function scaling rate), a
//! stage's work per invocation: fixed time plus time per message, calibrated from
//! invocations measured on the embedded engine plus modelled API round trips, and the
//! job store's and blob store's throughput ([`store`]): the ledger's writes per partition
//! key, item and table, a keyed job's shuffle through S3 per prefix, the throttles and the
//! SDK's retries, in either ledger layout.
//!
//! Time is simulated: a billion messages take seconds to run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::components::feed_tasks;
use crate::cost::{self, FunctionUsage, Usage};
use crate::faults::Faults;
use crate::flow::{Function, Registry};
use crate::local::{FileBlobs, SqliteJobStore, SqliteMappings, SqliteQueues};
use crate::policy::{Levers, Observation, Policy, StageObservation};
use crate::ports::{Clock, QueueCounts, StageStats};
use crate::reserve;
use crate::services::{Services, Settings};
use crate::status::NoTelemetry;

mod store;
pub use store::{Keyed, Layout, StoreReport, StoreSpec};
use store::{Next, Progress, Store};

/// The model's constants, each with where it comes from.
pub mod model {
    use crate::ports::limits;
    /// An event-source mapping starts with 5 concurrent batches, adds up to 300 per
    /// minute, and runs up to 1,250 concurrent invokes (AWS-FACTS.md, "default scaling").
    pub const ESM_START: f64 = limits::ESM_START_BATCHES;
    pub const ESM_RAMP_PER_S: f64 = limits::ESM_RAMP_PER_S;
    pub const ESM_MAX: u32 = limits::ESM_MAX_INVOKES;
    /// Assumption: the pollers scale back to the start after a minute with nothing to read
    /// (AWS documents scaling down, not when).
    pub const ESM_IDLE_RESET_S: f64 = 60.0;
    /// Assumption: a new or updated mapping takes a second to act (AWS's control plane is
    /// eventually consistent; documented as "may take a few seconds").
    pub const ESM_UPDATE_S: f64 = 1.0;
    /// Account concurrency: 1,000 per Region, of which 100 stay unreserved (AWS-FACTS.md).
    pub const ACCOUNT_CONCURRENCY: u32 = 1_000;
    pub const UNRESERVED_MIN: u32 = 100;
    /// Lambda adds at most 1,000 execution environments per 10 s per function
    /// (AWS-FACTS.md, "scaling").
    pub const ENVIRONMENTS_PER_10S: u32 = 1_000;
    /// Assumption: a cold start of a small Rust `provided.al2023` arm64 binary. Published
    /// measurements of Rust on Lambda put init at tens of milliseconds; we take 150 ms
    /// with the runtime's first connections. AWS bills the INIT phase.
    pub const COLD_START_MS: f64 = 150.0;
    /// Assumption: one Lambda control-plane call (UpdateEventSourceMapping,
    /// PutFunctionConcurrency) from the daemon.
    pub const CONTROL_API_MS: f64 = 50.0;
    /// SQS, DynamoDB and S3 round trips: the cost model's (`cost::latency`).
    pub const SQS_MS: f64 = crate::cost::latency::SQS_MS;
    pub const DYNAMODB_MS: f64 = crate::cost::latency::DYNAMODB_MS;
    /// A daemon tick's calls: job record read, lease, the stage queues' counts, the
    /// ledger's counts, the record's update, the tick's sample (`timeline`), the next tick
    /// (counted in [`tick_ms`]).
    pub fn tick_ms(stages: usize) -> f64 {
        5.0 * DYNAMODB_MS + stages as f64 * SQS_MS + 2.0 * SQS_MS
    }

    /// Provisioned mode (AWS-FACTS.md, "Provisioned mode for SQS event-source mappings"):
    /// MinimumPollers × 10 invokes at once, then about 1,000 more a minute, up to
    /// MaximumPollers × 10 and 20,000 per mapping.
    pub const PROVISIONED_RAMP_PER_S: f64 = limits::PROVISIONED_RAMP_PER_S;
    pub const PROVISIONED_MAX: u32 = limits::PROVISIONED_MAX_INVOKES;
    pub const INVOKES_PER_POLLER: u32 = limits::INVOKES_PER_POLLER;

    // DynamoDB (AWS-FACTS.md, "Throughput limits that bound a design at scale").
    /// About 1,000 write units and 3,000 read units a second per partition; one item can
    /// never take more than its partition's writes. Assumption: each partition key is a
    /// partition of its own (a table this size has more partitions than keys in use), and
    /// DynamoDB does not split a hot key's items for heat within a job (it may after
    /// minutes, undocumented, and never one item): the model's single-key ceiling is what a
    /// job gets until then.
    pub const PARTITION_WRITE_UNITS_PER_S: f64 = 1_000.0;
    pub const PARTITION_READ_UNITS_PER_S: f64 = 3_000.0;
    pub const ITEM_WRITE_UNITS_PER_S: f64 = 1_000.0;
    /// On-demand: a new table serves about 4,000 write units a second at once; above
    /// double the previous peak within 30 minutes, requests may throttle. Reads: 12,000 a
    /// second for a new table (DynamoDB's on-demand documentation; not in AWS-FACTS.md).
    pub const TABLE_INITIAL_WRITE_UNITS_PER_S: f64 = 4_000.0;
    pub const TABLE_INITIAL_READ_UNITS_PER_S: f64 = 12_000.0;
    pub const TABLE_DOUBLING_S: f64 = 1_800.0;
    /// A transaction's items cost 2 units each; an item is at most 400 KB.
    pub const TRANSACTION_UNITS_PER_ITEM: f64 = 2.0;
    pub const ITEM_LIMIT_BYTES: u64 = 400 * 1_024;

    // S3 (AWS-FACTS.md): per prefix, 3,500 PUT and 5,500 GET a second; above, 503
    // SlowDown "while S3 scales". Assumption: a prefix is not repartitioned within a job
    // (S3 documents that it scales, not how fast).
    pub const S3_PUTS_PER_PREFIX_S: f64 = 3_500.0;
    pub const S3_GETS_PER_PREFIX_S: f64 = 5_500.0;
    pub const S3_MS: f64 = crate::cost::latency::S3_MS;
    /// Assumptions: one S3 request stream moves 100 MB/s; an invocation keeps up to 16
    /// requests in flight.
    pub const S3_BYTES_PER_S: f64 = 100e6;
    pub const S3_IN_FLIGHT: usize = 16;

    /// Throttled calls are retried by the SDK's standard strategy (`crate::aws`): up to 8
    /// attempts, backing off with full jitter from 100 ms up to 10 s; the model waits the
    /// expected backoff, half the cap, before attempt `n + 1`.
    pub const MAX_ATTEMPTS: u32 = crate::aws::MAX_ATTEMPTS;
    pub fn backoff_s(attempt: u32) -> f64 {
        let cap = crate::aws::INITIAL_BACKOFF.as_secs_f64()
            * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        0.5 * cap.min(crate::aws::MAX_BACKOFF.as_secs_f64())
    }

    // The ledger's layouts (notes/keyed-design.md): single key, ≤ 99 markers + 1 shard a
    // transaction; spread, ≤ 49 partitions a transaction, markers over 32 keys, 8
    // aggregate shards, delta records over 32 keys; R = expected keys / 250,000 in 2–256.
    pub const SINGLE_KEY_CHUNK: u64 = 99;
    pub const SPREAD_CHUNK: u64 = 49;
    pub const MARKER_KEYS: u32 = 32;
    pub const AGGREGATE_SHARDS: u32 = 8;
    pub const DELTA_KEYS: u32 = 32;
    pub const KEYS_PER_SHUFFLE_PARTITION: u64 = 250_000;
    pub const MIN_SHUFFLE_PARTITIONS: u32 = 2;
    pub const MAX_SHUFFLE_PARTITIONS: u32 = 256;

    /// Assumptions on sizes: a marker, a small aggregate shard, a delta record (plus 8
    /// bytes per offset), a merge marker with its top N; a key's entry in an aggregate or a
    /// partial (a word, its count and DynamoDB's or the encoding's overhead).
    pub const MARKER_BYTES: f64 = 100.0;
    pub const SHARD_BASE_BYTES: f64 = 200.0;
    pub const DELTA_RECORD_BYTES: f64 = 120.0;
    pub const MERGE_MARKER_BYTES: f64 = 1_024.0;
    pub const BYTES_PER_KEY: f64 = 16.0;
    /// Assumption: partials up to 256 KiB are "small" (combined per commit into one delta
    /// object); larger ones are referenced as they are.
    pub const SMALL_PARTIAL_BYTES: f64 = 256.0 * 1_024.0;
    /// Assumption: folding one key's entry into a hash map costs 100 ns.
    pub const NS_PER_ENTRY: f64 = 100.0;
    /// Assumption: a keyed job's message (a line, a tweet) holds 10 words.
    pub const WORDS_PER_MESSAGE: f64 = 10.0;
}

/// One stage's cost per invocation: `fixed_ms + per_unit_ms × units`, where a unit is a
/// message, or for a source a partition it emits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageProfile {
    pub name: String,
    pub function: String,
    pub is_source: bool,
    pub fixed_ms: f64,
    pub per_unit_ms: f64,
    /// Whether a unit's time grows with the records in a partition (a transform reads
    /// every record; a source emits and a reduce merges one partial per partition).
    pub per_record: bool,
    pub memory_mb: u32,
}

/// What a job type costs to run, stage by stage, and where the numbers come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub source: String,
    /// Records per partition when measured: a job with larger partitions costs more per
    /// unit in its `per_record` stages.
    pub partition_size: u64,
    pub stages: Vec<StageProfile>,
    /// SQS requests, DynamoDB units and S3 requests per partition (metered on the engine).
    pub per_partition: PerPartition,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PerPartition {
    pub sqs_requests: f64,
    pub dynamodb_write_units: f64,
    pub dynamodb_read_units: f64,
    pub s3_write_requests: f64,
    pub s3_read_requests: f64,
}

impl Profile {
    /// The word count's stages as `sluice simulate`'s calibration measured them on the
    /// embedded engine (our 2-core machine, release build, 100,000 messages in partitions
    /// of 100), with the modelled round trips of the calls each made added per message.
    pub fn wordcount() -> Self {
        let stage = |name: &str, fixed_ms, per_unit_ms| StageProfile {
            name: name.into(),
            // The stage functions by role: the filter and count stages share `transform`.
            function: match name {
                "feed" => "source",
                "filter" | "count" => "transform",
                other => other,
            }
            .into(),
            is_source: name == "feed",
            fixed_ms,
            per_unit_ms,
            per_record: matches!(name, "filter" | "count"),
            memory_mb: cost::memory_mb(name),
        };
        Self {
            source: "built-in: wordcount as calibrated on the embedded engine".into(),
            partition_size: 100,
            stages: vec![
                stage("feed", 0.0, 0.25),
                stage("filter", 1.3, 0.32),
                stage("count", 0.0, 0.53),
                stage("reduce", 0.1, 1.51),
            ],
            per_partition: PerPartition {
                sqs_requests: 0.82,
                dynamodb_write_units: 2.09,
                dynamodb_read_units: 0.69,
                s3_write_requests: 0.002,
                s3_read_requests: 0.0,
            },
        }
    }
}

impl Profile {
    /// fire-tweets' stages as `sluice simulate --job fire-tweets` calibrated them on our
    /// 2-core machine: a generated day of 40,000 tweets in 256 KiB partitions of about 193
    /// tweets. The feed reads each range and sends it on claim-checked, and on the
    /// embedded engine it is slow (0.6 s a partition, mostly file writes): a measured
    /// figure, kept as measured.
    pub fn fire_tweets() -> Self {
        let stage = |name: &str, function: &str, fixed_ms, per_unit_ms| StageProfile {
            name: name.into(),
            function: function.into(),
            is_source: name == "feed",
            fixed_ms,
            per_unit_ms,
            per_record: name == "match",
            memory_mb: cost::memory_mb(function),
        };
        Self {
            source: "built-in: fire-tweets as calibrated on the embedded engine".into(),
            partition_size: 193,
            stages: vec![
                stage("feed", "source", 0.0, 592.0),
                stage("match", "transform", 0.0, 34.9),
                stage("reduce", "reduce", 0.16, 3.5),
            ],
            per_partition: PerPartition {
                sqs_requests: 3.96,
                dynamodb_write_units: 2.37,
                dynamodb_read_units: 3.13,
                s3_write_requests: 0.98,
                s3_read_requests: 2.92,
            },
        }
    }
}

/// A job in a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    /// When it is submitted, seconds from the start.
    pub at_s: f64,
    pub messages: u64,
    pub partition_size: u64,
    pub policy: Policy,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub jobs: Vec<JobSpec>,
    pub profile: Profile,
    /// Reserved concurrency all jobs may hold together (`None`: no reservations; stage
    /// functions share the account's unreserved pool).
    pub budget: Option<u32>,
    pub account_concurrency: u32,
    pub tick: Duration,
    pub visibility: Duration,
    pub max_receive_count: u32,
    /// Stop here even if jobs are unfinished (simulated seconds).
    pub horizon_s: f64,
    /// The ledger's layout, whether the job is keyed, the stores' capacity.
    pub store: StoreSpec,
}

impl Scenario {
    /// These jobs, with AWS's defaults and the deployment's settings (`aws::config`).
    pub fn new(jobs: Vec<JobSpec>, profile: Profile) -> Self {
        let aws = crate::aws::config::AwsSettings::new("sluice");
        Self {
            jobs,
            profile,
            budget: Some(aws.concurrency_budget),
            account_concurrency: model::ACCOUNT_CONCURRENCY,
            tick: aws.tick_interval,
            visibility: aws.stage_visibility,
            max_receive_count: aws.max_receive_count,
            horizon_s: 30.0 * 24.0 * 3600.0,
            store: StoreSpec::default(),
        }
    }

    /// One job (see [`Scenario::new`]).
    pub fn single(spec: JobSpec, profile: Profile) -> Self {
        Self::new(vec![spec], profile)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub t: f64,
    pub stage: String,
    /// Invocations running (all jobs).
    pub concurrency: u32,
    /// Messages visible or in flight (all jobs).
    pub backlog: u64,
    /// The stage function's reserved concurrency.
    pub reserved: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub name: String,
    pub policy: String,
    pub messages: u64,
    pub partitions: u64,
    pub submitted_s: f64,
    /// When its mappings were first enabled (admitted under the budget).
    pub admitted_s: Option<f64>,
    pub finished_s: Option<f64>,
    pub job_time_s: Option<f64>,
    /// Stage invocations, and a keyed job's merge tasks.
    pub invocations: u64,
    pub dead_partitions: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// From the first submission to the last job's teardown.
    pub job_time_s: f64,
    pub billed_gb_s: f64,
    pub cost_usd: f64,
    pub estimate: cost::Estimate,
    pub requests: Requests,
    pub jobs: Vec<JobResult>,
    pub timeline: Vec<Point>,
    pub checks: Checks,
    /// DynamoDB and S3: peaks per key, item and prefix, throttles, item sizes.
    pub store: StoreReport,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Requests {
    pub lambda: u64,
    pub sqs: u64,
    pub dynamodb_units: u64,
    pub s3: u64,
}

/// What the model watched at every invocation start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checks {
    /// The most reserved concurrency all functions held at once.
    pub max_reserved_total: u32,
    /// The most invocations one mapping ran at once.
    pub max_mapping_concurrency: u32,
    /// Invocations started above a mapping's ramp, 1,250 or its MaximumConcurrency.
    pub ramp_violations: u64,
    /// Invocations refused for lack of function concurrency.
    pub throttles: u64,
    /// The most invocations running in the account at once.
    pub max_account_concurrency: u32,
    pub unfinished_jobs: u64,
    /// Invocations that failed (a store call gave up, or an item was too large): their
    /// messages come back after the visibility timeout.
    pub failed_invocations: u64,
    /// A keyed job's longest merge task (s).
    pub longest_merge_s: f64,
    /// The most mappings in provisioned mode at once, and their event poller-hours.
    pub provisioned_mappings: u32,
    pub epu_hours: f64,
    /// Events the model processed.
    pub events: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("scenario: {0}")]
    Invalid(String),
    #[error("reservation: {0}")]
    Reserve(#[from] reserve::ReserveError),
    #[error("scratch state: {0}")]
    Scratch(String),
}

/// Messages of one kind in a queue: `messages`, each worth `units_each` units of work.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    messages: u64,
    units_each: u64,
    receives: u32,
}

#[derive(Default)]
struct Queue {
    visible: VecDeque<Chunk>,
    visible_n: u64,
    in_flight: u64,
    /// Throttled batches, visible again at `.0`.
    returning: Vec<(f64, Chunk)>,
    dead: u64,
}

impl Queue {
    fn push(&mut self, chunk: Chunk) {
        if chunk.messages == 0 {
            return;
        }
        self.visible_n += chunk.messages;
        self.visible.push_back(chunk);
    }

    /// Takes up to `n` messages: (messages, units, the taken chunks).
    fn take(&mut self, n: u64) -> (u64, u64, Vec<Chunk>) {
        let (mut messages, mut units, mut taken) = (0, 0, Vec::new());
        while messages < n {
            let Some(front) = self.visible.front_mut() else {
                break;
            };
            let k = front.messages.min(n - messages);
            taken.push(Chunk {
                messages: k,
                ..*front
            });
            messages += k;
            units += k * front.units_each;
            front.messages -= k;
            if front.messages == 0 {
                self.visible.pop_front();
            }
        }
        self.visible_n -= messages;
        (messages, units, taken)
    }

    fn returning_n(&self) -> u64 {
        self.returning.iter().map(|(_, c)| c.messages).sum()
    }
}

struct Mapping {
    levers: Levers,
    /// The mapping acts on new levers from here.
    pending: Option<(f64, Levers)>,
    active_since: Option<f64>,
    /// In provisioned mode: since when its pollers are there.
    provisioned_since: Option<f64>,
    last_busy: f64,
    running: u32,
    gather_since: Option<f64>,
    /// Event pollers billed since `billed_at`, poller-seconds billed before it, and the
    /// most MinimumPollers it had (AWS bills at least a minute of those).
    pollers: u32,
    billed_at: f64,
    poller_s: f64,
    most_minimum: u32,
}

impl Mapping {
    /// A new mapping, disabled until `levers` take effect at `at`.
    fn new(levers: Levers, at: f64, now: f64) -> Self {
        Self {
            levers: Levers {
                reserved_concurrency: Some(0),
                ..levers
            },
            pending: Some((at, levers)),
            active_since: None,
            provisioned_since: None,
            last_busy: now,
            running: 0,
            gather_since: None,
            pollers: 0,
            billed_at: now,
            poller_s: 0.0,
            most_minimum: 0,
        }
    }

    /// The levers the mapping runs with at `now`: a pending update takes effect once due.
    fn in_force(&mut self, now: f64) -> Levers {
        if let Some((at, levers)) = self.pending {
            if now >= at {
                self.bill(now);
                let was = self.levers.mapping_config().provisioned_pollers.is_some();
                self.levers = levers;
                self.pending = None;
                let config = levers.mapping_config();
                match (was, config.provisioned_pollers) {
                    (false, Some(_)) => self.provisioned_since = Some(now),
                    (true, None) => {
                        // Back to the default scaling: it goes on from the invocations
                        // running (assumption: AWS keeps the pollers it has).
                        self.provisioned_since = None;
                        let above = f64::from(self.running) - model::ESM_START;
                        self.active_since = Some(now - above.max(0.0) / model::ESM_RAMP_PER_S);
                    }
                    _ => {}
                }
                if let Some(p) = config.provisioned_pollers {
                    self.most_minimum = self.most_minimum.max(p.minimum);
                }
                self.bill(now);
            }
        }
        self.levers
    }

    /// Event pollers in use: in provisioned mode, the minimum or what the running
    /// invocations need, within the maximum; none while disabled.
    fn poller_count(&self) -> u32 {
        let config = self.levers.mapping_config();
        match config.provisioned_pollers {
            Some(p) if config.enabled => p
                .minimum
                .max(self.running.div_ceil(model::INVOKES_PER_POLLER))
                .min(p.maximum),
            _ => 0,
        }
    }

    /// Bills the pollers up to `now` and counts them again.
    fn bill(&mut self, now: f64) {
        self.poller_s += (now - self.billed_at).max(0.0) * f64::from(self.pollers);
        self.billed_at = now;
        self.pollers = self.poller_count();
    }

    /// Poller-seconds to bill, at least a minute of the minimum pollers it ever had.
    fn billed_poller_s(&self) -> f64 {
        self.poller_s
            .max(cost::price::EPU_MIN_BILLED_S * f64::from(self.most_minimum))
    }

    /// How many invocations the mapping may run at `now`: its pollers' ramp within its
    /// caps.
    fn allowed(&mut self, now: f64) -> u32 {
        let config = self.levers.mapping_config();
        match config.provisioned_pollers {
            Some(p) => {
                let since = *self.provisioned_since.get_or_insert(now);
                let ready = f64::from(p.minimum * model::INVOKES_PER_POLLER)
                    + model::PROVISIONED_RAMP_PER_S * (now - since);
                (ready.floor() as u32)
                    .min(p.maximum.saturating_mul(model::INVOKES_PER_POLLER))
                    .min(model::PROVISIONED_MAX)
            }
            None => {
                let since = *self.active_since.get_or_insert(now);
                let ramp =
                    (model::ESM_START + model::ESM_RAMP_PER_S * (now - since)).floor() as u32;
                ramp.min(model::ESM_MAX)
                    .min(config.max_concurrency.unwrap_or(model::ESM_MAX))
            }
        }
    }
}

struct Stage {
    name: String,
    function: usize,
    is_source: bool,
    queue: Queue,
    mapping: Option<Mapping>,
    stats: StageStats,
}

struct Job {
    spec: JobSpec,
    stages: Vec<Stage>,
    total: u64,
    finished: u64,
    started: Option<f64>,
    admitted: Option<f64>,
    done: Option<f64>,
    /// When a pump is already scheduled for (batching windows, throttles, scaling).
    wake_at: Option<f64>,
    /// The live daemon tick's time, in the agenda's microseconds.
    tick_key: u64,
    /// Its ledger and shuffle in the store model.
    store: usize,
    merge: Merge,
}

/// A keyed job's merge phase (spread layout): R tasks on the reduce function.
#[derive(Clone, Copy, Debug, Default)]
struct Merge {
    tasks: u32,
    started: bool,
    waiting: u32,
    done: u32,
    invocations: u64,
}

impl Merge {
    /// Tasks that must end before the job can (none before the merge starts: the nudge
    /// then starts it).
    fn waiting_total(&self) -> u32 {
        if self.started {
            self.tasks
        } else {
            0
        }
    }
}

#[derive(Default)]
struct Func {
    name: String,
    memory_mb: u32,
    running: u32,
    warm_idle: u32,
    window_start: f64,
    cold_in_window: u32,
    reserved: Option<u32>,
    requests: u64,
    billed_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Submit(usize),
    Tick(usize),
    /// An invocation ends (`failed`: a call failed, or an item was refused).
    End {
        inv: usize,
        failed: bool,
    },
    /// An invocation's next call to the stores.
    Step(usize),
    Pump(usize),
    Sample,
    /// Start what merge tasks of a job the reduce function has room for.
    MergeStart(usize),
}

/// A stage invocation or a merge task, running.
struct Inv {
    job: usize,
    stage: usize,
    merge: bool,
    messages: u64,
    units: u64,
    /// The most receives among its messages.
    receives: u32,
    start: f64,
    progress: Progress,
}

/// Invocations running, by a reusable index.
#[derive(Default)]
struct Running {
    slots: Vec<Option<Inv>>,
    free: Vec<usize>,
}

impl Running {
    fn insert(&mut self, inv: Inv) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(inv);
                i
            }
            None => {
                self.slots.push(Some(inv));
                self.slots.len() - 1
            }
        }
    }

    fn take(&mut self, i: usize) -> Option<Inv> {
        let inv = self.slots.get_mut(i)?.take();
        if inv.is_some() {
            self.free.push(i);
        }
        inv
    }
}

/// What a stage's invocations ask of the stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The last stage: ledger commits.
    Reduce,
    /// The stage before it: a keyed job writes its partials to S3.
    Map,
    Other,
}

/// Events in time order (ties in the order scheduled), at microsecond resolution.
#[derive(Default)]
struct Agenda {
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
}

impl Agenda {
    fn push(&mut self, at: f64, event: Event) {
        self.seq += 1;
        // Rounded up: when the event runs, `now >= at` holds exactly.
        let key = (at * 1e6).ceil() as u64;
        self.heap.push(Reverse((key, self.seq, event)));
    }

    fn pop(&mut self) -> Option<(f64, Event)> {
        self.heap
            .pop()
            .map(|Reverse((key, _, event))| (key as f64 / 1e6, event))
    }
}

/// Simulated milliseconds, for the reservation code's clock.
struct SimClock(AtomicU64);

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct World {
    now: f64,
    agenda: Agenda,
    jobs: Vec<Job>,
    funcs: Vec<Func>,
    scenario: Scenario,
    timeline: Vec<Point>,
    checks: Checks,
    daemon_ticks: u64,
    account_running: u32,
    svc: Services,
    clock: Arc<SimClock>,
    reserve_version: u64,
    store: Store,
    running: Running,
    /// Poller-seconds of mappings gone.
    poller_s: f64,
}

/// Runs the scenario to the end (or its horizon). `scratch` holds the store the real
/// reservation code writes to.
pub async fn run(scenario: Scenario, scratch: &Path) -> Result<Report, SimError> {
    if scenario.jobs.is_empty() {
        return Err(SimError::Invalid("no jobs".into()));
    }
    if scenario.profile.stages.is_empty() || !scenario.profile.stages[0].is_source {
        return Err(SimError::Invalid(
            "the profile needs a source stage first".into(),
        ));
    }
    for spec in &scenario.jobs {
        if spec.messages == 0 || spec.partition_size == 0 {
            return Err(SimError::Invalid(format!(
                "job {}: messages and partition_size must be positive",
                spec.name
            )));
        }
    }
    let scratch_err = |e: &dyn std::fmt::Display| SimError::Scratch(e.to_string());
    std::fs::create_dir_all(scratch).map_err(|e| scratch_err(&e))?;
    let clock = Arc::new(SimClock(AtomicU64::new(0)));
    let svc = Services {
        store: Arc::new(
            SqliteJobStore::open(&scratch.join("store.db")).map_err(|e| scratch_err(&e))?,
        ),
        queues: Arc::new(
            SqliteQueues::open(&scratch.join("queues.db")).map_err(|e| scratch_err(&e))?,
        ),
        blobs: Arc::new(FileBlobs::open(scratch.join("blobs")).map_err(|e| scratch_err(&e))?),
        mappings: Arc::new(
            SqliteMappings::open(&scratch.join("mappings.db")).map_err(|e| scratch_err(&e))?,
        ),
        telemetry: Arc::new(NoTelemetry),
        clock: clock.clone(),
        registry: Registry::default(),
        settings: Settings {
            concurrency_budget: scenario.budget,
            ..Settings::default()
        },
        faults: Faults::default(),
    };
    let mut funcs: Vec<Func> = Vec::new();
    for s in &scenario.profile.stages {
        if !funcs.iter().any(|f| f.name == s.function) {
            funcs.push(Func {
                name: s.function.clone(),
                memory_mb: s.memory_mb,
                ..Func::default()
            });
        }
    }
    funcs.push(Func {
        name: "daemon".into(),
        memory_mb: cost::memory_mb("daemon"),
        ..Func::default()
    });
    let mut world = World {
        now: 0.0,
        agenda: Agenda::default(),
        jobs: Vec::new(),
        funcs,
        timeline: Vec::new(),
        checks: Checks::default(),
        daemon_ticks: 0,
        account_running: 0,
        svc,
        clock,
        reserve_version: 0,
        store: Store::new(scenario.store.clone()),
        running: Running::default(),
        poller_s: 0.0,
        scenario,
    };
    for (i, spec) in world.scenario.jobs.clone().into_iter().enumerate() {
        let total = spec.messages.div_ceil(spec.partition_size);
        let stages = world
            .scenario
            .profile
            .stages
            .iter()
            .map(|p| Stage {
                name: p.name.clone(),
                function: world
                    .funcs
                    .iter()
                    .position(|f| f.name == p.function)
                    .unwrap_or(0),
                is_source: p.is_source,
                queue: Queue::default(),
                mapping: None,
                stats: StageStats {
                    stage: p.name.clone(),
                    function: p.function.clone(),
                    ..StageStats::default()
                },
            })
            .collect();
        let store = world
            .store
            .add_job(&spec.name, spec.messages, spec.partition_size);
        world.jobs.push(Job {
            total,
            stages,
            finished: 0,
            started: None,
            admitted: None,
            done: None,
            wake_at: None,
            tick_key: 0,
            store,
            merge: Merge {
                tasks: world.store.shuffle_partitions().unwrap_or(0),
                ..Merge::default()
            },
            spec: spec.clone(),
        });
        world.schedule(spec.at_s, Event::Submit(i));
    }
    world.schedule(0.0, Event::Sample);
    world.run().await?;
    Ok(world.report())
}

impl World {
    fn schedule(&mut self, at: f64, event: Event) {
        self.agenda.push(at.max(self.now), event);
    }

    /// Schedules the job's next daemon tick at `at`, unless one is due sooner: a job has
    /// one live tick (a nudge brings it forward).
    fn schedule_tick(&mut self, j: usize, at: f64) {
        let at = at.max(self.now);
        let key = (at * 1e6).ceil() as u64;
        let now_key = (self.now * 1e6).round() as u64;
        let live = self.jobs[j].tick_key;
        if live <= now_key || key < live {
            self.jobs[j].tick_key = key;
            self.agenda.push(at, Event::Tick(j));
        }
    }

    /// The reduce that finishes the last partition (or the last merge task) nudges the
    /// daemon: its completion does not wait for the next tick.
    fn nudge_if_complete(&mut self, j: usize) {
        let job = &self.jobs[j];
        let reduced = job.finished + self.dead_partitions(j) >= job.total;
        if job.done.is_none() && reduced && job.merge.done >= job.merge.waiting_total() {
            self.schedule_tick(j, self.now + model::SQS_MS / 1e3);
        }
    }

    fn all_done(&self) -> bool {
        self.jobs.iter().all(|j| j.done.is_some())
    }

    async fn run(&mut self) -> Result<(), SimError> {
        while let Some((at, event)) = self.agenda.pop() {
            self.now = at;
            self.checks.events += 1;
            if self.now > self.scenario.horizon_s {
                break;
            }
            self.clock
                .0
                .store((self.now * 1e3) as u64, Ordering::SeqCst);
            match event {
                Event::Submit(j) => {
                    // The API's write and nudge, then the daemon's first tick.
                    let first = self.now + 2.0 * model::DYNAMODB_MS / 1e3 + model::SQS_MS / 1e3;
                    self.schedule_tick(j, first);
                }
                Event::Tick(j) => {
                    // Only the job's live tick runs (a nudge replaces the one due later).
                    if (self.now * 1e6).round() as u64 == self.jobs[j].tick_key {
                        self.tick(j).await?;
                    }
                }
                Event::End { inv, failed } => {
                    if let Some(inv) = self.running.take(inv) {
                        let job = inv.job;
                        if inv.merge {
                            self.end_merge(inv, failed);
                        } else {
                            self.end(inv, failed);
                            self.pump(job);
                        }
                        self.nudge_if_complete(job);
                    }
                }
                Event::Step(i) => self.step(i),
                Event::Pump(j) => self.pump(j),
                Event::MergeStart(j) => self.start_merges(j),
                Event::Sample => {
                    self.sample();
                    if self.all_done() {
                        break;
                    }
                    let step = if self.now < 600.0 {
                        1.0
                    } else if self.now < 3_600.0 {
                        10.0
                    } else {
                        60.0
                    };
                    self.schedule(self.now + step, Event::Sample);
                    // The pollers' ramp and batching windows move with time.
                    for j in 0..self.jobs.len() {
                        if self.jobs[j].started.is_some() && self.jobs[j].done.is_none() {
                            self.pump(j);
                        }
                    }
                }
            }
        }
        self.sample();
        Ok(())
    }

    /// One daemon tick: observe, decide with the real policy, reserve with the real
    /// reservation code, update the mappings; completion and teardown.
    async fn tick(&mut self, j: usize) -> Result<(), SimError> {
        let stages_n = self.jobs[j].stages.len();
        let mut took_ms = model::tick_ms(stages_n);
        self.daemon_ticks += 1;
        let name = self.jobs[j].spec.name.clone();
        let functions: Vec<Function> = self.jobs[j]
            .stages
            .iter()
            .map(|s| {
                self.funcs[s.function]
                    .name
                    .parse()
                    .unwrap_or(Function::Transform)
            })
            .collect();
        if self.jobs[j].started.is_none() {
            // Provisioning (queues, mappings) and planning: the real planner's tasks.
            self.jobs[j].started = Some(self.now);
            let total = self.jobs[j].total;
            let source = &mut self.jobs[j].stages[0].queue;
            for task in feed_tasks(total) {
                source.push(Chunk {
                    messages: 1,
                    units_each: task.count,
                    receives: 0,
                });
            }
            took_ms +=
                (stages_n as f64 + 1.0) * model::SQS_MS + stages_n as f64 * model::CONTROL_API_MS;
        }
        let job = &self.jobs[j];
        if job.finished + self.dead_partitions(j) >= job.total {
            let merge = job.merge;
            if merge.done < merge.tasks {
                if !merge.started {
                    // Every partition is reduced: the manifest, then R merge tasks.
                    let at = self.now + took_ms / 1e3;
                    took_ms += 1e3 * self.store.daemon_step(job.store, at, true) + model::SQS_MS;
                    let job = &mut self.jobs[j];
                    job.merge.started = true;
                    job.merge.waiting = job.merge.tasks;
                    self.schedule(self.now + took_ms / 1e3, Event::MergeStart(j));
                }
                self.charge_daemon(took_ms);
                let next = self.now + self.scenario.tick.as_secs_f64() + took_ms / 1e3;
                self.schedule_tick(j, next);
                return Ok(());
            }
            // Complete: the result (a keyed job's k-way merge), teardown and release.
            if merge.tasks > 0 {
                let at = self.now + took_ms / 1e3;
                took_ms += 1e3 * self.store.daemon_step(job.store, at, false);
            }
            took_ms += stages_n as f64 * (model::CONTROL_API_MS + model::SQS_MS);
            if self.scenario.budget.is_some() {
                if reserve::release(&self.svc, &name, 1).await? {
                    reserve::apply(&self.svc, &reserve::distinct(&functions)).await?;
                }
                self.refresh_reserved().await?;
            }
            let done = self.now + took_ms / 1e3;
            let job = &mut self.jobs[j];
            job.done = Some(done);
            for stage in &mut job.stages {
                if let Some(mut m) = stage.mapping.take() {
                    m.bill(done);
                    self.poller_s += m.billed_poller_s();
                }
            }
            self.charge_daemon(took_ms);
            return Ok(());
        }
        let obs = self.observe(j);
        let mut levers = job.spec.policy.decide(&obs);
        if let Some(budget) = self.scenario.budget {
            reserve::steer(&self.svc, &name, 1, &functions, &mut levers, budget).await?;
        }
        let effective = self.now + took_ms / 1e3 + model::ESM_UPDATE_S;
        let mut changed = false;
        // The levers in force before this tick's (none for a new mapping).
        let now = self.now;
        let previous: Vec<Option<Levers>> = self.jobs[j]
            .stages
            .iter_mut()
            .map(|s| s.mapping.as_mut().map(|m| m.in_force(now)))
            .collect();
        for (stage, l) in self.jobs[j].stages.iter_mut().zip(&levers) {
            match &mut stage.mapping {
                None => {
                    stage.mapping = Some(Mapping::new(*l, effective, now));
                    changed = true;
                }
                Some(m) => {
                    if m.pending.map(|p| p.1).unwrap_or(m.levers) != *l {
                        m.pending = Some((effective, *l));
                        changed = true;
                    }
                }
            }
        }
        if changed {
            took_ms += model::CONTROL_API_MS;
        }
        if self.jobs[j].admitted.is_none() && levers.iter().all(|l| l.mapping_config().enabled) {
            self.jobs[j].admitted = Some(effective);
        }
        if self.scenario.budget.is_some() {
            let in_flight: Vec<u64> = self.jobs[j]
                .stages
                .iter()
                .map(|s| s.queue.in_flight)
                .collect();
            reserve::settle(
                &self.svc, &name, 1, &functions, &previous, &levers, &in_flight,
            )
            .await?;
            self.refresh_reserved().await?;
        }
        self.charge_daemon(took_ms);
        let next = self.now + self.scenario.tick.as_secs_f64() + took_ms / 1e3;
        self.schedule_tick(j, next);
        self.schedule(effective, Event::Pump(j));
        Ok(())
    }

    fn charge_daemon(&mut self, ms: f64) {
        if let Some(d) = self.funcs.iter_mut().find(|f| f.name == "daemon") {
            d.requests += 1;
            d.billed_ms += ms.ceil() as u64;
        }
    }

    /// Reads the functions' reserved concurrency back when the reservations changed.
    async fn refresh_reserved(&mut self) -> Result<(), SimError> {
        let (_, version) = reserve::state(&self.svc).await?;
        if version == self.reserve_version {
            return Ok(());
        }
        self.reserve_version = version;
        let mut total = 0;
        for f in &mut self.funcs {
            if f.name == "daemon" {
                continue;
            }
            f.reserved = self
                .svc
                .mappings
                .get_reserved_concurrency(&f.name)
                .await
                .map_err(reserve::ReserveError::from)?;
            total += f.reserved.unwrap_or(0);
        }
        self.checks.max_reserved_total = self.checks.max_reserved_total.max(total);
        Ok(())
    }

    fn dead_partitions(&self, j: usize) -> u64 {
        self.jobs[j].stages.iter().map(|s| s.queue.dead).sum()
    }

    fn observe(&self, j: usize) -> Observation {
        let job = &self.jobs[j];
        Observation {
            job_size: job.spec.messages,
            total_partitions: Some(job.total),
            finished_partitions: job.finished + self.dead_partitions(j),
            elapsed_s: job.started.map(|s| self.now - s).unwrap_or(0.0),
            stages: job
                .stages
                .iter()
                .map(|s| StageObservation {
                    name: s.name.clone(),
                    is_source: s.is_source,
                    counts: QueueCounts {
                        visible: s.queue.visible_n,
                        in_flight: s.queue.in_flight + s.queue.returning_n(),
                        delayed: 0,
                    },
                    throughput: s.stats.throughput(),
                    memory_mb: self.funcs[s.function].memory_mb,
                })
                .collect(),
        }
    }

    /// Starts what each of the job's mappings may start now.
    fn pump(&mut self, j: usize) {
        if self.jobs[j].done.is_some() {
            return;
        }
        let mut wake: Option<f64> = None;
        for s in 0..self.jobs[j].stages.len() {
            if let Some(at) = self.pump_stage(j, s) {
                wake = Some(wake.map_or(at, |w: f64| w.min(at)));
            }
        }
        let Some(at) = wake else {
            return;
        };
        let pending = self.jobs[j].wake_at.filter(|w| *w > self.now);
        if pending.is_none_or(|w| at < w) {
            self.jobs[j].wake_at = Some(at);
            self.schedule(at, Event::Pump(j));
        }
    }

    /// Starts what one mapping may start now; returns when to look again, if it waits.
    fn pump_stage(&mut self, j: usize, s: usize) -> Option<f64> {
        let now = self.now;
        let visibility = self.scenario.visibility.as_secs_f64();
        let max_receives = self.scenario.max_receive_count;
        let account = self.scenario.account_concurrency;
        let reserved_total: u32 = self.funcs.iter().filter_map(|f| f.reserved).sum();
        let profile = &self.scenario.profile.stages[s];
        let fixed_ms = profile.fixed_ms;
        let per_unit_ms = if profile.per_record {
            profile.per_unit_ms * self.jobs[j].spec.partition_size as f64
                / self.scenario.profile.partition_size.max(1) as f64
        } else {
            profile.per_unit_ms
        };
        // What the stage asks of the stores: the last stage reduces; the one before it is a
        // keyed job's map side.
        let last = self.jobs[j].stages.len() - 1;
        let role = if s == last {
            Role::Reduce
        } else if s + 1 == last && !profile.is_source {
            Role::Map
        } else {
            Role::Other
        };
        let store_job = self.jobs[j].store;
        let stage = &mut self.jobs[j].stages[s];
        let m = stage.mapping.as_mut()?;
        m.in_force(now);
        let q = &mut stage.queue;
        // Throttled and failed batches come back after the visibility timeout.
        let mut i = 0;
        while i < q.returning.len() {
            if q.returning[i].0 <= now {
                let (_, chunk) = q.returning.swap_remove(i);
                q.push(chunk);
            } else {
                i += 1;
            }
        }
        if !m.levers.mapping_config().enabled {
            return None;
        }
        if q.visible_n == 0 && m.running == 0 && now - m.last_busy > model::ESM_IDLE_RESET_S {
            m.active_since = None;
        }
        let mut wake: Option<f64> = None;
        while q.visible_n > 0 {
            let allowed = m.allowed(now);
            if m.running >= allowed {
                break;
            }
            let batch = u64::from(m.levers.batch_size);
            let window = f64::from(m.levers.batching_window_secs);
            if q.visible_n < batch && window > 0.0 {
                let started = *m.gather_since.get_or_insert(now);
                if now < started + window {
                    wake = Some(started + window);
                    break;
                }
            }
            m.gather_since = None;
            let f = &mut self.funcs[stage.function];
            if now - f.window_start >= 10.0 {
                f.window_start = now;
                f.cold_in_window = 0;
            }
            let limit = match f.reserved {
                Some(r) => r,
                None => account.saturating_sub(reserved_total),
            };
            let (messages, units, chunks) = q.take(batch);
            q.in_flight += messages;
            if f.running >= limit || self.account_running >= account {
                // Throttled: the batch was received, so its receive counts are spent; it
                // comes back after the visibility timeout, or goes to the DLQ.
                self.checks.throttles += 1;
                q.in_flight -= messages;
                for mut c in chunks {
                    c.receives += 1;
                    if c.receives >= max_receives {
                        q.dead += c.messages * c.units_each.max(1);
                    } else {
                        q.returning.push((now + visibility, c));
                    }
                }
                wake = Some(now + 1.0);
                break;
            }
            let cold = if f.warm_idle > 0 {
                f.warm_idle -= 1;
                false
            } else if f.cold_in_window < model::ENVIRONMENTS_PER_10S {
                f.cold_in_window += 1;
                true
            } else {
                // Lambda cannot add environments faster: the poller tries again.
                q.in_flight -= messages;
                for c in chunks.into_iter().rev() {
                    q.visible.push_front(c);
                    q.visible_n += c.messages;
                }
                wake = Some(f.window_start + 10.0);
                break;
            };
            f.running += 1;
            self.account_running += 1;
            m.running += 1;
            m.bill(now);
            if m.running > allowed {
                self.checks.ramp_violations += 1;
            }
            self.checks.max_mapping_concurrency =
                self.checks.max_mapping_concurrency.max(m.running);
            self.checks.max_account_concurrency = self
                .checks
                .max_account_concurrency
                .max(self.account_running);
            let mut ms = fixed_ms + per_unit_ms * units as f64;
            if cold {
                ms += model::COLD_START_MS;
            }
            // The ESM's receive round trip before the invoke; then the work, with its calls
            // to the stores (events of their own) and their waits.
            let start = now + model::SQS_MS / 1e3;
            let progress = Progress::new(match role {
                Role::Reduce => self.store.plan_reduce(store_job, messages, ms / 1e3),
                Role::Map => self.store.plan_map(store_job, messages, ms / 1e3),
                Role::Other => Default::default(),
            });
            let (event_at, calls) = if progress.is_empty() {
                (start + ms / 1e3, false)
            } else {
                (progress.first_at(start), true)
            };
            let inv = self.running.insert(Inv {
                job: j,
                stage: s,
                merge: false,
                messages,
                units,
                receives: chunks.iter().map(|c| c.receives).max().unwrap_or(0),
                start,
                progress,
            });
            let event = if calls {
                Event::Step(inv)
            } else {
                Event::End { inv, failed: false }
            };
            self.agenda.push(event_at, event);
        }
        wake
    }

    /// An invocation's next call to the stores.
    fn step(&mut self, i: usize) {
        let now = self.now;
        let Some(inv) = self.running.slots.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let job = self.jobs[inv.job].store;
        let (at, event) = match self.store.step(job, &mut inv.progress, now) {
            Next::Step(at) => (at, Event::Step(i)),
            Next::Done(at) => (
                at,
                Event::End {
                    inv: i,
                    failed: false,
                },
            ),
            Next::Failed(at) => (
                at,
                Event::End {
                    inv: i,
                    failed: true,
                },
            ),
        };
        self.agenda.push(at, event);
    }

    /// Bills a finished invocation of `function` that started at `start`; returns the ms.
    fn bill(&mut self, function: usize, start: f64) -> u64 {
        let billed = ((self.now - start) * 1e3).max(0.0).ceil() as u64;
        let f = &mut self.funcs[function];
        f.requests += 1;
        f.billed_ms += billed;
        f.running = f.running.saturating_sub(1);
        f.warm_idle += 1;
        self.account_running = self.account_running.saturating_sub(1);
        billed
    }

    fn end(&mut self, inv: Inv, failed: bool) {
        let now = self.now;
        let visibility = self.scenario.visibility.as_secs_f64();
        let max_receives = self.scenario.max_receive_count;
        let (j, s, messages, units, receives) =
            (inv.job, inv.stage, inv.messages, inv.units, inv.receives);
        let done = if failed {
            self.checks.failed_invocations += 1;
            inv.progress.done.min(messages)
        } else {
            messages
        };
        let billed = self.bill(self.jobs[j].stages[s].function, inv.start);
        let last = self.jobs[j].stages.len() - 1;
        let job = &mut self.jobs[j];
        let stage = &mut job.stages[s];
        stage.stats.invocations += 1;
        stage.stats.billed_ms += billed;
        stage.queue.in_flight -= messages;
        stage.stats.messages += done;
        if let Some(m) = stage.mapping.as_mut() {
            m.running = m.running.saturating_sub(1);
            m.last_busy = now;
            m.bill(now);
        }
        let failed = messages - done;
        if failed > 0 {
            // A failed commit is not retried sooner: its messages come back after the
            // visibility timeout, or go to the DLQ.
            stage.stats.failed_messages += failed;
            stage.stats.failed_invocations += 1;
            let receives = receives + 1;
            if receives >= max_receives {
                stage.queue.dead += failed;
            } else {
                stage.queue.returning.push((
                    now + visibility,
                    Chunk {
                        messages: failed,
                        units_each: 1,
                        receives,
                    },
                ));
            }
        }
        if s == last {
            job.finished += done;
        } else if done > 0 {
            job.stages[s + 1].queue.push(Chunk {
                messages: units * done / messages.max(1),
                units_each: 1,
                receives: 0,
            });
        }
    }

    /// Starts the job's waiting merge tasks that its reduce function has room for.
    fn start_merges(&mut self, j: usize) {
        let now = self.now;
        let account = self.scenario.account_concurrency;
        let reserved_total: u32 = self.funcs.iter().filter_map(|f| f.reserved).sum();
        let last = self.jobs[j].stages.len() - 1;
        let function = self.jobs[j].stages[last].function;
        let store_job = self.jobs[j].store;
        while self.jobs[j].merge.waiting > 0 && self.jobs[j].done.is_none() {
            let f = &mut self.funcs[function];
            let limit = f.reserved.unwrap_or(account.saturating_sub(reserved_total));
            if f.running >= limit || self.account_running >= account {
                self.schedule(now + 1.0, Event::MergeStart(j));
                return;
            }
            f.running += 1;
            self.account_running += 1;
            let cold = if f.warm_idle > 0 {
                f.warm_idle -= 1;
                0.0
            } else {
                model::COLD_START_MS
            };
            let start = now + model::SQS_MS / 1e3;
            let progress = Progress::new(self.store.plan_merge(store_job));
            let first = progress.first_at(start + cold / 1e3);
            let merge = &mut self.jobs[j].merge;
            merge.waiting -= 1;
            merge.invocations += 1;
            let inv = self.running.insert(Inv {
                job: j,
                stage: last,
                merge: true,
                messages: 1,
                units: 0,
                receives: 0,
                start,
                progress,
            });
            self.agenda.push(first, Event::Step(inv));
        }
    }

    fn end_merge(&mut self, inv: Inv, failed: bool) {
        let j = inv.job;
        let function = self.jobs[j].stages[inv.stage].function;
        self.bill(function, inv.start);
        let elapsed = self.now - inv.start;
        self.checks.longest_merge_s = self.checks.longest_merge_s.max(elapsed);
        if failed {
            // The task's message comes back after the visibility timeout.
            self.checks.failed_invocations += 1;
            self.jobs[j].merge.waiting += 1;
            let at = self.now + self.scenario.visibility.as_secs_f64();
            self.schedule(at, Event::MergeStart(j));
        } else {
            self.jobs[j].merge.done += 1;
        }
    }

    fn sample(&mut self) {
        let provisioned = self
            .jobs
            .iter()
            .flat_map(|j| &j.stages)
            .filter_map(|s| s.mapping.as_ref())
            .filter(|m| m.levers.mapping_config().provisioned_pollers.is_some())
            .count() as u32;
        self.checks.provisioned_mappings = self.checks.provisioned_mappings.max(provisioned);
        let mut by_stage: BTreeMap<usize, (String, u32, u64, Option<u32>)> = BTreeMap::new();
        for job in &self.jobs {
            if job.started.is_none() {
                continue;
            }
            for (i, s) in job.stages.iter().enumerate() {
                let e = by_stage
                    .entry(i)
                    .or_insert_with(|| (s.name.clone(), 0, 0, self.funcs[s.function].reserved));
                e.1 += s.mapping.as_ref().map(|m| m.running).unwrap_or(0);
                e.2 += s.queue.visible_n + s.queue.in_flight + s.queue.returning_n();
            }
        }
        for (_, (stage, concurrency, backlog, reserved)) in by_stage {
            self.timeline.push(Point {
                t: (self.now * 1e3).round() / 1e3,
                stage,
                concurrency,
                backlog,
                reserved,
            });
        }
    }

    fn report(&self) -> Report {
        let first = self
            .jobs
            .iter()
            .map(|j| j.spec.at_s)
            .fold(f64::INFINITY, f64::min);
        let last = self
            .jobs
            .iter()
            .map(|j| j.done.unwrap_or(self.now))
            .fold(0.0, f64::max);
        let job_time_s = last - first;
        let partitions: u64 = self.jobs.iter().map(|j| j.total).sum();
        let pp = &self.scenario.profile.per_partition;
        let scaled = |per: f64| (per * partitions as f64).round() as u64;
        let store = self.store.report();
        let mut usage = Usage {
            functions: self
                .funcs
                .iter()
                .map(|f| FunctionUsage {
                    function: f.name.clone(),
                    memory_mb: f.memory_mb,
                    requests: f.requests,
                    measured_ms: f.billed_ms,
                    ..FunctionUsage::default()
                })
                .collect(),
            sqs_requests: scaled(pp.sqs_requests) + self.daemon_ticks * 2,
            sqs_empty_receives: 0,
            // The ledger's units as the store model served them (the profile's per-partition
            // units are the same ledger, metered on the engine), and the daemon's.
            dynamodb_write_units: store.write_units + self.daemon_ticks * 5,
            dynamodb_read_units: store.read_units + self.daemon_ticks * 4,
            s3_write_requests: scaled(pp.s3_write_requests) + store.s3_puts,
            s3_read_requests: scaled(pp.s3_read_requests) + store.s3_gets,
        };
        for job in &self.jobs {
            let seconds = job.done.unwrap_or(self.now) - job.spec.at_s;
            usage = usage.with_job_polling(job.stages.len(), seconds);
        }
        // Mappings still there (a job past the horizon) are billed up to now.
        let live: f64 = self
            .jobs
            .iter()
            .flat_map(|j| &j.stages)
            .filter_map(|s| s.mapping.as_ref())
            .map(|m| m.billed_poller_s() + (self.now - m.billed_at).max(0.0) * f64::from(m.pollers))
            .sum();
        let epu_hours = (self.poller_s + live) / 3_600.0;
        let estimate = usage.estimate().with_pollers(epu_hours);
        let jobs: Vec<JobResult> = self
            .jobs
            .iter()
            .map(|j| JobResult {
                name: j.spec.name.clone(),
                policy: j.spec.policy.to_string(),
                messages: j.spec.messages,
                partitions: j.total,
                submitted_s: j.spec.at_s,
                admitted_s: j.admitted,
                finished_s: j.done,
                job_time_s: j.done.map(|d| d - j.spec.at_s),
                invocations: j.stages.iter().map(|s| s.stats.invocations).sum::<u64>()
                    + j.merge.invocations,
                dead_partitions: j.stages.iter().map(|s| s.queue.dead).sum(),
            })
            .collect();
        let mut checks = self.checks.clone();
        checks.unfinished_jobs = jobs.iter().filter(|j| j.finished_s.is_none()).count() as u64;
        checks.epu_hours = epu_hours;
        Report {
            job_time_s,
            billed_gb_s: estimate.lambda_gb_s,
            cost_usd: estimate.total_usd,
            requests: Requests {
                lambda: estimate.lambda_requests,
                sqs: usage.sqs_requests + usage.sqs_empty_receives,
                dynamodb_units: usage.dynamodb_write_units + usage.dynamodb_read_units,
                s3: usage.s3_write_requests + usage.s3_read_requests,
            },
            estimate,
            jobs,
            timeline: self.timeline.clone(),
            checks,
            store,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn job(name: &str, messages: u64, policy: &str) -> JobSpec {
        JobSpec {
            name: name.into(),
            at_s: 0.0,
            messages,
            partition_size: 100,
            policy: policy.parse().unwrap(),
        }
    }

    async fn simulate(scenario: Scenario) -> Report {
        let dir = tempfile::tempdir().unwrap();
        run(scenario, dir.path()).await.unwrap()
    }

    /// Every point of a single job's timeline is within the ESM's ramp from the stage's
    /// first backlog, 1,250, and the function's reserved concurrency.
    fn assert_within_ramp(report: &Report) {
        let mut first_backlog: HashMap<&str, f64> = HashMap::new();
        for p in &report.timeline {
            if p.backlog > 0 || p.concurrency > 0 {
                first_backlog.entry(&p.stage).or_insert(p.t);
            }
            let since = first_backlog.get(p.stage.as_str()).copied().unwrap_or(p.t);
            let ramp = model::ESM_START + model::ESM_RAMP_PER_S * (p.t - since + 1.0);
            assert!(
                f64::from(p.concurrency) <= ramp,
                "{p:?} above the ramp {ramp}"
            );
            assert!(p.concurrency <= model::ESM_MAX, "{p:?}");
            if let Some(r) = p.reserved {
                assert!(p.concurrency <= r, "{p:?} above its reservation");
            }
        }
    }

    #[tokio::test]
    async fn the_papers_job_finishes_exactly_within_the_limits() {
        for policy in ["always-one", "static-proportional:150", "backlog"] {
            let report = simulate(Scenario::single(
                job("paper", 2_000, policy),
                Profile::wordcount(),
            ))
            .await;
            let result = &report.jobs[0];
            assert_eq!(result.partitions, 20);
            assert!(result.finished_s.is_some(), "{policy}: {report:?}");
            assert_eq!(result.dead_partitions, 0);
            assert_eq!(report.checks.throttles, 0, "{policy}");
            assert_eq!(report.checks.ramp_violations, 0);
            assert!(report.job_time_s > 0.0 && report.cost_usd > 0.0);
            assert_within_ramp(&report);
        }
    }

    /// A table with warm throughput of 30,000 write units a second, and a plan that knows
    /// it: the spread ledger's 32 marker keys take 32,000, so the store keeps up with the
    /// scenarios about Lambda's scaling.
    const WARM: &str = "table-wcu=30000";

    fn warm(mut scenario: Scenario) -> Scenario {
        scenario.store.table_write_units = 30_000.0;
        scenario
    }

    #[tokio::test]
    async fn a_large_job_ramps_as_the_mapping_allows() {
        let report = simulate(warm(Scenario::single(
            job("big", 50_000_000, &format!("backlog:{WARM}")),
            Profile::wordcount(),
        )))
        .await;
        assert!(report.jobs[0].finished_s.is_some());
        assert_eq!(report.jobs[0].dead_partitions, 0);
        assert_within_ramp(&report);
        // Up the ramp (6 s from 5 to 35), within the budget of 900 over the four functions
        // and what the store takes.
        assert!(report.checks.max_reserved_total <= 900);
        assert!(
            report.checks.max_mapping_concurrency > 30,
            "{:?}",
            report.checks
        );
        assert_eq!(report.checks.throttles, 0);
        assert_eq!(report.checks.ramp_violations, 0);
    }

    #[tokio::test]
    async fn backlog_beats_the_static_policy_on_a_large_job() {
        let run = |policy: String| {
            simulate(warm(Scenario::single(
                job("big", 10_000_000, &policy),
                Profile::wordcount(),
            )))
        };
        let (fixed, backlog) = (
            run("static-proportional:150".into()).await,
            run(format!("backlog:{WARM}")).await,
        );
        assert!(
            backlog.job_time_s < fixed.job_time_s,
            "{} vs {}",
            backlog.job_time_s,
            fixed.job_time_s
        );
        assert!(
            backlog.cost_usd <= fixed.cost_usd,
            "{} vs {}",
            backlog.cost_usd,
            fixed.cost_usd
        );
        assert!(backlog.requests.lambda < fixed.requests.lambda);
    }

    #[tokio::test]
    async fn provisioned_pollers_skip_the_ramp_and_bill_their_hours() {
        let run = |policy: String| {
            simulate(warm(Scenario::single(
                job("big", 50_000_000, &policy),
                Profile::wordcount(),
            )))
        };
        let standard = run(format!("backlog:{WARM}")).await;
        let provisioned = run(format!("backlog:pollers=auto,{WARM}")).await;
        for r in [&standard, &provisioned] {
            assert_eq!(r.jobs[0].dead_partitions, 0);
            assert_eq!(r.checks.unfinished_jobs, 0);
            assert_eq!(r.checks.ramp_violations, 0);
            assert!(r.checks.max_reserved_total <= 900);
        }
        assert_eq!(standard.checks.provisioned_mappings, 0);
        assert_eq!(standard.estimate.pollers_usd, 0.0);
        assert!(provisioned.checks.provisioned_mappings > 0);
        assert!(provisioned.checks.epu_hours > 0.0);
        assert!(provisioned.estimate.pollers_usd > 0.0);
        assert!(
            provisioned.job_time_s < standard.job_time_s,
            "{} vs {}",
            provisioned.job_time_s,
            standard.job_time_s
        );
        // Within its first seconds a stage runs above what the default ramp allows.
        let first = |r: &Report| {
            r.timeline
                .iter()
                .filter(|p| p.t <= 4.0)
                .map(|p| p.concurrency)
                .max()
                .unwrap_or(0)
        };
        assert!(first(&standard) <= 25, "{}", first(&standard));
        assert!(first(&provisioned) > 25, "{}", first(&provisioned));
    }

    fn layout(layout: Layout, keyed: Option<Keyed>, messages: u64, policy: &str) -> Scenario {
        let mut scenario = Scenario::single(
            JobSpec {
                partition_size: 1_000,
                ..job("j", messages, policy)
            },
            Profile::wordcount(),
        );
        scenario.store.layout = layout;
        scenario.store.keyed = keyed;
        scenario
    }

    #[tokio::test]
    async fn one_partition_key_bounds_the_single_key_ledger() {
        // 10^5 partitions at about 2 write units each: at most 1,000 a second on one key.
        let single = simulate(layout(Layout::SingleKey, None, 100_000_000, "backlog")).await;
        let spread = simulate(layout(Layout::Spread, None, 100_000_000, "backlog")).await;
        for r in [&single, &spread] {
            assert_eq!(r.checks.unfinished_jobs, 0, "{:?}", r.store);
            assert_eq!(r.jobs[0].dead_partitions, 0, "{:?}", r.store);
        }
        let s = &single.store;
        assert!(s.peak_pk_write_units_per_s <= 1_000.0, "{s:?}");
        assert!(s.peak_pk_write_units_per_s > 900.0, "{s:?}");
        assert!(s.peak_pk.ends_with("run#…"), "{s:?}");
        assert!(s.dynamodb_throttles > 0, "{s:?}");
        assert!(single.job_time_s > 200.0, "{}", single.job_time_s);
        let p = &spread.store;
        assert!(p.peak_pk_write_units_per_s < 500.0, "{p:?}");
        assert!(p.peak_table_write_units_per_s <= 4_000.0, "{p:?}");
        assert!(
            spread.job_time_s < single.job_time_s / 2.0,
            "{} vs {}",
            spread.job_time_s,
            single.job_time_s
        );
        // Both write about 2 units a partition.
        for r in [&single, &spread] {
            let per = r.store.write_units as f64 / 100_000.0;
            assert!((2.0..2.2).contains(&per), "{per}");
        }
    }

    #[tokio::test]
    async fn backlog_keeps_the_ledger_within_a_new_tables_throughput() {
        let scenario = |policy: &str| layout(Layout::Spread, None, 300_000_000, policy);
        let within = simulate(scenario("backlog")).await;
        // The plan for a table with warm throughput, on the new table: the commits throttle
        // until some give up, and their batches wait out the visibility timeout.
        let blind = simulate(scenario(&format!("backlog:{WARM}"))).await;
        assert_eq!(within.checks.failed_invocations, 0, "{:?}", within.store);
        assert!(within.store.peak_table_write_units_per_s <= 4_000.0);
        assert!(blind.checks.failed_invocations > 0, "{:?}", blind.store);
        assert!(blind.store.failed_calls > 0);
        assert!(
            within.job_time_s < blind.job_time_s,
            "{} vs {}",
            within.job_time_s,
            blind.job_time_s
        );
        // 3 × 10^5 partitions at 2 units each on 4,000 a second: at least 150 s.
        assert!(within.job_time_s > 150.0);
    }

    #[tokio::test]
    async fn a_per_word_job_outgrows_one_item_but_not_the_spread_layout() {
        let words = Some(Keyed {
            vocabulary: 1_000_000,
            words_per_message: 10.0,
        });
        let single = simulate(layout(Layout::SingleKey, words, 1_000_000, "backlog")).await;
        let spread = simulate(layout(Layout::Spread, words, 1_000_000, "backlog")).await;
        // Before: the shard items pass 400 KB after a few commits; every later commit is
        // refused, and the partitions end in the DLQ.
        let s = &single.store;
        assert!(s.max_item_bytes > model::ITEM_LIMIT_BYTES, "{s:?}");
        assert!(s.oversized_writes > 0);
        assert!(single.jobs[0].dead_partitions > 900, "{:?}", single.jobs[0]);
        // After: small items, a shuffle through S3 and R = 4 merge tasks.
        let p = &spread.store;
        assert_eq!(spread.jobs[0].dead_partitions, 0, "{p:?}");
        assert!(p.max_item_bytes < 2_048, "{p:?}");
        assert_eq!(p.oversized_writes, 0);
        assert_eq!(p.shuffle_partitions, 4);
        assert!(p.keys > 700_000 && p.keys < 1_000_000, "{p:?}");
        // A map object per partition, and the combined deltas (1,000 partitions, ≤ 49 a
        // commit).
        assert!(p.s3_puts >= 1_000 + 21, "{p:?}");
        assert!(p.deltas >= 21, "{p:?}");
        assert!(spread.checks.longest_merge_s > 0.0);
        let stage_invocations: u64 = spread.jobs[0].invocations;
        assert!(stage_invocations > 4);
    }

    #[tokio::test]
    async fn without_a_budget_mappings_above_the_function_limit_throttle() {
        // Reserved concurrency of 0 left for the stage functions: the account's unreserved
        // pool is all there is, and a tiny account throttles; throttles burn receives.
        let mut scenario = Scenario::single(job("t", 1_000_000, "backlog"), Profile::wordcount());
        scenario.budget = None;
        scenario.account_concurrency = 3;
        scenario.visibility = Duration::from_secs(1);
        scenario.max_receive_count = 2;
        scenario.horizon_s = 3_600.0;
        let report = simulate(scenario).await;
        assert!(report.checks.throttles > 0, "{:?}", report.checks);
        assert!(report.checks.max_account_concurrency <= 3);
        let job = &report.jobs[0];
        assert!(
            job.dead_partitions > 0,
            "throttled batches reach the DLQ: {job:?}"
        );
        assert!(
            job.finished_s.is_some(),
            "dead letters still end the job: {job:?}"
        );
    }

    #[tokio::test]
    async fn many_jobs_share_the_budget_and_none_starves() {
        let profile = Profile::wordcount();
        let jobs = (0..300)
            .map(|i| JobSpec {
                at_s: (i % 10) as f64 * 0.1,
                ..job(&format!("j{i}"), 2_000 + i * 10, "backlog")
            })
            .collect();
        let mut scenario = Scenario::new(jobs, profile);
        scenario.budget = Some(100);
        let report = simulate(scenario).await;
        assert_eq!(report.checks.unfinished_jobs, 0, "{:?}", report.checks);
        assert!(
            report.checks.max_reserved_total <= 100,
            "{:?}",
            report.checks
        );
        assert_eq!(report.checks.throttles, 0);
        // Admission is first come, first served: more jobs waited than ran at once.
        let waited = report
            .jobs
            .iter()
            .filter(|j| j.admitted_s.unwrap_or(0.0) > j.submitted_s + 5.0)
            .count();
        assert!(waited > 100, "{waited} waited");
    }
}
