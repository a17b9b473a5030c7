//! What the ledger and a keyed job's shuffle ask of DynamoDB and S3, and what their
//! throughput limits make of it.
//!
//! Every partition key, hot item, the table and every S3 prefix is a resource with a limit
//! per second ([`super::model`]). A request is admitted in the second it is made if every
//! resource it touches has room; otherwise it is throttled
//! (`ProvisionedThroughputExceededException`, `ThrottlingException`, S3's `503 SlowDown`)
//! and the SDK tries again after its backoff, up to its attempts; then the call fails, and
//! so does the invocation that made it. The waits are the invocation's time: a throttled
//! commit slows its reduce, and the stage's measured throughput drops.
//!
//! An invocation's requests are steps ([`Step`]) the simulation runs as events in time
//! order, so invocations compete for each second's capacity as they would. An S3 step is a
//! group of up to 16 requests an invocation keeps in flight; a commit step is the
//! aggregate shard's read and the transaction.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::model;

/// Where the ledger keeps its items (`--ledger`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Before keyed aggregation: every marker and the 8 aggregate shards of a job attempt
    /// under one partition key; a commit is one transaction of up to 99 markers and one
    /// shard, which holds everything folded into it and is read and rewritten whole.
    SingleKey,
    /// `notes/keyed-design.md`: markers over 32 partition keys, each aggregate shard under
    /// its own, delta records over 32; up to 49 partitions a transaction; a keyed job's
    /// partials go through S3 (one object per input partition, merged by R tasks).
    #[default]
    Spread,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SingleKey => "single-key",
            Self::Spread => "spread",
        })
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "single-key" => Ok(Self::SingleKey),
            "spread" => Ok(Self::Spread),
            _ => Err(format!(
                "unknown ledger layout `{s}`; known: single-key, spread"
            )),
        }
    }
}

/// A keyed job (counts per word): the distribution of its keys.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Keyed {
    /// Distinct keys the words are drawn from, Zipf-distributed (exponent 1).
    pub vocabulary: u64,
    pub words_per_message: f64,
}

/// The job store and blob store side of a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreSpec {
    pub layout: Layout,
    /// `None`: the job's result is a small aggregate (a total).
    pub keyed: Option<Keyed>,
    /// Write units a second the table serves from the start: an on-demand table's 4,000,
    /// or what warm throughput was set to ahead of the job.
    pub table_write_units: f64,
    /// S3 prefixes each kind of shuffle object is spread over (the design: 1 each).
    pub s3_prefixes: u32,
}

impl Default for StoreSpec {
    fn default() -> Self {
        Self {
            layout: Layout::Spread,
            keyed: None,
            table_write_units: model::TABLE_INITIAL_WRITE_UNITS_PER_S,
            s3_prefixes: 1,
        }
    }
}

/// What the stores saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreReport {
    pub layout: String,
    pub keyed: bool,
    /// Write units served in the busiest second on one partition key, and which.
    pub peak_pk_write_units_per_s: f64,
    pub peak_pk: String,
    /// The same for one item (an aggregate shard, a merge marker).
    pub peak_item_write_units_per_s: f64,
    pub peak_item: String,
    pub peak_pk_read_units_per_s: f64,
    pub peak_table_write_units_per_s: f64,
    /// S3 requests served in the busiest second on one prefix.
    pub peak_prefix_puts_per_s: f64,
    pub peak_prefix_gets_per_s: f64,
    /// Requests refused for throughput (every attempt counted).
    pub dynamodb_throttles: u64,
    pub s3_slowdowns: u64,
    /// Calls that failed after the SDK's last attempt; each failed its invocation.
    pub failed_calls: u64,
    /// The largest item written or asked for, and writes refused because an item would
    /// exceed 400 KB (`ValidationException`, not retried).
    pub max_item_bytes: u64,
    pub oversized_writes: u64,
    /// Time invocations spent waiting between attempts.
    pub retry_wait_s: f64,
    /// Units and requests served (what is billed).
    pub write_units: u64,
    pub read_units: u64,
    pub s3_puts: u64,
    pub s3_gets: u64,
    /// A keyed job in the spread layout: R, the expected keys, and the delta objects the
    /// merge reads.
    pub shuffle_partitions: u32,
    pub keys: u64,
    pub deltas: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    TableWrite,
    TableRead,
    PkWrite,
    PkRead,
    /// An item sharing its partition key with others (single-key shards).
    ItemWrite,
    PrefixPut,
    PrefixGet,
}

struct Resource {
    name: String,
    kind: Kind,
    /// A partition key holding one item: its peak is also that item's.
    single_item: bool,
    /// Units served per second, from the oldest second still open.
    used: BTreeMap<u64, f64>,
    peak: f64,
}

/// An on-demand table's capacity: its initial throughput, or double the highest second at
/// least 30 minutes old, whichever is more.
struct OnDemand {
    initial: f64,
    /// Closed seconds not yet 30 minutes old.
    recent: VecDeque<(u64, f64)>,
    matured_peak: f64,
}

impl OnDemand {
    fn new(initial: f64) -> Self {
        Self {
            initial,
            recent: VecDeque::new(),
            matured_peak: 0.0,
        }
    }

    fn limit(&self) -> f64 {
        self.initial.max(2.0 * self.matured_peak)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Service {
    #[default]
    DynamoDb,
    S3,
}

/// One request: units on each resource it touches.
type Parts = Vec<(usize, f64)>;

/// A call's end: when it was served, or when it gave up.
type Served = Result<f64, f64>;

/// One request of a stage invocation, made after `compute_s` of work (from the end of the
/// step before), and what follows when it is served.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub compute_s: f64,
    parts: Parts,
    service: Service,
    bill: Bill,
    /// From being served to the next step: the round trip, the transfer.
    pub after_s: f64,
    /// Partitions done once it is served (a commit's chunk; a map's partials).
    pub completes: u64,
    effect: Effect,
    /// Refused at once, not retried (an item over 400 KB).
    pub invalid: bool,
}

/// A stage invocation's steps, and how far it got.
#[derive(Debug, Default)]
pub struct Progress {
    steps: VecDeque<Step>,
    attempt: u32,
    tried_since: Option<f64>,
    /// Partitions done so far.
    pub done: u64,
}

impl Progress {
    pub fn new(steps: VecDeque<Step>) -> Self {
        Self {
            steps,
            ..Self::default()
        }
    }

    /// Whether it makes no calls (its work is compute only).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// When its first step is due, for an invocation starting at `t0`.
    pub fn first_at(&self, t0: f64) -> f64 {
        t0 + self.steps.front().map_or(0.0, |s| s.compute_s)
    }
}

/// What follows a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Next {
    /// The next step (or the same, again) at this time.
    Step(f64),
    /// The invocation's calls are done at this time.
    Done(f64),
    /// A call failed: the invocation fails at this time.
    Failed(f64),
}

/// What a step is billed as when served.
#[derive(Clone, Copy, Debug, Default)]
struct Bill {
    write_units: f64,
    read_units: f64,
    puts: u64,
    gets: u64,
}

/// What a served step changes in the job's ledger.
#[derive(Clone, Copy, Debug, Default)]
enum Effect {
    #[default]
    None,
    Fold {
        shard: usize,
        partitions: u64,
    },
    Delta {
        count: u64,
        entries: f64,
    },
}

/// Expected distinct keys among `n` words drawn from a Zipf distribution (exponent 1) over
/// `keys` keys: Σₖ 1 − e^(−n pₖ), exact for the 1,000 most frequent keys and over 1 %-wide
/// bands above.
struct Vocabulary {
    keys: f64,
    harmonic: f64,
}

impl Vocabulary {
    fn new(keys: u64) -> Self {
        let keys = keys.max(1) as f64;
        // H(K) ≈ ln K + γ + 1/(2K), exact enough beyond the first terms.
        let harmonic = keys.ln() + 0.577_215_664_9 + 0.5 / keys;
        Self { keys, harmonic }
    }

    fn distinct(&self, words: f64) -> f64 {
        if words <= 0.0 {
            return 0.0;
        }
        let seen = |k: f64| 1.0 - (-words / (k * self.harmonic)).exp();
        let exact = self.keys.min(1_000.0);
        let mut sum: f64 = (1..=exact as u64).map(|k| seen(k as f64)).sum();
        let mut lo = exact + 1.0;
        while lo <= self.keys {
            let hi = (lo * 1.01).ceil().min(self.keys + 1.0);
            sum += (hi - lo) * seen((lo + hi - 1.0) / 2.0);
            lo = hi;
        }
        sum.min(words)
    }
}

/// One job attempt's ledger and shuffle.
struct Job {
    run_w: usize,
    run_r: usize,
    /// Single-key: the 8 shards as items; spread: the 8 aggregate shards' partition keys.
    shards_w: Vec<usize>,
    shards_r: Vec<usize>,
    markers: Vec<usize>,
    deltas_pk: Vec<usize>,
    merge_pk: usize,
    /// Map objects, combined deltas, merged parts: their S3 prefixes (puts, gets).
    map_prefixes: Vec<(usize, usize)>,
    delta_prefixes: Vec<(usize, usize)>,
    part_prefix: (usize, usize),
    result_prefix: usize,
    /// Words per input partition.
    words: f64,
    /// Single-key: partitions folded into each shard.
    folded: Vec<u64>,
    commits: u64,
    /// Delta objects (combined, or partials referenced as they are) and their entries.
    deltas: u64,
    delta_entries: f64,
    messages: u64,
}

/// DynamoDB and S3 throughput for every job of a scenario.
pub struct Store {
    spec: StoreSpec,
    resources: Vec<Resource>,
    tables: [OnDemand; 2],
    table_w: usize,
    table_r: usize,
    vocabulary: Option<Vocabulary>,
    jobs: Vec<Job>,
    report: StoreReport,
    now_s: u64,
}

impl Store {
    pub fn new(spec: StoreSpec) -> Self {
        let vocabulary = spec.keyed.map(|k| Vocabulary::new(k.vocabulary));
        let mut store = Self {
            tables: [
                OnDemand::new(spec.table_write_units),
                OnDemand::new(model::TABLE_INITIAL_READ_UNITS_PER_S),
            ],
            resources: Vec::new(),
            table_w: 0,
            table_r: 1,
            vocabulary,
            jobs: Vec::new(),
            report: StoreReport {
                layout: spec.layout.to_string(),
                keyed: spec.keyed.is_some(),
                ..StoreReport::default()
            },
            spec,
            now_s: 0,
        };
        store.table_w = store.resource("table", Kind::TableWrite, false);
        store.table_r = store.resource("table", Kind::TableRead, false);
        store
    }

    fn resource(&mut self, name: &str, kind: Kind, single_item: bool) -> usize {
        self.resources.push(Resource {
            name: name.to_owned(),
            kind,
            single_item,
            used: BTreeMap::new(),
            peak: 0.0,
        });
        self.resources.len() - 1
    }

    fn keyed_spread(&self) -> bool {
        self.spec.keyed.is_some() && self.spec.layout == Layout::Spread
    }

    /// R: the reduce (shuffle) partitions the plan chooses from the expected keys.
    pub fn shuffle_partitions(&self) -> Option<u32> {
        let keyed = self.spec.keyed.filter(|_| self.keyed_spread())?;
        Some(
            keyed
                .vocabulary
                .div_ceil(model::KEYS_PER_SHUFFLE_PARTITION)
                .clamp(
                    u64::from(model::MIN_SHUFFLE_PARTITIONS),
                    u64::from(model::MAX_SHUFFLE_PARTITIONS),
                ) as u32,
        )
    }

    /// A job attempt of `messages` in partitions of `partition_size`; returns its index.
    pub fn add_job(&mut self, name: &str, messages: u64, partition_size: u64) -> usize {
        let single = self.spec.layout == Layout::SingleKey;
        let run = format!("{name} run#…");
        let run_w = self.resource(&run, Kind::PkWrite, false);
        let run_r = self.resource(&run, Kind::PkRead, false);
        let (mut shards_w, mut shards_r, mut markers, mut deltas_pk) =
            (vec![], vec![], vec![], vec![]);
        for s in 0..model::AGGREGATE_SHARDS {
            if single {
                shards_w.push(self.resource(
                    &format!("{name} run#… agg#{s}"),
                    Kind::ItemWrite,
                    false,
                ));
                shards_r.push(run_r);
            } else {
                let pk = format!("{name} run#…#a{s}");
                shards_w.push(self.resource(&pk, Kind::PkWrite, true));
                shards_r.push(self.resource(&pk, Kind::PkRead, false));
            }
        }
        if !single {
            for p in 0..model::MARKER_KEYS {
                markers.push(self.resource(&format!("{name} run#…#p{p}"), Kind::PkWrite, false));
            }
            for d in 0..model::DELTA_KEYS {
                deltas_pk.push(self.resource(&format!("{name} run#…#d{d}"), Kind::PkWrite, false));
            }
        }
        let merge_pk = self.resource(&format!("{name} run#…#m"), Kind::PkWrite, false);
        let prefixes = |store: &mut Self, what: &str, n: u32| -> Vec<(usize, usize)> {
            (0..n.max(1))
                .map(|i| {
                    let p = format!("{name} shuffle/…/{what}/{i}");
                    (
                        store.resource(&p, Kind::PrefixPut, false),
                        store.resource(&p, Kind::PrefixGet, false),
                    )
                })
                .collect()
        };
        let n = self.spec.s3_prefixes;
        let map_prefixes = prefixes(self, "p", n);
        let delta_prefixes = prefixes(self, "d", n);
        let part_prefix = prefixes(self, "m", 1)[0];
        let result_prefix = self.resource(&format!("{name} results/…"), Kind::PrefixPut, false);
        let words = partition_size as f64 * self.spec.keyed.map_or(0.0, |k| k.words_per_message);
        self.jobs.push(Job {
            run_w,
            run_r,
            shards_w,
            shards_r,
            markers,
            deltas_pk,
            merge_pk,
            map_prefixes,
            delta_prefixes,
            part_prefix,
            result_prefix,
            words,
            folded: vec![0; model::AGGREGATE_SHARDS as usize],
            commits: 0,
            deltas: 0,
            delta_entries: 0.0,
            messages,
        });
        self.jobs.len() - 1
    }

    fn limit(&self, r: usize) -> f64 {
        match self.resources[r].kind {
            Kind::TableWrite => self.tables[0].limit(),
            Kind::TableRead => self.tables[1].limit(),
            Kind::PkWrite => model::PARTITION_WRITE_UNITS_PER_S,
            Kind::PkRead => model::PARTITION_READ_UNITS_PER_S,
            Kind::ItemWrite => model::ITEM_WRITE_UNITS_PER_S,
            Kind::PrefixPut => model::S3_PUTS_PER_PREFIX_S,
            Kind::PrefixGet => model::S3_GETS_PER_PREFIX_S,
        }
    }

    /// Moves the clock: seconds before `now` are closed (no request is issued before the
    /// invocation that makes it starts), and the tables' peaks older than 30 minutes count
    /// towards their capacity.
    pub fn advance(&mut self, now: f64) {
        let s = now.max(0.0) as u64;
        if s <= self.now_s {
            return;
        }
        self.now_s = s;
        for (t, r) in [(0, self.table_w), (1, self.table_r)] {
            while let Some((&sec, &units)) = self.resources[r].used.first_key_value() {
                if sec >= s {
                    break;
                }
                self.resources[r].used.pop_first();
                self.tables[t].recent.push_back((sec, units));
            }
            let table = &mut self.tables[t];
            while let Some(&(sec, units)) = table.recent.front() {
                if (sec as f64) + model::TABLE_DOUBLING_S > s as f64 {
                    break;
                }
                table.matured_peak = table.matured_peak.max(units);
                table.recent.pop_front();
            }
        }
    }

    /// Admits `parts` in the second of `t` if every resource has room.
    fn try_admit(&mut self, t: f64, parts: &[(usize, f64)]) -> bool {
        let s = (t.max(0.0) as u64).max(self.now_s);
        for &(r, units) in parts {
            let res = &mut self.resources[r];
            if !matches!(res.kind, Kind::TableWrite | Kind::TableRead) {
                while res
                    .used
                    .first_key_value()
                    .is_some_and(|(k, _)| *k < self.now_s)
                {
                    res.used.pop_first();
                }
            }
            let used = res.used.get(&s).copied().unwrap_or(0.0);
            if used + units > self.limit(r) + 1e-9 {
                return false;
            }
        }
        for &(r, units) in parts {
            let res = &mut self.resources[r];
            let used = res.used.entry(s).or_insert(0.0);
            *used += units;
            res.peak = res.peak.max(*used);
        }
        true
    }

    /// One call at `t`, retried with the SDK's backoff while throttled (the daemon's few
    /// calls; stage invocations go step by step: [`Store::attempt`]).
    fn call(&mut self, t: f64, parts: &[(usize, f64)], service: Service) -> Served {
        let mut at = t;
        for attempt in 1..=model::MAX_ATTEMPTS {
            if self.try_admit(at, parts) {
                self.report.retry_wait_s += at - t;
                return Ok(at);
            }
            self.throttled(service);
            if attempt < model::MAX_ATTEMPTS {
                at += model::backoff_s(attempt);
            }
        }
        self.gave_up(at - t);
        Err(at)
    }

    fn throttled(&mut self, service: Service) {
        match service {
            Service::DynamoDb => self.report.dynamodb_throttles += 1,
            Service::S3 => self.report.s3_slowdowns += 1,
        }
    }

    /// A call that failed after its last attempt, having waited `waited_s`.
    pub fn gave_up(&mut self, waited_s: f64) {
        self.report.failed_calls += 1;
        self.report.retry_wait_s += waited_s;
    }

    /// An item of `bytes`: counted for the report; `false` if DynamoDB refuses it.
    fn item(&mut self, bytes: f64) -> bool {
        let bytes = bytes.ceil() as u64;
        self.report.max_item_bytes = self.report.max_item_bytes.max(bytes);
        if bytes > model::ITEM_LIMIT_BYTES {
            self.report.oversized_writes += 1;
            return false;
        }
        true
    }

    /// `n` S3 requests of `bytes` each on one prefix, 16 at a time (the daemon's).
    fn s3_many(&mut self, n: u64, bytes: f64, t0: f64, prefix: usize, put: bool) -> Served {
        let mut t = t0;
        let mut left = n;
        while left > 0 {
            let k = left.min(model::S3_IN_FLIGHT as u64);
            t = self.call(t, &[(prefix, k as f64)], Service::S3)?;
            if put {
                self.report.s3_puts += k;
            } else {
                self.report.s3_gets += k;
            }
            t += model::S3_MS / 1e3 + bytes / model::S3_BYTES_PER_S;
            left -= k;
        }
        Ok(t)
    }

    /// Runs the invocation's next step at `t`: served, it leads to the next (or the end);
    /// throttled, it is tried again after the SDK's backoff, until its attempts are spent.
    pub fn step(&mut self, j: usize, p: &mut Progress, t: f64) -> Next {
        let Some(step) = p.steps.front() else {
            return Next::Done(t);
        };
        if step.invalid {
            self.report.failed_calls += 1;
            return Next::Failed(t + model::DYNAMODB_MS / 1e3);
        }
        let since = *p.tried_since.get_or_insert(t);
        if self.attempt(j, step, t) {
            self.report.retry_wait_s += t - since;
            p.done += step.completes;
            let after = step.after_s;
            p.steps.pop_front();
            p.attempt = 0;
            p.tried_since = None;
            return match p.steps.front() {
                Some(next) => Next::Step(t + after + next.compute_s),
                None => Next::Done(t + after),
            };
        }
        p.attempt += 1;
        if p.attempt >= model::MAX_ATTEMPTS {
            self.gave_up(t - since);
            Next::Failed(t)
        } else {
            Next::Step(t + model::backoff_s(p.attempt))
        }
    }

    /// Tries `step` at `t`: `true` if served (billed, its effect applied), `false` if
    /// throttled.
    fn attempt(&mut self, j: usize, step: &Step, t: f64) -> bool {
        self.advance(t);
        if step.parts.is_empty() {
            return true;
        }
        if !self.try_admit(t, &step.parts) {
            self.throttled(step.service);
            return false;
        }
        let bill = &step.bill;
        self.report.write_units += bill.write_units.round() as u64;
        self.report.read_units += bill.read_units.round() as u64;
        self.report.s3_puts += bill.puts;
        self.report.s3_gets += bill.gets;
        let job = &mut self.jobs[j];
        match step.effect {
            Effect::None => {}
            Effect::Fold { shard, partitions } => job.folded[shard] += partitions,
            Effect::Delta { count, entries } => {
                job.deltas += count;
                job.delta_entries += entries;
            }
        }
        true
    }

    /// S3 requests on `prefix` in groups of [`model::S3_IN_FLIGHT`], each group after
    /// `compute_s(k)` for its `k` requests.
    fn s3_steps(
        &self,
        steps: &mut VecDeque<Step>,
        n: u64,
        bytes: f64,
        prefix: impl Fn(u64) -> usize,
        put: bool,
        compute_s: impl Fn(u64) -> f64,
    ) {
        let mut first = 0;
        while first < n {
            let k = (n - first).min(model::S3_IN_FLIGHT as u64);
            steps.push_back(Step {
                compute_s: compute_s(k),
                parts: vec![(prefix(first), k as f64)],
                service: Service::S3,
                bill: Bill {
                    puts: if put { k } else { 0 },
                    gets: if put { 0 } else { k },
                    ..Bill::default()
                },
                after_s: model::S3_MS / 1e3 + bytes / model::S3_BYTES_PER_S,
                ..Step::default()
            });
            first += k;
        }
    }

    /// A DynamoDB read of `read_bytes` on `read_pk`, then a write of `units` per resource
    /// (a transaction's items at twice the units), as one step.
    fn commit_step(&self, read_pk: usize, read_bytes: f64, units: Parts) -> Step {
        let read = (read_bytes / 4_096.0).ceil().max(1.0);
        let written: f64 = units.iter().map(|(_, u)| u).sum();
        let mut parts = units;
        parts.push((self.table_w, written));
        parts.push((read_pk, read));
        parts.push((self.table_r, read));
        Step {
            parts,
            service: Service::DynamoDb,
            bill: Bill {
                write_units: written,
                read_units: read,
                ..Bill::default()
            },
            after_s: 2.0 * model::DYNAMODB_MS / 1e3,
            ..Step::default()
        }
    }

    /// Bytes of one input partition's keyed partial, and its entries.
    fn partial(&self, j: usize) -> (f64, f64) {
        let entries = self
            .vocabulary
            .as_ref()
            .map_or(0.0, |v| v.distinct(self.jobs[j].words));
        (entries * model::BYTES_PER_KEY, entries)
    }

    /// The map side of a keyed job in the spread layout: each partial is written to S3 once
    /// computed (`compute_s` for them all). Empty for any other job.
    pub fn plan_map(&mut self, j: usize, partitions: u64, compute_s: f64) -> VecDeque<Step> {
        let mut steps = VecDeque::new();
        if !self.keyed_spread() || partitions == 0 {
            return steps;
        }
        let (bytes, _) = self.partial(j);
        let each = compute_s / partitions as f64;
        let prefixes = self.jobs[j].map_prefixes.clone();
        let seq = self.jobs[j].commits;
        self.jobs[j].commits += partitions;
        self.s3_steps(
            &mut steps,
            partitions,
            bytes,
            |i| {
                prefixes[((seq + i) / model::S3_IN_FLIGHT as u64 % prefixes.len() as u64) as usize]
                    .0
            },
            true,
            |k| k as f64 * each,
        );
        if let Some(last) = steps.back_mut() {
            last.completes = partitions;
        }
        steps
    }

    /// A reduce invocation of `partitions` partials: its commits in order, each after its
    /// share of `compute_s`.
    pub fn plan_reduce(&mut self, j: usize, partitions: u64, compute_s: f64) -> VecDeque<Step> {
        let chunk = match self.spec.layout {
            Layout::SingleKey => model::SINGLE_KEY_CHUNK,
            Layout::Spread => model::SPREAD_CHUNK,
        };
        let each = compute_s / partitions.max(1) as f64;
        let mut steps = VecDeque::new();
        let mut planned = 0;
        while planned < partitions {
            let n = chunk.min(partitions - planned);
            let first = steps.len();
            match self.spec.layout {
                Layout::SingleKey => self.plan_single_key(&mut steps, j, n),
                Layout::Spread => self.plan_spread(&mut steps, j, n),
            }
            if let Some(step) = steps.get_mut(first) {
                step.compute_s += n as f64 * each;
            }
            if let Some(last) = steps.back_mut() {
                last.completes = n;
            }
            planned += n;
        }
        steps
    }

    /// Single key: read a shard, write it back with `n` markers, all under one key.
    fn plan_single_key(&mut self, steps: &mut VecDeque<Step>, j: usize, n: u64) {
        let shards = u64::from(model::AGGREGATE_SHARDS);
        let s = (self.jobs[j].commits % shards) as usize;
        self.jobs[j].commits += 1;
        let words = self.jobs[j].words;
        let folded = self.jobs[j].folded[s];
        let shard_bytes = |partitions: u64| match &self.vocabulary {
            Some(v) => {
                model::SHARD_BASE_BYTES
                    + v.distinct(partitions as f64 * words) * model::BYTES_PER_KEY
            }
            None => model::SHARD_BASE_BYTES,
        };
        let (before, after) = (shard_bytes(folded), shard_bytes(folded + n));
        let (run_w, run_r, item) = (
            self.jobs[j].run_w,
            self.jobs[j].run_r,
            self.jobs[j].shards_w[s],
        );
        self.item(model::MARKER_BYTES);
        let valid = self.item(after);
        let tx = model::TRANSACTION_UNITS_PER_ITEM;
        let shard_units = tx * write_units(after);
        let markers = tx * n as f64 * write_units(model::MARKER_BYTES);
        let mut step = self.commit_step(
            run_r,
            before,
            vec![(run_w, markers + shard_units), (item, shard_units)],
        );
        step.effect = Effect::Fold {
            shard: s,
            partitions: n,
        };
        // DynamoDB refuses an item over 400 KB (ValidationException, not retried).
        step.invalid = !valid;
        steps.push_back(step);
    }

    /// Spread: for a keyed job the chunk's partials through S3; then `n` markers over
    /// their keys, one aggregate shard and a delta record, in one transaction.
    fn plan_spread(&mut self, steps: &mut VecDeque<Step>, j: usize, n: u64) {
        let seq = self.jobs[j].commits;
        self.jobs[j].commits += 1;
        let tx = model::TRANSACTION_UNITS_PER_ITEM;
        let mut delta_records = 0u64;
        let mut effect = Effect::None;
        if self.spec.keyed.is_some() {
            let (bytes, entries) = self.partial(j);
            if bytes <= model::SMALL_PARTIAL_BYTES {
                // Small partials: read each, combine, write one delta object.
                let prefixes = self.jobs[j].map_prefixes.clone();
                self.s3_steps(
                    steps,
                    n,
                    bytes,
                    |i| prefixes[((seq * n + i) % prefixes.len() as u64) as usize].1,
                    false,
                    |_| 0.0,
                );
                let combined = self
                    .vocabulary
                    .as_ref()
                    .map_or(0.0, |v| v.distinct(n as f64 * self.jobs[j].words));
                let deltas = &self.jobs[j].delta_prefixes;
                let prefix = deltas[(seq % deltas.len() as u64) as usize].0;
                let combine_s = n as f64 * entries * model::NS_PER_ENTRY / 1e9;
                self.s3_steps(
                    steps,
                    1,
                    combined * model::BYTES_PER_KEY,
                    |_| prefix,
                    true,
                    |_| combine_s,
                );
                effect = Effect::Delta {
                    count: 1,
                    entries: combined,
                };
                delta_records = 1;
            } else {
                // Large partials are referenced as they are.
                effect = Effect::Delta {
                    count: n,
                    entries: n as f64 * entries,
                };
                delta_records = n;
            }
        }
        let s = (seq % u64::from(model::AGGREGATE_SHARDS)) as usize;
        let (shard_w, shard_r) = (self.jobs[j].shards_w[s], self.jobs[j].shards_r[s]);
        let mut units: Parts = Vec::new();
        let keys = self.jobs[j].markers.len() as u64;
        // The chunk's partitions are consecutive: its markers fall on consecutive keys.
        for k in 0..n.min(keys) {
            let on_key = (n - k).div_ceil(keys);
            let pk = self.jobs[j].markers[((seq * n + k) % keys) as usize];
            units.push((pk, tx * on_key as f64 * write_units(model::MARKER_BYTES)));
        }
        units.push((shard_w, tx * write_units(model::SHARD_BASE_BYTES)));
        let record_bytes =
            model::DELTA_RECORD_BYTES + 8.0 * f64::from(self.shuffle_partitions().unwrap_or(0) + 1);
        let delta_keys = self.jobs[j].deltas_pk.len() as u64;
        for d in 0..delta_records.min(delta_keys) {
            let on_key = (delta_records - d).div_ceil(delta_keys);
            let pk = self.jobs[j].deltas_pk[((seq + d) % delta_keys) as usize];
            units.push((pk, tx * on_key as f64 * write_units(record_bytes)));
        }
        self.item(model::MARKER_BYTES);
        self.item(model::SHARD_BASE_BYTES);
        if delta_records > 0 {
            self.item(record_bytes);
        }
        let mut step = self.commit_step(shard_r, model::SHARD_BASE_BYTES, units);
        step.effect = effect;
        steps.push_back(step);
    }

    /// One merge task of a keyed job (spread): the manifest, segment `r` of every delta
    /// (ranged GETs), combine, two sorted parts, the merge marker.
    pub fn plan_merge(&mut self, j: usize) -> VecDeque<Step> {
        let r = f64::from(self.shuffle_partitions().unwrap_or(1));
        let job = &self.jobs[j];
        let (deltas, entries) = (job.deltas, job.delta_entries);
        let delta_prefixes = job.delta_prefixes.clone();
        let (part_put, _) = job.part_prefix;
        let merge_pk = job.merge_pk;
        let keys = self.expected_keys(j) / r;
        let mut steps = VecDeque::new();
        let manifest = MANIFEST_BYTES_PER_DELTA * deltas as f64;
        self.s3_steps(
            &mut steps,
            1,
            manifest,
            |_| delta_prefixes[0].1,
            false,
            |_| 0.0,
        );
        let segment = entries / deltas.max(1) as f64 / r * model::BYTES_PER_KEY;
        self.s3_steps(
            &mut steps,
            deltas,
            segment,
            |i| delta_prefixes[(i % delta_prefixes.len() as u64) as usize].1,
            false,
            |_| 0.0,
        );
        let combine_s = entries / r * model::NS_PER_ENTRY / 1e9;
        self.s3_steps(
            &mut steps,
            2,
            keys * model::BYTES_PER_KEY,
            |_| part_put,
            true,
            |_| combine_s,
        );
        self.item(model::MERGE_MARKER_BYTES);
        let units = write_units(model::MERGE_MARKER_BYTES);
        // A conditional put, no read before it.
        steps.push_back(Step {
            parts: vec![(merge_pk, units), (self.table_w, units)],
            bill: Bill {
                write_units: units,
                ..Bill::default()
            },
            after_s: model::DYNAMODB_MS / 1e3,
            completes: 1,
            ..Step::default()
        });
        steps
    }

    /// The daemon's part of a keyed job's end (spread): the manifest before the merge
    /// (`before_merge`), or the k-way merge of the R parts into the two result objects.
    /// Returns the seconds it takes (the daemon's calls are not throttled here: a handful).
    pub fn daemon_step(&mut self, j: usize, t0: f64, before_merge: bool) -> f64 {
        self.advance(t0);
        if !self.keyed_spread() {
            return 0.0;
        }
        let r = self.shuffle_partitions().unwrap_or(1);
        let keys = self.expected_keys(j);
        let (part_get, result_put) = (self.jobs[j].part_prefix.1, self.jobs[j].result_prefix);
        let manifest_put = self.jobs[j].delta_prefixes[0].0;
        let manifest = MANIFEST_BYTES_PER_DELTA * self.jobs[j].deltas as f64;
        let served = if before_merge {
            self.s3_many(1, manifest, t0, manifest_put, true)
        } else {
            let bytes = keys / f64::from(r) * model::BYTES_PER_KEY;
            self.s3_many(2 * u64::from(r), bytes, t0, part_get, false)
                .and_then(|t| {
                    let t = t + keys * model::NS_PER_ENTRY / 1e9;
                    self.s3_many(2, keys * model::BYTES_PER_KEY, t, result_put, true)
                })
        };
        match served {
            Ok(end) | Err(end) => end - t0,
        }
    }

    /// Keys a keyed job's words fall on, as expected from its size.
    fn expected_keys(&self, j: usize) -> f64 {
        let words =
            self.jobs[j].messages as f64 * self.spec.keyed.map_or(0.0, |k| k.words_per_message);
        self.vocabulary.as_ref().map_or(0.0, |v| v.distinct(words))
    }

    pub fn report(&self) -> StoreReport {
        let mut report = self.report.clone();
        for r in &self.resources {
            let (peak, name) = match r.kind {
                Kind::PkWrite => (
                    &mut report.peak_pk_write_units_per_s,
                    Some(&mut report.peak_pk),
                ),
                Kind::PkRead => (&mut report.peak_pk_read_units_per_s, None),
                Kind::TableWrite => (&mut report.peak_table_write_units_per_s, None),
                Kind::ItemWrite => (
                    &mut report.peak_item_write_units_per_s,
                    Some(&mut report.peak_item),
                ),
                Kind::PrefixPut => (&mut report.peak_prefix_puts_per_s, None),
                Kind::PrefixGet => (&mut report.peak_prefix_gets_per_s, None),
                Kind::TableRead => continue,
            };
            if r.peak > *peak {
                *peak = r.peak;
                if let Some(name) = name {
                    *name = r.name.clone();
                }
            }
            if r.single_item && r.peak > report.peak_item_write_units_per_s {
                report.peak_item_write_units_per_s = r.peak;
                report.peak_item = r.name.clone();
            }
        }
        if let Some(r) = self.shuffle_partitions() {
            report.shuffle_partitions = r;
            report.keys = (0..self.jobs.len())
                .map(|j| self.expected_keys(j).round() as u64)
                .max()
                .unwrap_or(0);
            report.deltas = self.jobs.iter().map(|j| j.deltas).sum();
        }
        report
    }
}

/// A manifest lists each delta object: its key and offsets.
const MANIFEST_BYTES_PER_DELTA: f64 = 64.0;

/// Write units of one write of an item of `bytes` (1 KB each, rounded up).
fn write_units(bytes: f64) -> f64 {
    (bytes / 1_024.0).ceil().max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(layout: Layout, keyed: Option<Keyed>) -> StoreSpec {
        StoreSpec {
            layout,
            keyed,
            ..StoreSpec::default()
        }
    }

    const WORDS: Keyed = Keyed {
        vocabulary: 1_000_000,
        words_per_message: 10.0,
    };

    /// Runs one invocation's steps from `t0` on its own: (end, partitions done, failed).
    fn run(store: &mut Store, j: usize, t0: f64, steps: VecDeque<Step>) -> (f64, u64, bool) {
        let mut p = Progress::new(steps);
        let mut t = p.first_at(t0);
        loop {
            match store.step(j, &mut p, t) {
                Next::Step(at) => t = at,
                Next::Done(at) => return (at, p.done, false),
                Next::Failed(at) => return (at, p.done, true),
            }
        }
    }

    /// Runs invocations that all start at `t0`, their steps interleaved in time order as
    /// the simulation runs them: each one's end.
    fn run_together(store: &mut Store, j: usize, t0: f64, all: Vec<VecDeque<Step>>) -> Vec<f64> {
        let mut running: Vec<Progress> = all.into_iter().map(Progress::new).collect();
        let mut ends = vec![f64::NAN; running.len()];
        let mut due: Vec<(f64, usize)> = (0..running.len())
            .map(|i| (running[i].first_at(t0), i))
            .collect();
        while !due.is_empty() {
            due.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
            let Some((t, i)) = due.pop() else { break };
            match store.step(j, &mut running[i], t) {
                Next::Step(at) => due.push((at, i)),
                Next::Done(at) | Next::Failed(at) => ends[i] = at,
            }
        }
        ends
    }

    fn reduce(store: &mut Store, j: usize, t0: f64, partitions: u64) -> (f64, u64, bool) {
        let steps = store.plan_reduce(j, partitions, 0.0);
        run(store, j, t0, steps)
    }

    #[test]
    fn distinct_words_follow_zipf() {
        let v = Vocabulary::new(1_000_000);
        // Few words: nearly all distinct; very many: nearly the whole vocabulary.
        assert!((v.distinct(10.0) - 10.0).abs() < 2.0);
        assert!(v.distinct(1e10) > 990_000.0);
        // Σ 1 − e^(−n pₖ) summed term by term over 10^6 keys gives 5,345.97.
        let small = v.distinct(10_000.0);
        assert!((small - 5_345.97).abs() < 5.0, "{small}");
        // More words, more distinct keys, never more than words.
        assert!(v.distinct(20_000.0) > small);
        assert!(v.distinct(5.0) <= 5.0);
    }

    #[test]
    fn one_partition_key_serves_its_limit_and_throttles_the_rest() {
        let mut store = Store::new(spec(Layout::SingleKey, None));
        let j = store.add_job("j", 1_000_000, 1_000);
        // Commits of 99 partitions, 200 units each on one key, made in the same second.
        let commits = (0..8).map(|_| store.plan_reduce(j, 99, 0.0)).collect();
        let ends = run_together(&mut store, j, 0.0, commits);
        let r = store.report();
        assert!(r.peak_pk_write_units_per_s <= 1_000.0, "{r:?}");
        assert!(r.peak_pk_write_units_per_s >= 990.0, "{r:?}");
        assert!(r.dynamodb_throttles > 0);
        assert!(r.retry_wait_s > 0.0);
        assert_eq!(r.failed_calls, 0);
        // Five commits go at once; the others wait for the next second.
        assert_eq!(ends.iter().filter(|t| **t < 0.1).count(), 5, "{ends:?}");
        assert_eq!(ends.iter().filter(|t| **t > 1.0).count(), 3, "{ends:?}");
    }

    #[test]
    fn spread_keys_take_what_one_key_cannot() {
        let time = |layout| {
            let mut store = Store::new(spec(layout, None));
            let j = store.add_job("j", 1_000_000, 1_000);
            let (end, done, failed) = reduce(&mut store, j, 0.0, 1_960);
            assert_eq!((done, failed), (1_960, false));
            (end, store.report())
        };
        // 1,960 partitions: about 4,000 units, 4 s on one key; 32 keys fit the table's
        // 4,000 a second.
        let (single, rs) = time(Layout::SingleKey);
        let (spread, rp) = time(Layout::Spread);
        assert!(single > 3.0, "{single} {rs:?}");
        assert!(spread < 1.5, "{spread} {rp:?}");
        assert!(rp.peak_pk_write_units_per_s < 300.0, "{rp:?}");
        assert!(rp.peak_table_write_units_per_s <= 4_000.0);
        assert_eq!(rs.max_item_bytes, model::SHARD_BASE_BYTES as u64);
    }

    #[test]
    fn the_on_demand_table_doubles_its_peak_after_half_an_hour() {
        let mut store = Store::new(spec(Layout::Spread, None));
        let j = store.add_job("j", 1_000_000_000, 1_000);
        assert_eq!(store.tables[0].limit(), 4_000.0);
        // Busy at its limit within one second, then 30 minutes later.
        for _ in 0..60 {
            reduce(&mut store, j, 10.0, 49);
        }
        store.advance(11.0);
        assert_eq!(store.tables[0].limit(), 4_000.0);
        store.advance(10.0 + model::TABLE_DOUBLING_S + 1.0);
        assert!(
            store.tables[0].limit() > 7_900.0,
            "{}",
            store.tables[0].limit()
        );
    }

    #[test]
    fn a_single_key_aggregate_per_word_outgrows_the_item_limit() {
        let mut store = Store::new(spec(Layout::SingleKey, Some(WORDS)));
        let j = store.add_job("j", 1_000_000_000, 1_000);
        let failed_at = (0..200).find(|i| reduce(&mut store, j, f64::from(*i), 99).2);
        let r = store.report();
        assert!(failed_at.is_some(), "{r:?}");
        assert!(r.oversized_writes > 0);
        assert!(r.max_item_bytes > model::ITEM_LIMIT_BYTES);
    }

    #[test]
    fn a_spread_keyed_job_keeps_items_small_and_goes_through_s3() {
        let mut store = Store::new(spec(Layout::Spread, Some(WORDS)));
        let j = store.add_job("j", 1_000_000, 1_000);
        assert_eq!(store.shuffle_partitions(), Some(4));
        let steps = store.plan_map(j, 100, 0.5);
        let (map_end, done, failed) = run(&mut store, j, 0.0, steps);
        assert_eq!((done, failed), (100, false));
        let (reduce_end, done, failed) = reduce(&mut store, j, map_end, 100);
        assert_eq!((done, failed), (100, false));
        let steps = store.plan_merge(j);
        let (_, done, failed) = run(&mut store, j, reduce_end, steps);
        assert_eq!((done, failed), (1, false));
        let r = store.report();
        assert!(r.max_item_bytes < 2_048, "{r:?}");
        // 100 map PUTs + 3 delta PUTs + 2 parts; 100 partial GETs + manifest + 3 segments.
        assert_eq!(r.s3_puts, 105, "{r:?}");
        assert_eq!(r.s3_gets, 104, "{r:?}");
        assert_eq!(r.deltas, 3);
        assert_eq!(r.dynamodb_throttles + r.s3_slowdowns, 0);
    }

    #[test]
    fn s3_slows_down_above_a_prefix_rate_and_more_prefixes_take_more() {
        let slowdowns = |prefixes| {
            let mut store = Store::new(StoreSpec {
                s3_prefixes: prefixes,
                ..spec(Layout::Spread, Some(WORDS))
            });
            let j = store.add_job("j", 1_000_000_000, 1_000);
            // 300 groups of 16 PUTs in the same second: 4,800 on one prefix.
            for _ in 0..300 {
                let steps = store.plan_map(j, 16, 0.0);
                run(&mut store, j, 0.0, steps);
            }
            store.report()
        };
        let one = slowdowns(1);
        assert!(one.s3_slowdowns > 0, "{one:?}");
        assert!(one.peak_prefix_puts_per_s <= model::S3_PUTS_PER_PREFIX_S);
        let four = slowdowns(4);
        assert_eq!(four.s3_slowdowns, 0, "{four:?}");
    }

    #[test]
    fn a_call_that_stays_throttled_gives_up_after_the_sdks_attempts() {
        let mut store = Store::new(spec(Layout::SingleKey, None));
        let j = store.add_job("j", 1_000_000, 1_000);
        // Fill the key for the next minute (5 commits of 200 units a second), then one
        // more commit.
        for second in 0..60 {
            assert!(!reduce(&mut store, j, f64::from(second), 495).2);
        }
        let (end, done, failed) = reduce(&mut store, j, 0.0, 99);
        assert!(failed && done == 0, "{end} {done}");
        let r = store.report();
        assert!(r.failed_calls >= 1);
        // 7 waits of 0.05 s doubling to 3.2 s.
        assert!((end - 6.35).abs() < 0.01, "{end}");
    }
}
