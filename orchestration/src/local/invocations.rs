//! Every invocation the local runtime makes, as CloudWatch would have recorded it: which
//! function and stage, batch size, failures, duration. Written in batches by a background
//! task so that recording never slows the hot path.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::open_sqlite;
use crate::ports::{InvocationSpan, StageStats, Telemetry, TelemetryError};

/// How an invocation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvocationOutcome {
    /// Every message succeeded.
    Ok,
    /// Some messages were reported as batch item failures.
    Partial,
    /// The handler returned an error, or its response was invalid: the whole batch failed.
    Error,
    Panic,
    Timeout,
    /// The function had no concurrency left; the batch was returned to the queue.
    Throttled,
}

impl InvocationOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Error => "error",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::Throttled => "throttled",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InvocationRecord {
    pub job: String,
    pub attempt: u32,
    pub stage: String,
    pub function: String,
    pub started_ms: u64,
    pub duration_us: u64,
    pub batch_size: u32,
    pub failed: u32,
    pub outcome: InvocationOutcome,
}

impl InvocationRecord {
    /// Lambda bills duration rounded up to the next millisecond (AWS-FACTS.md).
    pub fn billed_ms(&self) -> u64 {
        if self.outcome == InvocationOutcome::Throttled {
            0
        } else {
            self.duration_us.div_ceil(1000).max(1)
        }
    }
}

/// [`InvocationRecord::billed_ms`] in SQL, for the queries that sum it.
const BILLED_MS_SQL: &str = "MAX(1, (duration_us + 999) / 1000)";

#[derive(Clone)]
pub struct InvocationLog {
    conn: Arc<Mutex<Connection>>,
    tx: mpsc::UnboundedSender<Message>,
}

#[derive(Debug, thiserror::Error)]
#[error("invocation log: {0}")]
pub struct LogError(String);

fn backend(e: impl std::fmt::Display) -> LogError {
    LogError(e.to_string())
}

impl InvocationLog {
    /// Opens the log. Must be called inside a Tokio runtime: it spawns the writer task.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let conn = open_sqlite(path).map_err(backend)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS invocations (
                job TEXT NOT NULL, attempt INTEGER NOT NULL, stage TEXT NOT NULL, function TEXT NOT NULL,
                started_ms INTEGER NOT NULL, duration_us INTEGER NOT NULL,
                batch_size INTEGER NOT NULL, failed INTEGER NOT NULL, outcome TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS invocations_job ON invocations(job, attempt, stage);",
        )
        .map_err(backend)?;
        let conn = Arc::new(Mutex::new(conn));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(conn.clone(), rx));
        Ok(Self { conn, tx })
    }

    pub fn record(&self, record: InvocationRecord) {
        // The writer lives as long as the runtime; a send after shutdown is moot.
        let _ = self.tx.send(Message::Record(record));
    }

    /// Waits until every record sent so far is written.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }

    /// Per-stage totals of one job attempt.
    pub fn stats(&self, job: &str, attempt: u32) -> Result<Vec<StageStats>, LogError> {
        let conn = self.conn.lock().map_err(backend)?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT stage, function, COUNT(*),
                        SUM(CASE WHEN outcome IN ('ok','partial') THEN batch_size - failed ELSE 0 END),
                        SUM(CASE WHEN outcome IN ('ok','partial') THEN failed ELSE batch_size END),
                        SUM(outcome IN ('error','panic','timeout')),
                        SUM(outcome = 'throttled'),
                        SUM(CASE WHEN outcome = 'throttled' THEN 0 ELSE {BILLED_MS_SQL} END)
                 FROM invocations WHERE job = ?1 AND attempt = ?2 GROUP BY stage, function"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![job, attempt], |row| {
                Ok(StageStats {
                    stage: row.get(0)?,
                    function: row.get(1)?,
                    invocations: row.get::<_, i64>(2)? as u64,
                    messages: row.get::<_, i64>(3)? as u64,
                    failed_messages: row.get::<_, i64>(4)? as u64,
                    failed_invocations: row.get::<_, i64>(5)? as u64,
                    throttles: row.get::<_, i64>(6)? as u64,
                    billed_ms: row.get::<_, i64>(7)? as u64,
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    /// Per function: billed invocations and billed ms of invocations started at or after
    /// `since_ms` (every job's, and the daemon's ticks).
    pub fn function_totals(&self, since_ms: u64) -> Result<Vec<(String, u64, u64)>, LogError> {
        let conn = self.conn.lock().map_err(backend)?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT function, COUNT(*), SUM({BILLED_MS_SQL})
                 FROM invocations WHERE started_ms >= ?1 AND outcome != 'throttled'
                 GROUP BY function ORDER BY function"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![since_ms as i64], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)? as u64,
                    row.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    /// All records of a job attempt, oldest first.
    pub fn records(&self, job: &str, attempt: u32) -> Result<Vec<InvocationRecord>, LogError> {
        let conn = self.conn.lock().map_err(backend)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT job, attempt, stage, function, started_ms, duration_us, batch_size, failed,
                        outcome
                 FROM invocations WHERE job = ?1 AND attempt = ?2 ORDER BY started_ms",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![job, attempt], |row| {
                let outcome: String = row.get(8)?;
                Ok(InvocationRecord {
                    job: row.get(0)?,
                    attempt: row.get(1)?,
                    stage: row.get(2)?,
                    function: row.get(3)?,
                    started_ms: row.get::<_, i64>(4)? as u64,
                    duration_us: row.get::<_, i64>(5)? as u64,
                    batch_size: row.get::<_, i64>(6)? as u32,
                    failed: row.get::<_, i64>(7)? as u32,
                    outcome: match outcome.as_str() {
                        "ok" => InvocationOutcome::Ok,
                        "partial" => InvocationOutcome::Partial,
                        "panic" => InvocationOutcome::Panic,
                        "timeout" => InvocationOutcome::Timeout,
                        "throttled" => InvocationOutcome::Throttled,
                        _ => InvocationOutcome::Error,
                    },
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }
}

enum Message {
    Record(InvocationRecord),
    Flush(oneshot::Sender<()>),
}

async fn writer(conn: Arc<Mutex<Connection>>, mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut buffer = Vec::new();
    let mut records = Vec::new();
    while rx.recv_many(&mut buffer, 4096).await > 0 {
        let mut flushed = Vec::new();
        for message in buffer.drain(..) {
            match message {
                Message::Record(r) => records.push(r),
                Message::Flush(done) => flushed.push(done),
            }
        }
        if let Err(e) = write(&conn, &records) {
            tracing::warn!(error = %e, "could not record invocations");
        }
        records.clear();
        for done in flushed {
            let _ = done.send(());
        }
    }
}

fn write(conn: &Mutex<Connection>, records: &[InvocationRecord]) -> Result<(), LogError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut conn = conn.lock().map_err(backend)?;
    let tx = conn.transaction().map_err(backend)?;
    {
        let mut stmt = tx
            .prepare_cached("INSERT INTO invocations VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")
            .map_err(backend)?;
        for r in records {
            stmt.execute(params![
                r.job,
                r.attempt,
                r.stage,
                r.function,
                r.started_ms as i64,
                r.duration_us as i64,
                r.batch_size,
                r.failed,
                r.outcome.as_str()
            ])
            .map_err(backend)?;
        }
    }
    tx.commit().map_err(backend)
}

#[async_trait::async_trait]
impl Telemetry for InvocationLog {
    async fn stage_stats(
        &self,
        job: &str,
        attempt: u32,
    ) -> Result<Vec<StageStats>, TelemetryError> {
        self.flush().await;
        self.stats(job, attempt)
            .map_err(|e| TelemetryError(e.to_string()))
    }

    async fn spans(&self, job: &str, attempt: u32) -> Result<Vec<InvocationSpan>, TelemetryError> {
        self.flush().await;
        let records = self
            .records(job, attempt)
            .map_err(|e| TelemetryError(e.to_string()))?;
        Ok(records
            .into_iter()
            .filter(|r| r.outcome != InvocationOutcome::Throttled)
            .map(|r| InvocationSpan {
                stage: r.stage,
                started_ms: r.started_ms,
                duration_us: r.duration_us,
            })
            .collect())
    }
}
