//! [`SqliteQueues`]: SQS standard queues on SQLite, sharded over several database files.
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
//!
//! # Shards
//!
//! One connection would serialize every queue operation of every stage, so the queues are
//! spread over [`SHARDS`] SQLite files, each with its own connection behind its own lock:
//! `path` itself is shard 0, and `path.1`, `path.2`, … are the others. A queue lives, with
//! its `sqs_queues` row and all its messages, in shard `fnv1a(name) % SHARDS`: FNV-1a rather
//! than std's `Hash`, whose output may change between Rust releases and would then look for
//! queues in the wrong file. For the same reason each file records the shard count in
//! `PRAGMA user_version`, and `open` refuses files written with another count (or by the
//! unsharded layout). `list_queues` merges all shards. No operation holds two shard locks at
//! once, so shards cannot deadlock. Receipt handles need not name their shard: the queue URL
//! passed along with them does.
//!
//! A shard's lock is async: a task that finds its shard busy gives its worker thread to other
//! tasks instead of blocking it (the SQLite work itself still runs on the worker thread).
//! Queue operations never checkpoint the WAL: automatic checkpoints are off, and a background
//! thread checkpoints each shard every `CHECKPOINT_EVERY` while holding the shard's lock, so
//! that the copy catches up with the writes and the WAL starts over. The shard's users wait
//! for it asynchronously; no worker thread blocks on its fsyncs.
//!
//! # Giving space back
//!
//! A queue that held a job's millions of messages leaves its pages free in its shard when
//! it is emptied, and the shard's WAL as large as it ever grew: SQLite reuses both but
//! never shrinks them. Deleting a queue gives the space back ([`Shard::reclaim`]) once there
//! is enough of it ([`super::RECLAIM_BYTES`]): if what the shard still holds is small (at
//! most [`RECLAIM_LIVE_PAGES`]), a `VACUUM` rewrites it into a file of just that (its cost
//! is the live data, a few milliseconds, however much was freed), and a `TRUNCATE`
//! checkpoint empties the WAL. A shard busy with another
//! job's deep queue is not rewritten under it; its free pages are reused by that job and
//! given back by a later delete. [`SqliteQueues::reclaim`] does the same for every
//! shard when the engine stops, so the next process to open them has no log to recover.
//!
//! `auto_vacuum = INCREMENTAL` was tried first: on a 94 MB file freed the way a queue frees
//! its pages, `incremental_vacuum` took 1.5 s (in 16 MiB steps, each holding the shard),
//! where `VACUUM` of the live rest took 8 ms.
//!
//! # Redrive across shards
//!
//! A queue's dead-letter queue (DLQ) may live in another shard, so moving a message there
//! cannot be one transaction. It is a two-phase move through an outbox, which never loses a
//! message and, repeated, never duplicates one:
//!
//! 1. In the receive transaction of the source shard, every message received once more after
//!    `maxReceiveCount` is moved from `sqs_messages` into that shard's `sqs_moves` outbox,
//!    with its DLQ's name. From then on it is in neither queue: no receive returns it and no
//!    count includes it, as SQS counts a message in flight to its DLQ in neither.
//! 2. In a transaction of the DLQ's shard, the message is inserted into the DLQ, keeping its
//!    message id and sent time, unless `sqs_arrivals` already records that message id in that
//!    DLQ. The record is written in the same transaction, so repeating phase 2 changes nothing.
//! 3. In the source shard, the outbox row is deleted.
//!
//! Phases 2 and 3 run right after the receive that did phase 1, and again for whatever a
//! crash or an error left in an outbox: at `open`, and on every receive that finds its shard's
//! outbox non-empty. Same-shard redrive takes the same path: it is rare, and one path is one
//! thing to get right. Redrive pauses while the DLQ does not exist, as in SQS; only a receive
//! that meets an over-received message asks the DLQ's shard, so the common receive stays in
//! its own shard. A DLQ deleted between phases 1 and 2 receives nothing: the move ends as if
//! it had landed just before the delete. A DLQ's arrival records are deleted with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::{Mutex as AsyncMutex, MutexGuard as AsyncMutexGuard, Notify};

use crate::ports::{
    limits, OutgoingMessage, QueueCounts, QueueError, QueueSpec, Queues, ReceivedMessage,
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
/// Database files the queues are spread over. A job's four stage queues are busy at once,
/// and any two of them share a file with probability 1/4: with two cores, more files would
/// buy little. Changing it moves queues to other files, so `open` refuses old files.
pub const SHARDS: usize = 4;
/// Page cache per shard, in KiB (see `Shard::open`).
const SHARD_CACHE_KIB: i64 = 4 * 1024;
/// How often a background thread checkpoints each shard's WAL (module docs).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Outbox rows finished per read, so a burst of dead letters never sits in memory at once.
const MOVES_PER_READ: i64 = 64;
/// A shard holding at most this many pages in use (16 MiB of 4 KiB pages) is rewritten
/// when it has free pages to give back (module docs): its `VACUUM` holds the shard for a
/// few milliseconds at most.
const RECLAIM_LIVE_PAGES: i64 = 4096;

/// `sqs_` prefixes keep the tables apart from other adapters sharing a database file.
/// Messages stay a rowid table: bodies can be large, and WITHOUT ROWID tables store whole
/// rows in the B-tree nodes. The index leads with `(queue_id, visible_ms)` for receives and
/// carries `receive_count` so `counts` is an index-only scan. `receipt` is the random token
/// of the current receipt handle (`{id}.{receipt:016x}`); each receive draws a new one,
/// which is what makes older handles stale. `sqs_moves` is the redrive outbox and
/// `sqs_arrivals` what makes redrive idempotent (module docs); a UNIQUE index on
/// `sqs_messages (queue_id, message_id)` would do the latter too, but every send and delete
/// would then pay for a random-order index entry.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sqs_queues (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    visibility_ms     INTEGER NOT NULL,
    dlq_name          TEXT,
    max_receive_count INTEGER,
    -- Messages in the queue, kept by every insert and delete, so that counts need not
    -- scan a deep queue (and hold the shard) to answer.
    depth             INTEGER NOT NULL DEFAULT 0
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
CREATE TABLE IF NOT EXISTS sqs_moves (
    id         INTEGER PRIMARY KEY,
    dlq_name   TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sent_ms    INTEGER NOT NULL,
    body       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sqs_arrivals (
    queue_id   INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (queue_id, message_id)
) WITHOUT ROWID;
";

/// SQS queues in [`SHARDS`] SQLite databases; see the module docs.
#[derive(Debug)]
pub struct SqliteQueues {
    /// Indexed by [`shard_of`]; always [`SHARDS`] long. Shared with the checkpointer thread.
    shards: Arc<[Shard]>,
    /// Dropping it stops the checkpointer thread.
    _stop_checkpoints: mpsc::Sender<()>,
}

/// One database file and the long pollers of its queues.
#[derive(Debug)]
struct Shard {
    conn: AsyncMutex<Connection>,
    path: PathBuf,
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
    dlq_name: String,
}

/// A message in an outbox, between phases 1 and 3 of its move.
struct Move {
    id: i64,
    dlq_name: String,
    message_id: String,
    sent_ms: i64,
    body: String,
}

/// Outcome of one non-waiting receive attempt.
struct Attempt {
    messages: Vec<ReceivedMessage>,
    /// When nothing was received: the earliest time a message of the queue becomes visible.
    next_visible_ms: Option<i64>,
    /// The shard's outbox holds moves to finish (phases 2 and 3).
    moves_pending: bool,
}

/// Outcome of one receive transaction.
enum Step {
    Done(Attempt),
    /// Over-received messages are waiting, and only the DLQ's shard knows whether the DLQ
    /// exists: ask it, then try again with the answer. Nothing was written.
    CheckDlq(String),
}

trait Db<T> {
    fn db(self) -> Result<T, QueueError>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, QueueError> {
        self.map_err(|e| QueueError::Backend(e.to_string()))
    }
}

/// FNV-1a (64-bit): a fixed function of the bytes, so a queue's shard never changes
/// between builds, unlike std's `Hash`.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The shard holding the queue `name`.
fn shard_of(name: &str) -> usize {
    // The remainder is below SHARDS, so it fits in usize.
    (fnv1a(name.as_bytes()) % SHARDS as u64) as usize
}

/// Shard 0 is `path` itself; shard `i` is `path` with `.i` appended.
fn shard_path(path: &Path, index: usize) -> PathBuf {
    if index == 0 {
        return path.to_path_buf();
    }
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{index}"));
    PathBuf::from(p)
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

/// A write transaction: IMMEDIATE takes the write lock up front, so two processes sharing
/// the files wait for each other instead of failing to upgrade a read.
fn immediate(conn: &mut Connection) -> Result<Transaction<'_>, QueueError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .db()
}

/// Creates the schema, or checks that an existing file was sharded the way this build
/// shards (module docs): a mismatch would look for queues in the wrong files.
fn init_schema(conn: &mut Connection, path: &Path) -> Result<(), QueueError> {
    let tx = immediate(conn)?;
    let layout: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).db()?;
    let has_queues: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'sqs_queues')",
            [],
            |r| r.get(0),
        )
        .db()?;
    let shards = SHARDS as i64;
    if layout != shards && (layout != 0 || has_queues) {
        return Err(QueueError::Backend(format!(
            "{} was written for {layout} queue shard(s) (0: unsharded), this build uses \
             {SHARDS}; remove the state directory or use the matching build",
            path.display()
        )));
    }
    tx.execute_batch(SCHEMA).db()?;
    let has_depth: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('sqs_queues') WHERE name = 'depth')",
            [],
            |r| r.get(0),
        )
        .db()?;
    if !has_depth {
        // A state directory from before depths were kept.
        tx.execute_batch(
            "ALTER TABLE sqs_queues ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
             UPDATE sqs_queues SET depth =
                 (SELECT COUNT(*) FROM sqs_messages WHERE queue_id = sqs_queues.id);",
        )
        .db()?;
    }
    if layout == 0 {
        tx.pragma_update(None, "user_version", shards).db()?;
    }
    tx.commit().db()
}

/// Keeps `sqs_queues.depth` in step with the rows a transaction added or removed.
fn adjust_depth(conn: &Connection, qid: i64, by: i64) -> Result<(), QueueError> {
    if by != 0 {
        conn.prepare_cached("UPDATE sqs_queues SET depth = depth + ?2 WHERE id = ?1")
            .db()?
            .execute(params![qid, by])
            .db()?;
    }
    Ok(())
}

fn find_queue(conn: &Connection, name: &str) -> Result<Option<i64>, QueueError> {
    conn.prepare_cached("SELECT id FROM sqs_queues WHERE name = ?1")
        .db()?
        .query_row([name], |r| r.get(0))
        .optional()
        .db()
}

fn queue_id(conn: &Connection, name: &str) -> Result<i64, QueueError> {
    find_queue(conn, name)?.ok_or_else(|| QueueError::NoSuchQueue(url_of(name)))
}

fn queue_row(conn: &Connection, name: &str) -> Result<QueueRow, QueueError> {
    let row: Option<(i64, i64, Option<String>, Option<i64>)> = conn
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
    let redrive = match (dlq_name, max) {
        (Some(dlq_name), Some(max_receive_count)) => Some(Redrive {
            max_receive_count,
            dlq_name,
        }),
        _ => None,
    };
    Ok(QueueRow {
        id,
        visibility_ms,
        redrive,
    })
}

/// A visible message a receive looked at.
struct Candidate {
    id: i64,
    receive_count: i64,
    sent_ms: i64,
    message_id: String,
    body: String,
}

/// The next `limit` visible messages, in visibility order.
fn visible_window(
    conn: &Connection,
    qid: i64,
    now: i64,
    limit: i64,
) -> Result<Vec<Candidate>, QueueError> {
    // ORDER BY visible_ms alone (not visible_ms, id) so the index delivers rows in order
    // and SQLite stops after LIMIT instead of sorting every visible message. Collected
    // before anything is written: an update moves the row in the index this cursor walks.
    conn.prepare_cached(
        "SELECT id, receive_count, sent_ms, message_id, body FROM sqs_messages
         WHERE queue_id = ?1 AND visible_ms <= ?2
         ORDER BY visible_ms LIMIT ?3",
    )
    .db()?
    .query_map(params![qid, now, limit], |r| {
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
    .db()
}

/// Phase 1 of redrive: the messages leave their queue for the shard's outbox.
fn park(conn: &Connection, dead: &[Candidate], dlq_name: &str) -> Result<(), QueueError> {
    let mut copy = conn
        .prepare_cached(
            "INSERT INTO sqs_moves (dlq_name, message_id, sent_ms, body)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .db()?;
    let mut remove = conn
        .prepare_cached("DELETE FROM sqs_messages WHERE id = ?1")
        .db()?;
    for c in dead {
        copy.execute(params![dlq_name, c.message_id, c.sent_ms, c.body])
            .db()?;
        remove.execute([c.id]).db()?;
    }
    Ok(())
}

/// Delivers the messages: hidden until `hidden_until`, under fresh receipts.
fn take(
    conn: &Connection,
    live: Vec<Candidate>,
    hidden_until: i64,
) -> Result<Vec<ReceivedMessage>, QueueError> {
    // One UPDATE per message: a single UPDATE … RETURNING, or one UPDATE … WHERE id IN
    // (the window), measured slower (SQLite buffers both in temporary B-trees).
    let mut update = conn
        .prepare_cached(
            "UPDATE sqs_messages
             SET receive_count = receive_count + 1, visible_ms = ?2, receipt = ?3
             WHERE id = ?1",
        )
        .db()?;
    let mut rng = rand::rng();
    let mut messages = Vec::with_capacity(live.len());
    for c in live {
        // A new receipt token per receive is what makes older handles stale.
        let token: i64 = rng.random();
        update.execute(params![c.id, hidden_until, token]).db()?;
        messages.push(ReceivedMessage {
            message_id: c.message_id,
            receipt_handle: receipt_handle(c.id, token),
            body: c.body,
            receive_count: u32::try_from(c.receive_count + 1).unwrap_or(u32::MAX),
            sent_ms: u64::try_from(c.sent_ms).unwrap_or(0),
        });
    }
    Ok(messages)
}

/// The earliest time a message of the queue becomes visible.
fn next_visible(conn: &Connection, qid: i64) -> Result<Option<i64>, QueueError> {
    conn.prepare_cached(
        "SELECT visible_ms FROM sqs_messages WHERE queue_id = ?1
         ORDER BY visible_ms LIMIT 1",
    )
    .db()?
    .query_row([qid], |r| r.get(0))
    .optional()
    .db()
}

fn outbox_nonempty(conn: &Connection) -> Result<bool, QueueError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM sqs_moves)")
        .db()?
        .query_row([], |r| r.get(0))
        .db()
}

/// Checkpoints every shard's WAL every [`CHECKPOINT_EVERY`] until the returned sender is
/// dropped (or the shards are).
fn spawn_checkpointer(shards: Weak<[Shard]>) -> Result<mpsc::Sender<()>, QueueError> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("queue-checkpoints".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                let Some(shards) = shards.upgrade() else {
                    return;
                };
                for shard in shards.iter() {
                    shard.checkpoint();
                }
            }
        })
        .map_err(|e| QueueError::Backend(format!("starting the checkpointer: {e}")))?;
    Ok(stop)
}

/// [`super::truncate_wal`], with a debug line when a reader held it up.
fn truncate_wal(conn: &Connection) -> Result<(), QueueError> {
    if !super::truncate_wal(conn).db()? {
        tracing::debug!("queue WAL not truncated: a reader holds an older snapshot");
    }
    Ok(())
}

impl Shard {
    fn open(path: &Path) -> Result<Self, QueueError> {
        let mut conn = super::open_sqlite(path).db()?;
        conn.set_prepared_statement_cache_capacity(32);
        // Far below the 64 MiB the other adapters cache, on purpose: a transaction that
        // splits B-tree pages makes its commit scan the whole page-cache hash table (SQLite
        // parks a page at the lock-page number while renumbering), which cost ~10% of the
        // engine's CPU at 64 MiB; and a queue's hot pages (the head and tail of its index
        // and table) are few. In engine runs 16 and 64 MiB cost clearly more CPU than 4 MiB,
        // and 1 or 2 MiB no less.
        conn.pragma_update(None, "cache_size", -SHARD_CACHE_KIB)
            .db()?;
        // The checkpointer thread checkpoints instead: an automatic checkpoint would run in
        // the committing operation and fsync on the async worker thread that called it.
        conn.pragma_update(None, "wal_autocheckpoint", 0).db()?;
        init_schema(&mut conn, path)?;
        Ok(Self {
            conn: AsyncMutex::new(conn),
            path: path.to_owned(),
            waiters: Mutex::new(HashMap::new()),
        })
    }

    /// Copies the WAL into the database, holding the shard's lock so that none of our
    /// operations appends to the WAL meanwhile: the checkpoint then catches up and the next
    /// write starts the WAL over. (Unlocked, it chased a busy shard's writes and the WAL grew
    /// to a gigabyte.) Tasks waiting for the shard meanwhile yield their threads.
    fn checkpoint(&self) {
        let conn = self.conn.blocking_lock();
        // PASSIVE: another process's reader or writer is not waited for; the next round
        // copies what this one could not.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "queue checkpoint failed");
        }
    }

    /// Waits for the shard's connection without blocking the thread: a worker thread whose
    /// task waits here runs other tasks meanwhile. (A panic while holding it unwound through
    /// the open Transaction, whose drop rolled it back, so the connection is consistent.)
    async fn conn(&self) -> AsyncMutexGuard<'_, Connection> {
        self.conn.lock().await
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notifier(&self, name: &str) -> Arc<Notify> {
        let mut waiters = self.waiters();
        // Looked up before inserting: every receive comes here, and the key is a new String.
        if let Some(n) = waiters.get(name) {
            return n.clone();
        }
        waiters
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    fn wake(&self, name: &str) {
        if let Some(n) = self.waiters().get(name) {
            n.notify_waiters();
        }
    }

    async fn has_queue(&self, name: &str) -> Result<bool, QueueError> {
        Ok(find_queue(&*self.conn().await, name)?.is_some())
    }

    async fn upsert_queue(
        &self,
        name: &str,
        visibility_ms: i64,
        redrive: Option<(&str, i64)>,
    ) -> Result<(), QueueError> {
        self.conn()
            .await
            .prepare_cached(
                "INSERT INTO sqs_queues (name, visibility_ms, dlq_name, max_receive_count)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET
                     visibility_ms = excluded.visibility_ms,
                     dlq_name = excluded.dlq_name,
                     max_receive_count = excluded.max_receive_count",
            )
            .db()?
            .execute(params![
                name,
                visibility_ms,
                redrive.map(|(dlq, _)| dlq),
                redrive.map(|(_, max)| max),
            ])
            .db()?;
        Ok(())
    }

    async fn delete_queue(&self, name: &str) -> Result<(), QueueError> {
        {
            let mut conn = self.conn().await;
            let tx = immediate(&mut conn)?;
            let Some(id) = find_queue(&tx, name)? else {
                return Ok(());
            };
            for sql in [
                "DELETE FROM sqs_messages WHERE queue_id = ?1",
                "DELETE FROM sqs_arrivals WHERE queue_id = ?1",
                "DELETE FROM sqs_queues WHERE id = ?1",
            ] {
                tx.prepare_cached(sql).db()?.execute([id]).db()?;
            }
            tx.commit().db()?;
        }
        self.reclaim().await
    }

    /// Gives the shard's free pages back to the file system when there are enough to be
    /// worth it and what the shard still holds is small, and empties its WAL when that is
    /// large (module docs).
    async fn reclaim(&self) -> Result<(), QueueError> {
        let conn = self.conn().await;
        let pragma = |name: &str| -> Result<i64, QueueError> {
            conn.pragma_query_value(None, name, |r| r.get(0)).db()
        };
        let free = pragma("freelist_count")?;
        let live = pragma("page_count")? - free;
        let free_bytes = u64::try_from(free * pragma("page_size")?).unwrap_or(0);
        let rewrite = free_bytes >= super::RECLAIM_BYTES && live <= RECLAIM_LIVE_PAGES;
        let wal = super::wal_bytes(&self.path);
        let started = std::time::Instant::now();
        if rewrite {
            conn.execute_batch("VACUUM").db()?;
        }
        if rewrite || wal >= super::RECLAIM_BYTES {
            truncate_wal(&conn)?;
            tracing::debug!(
                shard = %self.path.display(),
                free_bytes,
                wal_bytes = wal,
                rewritten = rewrite,
                ms = started.elapsed().as_millis() as u64,
                "queue shard reclaimed"
            );
        }
        Ok(())
    }

    /// Long pollers of a deleted queue wake up to find it gone; a recreated queue gets a
    /// fresh entry.
    fn release_waiters(&self, name: &str) {
        if let Some(n) = self.waiters().remove(name) {
            n.notify_waiters();
        }
    }

    async fn send(&self, name: &str, messages: &[OutgoingMessage]) -> Result<(), QueueError> {
        let mut conn = self.conn().await;
        let tx = immediate(&mut conn)?;
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
        adjust_depth(&tx, qid, messages.len() as i64)?;
        tx.commit().db()
    }

    /// One receive transaction: phase 1 of redrive for over-received messages (when the
    /// DLQ is known to exist), then the receive itself.
    async fn receive(
        &self,
        name: &str,
        max: usize,
        visibility: Option<Duration>,
        dlq_exists: Option<bool>,
    ) -> Result<Step, QueueError> {
        let mut conn = self.conn().await;
        let tx = immediate(&mut conn)?;
        let q = queue_row(&tx, name)?;
        let now = now();
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let hidden_until = now + visibility.map_or(q.visibility_ms, millis);
        // While the DLQ is missing, redrive pauses and over-received messages are delivered
        // (SQS does the same).
        let redrive = q.redrive.as_ref().filter(|_| dlq_exists != Some(false));
        let mut messages = Vec::new();
        // Redriven messages leave the queue, so when a whole window went to the DLQ we look
        // again rather than return nothing while others are visible.
        while messages.is_empty() {
            let window = visible_window(&tx, q.id, now, limit)?;
            if window.is_empty() {
                break;
            }
            let (dead, live): (Vec<_>, Vec<_>) = window
                .into_iter()
                .partition(|c| redrive.is_some_and(|r| c.receive_count >= r.max_receive_count));
            if let (Some(r), false) = (redrive, dead.is_empty()) {
                // Reached before anything is written: with the DLQ unknown no earlier round
                // parked, and none took (the loop would have ended).
                let Some(true) = dlq_exists else {
                    return Ok(Step::CheckDlq(r.dlq_name.clone()));
                };
                park(&tx, &dead, &r.dlq_name)?;
                adjust_depth(&tx, q.id, -(dead.len() as i64))?;
                tracing::debug!(
                    queue = name,
                    dead_letter_queue = %r.dlq_name,
                    messages = dead.len(),
                    "messages leave for their dead-letter queue"
                );
            }
            messages = take(&tx, live, hidden_until)?;
        }
        let next_visible_ms = if messages.is_empty() {
            // Nothing is visible, so the smallest visible_ms is in the future.
            next_visible(&tx, q.id)?
        } else {
            None
        };
        let moves_pending = outbox_nonempty(&tx)?;
        tx.commit().db()?;
        Ok(Step::Done(Attempt {
            messages,
            next_visible_ms,
            moves_pending,
        }))
    }

    async fn delete(&self, name: &str, handles: &[String]) -> Result<(), QueueError> {
        let mut conn = self.conn().await;
        let tx = immediate(&mut conn)?;
        let qid = queue_id(&tx, name)?;
        {
            let mut delete = tx
                .prepare_cached(
                    "DELETE FROM sqs_messages WHERE id = ?1 AND queue_id = ?2 AND receipt = ?3",
                )
                .db()?;
            let mut deleted = 0;
            for (id, token) in handles.iter().filter_map(|h| parse_receipt(h)) {
                deleted += delete.execute(params![id, qid, token]).db()?;
            }
            adjust_depth(&tx, qid, -(deleted as i64))?;
        }
        tx.commit().db()
    }

    async fn change_visibility(
        &self,
        name: &str,
        handles: &[impl AsRef<str>],
        visible_ms: i64,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn().await;
        let tx = immediate(&mut conn)?;
        let qid = queue_id(&tx, name)?;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE sqs_messages SET visible_ms = ?4
                     WHERE id = ?1 AND queue_id = ?2 AND receipt = ?3",
                )
                .db()?;
            for (id, token) in handles.iter().filter_map(|h| parse_receipt(h.as_ref())) {
                update.execute(params![id, qid, token, visible_ms]).db()?;
            }
        }
        tx.commit().db()
    }

    async fn counts(&self, name: &str) -> Result<QueueCounts, QueueError> {
        let mut conn = self.conn().await;
        let tx = conn.transaction().db()?;
        let (qid, depth): (i64, i64) = tx
            .prepare_cached("SELECT id, depth FROM sqs_queues WHERE name = ?1")
            .db()?
            .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .db()?
            .ok_or_else(|| QueueError::NoSuchQueue(url_of(name)))?;
        // Only the hidden messages are read (in flight and delayed: few, however deep the
        // queue); the visible ones are the rest of the depth.
        let (in_flight, delayed): (i64, i64) = tx
            .prepare_cached(
                "SELECT COALESCE(SUM(receive_count > 0), 0), COALESCE(SUM(receive_count = 0), 0)
                 FROM sqs_messages WHERE queue_id = ?1 AND visible_ms > ?2",
            )
            .db()?
            .query_row(params![qid, now()], |r| Ok((r.get(0)?, r.get(1)?)))
            .db()?;
        tx.commit().db()?;
        let visible = depth - in_flight - delayed;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(QueueCounts {
            visible: n(visible),
            in_flight: n(in_flight),
            delayed: n(delayed),
        })
    }

    async fn queue_names(&self) -> Result<Vec<String>, QueueError> {
        let conn = self.conn().await;
        let mut stmt = conn.prepare_cached("SELECT name FROM sqs_queues").db()?;
        let names = stmt
            .query_map([], |r| r.get(0))
            .db()?
            .collect::<rusqlite::Result<Vec<String>>>()
            .db()?;
        Ok(names)
    }

    /// The oldest moves in the outbox.
    async fn pending_moves(&self) -> Result<Vec<Move>, QueueError> {
        let conn = self.conn().await;
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, dlq_name, message_id, sent_ms, body FROM sqs_moves
                 ORDER BY id LIMIT ?1",
            )
            .db()?;
        let moves = stmt
            .query_map([MOVES_PER_READ], |r| {
                Ok(Move {
                    id: r.get(0)?,
                    dlq_name: r.get(1)?,
                    message_id: r.get(2)?,
                    sent_ms: r.get(3)?,
                    body: r.get(4)?,
                })
            })
            .db()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .db()?;
        Ok(moves)
    }

    /// Phase 2 of redrive, in the DLQ's shard: true if the message arrived now, false if it
    /// had arrived before or its DLQ no longer exists.
    async fn land(&self, m: &Move) -> Result<bool, QueueError> {
        let mut conn = self.conn().await;
        let tx = immediate(&mut conn)?;
        let Some(qid) = find_queue(&tx, &m.dlq_name)? else {
            tracing::warn!(
                message_id = %m.message_id,
                dead_letter_queue = %m.dlq_name,
                "dead-letter queue deleted while a message moved there; dropped with it"
            );
            return Ok(false);
        };
        let first = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO sqs_arrivals (queue_id, message_id) VALUES (?1, ?2)",
            )
            .db()?
            .execute(params![qid, m.message_id])
            .db()?
            == 1;
        if first {
            tx.prepare_cached(
                "INSERT INTO sqs_messages
                     (queue_id, visible_ms, receive_count, sent_ms, message_id, body)
                 VALUES (?1, ?2, 0, ?3, ?4, ?5)",
            )
            .db()?
            .execute(params![qid, now(), m.sent_ms, m.message_id, m.body])
            .db()?;
            adjust_depth(&tx, qid, 1)?;
            tracing::debug!(
                message_id = %m.message_id,
                dead_letter_queue = %m.dlq_name,
                "moved message to its dead-letter queue"
            );
        }
        tx.commit().db()?;
        Ok(first)
    }

    /// Phase 3 of redrive, in the source shard.
    async fn forget_move(&self, id: i64) -> Result<(), QueueError> {
        self.conn()
            .await
            .prepare_cached("DELETE FROM sqs_moves WHERE id = ?1")
            .db()?
            .execute([id])
            .db()?;
        Ok(())
    }
}

impl SqliteQueues {
    /// Opens (creating if needed) the queues in the SQLite database at `path` and its
    /// sibling shards (`path.1`, …; module docs), and finishes any redrive a crash left
    /// half done.
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        let shards: Arc<[Shard]> = (0..SHARDS)
            .map(|i| Shard::open(&shard_path(path, i)))
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let queues = Self {
            _stop_checkpoints: spawn_checkpointer(Arc::downgrade(&shards))?,
            shards,
        };
        // No task can hold these locks yet (at most the checkpointer, briefly), so blocking
        // on them is safe here, even when `open` is called inside an async runtime.
        for index in 0..SHARDS {
            futures::executor::block_on(queues.finish_moves(index))?;
        }
        Ok(queues)
    }

    fn shard(&self, name: &str) -> &Shard {
        &self.shards[shard_of(name)]
    }

    /// Gives back what every shard can and empties its WAL into its file (module docs):
    /// for when the engine stops, so that the next process to open the shards has no log
    /// to recover.
    pub async fn reclaim(&self) -> Result<(), QueueError> {
        for shard in self.shards.iter() {
            shard.reclaim().await?;
        }
        Ok(())
    }

    fn notifier(&self, name: &str) -> Arc<Notify> {
        self.shard(name).notifier(name)
    }

    fn wake(&self, name: &str) {
        self.shard(name).wake(name);
    }

    async fn create_now(&self, spec: &QueueSpec) -> Result<String, QueueError> {
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
                // SQS refuses a redrive policy whose target does not exist. The check and
                // the write are in different shards, so not atomic; a DLQ deleted in
                // between only pauses redrive, which receives check anyway.
                if !self.shard(dlq).has_queue(dlq).await? {
                    return Err(QueueError::Invalid(format!(
                        "dead-letter target {} does not exist",
                        url_of(dlq)
                    )));
                }
                Some((dlq, i64::from(dl.max_receive_count)))
            }
        };
        self.shard(&spec.name)
            .upsert_queue(&spec.name, millis(spec.visibility_timeout), redrive)
            .await?;
        Ok(url_of(&spec.name))
    }

    async fn send_now(&self, name: &str, messages: &[OutgoingMessage]) -> Result<(), QueueError> {
        // Validate everything first so a rejected call stores nothing.
        for m in messages {
            limits::check_message(&m.body).map_err(QueueError::TooLarge)?;
            if m.delay > MAX_DELAY {
                return Err(QueueError::Invalid(format!(
                    "delay {:?} above {MAX_DELAY:?}",
                    m.delay
                )));
            }
        }
        self.shard(name).send(name, messages).await
    }

    /// One receive without waiting, including phase 1 of redrive but not phases 2 and 3.
    async fn receive_now(
        &self,
        name: &str,
        max: usize,
        visibility: Option<Duration>,
    ) -> Result<Attempt, QueueError> {
        let shard = self.shard(name);
        let mut dlq_exists = None;
        // At most two rounds: with the DLQ's existence known, the shard never asks again.
        loop {
            match shard.receive(name, max, visibility, dlq_exists).await? {
                Step::Done(attempt) => return Ok(attempt),
                Step::CheckDlq(dlq) => {
                    dlq_exists = Some(self.shard(&dlq).has_queue(&dlq).await?);
                }
            }
        }
    }

    /// Phases 2 and 3 of redrive for every move in shard `index`'s outbox. Concurrent calls
    /// may land the same move twice; `sqs_arrivals` makes the second one a no-op.
    async fn finish_moves(&self, index: usize) -> Result<(), QueueError> {
        let source = &self.shards[index];
        loop {
            let moves = source.pending_moves().await?;
            for m in &moves {
                let target = self.shard(&m.dlq_name);
                if target.land(m).await? {
                    target.wake(&m.dlq_name);
                }
                source.forget_move(m.id).await?;
            }
            if moves.len() < MOVES_PER_READ as usize {
                return Ok(());
            }
        }
    }

    /// `ChangeMessageVisibility` for any number of receipts, in one transaction.
    async fn change_visibility_now(
        &self,
        url: &str,
        handles: &[impl AsRef<str>],
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let name = existing_name(url)?;
        check_visibility(timeout)?;
        self.shard(name)
            .change_visibility(name, handles, now() + millis(timeout))
            .await?;
        // A shorter timeout can make a message visible before pollers planned to look.
        self.wake(name);
        Ok(())
    }

    async fn queue_names(&self) -> Result<Vec<String>, QueueError> {
        let mut names = Vec::new();
        for shard in self.shards.iter() {
            names.extend(shard.queue_names().await?);
        }
        names.sort();
        Ok(names)
    }
}

#[async_trait]
impl Queues for SqliteQueues {
    async fn create_queue(&self, spec: &QueueSpec) -> Result<String, QueueError> {
        self.create_now(spec).await
    }

    async fn delete_queue(&self, url: &str) -> Result<(), QueueError> {
        let Some(name) = name_of(url) else {
            return Ok(());
        };
        let shard = self.shard(name);
        shard.delete_queue(name).await?;
        shard.release_waiters(name);
        Ok(())
    }

    async fn queue_url(&self, name: &str) -> Result<Option<String>, QueueError> {
        validate_name(name)?;
        Ok(self
            .shard(name)
            .has_queue(name)
            .await?
            .then(|| url_of(name)))
    }

    async fn list_queues(&self, prefix: &str) -> Result<Vec<String>, QueueError> {
        // Filtered here rather than with LIKE, which is case-insensitive and treats `_` as
        // a wildcard; SQS prefixes are case-sensitive and literal.
        Ok(self
            .queue_names()
            .await?
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| url_of(&n))
            .collect())
    }

    async fn send(&self, url: &str, messages: Vec<OutgoingMessage>) -> Result<(), QueueError> {
        let name = existing_name(url)?;
        self.send_now(name, &messages).await?;
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
            let attempt = self.receive_now(name, max, visibility).await?;
            if attempt.moves_pending {
                // The received messages are ours now; a failed move is retried by the next
                // receive on this shard (or the next open), so it is only worth a warning.
                if let Err(e) = self.finish_moves(shard_of(name)).await {
                    tracing::warn!(queue = name, error = %e, "redrive to a dead-letter queue failed");
                }
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
        let name = existing_name(url)?;
        self.shard(name).delete(name, &receipt_handles).await
    }

    async fn change_visibility(
        &self,
        url: &str,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.change_visibility_now(url, &[receipt_handle], timeout)
            .await
    }

    async fn change_visibility_batch(
        &self,
        url: &str,
        receipt_handles: &[String],
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.change_visibility_now(url, receipt_handles, timeout)
            .await
    }

    async fn counts(&self, url: &str) -> Result<QueueCounts, QueueError> {
        let name = existing_name(url)?;
        self.shard(name).counts(name).await
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
            OutgoingMessage::new("x".repeat(limits::MAX_MESSAGE_BYTES + 1)),
        ];
        assert!(matches!(
            q.send(&url, batch).await,
            Err(QueueError::TooLarge(o)) if o.size == limits::MAX_MESSAGE_BYTES as u64 + 1
        ));
        assert_eq!(q.counts(&url).await.unwrap(), QueueCounts::default());
        q.send(
            &url,
            vec![OutgoingMessage::new("x".repeat(limits::MAX_MESSAGE_BYTES))],
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

    /// A smoke run of the hot path: send, receive and delete in batches of 100 on one queue,
    /// then [`pipeline`]. One test, so that the two measurements never overlap.
    /// `cargo test -p orchestration --release --lib local::queues -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
        let (mut done, mut received, mut deleted) = (0, Duration::ZERO, Duration::ZERO);
        while done < n {
            let t = std::time::Instant::now();
            let got = q.receive(&url, 100, Duration::ZERO, None).await.unwrap();
            received += t.elapsed();
            assert!(!got.is_empty());
            done += got.len();
            let t = std::time::Instant::now();
            q.delete(&url, got.into_iter().map(|m| m.receipt_handle).collect())
                .await
                .unwrap();
            deleted += t.elapsed();
        }
        let total = start.elapsed();
        println!(
            "{n} messages: sent in {sent:?}, received in {received:?}, deleted in {deleted:?}; \
             all passes in {total:?} ({:.0}/s)",
            n as f64 / total.as_secs_f64()
        );
        assert_eq!(q.counts(&url).await.unwrap(), QueueCounts::default());
        pipeline().await;
    }

    /// Queue names that land in `n` different shards.
    fn names_in_distinct_shards(n: usize) -> Vec<String> {
        let mut seen = std::collections::BTreeMap::new();
        for i in 0.. {
            let name = format!("queue-{i}");
            seen.entry(shard_of(&name)).or_insert(name);
            if seen.len() == n {
                break;
            }
        }
        seen.into_values().collect()
    }

    fn redriven(name: &str, dlq: &str, max_receive_count: u32) -> QueueSpec {
        QueueSpec {
            dead_letter: Some(DeadLetter {
                queue_url: url_of(dlq),
                max_receive_count,
            }),
            ..spec(name, LONG)
        }
    }

    async fn outbox_len(q: &SqliteQueues, shard: usize) -> i64 {
        q.shards[shard]
            .conn()
            .await
            .query_row("SELECT count(*) FROM sqs_moves", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[tokio::test]
    async fn queues_in_different_shards_work_side_by_side() {
        let (dir, q) = open();
        let names = names_in_distinct_shards(SHARDS);
        let mut urls = Vec::new();
        for name in &names {
            let url = q.create_queue(&spec(name, LONG)).await.unwrap();
            q.send(&url, vec![OutgoingMessage::new(name.clone())])
                .await
                .unwrap();
            urls.push(url);
        }
        for i in 1..SHARDS {
            assert!(shard_path(&dir.path().join("queues.db"), i).exists());
        }
        let mut listed = q.list_queues("queue-").await.unwrap();
        listed.sort();
        let mut expected = urls.clone();
        expected.sort();
        assert_eq!(listed, expected);
        for (name, url) in names.iter().zip(&urls) {
            assert_eq!(q.counts(url).await.unwrap().visible, 1, "{name}");
            let got = q.receive(url, 10, Duration::ZERO, None).await.unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(&got[0].body, name);
            // A handle only works with its own queue, whichever shard the other one is in.
            for other in urls.iter().filter(|u| *u != url) {
                q.delete(other, vec![got[0].receipt_handle.clone()])
                    .await
                    .unwrap();
            }
            assert_eq!(q.counts(url).await.unwrap().in_flight, 1);
            q.delete(url, vec![got[0].receipt_handle.clone()])
                .await
                .unwrap();
            assert_eq!(q.counts(url).await.unwrap(), QueueCounts::default());
        }
    }

    #[tokio::test]
    async fn cross_shard_redrive_moves_a_message_exactly_once() {
        let (_dir, q) = open();
        let names = names_in_distinct_shards(2);
        let (work, dead) = (&names[0], &names[1]);
        let dlq = q.create_queue(&spec(dead, LONG)).await.unwrap();
        let url = q.create_queue(&redriven(work, dead, 1)).await.unwrap();
        q.send(&url, vec![OutgoingMessage::new("poison")])
            .await
            .unwrap();
        let zero = Some(Duration::ZERO);
        let first = q.receive(&url, 10, Duration::ZERO, zero).await.unwrap();
        assert_eq!(first.len(), 1);

        // The second receive moves it; receiving again (from several tasks) changes nothing.
        for _ in 0..3 {
            assert!(q
                .receive(&url, 10, Duration::ZERO, zero)
                .await
                .unwrap()
                .is_empty());
        }
        assert_eq!(q.counts(&url).await.unwrap(), QueueCounts::default());
        assert_eq!(outbox_len(&q, shard_of(work)).await, 0);
        assert_eq!(q.counts(&dlq).await.unwrap().visible, 1);
        let dead_letters = q.receive(&dlq, 10, Duration::ZERO, None).await.unwrap();
        assert_eq!(dead_letters.len(), 1);
        assert_eq!(dead_letters[0].message_id, first[0].message_id);
        assert_eq!(dead_letters[0].sent_ms, first[0].sent_ms);
        assert_eq!(dead_letters[0].receive_count, 1);
    }

    #[tokio::test]
    async fn redrive_waits_while_the_dead_letter_queue_is_missing() {
        let (_dir, q) = open();
        let names = names_in_distinct_shards(2);
        let (work, dead) = (&names[0], &names[1]);
        let dlq = q.create_queue(&spec(dead, LONG)).await.unwrap();
        let url = q.create_queue(&redriven(work, dead, 1)).await.unwrap();
        q.delete_queue(&dlq).await.unwrap();
        q.send(&url, vec![OutgoingMessage::new("m")]).await.unwrap();
        let zero = Some(Duration::ZERO);
        for n in 1..=3 {
            let got = q.receive(&url, 10, Duration::ZERO, zero).await.unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].receive_count, n);
        }
        // Recreated, the DLQ receives the message on its next receive.
        let dlq = q.create_queue(&spec(dead, LONG)).await.unwrap();
        assert!(q
            .receive(&url, 10, Duration::ZERO, zero)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(q.counts(&dlq).await.unwrap().visible, 1);
    }

    #[tokio::test]
    async fn a_move_interrupted_after_phase_one_completes_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queues.db");
        let names = names_in_distinct_shards(2);
        let (work, dead) = (&names[0], &names[1]);
        let (url, dlq, id) = {
            let q = SqliteQueues::open(&path).unwrap();
            let dlq = q.create_queue(&spec(dead, LONG)).await.unwrap();
            let url = q.create_queue(&redriven(work, dead, 1)).await.unwrap();
            q.send(&url, vec![OutgoingMessage::new("poison")])
                .await
                .unwrap();
            let zero = Some(Duration::ZERO);
            let got = q.receive(&url, 1, Duration::ZERO, zero).await.unwrap();
            // Phase 1 only, then the "crash": the message is in neither queue.
            let attempt = q.receive_now(work, 1, zero).await.unwrap();
            assert!(attempt.messages.is_empty() && attempt.moves_pending);
            assert_eq!(outbox_len(&q, shard_of(work)).await, 1);
            assert_eq!(q.counts(&url).await.unwrap(), QueueCounts::default());
            assert_eq!(q.counts(&dlq).await.unwrap(), QueueCounts::default());
            (url, dlq, got[0].message_id.clone())
        };
        let q = SqliteQueues::open(&path).unwrap();
        assert_eq!(outbox_len(&q, shard_of(work)).await, 0);
        assert_eq!(q.counts(&url).await.unwrap(), QueueCounts::default());
        let dead_letters = q.receive(&dlq, 10, Duration::ZERO, None).await.unwrap();
        assert_eq!(dead_letters.len(), 1);
        assert_eq!(dead_letters[0].message_id, id);
    }

    #[tokio::test]
    async fn a_move_interrupted_after_phase_two_lands_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queues.db");
        let names = names_in_distinct_shards(2);
        let (work, dead) = (&names[0], &names[1]);
        let (dlq, moved) = {
            let q = SqliteQueues::open(&path).unwrap();
            let dlq = q.create_queue(&spec(dead, LONG)).await.unwrap();
            let url = q.create_queue(&redriven(work, dead, 1)).await.unwrap();
            q.send(&url, vec![OutgoingMessage::new("poison")])
                .await
                .unwrap();
            let zero = Some(Duration::ZERO);
            q.receive(&url, 1, Duration::ZERO, zero).await.unwrap();
            q.receive_now(work, 1, zero).await.unwrap();
            // Phase 2, then the "crash" before phase 3.
            let mut moves = q.shards[shard_of(work)].pending_moves().await.unwrap();
            assert_eq!(moves.len(), 1);
            assert!(q.shard(dead).land(&moves[0]).await.unwrap());
            (dlq, moves.remove(0))
        };
        let q = SqliteQueues::open(&path).unwrap();
        assert_eq!(outbox_len(&q, shard_of(work)).await, 0);
        let dead_letters = q.receive(&dlq, 10, Duration::ZERO, None).await.unwrap();
        assert_eq!(dead_letters.len(), 1);
        q.delete(&dlq, vec![dead_letters[0].receipt_handle.clone()])
            .await
            .unwrap();
        // Even after the dead letter is gone, repeating phase 2 does not bring it back.
        assert!(!q.shard(dead).land(&moved).await.unwrap());
        assert_eq!(q.counts(&dlq).await.unwrap(), QueueCounts::default());
    }

    /// Bytes of every file under `dir`: the shards, their WALs and shared-memory files.
    fn bytes_on_disk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    /// A queue name other than `name` in the same shard.
    fn shard_mate(name: &str) -> String {
        (0..)
            .map(|i| format!("mate-{i}"))
            .find(|n| shard_of(n) == shard_of(name))
            .unwrap()
    }

    #[tokio::test]
    async fn a_deleted_queue_gives_its_space_back() {
        let (dir, q) = open();
        let big = q.create_queue(&spec("big", LONG)).await.unwrap();
        let mate = shard_mate("big");
        let kept = q.create_queue(&spec(&mate, LONG)).await.unwrap();
        let body = "x".repeat(1000);
        for round in 0..20 {
            let batch = (0..1000)
                .map(|_| OutgoingMessage::new(body.clone()))
                .collect();
            q.send(&big, batch).await.unwrap();
            // The neighbour's messages are spread among the big queue's pages.
            q.send(&kept, vec![OutgoingMessage::new(format!("kept {round}"))])
                .await
                .unwrap();
        }
        // A job drains its queue before deleting it: its pages are free, but still on disk.
        let mut left = 20_000;
        while left > 0 {
            let got = q.receive(&big, 1000, Duration::ZERO, None).await.unwrap();
            left -= got.len();
            q.delete(&big, got.into_iter().map(|m| m.receipt_handle).collect())
                .await
                .unwrap();
        }
        let full = bytes_on_disk(dir.path());
        assert!(full > 20_000_000, "{full} bytes after 20 MB of messages");

        q.delete_queue(&big).await.unwrap();
        let after = bytes_on_disk(dir.path());
        // Four nearly empty shards, their (empty) WALs and shared-memory files.
        assert!(after < 1_000_000, "{after} bytes on disk after the delete");
        let mut bodies: Vec<String> = q
            .receive(&kept, 100, Duration::ZERO, None)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        bodies.sort_by_key(|b| b[5..].parse::<u32>().unwrap());
        let expected: Vec<String> = (0..20).map(|r| format!("kept {r}")).collect();
        assert_eq!(bodies, expected, "the shard's other queue is intact");
    }

    #[tokio::test]
    async fn every_shard_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queues.db");
        let names = names_in_distinct_shards(SHARDS);
        {
            let q = SqliteQueues::open(&path).unwrap();
            for name in &names {
                let url = q.create_queue(&spec(name, LONG)).await.unwrap();
                let batch = vec![OutgoingMessage::new("a"), OutgoingMessage::new("b")];
                q.send(&url, batch).await.unwrap();
                q.receive(&url, 1, Duration::ZERO, None).await.unwrap();
            }
        }
        let q = SqliteQueues::open(&path).unwrap();
        assert_eq!(q.list_queues("queue-").await.unwrap().len(), SHARDS);
        for name in &names {
            let counts = q.counts(&url_of(name)).await.unwrap();
            assert_eq!((counts.visible, counts.in_flight), (1, 1), "{name}");
        }
    }

    #[tokio::test]
    async fn files_sharded_another_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queues.db");
        drop(SqliteQueues::open(&path).unwrap());
        let conn = Connection::open(shard_path(&path, 1)).unwrap();
        conn.pragma_update(None, "user_version", SHARDS as i64 + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(
            SqliteQueues::open(&path),
            Err(QueueError::Backend(_))
        ));

        // A file of the unsharded layout: queues, but no shard count.
        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch("CREATE TABLE sqs_queues (id INTEGER PRIMARY KEY, name TEXT);")
            .unwrap();
        assert!(matches!(
            SqliteQueues::open(&old),
            Err(QueueError::Backend(_))
        ));
    }

    #[tokio::test]
    async fn change_visibility_batch_moves_current_receipts_only() {
        let (_dir, q) = open();
        let url = q.create_queue(&spec("work", LONG)).await.unwrap();
        let batch = vec![OutgoingMessage::new("a"), OutgoingMessage::new("b")];
        q.send(&url, batch).await.unwrap();
        let zero = Some(Duration::ZERO);
        let stale = q.receive(&url, 1, Duration::ZERO, zero).await.unwrap();
        let current = q.receive(&url, 2, Duration::ZERO, None).await.unwrap();
        assert_eq!(current.len(), 2);
        let mut handles: Vec<String> = current.iter().map(|m| m.receipt_handle.clone()).collect();
        handles.push(stale[0].receipt_handle.clone());
        handles.push("garbage".into());
        q.change_visibility_batch(&url, &handles, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(q.counts(&url).await.unwrap().visible, 2);
        assert!(matches!(
            q.change_visibility_batch(&url, &handles, MAX_VISIBILITY + Duration::from_secs(1))
                .await,
            Err(QueueError::Invalid(_))
        ));
    }

    /// Four queues in a chain, as a job's stages use them: each stage receives a batch,
    /// sends it on and deletes it, all stages at once (on the test's two threads).
    /// `job-filter` and `job-reduce` share a shard, as two of a real job's queues often do.
    async fn pipeline() {
        let (_dir, q) = open();
        let q = Arc::new(q);
        let names = ["job-feed", "job-filter", "job-count", "job-reduce"];
        let mut urls = Vec::new();
        for name in names {
            urls.push(q.create_queue(&spec(name, LONG)).await.unwrap());
        }
        let n: usize = 300_000;
        let body = "x".repeat(150);
        let start = std::time::Instant::now();
        let feeder = {
            let (q, url) = (q.clone(), urls[0].clone());
            tokio::spawn(async move {
                for _ in 0..n / 1000 {
                    let batch = (0..1000)
                        .map(|_| OutgoingMessage::new(body.clone()))
                        .collect();
                    q.send(&url, batch).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut stages = Vec::new();
        for i in 0..urls.len() {
            let q = q.clone();
            let from = urls[i].clone();
            let to = urls.get(i + 1).cloned();
            stages.push(tokio::spawn(async move {
                let mut done = 0;
                while done < n {
                    let got = q
                        .receive(&from, 75, Duration::from_millis(100), None)
                        .await
                        .unwrap();
                    done += got.len();
                    if let Some(to) = &to {
                        let out = got
                            .iter()
                            .map(|m| OutgoingMessage::new(m.body.clone()))
                            .collect();
                        q.send(to, out).await.unwrap();
                    }
                    q.delete(&from, got.into_iter().map(|m| m.receipt_handle).collect())
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            }));
        }
        feeder.await.unwrap();
        for s in stages {
            s.await.unwrap();
        }
        let total = start.elapsed();
        println!(
            "{n} messages through 4 queues in {total:?} ({:.0}/s)",
            n as f64 / total.as_secs_f64()
        );
    }
}
