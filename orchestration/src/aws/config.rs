//! What a deployment tells its functions: the environment variables every handler reads,
//! and the names of the resources they derive from them.
//!
//! `template.yaml` sets exactly these variables on every function (a test checks it), and
//! `sluice run --backend aws` sets them from its own flags.

use std::time::Duration;

use crate::services::Settings;

/// The stack name: the prefix of every resource name (queues, functions).
pub const ENV_PREFIX: &str = "SLUICE_PREFIX";
/// The DynamoDB table that holds job records, ledgers and the job list.
pub const ENV_TABLE: &str = "SLUICE_TABLE";
/// The S3 bucket for results, claim-checked payloads, dead letters and input data.
pub const ENV_BUCKET: &str = "SLUICE_BUCKET";
/// The static control queue that carries daemon ticks.
pub const ENV_CONTROL_QUEUE_URL: &str = "SLUICE_CONTROL_QUEUE_URL";
/// Optional: milliseconds between a daemon's periodic ticks.
pub const ENV_TICK_INTERVAL_MS: &str = "SLUICE_TICK_INTERVAL_MS";
/// Optional: milliseconds a daemon lease lasts without renewal.
pub const ENV_LEASE_TTL_MS: &str = "SLUICE_LEASE_TTL_MS";
/// Optional: visibility timeout of job stage queues, in seconds (≥ 6 × the stage functions'
/// timeout in AWS).
pub const ENV_STAGE_VISIBILITY_S: &str = "SLUICE_STAGE_VISIBILITY_S";
/// Optional: receives before a stage message moves to its job's dead-letter queue.
pub const ENV_MAX_RECEIVE_COUNT: &str = "SLUICE_MAX_RECEIVE_COUNT";
/// Optional: the reserved concurrency all of sluice's stage functions may hold together.
pub const ENV_CONCURRENCY_BUDGET: &str = "SLUICE_CONCURRENCY_BUDGET";
/// Optional: a job running longer than this many seconds is reported overdue (the
/// `JobsOverdue` metric and its alarm).
pub const ENV_JOB_DEADLINE_S: &str = "SLUICE_JOB_DEADLINE_S";

/// Variables every function needs.
pub const REQUIRED_ENV: &[&str] = &[ENV_PREFIX, ENV_TABLE, ENV_BUCKET, ENV_CONTROL_QUEUE_URL];
/// Variables every function may be given; defaults apply when absent.
pub const OPTIONAL_ENV: &[&str] = &[
    ENV_TICK_INTERVAL_MS,
    ENV_LEASE_TTL_MS,
    ENV_STAGE_VISIBILITY_S,
    ENV_MAX_RECEIVE_COUNT,
    ENV_CONCURRENCY_BUDGET,
    ENV_JOB_DEADLINE_S,
];

/// The Lambda functions of a deployment, by their logical names; each is a binary of the
/// `handlers` package and is deployed as `{prefix}-{name}`.
pub const FUNCTIONS: &[&str] = &["api", "daemon", "sweeper", "source", "transform", "reduce"];

/// Account concurrency (AWS-FACTS.md: 1,000 per Region, soft) less the 100 that must stay
/// unreserved: the default budget for reserved concurrency.
pub const DEFAULT_CONCURRENCY_BUDGET: u32 = 900;
/// Default seconds after which a running job counts as overdue.
pub const DEFAULT_JOB_DEADLINE_S: u64 = 3_600;

/// The physical name of a logical function in a deployment.
pub fn function_name(prefix: &str, function: &str) -> String {
    format!("{prefix}-{function}")
}

/// The logical name of a deployed function, from its name or ARN; `None` if it is not one
/// of this deployment's.
pub fn logical_function<'a>(prefix: &str, name_or_arn: &'a str) -> Option<&'a str> {
    // arn:aws:lambda:region:account:function:name[:qualifier]
    let name = match name_or_arn.split_once(":function:") {
        Some((_, rest)) => rest.split(':').next().unwrap_or(rest),
        None => name_or_arn,
    };
    name.strip_prefix(prefix)?.strip_prefix('-')
}

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

/// A deployment's configuration, as its functions read it from their environment.
#[derive(Clone, Debug, PartialEq)]
pub struct AwsSettings {
    pub prefix: String,
    pub table: String,
    pub bucket: String,
    pub control_queue_url: String,
    pub tick_interval: Duration,
    pub lease_ttl: Duration,
    pub stage_visibility: Duration,
    pub max_receive_count: u32,
    pub concurrency_budget: u32,
    pub job_deadline: Duration,
}

impl AwsSettings {
    /// Defaults for a deployment named `prefix` (the control queue URL is found or made
    /// by whoever provisions it).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            table: format!("{prefix}-jobs"),
            bucket: format!("{prefix}-data"),
            control_queue_url: String::new(),
            tick_interval: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(15),
            // Six times the stage functions' 60 s timeout (AWS-FACTS.md).
            stage_visibility: Duration::from_secs(360),
            max_receive_count: 5,
            concurrency_budget: DEFAULT_CONCURRENCY_BUDGET,
            job_deadline: Duration::from_secs(DEFAULT_JOB_DEADLINE_S),
        }
    }

    /// Settings for a deployment whose functions run in a local ESM runtime (`sluice run
    /// --backend aws`, the tests): the embedded engine's short timings, since the runtime
    /// keeps running batches invisible with its heartbeat.
    pub fn local(prefix: &str) -> Self {
        let engine = Settings::default();
        Self {
            tick_interval: engine.tick_interval,
            lease_ttl: engine.lease_ttl,
            stage_visibility: engine.stage_visibility,
            max_receive_count: engine.max_receive_count,
            ..Self::new(prefix)
        }
    }

    /// Reads [`REQUIRED_ENV`] and [`OPTIONAL_ENV`] through `get` (`std::env::var` in a
    /// function), naming the variable in every error.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| {
            get(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| ConfigError {
                    name,
                    message: "is required".into(),
                })
        };
        let number = |name: &'static str, min: u64, max: u64| -> Result<Option<u64>, ConfigError> {
            let Some(raw) = get(name).filter(|v| !v.trim().is_empty()) else {
                return Ok(None);
            };
            let n: u64 = raw.trim().parse().map_err(|_| ConfigError {
                name,
                message: format!("must be a whole number, got {raw:?}"),
            })?;
            if !(min..=max).contains(&n) {
                return Err(ConfigError {
                    name,
                    message: format!("must be from {min} to {max}, got {n}"),
                });
            }
            Ok(Some(n))
        };
        let prefix = required(ENV_PREFIX)?;
        let mut s = Self::new(&prefix);
        s.table = required(ENV_TABLE)?;
        s.bucket = required(ENV_BUCKET)?;
        s.control_queue_url = required(ENV_CONTROL_QUEUE_URL)?;
        if let Some(ms) = number(ENV_TICK_INTERVAL_MS, 100, 900_000)? {
            s.tick_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = number(ENV_LEASE_TTL_MS, 100, 900_000)? {
            s.lease_ttl = Duration::from_millis(ms);
        }
        // SQS: 0 s to 12 h.
        if let Some(secs) = number(ENV_STAGE_VISIBILITY_S, 1, 43_200)? {
            s.stage_visibility = Duration::from_secs(secs);
        }
        // SQS redrive: 1 to 1,000.
        if let Some(n) = number(ENV_MAX_RECEIVE_COUNT, 1, 1_000)? {
            s.max_receive_count = n as u32;
        }
        if let Some(n) = number(ENV_CONCURRENCY_BUDGET, 0, 100_000)? {
            s.concurrency_budget = n as u32;
        }
        if let Some(secs) = number(ENV_JOB_DEADLINE_S, 1, 31_536_000)? {
            s.job_deadline = Duration::from_secs(secs);
        }
        Ok(s)
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The environment a function of this deployment is given: the inverse of
    /// [`AwsSettings::from_lookup`].
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        vec![
            (ENV_PREFIX, self.prefix.clone()),
            (ENV_TABLE, self.table.clone()),
            (ENV_BUCKET, self.bucket.clone()),
            (ENV_CONTROL_QUEUE_URL, self.control_queue_url.clone()),
            (
                ENV_TICK_INTERVAL_MS,
                self.tick_interval.as_millis().to_string(),
            ),
            (ENV_LEASE_TTL_MS, self.lease_ttl.as_millis().to_string()),
            (
                ENV_STAGE_VISIBILITY_S,
                self.stage_visibility.as_secs().to_string(),
            ),
            (ENV_MAX_RECEIVE_COUNT, self.max_receive_count.to_string()),
            (ENV_CONCURRENCY_BUDGET, self.concurrency_budget.to_string()),
            (ENV_JOB_DEADLINE_S, self.job_deadline.as_secs().to_string()),
        ]
    }

    /// The core's settings for this deployment. `emit_metrics`: print CloudWatch EMF lines
    /// (on Lambda; not in a CLI, whose standard output is the user's).
    pub fn settings(&self, emit_metrics: bool) -> Settings {
        Settings {
            prefix: self.prefix.clone(),
            control_queue_url: self.control_queue_url.clone(),
            tick_interval: self.tick_interval,
            lease_ttl: self.lease_ttl,
            stage_visibility: self.stage_visibility,
            max_receive_count: self.max_receive_count,
            emit_metrics,
            job_deadline: Some(self.job_deadline),
            concurrency_budget: Some(self.concurrency_budget),
            ..Settings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const BASE: &[(&str, &str)] = &[
        (ENV_PREFIX, "sl"),
        (ENV_TABLE, "sl-jobs"),
        (ENV_BUCKET, "sl-data"),
        (ENV_CONTROL_QUEUE_URL, "http://q/sl-control"),
    ];

    #[test]
    fn settings_round_trip_through_the_environment() {
        let mut s = AwsSettings::from_lookup(lookup(BASE)).unwrap();
        s.tick_interval = Duration::from_millis(1500);
        s.max_receive_count = 7;
        let env: Vec<(String, String)> = s
            .to_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(AwsSettings::from_lookup(lookup(&env)).unwrap(), s);
        let names: Vec<&str> = s.to_env().iter().map(|(k, _)| *k).collect();
        let declared: Vec<&str> = REQUIRED_ENV.iter().chain(OPTIONAL_ENV).copied().collect();
        assert_eq!(names, declared);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = AwsSettings::from_lookup(lookup(&BASE[1..])).unwrap_err();
        assert_eq!(e.name, ENV_PREFIX);
        let mut vars = BASE.to_vec();
        vars.push((ENV_MAX_RECEIVE_COUNT, "zero"));
        let e = AwsSettings::from_lookup(lookup(&vars)).unwrap_err();
        assert_eq!(e.name, ENV_MAX_RECEIVE_COUNT);
        assert!(e.to_string().contains("whole number"), "{e}");
        vars.pop();
        vars.push((ENV_STAGE_VISIBILITY_S, "50000"));
        let e = AwsSettings::from_lookup(lookup(&vars)).unwrap_err();
        assert_eq!(e.name, ENV_STAGE_VISIBILITY_S);
    }

    #[test]
    fn function_names_map_both_ways() {
        assert_eq!(function_name("sl", "feed"), "sl-feed");
        assert_eq!(logical_function("sl", "sl-feed"), Some("feed"));
        assert_eq!(
            logical_function(
                "sl",
                "arn:aws:lambda:us-east-1:123456789012:function:sl-count"
            ),
            Some("count")
        );
        assert_eq!(
            logical_function("sl", "arn:aws:lambda:us-east-1:1:function:sl-count:live"),
            Some("count")
        );
        assert_eq!(logical_function("sl", "other-feed"), None);
        assert_eq!(logical_function("sl", "slx-feed"), None);
    }
}
