//! Stage batch handling: the function Lambda calls with an SQS batch (and the local runtime
//! calls the same way). Each message is processed on its own; a message that fails becomes a
//! batch item failure, never a failed batch, so one poison message cannot hold back the rest.

use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use serde_json::Value;
use tracing::{debug, warn, Instrument};

use crate::components::{blob_lines, ComponentError, FeedTask, SourceContext};
use crate::envelope::{Envelope, EnvelopeError};
use crate::faults::CrashPoint;
use crate::flow::{Flow, Function, Step};
use crate::job::JobId;
use crate::keyed::{self, KeyedError, KeyedMap};
use crate::ledger::{self, Ledger, LedgerError};
use crate::ports::{OutgoingMessage, QueueError, StageStats, StoreError};
use crate::record;
use crate::services::Services;

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Fault injection: the invocation "crashed". The whole batch is retried.
    #[error("injected crash ({0:?})")]
    InjectedCrash(CrashPoint),
    #[error("message without a message id")]
    MissingMessageId,
}

/// Why one message failed. Each becomes a batch item failure.
#[derive(Debug, thiserror::Error)]
enum ItemError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Keyed(#[from] KeyedError),
    #[error("stage `{0}` does not run in function `{1}`")]
    WrongFunction(String, Function),
    #[error("injected poison partition {0}")]
    Poison(u64),
    #[error("job {0}: {1}")]
    Job(String, String),
    #[error("the stage's work panicked: {0}")]
    Panicked(String),
}

/// What a job's messages need, loaded once per job attempt and cached.
struct JobContext {
    flow: Flow,
    /// Queue URL of each stage.
    queue: HashMap<String, String>,
    /// Queue URL of the stage after each stage.
    next_queue: HashMap<String, String>,
    /// A keyed job's reduce partitions (R).
    shuffle_partitions: u32,
}

/// A merge task: reduce partition `r` of the shuffle whose deltas the manifest lists.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct MergeTask {
    pub manifest: String,
    pub r: u32,
}

/// A partial for the reduce: (message id, partition, partial).
type Partial = (String, u64, Value);

/// What processing one message produced.
enum Effect {
    Send(String, Vec<OutgoingMessage>),
    Reduce(u64, Value),
    /// The message belongs to a job attempt that is gone: acknowledge it.
    Drop,
}

/// Backoff step for failed messages: the n-th receive fails → visible again after n steps.
const RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

pub struct StageHandler {
    svc: Arc<Services>,
    function: Function,
    jobs: Mutex<HashMap<(String, u32), Arc<JobContext>>>,
}

impl StageHandler {
    pub fn new(svc: Arc<Services>, function: Function) -> Self {
        Self {
            svc,
            function,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    pub fn function(&self) -> Function {
        self.function
    }

    /// The Lambda handler: an SQS batch in, the ids of the failed messages out.
    pub async fn handle(&self, event: SqsEvent) -> Result<SqsBatchResponse, HandlerError> {
        let started = std::time::Instant::now();
        let crash = self.svc.faults.stage_crash();
        if crash == Some(CrashPoint::BeforeEffects) {
            return Err(HandlerError::InjectedCrash(CrashPoint::BeforeEffects));
        }
        let batch_size = event.records.len() as u64;
        // The job stage this batch is for (a stage queue carries one job attempt's stage).
        let mut counted: Option<(String, u32, String)> = None;
        let mut failures: Vec<String> = Vec::new();
        let mut sends: HashMap<String, (Vec<String>, Vec<OutgoingMessage>)> = HashMap::new();
        let mut reduces: HashMap<(String, u32), Vec<Partial>> = HashMap::new();

        let mut retry: Vec<(String, String, u32)> = Vec::new(); // (message id, receipt, count)
        let mut items = Vec::with_capacity(event.records.len());
        // Messages with the same body as one before them in the batch (SQS's at-least-once
        // delivery, a sender's retry): the work is done once, and they share its fate.
        let mut first_with_body: HashMap<String, usize> = HashMap::new();
        let mut twins: Vec<(String, String, u32, usize)> = Vec::new();
        for message in event.records {
            let id = message
                .message_id
                .clone()
                .ok_or(HandlerError::MissingMessageId)?;
            let receipt = message.receipt_handle.clone().unwrap_or_default();
            let receive_count = message
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            if let Some(body) = &message.body {
                if let Some(&first) = first_with_body.get(body) {
                    twins.push((id, receipt, receive_count, first));
                    continue;
                }
                first_with_body.insert(body.clone(), items.len());
            }
            let span = tracing::debug_span!("message", function = %self.function, message_id = %id);
            items.push((
                id,
                receipt,
                receive_count,
                self.process(message).instrument(span),
            ));
        }
        // The reduce function's messages are processed together: a reduce's are cheap (the
        // commit is one per batch, below), and a batch of merge tasks merges in parallel.
        // Other functions' messages overlap one more than there are cores: the next
        // message's input is read while the cores work on the ones before it (a range read
        // from S3 takes tens of milliseconds; one message after another, an invocation's
        // cores idled through each read). Their CPU work is bounded by `cpu` anyway.
        let in_flight = if self.function == Function::Reduce {
            items.len().max(1)
        } else {
            crate::cpu::slots() + 1
        };
        let (meta, work): (Vec<_>, Vec<_>) =
            items.into_iter().map(|(a, b, c, f)| ((a, b, c), f)).unzip();
        let outcomes: Vec<_> = meta
            .into_iter()
            .zip(
                futures::stream::iter(work)
                    .buffered(in_flight)
                    .collect::<Vec<_>>()
                    .await,
            )
            .collect();
        // Per processed message: `None` if it succeeded, else the queue to retry it on.
        let mut failed_on: Vec<Option<Option<String>>> = Vec::with_capacity(outcomes.len());
        for ((id, receipt, receive_count), outcome) in outcomes {
            if let (None, Ok((env, _))) = (&counted, &outcome) {
                counted = Some((env.job.clone(), env.attempt, env.stage.clone()));
            }
            failed_on.push(outcome.as_ref().err().map(|(queue, _)| queue.clone()));
            match outcome {
                Ok((_, Effect::Drop)) => {}
                Ok((_, Effect::Send(url, out))) => {
                    let entry = sends.entry(url).or_default();
                    entry.0.push(id);
                    entry.1.extend(out);
                }
                Ok((env, Effect::Reduce(partition, partial))) => {
                    reduces
                        .entry((env.job, env.attempt))
                        .or_default()
                        .push((id, partition, partial));
                }
                Err((queue, e)) => {
                    warn!(function = %self.function, message_id = %id, error = %e, "message failed");
                    if let Some(queue) = queue {
                        retry.push((queue, receipt, receive_count));
                    }
                    failures.push(id);
                }
            }
        }

        for (id, receipt, receive_count, first) in twins {
            if let Some(Some(queue)) = failed_on.get(first) {
                if let Some(queue) = queue {
                    retry.push((queue.clone(), receipt, receive_count));
                }
                failures.push(id);
            }
        }
        for (url, (ids, out)) in sends {
            if let Err(e) = self.send(&url, out).await {
                warn!(function = %self.function, error = %e, "sending to the next stage failed");
                failures.extend(ids);
            }
        }
        for ((job, attempt), items) in reduces {
            if let Err(e) = self.reduce(&job, attempt, &items).await {
                warn!(job = %job, error = %e, "ledger commit failed");
                failures.extend(items.into_iter().map(|(id, _, _)| id));
            }
        }

        self.back_off(retry).await;
        let crashed = crash == Some(CrashPoint::AfterEffects);
        if let Some((job, attempt, stage)) = counted {
            let failed = if crashed {
                batch_size
            } else {
                failures.len() as u64
            };
            let invocation = StageStats {
                stage,
                function: self.function.as_str().to_owned(),
                invocations: 1,
                messages: batch_size - failed,
                failed_messages: failed,
                failed_invocations: u64::from(crashed),
                throttles: 0,
                // Lambda bills each invocation rounded up to the millisecond.
                billed_ms: started.elapsed().as_micros().div_ceil(1000) as u64,
            };
            if let Err(e) = self.svc.telemetry.record(&job, attempt, &invocation).await {
                // Counts steer scaling; a lost one never fails the batch.
                debug!(job_id = %job, stage = %invocation.stage, error = %e, "invocation not counted");
            }
        }
        if crashed {
            return Err(HandlerError::InjectedCrash(CrashPoint::AfterEffects));
        }
        let mut response = SqsBatchResponse::default();
        response.set_failures(failures);
        Ok(response)
    }

    async fn send(&self, url: &str, messages: Vec<OutgoingMessage>) -> Result<(), QueueError> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            if self.svc.faults.duplicate_message() {
                out.push(m.clone());
            }
            out.push(m);
        }
        self.svc.queues.send(url, out).await
    }

    /// A failed message is retried sooner than its visibility timeout, a little later each
    /// time (a common Lambda pattern: ChangeMessageVisibility on the failed items), so a
    /// poison message reaches the DLQ in seconds and a transient failure is retried soon.
    async fn back_off(&self, retry: Vec<(String, String, u32)>) {
        let visibility = self.svc.settings.stage_visibility;
        for (queue, receipt, count) in retry {
            let delay = (RETRY_BACKOFF * count).min(visibility);
            if let Err(e) = self
                .svc
                .queues
                .change_visibility(&queue, &receipt, delay)
                .await
            {
                debug!(error = %e, "could not shorten the visibility of a failed message");
            }
        }
    }

    async fn context(&self, job: &str, attempt: u32) -> Result<Option<Arc<JobContext>>, ItemError> {
        let key = (job.to_owned(), attempt);
        if let Some(ctx) = self.jobs.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Some(ctx));
        }
        let id = JobId::parse(job).map_err(|e| ItemError::Job(job.into(), e.to_string()))?;
        let Some(v) = record::load(self.svc.store.as_ref(), &id).await? else {
            return Ok(None);
        };
        let rec = v.record;
        if rec.attempt != attempt || rec.status.is_terminal() {
            return Ok(None);
        }
        let flow = self
            .svc
            .registry
            .flow(&rec.request)
            .map_err(|e| ItemError::Job(job.into(), e.to_string()))?;
        let next_queue = rec
            .stages
            .windows(2)
            .map(|w| (w[0].name.clone(), w[1].queue_url.clone()))
            .collect();
        let queue = rec
            .stages
            .iter()
            .map(|s| (s.name.clone(), s.queue_url.clone()))
            .collect();
        let ctx = Arc::new(JobContext {
            flow,
            queue,
            next_queue,
            shuffle_partitions: rec.shuffle_partitions.unwrap_or(1),
        });
        if let Ok(mut jobs) = self.jobs.lock() {
            // Bounded: a warm function serves few jobs at a time; forget them all when full.
            if jobs.len() > 1024 {
                jobs.clear();
            }
            jobs.insert(key, ctx.clone());
        }
        Ok(Some(ctx))
    }

    /// Processes one message; on failure also returns its queue's URL, when known.
    async fn process(
        &self,
        message: SqsMessage,
    ) -> Result<(Envelope, Effect), (Option<String>, ItemError)> {
        let body = message.body.unwrap_or_default();
        let env = Envelope::parse(&body).map_err(|e| (None, e.into()))?;
        let ctx = match self.context(&env.job, env.attempt).await {
            Ok(Some(ctx)) => ctx,
            Ok(None) => {
                debug!(job = %env.job, "job attempt gone; dropping message");
                return Ok((env, Effect::Drop));
            }
            Err(e) => return Err((None, e)),
        };
        let queue = ctx.queue.get(&env.stage).cloned();
        self.process_in(ctx, env).await.map_err(|e| (queue, e))
    }

    async fn process_in(
        &self,
        ctx: Arc<JobContext>,
        mut env: Envelope,
    ) -> Result<(Envelope, Effect), ItemError> {
        let (index, stage) = ctx
            .flow
            .stage(&env.stage)
            .ok_or_else(|| ItemError::Job(env.job.clone(), format!("no stage `{}`", env.stage)))?;
        if stage.function != self.function {
            return Err(ItemError::WrongFunction(env.stage.clone(), self.function));
        }
        // A merge task's number is a reduce partition, not an input partition.
        let merging = matches!(stage.step, Step::Merge);
        if index > 0 && !merging && self.svc.faults.is_poison(env.partition) {
            return Err(ItemError::Poison(env.partition));
        }
        // A pass-through stage forwards the message unread (a claim-check stays in place).
        let through = matches!(&stage.step, Step::Transform(t) if t.passes_through());
        let payload = if through {
            Value::Null
        } else {
            env.take_payload(self.svc.blobs.as_ref()).await?
        };
        let next = |env: &Envelope| {
            ctx.next_queue.get(&env.stage).cloned().ok_or_else(|| {
                ItemError::Job(
                    env.job.clone(),
                    format!("stage `{}` has no next queue", env.stage),
                )
            })
        };
        let next_stage = ctx.flow.stages.get(index + 1).map(|s| s.name.clone());
        let forward = |partition: u64, payload: Value| Envelope {
            job: env.job.clone(),
            attempt: env.attempt,
            stage: next_stage.clone().unwrap_or_default(),
            partition,
            payload: Some(payload),
            payload_ref: None,
        };
        let effect = match &stage.step {
            Step::Transform(_) if through => {
                let body = Envelope {
                    stage: next_stage.clone().unwrap_or_default(),
                    ..env.clone()
                }
                .encode(self.svc.blobs.as_ref())
                .await?;
                Effect::Send(next(&env)?, vec![OutgoingMessage::new(body)])
            }
            Step::Source(source) => {
                let task: FeedTask = serde_json::from_value(payload)
                    .map_err(|e| EnvelopeError::Malformed(format!("feed task: {e}")))?;
                let ctx_source = SourceContext {
                    blobs: self.svc.blobs.clone(),
                };
                let partitions = source.emit(&task, &ctx_source).await?;
                let mut out = Vec::with_capacity(partitions.len());
                for p in partitions {
                    let body = forward(p.index, p.payload)
                        .encode(self.svc.blobs.as_ref())
                        .await?;
                    out.push(OutgoingMessage::new(body));
                }
                Effect::Send(next(&env)?, out)
            }
            Step::Transform(transform) => {
                let blobs = self.svc.blobs.as_ref();
                // The transform before a keyed reduce is the map side of the shuffle.
                let keyed = ctx.flow.keyed.as_ref().filter(|_| {
                    matches!(
                        ctx.flow.stages.get(index + 1).map(|s| &s.step),
                        Some(Step::Reduce(_))
                    )
                });
                let (mut output, maps) =
                    apply(transform.clone(), blobs, payload, keyed.cloned()).await?;
                let object = keyed::map_object(&env.job, env.attempt, env.partition);
                if let Some(delta) = shuffle(blobs, &object, maps, ctx.shuffle_partitions).await? {
                    if self
                        .discard_if_ended(&env.job, env.attempt, std::slice::from_ref(&object))
                        .await?
                    {
                        return Ok((env, Effect::Drop));
                    }
                    if let Some(object) = output.as_object_mut() {
                        object.insert(keyed::SHUFFLE_FIELD.into(), serde_json::json!(delta));
                    }
                }
                let body = forward(env.partition, output)
                    .encode(self.svc.blobs.as_ref())
                    .await?;
                Effect::Send(next(&env)?, vec![OutgoingMessage::new(body)])
            }
            Step::Reduce(_) => Effect::Reduce(env.partition, payload),
            Step::Merge => {
                let task: MergeTask = serde_json::from_value(payload)
                    .map_err(|e| EnvelopeError::Malformed(format!("merge task: {e}")))?;
                self.merge(&ctx, &env, task).await?;
                Effect::Drop
            }
        };
        Ok((env, effect))
    }

    /// Merges reduce partition `task.r` and records it; the last one wakes the daemon.
    async fn merge(
        &self,
        ctx: &JobContext,
        env: &Envelope,
        task: MergeTask,
    ) -> Result<(), ItemError> {
        let spec = ctx
            .flow
            .keyed
            .as_ref()
            .ok_or_else(|| ItemError::Job(env.job.clone(), "the flow is not keyed".into()))?;
        let blobs = self.svc.blobs.as_ref();
        let ledger = Ledger {
            store: self.svc.store.as_ref(),
            job: &env.job,
            attempt: env.attempt,
            shards: self.svc.settings.aggregate_shards,
            keyed: None,
        };
        if !ledger.is_merged(task.r).await? {
            self.merge_partition(env, &ledger, spec, &task).await?;
        }
        // A task that finds every part merged writes the result, if it claims it first (or
        // is the claimant's redelivery).
        let merged = ledger.merged().await?;
        if merged.len() as u32 >= ctx.shuffle_partitions
            && ledger.result().await?.is_none()
            && ledger.claim_result(task.r).await?
        {
            // Kept even if the job has ended meanwhile: results live under the job's own keys
            // (not the attempt's shuffle prefix), and a job completes only after this record.
            let result = keyed::finish_fields(blobs, spec, &merged, &env.job).await?;
            ledger.record_result(&result).await?;
            let id = JobId::parse(&env.job)
                .map_err(|e| ItemError::Job(env.job.clone(), e.to_string()))?;
            self.svc.nudge(&id).await?;
        }
        debug!(job = %env.job, r = task.r, "merged");
        Ok(())
    }

    /// Merge task `r`: segment `r` of every delta the manifest lists, combined and written
    /// sorted, then recorded.
    async fn merge_partition(
        &self,
        env: &Envelope,
        ledger: &Ledger<'_>,
        spec: &keyed::Spec,
        task: &MergeTask,
    ) -> Result<(), ItemError> {
        let blobs = self.svc.blobs.as_ref();
        let manifest = blobs
            .get(&task.manifest)
            .await
            .map_err(KeyedError::from)?
            .ok_or_else(|| KeyedError::Missing(task.manifest.clone()))?;
        let deltas: Vec<keyed::Delta> = serde_json::from_slice(&manifest)
            .map_err(|e| EnvelopeError::Malformed(format!("merge manifest: {e}")))?;
        let summaries =
            keyed::merge_reduce_partition(blobs, spec, &deltas, &env.job, env.attempt, task.r)
                .await?;
        let parts: Vec<String> = summaries
            .values()
            .flat_map(|s| [s.by_key.clone(), s.by_value.clone()])
            .collect();
        if self.discard_if_ended(&env.job, env.attempt, &parts).await? {
            return Ok(());
        }
        ledger.record_merged(task.r, &summaries).await?;
        Ok(())
    }

    /// Shuffle objects are deleted at teardown, by prefix. A message that arrives after its
    /// job ended (a redelivery whose first delivery was counted; a warm function's cached
    /// context does not know) would write them after that: the writer looks again once it
    /// has written, and removes what it wrote if the job attempt is over. Teardown starts
    /// only after the job is terminal, so every write is either before it (and deleted by
    /// it) or seen here. Returns whether the job attempt had ended.
    async fn discard_if_ended(
        &self,
        job: &str,
        attempt: u32,
        objects: &[String],
    ) -> Result<bool, ItemError> {
        let id = JobId::parse(job).map_err(|e| ItemError::Job(job.into(), e.to_string()))?;
        let live = record::load(self.svc.store.as_ref(), &id)
            .await?
            .is_some_and(|v| v.record.attempt == attempt && !v.record.status.is_terminal());
        if live {
            return Ok(false);
        }
        for object in objects {
            self.svc
                .blobs
                .delete(object)
                .await
                .map_err(KeyedError::from)?;
        }
        debug!(job_id = %job, attempt, objects = objects.len(), "late shuffle output removed");
        Ok(true)
    }

    async fn reduce(&self, job: &str, attempt: u32, items: &[Partial]) -> Result<(), ItemError> {
        let ctx = self
            .context(job, attempt)
            .await?
            .ok_or_else(|| ItemError::Job(job.into(), "gone".into()))?;
        let reduce = ctx
            .flow
            .reduce()
            .ok_or_else(|| ItemError::Job(job.into(), "flow has no reduce".into()))?;
        let ledger = Ledger {
            store: self.svc.store.as_ref(),
            job,
            attempt,
            shards: self.svc.settings.aggregate_shards,
            keyed: ctx.flow.keyed.as_ref().map(|spec| ledger::Keyed {
                spec,
                blobs: self.svc.blobs.as_ref(),
                partitions: ctx.shuffle_partitions,
            }),
        };
        let partials = items.iter().map(|(_, p, v)| (*p, v.clone())).collect();
        let outcome = ledger.commit(reduce.as_ref(), partials).await?;
        debug!(
            job,
            attempt,
            recorded = outcome.recorded,
            duplicates = outcome.duplicates,
            "reduced"
        );
        if outcome.recorded > 0 {
            self.nudge_if_complete(job, &ledger).await?;
        }
        Ok(())
    }

    /// The reduce whose commit brings the count to the total wakes the daemon at once, so a
    /// job never waits for the next periodic tick to finish.
    async fn nudge_if_complete(&self, job: &str, ledger: &Ledger<'_>) -> Result<(), ItemError> {
        let id = JobId::parse(job).map_err(|e| ItemError::Job(job.into(), e.to_string()))?;
        let Some(v) = record::load(self.svc.store.as_ref(), &id).await? else {
            return Ok(());
        };
        let (Some(total), true) = (v.record.total_partitions, v.record.planned) else {
            return Ok(());
        };
        let reduced = ledger.reduced_count().await?;
        if reduced >= total {
            self.svc.nudge(&id).await?;
        }
        Ok(())
    }
}

/// Applies a transform to a payload (text by reference, or JSON); for the map side of a
/// keyed flow, also returns the keyed fields as maps (taken out of the output). The
/// transform is CPU work ([`crate::cpu`]).
async fn apply(
    transform: Arc<dyn crate::components::Transform>,
    blobs: &dyn crate::ports::Blobs,
    payload: Value,
    keyed: Option<keyed::Spec>,
) -> Result<(Value, keyed::KeyedFields), ItemError> {
    let resolved = blob_lines::resolve(blobs, &payload).await?;
    crate::cpu::run(move || {
        let mut output = match resolved {
            Some((text, rest)) => {
                if keyed.is_some() {
                    if let Some(out) = transform.apply_text_keyed(&text) {
                        return Ok(out?);
                    }
                }
                match transform.apply_text(&text, &rest) {
                    Some(output) => output?,
                    None => transform.apply(blob_lines::lines_payload(&text, rest))?,
                }
            }
            None => transform.apply(payload)?,
        };
        let maps = match &keyed {
            Some(spec) => keyed::take_fields(spec, &mut output)?,
            None => Vec::new(),
        };
        Ok((output, maps))
    })
    .await
    .map_err(ItemError::Panicked)?
}

/// Writes a partition's keyed maps as its shuffle object (nothing when they are empty).
async fn shuffle(
    blobs: &dyn crate::ports::Blobs,
    object: &str,
    maps: Vec<(String, KeyedMap)>,
    partitions: u32,
) -> Result<Option<keyed::Delta>, ItemError> {
    let maps: Vec<_> = maps.into_iter().filter(|(_, m)| !m.is_empty()).collect();
    if maps.is_empty() {
        return Ok(None);
    }
    let name = object.to_owned();
    let (bytes, delta) = crate::cpu::run(move || keyed::shuffle_bytes(&maps, partitions, &name))
        .await
        .map_err(ItemError::Panicked)?;
    // Deterministic bytes under a deterministic key: a redelivery rewrites the same object.
    blobs.put(object, bytes).await.map_err(KeyedError::from)?;
    Ok(Some(delta))
}
