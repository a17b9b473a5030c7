//! Submitting and cancelling jobs. One job per request: The job record is created with a conditional
//! put, so concurrent identical requests produce exactly one run; the others join it, and a
//! request for a finished job gets the stored result at once.

use crate::job::{JobId, JobRequest, JobStatus, ValidationError};
use crate::policy::Policy;
use crate::ports::{QueueError, StoreError};
use crate::record::{self, JobRecord, Versioned};
use crate::services::{Services, Tick};

#[derive(Clone, Debug, PartialEq)]
pub struct SubmitOptions {
    pub policy: Policy,
    /// The least fraction of partitions that must be reduced for the job to succeed.
    pub min_coverage: f64,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            min_coverage: 1.0,
        }
    }
}

/// What a submission did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// A new job was created and its daemon started.
    Created,
    /// The job was already running (or pending): this request joins it.
    Joined,
    /// The job had finished: its stored outcome answers this request.
    Cached,
    /// The job had failed or been cancelled: it starts again as a new attempt.
    Restarted,
}

#[derive(Clone, Debug)]
pub struct Submission {
    pub id: JobId,
    pub disposition: Disposition,
    pub record: JobRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Conflicting writers only ever make us re-read; this bounds a pathological loop.
const MAX_RACES: u32 = 32;

pub async fn submit(
    svc: &Services,
    request: &JobRequest,
    options: &SubmitOptions,
) -> Result<Submission, SubmitError> {
    if !(0.0..=1.0).contains(&options.min_coverage) {
        return Err(ValidationError::new("min_coverage", "must be a number from 0 to 1").into());
    }
    let valid = svc.registry.validate(request)?;
    // Building the flow checks what normalization alone cannot.
    svc.registry.flow(&valid.request)?;
    let store = svc.store.as_ref();
    for _ in 0..MAX_RACES {
        let now = svc.clock.now_ms();
        match record::load(store, &valid.id).await? {
            None => {
                let rec = JobRecord::new(
                    valid.id.clone(),
                    valid.request.clone(),
                    options.policy,
                    options.min_coverage,
                    now,
                );
                match record::create(store, &rec).await {
                    Ok(_) => {
                        start_chain(svc, &rec).await?;
                        return Ok(submission(valid.id, Disposition::Created, rec));
                    }
                    Err(StoreError::ConditionFailed(_)) => continue, // lost the race: join
                    Err(e) => return Err(e.into()),
                }
            }
            Some(Versioned { record: rec, .. }) if rec.status == JobStatus::Done => {
                return Ok(submission(valid.id, Disposition::Cached, rec));
            }
            Some(Versioned {
                mut record,
                version,
            }) if record.status.is_terminal() && record.torn_down => {
                record.restart(options.policy, options.min_coverage, now);
                match record::save(store, &record, version).await {
                    Ok(_) => {
                        start_chain(svc, &record).await?;
                        return Ok(submission(valid.id, Disposition::Restarted, record));
                    }
                    Err(StoreError::ConditionFailed(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(Versioned { record: rec, .. }) => {
                // Running, or finishing its teardown. A nudge restarts the daemon's tick
                // chain if it went silent (its submitter died before the first tick, say).
                svc.nudge(&valid.id).await?;
                return Ok(submission(valid.id, Disposition::Joined, rec));
            }
        }
    }
    Err(StoreError::Backend("too many concurrent writers on one job record".into()).into())
}

async fn start_chain(svc: &Services, rec: &JobRecord) -> Result<(), QueueError> {
    svc.send_tick(
        &Tick {
            job: rec.id.clone(),
            seq: Some(rec.tick_seq),
        },
        std::time::Duration::ZERO,
    )
    .await
}

fn submission(id: JobId, disposition: Disposition, record: JobRecord) -> Submission {
    Submission {
        id,
        disposition,
        record,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no job {0}")]
    NotFound(JobId),
    #[error("job {0} has already ended ({1})")]
    AlreadyEnded(JobId, JobStatus),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Asks a job to stop: its daemon ends it as `cancelled` and tears its resources down.
/// Returns the record as written (`cancel_requested` set).
pub async fn cancel(svc: &Services, id: &JobId) -> Result<JobRecord, CancelError> {
    let store = svc.store.as_ref();
    for _ in 0..MAX_RACES {
        let Some(Versioned {
            mut record,
            version,
        }) = record::load(store, id).await?
        else {
            return Err(CancelError::NotFound(id.clone()));
        };
        if record.status.is_terminal() {
            return Err(CancelError::AlreadyEnded(id.clone(), record.status));
        }
        record.cancel_requested = true;
        match record::save(store, &record, version).await {
            Ok(_) => {
                svc.nudge(id).await?;
                return Ok(record);
            }
            Err(StoreError::ConditionFailed(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Backend("too many concurrent writers on one job record".into()).into())
}
