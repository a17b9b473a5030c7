//! What every handler is given: the ports, the settings, the job types, the faults.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::faults::Faults;
use crate::flow::Registry;
use crate::job::JobId;
use crate::ports::{
    Blobs, Clock, JobStore, Mappings, OutgoingMessage, QueueError, Queues, Telemetry,
};

/// Deployment settings. The defaults are the embedded engine's; the AWS deployment sets
/// them from its environment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Prefix of every resource name (queues): `sluice` locally, the stack name on AWS.
    pub prefix: String,
    /// The static control queue that carries daemon ticks.
    pub control_queue_url: String,
    /// Period of the daemon's scaling and recovery ticks (the paper used 5 s).
    pub tick_interval: Duration,
    /// How long a daemon's lease lasts without renewal: a crashed daemon's job is taken over
    /// this long after its last write.
    pub lease_ttl: Duration,
    /// Visibility timeout of job stage queues (AWS: at least 6 × the function timeout).
    pub stage_visibility: Duration,
    /// Receives before a message moves to the job's dead-letter queue.
    pub max_receive_count: u32,
    /// Aggregate shards per job: concurrent reduces contend on 1/shards of the aggregate.
    pub aggregate_shards: u32,
    /// Print CloudWatch EMF metric lines (on Lambda; never in the CLI, whose stdout is the
    /// user's).
    pub emit_metrics: bool,
    /// A job running longer than this is reported overdue (the `JobsOverdue` metric).
    pub job_deadline: Option<Duration>,
    /// Reserved concurrency all stage functions may hold together; `None`: the daemon sets
    /// none (the embedded engine's default, whose functions share the account's pool).
    pub concurrency_budget: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prefix: "sluice".into(),
            control_queue_url: String::new(),
            tick_interval: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(2),
            stage_visibility: Duration::from_secs(2),
            max_receive_count: 8,
            aggregate_shards: 8,
            emit_metrics: false,
            job_deadline: None,
            concurrency_budget: None,
        }
    }
}

/// A daemon tick, carried by the control queue. `seq` is set on the periodic chain (a stale
/// one is dropped); a nudge (`seq: None`) asks for one step now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tick {
    pub job: JobId,
    #[serde(default)]
    pub seq: Option<u64>,
}

#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn JobStore>,
    pub queues: Arc<dyn Queues>,
    pub blobs: Arc<dyn Blobs>,
    pub mappings: Arc<dyn Mappings>,
    /// Invocation statistics for the policy (CloudWatch's Lambda metrics on AWS).
    pub telemetry: Arc<dyn Telemetry>,
    pub clock: Arc<dyn Clock>,
    pub registry: Registry,
    pub settings: Settings,
    pub faults: Faults,
}

impl Services {
    pub async fn send_tick(&self, tick: &Tick, delay: Duration) -> Result<(), QueueError> {
        let body = serde_json::to_string(tick).map_err(|e| QueueError::Invalid(e.to_string()))?;
        self.queues
            .send(
                &self.settings.control_queue_url,
                vec![OutgoingMessage { body, delay }],
            )
            .await
    }

    /// Asks the job's daemon for a step now (completion, cancellation, a restart).
    pub async fn nudge(&self, job: &JobId) -> Result<(), QueueError> {
        self.send_tick(
            &Tick {
                job: job.clone(),
                seq: None,
            },
            Duration::ZERO,
        )
        .await
    }
}
