//! Scaling policies: pure functions from a tick's observation to each stage's levers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ports::{limits, MappingConfig, QueueCounts};

/// What the daemon saw this tick. Queue counts are approximate: hints, never the completion
/// signal.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The job's input size n (messages), as static policies use it.
    pub job_size: u64,
    pub total_partitions: Option<u64>,
    pub stages: Vec<StageObservation>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StageObservation {
    pub name: String,
    pub is_source: bool,
    pub counts: QueueCounts,
}

/// One stage's levers: its mapping's settings and its function's reserved-concurrency need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Levers {
    pub batch_size: u32,
    pub batching_window_secs: u32,
    pub max_concurrency: u32,
    /// How much of the function's reserved concurrency this stage needs (`None`: none asked).
    pub reserved_concurrency: Option<u32>,
}

impl Levers {
    pub fn mapping_config(&self) -> MappingConfig {
        MappingConfig {
            batch_size: self.batch_size,
            batching_window_secs: self.batching_window_secs,
            max_concurrency: self.max_concurrency,
            enabled: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Policy {
    /// The least concurrency per stage. The paper ran one Lambda per stage; an SQS mapping's
    /// MaximumConcurrency cannot go below 2, so this is 2.
    AlwaysOne,
    /// `ceil(n / m)` concurrent invocations per stage except the source (the paper's policy).
    StaticProportional(u32),
}

impl Default for Policy {
    fn default() -> Self {
        Self::StaticProportional(150)
    }
}

impl Policy {
    pub fn decide(&self, obs: &Observation) -> Vec<Levers> {
        obs.stages
            .iter()
            .map(|stage| {
                let concurrency = match (self, stage.is_source) {
                    (Self::AlwaysOne, _) | (_, true) => limits::MIN_MAX_CONCURRENCY,
                    (Self::StaticProportional(m), false) => {
                        let n = obs.job_size.div_ceil(u64::from(*m));
                        n.clamp(
                            u64::from(limits::MIN_MAX_CONCURRENCY),
                            u64::from(limits::MAX_MAX_CONCURRENCY),
                        ) as u32
                    }
                };
                if stage.is_source {
                    // A feed task emits many partitions: one task per invocation keeps the
                    // feeders busy in parallel from the first tick.
                    return Levers {
                        batch_size: 1,
                        batching_window_secs: 0,
                        max_concurrency: concurrency,
                        reserved_concurrency: None,
                    };
                }
                let (batch_size, batching_window_secs) =
                    batch_for(obs.total_partitions.unwrap_or(0), concurrency);
                Levers {
                    batch_size,
                    batching_window_secs,
                    max_concurrency: concurrency,
                    reserved_concurrency: None,
                }
            })
            .collect()
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
#[error("unknown policy `{0}`; known: always-one, static-proportional:M (M a positive integer)")]
pub struct PolicyParseError(String);

impl FromStr for Policy {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "always-one" => Ok(Self::AlwaysOne),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(job_size: u64, partitions: u64) -> Observation {
        let stage = |name: &str, is_source| StageObservation {
            name: name.into(),
            is_source,
            counts: QueueCounts::default(),
        };
        Observation {
            job_size,
            total_partitions: Some(partitions),
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
}
