//! The sweeper, run on a schedule (EventBridge, every few minutes): the safety net behind
//! the daemons. It restarts the tick chain of any unfinished job whose daemon went silent
//! (a lost tick, a control message dead-lettered), and deletes the queues and mappings of
//! job attempts that are over — what a daemon that died during teardown, or a superseded
//! attempt, left behind.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{info, warn};

use crate::flow::Function;
use crate::job::JobId;
use crate::ports::{MappingError, QueueError, StoreError};
use crate::record::{self, JobRecord};
use crate::reserve;
use crate::services::Services;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Reserve(#[from] reserve::ReserveError),
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    pub jobs_seen: usize,
    /// Unfinished jobs whose daemon had gone silent, nudged to restart their chain.
    pub restarted: Vec<JobId>,
    pub deleted_queues: Vec<String>,
    pub deleted_mappings: Vec<String>,
    /// Reserved-concurrency needs of finished attempts, released.
    pub released_needs: usize,
}

/// Job-list entries read per store query.
const PAGE: usize = 100;

pub struct Sweeper {
    svc: Arc<Services>,
}

/// A job queue's name: `{prefix}-{short id}-{attempt}-{stage}` (see the daemon).
fn parse_queue_name<'a>(prefix: &str, name: &'a str) -> Option<(&'a str, u32)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let mut parts = rest.splitn(3, '-');
    let short = parts.next()?;
    let attempt = parts.next()?.parse().ok()?;
    parts.next()?;
    (short.len() == 32 && short.bytes().all(|b| b.is_ascii_hexdigit())).then_some((short, attempt))
}

/// Whether the resources of attempt `attempt` of a job are over: the job is gone, the
/// attempt was superseded, or the job ended and was torn down.
fn attempt_is_over(job: Option<&JobRecord>, attempt: u32) -> bool {
    match job {
        None => true,
        Some(rec) => attempt < rec.attempt || (rec.status.is_terminal() && rec.torn_down),
    }
}

impl Sweeper {
    pub fn new(svc: Arc<Services>) -> Self {
        Self { svc }
    }

    /// How long a job's chain may be silent before it counts as dead: the daemon's own
    /// rule for restarting a chain (four tick intervals and two lease TTLs).
    fn silence_limit_ms(&self) -> u64 {
        let s = &self.svc.settings;
        s.tick_interval.as_millis() as u64 * 4 + s.lease_ttl.as_millis() as u64 * 2
    }

    pub async fn sweep(&self) -> Result<SweepReport, SweepError> {
        let svc = &self.svc;
        let mut report = SweepReport::default();
        // Resources first, jobs after: a queue, mapping or need is created after its job's
        // record, so every one listed here has its job in the listing below, read no
        // earlier than the resource. (Jobs first would let a job submitted in between look
        // like an orphan, and lose its queues.)
        let prefix = format!("{}-", svc.settings.prefix);
        let queues = svc.queues.list_queues(&prefix).await?;
        let mappings = svc.mappings.list_mappings(None).await?;
        let budgeted = svc.settings.concurrency_budget.is_some();
        let holders = if budgeted {
            reserve::holders(svc).await?
        } else {
            Vec::new()
        };

        let now = svc.clock.now_ms();
        let mut jobs: HashMap<String, JobRecord> = HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let (ids, next) = record::list(svc.store.as_ref(), cursor.as_deref(), PAGE).await?;
            for id in ids {
                let Some(v) = record::load(svc.store.as_ref(), &id).await? else {
                    continue;
                };
                let rec = v.record;
                let finished = rec.status.is_terminal() && rec.torn_down;
                let silent = now.saturating_sub(rec.last_tick_ms.max(rec.created_ms))
                    > self.silence_limit_ms();
                if !finished && silent && rec.lease.expires_ms <= now {
                    info!(job_id = %rec.id, "daemon silent: restarting its ticks");
                    svc.nudge(&rec.id).await?;
                    report.restarted.push(rec.id.clone());
                }
                jobs.insert(rec.id.short().to_owned(), rec);
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        report.jobs_seen = jobs.len();

        // Queues of attempts that are over, with the mappings that read them.
        for url in queues {
            let name = url.rsplit('/').next().unwrap_or(&url);
            let Some((short, attempt)) = parse_queue_name(&svc.settings.prefix, name) else {
                continue; // the control queue, its DLQ, or not ours
            };
            if !attempt_is_over(jobs.get(short), attempt) {
                continue;
            }
            for m in svc.mappings.list_mappings(Some(&url)).await? {
                svc.mappings.delete_mapping(&m.id).await?;
                report.deleted_mappings.push(m.id);
            }
            svc.queues.delete_queue(&url).await?;
            warn!(queue = %url, "deleted a leaked queue");
            report.deleted_queues.push(url);
        }

        // Mappings of attempts that are over whose queue is already gone. Only job mappings
        // carry the job tag: the control queue's mapping is never touched.
        for m in mappings {
            let (Some(job), Some(attempt)) = (
                m.tags.get("sluice:job"),
                m.tags
                    .get("sluice:attempt")
                    .and_then(|a| a.parse::<u32>().ok()),
            ) else {
                continue;
            };
            if report.deleted_mappings.contains(&m.id) {
                continue;
            }
            let short = job.get(..32).unwrap_or(job);
            if attempt_is_over(jobs.get(short), attempt) {
                svc.mappings.delete_mapping(&m.id).await?;
                warn!(mapping = %m.id, job_id = %job, "deleted a leaked mapping");
                report.deleted_mappings.push(m.id);
            }
        }
        // Reserved-concurrency grants of attempts that are over (their daemon died before
        // releasing them), then the functions' settings from what is left.
        if budgeted {
            for (job, attempt) in holders {
                let short = job.get(..32).unwrap_or(&job);
                if attempt_is_over(jobs.get(short), attempt)
                    && reserve::release(svc, &job, attempt).await?
                {
                    report.released_needs += 1;
                }
            }
            reserve::apply(svc, &Function::STAGE_FUNCTIONS).await?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_parse() {
        let short = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_queue_name("sl", &format!("sl-{short}-3-feed")),
            Some((short, 3))
        );
        assert_eq!(
            parse_queue_name("sl", &format!("sl-{short}-0-my-stage")),
            Some((short, 0))
        );
        assert_eq!(parse_queue_name("sl", "sl-control"), None);
        assert_eq!(parse_queue_name("sl", "sl-control-dlq"), None);
        assert_eq!(
            parse_queue_name("sl", &format!("other-{short}-1-feed")),
            None
        );
        assert_eq!(parse_queue_name("sl", &format!("sl-{short}-x-feed")), None);
        assert_eq!(parse_queue_name("sl", "sl-0123-1-feed"), None);
    }
}
