//! [`SqliteQueues`]: SQS standard queues on SQLite.
//!
//! Reproduces the SQS behaviour the engine relies on: at-least-once delivery with a
//! visibility timeout per queue (overridable per receive and per message), receipt handles
//! that go stale when a message is received again, `ApproximateReceiveCount`, per-message
//! delays, long polling, and a redrive policy that moves a message to its dead-letter queue
//! when it is received once more after reaching `maxReceiveCount`. It also rejects what SQS
//! rejects (queue names, body size, delay, visibility and long-poll limits) so code that
//! runs here also runs against AWS.
//!
//! Queue URLs are `local://queue/{name}`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::Notify;

use crate::ports::{
    OutgoingMessage, QueueCounts, QueueError, QueueSpec, Queues, ReceivedMessage, MAX_MESSAGE_BYTES,
};

const URL_PREFIX: &str = "local://queue/";
const MAX_NAME_LEN: usize = 80;
/// SQS limits (AWS-FACTS.md): visibility timeout 0 s–12 h, DelaySeconds ≤ 900, long poll
/// ≤ 20 s, maxReceiveCount 1–1,000.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
const MAX_DELAY: Duration = Duration::from_secs(900);
const MAX_WAIT: Duration = Duration::from_secs(20);
const MAX_RECEIVE_COUNT: u32 = 1_000;
/// Sends from another process sharing the database cannot ring our in-process `Notify`, so
/// a long poll also looks again this often.
const CROSS_PROCESS_POLL: Duration = Duration::from_secs(1);

/// `sqs_` prefixes keep the tables apart from other adapters sharing a database file.
/// Messages stay a rowid table: bodies can be large, and WITHOUT ROWID tables store whole
/// rows in the B-tree nodes. The index leads with `(queue_id, visible_ms)` for receives and
/// carries `receive_count` so `counts` is an index-only scan. `receipt` is the random token
/// of the current receipt handle (`{id}.{receipt:016x}`); each receive draws a new one,
/// which is what makes older handles stale.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sqs_queues (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    visibility_ms     INTEGER NOT NULL,
    dlq_name          TEXT,
    max_receive_count INTEGER
);
CREATE TABLE IF NOT EXISTS sqs_messages (
    id            INTEGER PRIMARY KEY,
    queue_id      INTEGER NOT NULL,
    visible_ms    INTEGER NOT NULL,
    receive_count INTEGER NOT NULL,
    receipt       INTEGER,
    sent_ms       INTEGER NOT NULL,
    message_id    TEXT NOT NULL,
    body          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sqs_messages_ready
    ON sqs_messages (queue_id, visible_ms, receive_count);
";

/// SQS queues in one SQLite database; see the module docs.
#[derive(Debug)]
pub struct SqliteQueues {
    conn: Mutex<Connection>,
    /// Long pollers of each queue, by queue name; rung after commits that may make a
    /// message visible sooner than the pollers expect.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

/// What a receive needs to know about its queue.
struct QueueRow {
    id: i64,
    visibility_ms: i64,
    redrive: Option<Redrive>,
}

struct Redrive {
    max_receive_count: i64,
    dlq_id: i64,
    dlq_name: String,
}

struct Candidate {
    id: i64,
    receive_count: i64,
    sent_ms: i64,
    message_id: String,
    body: String,
}

/// Outcome of one non-waiting receive attempt.
struct Attempt {
    messages: Vec<ReceivedMessage>,
    /// When nothing was received: the earliest time a message of the queue becomes visible.
    next_visible_ms: Option<i64>,
    /// Dead-letter queue that received messages, to wake its pollers.
    redriven_to: Option<String>,
}

trait Db<T> {
    fn db(self) -> Result<T, QueueError>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, QueueError> {
        self.map_err(|e| QueueError::Backend(e.to_string()))
    }
}

fn url_of(name: &str) -> String {
    format!("{URL_PREFIX}{name}")
}

fn validate_name(name: &str) -> Result<(), QueueError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(QueueError::Invalid(format!(
            "queue name {name:?} must be 1-{MAX_NAME_LEN} characters of A-Z, a-z, 0-9, - and _"
        )))
    }
}

/// The queue name in a URL; `None` for anything that is not one of our URLs, which no
/// queue can have.
fn name_of(url: &str) -> Option<&str> {
    let name = url.strip_prefix(URL_PREFIX)?;
    validate_name(name).ok().map(|()| name)
}

fn existing_name(url: &str) -> Result<&str, QueueError> {
    name_of(url).ok_or_else(|| QueueError::NoSuchQueue(url.to_string()))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn now() -> i64 {
    i64::try_from(super::now_ms()).unwrap_or(i64::MAX)
}

fn check_visibility(d: Duration) -> Result<(), QueueError> {
    if d > MAX_VISIBILITY {
        return Err(QueueError::Invalid(format!(
            "visibility timeout {d:?} above {MAX_VISIBILITY:?}"
        )));
    }
    Ok(())
}

fn receipt_handle(id: i64, token: i64) -> String {
    format!("{id}.{:016x}", token as u64)
}

/// `None` for a handle we never issued: it matches no message, like a stale one.
fn parse_receipt(handle: &str) -> Option<(i64, i64)> {
    let (id, token) = handle.split_once('.')?;
    let id = id.parse().ok()?;
    let token = u64::from_str_radix(token, 16).ok()? as i64;
    Some((id, token))
}

fn queue_id(tx: &Transaction<'_>, name: &str) -> Result<i64, QueueError> {
    tx.prepare_cached("SELECT id FROM sqs_queues WHERE name = ?1")
        .db()?
        .query_row([name], |r| r.get(0))
        .optional()
        .db()?
        .ok_or_else(|| QueueError::NoSuchQueue(url_of(name)))
}

fn queue_row(tx: &Transaction<'_>, name: &str) -> Result<QueueRow, QueueError> {
    let row: Option<(i64, i64, Option<String>, Option<i64>)> = tx
        .prepare_cached(
            "SELECT id, visibility_ms, dlq_name, max_receive_count FROM sqs_queues
             WHERE name = ?1",
        )
        .db()?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()
        .db()?;
    let Some((id, visibility_ms, dlq_name, max)) = row else {
        return Err(QueueError::NoSuchQueue(url_of(name)));
    };
    // The DLQ is resolved by name on every receive, as SQS resolves the ARN: a deleted DLQ
    // stops redrive, a recreated one resumes it.
    let redrive = match (dlq_name, max) {
        (Some(dlq_name), Some(max_receive_count)) => match queue_id(tx, &dlq_name) {
            Ok(dlq_id) => Some(Redrive {
                max_receive_count,
                dlq_id,
                dlq_name,
            }),
            Err(QueueError::NoSuchQueue(_)) => None,
            Err(e) => return Err(e),
        },
        _ => None,
    };
    Ok(QueueRow {
        id,
        visibility_ms,
        redrive,
    })
}

impl SqliteQueues {
    /// Opens (creating if needed) the queues in the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        let conn = super::open_sqlite(path).db()?;
        conn.set_prepared_statement_cache_capacity(32);
        conn.execute_batch(SCHEMA).db()?;
        Ok(Self {
            conn: Mutex::new(conn),
            waiters: Mutex::new(HashMap::new()),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock unwound through the open Transaction, whose drop
        // rolled it back, so the connection is still consistent.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notifier(&self, name: &str) -> Arc<Notify> {
        self.waiters()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    fn wake(&self, name: &str) {
        if let Some(n) = self.waiters().get(name) {
            n.notify_waiters();
        }
    }

    fn create_now(&self, spec: &QueueSpec) -> Result<String, QueueError> {
        validate_name(&spec.name)?;
        check_visibility(spec.visibility_timeout)?;
        let redrive = match &spec.dead_letter {
            None => None,
            Some(dl) => {
                let dlq = name_of(&dl.queue_url).ok_or_else(|| {
                    QueueError::Invalid(format!(
                        "dead-letter target {} is not a queue URL",
                        dl.queue_url
                    ))
                })?;
                if dlq == spec.name {
                    return Err(QueueError::Invalid(format!(
                        "queue {} cannot be its own dead-letter queue",
                        spec.name
                    )));
                }
                if !(1..=MAX_RECEIVE_COUNT).contains(&dl.max_receive_count) {
                    return Err(QueueError::Invalid(format!(
                        "maxReceiveCount {} outside 1..={MAX_RECEIVE_COUNT}",
                        dl.max_receive_count
                    )));
                }
                Some((dlq, i64::from(dl.max_receive_count)))
            }
        };
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        if let Some((dlq, _)) = redrive {
            // SQS refuses a redrive policy whose target does not exist.
            if queue_id(&tx, dlq).is_err() {
                return Err(QueueError::Invalid(format!(
                    "dead-letter target {} does not exist",
                    url_of(dlq)
                )));
            }
        }
        tx.prepare_cached(
            "INSERT INTO sqs_queues (name, visibility_ms, dlq_name, max_receive_count)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET
                 visibility_ms = excluded.visibility_ms,
                 dlq_name = excluded.dlq_name,
                 max_receive_count = excluded.max_receive_count",
        )
        .db()?
        .execute(params![
            spec.name,
            millis(spec.visibility_timeout),
            redrive.map(|(dlq, _)| dlq),
            redrive.map(|(_, max)| max),
        ])
        .db()?;
        tx.commit().db()?;
        Ok(url_of(&spec.name))
    }

    fn delete_queue_now(&self, name: &str) -> Result<(), QueueError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let id = match queue_id(&tx, name) {
            Ok(id) => id,
            Err(QueueError::NoSuchQueue(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        tx.prepare_cached("DELETE FROM sqs_messages WHERE queue_id = ?1")
            .db()?
            .execute([id])
            .db()?;
        tx.prepare_cached("DELETE FROM sqs_queues WHERE id = ?1")
            .db()?
            .execute([id])
            .db()?;
        tx.commit().db()
    }

    fn send_now(&self, name: &str, messages: &[OutgoingMessage]) -> Result<(), QueueError> {
        // Validate everything first so a rejected call stores nothing.
        for m in messages {
            if m.body.len() > MAX_MESSAGE_BYTES {
                return Err(QueueError::Invalid(format!(
                    "message body of {} bytes exceeds {MAX_MESSAGE_BYTES}",
                    m.body.len()
                )));
            }
            if m.delay > MAX_DELAY {
                return Err(QueueError::Invalid(format!(
                    "delay {:?} above {MAX_DELAY:?}",
                    m.delay
                )));
            }
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let qid = queue_id(&tx, name)?;
        let now = now();
        let mut rng = rand::rng();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO sqs_messages
                         (queue_id, visible_ms, receive_count, sent_ms, message_id, body)
                     VALUES (?1, ?2, 0, ?3, ?4, ?5)",
                )
                .db()?;
            for m in messages {
                let message_id = format!("{:032x}", rng.random::<u128>());
                insert
                    .execute(params![qid, now + millis(m.delay), now, message_id, m.body])
                    .db()?;
            }
        }
        tx.commit().db()
    }

    /// One receive without waiting, in one transaction.
    fn receive_now(
        &self,
        name: &str,
        max: usize,
        visibility: Option<Duration>,
    ) -> Result<Attempt, QueueError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let q = queue_row(&tx, name)?;
        let now = now();
        let hidden_until = now + visibility.map_or(q.visibility_ms, millis);
        let mut messages = Vec::new();
        let mut redriven_to = None;
        {
            // ORDER BY visible_ms alone (not visible_ms, id) so the index delivers rows in
            // order and SQLite stops after LIMIT instead of sorting every visible message.
            let mut select = tx
                .prepare_cached(
                    "SELECT id, receive_count, sent_ms, message_id, body FROM sqs_messages
                     WHERE queue_id = ?1 AND visible_ms <= ?2
                     ORDER BY visible_ms LIMIT ?3",
                )
                .db()?;
            let mut take = tx
                .prepare_cached(
                    "UPDATE sqs_messages
                     SET receive_count = receive_count + 1, visible_ms = ?2, receipt = ?3
                     WHERE id = ?1",
                )
                .db()?;
            let mut redrive = tx
                .prepare_cached(
                    "UPDATE sqs_messages
                     SET queue_id = ?2, visible_ms = ?3, receive_count = 0, receipt = NULL
                     WHERE id = ?1",
                )
                .db()?;
            let mut rng = rand::rng();
            // Redriven messages leave the queue, so when a whole batch went to the DLQ we
            // look again rather than return nothing while others are visible.
            while messages.is_empty() {
                let limit = i64::try_from(max).unwrap_or(i64::MAX);
                let candidates = select
                    .query_map(params![q.id, now, limit], |r| {
                        Ok(Candidate {
                            id: r.get(0)?,
                            receive_count: r.get(1)?,
                            sent_ms: r.get(2)?,
                            message_id: r.get(3)?,
                            body: r.get(4)?,
                        })
                    })
                    .db()?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .db()?;
                if candidates.is_empty() {
                    break;
                }
                for c in candidates {
                    if let Some(r) = &q.redrive {
                        if c.receive_count >= r.max_receive_count {
                            redrive.execute(params![c.id, r.dlq_id, now]).db()?;
                            tracing::debug!(
                                queue = name,
                                message_id = %c.message_id,
                                dead_letter_queue = %r.dlq_name,
                                "moved message to its dead-letter queue"
                            );
                            redriven_to = Some(r.dlq_name.clone());
                            continue;
                        }
                    }
                    let token: i64 = rng.random();
                    take.execute(params![c.id, hidden_until, token]).db()?;
                    messages.push(ReceivedMessage {
                        message_id: c.message_id,
                        receipt_handle: receipt_handle(c.id, token),
                        body: c.body,
                        receive_count: u32::try_from(c.receive_count + 1).unwrap_or(u32::MAX),
                        sent_ms: u64::try_from(c.sent_ms).unwrap_or(0),
                    });
                }
            }
        }
        let next_visible_ms = if messages.is_empty() {
            // Nothing is visible, so the smallest visible_ms is in the future.
            tx.prepare_cached(
                "SELECT visible_ms FROM sqs_messages WHERE queue_id = ?1
                 ORDER BY visible_ms LIMIT 1",
            )
            .db()?
            .query_row([q.id], |r| r.get(0))
            .optional()
            .db()?
        } else {
            None
        };
        tx.commit().db()?;
        Ok(Attempt {
            messages,
            next_visible_ms,
            redriven_to,
        })
    }

    fn delete_now(&self, name: &str, handles: &[String]) -> Result<(), QueueError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let qid = queue_id(&tx, name)?;
        {
            let mut delete = tx
                .prepare_cached(
                    "DELETE FROM sqs_messages WHERE id = ?1 AND queue_id = ?2 AND receipt = ?3",
                )
                .db()?;
            for (id, token) in handles.iter().filter_map(|h| parse_receipt(h)) {
                delete.execute(params![id, qid, token]).db()?;
            }
        }
        tx.commit().db()
    }

    fn change_visibility_now(
        &self,
        name: &str,
        handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        check_visibility(timeout)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db()?;
        let qid = queue_id(&tx, name)?;
        if let Some((id, token)) = parse_receipt(handle) {
            tx.prepare_cached(
                "UPDATE sqs_messages SET visible_ms = ?4
                 WHERE id = ?1 AND queue_id = ?2 AND receipt = ?3",
            )
            .db()?
            .execute(params![id, qid, token, now() + millis(timeout)])
            .db()?;
        }
        tx.commit().db()
    }

    fn counts_now(&self, name: &str) -> Result<QueueCounts, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction().db()?;
        let qid = queue_id(&tx, name)?;
        let (visible, in_flight, delayed): (i64, i64, i64) = tx
            .prepare_cached(
                "SELECT COALESCE(SUM(visible_ms <= ?2), 0),
                        COALESCE(SUM(visible_ms > ?2 AND receive_count > 0), 0),
                        COALESCE(SUM(visible_ms > ?2 AND receive_count = 0), 0)
                 FROM sqs_messages WHERE queue_id = ?1",
            )
            .db()?
            .query_row(params![qid, now()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .db()?;
        tx.commit().db()?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(QueueCounts {
            visible: n(visible),
            in_flight: n(in_flight),
            delayed: n(delayed),
        })
    }

    fn queue_names(&self) -> Result<Vec<String>, QueueError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name FROM sqs_queues ORDER BY name")
            .db()?;
        let names = stmt
            .query_map([], |r| r.get(0))
            .db()?
            .collect::<rusqlite::Result<Vec<String>>>()
            .db()?;
        Ok(names)
    }
}

#[async_trait]
impl Queues for SqliteQueues {
    async fn create_queue(&self, spec: &QueueSpec) -> Result<String, QueueError> {
        self.create_now(spec)
    }

    async fn delete_queue(&self, url: &str) -> Result<(), QueueError> {
        let Some(name) = name_of(url) else {
            return Ok(());
        };
        self.delete_queue_now(name)?;
        // Long pollers wake up to find the queue gone; a recreated queue gets a fresh entry.
        if let Some(n) = self.waiters().remove(name) {
            n.notify_waiters();
        }
        Ok(())
    }

    async fn queue_url(&self, name: &str) -> Result<Option<String>, QueueError> {
        validate_name(name)?;
        let mut conn = self.conn();
        let tx = conn.transaction().db()?;
        let url = match queue_id(&tx, name) {
            Ok(_) => Some(url_of(name)),
            Err(QueueError::NoSuchQueue(_)) => None,
            Err(e) => return Err(e),
        };
        tx.commit().db()?;
        Ok(url)
    }

    async fn list_queues(&self, prefix: &str) -> Result<Vec<String>, QueueError> {
        // Filtered here rather than with LIKE, which is case-insensitive and treats `_` as
        // a wildcard; SQS prefixes are case-sensitive and literal.
        Ok(self
            .queue_names()?
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| url_of(&n))
            .collect())
    }

    async fn send(&self, url: &str, messages: Vec<OutgoingMessage>) -> Result<(), QueueError> {
        let name = existing_name(url)?;
        self.send_now(name, &messages)?;
        // Delayed messages wake pollers too: they may now have an earlier time to look again.
        self.wake(name);
        Ok(())
    }

    async fn receive(
        &self,
        url: &str,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let name = existing_name(url)?;
        if max == 0 {
            return Err(QueueError::Invalid("max must be at least 1".into()));
        }
        if wait > MAX_WAIT {
            return Err(QueueError::Invalid(format!(
                "wait {wait:?} above {MAX_WAIT:?}"
            )));
        }
        if let Some(v) = visibility {
            check_visibility(v)?;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notify = self.notifier(name);
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a send that commits after our look still wakes us.
            notified.as_mut().enable();
            let attempt = self.receive_now(name, max, visibility)?;
            if let Some(dlq) = &attempt.redriven_to {
                self.wake(dlq);
            }
            if !attempt.messages.is_empty() {
                return Ok(attempt.messages);
            }
            let start = tokio::time::Instant::now();
            if start >= deadline {
                return Ok(Vec::new());
            }
            let mut until = deadline.min(start + CROSS_PROCESS_POLL);
            if let Some(visible_ms) = attempt.next_visible_ms {
                // +1 ms: the wall clock and tokio's clock round differently.
                let ms = (visible_ms - now() + 1).max(1);
                let at = start + Duration::from_millis(u64::try_from(ms).unwrap_or(1));
                until = until.min(at);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn delete(&self, url: &str, receipt_handles: Vec<String>) -> Result<(), QueueError> {
        self.delete_now(existing_name(url)?, &receipt_handles)
    }

    async fn change_visibility(
        &self,
        url: &str,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let name = existing_name(url)?;
        self.change_visibility_now(name, receipt_handle, timeout)?;
        // A shorter timeout can make a message visible before pollers planned to look.
        self.wake(name);
        Ok(())
    }

    async fn counts(&self, url: &str) -> Result<QueueCounts, QueueError> {
        self.counts_now(existing_name(url)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::DeadLetter;
    use futures::FutureExt;

    fn spec(name: &str, visibility: Duration) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            visibility_timeout: visibility,
            dead_letter: None,
        }
    }

    fn open() -> (tempfile::TempDir, SqliteQueues) {
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueues::open(&dir.path().join("queues.db")).unwrap();
        (dir, q)
    }

    const LONG: Duration = Duration::from_secs(60);
    const GENEROUS: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn visibility_timeout_hides_then_reexposes() {
        let (_dir, q) = open();
        let url = q
            .create_queue(&spec("work", Duration::from_millis(300)))
            .await
            .unwrap();
        q.send(&url, vec![OutgoingMessage::new("hello")])
            .await
            .unwrap();

        let first = q.receive(&url, 10, Duration::ZERO, None).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].body, "hello");
        assert_eq!(first[0].receive_count, 1);
        assert_eq!(first[0].message_id.len(), 32);
        assert!(first[0].message_id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(q
            .receive(&url, 10, Duration::ZERO, None)
            .await
            .unwrap()
            .is_empty());

        // The long poll sleeps until the message becomes visible again.
        let again = q.receive(&url, 10, GENEROUS, None).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message_id, first[0].message_id);
        assert_eq!(again[0].receive_count, 2);
        assert_eq!(again[0].sent_ms, first[0].sent_ms);
        assert_ne!(again[0].receipt_handle, first[0].receipt_handle);
    }

    #[tokio::test]
    async fn stale_receipt_deletes_nothing_current_one_deletes() {
        let (_dir, q) = open();
        let url = q.create_queue(&spec("work", LONG)).await.unwrap();
        q.send(&url, vec![OutgoingMessage::new("m")]).await.unwrap();

        let zero = Some(Duration::ZERO);
        let old = q.receive(&url, 1, Duration::ZERO, zero).await.unwrap();
        let cur = q.receive(&url, 1, Duration::ZERO, None).await.unwrap();
        assert_eq!(cur[0].receive_count, 2);

        q.delete(
            &url,
            vec![
                old[0].receipt_handle.clone(),
                "garbage".into(),
                "1.zz".into(),
                "999.0000000000000001".into(),
            ],
        )
        .await
        .unwrap();
        assert_eq!(q.counts(&url).await.unwrap().in_flight, 1);

        q.delete(&url, vec![cur[0].receipt_handle.clone()])
            .await
            .unwrap();
        assert_eq!(q.counts(&url).await.unwrap(), QueueCounts::default());
    }

    #[tokio::test]
    async fn change_visibility_with_current_and_stale_receipts() {
        let (_dir, q) = open();
        let url = q.create_queue(&spec("work", LONG)).await.unwrap();
        q.send(&url, vec![OutgoingMessage::new("m")]).await.unwrap();
        let first = q.receive(&url, 1, Duration::ZERO, None).await.unwrap();
        q.change_visibility(&url, &first[0].receipt_handle, Duration::ZERO)
            .await
            .unwrap();
        let second = q.receive(&url, 1, Duration::ZERO, None).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].receive_count, 2);

        // The first handle is stale now: no effect, no error.
        q.change_visibility(&url, &first[0].receipt_handle, Duration::ZERO)
            .await
            .unwrap();
        assert!(q
            .receive(&url, 1, Duration::ZERO, None)
            .await
            .unwrap()
            .is_empty());
        assert!(matches!(
            q.change_visibility(&url, &second[0].receipt_handle, Duration::from_secs(50_000))
                .await,
            Err(QueueError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn redrive_moves_to_dlq_after_max_receive_count() {
        let (_dir, q) = open();
        let dlq = q.create_queue(&spec("work-dlq", LONG)).await.unwrap();
        let url = q
            .create_queue(&QueueSpec {
                dead_letter: Some(DeadLetter {
                    queue_url: dlq.clone(),
                    max_receive_count: 2,
                }),
                ..spec("work", LONG)
            })
            .await
            .unwrap();
        q.send(&url, vec![OutgoingMessage::new("poison")])
            .await
            .unwrap();

        let zero = Some(Duration::ZERO);
        let mut id = None;
        for n in 1..=2 {
            let got = q.receive(&url, 10, Duration::ZERO, zero).await.unwrap();
            assert_eq!(got.len(), 1, "receive {n}");
            assert_eq!(got[0].receive_count, n);
            id = Some(got[0].message_id.clone());
            assert_eq!(q.counts(&dlq).await.unwrap(), QueueCounts::default());
        }

        assert!(q
            .receive(&url, 10, Duration::ZERO, zero)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(q.counts(&url).await.unwrap(), QueueCounts::default());
        let dead = q.receive(&dlq, 10, Duration::ZERO, None).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, "poison");
        assert_eq!(Some(dead[0].message_id.clone()), id);
        assert_eq!(dead[0].receive_count, 1);
    }

    #[tokio::test]
    async fn redrive_keeps_returning_the_healthy_messages() {
        let (_dir, q) = open();
        let dlq = q.create_queue(&spec("dlq", LONG)).await.unwrap();
        let url = q
            .create_queue(&QueueSpec {
                dead_letter: Some(DeadLetter {
                    queue_url: dlq.clone(),
                    max_receive_count: 1,
                }),
                ..spec("work", LONG)
            })
            .await
            .unwrap();
        q.send(&url, vec![OutgoingMessage::new("a")]).await.unwrap();
        let a = q
            .receive(&url, 1, Duration::ZERO, Some(Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(a[0].body, "a");
        // Not a timing assertion: only puts "b" strictly behind "a" in visibility order.
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.send(&url, vec![OutgoingMessage::new("b")]).await.unwrap();
        // "a" is first in line but goes to the DLQ; "b" is returned by the same call.
        let b = q.receive(&url, 1, Duration::ZERO, None).await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].body, "b");
        assert_eq!(q.counts(&dlq).await.unwrap().visible, 1);
    }

    #[tokio::test]
    async fn redrive_needs_an_existing_target() {
        let (_dir, q) = open();
        let err = q
            .create_queue(&QueueSpec {
                dead_letter: Some(DeadLetter {
                    queue_url: url_of("missing"),
                    max_receive_count: 3,
                }),
                ..spec("work", LONG)
            })
            .await;
        assert!(matches!(err, Err(QueueError::Invalid(_))), "{err:?}");
        assert!(q.list_queues("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn delay_hides_until_it_elapses() {
        let (_dir, q) = open();
        let url = q.create_queue(&spec("work", LONG)).await.unwrap();
        let msg = OutgoingMessage {
            body: "later".into(),
            delay: Duration::from_millis(300),
        };
        q.send(&url, vec![msg]).await.unwrap();
        assert!(q
            .receive(&url, 10, Duration::ZERO, None)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            q.counts(&url).await.unwrap(),
            QueueCounts {
                visible: 0,
                in_flight: 0,
                delayed: 1
            }
        );
        let got = q.receive(&url, 10, GENEROUS, None).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "later");
        assert_eq!(got[0].receive_count, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_poll_returns_a_message_sent_by_another_task() {
        let (_dir, q) = open();
        let q = Arc::new(q);
        let url = q.create_queue(&spec("work", LONG)).await.unwrap();
        let poller = {
            let (q, url) = (q.clone(), url.clone());
            tokio::spawn(async move { q.receive(&url, 10, MAX_WAIT, None).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        q.send(&url, vec![OutgoingMessage::new("ping")])
            .await
            .unwrap();
        let got = poller.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "ping");
    }

    #[tokio::test]
    async fn send_wakes_registered_pollers() {
        let (_dir, q) = open();
        let url = q.create_queue(&spec("work", LONG)).await.unwrap();
        let other = q.create_queue(&spec("other", LONG)).await.unwrap();
        let notify = q.notifier("work");
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        q.send(&other, vec![OutgoingMessage::new("x")])
            .await
            .unwrap();
        assert!(notified.as_mut().now_or_never().is_none());
        q.send(&url, vec![OutgoingMessage::new("x")]).await.unwrap();
        assert!(notified.as_mut().now_or_never().is_some());
    }

    #[tokio::test]
    async fn oversize_body_is_rejected_and_nothing_stored() {
        let (_dir, q) = open();
        let url = q.create_queue(&spec("work", LONG)).await.unwrap();
        let batch = vec![
            OutgoingMessage::new("fine"),
            OutgoingMessage::new("x".repeat(MAX_MESSAGE_BYTES + 1)),
        ];
        assert!(matches!(
            q.send(&url, batch).await,
            Err(QueueError::Invalid(_))
        ));
        assert_eq!(q.counts(&url).await.unwrap(), QueueCounts::default());
        q.send(
            &url,
            vec![OutgoingMessage::new("x".repeat(MAX_MESSAGE_BYTES))],
        )
        .await
        .unwrap();
        assert_eq!(q.counts(&url).await.unwrap().visible, 1);
    }

    #[tokio::test]
    async fn counts_split_visible_in_flight_and_delayed() {
        let (_dir, q) = open();
        let url = q.create_queue(&spec("work", LONG)).await.unwrap();
        let mut batch: Vec<_> = (0..3)
            .map(|i| OutgoingMessage::new(format!("{i}")))
            .collect();
        batch.push(OutgoingMessage {
            body: "delayed".into(),
            delay: Duration::from_secs(600),
        });
        q.send(&url, batch).await.unwrap();
        let got = q.receive(&url, 1, Duration::ZERO, None).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            q.counts(&url).await.unwrap(),
            QueueCounts {
                visible: 2,
                in_flight: 1,
                delayed: 1
            }
        );
        let rest = q.receive(&url, 100, Duration::ZERO, None).await.unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(
            q.counts(&url).await.unwrap(),
            QueueCounts {
                visible: 0,
                in_flight: 3,
                delayed: 1
            }
        );
    }

    #[tokio::test]
    async fn create_is_idempotent_and_updates_attributes() {
        let (_dir, q) = open();
        let a = q.create_queue(&spec("work", LONG)).await.unwrap();
        let b = q.create_queue(&spec("work", LONG)).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a, "local://queue/work");
        assert_eq!(q.list_queues("").await.unwrap(), vec![a.clone()]);
        assert_eq!(q.queue_url("work").await.unwrap(), Some(a.clone()));
        assert_eq!(q.queue_url("nope").await.unwrap(), None);

        // The new visibility timeout (0) applies: the message is visible right after a receive.
        q.create_queue(&spec("work", Duration::ZERO)).await.unwrap();
        q.send(&a, vec![OutgoingMessage::new("m")]).await.unwrap();
        assert_eq!(
            q.receive(&a, 1, Duration::ZERO, None).await.unwrap().len(),
            1
        );
        let again = q.receive(&a, 1, Duration::ZERO, None).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].receive_count, 2);
    }

    #[tokio::test]
    async fn deleted_queue_is_gone() {
        let (_dir, q) = open();
        let url = q.create_queue(&spec("work", LONG)).await.unwrap();
        q.send(&url, vec![OutgoingMessage::new("m")]).await.unwrap();
        q.delete_queue(&url).await.unwrap();
        q.delete_queue(&url).await.unwrap();
        q.delete_queue("not a url").await.unwrap();
        assert!(matches!(
            q.send(&url, vec![OutgoingMessage::new("m")]).await,
            Err(QueueError::NoSuchQueue(_))
        ));
        assert!(matches!(
            q.receive(&url, 1, Duration::ZERO, None).await,
            Err(QueueError::NoSuchQueue(_))
        ));
        assert!(matches!(
            q.counts(&url).await,
            Err(QueueError::NoSuchQueue(_))
        ));
        assert!(matches!(
            q.delete(&url, vec![]).await,
            Err(QueueError::NoSuchQueue(_))
        ));

        // Recreated, it starts empty.
        q.create_queue(&spec("work", LONG)).await.unwrap();
        assert_eq!(q.counts(&url).await.unwrap(), QueueCounts::default());
    }

    #[tokio::test]
    async fn messages_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queues.db");
        let url = {
            let q = SqliteQueues::open(&path).unwrap();
            let url = q.create_queue(&spec("work", LONG)).await.unwrap();
            q.send(
                &url,
                vec![OutgoingMessage::new("a"), OutgoingMessage::new("b")],
            )
            .await
            .unwrap();
            url
        };
        let q = SqliteQueues::open(&path).unwrap();
        let mut bodies: Vec<_> = q
            .receive(&url, 10, Duration::ZERO, None)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        bodies.sort();
        assert_eq!(bodies, ["a", "b"]);
    }

    #[tokio::test]
    async fn list_queues_filters_by_prefix() {
        let (_dir, q) = open();
        for name in ["job1-b", "job1-a", "job2-a", "JOB1-c", "job1_x"] {
            q.create_queue(&spec(name, LONG)).await.unwrap();
        }
        assert_eq!(
            q.list_queues("job1-").await.unwrap(),
            vec![url_of("job1-a"), url_of("job1-b")]
        );
        assert_eq!(q.list_queues("").await.unwrap().len(), 5);
        assert!(q.list_queues("zzz").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn names_and_urls_follow_sqs_rules() {
        let (_dir, q) = open();
        for bad in ["", "has space", "dot.ted", &"x".repeat(81)] {
            assert!(
                matches!(
                    q.create_queue(&spec(bad, LONG)).await,
                    Err(QueueError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        q.create_queue(&spec(&"x".repeat(80), LONG)).await.unwrap();
        assert!(matches!(
            q.send("https://sqs.example/work", vec![]).await,
            Err(QueueError::NoSuchQueue(_))
        ));
        assert!(matches!(
            q.counts(&url_of("unknown")).await,
            Err(QueueError::NoSuchQueue(_))
        ));
    }

    /// A smoke run of the hot path: send, receive and delete in batches of 100.
    /// `cargo test -p orchestration --release --lib local::queues -- --ignored --nocapture`
    #[tokio::test]
    #[ignore]
    async fn throughput() {
        let (_dir, q) = open();
        let url = q.create_queue(&spec("work", LONG)).await.unwrap();
        let n = 1_000_000;
        let body = "x".repeat(100);
        let start = std::time::Instant::now();
        for _ in 0..n / 100 {
            let batch = (0..100)
                .map(|_| OutgoingMessage::new(body.clone()))
                .collect();
            q.send(&url, batch).await.unwrap();
        }
        let sent = start.elapsed();
        let mut done = 0;
        while done < n {
            let got = q.receive(&url, 100, Duration::ZERO, None).await.unwrap();
            assert!(!got.is_empty());
            done += got.len();
            q.delete(&url, got.into_iter().map(|m| m.receipt_handle).collect())
                .await
                .unwrap();
        }
        let total = start.elapsed();
        println!(
            "{n} messages: sent in {sent:?}, all passes in {total:?} ({:.0}/s)",
            n as f64 / total.as_secs_f64()
        );
        assert_eq!(q.counts(&url).await.unwrap(), QueueCounts::default());
    }
}
