//! The embedded engine's adapters: the port traits on SQLite and local files, and the local
//! event-source-mapping runtime that plays the part of Lambda's pollers.

pub mod blobs;
pub mod engine;
pub mod invocations;
pub mod mappings;
pub mod queues;
pub mod runtime;
pub mod store;

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::Connection;

pub use blobs::FileBlobs;
pub use engine::{Engine, EngineOptions};
pub use invocations::{InvocationLog, InvocationOutcome, InvocationRecord};
pub use mappings::SqliteMappings;
pub use queues::SqliteQueues;
pub use store::SqliteJobStore;

/// Opens a SQLite database the way every embedded adapter wants it: WAL (readers never block
/// the writer; a kill -9 loses nothing committed), `synchronous=NORMAL` (durable across
/// process crashes, which is what the engine promises), and a generous busy timeout so
/// several processes can share one state directory.
pub fn open_sqlite(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // 64 MiB of page cache and a 64 MiB WAL between checkpoints: the hot pages of a queue
    // stay in memory and are written back once per checkpoint, not once per commit.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    // The bundled SQLite (STAT4) re-plans a statement whenever a value in a range
    // constraint is rebound (`visible_ms <= ?` on every receive, `sk > ?` on every page).
    // Without ANALYZE there are no statistics to gain from that: keep the plans.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // Checkpoints happen as the WAL grows; one more on every close would make each short
    // command (a cached answer, `status`) pay an fsync on exit.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    Ok(conn)
}

/// Space below which giving it back is not worth a checkpoint's fsyncs: a WAL this small
/// is recovered in milliseconds, and free pages this few are reused by the next job. Above
/// it, the engine empties WALs and rewrites emptied queue shards.
pub const RECLAIM_BYTES: u64 = 4 << 20;

/// The size of a database's WAL file (0 when there is none).
pub fn wal_bytes(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map_or(0, |m| m.len())
}

/// Copies a database's WAL into it and empties the WAL file (`wal_checkpoint(TRUNCATE)`),
/// so that the next process to open it has no log to recover and the disk holds only the
/// data. False when a reader of an older snapshot (another process) kept it from finishing:
/// the WAL then stays for another time.
pub fn truncate_wal(conn: &Connection) -> rusqlite::Result<bool> {
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    Ok(busy == 0)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
