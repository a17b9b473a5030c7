//! The per-job daemon, run as ticks on the control queue. A tick takes the job's lease,
//! then observes, decides and acts: provision the job's queues and mappings, plan the source,
//! collect dead-lettered partitions, detect completion exactly, apply the policy, and tear
//! everything down at the end. Every write to the job record is fenced by the lease epoch,
//! so a daemon that stalls or dies is replaced and can no longer write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use rand::Rng;
use serde_json::json;
use tracing::{info, info_span, warn, Instrument};

use crate::components::SourceContext;
use crate::cost;
use crate::envelope::Envelope;
use crate::flow::{Flow, Function, Step};
use crate::job::{JobRequest, JobStatus};
use crate::ledger::{Ledger, LedgerError};
use crate::metrics;
use crate::policy::{Levers, Observation, StageObservation};
use crate::ports::{
    BlobError, DeadLetter, MappingError, OutgoingMessage, QueueError, QueueSpec, StageStats,
    StoreError,
};
use crate::record::{self, JobRecord, Lease, Outcome, StageRecord, Versioned};
use crate::reserve;
use crate::services::{Services, Tick};
use crate::submit::{submit, Disposition, SubmitError, SubmitOptions};
use crate::timeline;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another daemon holds the lease")]
    LeaseBusy,
    #[error("fenced: another daemon took the job over")]
    Fenced,
    #[error("injected daemon crash at checkpoint {0}")]
    InjectedCrash(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Envelope(#[from] crate::envelope::EnvelopeError),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("malformed tick: {0}")]
    MalformedTick(String),
    #[error(transparent)]
    Reserve(#[from] crate::reserve::ReserveError),
    #[error(transparent)]
    Keyed(#[from] crate::keyed::KeyedError),
}

/// The stage name under which a composite job's failed parts are dead-lettered.
const PART_STAGE: &str = "part";
/// Places in a tick where an injected crash may strike.
const CHECKPOINTS: u32 = 6;
/// Dead-letter messages collected per tick at most (the rest wait for the next tick).
const DLQ_DRAIN_PER_TICK: usize = 1_000;
/// A tick that failed for another reason comes back after this × its receive count.
const FAILED_TICK_BACKOFF: Duration = Duration::from_millis(500);
const MAX_FAILED_TICK_BACKOFF: Duration = Duration::from_secs(30);
/// How long a nudge that found the lease busy waits before asking again.
const BUSY_NUDGE_DELAY: Duration = Duration::from_secs(1);

struct Crash {
    at: Option<u32>,
    passed: u32,
}

impl Crash {
    fn checkpoint(&mut self) -> Result<(), DaemonError> {
        let here = self.passed;
        self.passed += 1;
        if self.at == Some(here) {
            return Err(DaemonError::InjectedCrash(here));
        }
        Ok(())
    }
}

pub struct Daemon {
    svc: Arc<Services>,
}

impl Daemon {
    pub fn new(svc: Arc<Services>) -> Self {
        Self { svc }
    }

    /// The Lambda handler for the control queue.
    pub async fn handle(&self, event: SqsEvent) -> Result<SqsBatchResponse, DaemonError> {
        let mut failures = Vec::new();
        // Failed ticks, by how soon they should come back.
        let mut retry: Vec<(String, Duration)> = Vec::new();
        for message in event.records {
            let id = message.message_id.unwrap_or_default();
            let receive_count: u32 = message
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            let result = match serde_json::from_str::<Tick>(message.body.as_deref().unwrap_or("")) {
                Ok(tick) => {
                    let span = info_span!("tick", job_id = %tick.job, seq = ?tick.seq);
                    self.tick(tick).instrument(span).await
                }
                Err(e) => Err(DaemonError::MalformedTick(e.to_string())),
            };
            let again = match result {
                Ok(()) => continue,
                // Another daemon holds the lease: ask again about when it ends.
                Err(DaemonError::LeaseBusy) => self.svc.settings.tick_interval,
                Err(e) => {
                    warn!(message_id = %id, error = %e, "tick failed");
                    (FAILED_TICK_BACKOFF * receive_count).min(MAX_FAILED_TICK_BACKOFF)
                }
            };
            if let Some(receipt) = message.receipt_handle {
                retry.push((receipt, again));
            }
            failures.push(id);
        }
        // A failed tick comes back after the control queue's visibility timeout, which in
        // AWS is long (≥ 6 × the daemon's timeout); a takeover should not wait that long.
        for (receipt, again) in retry {
            if let Err(e) = self
                .svc
                .queues
                .change_visibility(&self.svc.settings.control_queue_url, &receipt, again)
                .await
            {
                warn!(error = %e, "cannot shorten a failed tick's visibility");
            }
        }
        let mut response = SqsBatchResponse::default();
        response.set_failures(failures);
        Ok(response)
    }

    pub async fn tick(&self, tick: Tick) -> Result<(), DaemonError> {
        let svc = &self.svc;
        let mut crash = Crash {
            at: svc.faults.daemon_crash_at(CHECKPOINTS),
            passed: 0,
        };
        let Some(Versioned {
            record: rec,
            version,
        }) = record::load(svc.store.as_ref(), &tick.job).await?
        else {
            return Ok(());
        };
        if tick.seq.is_some_and(|seq| seq != rec.tick_seq) {
            return Ok(()); // a stale link of the chain: a newer one carries on
        }
        if rec.status.is_terminal() && rec.torn_down {
            return Ok(());
        }
        let now = svc.clock.now_ms();
        if rec.lease.expires_ms > now {
            return match tick.seq {
                // The chain tick must not be lost: fail it, so it is redelivered.
                Some(_) => Err(DaemonError::LeaseBusy),
                None => {
                    svc.send_tick(&tick, BUSY_NUDGE_DELAY).await?;
                    Ok(())
                }
            };
        }
        let chain_timeout = svc.settings.tick_interval.as_millis() as u64 * 4
            + svc.settings.lease_ttl.as_millis() as u64 * 2;
        let restart_chain =
            tick.seq.is_none() && now.saturating_sub(rec.last_tick_ms) > chain_timeout;
        let owner = format!("{:016x}", rand::rng().random::<u64>());
        let lease = Lease {
            owner,
            epoch: rec.lease.epoch + 1,
            expires_ms: now + svc.settings.lease_ttl.as_millis() as u64,
        };
        let mut taken = rec.clone();
        taken.lease = lease.clone();
        let version = match record::save(svc.store.as_ref(), &taken, version).await {
            Ok(v) => v,
            Err(StoreError::ConditionFailed(_)) if tick.seq.is_some() => {
                return Err(DaemonError::LeaseBusy)
            }
            Err(StoreError::ConditionFailed(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut job = Fenced {
            svc: svc.clone(),
            rec: taken,
            version,
            lease,
            dead_letters_seen: 0,
        };
        crash.checkpoint()?;
        job.step(&mut crash).await?;
        crash.checkpoint()?;
        job.emit_metrics();

        let finished = job.rec.status.is_terminal() && job.rec.torn_down;
        if !finished && (tick.seq.is_some() || restart_chain) {
            // Send the next link before recording it: if we die in between, this tick is
            // redelivered (its seq still current) and the unrecorded link is dropped as stale.
            let next = job.rec.tick_seq + 1;
            svc.send_tick(
                &Tick {
                    job: tick.job.clone(),
                    seq: Some(next),
                },
                svc.settings.tick_interval,
            )
            .await?;
            let now = svc.clock.now_ms();
            job.update(|r| {
                r.tick_seq = next;
                r.last_tick_ms = now;
                r.lease.expires_ms = 0;
            })
            .await
        } else {
            job.update(|r| r.lease.expires_ms = 0).await
        }
    }
}

/// Where a job's ledger stands at a tick.
enum Progress {
    /// Every partition is reduced or dead-lettered (`dead`: those never reduced).
    Complete { reduced: u64, dead: Vec<u64> },
    /// Not yet: `finished` partitions are reduced or dead-lettered so far.
    Running { finished: u64 },
}

/// A job record held under a lease: every write is conditional on the version read, and a
/// conflicting write by a newer lease holder fences this one out.
struct Fenced {
    svc: Arc<Services>,
    rec: JobRecord,
    version: u64,
    lease: Lease,
    /// Messages found in the job's dead-letter queue during this tick.
    dead_letters_seen: usize,
}

impl Fenced {
    /// The tick's CloudWatch metrics (EMF), when the deployment wants them.
    fn emit_metrics(&self) {
        let settings = &self.svc.settings;
        if !settings.emit_metrics {
            return;
        }
        let now = self.svc.clock.now_ms();
        let overdue = !self.rec.status.is_terminal()
            && settings.job_deadline.is_some_and(|deadline| {
                now.saturating_sub(self.rec.created_ms) > deadline.as_millis() as u64
            });
        metrics::emit(
            &settings.prefix,
            now,
            &[
                (
                    metrics::DEAD_LETTER_MESSAGES,
                    self.dead_letters_seen as f64,
                    "Count",
                ),
                (
                    metrics::JOBS_OVERDUE,
                    if overdue { 1.0 } else { 0.0 },
                    "Count",
                ),
            ],
            &[
                ("job_id", json!(self.rec.id)),
                ("attempt", json!(self.rec.attempt)),
                ("status", json!(self.rec.status)),
            ],
        );
    }

    async fn update(&mut self, change: impl Fn(&mut JobRecord)) -> Result<(), DaemonError> {
        let store = self.svc.store.as_ref();
        loop {
            let mut next = self.rec.clone();
            change(&mut next);
            if next.lease.expires_ms != 0 {
                next.lease.expires_ms =
                    self.svc.clock.now_ms() + self.svc.settings.lease_ttl.as_millis() as u64;
            }
            match record::save(store, &next, self.version).await {
                Ok(version) => {
                    self.rec = next;
                    self.version = version;
                    return Ok(());
                }
                Err(StoreError::ConditionFailed(_)) => {
                    // Someone else wrote: a newer daemon (fenced) or a user (cancel): re-read.
                    let Some(current) = record::load(store, &self.rec.id).await? else {
                        return Err(DaemonError::Fenced);
                    };
                    if current.record.lease.epoch != self.lease.epoch
                        || current.record.lease.owner != self.lease.owner
                    {
                        return Err(DaemonError::Fenced);
                    }
                    self.rec = current.record;
                    self.version = current.version;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Renews the lease once a slow tick has used half of it, so that a nudge cannot take
    /// over a tick that is still working (under load one tick can outlast a short lease,
    /// and two ticks that keep fencing each other never finish). A fast tick writes
    /// nothing here.
    async fn keep_lease(&mut self) -> Result<(), DaemonError> {
        let half = self.svc.settings.lease_ttl.as_millis() as u64 / 2;
        if self.svc.clock.now_ms() + half >= self.rec.lease.expires_ms {
            self.update(|_| {}).await?;
        }
        Ok(())
    }

    fn ledger(&self) -> Ledger<'_> {
        Ledger {
            store: self.svc.store.as_ref(),
            job: self.rec.id.as_str(),
            attempt: self.rec.attempt,
            shards: self.svc.settings.aggregate_shards,
            keyed: None,
        }
    }

    /// The ledger that can commit a keyed flow's partials.
    fn keyed_ledger<'b>(&'b self, flow: &'b Flow) -> Ledger<'b> {
        Ledger {
            keyed: flow.keyed.as_ref().map(|spec| crate::ledger::Keyed {
                spec,
                blobs: self.svc.blobs.as_ref(),
                partitions: self.rec.shuffle_partitions.unwrap_or(1),
            }),
            ..self.ledger()
        }
    }

    fn queue_name(&self, stage: &str) -> String {
        format!(
            "{}-{}-{}-{stage}",
            self.svc.settings.prefix,
            self.rec.id.short(),
            self.rec.attempt
        )
    }

    async fn step(&mut self, crash: &mut Crash) -> Result<(), DaemonError> {
        if self.rec.status.is_terminal() {
            return self.teardown().await;
        }
        let flow = match self.svc.registry.flow(&self.rec.request) {
            Ok(flow) => flow,
            Err(e) => {
                return self
                    .finish(JobStatus::Failed, None, Some(format!("invalid job: {e}")))
                    .await
            }
        };
        if self.rec.cancel_requested {
            return self
                .finish(JobStatus::Cancelled, None, Some("cancelled".into()))
                .await;
        }
        match self.svc.registry.parts(&self.rec.request) {
            Ok(Some(parts)) => return self.step_composite(&flow, parts, crash).await,
            Ok(None) => {}
            Err(e) => {
                return self
                    .finish(JobStatus::Failed, None, Some(format!("invalid job: {e}")))
                    .await
            }
        }
        self.provision(&flow).await?;
        crash.checkpoint()?;
        self.keep_lease().await?;
        if !self.rec.planned {
            self.plan(&flow).await?;
            crash.checkpoint()?;
            self.keep_lease().await?;
        }
        if let Some(r) = self.drain_dead_letters(&flow).await? {
            let error =
                format!("reduce partition {r} of the shuffle could not be merged (dead-lettered)");
            return self.finish(JobStatus::Failed, None, Some(error)).await;
        }
        crash.checkpoint()?;
        self.keep_lease().await?;
        let mut finished = 0;
        if self.rec.planned {
            match self.completion().await? {
                Progress::Complete { reduced, dead } if flow.keyed.is_some() => {
                    if self.merge(&flow, reduced, dead).await? {
                        return Ok(());
                    }
                    finished = self.rec.total_partitions.unwrap_or(0);
                }
                Progress::Complete { reduced, dead } => {
                    return self.complete(&flow, reduced, dead, None).await
                }
                Progress::Running { finished: f } => finished = f,
            }
        }
        self.apply_policy(&flow, finished).await
    }

    /// A keyed job whose input partitions are all in: merge its reduce partitions (merge
    /// tasks on the merge stage; inline for a composite, which has no stages), then
    /// complete with the merged result. True when the job has ended.
    async fn merge(
        &mut self,
        flow: &Flow,
        reduced: u64,
        dead: Vec<u64>,
    ) -> Result<bool, DaemonError> {
        let total = self.rec.total_partitions.unwrap_or(0);
        if !dead.is_empty() && (reduced as f64) < self.rec.min_coverage * total as f64 {
            // It will fail on coverage: no point merging.
            self.complete(flow, reduced, dead, None).await?;
            return Ok(true);
        }
        let Some(spec) = flow.keyed.as_ref() else {
            return Ok(false);
        };
        let r = self.rec.shuffle_partitions.unwrap_or(1);
        // The last merge task writes the result (the k-way merge of the R parts is O(keys):
        // a function with a merge's timeout does it, not a tick).
        if let Some(result) = self.ledger().result().await? {
            self.complete(flow, reduced, dead, Some(result)).await?;
            return Ok(true);
        }
        let id = self.rec.id.to_string();
        let attempt = self.rec.attempt;
        let merge_stage = flow.merge_stage().map(|s| s.name.clone());
        let queue = merge_stage.as_ref().and_then(|name| {
            self.rec
                .stages
                .iter()
                .find(|s| &s.name == name)
                .map(|s| s.queue_url.clone())
        });
        if self.rec.merging && queue.is_some() {
            // Waiting for the merge tasks, the last of which writes the result.
            return Ok(false);
        }
        let mut merged = self.ledger().merged().await?;
        let deltas = self.ledger().deltas().await?;
        let Some(queue) = queue else {
            // A composite: its parts are few and small, so merge here.
            let blobs = self.svc.blobs.as_ref();
            let missing: Vec<u32> = (0..r).filter(|p| !merged.contains_key(p)).collect();
            for p in missing {
                let summaries =
                    crate::keyed::merge_reduce_partition(blobs, spec, &deltas, &id, attempt, p)
                        .await?;
                self.ledger().record_merged(p, &summaries).await?;
                merged.insert(p, summaries);
            }
            let result = crate::keyed::finish_fields(blobs, spec, &merged, &id).await?;
            self.complete(flow, reduced, dead, Some(result)).await?;
            return Ok(true);
        };
        let manifest = format!(
            "{}manifest.json",
            crate::keyed::shuffle_prefix(&id, attempt)
        );
        let bytes = serde_json::to_vec(&deltas).map_err(|e| {
            crate::envelope::EnvelopeError::Malformed(format!("merge manifest: {e}"))
        })?;
        self.svc.blobs.put(&manifest, bytes).await?;
        let mut messages = Vec::with_capacity(r as usize);
        for p in (0..r).filter(|p| !merged.contains_key(p)) {
            let envelope = Envelope {
                job: id.clone(),
                attempt,
                stage: merge_stage.clone().unwrap_or_default(),
                partition: u64::from(p),
                payload: Some(json!(crate::worker::MergeTask {
                    manifest: manifest.clone(),
                    r: p,
                })),
                payload_ref: None,
            };
            messages.push(OutgoingMessage::new(
                envelope.encode(self.svc.blobs.as_ref()).await?,
            ));
        }
        // Re-sent if we die before recording `merging`: a repeated task rewrites the same
        // part and finds its marker written.
        self.svc.queues.send(&queue, messages).await?;
        self.update(|r| r.merging = true).await?;
        info!(job_id = %self.rec.id, partitions = r, deltas = deltas.len(), "merging");
        Ok(false)
    }

    /// A composite job runs no stages of its own: its parts are jobs (submitted here, so
    /// cached and shared like any request), and each finished part is folded into this
    /// job's ledger as one partition, exactly once.
    async fn step_composite(
        &mut self,
        flow: &Flow,
        parts: Vec<JobRequest>,
        crash: &mut Crash,
    ) -> Result<(), DaemonError> {
        if !self.rec.planned {
            let options = SubmitOptions {
                policy: self.rec.policy,
                min_coverage: self.rec.min_coverage,
            };
            let mut ids = Vec::with_capacity(parts.len());
            let mut computed = Vec::with_capacity(parts.len());
            for part in &parts {
                let submission = submit(&self.svc, part, &options).await?;
                computed.push(matches!(
                    submission.disposition,
                    Disposition::Created | Disposition::Restarted
                ));
                ids.push(submission.id);
            }
            crash.checkpoint()?;
            let now = self.svc.clock.now_ms();
            let total = ids.len() as u64;
            self.update(move |r| {
                r.parts = ids.clone();
                r.parts_computed = computed.clone();
                r.shuffle_partitions = Some(1);
                r.total_partitions = Some(total);
                r.planned = true;
                r.status = JobStatus::Running;
                r.started_ms.get_or_insert(now);
            })
            .await?;
            info!(job_id = %self.rec.id, parts = total, "submitted parts");
        }
        let Some(reduce) = flow.reduce().cloned() else {
            return self
                .finish(JobStatus::Failed, None, Some("flow has no reduce".into()))
                .await;
        };
        let parts = self.rec.parts.clone();
        for (i, id) in parts.iter().enumerate() {
            let ledger = self.ledger();
            if ledger.is_reduced(i as u64).await? {
                continue;
            }
            let Some(part) = record::load(self.svc.store.as_ref(), id).await? else {
                ledger.record_dead(PART_STAGE, [i as u64]).await?;
                continue;
            };
            let part = part.record;
            match (part.status, part.outcome.and_then(|o| o.result)) {
                (JobStatus::Done, Some(mut result)) => {
                    if let Some(spec) = &flow.keyed {
                        refer_to_keyed_results(spec, &mut result);
                    }
                    self.keyed_ledger(flow)
                        .commit(reduce.as_ref(), vec![(i as u64, result)])
                        .await?;
                }
                (status, _) if status.is_terminal() => {
                    warn!(job_id = %self.rec.id, part = %id, %status, "part did not succeed");
                    ledger.record_dead(PART_STAGE, [i as u64]).await?;
                }
                _ => {}
            }
        }
        crash.checkpoint()?;
        if let Progress::Complete { reduced, dead } = self.completion().await? {
            if flow.keyed.is_some() {
                self.merge(flow, reduced, dead).await?;
                return Ok(());
            }
            return self.complete(flow, reduced, dead, None).await;
        }
        Ok(())
    }

    async fn provision(&mut self, flow: &Flow) -> Result<(), DaemonError> {
        let queues = self.svc.queues.clone();
        let settings = &self.svc.settings;
        if self.rec.dlq_url.is_none() || self.rec.stages.len() != flow.stages.len() {
            let dlq_url = queues
                .create_queue(&QueueSpec {
                    name: self.queue_name("dlq"),
                    // Long enough that the daemon's reads of the DLQ never see a repeat.
                    visibility_timeout: Duration::from_secs(60),
                    dead_letter: None,
                })
                .await?;
            let mut stages = Vec::with_capacity(flow.stages.len());
            for stage in &flow.stages {
                let queue_url = queues
                    .create_queue(&QueueSpec {
                        name: self.queue_name(&stage.name),
                        visibility_timeout: settings.stage_visibility,
                        dead_letter: Some(DeadLetter {
                            queue_url: dlq_url.clone(),
                            max_receive_count: settings.max_receive_count,
                        }),
                    })
                    .await?;
                stages.push(StageRecord {
                    name: stage.name.clone(),
                    function: stage.function,
                    queue_url,
                    mapping_id: None,
                    levers: None,
                });
            }
            let now = self.svc.clock.now_ms();
            self.update(move |r| {
                r.dlq_url = Some(dlq_url.clone());
                r.stages = stages.clone();
                r.status = JobStatus::Running;
                r.started_ms.get_or_insert(now);
            })
            .await?;
            info!(job_id = %self.rec.id, attempt = self.rec.attempt, "provisioned queues");
        }
        if self.rec.stages.iter().any(|s| s.mapping_id.is_none()) {
            let decision = self
                .rec
                .policy
                .decide(&self.observation(flow, false, 0).await?);
            let levers = self.reserve(decision).await?;
            let mut stages = self.rec.stages.clone();
            for (stage, levers) in stages.iter_mut().zip(levers) {
                if stage.mapping_id.is_some() {
                    continue;
                }
                // A mapping created by a tick that died before recording it is found again.
                let existing = self
                    .svc
                    .mappings
                    .list_mappings(Some(&stage.queue_url))
                    .await?;
                let mapping = match existing
                    .into_iter()
                    .find(|m| m.function == stage.function.as_str())
                {
                    Some(m) => m,
                    None => {
                        let tags = BTreeMap::from([
                            ("sluice:job".to_owned(), self.rec.id.to_string()),
                            ("sluice:attempt".to_owned(), self.rec.attempt.to_string()),
                            ("sluice:stage".to_owned(), stage.name.clone()),
                        ]);
                        self.svc
                            .mappings
                            .create_mapping(
                                &stage.queue_url,
                                stage.function.as_str(),
                                levers.mapping_config(),
                                tags,
                            )
                            .await?
                    }
                };
                stage.mapping_id = Some(mapping.id);
                stage.levers = Some(levers);
            }
            self.update(move |r| r.stages = stages.clone()).await?;
        }
        Ok(())
    }

    async fn plan(&mut self, flow: &Flow) -> Result<(), DaemonError> {
        let Some(source) = flow.source() else {
            return self
                .finish(JobStatus::Failed, None, Some("flow has no source".into()))
                .await;
        };
        let ctx = SourceContext {
            blobs: self.svc.blobs.clone(),
        };
        let plan = match source.plan(&ctx).await {
            Ok(plan) => plan,
            Err(e) => {
                return self
                    .finish(
                        JobStatus::Failed,
                        None,
                        Some(format!("planning failed: {e}")),
                    )
                    .await
            }
        };
        let total = plan.total_partitions;
        let shuffle = flow.keyed.as_ref().map(|k| k.partitions(plan.input_bytes));
        self.update(|r| {
            r.total_partitions = Some(total);
            r.shuffle_partitions = shuffle;
        })
        .await?;
        let (Some(feed), Some(first)) = (self.rec.stages.first(), flow.stages.first()) else {
            return Ok(());
        };
        let mut messages = Vec::with_capacity(plan.tasks.len());
        for task in &plan.tasks {
            let envelope = Envelope {
                job: self.rec.id.to_string(),
                attempt: self.rec.attempt,
                stage: first.name.clone(),
                partition: task.first,
                payload: Some(json!(task)),
                payload_ref: None,
            };
            messages.push(OutgoingMessage::new(
                envelope.encode(self.svc.blobs.as_ref()).await?,
            ));
        }
        // Re-sent in full if we die before recording `planned`: the ledger drops repeats.
        self.svc.queues.send(&feed.queue_url, messages).await?;
        self.update(|r| r.planned = true).await?;
        info!(job_id = %self.rec.id, total_partitions = total, tasks = plan.tasks.len(), "planned");
        Ok(())
    }

    /// Moves dead-lettered messages into the ledger's dead set (and the blob store, for
    /// people to inspect), then deletes them from the DLQ.
    /// Returns a reduce partition whose merge task was dead-lettered: the job cannot end
    /// with a whole result.
    async fn drain_dead_letters(&mut self, flow: &Flow) -> Result<Option<u64>, DaemonError> {
        let Some(dlq) = self.rec.dlq_url.clone() else {
            return Ok(None);
        };
        let mut drained = 0;
        let mut merge_failed = None;
        while drained < DLQ_DRAIN_PER_TICK {
            let batch = self
                .svc
                .queues
                .receive(&dlq, 10, Duration::ZERO, None)
                .await?;
            if batch.is_empty() {
                break;
            }
            drained += batch.len();
            self.dead_letters_seen += batch.len();
            let mut dead: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for m in &batch {
                match Envelope::parse(&m.body) {
                    Ok(env) if flow.merge_stage().is_some_and(|m| m.name == env.stage) => {
                        warn!(job_id = %self.rec.id, r = env.partition, "merge task dead-lettered");
                        merge_failed = Some(env.partition);
                    }
                    Ok(env) => {
                        let is_source = matches!(
                            flow.stage(&env.stage).map(|(_, s)| &s.step),
                            Some(Step::Source(_))
                        );
                        let count = if is_source {
                            env.payload
                                .as_ref()
                                .and_then(|p| p.get("count"))
                                .and_then(|c| c.as_u64())
                                .unwrap_or(1)
                        } else {
                            1
                        };
                        warn!(job_id = %self.rec.id, stage = %env.stage, partition = env.partition, count, "dead-lettered");
                        dead.entry(env.stage.clone())
                            .or_default()
                            .extend(env.partition..env.partition.saturating_add(count));
                    }
                    Err(e) => warn!(job_id = %self.rec.id, error = %e, "unreadable dead letter"),
                }
                let key = format!(
                    "dead/{}/{}/{}.json",
                    self.rec.id, self.rec.attempt, m.message_id
                );
                self.svc
                    .blobs
                    .put(&key, m.body.clone().into_bytes())
                    .await?;
            }
            for (stage, partitions) in dead {
                self.ledger().record_dead(&stage, partitions).await?;
            }
            self.svc
                .queues
                .delete(&dlq, batch.into_iter().map(|m| m.receipt_handle).collect())
                .await?;
        }
        Ok(merge_failed)
    }

    /// Exact completion: the ledger's reduced partitions plus the dead-lettered partitions
    /// that were never reduced equal the planned total. Otherwise, how far it has come
    /// (what the policy's observation needs, read here once per tick).
    async fn completion(&self) -> Result<Progress, DaemonError> {
        let Some(total) = self.rec.total_partitions else {
            return Ok(Progress::Running { finished: 0 });
        };
        let ledger = self.ledger();
        let reduced = ledger.reduced_count().await?;
        let dead_all = ledger.dead_partitions().await?;
        if reduced + (dead_all.len() as u64) < total {
            return Ok(Progress::Running {
                finished: reduced + dead_all.len() as u64,
            });
        }
        let mut dead = Vec::new();
        for p in dead_all {
            if p < total && !ledger.is_reduced(p).await? {
                dead.push(p);
            }
        }
        let finished = reduced + dead.len() as u64;
        Ok(if finished == total {
            Progress::Complete { reduced, dead }
        } else {
            Progress::Running { finished }
        })
    }

    async fn complete(
        &mut self,
        flow: &Flow,
        reduced: u64,
        dead: Vec<u64>,
        keyed: Option<BTreeMap<String, crate::keyed::Summary>>,
    ) -> Result<(), DaemonError> {
        let Some(reduce) = flow.reduce() else {
            return self
                .finish(JobStatus::Failed, None, Some("flow has no reduce".into()))
                .await;
        };
        let (_, mut aggregate) = self.ledger().totals(reduce.as_ref()).await?;
        if let (Some(object), Some(keyed)) = (aggregate.as_object_mut(), keyed) {
            for (field, summary) in keyed {
                object.insert(field, summary.to_result());
            }
        }
        let total = self.rec.total_partitions.unwrap_or(0);
        let coverage = if total == 0 {
            1.0
        } else {
            reduced as f64 / total as f64
        };
        let outcome = Outcome {
            result: Some(aggregate),
            total_partitions: total,
            reduced_partitions: reduced,
            coverage,
            dead_partitions: dead.clone(),
            error: None,
        };
        if dead.is_empty() || coverage >= self.rec.min_coverage {
            return self.finish_with(JobStatus::Done, outcome).await;
        }
        const SHOWN: usize = 20;
        let shown: Vec<String> = dead.iter().take(SHOWN).map(u64::to_string).collect();
        let more = if dead.len() > SHOWN {
            format!(" and {} more", dead.len() - SHOWN)
        } else {
            String::new()
        };
        let mut error = format!(
            "{} of {total} partitions were dead-lettered (partitions {}{more}); coverage {coverage:.4} is below min_coverage {}",
            dead.len(),
            shown.join(", "),
            self.rec.min_coverage
        );
        // A composite's partitions are jobs: say why each failed part failed.
        for p in dead.iter().take(SHOWN) {
            let Some(part) = self.rec.parts.get(*p as usize) else {
                continue;
            };
            let why = match record::load(self.svc.store.as_ref(), part).await? {
                Some(v) => v.record.outcome.and_then(|o| o.error).unwrap_or_default(),
                None => "the part's job is gone".into(),
            };
            error.push_str(&format!("; part {p} (job {part}): {why}"));
        }
        self.finish_with(
            JobStatus::Failed,
            Outcome {
                error: Some(error),
                ..outcome
            },
        )
        .await
    }

    async fn finish(
        &mut self,
        status: JobStatus,
        result: Option<serde_json::Value>,
        error: Option<String>,
    ) -> Result<(), DaemonError> {
        let total = self.rec.total_partitions.unwrap_or(0);
        let outcome = Outcome {
            result,
            total_partitions: total,
            reduced_partitions: 0,
            coverage: 0.0,
            dead_partitions: Vec::new(),
            error,
        };
        self.finish_with(status, outcome).await
    }

    async fn finish_with(
        &mut self,
        status: JobStatus,
        outcome: Outcome,
    ) -> Result<(), DaemonError> {
        let document = json!({
            "job_id": self.rec.id,
            "request": self.rec.request,
            "status": status,
            "outcome": outcome,
        });
        let bytes = serde_json::to_vec_pretty(&document).unwrap_or_default();
        self.svc
            .blobs
            .put(&format!("results/{}.json", self.rec.id), bytes)
            .await?;
        let now = self.svc.clock.now_ms();
        self.update(|r| {
            r.status = status;
            r.outcome = Some(outcome.clone());
            r.finished_ms = Some(now);
        })
        .await?;
        info!(job_id = %self.rec.id, %status, coverage = outcome.coverage, "job finished");
        self.teardown().await
    }

    /// Deletes the job's mappings, queues and claim-checked payloads. Idempotent.
    async fn teardown(&mut self) -> Result<(), DaemonError> {
        if self.rec.torn_down {
            return Ok(());
        }
        for stage in &self.rec.stages {
            for m in self
                .svc
                .mappings
                .list_mappings(Some(&stage.queue_url))
                .await?
            {
                self.svc.mappings.delete_mapping(&m.id).await?;
            }
            if let Some(id) = &stage.mapping_id {
                self.svc.mappings.delete_mapping(id).await?;
            }
        }
        for stage in &self.rec.stages {
            self.svc.queues.delete_queue(&stage.queue_url).await?;
        }
        if let Some(dlq) = &self.rec.dlq_url {
            self.svc.queues.delete_queue(dlq).await?;
        }
        if self.svc.settings.concurrency_budget.is_some()
            && reserve::release(&self.svc, self.rec.id.as_str(), self.rec.attempt).await?
        {
            reserve::apply(&self.svc, &reserve::distinct(&self.stage_functions())).await?;
        }
        let payloads = format!("payloads/{}/{}/", self.rec.id, self.rec.attempt);
        let shuffle = crate::keyed::shuffle_prefix(self.rec.id.as_str(), self.rec.attempt);
        for prefix in [payloads, shuffle] {
            for key in self.svc.blobs.list(&prefix).await? {
                self.svc.blobs.delete(&key).await?;
            }
        }
        self.update(|r| r.torn_down = true).await?;
        info!(job_id = %self.rec.id, "torn down");
        Ok(())
    }

    /// The function of each stage.
    fn stage_functions(&self) -> Vec<Function> {
        self.rec.stages.iter().map(|s| s.function).collect()
    }

    /// Takes this job's grants of its stage functions' reserved concurrency for what the
    /// policy asks and fits the levers into them (`reserve::steer`), so no mapping runs
    /// above what its function may run; a job waiting for admission gets its mappings
    /// disabled.
    async fn reserve(&self, mut levers: Vec<Levers>) -> Result<Vec<Levers>, DaemonError> {
        if let Some(budget) = self.svc.settings.concurrency_budget {
            reserve::steer(
                &self.svc,
                self.rec.id.as_str(),
                self.rec.attempt,
                &self.stage_functions(),
                &mut levers,
                budget,
            )
            .await?;
        }
        Ok(levers)
    }

    /// What the policy sees: with `with_counts`, the queues, the invocation statistics and
    /// `finished` partitions (from [`Self::completion`]); without (provisioning), the flow.
    async fn observation(
        &self,
        flow: &Flow,
        with_counts: bool,
        finished: u64,
    ) -> Result<Observation, DaemonError> {
        // Throughput per stage from the invocation records, where the deployment keeps
        // them; without them the policy assumes.
        let stats = if with_counts {
            match self
                .svc
                .telemetry
                .stage_stats(self.rec.id.as_str(), self.rec.attempt)
                .await
            {
                Ok(stats) => stats,
                Err(e) => {
                    warn!(job_id = %self.rec.id, error = %e, "no invocation statistics");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let mut stages = Vec::with_capacity(self.rec.stages.len());
        for (record, stage) in self.rec.stages.iter().zip(&flow.stages) {
            let counts = if with_counts {
                self.svc.queues.counts(&record.queue_url).await?
            } else {
                Default::default()
            };
            let throughput = stats
                .iter()
                .find(|s| s.stage == record.name)
                .and_then(StageStats::throughput);
            stages.push(StageObservation {
                name: record.name.clone(),
                is_source: matches!(stage.step, Step::Source(_)),
                counts,
                throughput,
                memory_mb: cost::memory_mb(record.function.as_str()),
            });
        }
        let now = self.svc.clock.now_ms();
        let started = self.rec.started_ms.unwrap_or(now);
        Ok(Observation {
            job_size: flow.size,
            total_partitions: self.rec.total_partitions,
            finished_partitions: finished,
            elapsed_s: now.saturating_sub(started) as f64 / 1000.0,
            stages,
        })
    }

    async fn apply_policy(&mut self, flow: &Flow, finished: u64) -> Result<(), DaemonError> {
        let observation = self.observation(flow, true, finished).await?;
        let decision = self.rec.policy.decide(&observation);
        let decision = self.reserve(decision).await?;
        let (store, now) = (self.svc.store.as_ref(), self.svc.clock.now_ms());
        timeline::record(
            store,
            &self.rec.id,
            self.rec.attempt,
            now,
            &observation,
            &decision,
        )
        .await;
        let previous: Vec<Option<Levers>> = self.rec.stages.iter().map(|s| s.levers).collect();
        let mut stages = self.rec.stages.clone();
        let mut changed = false;
        for (stage, levers) in stages.iter_mut().zip(&decision) {
            let (Some(id), false) = (&stage.mapping_id, stage.levers == Some(*levers)) else {
                continue;
            };
            self.svc
                .mappings
                .update_mapping(id, levers.mapping_config())
                .await?;
            stage.levers = Some(*levers);
            changed = true;
        }
        if changed {
            self.update(move |r| r.stages = stages.clone()).await?;
        }
        if self.svc.settings.concurrency_budget.is_some() {
            let in_flight: Vec<u64> = observation
                .stages
                .iter()
                .map(|s| s.counts.in_flight)
                .collect();
            reserve::settle(
                &self.svc,
                self.rec.id.as_str(),
                self.rec.attempt,
                &self.stage_functions(),
                &previous,
                &decision,
                &in_flight,
            )
            .await?;
        }
        Ok(())
    }
}

/// A composite's part result: its keyed summaries become references to the part's sorted
/// result objects, which the composite's merge reads (the summaries are not the data).
fn refer_to_keyed_results(spec: &crate::keyed::Spec, result: &mut serde_json::Value) {
    let mut delta = crate::keyed::Delta::default();
    if let Some(object) = result.as_object_mut() {
        for field in &spec.fields {
            let summary = object
                .get(&field.name)
                .and_then(crate::keyed::Summary::from_result);
            if let Some(summary) = summary {
                object.remove(&field.name);
                delta.segments.push(crate::keyed::Segments {
                    field: field.name.clone(),
                    object: summary.by_key,
                    offsets: vec![0, summary.bytes],
                    jsonl: true,
                });
            }
        }
        if !delta.is_empty() {
            object.insert(crate::keyed::SHUFFLE_FIELD.into(), json!(delta));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use serde_json::json;

    use super::*;
    use crate::faults::Faults;
    use crate::flow::Registry;
    use crate::job::JobRequest;
    use crate::local::{FileBlobs, SqliteJobStore, SqliteMappings, SqliteQueues};
    use crate::ports::{Clock, QueueSpec, Queues};
    use crate::services::Settings;
    use crate::submit::{submit, SubmitOptions};

    struct ManualClock(AtomicU64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    async fn services(dir: &std::path::Path, clock: Arc<ManualClock>) -> Arc<Services> {
        let queues = Arc::new(SqliteQueues::open(&dir.join("q.db")).unwrap());
        let control = queues
            .create_queue(&QueueSpec {
                name: "control".into(),
                visibility_timeout: Duration::from_secs(1),
                dead_letter: None,
            })
            .await
            .unwrap();
        Arc::new(Services {
            store: Arc::new(SqliteJobStore::open(&dir.join("s.db")).unwrap()),
            queues,
            blobs: Arc::new(FileBlobs::open(dir.join("blobs")).unwrap()),
            mappings: Arc::new(SqliteMappings::open(&dir.join("m.db")).unwrap()),
            telemetry: Arc::new(crate::status::NoTelemetry),
            clock,
            registry: Registry::default(),
            settings: Settings {
                control_queue_url: control,
                ..Settings::default()
            },
            faults: Faults::default(),
        })
    }

    async fn job(svc: &Services) -> crate::job::JobId {
        let request = JobRequest {
            job_type: "wordcount".into(),
            params: json!({"messages": 50}),
        };
        submit(svc, &request, &SubmitOptions::default())
            .await
            .unwrap()
            .id
    }

    /// A daemon holding the job's lease, as if it had just taken it.
    async fn holder(svc: &Arc<Services>, id: &crate::job::JobId, owner: &str) -> Fenced {
        let v = record::load(svc.store.as_ref(), id).await.unwrap().unwrap();
        let lease = Lease {
            owner: owner.into(),
            epoch: v.record.lease.epoch + 1,
            expires_ms: 1_002_000,
        };
        let mut rec = v.record;
        rec.lease = lease.clone();
        let version = record::save(svc.store.as_ref(), &rec, v.version)
            .await
            .unwrap();
        Fenced {
            svc: svc.clone(),
            rec,
            version,
            lease,
            dead_letters_seen: 0,
        }
    }

    #[tokio::test]
    async fn a_zombie_daemon_is_fenced_out() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicU64::new(1_000_000)));
        let svc = services(dir.path(), clock.clone()).await;
        let id = job(&svc).await;
        // Daemon A takes the lease, stalls past it, and daemon B takes over.
        let mut zombie = holder(&svc, &id, "a").await;
        holder(&svc, &id, "b").await;

        let err = zombie.update(|r| r.planned = true).await.unwrap_err();
        assert!(matches!(err, DaemonError::Fenced), "{err}");
        let now = record::load(svc.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap()
            .record;
        assert!(!now.planned, "the zombie's write did not land");
        assert_eq!(now.lease.owner, "b");
    }

    #[tokio::test]
    async fn a_slow_tick_renews_its_lease_and_a_fast_one_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicU64::new(1_000_000)));
        let svc = services(dir.path(), clock.clone()).await;
        let id = job(&svc).await;
        let mut tick = holder(&svc, &id, "a").await; // lease until 1,002,000
        let version = tick.version;
        tick.keep_lease().await.unwrap();
        assert_eq!(tick.version, version, "a fresh lease is not written");
        // Half the 2 s lease gone: renewed for another 2 s from now.
        clock.0.store(1_001_200, Ordering::SeqCst);
        tick.keep_lease().await.unwrap();
        assert!(tick.version > version);
        let stored = record::load(svc.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap()
            .record;
        assert_eq!(stored.lease.expires_ms, 1_003_200);
        assert_eq!(stored.lease.owner, "a");
        // Once someone else holds the lease, renewing fences this tick.
        holder(&svc, &id, "b").await;
        clock.0.store(1_002_500, Ordering::SeqCst);
        let err = tick.keep_lease().await.unwrap_err();
        assert!(matches!(err, DaemonError::Fenced), "{err}");
    }

    #[tokio::test]
    async fn a_write_by_someone_else_is_merged_not_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicU64::new(1_000_000)));
        let svc = services(dir.path(), clock.clone()).await;
        let id = job(&svc).await;
        let mut daemon = holder(&svc, &id, "a").await;
        // A user cancels meanwhile (same lease, new version).
        crate::submit::cancel(&svc, &id).await.unwrap();
        daemon.update(|r| r.planned = true).await.unwrap();
        let now = record::load(svc.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap()
            .record;
        assert!(now.planned && now.cancel_requested, "both writes kept");
    }

    #[tokio::test]
    async fn a_crashed_daemons_lease_is_taken_over_after_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicU64::new(1_000_000)));
        let svc = services(dir.path(), clock.clone()).await;
        let id = job(&svc).await;
        // A daemon died mid-tick holding the lease.
        let v = record::load(svc.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap();
        let mut rec = v.record.clone();
        rec.lease = Lease {
            owner: "dead".into(),
            epoch: 4,
            expires_ms: 1_002_000,
        };
        record::save(svc.store.as_ref(), &rec, v.version)
            .await
            .unwrap();

        let daemon = Daemon::new(svc.clone());
        let tick = Tick {
            job: id.clone(),
            seq: Some(0),
        };
        let busy = daemon.tick(tick.clone()).await.unwrap_err();
        assert!(matches!(busy, DaemonError::LeaseBusy));

        clock.0.store(1_002_001, Ordering::SeqCst);
        daemon.tick(tick.clone()).await.unwrap();
        let now = record::load(svc.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap()
            .record;
        assert_eq!(now.lease.epoch, 5, "taken over with a higher epoch");
        assert_eq!(now.lease.expires_ms, 0, "released at the end of the tick");
        assert_eq!(now.status, JobStatus::Running);
        assert!(now.planned);
        assert_eq!(now.tick_seq, 1, "the chain moved on");
        assert_eq!(now.stages.len(), 4);
        assert!(now.stages.iter().all(|s| s.mapping_id.is_some()));

        // The redelivered old link of the chain is now stale and changes nothing.
        daemon.tick(tick).await.unwrap();
        let after = record::load(svc.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap()
            .record;
        assert_eq!(after, now);
    }

    #[tokio::test]
    async fn provisioning_is_idempotent_across_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicU64::new(1_000_000)));
        let svc = services(dir.path(), clock.clone()).await;
        let id = job(&svc).await;
        let daemon = Daemon::new(svc.clone());
        daemon
            .tick(Tick {
                job: id.clone(),
                seq: Some(0),
            })
            .await
            .unwrap();
        // Forget the recorded mappings, as if a tick died after creating them.
        let v = record::load(svc.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap();
        let mut rec = v.record.clone();
        let before: Vec<_> = rec.stages.iter().map(|s| s.mapping_id.clone()).collect();
        for s in &mut rec.stages {
            s.mapping_id = None;
        }
        record::save(svc.store.as_ref(), &rec, v.version)
            .await
            .unwrap();
        daemon
            .tick(Tick {
                job: id.clone(),
                seq: Some(1),
            })
            .await
            .unwrap();
        let now = record::load(svc.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap()
            .record;
        let after: Vec<_> = now.stages.iter().map(|s| s.mapping_id.clone()).collect();
        assert_eq!(
            before, after,
            "the existing mappings were found, not duplicated"
        );
        assert_eq!(svc.mappings.list_mappings(None).await.unwrap().len(), 4);
    }
}
