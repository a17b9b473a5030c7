//! A job's history for people to watch (`GET /jobs/{id}/timeline`, the dashboard's job page):
//! - what the daemon observed and decided at each tick — every stage's queue depths and the
//!   levers it applied — kept beside the ledger (`run#{id}#{attempt}` / `tick#{t_ms}`), one
//!   write per tick on every backend: the paper's figure 6 and the policy at work;
//! - the concurrent invocations of each stage over time, from the invocation records where
//!   the deployment keeps them ([`Telemetry::spans`]): the paper's figure 5.
//!
//! Nothing here feeds a decision: a sample that fails to be written is logged and lost.

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::job::JobId;
use crate::policy::{Levers, Observation};
use crate::ports::{Condition, InvocationSpan, JobStore, Key, StoreError};
use crate::record::run_pk;

/// Ticks returned by one read: a long job's history comes in pages (`after`).
pub const MAX_TICKS_PER_READ: usize = 1_000;
/// Concurrency is averaged over at most this many buckets per stage.
const MAX_BUCKETS: u64 = 300;
/// The narrowest bucket: finer than the local runtime's polling says nothing more.
const MIN_BUCKET_MS: u64 = 50;

/// One stage at one tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageSample {
    pub stage: String,
    /// Approximate queue depths, as the policy saw them.
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    /// The levers the tick applied (after fitting them into the reserved concurrency).
    pub levers: Levers,
}

/// One tick: when, how far the job was, and every stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TickSample {
    pub t_ms: u64,
    /// Partitions reduced or dead-lettered so far.
    pub finished: u64,
    pub stages: Vec<StageSample>,
}

pub fn tick_key(id: &str, attempt: u32, t_ms: u64) -> Key {
    Key::new(run_pk(id, attempt), format!("tick#{t_ms:013}"))
}

/// Records a tick: what it observed and the levers it applied, stage by stage.
pub async fn record(
    store: &dyn JobStore,
    id: &JobId,
    attempt: u32,
    t_ms: u64,
    observation: &Observation,
    levers: &[Levers],
) {
    let sample = TickSample {
        t_ms,
        finished: observation.finished_partitions,
        stages: observation
            .stages
            .iter()
            .zip(levers)
            .map(|(o, l)| StageSample {
                stage: o.name.clone(),
                visible: o.counts.visible,
                in_flight: o.counts.in_flight,
                delayed: o.counts.delayed,
                levers: *l,
            })
            .collect(),
    };
    let attrs = match serde_json::to_value(&sample) {
        Ok(serde_json::Value::Object(attrs)) => attrs,
        _ => return,
    };
    let key = tick_key(id.as_str(), attempt, t_ms);
    if let Err(e) = store.put(&key, attrs, Condition::Always).await {
        warn!(job_id = %id, attempt, error = %e, "could not record the tick's sample");
    }
}

/// The ticks recorded after `after_ms` (all with `None`), oldest first, at most
/// [`MAX_TICKS_PER_READ`]; the second value is true when more follow.
pub async fn ticks(
    store: &dyn JobStore,
    id: &JobId,
    attempt: u32,
    after_ms: Option<u64>,
) -> Result<(Vec<TickSample>, bool), StoreError> {
    let pk = run_pk(id.as_str(), attempt);
    let mut start = after_ms.map(|t| tick_key(id.as_str(), attempt, t).sk);
    let mut samples = Vec::new();
    loop {
        let want = MAX_TICKS_PER_READ - samples.len();
        let page = store.query(&pk, "tick#", start.as_deref(), want).await?;
        for item in page.items {
            match serde_json::from_value(serde_json::Value::Object(item.attrs)) {
                Ok(sample) => samples.push(sample),
                Err(e) => {
                    warn!(job_id = %id, sk = %item.key.sk, error = %e, "unreadable tick sample")
                }
            }
        }
        match page.next {
            Some(next) if samples.len() < MAX_TICKS_PER_READ => start = Some(next),
            next => return Ok((samples, next.is_some())),
        }
    }
}

/// A stage's concurrency over time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageConcurrency {
    pub stage: String,
    /// The most invocations running at once.
    pub peak: u64,
    /// `[bucket start (ms since the epoch), mean invocations running in the bucket]`.
    pub points: Vec<(u64, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Concurrency {
    pub bucket_ms: u64,
    pub stages: Vec<StageConcurrency>,
}

/// Concurrent invocations per stage: the mean over equal buckets (so the buckets' sum times
/// their width is the billed time) and the exact peak. Stages in order of first invocation.
pub fn concurrency(spans: &[InvocationSpan]) -> Concurrency {
    let (Some(t0), Some(t1)) = (
        spans.iter().map(|s| s.started_ms * 1000).min(),
        spans.iter().map(end_us).max(),
    ) else {
        return Concurrency {
            bucket_ms: MIN_BUCKET_MS,
            stages: Vec::new(),
        };
    };
    let span_ms = (t1 - t0).div_ceil(1000).max(1);
    let bucket_ms = span_ms.div_ceil(MAX_BUCKETS).max(MIN_BUCKET_MS);
    let buckets = span_ms.div_ceil(bucket_ms) as usize;
    let bucket_us = bucket_ms * 1000;
    let mut order: Vec<&str> = Vec::new();
    let mut busy: Vec<Vec<u64>> = Vec::new(); // per stage, per bucket: µs of invocations
    let mut edges: Vec<Vec<(u64, i64)>> = Vec::new();
    for s in spans {
        let i = match order.iter().position(|o| *o == s.stage) {
            Some(i) => i,
            None => {
                order.push(&s.stage);
                busy.push(vec![0; buckets]);
                edges.push(Vec::new());
                order.len() - 1
            }
        };
        let (start, end) = (s.started_ms * 1000 - t0, end_us(s) - t0);
        edges[i].push((start, 1));
        edges[i].push((end, -1));
        let mut t = start;
        while t < end {
            let b = (t / bucket_us) as usize;
            let bucket_end = (b as u64 + 1) * bucket_us;
            let until = end.min(bucket_end);
            if let Some(slot) = busy[i].get_mut(b) {
                *slot += until - t;
            }
            t = until;
        }
    }
    let stages = order
        .iter()
        .zip(busy)
        .zip(edges)
        .map(|((stage, busy), mut edges)| {
            // Ends sort before starts at the same instant: back-to-back is not overlap.
            edges.sort_unstable();
            let (mut level, mut peak) = (0i64, 0i64);
            for (_, d) in edges {
                level += d;
                peak = peak.max(level);
            }
            StageConcurrency {
                stage: (*stage).to_owned(),
                peak: peak as u64,
                points: busy
                    .iter()
                    .enumerate()
                    .map(|(b, us)| {
                        (
                            t0 / 1000 + b as u64 * bucket_ms,
                            *us as f64 / bucket_us as f64,
                        )
                    })
                    .collect(),
            }
        })
        .collect();
    Concurrency { bucket_ms, stages }
}

fn end_us(s: &InvocationSpan) -> u64 {
    s.started_ms * 1000 + s.duration_us.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(stage: &str, started_ms: u64, duration_ms: u64) -> InvocationSpan {
        InvocationSpan {
            stage: stage.into(),
            started_ms,
            duration_us: duration_ms * 1000,
        }
    }

    #[test]
    fn buckets_hold_the_mean_and_the_peak_is_exact() {
        // Two overlapping invocations of 100 ms, then one after a gap.
        let c = concurrency(&[
            span("count", 1_000, 100),
            span("count", 1_050, 100),
            span("feed", 1_000, 50),
            span("count", 1_300, 100),
        ]);
        assert_eq!(c.bucket_ms, MIN_BUCKET_MS);
        let count = &c.stages[0];
        assert_eq!(count.stage, "count");
        assert_eq!(count.peak, 2);
        assert_eq!(c.stages[1].stage, "feed");
        assert_eq!(c.stages[1].peak, 1);
        let at = |t: u64| count.points.iter().find(|p| p.0 == t).unwrap().1;
        assert_eq!(at(1_000), 1.0);
        assert_eq!(at(1_050), 2.0);
        assert_eq!(at(1_100), 1.0);
        assert_eq!(at(1_200), 0.0);
        assert_eq!(at(1_350), 1.0);
        // The buckets' busy time is the invocations' time.
        let busy_ms: f64 = count.points.iter().map(|p| p.1).sum::<f64>() * c.bucket_ms as f64;
        assert!((busy_ms - 300.0).abs() < 1e-9, "{busy_ms}");
    }

    #[test]
    fn back_to_back_invocations_do_not_overlap() {
        let c = concurrency(&[span("filter", 0, 10), span("filter", 10, 10)]);
        assert_eq!(c.stages[0].peak, 1);
    }

    #[test]
    fn a_long_job_has_at_most_max_buckets() {
        let spans: Vec<_> = (0..1_000).map(|i| span("count", i * 997, 500)).collect();
        let c = concurrency(&spans);
        assert!(c.stages[0].points.len() as u64 <= MAX_BUCKETS);
        assert!(c.bucket_ms > MIN_BUCKET_MS);
        assert!(concurrency(&[]).stages.is_empty());
    }

    #[tokio::test]
    async fn ticks_are_recorded_and_read_in_pages() {
        use crate::policy::StageObservation;
        use crate::ports::QueueCounts;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::local::SqliteJobStore::open(&dir.path().join("s.db")).unwrap();
        let id = JobId::parse(&"ab".repeat(32)).unwrap();
        let levers = Levers {
            batch_size: 10,
            batching_window_secs: 0,
            max_concurrency: 5,
            reserved_concurrency: None,
            provisioned: false,
        };
        for t in 1..=3u64 {
            let observation = Observation {
                job_size: 100,
                total_partitions: Some(10),
                finished_partitions: t,
                elapsed_s: t as f64,
                stages: vec![StageObservation {
                    name: "count".into(),
                    is_source: false,
                    counts: QueueCounts {
                        visible: 10 * t,
                        in_flight: t,
                        delayed: 0,
                    },
                    throughput: None,
                    memory_mb: 512,
                }],
            };
            record(&store, &id, 1, 1_000 * t, &observation, &[levers]).await;
        }
        let (all, more) = ticks(&store, &id, 1, None).await.unwrap();
        assert!(!more);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].t_ms, 3_000);
        assert_eq!(all[2].finished, 3);
        assert_eq!(all[2].stages[0].visible, 30);
        assert_eq!(all[2].stages[0].levers, levers);
        let (later, _) = ticks(&store, &id, 1, Some(2_000)).await.unwrap();
        assert_eq!(later.iter().map(|s| s.t_ms).collect::<Vec<_>>(), [3_000]);
        // Another attempt's ticks are its own.
        assert!(ticks(&store, &id, 2, None).await.unwrap().0.is_empty());
    }
}
