//! Scaling policies: pure functions from a tick's observation to each stage's levers.
//!
//! - `always-one` and `static-proportional:M` are the paper's policies: concurrency fixed
//!   from the job's size, batches from its partition count.
//! - `backlog` reads the queues: each stage's remaining work and measured throughput give
//!   the concurrency that finishes in time, and the batch size that costs least at that
//!   concurrency (see [`backlog`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cost::price;
use crate::ports::{limits, MappingConfig, ProvisionedPollers, QueueCounts};

/// What the daemon saw this tick. Queue counts are approximate: hints, never the completion
/// signal.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The job's input size n (messages), as static policies use it.
    pub job_size: u64,
    pub total_partitions: Option<u64>,
    /// Partitions the ledger has reduced or dead-lettered so far.
    pub finished_partitions: u64,
    /// Seconds since the job started running.
    pub elapsed_s: f64,
    pub stages: Vec<StageObservation>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StageObservation {
    pub name: String,
    pub is_source: bool,
    pub counts: QueueCounts,
    /// Messages one invocation handles per second of billed time, from the invocation
    /// records (`None` until the stage has run, or where no records are kept).
    pub throughput: Option<f64>,
    /// The stage function's memory, for the cost of its time.
    pub memory_mb: u32,
}

impl StageObservation {
    /// Messages waiting in or held from this stage's queue.
    pub fn backlog(&self) -> u64 {
        self.counts.visible + self.counts.in_flight + self.counts.delayed
    }
}

/// One stage's levers: its mapping's settings and its function's reserved-concurrency need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Levers {
    pub batch_size: u32,
    pub batching_window_secs: u32,
    pub max_concurrency: u32,
    /// How much of the function's reserved concurrency this stage needs (`None`: none asked).
    pub reserved_concurrency: Option<u32>,
    /// Provisioned mode: the mapping keeps event pollers ready for `max_concurrency`
    /// ([`pollers_for`]) instead of setting MaximumConcurrency and ramping up from 5.
    #[serde(default)]
    pub provisioned: bool,
}

impl Levers {
    /// The mapping's settings; a stage granted no reserved concurrency (its job waits for
    /// admission) is disabled. A provisioned stage whose concurrency is too small for two
    /// pollers runs in the default mode.
    pub fn mapping_config(&self) -> MappingConfig {
        let pollers = if self.provisioned {
            pollers_for(self.max_concurrency)
        } else {
            None
        };
        MappingConfig {
            batch_size: self.batch_size,
            batching_window_secs: self.batching_window_secs,
            max_concurrency: pollers.is_none().then_some(self.max_concurrency),
            provisioned_pollers: pollers,
            enabled: self.reserved_concurrency != Some(0),
        }
    }
}

/// Pollers that run at most `max_concurrency` invocations at once (10 each, rounded down,
/// so the mapping never outruns a reservation of `max_concurrency`), all kept ready: no ramp
/// up to 2,000 invocations (200 pollers, the most MinimumPollers allows). `None` below the
/// least of 2 pollers.
pub fn pollers_for(max_concurrency: u32) -> Option<ProvisionedPollers> {
    let maximum = (max_concurrency / limits::INVOKES_PER_POLLER).min(limits::MAX_POLLERS);
    (maximum >= limits::MIN_POLLERS).then(|| ProvisionedPollers {
        minimum: maximum.min(limits::MAX_MINIMUM_POLLERS),
        maximum,
    })
}

/// How a stage's mappings scale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pollers {
    /// AWS's default scaling, capped by MaximumConcurrency: 5 concurrent batches at first,
    /// +5 a second.
    #[default]
    Standard,
    /// Provisioned mode wherever a stage needs at least 20 concurrent invocations (2
    /// pollers): ready at once, billed per poller-hour.
    Auto,
}

/// What a job asks of the `backlog` policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goal {
    /// Finish within this many seconds of starting, at the least cost that does.
    pub target_s: Option<u32>,
    /// Spend at most this much (micro-dollars) of Lambda on the remaining work.
    pub max_cost_microusd: Option<u64>,
    /// Whether the mappings may run in provisioned mode (`pollers=auto`).
    #[serde(default)]
    pub pollers: Pollers,
    /// The job table's write units a second to plan for (`table-wcu=N`; default
    /// [`assume::TABLE_WRITE_UNITS_PER_S`]).
    #[serde(default)]
    pub table_wcu: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Policy {
    /// The least concurrency per stage. The paper ran one Lambda per stage; an SQS mapping's
    /// MaximumConcurrency cannot go below 2, so this is 2.
    AlwaysOne,
    /// `ceil(n / m)` concurrent invocations per stage except the source (the paper's policy).
    StaticProportional(u32),
    /// Concurrency and batches from each stage's remaining work and measured throughput.
    Backlog(Goal),
}

/// `backlog` with no goal: the simulator shows it ahead of the paper's policies at every
/// size where there is work to scale (README, "Scaling on AWS"). The paper's
/// `static-proportional:150` and `always-one` stay selectable by name.
impl Default for Policy {
    fn default() -> Self {
        Self::Backlog(Goal::default())
    }
}

impl Policy {
    pub fn decide(&self, obs: &Observation) -> Vec<Levers> {
        match self {
            Self::Backlog(goal) => backlog(goal, obs),
            Self::AlwaysOne | Self::StaticProportional(_) => self.decide_static(obs),
        }
    }

    fn decide_static(&self, obs: &Observation) -> Vec<Levers> {
        obs.stages
            .iter()
            .map(|stage| {
                let concurrency = match (self, stage.is_source) {
                    (Self::StaticProportional(m), false) => {
                        let n = obs.job_size.div_ceil(u64::from(*m));
                        n.clamp(
                            u64::from(limits::MIN_MAX_CONCURRENCY),
                            u64::from(limits::MAX_MAX_CONCURRENCY),
                        ) as u32
                    }
                    _ => limits::MIN_MAX_CONCURRENCY,
                };
                if stage.is_source {
                    return source_levers(concurrency);
                }
                let (batch_size, batching_window_secs) =
                    batch_for(obs.total_partitions.unwrap_or(0), concurrency);
                Levers {
                    batch_size,
                    batching_window_secs,
                    max_concurrency: concurrency,
                    reserved_concurrency: None,
                    provisioned: false,
                }
            })
            .collect()
    }
}

/// A feed task emits many partitions: one task per invocation keeps the feeders busy in
/// parallel from the first tick.
fn source_levers(max_concurrency: u32) -> Levers {
    Levers {
        batch_size: 1,
        batching_window_secs: 0,
        max_concurrency,
        reserved_concurrency: None,
        provisioned: false,
    }
}

/// What `backlog` assumes where it has not measured. Each is a starting point that the
/// invocation records replace once a stage has run.
pub mod assume {
    /// Messages one invocation handles per billed second before any has run: 10 ms per
    /// partition, the order of a word-count partition of 100 lines plus its SQS calls.
    pub const THROUGHPUT: f64 = 100.0;
    /// The fixed time of one invocation beyond its messages: two SQS round trips
    /// (`cost::latency::SQS_MS`) for the send and the ESM's delete.
    pub const INVOCATION_OVERHEAD_S: f64 = 0.02;
    /// No stage is planned to drain faster than this: below it, more concurrency buys
    /// nothing against the pipeline's own latency (ticks, batching windows, cold starts).
    pub const MIN_HORIZON_S: f64 = 2.0;
    /// Batches each concurrent slot should run: more rounds stream work downstream sooner
    /// and shorten the tail; fewer, larger batches cost less.
    pub const ROUNDS: u64 = 4;
    /// The longest invocation planned, well inside the stage functions' timeout.
    pub const MAX_INVOCATION_S: f64 = 60.0;
    /// Work per slot at or below which the job is in its tail: batches of at most 10
    /// without a batching window, so the last messages never wait for a batch to fill.
    pub const TAIL_BATCH: u64 = crate::ports::limits::MAX_BATCH_SIZE_WITHOUT_WINDOW as u64;
    /// The job table's write units a second a plan may use: what a new on-demand table
    /// serves at once (AWS-FACTS.md; more after 30 minutes, or with warm throughput set
    /// ahead: `table-wcu=N`).
    pub const TABLE_WRITE_UNITS_PER_S: f64 = 4_000.0;
    /// The ledger's write units per partition: its marker at twice the units in its
    /// transaction, and a share of the aggregate shard and delta record written with every
    /// 49 (`notes/keyed-design.md`; `sim::model`).
    pub const WRITE_UNITS_PER_PARTITION: f64 = 2.1;
}

/// The `backlog` policy.
///
/// - **Work.** A stage still has to handle every unfinished partition that is not already
///   queued past it: `W = remaining − Σ backlog of later stages`.
/// - **Time.** With a target, the horizon is what is left of it. Without one, it is twice
///   the fastest possible drain (every stage at MaximumConcurrency 1,000, ramping up as
///   AWS's pollers do), never under [`assume::MIN_HORIZON_S`]: the least cost within 2×
///   the fastest time.
/// - **Concurrency** is the least that drains `W` within the horizon at the stage's
///   measured throughput, counting the pollers' ramp from the job's start ([`capacity`]);
///   within 2–1,000. A stage with work is never below 2.
/// - **The store.** Every partition ends in a ledger commit, and the job table takes
///   [`assume::TABLE_WRITE_UNITS_PER_S`] (or `table-wcu`) at
///   [`assume::WRITE_UNITS_PER_PARTITION`] each: no stage is planned faster than that
///   (more concurrency would only queue, or throttle the commits until they fail), and the
///   fastest drain counts it.
/// - **Pollers** (`pollers=auto`). The default mode's ramp (+5 a second from 5) binds any
///   stage that needs more than a few dozen invocations: it takes (c − 5)/5 s to reach c.
///   In provisioned mode the pollers for c are ready at once, so a stage whose least
///   concurrency without a ramp is at least 20 (2 pollers) runs provisioned, at that
///   concurrency rounded up to whole pollers; the horizon's "fastest" counts no ramp
///   either. Smaller stages stay in the default mode. Pollers cost about $0.009 an hour
///   each (`cost::price::EPU_HOUR_USD`), counted in the cost cap.
/// - **Batch size.** Cost falls with fewer, longer invocations, so each slot's share of
///   `W` is cut into [`assume::ROUNDS`] batches (up to 10,000, and no longer than
///   [`assume::MAX_INVOCATION_S`]). A cost cap grows batches further until the modelled
///   Lambda cost of the remaining work fits. In the tail (≤ 10 per slot) batches are at
///   most 10 with no batching window; above 10, AWS requires a window, and 1 s is the
///   least.
pub fn backlog(goal: &Goal, obs: &Observation) -> Vec<Levers> {
    let Some(total) = obs.total_partitions else {
        // Not planned yet: the least of everything until there is work to size.
        return obs
            .stages
            .iter()
            .map(|s| {
                if s.is_source {
                    source_levers(limits::MIN_MAX_CONCURRENCY)
                } else {
                    tail_levers(limits::MIN_MAX_CONCURRENCY, 0)
                }
            })
            .collect();
    };
    let remaining = total.saturating_sub(obs.finished_partitions);
    // Work ahead of each stage, from the end of the pipeline back.
    let mut work = vec![0u64; obs.stages.len()];
    let mut queued_later = 0u64;
    for (i, stage) in obs.stages.iter().enumerate().rev() {
        if stage.is_source {
            continue;
        }
        work[i] = remaining.saturating_sub(queued_later);
        queued_later = queued_later.saturating_add(stage.backlog());
    }
    let throughput = |s: &StageObservation| {
        s.throughput
            .filter(|t| *t > 0.0)
            .unwrap_or(assume::THROUGHPUT)
    };
    let elapsed = obs.elapsed_s.max(0.0);
    let store_rate = goal
        .table_wcu
        .map_or(assume::TABLE_WRITE_UNITS_PER_S, f64::from)
        / assume::WRITE_UNITS_PER_PARTITION;
    let ramp = match goal.pollers {
        Pollers::Standard => Ramp::Standard,
        Pollers::Auto => Ramp::Provisioned,
    };
    let horizon = match goal.target_s {
        Some(target) => f64::from(target) - elapsed,
        None => {
            let fastest = obs
                .stages
                .iter()
                .zip(&work)
                .filter(|(s, _)| !s.is_source)
                .map(|(s, w)| {
                    fastest_drain(ramp, *w as f64, throughput(s), elapsed)
                        .max(*w as f64 / store_rate)
                })
                .fold(0.0, f64::max);
            2.0 * fastest
        }
    }
    .max(assume::MIN_HORIZON_S);

    let mut plans: Vec<StagePlan> = obs
        .stages
        .iter()
        .zip(&work)
        .map(|(s, w)| {
            if s.is_source {
                return StagePlan::Source(s.backlog());
            }
            let rate = throughput(s);
            // The most slots the store keeps busy.
            let store_slots = (store_rate / rate).ceil().clamp(
                f64::from(limits::MIN_MAX_CONCURRENCY),
                f64::from(limits::MAX_MAX_CONCURRENCY),
            ) as u32;
            let slots =
                |ramp| least_slots(ramp, *w as f64, rate, elapsed, horizon).min(store_slots);
            let provisioned = match ramp {
                Ramp::Provisioned => whole_pollers(slots(Ramp::Provisioned), store_slots),
                Ramp::Standard => None,
            };
            let concurrency = u64::from(provisioned.unwrap_or_else(|| slots(Ramp::Standard)));
            let per_slot = w.div_ceil(concurrency);
            let longest = ((rate * assume::MAX_INVOCATION_S) as u64).max(1);
            let batch_cap = longest.min(u64::from(limits::MAX_BATCH_SIZE)).max(1);
            let batch = per_slot.div_ceil(assume::ROUNDS).clamp(1, batch_cap);
            StagePlan::Worker {
                work: *w,
                rate,
                memory_gb: f64::from(s.memory_mb) / 1024.0,
                concurrency: concurrency as u32,
                per_slot,
                batch,
                batch_cap,
                provisioned: provisioned.is_some(),
            }
        })
        .collect();

    if let Some(cap) = goal.max_cost_microusd {
        let budget = cap as f64 / 1e6;
        // Doubling every batch at most 14 times covers 1 → 10,000.
        for _ in 0..14 {
            let cost: f64 = plans.iter().map(StagePlan::lambda_usd).sum();
            if cost <= budget {
                break;
            }
            let mut grew = false;
            for plan in &mut plans {
                if let StagePlan::Worker {
                    batch, batch_cap, ..
                } = plan
                {
                    let next = (*batch * 2).min(*batch_cap);
                    grew |= next != *batch;
                    *batch = next;
                }
            }
            if !grew {
                break;
            }
        }
    }

    plans
        .into_iter()
        .map(|plan| match plan {
            StagePlan::Source(tasks) => {
                let concurrency = tasks.clamp(
                    u64::from(limits::MIN_MAX_CONCURRENCY),
                    u64::from(limits::MAX_MAX_CONCURRENCY),
                ) as u32;
                match (
                    ramp,
                    whole_pollers(concurrency, limits::MAX_MAX_CONCURRENCY),
                ) {
                    (Ramp::Provisioned, Some(c)) => Levers {
                        provisioned: true,
                        ..source_levers(c)
                    },
                    _ => source_levers(concurrency),
                }
            }
            StagePlan::Worker {
                concurrency,
                per_slot,
                batch,
                provisioned,
                ..
            } => {
                let levers = if per_slot <= assume::TAIL_BATCH {
                    tail_levers(concurrency, per_slot)
                } else {
                    let batch = batch as u32;
                    Levers {
                        batch_size: batch,
                        batching_window_secs: u32::from(
                            batch > limits::MAX_BATCH_SIZE_WITHOUT_WINDOW,
                        ),
                        max_concurrency: concurrency,
                        reserved_concurrency: None,
                        provisioned: false,
                    }
                };
                Levers {
                    provisioned,
                    ..levers
                }
            }
        })
        .collect()
}

/// How a mapping's concurrency grows from the moment it has work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ramp {
    /// The default scaling: 5 concurrent batches, +5 a second.
    Standard,
    /// Provisioned mode with every poller kept ready (see [`pollers_for`]): all of it at once
    /// up to 2,000 invocations, above anything one mapping is given here.
    Provisioned,
}

/// `slots` in whole pollers (10 invocations each): rounded up, but never above `cap`;
/// `None` under the least of 2 pollers.
fn whole_pollers(slots: u32, cap: u32) -> Option<u32> {
    let per = limits::INVOKES_PER_POLLER;
    let cap = cap.min(limits::MAX_MAX_CONCURRENCY);
    let up = slots.div_ceil(per).saturating_mul(per);
    let rounded = if up <= cap { up } else { cap / per * per };
    (rounded >= limits::MIN_POLLERS * per).then_some(rounded)
}

/// [`capacity`] under a mapping's ramp.
pub fn capacity_in(ramp: Ramp, slots: f64, rate: f64, from: f64, to: f64) -> f64 {
    match ramp {
        Ramp::Standard => capacity(slots, rate, from, to),
        Ramp::Provisioned => rate * slots * (to - from).max(0.0),
    }
}

/// Messages `slots` concurrent invocations handling `rate` each per second get through
/// between `from` and `to` seconds after the job started, while the mapping's pollers ramp
/// up (5 at first, +5 a second: `limits::ESM_*`).
pub fn capacity(slots: f64, rate: f64, from: f64, to: f64) -> f64 {
    if to <= from {
        return 0.0;
    }
    let (start, ramp) = (limits::ESM_START_BATCHES, limits::ESM_RAMP_PER_S);
    // The ramp reaches `slots` at `full`; before, it is the limit.
    let full = ((slots - start) / ramp).max(0.0);
    let ramp_area = |a: f64, b: f64| start * (b - a) + ramp / 2.0 * (b * b - a * a);
    let ramped = if from < full {
        ramp_area(from, to.min(full))
    } else {
        0.0
    };
    let flat = slots * (to - from.max(full)).max(0.0);
    rate * (ramped + flat)
}

/// The least MaximumConcurrency (2–1,000) that gets `work` through within `horizon`
/// seconds from `elapsed`, or 1,000 if none does.
fn least_slots(ramp: Ramp, work: f64, rate: f64, elapsed: f64, horizon: f64) -> u32 {
    let (mut lo, mut hi) = (limits::MIN_MAX_CONCURRENCY, limits::MAX_MAX_CONCURRENCY);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if capacity_in(ramp, f64::from(mid), rate, elapsed, elapsed + horizon) >= work {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// The least time in which 1,000 concurrent invocations, ramping up, get `work` through.
fn fastest_drain(ramp: Ramp, work: f64, rate: f64, elapsed: f64) -> f64 {
    let slots = f64::from(limits::MAX_MAX_CONCURRENCY);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while capacity_in(ramp, slots, rate, elapsed, elapsed + hi) < work && hi < 1e12 {
        hi *= 2.0;
    }
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if capacity_in(ramp, slots, rate, elapsed, elapsed + mid) >= work {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Levers for a stage whose slots have at most 10 messages each: batches of that size
/// (at least 1), invoked as soon as they are there.
fn tail_levers(max_concurrency: u32, per_slot: u64) -> Levers {
    Levers {
        batch_size: per_slot.clamp(1, assume::TAIL_BATCH) as u32,
        batching_window_secs: 0,
        max_concurrency,
        reserved_concurrency: None,
        provisioned: false,
    }
}

enum StagePlan {
    /// A source stage, with its feed tasks waiting.
    Source(u64),
    Worker {
        work: u64,
        rate: f64,
        memory_gb: f64,
        concurrency: u32,
        per_slot: u64,
        batch: u64,
        batch_cap: u64,
        provisioned: bool,
    },
}

impl StagePlan {
    /// Modelled Lambda cost of the stage's remaining work at this batch size: requests,
    /// and billed time of the messages plus each invocation's fixed overhead; in
    /// provisioned mode, the pollers too (one per 10 invocations, for as long as they run).
    fn lambda_usd(&self) -> f64 {
        let Self::Worker {
            work,
            rate,
            memory_gb,
            batch,
            provisioned,
            ..
        } = self
        else {
            return 0.0;
        };
        let invocations = work.div_ceil((*batch).max(1)) as f64;
        let seconds = *work as f64 / rate + invocations * assume::INVOCATION_OVERHEAD_S;
        let pollers = if *provisioned {
            seconds / f64::from(limits::INVOKES_PER_POLLER) / 3_600.0 * price::EPU_HOUR_USD
        } else {
            0.0
        };
        invocations * price::LAMBDA_REQUEST_USD
            + seconds * memory_gb * price::LAMBDA_GB_S_USD
            + pollers
    }
}

/// Static batch sizing: the AWS default of 10 until each worker's share of the partitions is
/// large, then about a quarter of that share (a few large invocations cost less than many
/// small ones), capped at 1,000. AWS requires a batching window of at least 1 s above 10.
pub fn batch_for(partitions: u64, concurrency: u32) -> (u32, u32) {
    let share = partitions.div_ceil(u64::from(concurrency.max(1)));
    let batch = (share / 4).clamp(10, 1_000) as u32;
    let window = u32::from(batch > limits::MAX_BATCH_SIZE_WITHOUT_WINDOW);
    (batch, window)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown policy `{0}`; known: always-one, static-proportional:M (M a positive integer), backlog, backlog:GOAL where GOAL is target=SECONDS, max-cost=USD, pollers=auto and/or table-wcu=N, comma-separated (e.g. backlog:target=60,max-cost=0.5,pollers=auto)")]
pub struct PolicyParseError(String);

impl FromStr for Policy {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "always-one" => Ok(Self::AlwaysOne),
            None if s == "backlog" => Ok(Self::Backlog(Goal::default())),
            Some(("backlog", goal)) => parse_goal(goal)
                .map(Self::Backlog)
                .ok_or_else(|| PolicyParseError(s.to_owned())),
            Some(("static-proportional", m)) => m
                .parse::<u32>()
                .ok()
                .filter(|m| *m > 0)
                .map(Self::StaticProportional)
                .ok_or_else(|| PolicyParseError(s.to_owned())),
            _ => Err(PolicyParseError(s.to_owned())),
        }
    }
}

/// `target=SECONDS`, `max-cost=USD`, `pollers=auto|standard`, `table-wcu=N`, comma-separated,
/// each at most once.
fn parse_goal(s: &str) -> Option<Goal> {
    let mut goal = Goal::default();
    let mut pollers_seen = false;
    for part in s.split(',') {
        match part.split_once('=')? {
            ("target", v) if goal.target_s.is_none() => {
                goal.target_s = Some(v.parse::<u32>().ok().filter(|t| *t > 0)?);
            }
            ("max-cost", v) if goal.max_cost_microusd.is_none() => {
                let usd = v
                    .parse::<f64>()
                    .ok()
                    .filter(|c| c.is_finite() && *c > 0.0)?;
                goal.max_cost_microusd = Some((usd * 1e6).round().max(1.0) as u64);
            }
            ("table-wcu", v) if goal.table_wcu.is_none() => {
                goal.table_wcu = Some(v.parse::<u32>().ok().filter(|n| *n > 0)?);
            }
            ("pollers", v) if !pollers_seen => {
                pollers_seen = true;
                goal.pollers = match v {
                    "auto" => Pollers::Auto,
                    "standard" => Pollers::Standard,
                    _ => return None,
                };
            }
            _ => return None,
        }
    }
    Some(goal)
}

impl TryFrom<String> for Policy {
    type Error = PolicyParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Policy> for String {
    fn from(p: Policy) -> String {
        p.to_string()
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlwaysOne => f.write_str("always-one"),
            Self::StaticProportional(m) => write!(f, "static-proportional:{m}"),
            Self::Backlog(goal) => {
                f.write_str("backlog")?;
                let mut parts = Vec::new();
                if let Some(t) = goal.target_s {
                    parts.push(format!("target={t}"));
                }
                if let Some(c) = goal.max_cost_microusd {
                    parts.push(format!("max-cost={}", c as f64 / 1e6));
                }
                if goal.pollers == Pollers::Auto {
                    parts.push("pollers=auto".into());
                }
                if let Some(n) = goal.table_wcu {
                    parts.push(format!("table-wcu={n}"));
                }
                if !parts.is_empty() {
                    write!(f, ":{}", parts.join(","))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, is_source: bool) -> StageObservation {
        StageObservation {
            name: name.into(),
            is_source,
            counts: QueueCounts::default(),
            throughput: None,
            memory_mb: 512,
        }
    }

    fn observation(job_size: u64, partitions: u64) -> Observation {
        Observation {
            job_size,
            total_partitions: Some(partitions),
            finished_partitions: 0,
            elapsed_s: 0.0,
            stages: vec![
                stage("feed", true),
                stage("filter", false),
                stage("count", false),
                stage("reduce", false),
            ],
        }
    }

    fn concurrency(policy: Policy, n: u64, partitions: u64) -> Vec<u32> {
        policy
            .decide(&observation(n, partitions))
            .iter()
            .map(|l| l.max_concurrency)
            .collect()
    }

    #[test]
    fn concurrency_table() {
        let sp = Policy::StaticProportional(150);
        let cases: &[(Policy, u64, &[u32])] = &[
            (Policy::AlwaysOne, 2_000, &[2, 2, 2, 2]),
            (Policy::AlwaysOne, 10_000_000, &[2, 2, 2, 2]),
            // The paper: 2,000 messages / 150 = 14 per stage except the feed.
            (sp, 2_000, &[2, 14, 14, 14]),
            (sp, 10, &[2, 2, 2, 2]),
            (sp, 300, &[2, 2, 2, 2]),
            (sp, 301, &[2, 3, 3, 3]),
            (sp, 10_000_000, &[2, 1000, 1000, 1000]),
            (Policy::StaticProportional(1), 5, &[2, 5, 5, 5]),
        ];
        for (policy, n, expected) in cases {
            assert_eq!(
                concurrency(*policy, *n, n.div_ceil(100)),
                *expected,
                "{policy} n={n}"
            );
        }
    }

    #[test]
    fn levers_always_valid_mappings() {
        for policy in [
            Policy::AlwaysOne,
            Policy::StaticProportional(150),
            Policy::StaticProportional(1),
        ] {
            for n in [1u64, 10, 2_000, 1_000_000, 100_000_000] {
                for partitions in [1, n.div_ceil(100), n] {
                    for levers in policy.decide(&observation(n, partitions)) {
                        levers.mapping_config().validate().unwrap();
                    }
                }
            }
        }
    }

    #[test]
    fn batch_table() {
        assert_eq!(batch_for(20, 14), (10, 0));
        assert_eq!(batch_for(10_000, 2), (1_000, 1));
        assert_eq!(batch_for(1_000_000, 1000), (250, 1));
        assert_eq!(batch_for(0, 2), (10, 0));
    }

    #[test]
    fn parse_and_display() {
        assert_eq!("always-one".parse(), Ok(Policy::AlwaysOne));
        assert_eq!(
            "static-proportional:150".parse(),
            Ok(Policy::StaticProportional(150))
        );
        for bad in [
            "",
            "always-two",
            "static-proportional",
            "static-proportional:0",
            "static-proportional:x",
        ] {
            assert!(bad.parse::<Policy>().is_err(), "{bad}");
        }
        assert_eq!(
            Policy::StaticProportional(7).to_string(),
            "static-proportional:7"
        );
    }

    fn with(mut obs: Observation, f: impl FnOnce(&mut Observation)) -> Observation {
        f(&mut obs);
        obs
    }

    /// (concurrency, batch size, window) of one stage.
    type Triple = (u32, u32, u32);

    /// (concurrency, batch size, window) per stage.
    fn levers(policy: &str, obs: &Observation) -> Vec<Triple> {
        policy
            .parse::<Policy>()
            .unwrap()
            .decide(obs)
            .iter()
            .map(|l| (l.max_concurrency, l.batch_size, l.batching_window_secs))
            .collect()
    }

    #[test]
    fn backlog_table() {
        let unplanned = with(observation(2_000, 20), |o| o.total_partitions = None);
        let million = observation(100_000_000, 1_000_000);
        // A table that takes it all, so that these cases are about the pollers' ramp; the
        // last two are a new on-demand table.
        let cases: Vec<(&str, &str, Observation, Vec<Triple>)> = vec![
            (
                "before planning, the least of everything",
                "backlog",
                unplanned,
                vec![(2, 1, 0), (2, 1, 0), (2, 1, 0), (2, 1, 0)],
            ),
            (
                "the paper's 2,000 messages: 20 partitions are a tail from the start",
                "backlog",
                observation(2_000, 20),
                vec![(2, 1, 0), (2, 10, 0), (2, 10, 0), (2, 10, 0)],
            ),
            (
                // Fastest: 1,000 slots ramping from 5 by 5/s at 100/s each drain 10^6 in
                // 62 s; within twice that (124.5 s), 86 slots do (full from 16 s on):
                // 86 slots of 11,628, in 4 rounds of 2,907.
                "10^6 partitions, no target: the least within twice the fastest",
                "backlog:table-wcu=10000000",
                million.clone(),
                vec![(2, 1, 0), (86, 2_907, 1), (86, 2_907, 1), (86, 2_907, 1)],
            ),
            (
                // 100 slots would do at once; the ramp's first 19 s ask for 12 more.
                "a 100 s target needs 112 slots, counting the ramp",
                "backlog:target=100,table-wcu=10000000",
                million.clone(),
                vec![(2, 1, 0), (112, 2_233, 1), (112, 2_233, 1), (112, 2_233, 1)],
            ),
            (
                "a missed target runs as fast as AWS allows",
                "backlog:target=100,table-wcu=10000000",
                with(million.clone(), |o| o.elapsed_s = 500.0),
                vec![(2, 1, 0), (1_000, 250, 1), (1_000, 250, 1), (1_000, 250, 1)],
            ),
            (
                // At 1,000 partitions/s per slot, 100 s is 10 slots of 100,000 (11 with
                // the ramp's first second); a batch is capped at 10,000.
                "measured throughput needs fewer slots",
                "backlog:target=100,table-wcu=10000000",
                with(million.clone(), |o| {
                    for s in &mut o.stages[1..] {
                        s.throughput = Some(1_000.0);
                    }
                }),
                vec![(2, 1, 0), (11, 10_000, 1), (11, 10_000, 1), (11, 10_000, 1)],
            ),
            (
                "work ahead of a stage excludes what is queued past it",
                "backlog:target=2",
                with(observation(100_000, 1_000), |o| {
                    o.finished_partitions = 100;
                    o.stages[1].counts.visible = 100;
                    o.stages[2].counts.in_flight = 300;
                    o.stages[3].counts.visible = 500;
                }),
                // Work: reduce 900, count 400, filter 100, at 200 per slot over 2 s.
                vec![(2, 1, 0), (2, 13, 1), (2, 50, 1), (5, 45, 1)],
            ),
            (
                "feed tasks run in parallel",
                "backlog:table-wcu=10000000",
                with(million.clone(), |o| o.stages[0].counts.visible = 256),
                vec![(256, 1, 0), (86, 2_907, 1), (86, 2_907, 1), (86, 2_907, 1)],
            ),
            (
                "the tail: batches of at most 10, invoked at once",
                "backlog:table-wcu=10000000",
                with(million.clone(), |o| o.finished_partitions = 1_000_000 - 15),
                vec![(2, 1, 0), (2, 8, 0), (2, 8, 0), (2, 8, 0)],
            ),
            (
                // 4,000 units a second at 2.1 a partition: 1,905 partitions a second, so
                // 10^6 take at least 525 s; within twice that, 10 slots of 100,000 at 100/s
                // (batches capped at a minute's work), never more than the 20 slots that
                // keep the table busy.
                "a new on-demand table binds before the ramp does",
                "backlog",
                million.clone(),
                vec![(2, 1, 0), (10, 6_000, 1), (10, 6_000, 1), (10, 6_000, 1)],
            ),
            (
                "a 100 s target the table cannot meet asks no more than the table takes",
                "backlog:target=100",
                million.clone(),
                vec![(2, 1, 0), (20, 6_000, 1), (20, 6_000, 1), (20, 6_000, 1)],
            ),
        ];
        for (why, policy, obs, expected) in cases {
            assert_eq!(levers(policy, &obs), expected, "{why}");
        }
    }

    #[test]
    fn pollers_auto_provisions_where_the_ramp_binds() {
        let million = observation(100_000_000, 1_000_000);
        // A table with warm throughput for all of it: the ramp, not the store, binds.
        let auto: Policy = "backlog:pollers=auto,table-wcu=10000000".parse().unwrap();
        let levers = auto.decide(&million);
        // Fastest without a ramp: 1,000 slots at 100/s drain 10^6 in 10 s; within twice
        // that, 500 slots: 50 pollers, all ready. The feed (nothing queued) stays at 2.
        assert!(!levers[0].provisioned);
        for l in &levers[1..] {
            assert_eq!((l.max_concurrency, l.provisioned), (500, true), "{l:?}");
            let config = l.mapping_config();
            assert_eq!(config.max_concurrency, None);
            assert_eq!(
                config.provisioned_pollers,
                Some(ProvisionedPollers {
                    minimum: 50,
                    maximum: 50
                })
            );
        }
        // Without the lever, the same job asks for 86 slots over a longer horizon.
        let standard: Policy = "backlog:table-wcu=10000000".parse().unwrap();
        let standard = standard.decide(&million);
        assert!(standard.iter().all(|l| !l.provisioned));
        assert_eq!(standard[1].max_concurrency, 86);
        // A stage needing fewer than 20 slots stays in the default mode.
        let small = auto.decide(&observation(20_000, 200));
        assert!(small.iter().all(|l| !l.provisioned), "{small:?}");
        // Feed tasks run provisioned when there are 20 or more.
        let feeding = auto.decide(&with(million.clone(), |o| o.stages[0].counts.visible = 256));
        assert_eq!(
            (feeding[0].max_concurrency, feeding[0].provisioned),
            (260, true)
        );
        // On a new on-demand table 20 slots keep the store busy: 2 pollers at most.
        let bound: Policy = "backlog:pollers=auto".parse().unwrap();
        for l in &bound.decide(&million)[1..] {
            assert!(l.max_concurrency <= 20, "{l:?}");
        }
    }

    #[test]
    fn pollers_never_outrun_the_concurrency_asked() {
        assert_eq!(pollers_for(19), None);
        assert_eq!(
            pollers_for(20),
            Some(ProvisionedPollers {
                minimum: 2,
                maximum: 2
            })
        );
        // 86 → 8 pollers, 80 invocations; beyond 200 pollers only 200 are kept ready.
        assert_eq!(pollers_for(86).map(|p| p.maximum), Some(8));
        assert_eq!(
            pollers_for(1_000_000),
            Some(ProvisionedPollers {
                minimum: 200,
                maximum: 10_000
            })
        );
        // A provisioned stage cut below 20 by its reservation runs in the default mode.
        let cut = Levers {
            batch_size: 10,
            batching_window_secs: 0,
            max_concurrency: 12,
            reserved_concurrency: Some(12),
            provisioned: true,
        };
        assert_eq!(cut.mapping_config().max_concurrency, Some(12));
        assert_eq!(cut.mapping_config().provisioned_pollers, None);
    }

    #[test]
    fn capacity_follows_the_ramp() {
        // 5 slots at first, +5 a second: over the first 2 s, 5×2 + 2.5×4 = 20 slot-seconds.
        assert!((capacity(1_000.0, 1.0, 0.0, 2.0) - 20.0).abs() < 1e-9);
        // Capped at the slots once the ramp passes them (10 slots at t = 1 s).
        assert!((capacity(10.0, 1.0, 0.0, 3.0) - (7.5 + 20.0)).abs() < 1e-9);
        // Long after the start the ramp is done.
        assert!((capacity(10.0, 2.0, 1_000.0, 1_010.0) - 200.0).abs() < 1e-9);
        assert_eq!(capacity(10.0, 1.0, 5.0, 5.0), 0.0);
    }

    #[test]
    fn a_cost_cap_grows_batches() {
        // Slow stages under a tight target: 1,000 slots of small batches.
        let obs = with(observation(100_000_000, 1_000_000), |o| {
            for s in &mut o.stages[1..] {
                s.throughput = Some(500.0);
            }
        });
        let fast: Policy = "backlog:target=1,table-wcu=100000000".parse().unwrap();
        let usd = |levers: &[Levers]| -> (f64, f64) {
            let (mut fixed, mut per_message) = (0.0, 0.0);
            for l in &levers[1..] {
                let invocations = 1e6 / f64::from(l.batch_size);
                fixed += invocations
                    * (price::LAMBDA_REQUEST_USD
                        + assume::INVOCATION_OVERHEAD_S * 0.5 * price::LAMBDA_GB_S_USD);
                per_message += 1e6 / 500.0 * 0.5 * price::LAMBDA_GB_S_USD;
            }
            (fixed, per_message)
        };
        let free = fast.decide(&obs);
        let (fixed, per_message) = usd(&free);
        assert!(free.iter().skip(1).all(|l| l.max_concurrency == 1_000));
        // A cap that only larger batches can meet.
        let cap = per_message + fixed / 3.0;
        let capped: Policy = format!("backlog:target=1,max-cost={cap},table-wcu=100000000")
            .parse()
            .unwrap();
        let capped = capped.decide(&obs);
        let (fixed_capped, _) = usd(&capped);
        assert!(per_message + fixed_capped <= cap * 1.000_001);
        for (a, b) in free.iter().zip(&capped).skip(1) {
            assert!(b.batch_size > a.batch_size, "{a:?} → {b:?}");
            assert_eq!(a.max_concurrency, b.max_concurrency);
        }
    }

    #[test]
    fn goals_parse_and_display() {
        for (text, goal) in [
            ("backlog", Goal::default()),
            (
                "backlog:target=60",
                Goal {
                    target_s: Some(60),
                    ..Goal::default()
                },
            ),
            (
                "backlog:max-cost=0.05",
                Goal {
                    max_cost_microusd: Some(50_000),
                    ..Goal::default()
                },
            ),
            (
                "backlog:target=60,max-cost=1.5",
                Goal {
                    target_s: Some(60),
                    max_cost_microusd: Some(1_500_000),
                    ..Goal::default()
                },
            ),
            (
                "backlog:pollers=auto",
                Goal {
                    pollers: Pollers::Auto,
                    ..Goal::default()
                },
            ),
            (
                "backlog:target=60,max-cost=1.5,pollers=auto,table-wcu=40000",
                Goal {
                    target_s: Some(60),
                    max_cost_microusd: Some(1_500_000),
                    pollers: Pollers::Auto,
                    table_wcu: Some(40_000),
                },
            ),
        ] {
            assert_eq!(text.parse(), Ok(Policy::Backlog(goal)), "{text}");
            assert_eq!(Policy::Backlog(goal).to_string(), text);
        }
        // The default mode said out loud is the default.
        assert_eq!(
            "backlog:pollers=standard".parse(),
            Ok(Policy::Backlog(Goal::default()))
        );
        for bad in [
            "backlog:",
            "backlog:target",
            "backlog:target=0",
            "backlog:target=-1",
            "backlog:max-cost=0",
            "backlog:max-cost=NaN",
            "backlog:target=5,target=6",
            "backlog:speed=9",
            "backlog:pollers=fast",
            "backlog:pollers=auto,pollers=auto",
            "backlog:table-wcu=0",
            "backlog:table-wcu=lots",
        ] {
            assert!(bad.parse::<Policy>().is_err(), "{bad}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn any_stage(is_source: bool) -> impl Strategy<Value = StageObservation> {
            (
                0u64..2_000_000,
                0u64..200_000,
                0u64..1_000,
                prop::option::of(0.0f64..100_000.0),
                prop::sample::select(vec![128u32, 512, 1769, 10_240]),
            )
                .prop_map(
                    move |(visible, in_flight, delayed, throughput, memory_mb)| StageObservation {
                        name: "s".into(),
                        is_source,
                        counts: QueueCounts {
                            visible,
                            in_flight,
                            delayed,
                        },
                        throughput,
                        memory_mb,
                    },
                )
        }

        fn any_observation() -> impl Strategy<Value = Observation> {
            (
                1u64..1_000_000_000,
                prop::option::of(0u64..20_000_000),
                0u64..20_000_000,
                0.0f64..100_000.0,
                any_stage(true),
                prop::collection::vec(any_stage(false), 1..5),
            )
                .prop_map(|(job_size, total, finished, elapsed_s, source, rest)| {
                    let mut stages = vec![source];
                    stages.extend(rest);
                    Observation {
                        job_size,
                        total_partitions: total,
                        finished_partitions: finished,
                        elapsed_s,
                        stages,
                    }
                })
        }

        fn any_goal() -> impl Strategy<Value = Goal> {
            (
                prop::option::of(1u32..100_000),
                prop::option::of(1u64..10_000_000_000),
                prop::bool::ANY,
                prop::option::of(1u32..1_000_000),
            )
                .prop_map(|(target_s, max_cost_microusd, auto, table_wcu)| Goal {
                    target_s,
                    max_cost_microusd,
                    pollers: if auto {
                        Pollers::Auto
                    } else {
                        Pollers::Standard
                    },
                    table_wcu,
                })
        }

        proptest! {
            #[test]
            fn backlog_never_breaks_a_limit_nor_starves_a_stage(
                obs in any_observation(),
                goal in any_goal(),
            ) {
                let levers = backlog(&goal, &obs);
                prop_assert_eq!(levers.len(), obs.stages.len());
                for (l, s) in levers.iter().zip(&obs.stages) {
                    let config = l.mapping_config();
                    prop_assert!(config.validate().is_ok(), "{:?}", l);
                    // Never more invocations than the stage asked for (and was reserved).
                    prop_assert!(config.concurrency_cap() <= l.max_concurrency, "{:?}", l);
                    prop_assert_eq!(config.provisioned_pollers.is_some(), l.provisioned, "{:?}", l);
                    if goal.pollers == Pollers::Standard {
                        prop_assert!(!l.provisioned);
                    }
                    prop_assert!(l.max_concurrency >= limits::MIN_MAX_CONCURRENCY);
                    prop_assert!(l.max_concurrency <= limits::MAX_MAX_CONCURRENCY);
                    prop_assert!(l.batch_size >= 1 && l.batch_size <= limits::MAX_BATCH_SIZE);
                    // A window only where AWS requires one, and then the least (1 s):
                    // a stage with a backlog is always invoked within a second.
                    prop_assert_eq!(
                        l.batching_window_secs,
                        u32::from(l.batch_size > limits::MAX_BATCH_SIZE_WITHOUT_WINDOW)
                    );
                    if s.is_source {
                        prop_assert_eq!(l.batch_size, 1);
                    }
                }
            }

            #[test]
            fn more_work_never_gets_less_concurrency(
                obs in any_observation(),
                goal in any_goal(),
                extra in 1u64..1_000_000,
            ) {
                prop_assume!(obs.total_partitions.is_some());
                let more = with(obs.clone(), |o| {
                    o.total_partitions = o.total_partitions.map(|t| t + extra);
                });
                let (a, b) = (backlog(&goal, &obs), backlog(&goal, &more));
                // The horizon may grow with the work (no target), but never faster than
                // the work does: the slowest stage's need never falls.
                let need = |l: &[Levers]| l.iter().skip(1).map(|l| l.max_concurrency).max();
                if goal.target_s.is_some() {
                    prop_assert!(need(&b) >= need(&a));
                }
            }

            #[test]
            fn provisioned_pollers_meet_a_target_as_soon_as_they_are_there(
                obs in any_observation(),
                target in 1u32..10_000,
            ) {
                let goal = Goal {
                    target_s: Some(target),
                    pollers: Pollers::Auto,
                    table_wcu: Some(u32::MAX),
                    max_cost_microusd: None,
                };
                let Some(total) = obs.total_partitions else { return Ok(()) };
                let remaining = total.saturating_sub(obs.finished_partitions);
                let horizon = (f64::from(target) - obs.elapsed_s.max(0.0)).max(assume::MIN_HORIZON_S);
                let levers = backlog(&goal, &obs);
                let mut queued_later = 0u64;
                for (l, s) in levers.iter().zip(&obs.stages).skip(1).rev() {
                    let work = remaining.saturating_sub(queued_later);
                    queued_later += s.backlog();
                    let rate = s.throughput.filter(|t| *t > 0.0).unwrap_or(assume::THROUGHPUT);
                    let elapsed = obs.elapsed_s.max(0.0);
                    let ramp = if l.provisioned { Ramp::Provisioned } else { Ramp::Standard };
                    let cap = f64::from(l.mapping_config().concurrency_cap());
                    prop_assert!(
                        capacity_in(ramp, cap, rate, elapsed, elapsed + horizon) >= work as f64 * 0.999_999
                            || l.max_concurrency == limits::MAX_MAX_CONCURRENCY,
                        "{:?} at {}/s over {} s cannot do {}", l, rate, horizon, work
                    );
                }
            }

            #[test]
            fn no_stage_is_planned_faster_than_the_store_takes_partitions(
                obs in any_observation(),
                goal in any_goal(),
            ) {
                let store_rate = goal
                    .table_wcu
                    .map_or(assume::TABLE_WRITE_UNITS_PER_S, f64::from)
                    / assume::WRITE_UNITS_PER_PARTITION;
                let levers = backlog(&goal, &obs);
                for (l, s) in levers.iter().zip(&obs.stages).skip(1) {
                    if s.is_source {
                        continue;
                    }
                    let rate = s.throughput.filter(|t| *t > 0.0).unwrap_or(assume::THROUGHPUT);
                    let slots = (store_rate / rate).ceil().max(2.0);
                    prop_assert!(
                        f64::from(l.max_concurrency) <= slots,
                        "{:?}: {} slots at {}/s outrun {} partitions/s", l, l.max_concurrency, rate, store_rate
                    );
                }
            }

            #[test]
            fn a_target_is_met_when_aws_allows(
                obs in any_observation(),
                target in 1u32..10_000,
            ) {
                // A table that never binds: the ramp alone.
                let goal = Goal {
                    target_s: Some(target),
                    table_wcu: Some(u32::MAX),
                    ..Goal::default()
                };
                let Some(total) = obs.total_partitions else { return Ok(()) };
                let remaining = total.saturating_sub(obs.finished_partitions);
                let horizon = (f64::from(target) - obs.elapsed_s.max(0.0)).max(assume::MIN_HORIZON_S);
                let levers = backlog(&goal, &obs);
                let mut queued_later = 0u64;
                for (l, s) in levers.iter().zip(&obs.stages).skip(1).rev() {
                    let work = remaining.saturating_sub(queued_later);
                    queued_later += s.backlog();
                    let rate = s.throughput.filter(|t| *t > 0.0).unwrap_or(assume::THROUGHPUT);
                    let elapsed = obs.elapsed_s.max(0.0);
                    let can = |slots: u32| {
                        capacity(f64::from(slots), rate, elapsed, elapsed + horizon)
                    };
                    prop_assert!(
                        can(l.max_concurrency) >= work as f64 * 0.999_999
                            || l.max_concurrency == limits::MAX_MAX_CONCURRENCY,
                        "{} slots at {}/s over {} s cannot do {}",
                        l.max_concurrency, rate, horizon, work
                    );
                    // The least that does: one slot fewer could not.
                    if l.max_concurrency > limits::MIN_MAX_CONCURRENCY {
                        prop_assert!(can(l.max_concurrency - 1) < work as f64 * 1.000_001);
                    }
                }
            }
        }
    }
}
