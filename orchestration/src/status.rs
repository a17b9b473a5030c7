//! What a job looks like from outside: status, per-stage progress, timings, coverage.
//! Shared by `GET /jobs/{id}` and `sluice status`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::job::{JobId, JobStatus};
use crate::ledger::{Ledger, LedgerError};
use crate::policy::Policy;
use crate::ports::{QueueCounts, Telemetry};
use crate::record::JobRecord;
use crate::services::Services;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageProgress {
    pub stage: String,
    pub function: String,
    pub component: String,
    /// Partitions this stage must handle (feed tasks are not partitions: `None`).
    pub total: Option<u64>,
    /// Messages handled (the reduce: partitions recorded in the ledger).
    pub done: u64,
    /// Partitions that died at this stage.
    pub dead_lettered: u64,
    /// Approximate queue depths: hints only.
    pub visible: u64,
    pub in_flight: u64,
    pub invocations: u64,
    pub failed_messages: u64,
    pub throttles: u64,
    pub billed_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timings {
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// From the first tick to the result.
    pub run_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobView {
    pub job_id: JobId,
    #[serde(rename = "type")]
    pub job_type: String,
    pub params: Value,
    pub status: JobStatus,
    pub attempt: u32,
    pub policy: Policy,
    pub min_coverage: f64,
    pub total_partitions: Option<u64>,
    pub reduced_partitions: u64,
    pub stages: Vec<StageProgress>,
    pub timings: Timings,
    pub coverage: Option<f64>,
    pub dead_partitions: Vec<u64>,
    pub error: Option<String>,
    /// A composite job's parts, each a job of its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartView>,
    /// The Lambda cost of the invocations so far (`None` where no statistics are kept).
    pub cost: Option<crate::cost::LambdaCost>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartView {
    pub job_id: JobId,
    /// This job's submission started the part's computation (false: cached or shared).
    pub computed: bool,
}

pub async fn view(
    svc: &Services,
    telemetry: &dyn Telemetry,
    rec: &JobRecord,
) -> Result<JobView, LedgerError> {
    let ledger = Ledger {
        store: svc.store.as_ref(),
        job: rec.id.as_str(),
        attempt: rec.attempt,
        shards: svc.settings.aggregate_shards,
        keyed: None,
    };
    let reduced = ledger.reduced_count().await?;
    let mut dead_by_stage: BTreeMap<String, u64> = BTreeMap::new();
    for (_, stage) in ledger.dead_letters().await? {
        *dead_by_stage.entry(stage).or_default() += 1;
    }
    let stats = match telemetry.stage_stats(rec.id.as_str(), rec.attempt).await {
        Ok(stats) => stats,
        Err(e) => {
            tracing::debug!(job_id = %rec.id, error = %e, "no invocation statistics");
            Vec::new()
        }
    };
    let components: Vec<&'static str> = svc
        .registry
        .flow(&rec.request)
        .map(|f| f.stages.iter().map(|s| s.component).collect())
        .unwrap_or_default();
    let last = rec.stages.len().saturating_sub(1);
    let mut stages = Vec::with_capacity(rec.stages.len());
    for (i, stage) in rec.stages.iter().enumerate() {
        let counts = if rec.torn_down {
            QueueCounts::default()
        } else {
            svc.queues
                .counts(&stage.queue_url)
                .await
                .unwrap_or_default()
        };
        let s = stats
            .iter()
            .find(|s| s.stage == stage.name)
            .cloned()
            .unwrap_or_default();
        stages.push(StageProgress {
            stage: stage.name.clone(),
            function: stage.function.to_string(),
            component: components.get(i).copied().unwrap_or_default().to_owned(),
            total: if i == 0 { None } else { rec.total_partitions },
            done: if i == last { reduced } else { s.messages },
            dead_lettered: dead_by_stage.get(&stage.name).copied().unwrap_or(0),
            visible: counts.visible,
            in_flight: counts.in_flight,
            invocations: s.invocations,
            failed_messages: s.failed_messages,
            throttles: s.throttles,
            billed_ms: s.billed_ms,
        });
    }
    let outcome = rec.outcome.as_ref();
    Ok(JobView {
        job_id: rec.id.clone(),
        job_type: rec.request.job_type.clone(),
        params: rec.request.params.clone(),
        status: rec.status,
        attempt: rec.attempt,
        policy: rec.policy,
        min_coverage: rec.min_coverage,
        total_partitions: rec.total_partitions,
        reduced_partitions: reduced,
        stages,
        timings: Timings {
            created_ms: rec.created_ms,
            started_ms: rec.started_ms,
            finished_ms: rec.finished_ms,
            run_ms: rec
                .started_ms
                .zip(rec.finished_ms)
                .map(|(s, f)| f.saturating_sub(s)),
        },
        coverage: outcome.map(|o| o.coverage),
        dead_partitions: outcome
            .map(|o| o.dead_partitions.clone())
            .unwrap_or_default(),
        error: outcome.and_then(|o| o.error.clone()),
        parts: rec
            .parts
            .iter()
            .enumerate()
            .map(|(i, id)| PartView {
                job_id: id.clone(),
                computed: rec.parts_computed.get(i).copied().unwrap_or(false),
            })
            .collect(),
        cost: crate::cost::lambda_cost(&stats),
    })
}

/// For deployments without invocation statistics.
pub struct NoTelemetry;

#[async_trait::async_trait]
impl Telemetry for NoTelemetry {
    async fn stage_stats(
        &self,
        _job: &str,
        _attempt: u32,
    ) -> Result<Vec<crate::ports::StageStats>, crate::ports::TelemetryError> {
        Ok(Vec::new())
    }
}
