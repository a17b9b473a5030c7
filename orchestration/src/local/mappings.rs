//! [`SqliteMappings`]: the [`Mappings`] port on SQLite, playing the Lambda control plane for
//! the embedded engine. It reproduces what AWS enforces on `CreateEventSourceMapping` /
//! `UpdateEventSourceMapping` (the [`MappingConfig::validate`] limits, and a
//! `ResourceConflictException` for a second mapping of the same queue and function),
//! `DeleteEventSourceMapping`, and `PutFunctionConcurrency` (0 throttles the function; at most
//! the account's default 1,000).
//!
//! The local ESM runtime in this process learns of every change at once through
//! [`SqliteMappings::subscribe`]; other processes sharing the database notice on their next
//! periodic re-listing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::watch;

use crate::ports::{Mapping, MappingConfig, MappingError, Mappings, ProvisionedPollers};

/// Lambda's default account concurrency limit; reserving more than it is always rejected.
pub const MAX_RESERVED_CONCURRENCY: u32 = 1_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mappings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, -- creation order, never reused: lists are stable
    id TEXT NOT NULL UNIQUE,
    queue_url TEXT NOT NULL,
    function TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    batching_window_secs INTEGER NOT NULL,
    max_concurrency INTEGER NOT NULL, -- 0: not set
    enabled INTEGER NOT NULL,
    tags TEXT NOT NULL,
    min_pollers INTEGER, -- provisioned mode, or NULL
    max_pollers INTEGER,
    UNIQUE (queue_url, function)
);
CREATE TABLE IF NOT EXISTS reserved_concurrency (
    function TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);";

const COLUMNS: &str = "id, queue_url, function, batch_size, batching_window_secs, \
                       max_concurrency, enabled, tags, min_pollers, max_pollers";

/// Columns added since the first schema, for databases created before them.
const ADDED_COLUMNS: [(&str, &str); 2] = [
    (
        "min_pollers",
        "ALTER TABLE mappings ADD COLUMN min_pollers INTEGER",
    ),
    (
        "max_pollers",
        "ALTER TABLE mappings ADD COLUMN max_pollers INTEGER",
    ),
];

/// Event-source mappings and reserved concurrency in one SQLite database.
pub struct SqliteMappings {
    conn: Mutex<Connection>,
    generation: watch::Sender<u64>,
}

fn backend(e: impl std::fmt::Display) -> MappingError {
    MappingError::Backend(e.to_string())
}

/// A random version-4 UUID, the form Lambda gives mapping ids.
fn new_id() -> String {
    const VERSION_MASK: u128 = 0xf000 << 64;
    const VERSION_4: u128 = 0x4000 << 64;
    const VARIANT_MASK: u128 = 0xc000 << 48;
    const VARIANT_RFC: u128 = 0x8000 << 48;
    let bits = (rand::random::<u128>() & !VERSION_MASK & !VARIANT_MASK) | VERSION_4 | VARIANT_RFC;
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

struct Row {
    id: String,
    queue_url: String,
    function: String,
    batch_size: i64,
    window: i64,
    max_concurrency: i64,
    enabled: bool,
    tags: String,
    pollers: (Option<i64>, Option<i64>),
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        queue_url: r.get(1)?,
        function: r.get(2)?,
        batch_size: r.get(3)?,
        window: r.get(4)?,
        max_concurrency: r.get(5)?,
        enabled: r.get(6)?,
        tags: r.get(7)?,
        pollers: (r.get(8)?, r.get(9)?),
    })
}

fn to_mapping(row: Row) -> Result<Mapping, MappingError> {
    let Row {
        id,
        queue_url,
        function,
        batch_size,
        window,
        max_concurrency,
        enabled,
        tags,
        pollers,
    } = row;
    let int = |v: i64| u32::try_from(v).map_err(|_| backend(format!("corrupt mapping {id}")));
    let provisioned_pollers = match pollers {
        (Some(minimum), Some(maximum)) => Some(ProvisionedPollers {
            minimum: int(minimum)?,
            maximum: int(maximum)?,
        }),
        _ => None,
    };
    Ok(Mapping {
        config: MappingConfig {
            batch_size: int(batch_size)?,
            batching_window_secs: int(window)?,
            max_concurrency: Some(int(max_concurrency)?).filter(|n| *n > 0),
            provisioned_pollers,
            enabled,
        },
        tags: serde_json::from_str(&tags)
            .map_err(|e| backend(format!("corrupt tags on mapping {id}: {e}")))?,
        id,
        queue_url,
        function,
    })
}

fn select_mapping(conn: &Connection, id: &str) -> Result<Option<Mapping>, MappingError> {
    let row = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM mappings WHERE id = ?1"))
        .and_then(|mut s| s.query_row(params![id], read_row).optional())
        .map_err(backend)?;
    row.map(to_mapping).transpose()
}

impl SqliteMappings {
    pub fn open(path: &Path) -> Result<Self, MappingError> {
        let conn = super::open_sqlite(path).map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('mappings')")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(backend)?;
        for (column, alter) in ADDED_COLUMNS {
            if !columns.iter().any(|c| c == column) {
                match conn.execute_batch(alter) {
                    // Another process sharing the database added it first.
                    Err(e) if e.to_string().contains("duplicate column") => {}
                    other => other.map_err(backend)?,
                }
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
            generation: watch::Sender::new(0),
        })
    }

    /// A generation counter that changes after every change made through this handle.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// `send_modify` rather than `send`: it updates the value even while nobody subscribes,
    /// so a later subscriber still starts from the current generation.
    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// A panic while holding the lock cannot leave the database half-written (an open
    /// transaction rolls back when dropped), so a poisoned lock is safe to reuse.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Mappings for SqliteMappings {
    async fn create_mapping(
        &self,
        queue_url: &str,
        function: &str,
        config: MappingConfig,
        tags: BTreeMap<String, String>,
    ) -> Result<Mapping, MappingError> {
        config.validate()?;
        if queue_url.is_empty() || function.is_empty() {
            return Err(MappingError::Invalid(
                "queue URL and function name are required".into(),
            ));
        }
        let tags_json = serde_json::to_string(&tags).map_err(backend)?;
        let mapping = Mapping {
            id: new_id(),
            queue_url: queue_url.to_string(),
            function: function.to_string(),
            config,
            tags,
        };
        {
            let mut conn = self.lock();
            // IMMEDIATE: the duplicate check and the insert must not interleave with another
            // process creating the same pair.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let existing: Option<String> = tx
                .prepare_cached("SELECT id FROM mappings WHERE queue_url = ?1 AND function = ?2")
                .and_then(|mut s| {
                    s.query_row(params![queue_url, function], |r| r.get(0))
                        .optional()
                })
                .map_err(backend)?;
            if let Some(id) = existing {
                return Err(MappingError::Invalid(format!(
                    "event source mapping for {queue_url} and function {function} \
                     already exists: {id}"
                )));
            }
            tx.prepare_cached(&format!(
                "INSERT INTO mappings ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    mapping.id,
                    mapping.queue_url,
                    mapping.function,
                    config.batch_size,
                    config.batching_window_secs,
                    config.max_concurrency.unwrap_or(0),
                    config.enabled,
                    tags_json,
                    config.provisioned_pollers.map(|p| p.minimum),
                    config.provisioned_pollers.map(|p| p.maximum),
                ])
            })
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        self.bump();
        Ok(mapping)
    }

    async fn update_mapping(
        &self,
        id: &str,
        config: MappingConfig,
    ) -> Result<Mapping, MappingError> {
        config.validate()?;
        let mapping = {
            let mut conn = self.lock();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let changed = tx
                .prepare_cached(
                    "UPDATE mappings SET batch_size = ?2, batching_window_secs = ?3,
                     max_concurrency = ?4, enabled = ?5, min_pollers = ?6, max_pollers = ?7
                     WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        id,
                        config.batch_size,
                        config.batching_window_secs,
                        config.max_concurrency.unwrap_or(0),
                        config.enabled,
                        config.provisioned_pollers.map(|p| p.minimum),
                        config.provisioned_pollers.map(|p| p.maximum),
                    ])
                })
                .map_err(backend)?;
            if changed == 0 {
                return Err(MappingError::NotFound(id.to_string()));
            }
            let mapping =
                select_mapping(&tx, id)?.ok_or_else(|| MappingError::NotFound(id.to_string()))?;
            tx.commit().map_err(backend)?;
            mapping
        };
        self.bump();
        Ok(mapping)
    }

    async fn delete_mapping(&self, id: &str) -> Result<(), MappingError> {
        let deleted = self
            .lock()
            .prepare_cached("DELETE FROM mappings WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id]))
            .map_err(backend)?;
        if deleted > 0 {
            self.bump();
        }
        Ok(())
    }

    async fn list_mappings(&self, queue_url: Option<&str>) -> Result<Vec<Mapping>, MappingError> {
        let rows: Vec<Row> = {
            let conn = self.lock();
            let result = match queue_url {
                Some(url) => conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM mappings WHERE queue_url = ?1
                         ORDER BY seq"
                    ))
                    .and_then(|mut s| s.query_map(params![url], read_row)?.collect()),
                None => conn
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM mappings ORDER BY seq"))
                    .and_then(|mut s| s.query_map([], read_row)?.collect()),
            };
            result.map_err(backend)?
        };
        rows.into_iter().map(to_mapping).collect()
    }

    async fn put_reserved_concurrency(&self, function: &str, n: u32) -> Result<(), MappingError> {
        if n > MAX_RESERVED_CONCURRENCY {
            return Err(MappingError::Invalid(format!(
                "ReservedConcurrentExecutions {n} above the account limit \
                 {MAX_RESERVED_CONCURRENCY}"
            )));
        }
        if function.is_empty() {
            return Err(MappingError::Invalid("function name is required".into()));
        }
        self.lock()
            .prepare_cached(
                "INSERT INTO reserved_concurrency (function, n) VALUES (?1, ?2)
                 ON CONFLICT (function) DO UPDATE SET n = excluded.n",
            )
            .and_then(|mut s| s.execute(params![function, n]))
            .map_err(backend)?;
        self.bump();
        Ok(())
    }

    async fn get_reserved_concurrency(&self, function: &str) -> Result<Option<u32>, MappingError> {
        let n: Option<i64> = self
            .lock()
            .prepare_cached("SELECT n FROM reserved_concurrency WHERE function = ?1")
            .and_then(|mut s| s.query_row(params![function], |r| r.get(0)).optional())
            .map_err(backend)?;
        n.map(|n| {
            u32::try_from(n).map_err(|_| backend(format!("corrupt concurrency for {function}")))
        })
        .transpose()
    }

    async fn delete_reserved_concurrency(&self, function: &str) -> Result<(), MappingError> {
        let deleted = self
            .lock()
            .prepare_cached("DELETE FROM reserved_concurrency WHERE function = ?1")
            .and_then(|mut s| s.execute(params![function]))
            .map_err(backend)?;
        if deleted > 0 {
            self.bump();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(batch_size: u32, window: u32, max_concurrency: u32) -> MappingConfig {
        MappingConfig {
            batch_size,
            batching_window_secs: window,
            max_concurrency: Some(max_concurrency),
            provisioned_pollers: None,
            enabled: true,
        }
    }

    fn tags(job: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("job".to_string(), job.to_string())])
    }

    fn open(dir: &tempfile::TempDir) -> SqliteMappings {
        SqliteMappings::open(&dir.path().join("control.db")).unwrap()
    }

    #[tokio::test]
    async fn create_rejects_what_aws_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir);
        let err = m
            .create_mapping("q1", "map", config(10, 0, 1), tags("j"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, MappingError::Invalid(ref s) if s.contains("MaximumConcurrency")),
            "{err}"
        );
        let err = m
            .create_mapping("q1", "map", config(11, 0, 2), tags("j"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, MappingError::Invalid(ref s) if s.contains("BatchSize")),
            "{err}"
        );
        assert!(m.list_mappings(None).await.unwrap().is_empty());

        let created = m
            .create_mapping("q1", "map", config(11, 1, 2), tags("j"))
            .await
            .unwrap();
        let err = m
            .update_mapping(&created.id, config(10, 0, 1001))
            .await
            .unwrap_err();
        assert!(matches!(err, MappingError::Invalid(_)), "{err}");
        // A rejected update changes nothing.
        assert_eq!(m.list_mappings(None).await.unwrap(), [created]);
    }

    #[tokio::test]
    async fn duplicate_queue_function_pair_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir);
        let first = m
            .create_mapping("q1", "map", config(10, 0, 5), tags("j1"))
            .await
            .unwrap();
        let err = m
            .create_mapping("q1", "map", config(5, 0, 2), tags("j2"))
            .await
            .unwrap_err();
        match err {
            MappingError::Invalid(msg) => {
                assert!(msg.contains("already exists"), "{msg}");
                assert!(msg.ends_with(&first.id), "{msg}");
            }
            other => panic!("unexpected {other}"),
        }
        // Other pairs are fine, and the pair is free again once deleted.
        m.create_mapping("q1", "reduce", config(10, 0, 2), tags("j1"))
            .await
            .unwrap();
        m.create_mapping("q2", "map", config(10, 0, 2), tags("j1"))
            .await
            .unwrap();
        m.delete_mapping(&first.id).await.unwrap();
        m.create_mapping("q1", "map", config(10, 0, 2), tags("j3"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn update_delete_and_list_by_queue() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir);
        let a = m
            .create_mapping("qa", "map", config(10, 0, 5), tags("j1"))
            .await
            .unwrap();
        let b = m
            .create_mapping("qb", "map", config(100, 2, 10), tags("j1"))
            .await
            .unwrap();
        let c = m
            .create_mapping("qa", "reduce", config(1, 0, 2), tags("j2"))
            .await
            .unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 36);
        assert_eq!(&a.id[14..15], "4");

        let updated = m
            .update_mapping(
                &a.id,
                MappingConfig {
                    enabled: false,
                    ..config(20, 3, 7)
                },
            )
            .await
            .unwrap();
        assert_eq!(updated.id, a.id);
        assert_eq!(updated.queue_url, "qa");
        assert_eq!(updated.tags, tags("j1"));
        assert_eq!(
            updated.config,
            MappingConfig {
                enabled: false,
                ..config(20, 3, 7)
            }
        );
        assert!(matches!(
            m.update_mapping("no-such-id", config(10, 0, 2)).await,
            Err(MappingError::NotFound(_))
        ));

        assert_eq!(
            m.list_mappings(Some("qa")).await.unwrap(),
            [updated.clone(), c.clone()]
        );
        assert_eq!(
            m.list_mappings(Some("qb")).await.unwrap(),
            std::slice::from_ref(&b)
        );
        assert!(m.list_mappings(Some("qz")).await.unwrap().is_empty());
        assert_eq!(m.list_mappings(None).await.unwrap().len(), 3);

        m.delete_mapping(&a.id).await.unwrap();
        m.delete_mapping(&a.id).await.unwrap();
        m.delete_mapping("never-existed").await.unwrap();
        assert_eq!(
            m.list_mappings(Some("qa")).await.unwrap(),
            std::slice::from_ref(&c)
        );

        // Everything is in the database: a second handle sees the same state.
        let again = open(&dir);
        assert_eq!(again.list_mappings(None).await.unwrap(), [b, c]);
    }

    #[tokio::test]
    async fn provisioned_mode_round_trips_and_excludes_maximum_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir);
        let provisioned = MappingConfig {
            max_concurrency: None,
            provisioned_pollers: Some(ProvisionedPollers {
                minimum: 2,
                maximum: 40,
            }),
            ..config(10, 0, 2)
        };
        let created = m
            .create_mapping("q", "map", provisioned, tags("j"))
            .await
            .unwrap();
        assert_eq!(created.config, provisioned);
        assert_eq!(m.list_mappings(None).await.unwrap()[0].config, provisioned);
        let both = MappingConfig {
            max_concurrency: Some(5),
            ..provisioned
        };
        let err = m.update_mapping(&created.id, both).await.unwrap_err();
        assert!(
            matches!(err, MappingError::Invalid(ref s) if s.contains("ProvisionedPollerConfig")),
            "{err}"
        );
        let back = m
            .update_mapping(&created.id, config(10, 0, 5))
            .await
            .unwrap();
        assert_eq!(back.config, config(10, 0, 5));
        assert_eq!(open(&dir).list_mappings(None).await.unwrap()[0], back);
    }

    #[tokio::test]
    async fn a_database_from_before_provisioned_mode_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.db");
        {
            let conn = crate::local::open_sqlite(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE mappings (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                    queue_url TEXT NOT NULL, function TEXT NOT NULL,
                    batch_size INTEGER NOT NULL, batching_window_secs INTEGER NOT NULL,
                    max_concurrency INTEGER NOT NULL, enabled INTEGER NOT NULL,
                    tags TEXT NOT NULL, UNIQUE (queue_url, function));
                 INSERT INTO mappings (id, queue_url, function, batch_size,
                    batching_window_secs, max_concurrency, enabled, tags)
                 VALUES ('old', 'q', 'map', 10, 0, 7, 1, '{}');",
            )
            .unwrap();
        }
        let m = SqliteMappings::open(&path).unwrap();
        let listed = m.list_mappings(None).await.unwrap();
        assert_eq!(listed[0].config, config(10, 0, 7));
        let provisioned = MappingConfig {
            max_concurrency: None,
            provisioned_pollers: Some(ProvisionedPollers {
                minimum: 2,
                maximum: 2,
            }),
            ..config(10, 0, 2)
        };
        m.update_mapping("old", provisioned).await.unwrap();
        // A second open of the upgraded database changes nothing.
        let again = SqliteMappings::open(&path).unwrap();
        assert_eq!(
            again.list_mappings(None).await.unwrap()[0].config,
            provisioned
        );
    }

    #[tokio::test]
    async fn reserved_concurrency_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir);
        assert_eq!(m.get_reserved_concurrency("map").await.unwrap(), None);
        m.put_reserved_concurrency("map", 50).await.unwrap();
        assert_eq!(m.get_reserved_concurrency("map").await.unwrap(), Some(50));
        m.put_reserved_concurrency("map", 0).await.unwrap();
        assert_eq!(m.get_reserved_concurrency("map").await.unwrap(), Some(0));
        m.put_reserved_concurrency("map", 1000).await.unwrap();
        assert!(matches!(
            m.put_reserved_concurrency("map", 1001).await,
            Err(MappingError::Invalid(_))
        ));
        assert_eq!(m.get_reserved_concurrency("map").await.unwrap(), Some(1000));
        assert_eq!(m.get_reserved_concurrency("reduce").await.unwrap(), None);
        m.delete_reserved_concurrency("map").await.unwrap();
        m.delete_reserved_concurrency("map").await.unwrap();
        assert_eq!(m.get_reserved_concurrency("map").await.unwrap(), None);
    }

    #[tokio::test]
    async fn subscribers_see_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(&dir);
        let mut rx = m.subscribe();
        let start = *rx.borrow_and_update();

        let created = m
            .create_mapping("q", "map", config(10, 0, 2), tags("j"))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .expect("create not signalled")
            .unwrap();
        let after_create = *rx.borrow_and_update();
        assert!(after_create > start);

        // Failed calls signal nothing.
        let _ = m
            .create_mapping("q", "map", config(10, 0, 2), tags("j"))
            .await;
        let _ = m.update_mapping(&created.id, config(10, 0, 1)).await;
        assert!(!rx.has_changed().unwrap());

        m.update_mapping(&created.id, config(5, 0, 2))
            .await
            .unwrap();
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        m.put_reserved_concurrency("map", 3).await.unwrap();
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        m.delete_reserved_concurrency("map").await.unwrap();
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        m.delete_mapping(&created.id).await.unwrap();
        assert!(rx.has_changed().unwrap());
        assert!(*rx.borrow_and_update() >= after_create + 4);

        // A subscriber arriving later starts from the current generation.
        let late = m.subscribe();
        assert_eq!(*late.borrow(), *rx.borrow());
    }
}
