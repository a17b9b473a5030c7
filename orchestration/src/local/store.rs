//! [`SqliteJobStore`]: the [`JobStore`] port on SQLite, reproducing the DynamoDB semantics the
//! core relies on: conditional `PutItem`/`DeleteItem` (`attribute_not_exists`,
//! `attribute_exists`, a version check), `TransactWriteItems` (all-or-nothing, at most
//! [`limits::MAX_TRANSACTION_ITEMS`] items, each key once, cancellation with per-item reasons) and
//! `Query` with `begins_with` on the sort key and `ExclusiveStartKey` pagination, and
//! DynamoDB's limits ([`limits`]): items of at most 400 KB as DynamoDB counts them, key
//! lengths, transactions of at most 100 items and 4 MB, query pages of at most 1 MB.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction: the condition is read and the write
//! applied under SQLite's write lock, so conditions stay atomic even when several processes
//! share the database file.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::ports::{limits, Attributes, Condition, Item, JobStore, Key, Page, StoreError, TxOp};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    version INTEGER NOT NULL,
    attrs TEXT NOT NULL,
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID;";

const SELECT_VERSION: &str = "SELECT version FROM items WHERE pk = ?1 AND sk = ?2";
const SELECT_ITEM: &str = "SELECT version, attrs FROM items WHERE pk = ?1 AND sk = ?2";
const UPSERT: &str = "INSERT INTO items (pk, sk, version, attrs) VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT (pk, sk) DO UPDATE SET version = excluded.version, attrs = excluded.attrs";
const DELETE: &str = "DELETE FROM items WHERE pk = ?1 AND sk = ?2";

/// A DynamoDB-like table in one SQLite database.
pub struct SqliteJobStore {
    conn: Mutex<Connection>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// DynamoDB rejects empty strings as key attribute values, and keys over its lengths;
/// rejecting them here keeps code that works on the embedded engine working on AWS.
fn validate_key(key: &Key) -> Result<(), StoreError> {
    if key.pk.is_empty() || key.sk.is_empty() {
        return Err(StoreError::Invalid(format!(
            "empty key attribute in {:?}/{:?}",
            key.pk, key.sk
        )));
    }
    limits::check_key(key).map_err(StoreError::TooLarge)
}

fn holds(condition: Condition, current: Option<i64>) -> bool {
    match condition {
        Condition::Always => true,
        Condition::NotExists => current.is_none(),
        Condition::Exists => current.is_some(),
        Condition::VersionIs(v) => current.is_some() && current == i64::try_from(v).ok(),
    }
}

fn current_version(conn: &Connection, key: &Key) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(SELECT_VERSION)?
        .query_row(params![key.pk, key.sk], |r| r.get(0))
        .optional()
}

fn write_item(
    conn: &Connection,
    key: &Key,
    attrs: &Attributes,
    current: Option<i64>,
) -> Result<u64, StoreError> {
    let json = serde_json::to_string(attrs).map_err(backend)?;
    let version = current.unwrap_or(0) + 1;
    conn.prepare_cached(UPSERT)
        .and_then(|mut s| s.execute(params![key.pk, key.sk, version, json]))
        .map_err(backend)?;
    Ok(version as u64)
}

fn delete_item(conn: &Connection, key: &Key) -> Result<(), StoreError> {
    conn.prepare_cached(DELETE)
        .and_then(|mut s| s.execute(params![key.pk, key.sk]))
        .map_err(backend)?;
    Ok(())
}

fn parse_attrs(json: &str) -> Result<Attributes, StoreError> {
    serde_json::from_str(json).map_err(|e| backend(format!("corrupt attributes: {e}")))
}

/// The smallest string greater than every string starting with `prefix`, if there is one.
/// UTF-8 byte order (SQLite's BINARY collation) equals code-point order, so bumping the last
/// char that can be bumped gives a valid-UTF-8 exclusive upper bound for a range scan.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl SqliteJobStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = super::open_sqlite(path).map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// A panic while holding the lock cannot leave the database half-written (an open
    /// transaction rolls back when dropped), so a poisoned lock is safe to reuse.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        validate_key(key)?;
        let conn = self.lock();
        let row: Option<(i64, String)> = conn
            .prepare_cached(SELECT_ITEM)
            .and_then(|mut s| {
                s.query_row(params![key.pk, key.sk], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(backend)?;
        drop(conn);
        row.map(|(version, json)| {
            Ok(Item {
                key: key.clone(),
                version: version as u64,
                attrs: parse_attrs(&json)?,
            })
        })
        .transpose()
    }

    async fn put(
        &self,
        key: &Key,
        attrs: Attributes,
        condition: Condition,
    ) -> Result<u64, StoreError> {
        validate_key(key)?;
        limits::check_item(key, &attrs).map_err(StoreError::TooLarge)?;
        let mut conn = self.lock();
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads and then
        // writes fails with SQLITE_BUSY (no busy-wait) if another process wrote in between.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let current = current_version(&tx, key).map_err(backend)?;
        if !holds(condition, current) {
            return Err(StoreError::ConditionFailed(key.clone()));
        }
        let version = write_item(&tx, key, &attrs, current)?;
        tx.commit().map_err(backend)?;
        Ok(version)
    }

    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        validate_key(key)?;
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let current = current_version(&tx, key).map_err(backend)?;
        if !holds(condition, current) {
            return Err(StoreError::ConditionFailed(key.clone()));
        }
        if current.is_some() {
            delete_item(&tx, key)?;
        }
        tx.commit().map_err(backend)
    }

    async fn transact(&self, ops: Vec<TxOp>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Err(StoreError::Invalid("empty transaction".into()));
        }
        limits::check_transaction(&ops).map_err(StoreError::TooLarge)?;
        let mut seen = HashSet::with_capacity(ops.len());
        for op in &ops {
            validate_key(op.key())?;
            if !seen.insert(op.key()) {
                let k = op.key();
                return Err(StoreError::Invalid(format!(
                    "transaction names {}/{} more than once",
                    k.pk, k.sk
                )));
            }
        }

        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        // Every condition is evaluated before anything is written, so a cancellation reports
        // all failing items (as DynamoDB's CancellationReasons do), not just the first.
        let mut current = Vec::with_capacity(ops.len());
        let mut failed = Vec::with_capacity(ops.len());
        for op in &ops {
            let condition = match op {
                TxOp::Put { condition, .. }
                | TxOp::Delete { condition, .. }
                | TxOp::Check { condition, .. } => *condition,
            };
            let version = current_version(&tx, op.key()).map_err(backend)?;
            failed.push(!holds(condition, version));
            current.push(version);
        }
        if failed.iter().any(|f| *f) {
            return Err(StoreError::TransactionCanceled { failed });
        }
        for (op, version) in ops.iter().zip(current) {
            match op {
                TxOp::Put { key, attrs, .. } => {
                    write_item(&tx, key, attrs, version)?;
                }
                TxOp::Delete { key, .. } if version.is_some() => delete_item(&tx, key)?,
                TxOp::Delete { .. } | TxOp::Check { .. } => {}
            }
        }
        tx.commit().map_err(backend)
    }

    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        if limit == 0 {
            // DynamoDB's Limit must be at least 1.
            return Err(StoreError::Invalid("query limit must be at least 1".into()));
        }
        // Both bounds are lower bounds; use the tighter so the range scan starts in place.
        let (lower_op, lower) = match start_after {
            Some(after) if after >= sk_prefix => (">", after),
            _ => (">=", sk_prefix),
        };
        let upper = prefix_successor(sk_prefix);
        let sql = match upper {
            Some(_) => format!(
                "SELECT sk, version, attrs FROM items
                 WHERE pk = ?1 AND sk {lower_op} ?2 AND sk < ?3 ORDER BY sk LIMIT ?4"
            ),
            None => format!(
                "SELECT sk, version, attrs FROM items
                 WHERE pk = ?1 AND sk {lower_op} ?2 ORDER BY sk LIMIT ?4"
            ),
        };
        // One extra row tells whether another page exists, sparing callers an empty last page.
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);

        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
        // ?3 is bound (to NULL) even where unused so both statements share one binding.
        let mut rows = stmt
            .query(params![pk, lower, upper, fetch])
            .map_err(backend)?;
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        while let Some(row) = rows.next().map_err(backend)? {
            let sk: String = row.get(0).map_err(backend)?;
            let version: i64 = row.get(1).map_err(backend)?;
            let json: String = row.get(2).map_err(backend)?;
            let item = Item {
                key: Key::new(pk, sk),
                version: version as u64,
                attrs: parse_attrs(&json)?,
            };
            // DynamoDB reads at most 1 MB per page: the item that would go past it starts
            // the next page.
            bytes += limits::item_size(&item.key, item.version, &item.attrs);
            if items.len() == limit || (!items.is_empty() && bytes > limits::MAX_QUERY_PAGE_BYTES) {
                more = true;
                break;
            }
            items.push(item);
        }
        drop(rows);
        drop(stmt);
        drop(conn);

        let next = if more {
            items.last().map(|i| i.key.sk.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn attrs(v: serde_json::Value) -> Attributes {
        match v {
            serde_json::Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn open(dir: &tempfile::TempDir) -> SqliteJobStore {
        SqliteJobStore::open(&dir.path().join("store.db")).unwrap()
    }

    fn put_op(pk: &str, sk: &str, condition: Condition) -> TxOp {
        TxOp::Put {
            key: Key::new(pk, sk),
            attrs: attrs(json!({"sk": sk})),
            condition,
        }
    }

    #[tokio::test]
    async fn put_not_exists_twice_fails_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let key = Key::new("job", "meta");
        let v = store
            .put(&key, attrs(json!({"a": 1})), Condition::NotExists)
            .await
            .unwrap();
        assert_eq!(v, 1);
        let err = store
            .put(&key, attrs(json!({"a": 2})), Condition::NotExists)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::ConditionFailed(ref k) if *k == key),
            "{err}"
        );
        let item = store.get(&key).await.unwrap().unwrap();
        assert_eq!(item.version, 1);
        assert_eq!(item.attrs, attrs(json!({"a": 1})));
    }

    #[tokio::test]
    async fn versions_and_conditions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let key = Key::new("job", "meta");
        assert!(store.get(&key).await.unwrap().is_none());
        assert!(matches!(
            store.put(&key, Attributes::new(), Condition::Exists).await,
            Err(StoreError::ConditionFailed(_))
        ));
        assert!(matches!(
            store
                .put(&key, Attributes::new(), Condition::VersionIs(0))
                .await,
            Err(StoreError::ConditionFailed(_))
        ));
        assert_eq!(
            store
                .put(&key, Attributes::new(), Condition::Always)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .put(&key, attrs(json!({"x": true})), Condition::VersionIs(1))
                .await
                .unwrap(),
            2
        );
        // A writer that read version 1 is now stale.
        let err = store
            .put(&key, attrs(json!({"x": false})), Condition::VersionIs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ConditionFailed(_)));
        assert_eq!(
            store
                .put(&key, Attributes::new(), Condition::Exists)
                .await
                .unwrap(),
            3
        );

        assert!(matches!(
            store.delete(&key, Condition::VersionIs(2)).await,
            Err(StoreError::ConditionFailed(_))
        ));
        assert!(store.get(&key).await.unwrap().is_some());
        store.delete(&key, Condition::VersionIs(3)).await.unwrap();
        assert!(store.get(&key).await.unwrap().is_none());
        // Deleting a missing item unconditionally succeeds; requiring it to exist fails.
        store.delete(&key, Condition::Always).await.unwrap();
        assert!(matches!(
            store.delete(&key, Condition::Exists).await,
            Err(StoreError::ConditionFailed(_))
        ));
        // A recreated item starts over at version 1.
        assert_eq!(
            store
                .put(&key, Attributes::new(), Condition::NotExists)
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn empty_key_attributes_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert!(matches!(
            store
                .put(&Key::new("job", ""), Attributes::new(), Condition::Always)
                .await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.get(&Key::new("", "x")).await,
            Err(StoreError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn transaction_commits_all_ops() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .put(&Key::new("j", "gone"), Attributes::new(), Condition::Always)
            .await
            .unwrap();
        store
            .put(
                &Key::new("j", "checked"),
                Attributes::new(),
                Condition::Always,
            )
            .await
            .unwrap();
        store
            .put(
                &Key::new("j", "bumped"),
                Attributes::new(),
                Condition::Always,
            )
            .await
            .unwrap();
        store
            .transact(vec![
                put_op("j", "new", Condition::NotExists),
                put_op("j", "bumped", Condition::VersionIs(1)),
                TxOp::Delete {
                    key: Key::new("j", "gone"),
                    condition: Condition::Exists,
                },
                TxOp::Check {
                    key: Key::new("j", "checked"),
                    condition: Condition::VersionIs(1),
                },
            ])
            .await
            .unwrap();
        assert_eq!(
            store
                .get(&Key::new("j", "new"))
                .await
                .unwrap()
                .unwrap()
                .version,
            1
        );
        let bumped = store.get(&Key::new("j", "bumped")).await.unwrap().unwrap();
        assert_eq!(bumped.version, 2);
        assert_eq!(bumped.attrs, attrs(json!({"sk": "bumped"})));
        assert!(store.get(&Key::new("j", "gone")).await.unwrap().is_none());
        assert_eq!(
            store
                .get(&Key::new("j", "checked"))
                .await
                .unwrap()
                .unwrap()
                .version,
            1
        );
    }

    #[tokio::test]
    async fn transaction_cancel_reports_failing_ops_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .put(
                &Key::new("j", "a"),
                attrs(json!({"v": 0})),
                Condition::Always,
            )
            .await
            .unwrap();
        store
            .put(
                &Key::new("j", "b"),
                attrs(json!({"v": 0})),
                Condition::Always,
            )
            .await
            .unwrap();
        let ops = vec![
            put_op("j", "a", Condition::VersionIs(1)), // ok
            put_op("j", "b", Condition::NotExists),    // fails: exists
            put_op("j", "c", Condition::NotExists),    // ok
            TxOp::Check {
                key: Key::new("j", "d"),
                condition: Condition::Exists,
            }, // fails
            TxOp::Delete {
                key: Key::new("j", "e"),
                condition: Condition::Always,
            }, // ok
            put_op("j", "f", Condition::VersionIs(7)), // fails: missing
        ];
        let err = store.transact(ops).await.unwrap_err();
        match err {
            StoreError::TransactionCanceled { failed } => {
                assert_eq!(failed, vec![false, true, false, true, false, true]);
            }
            other => panic!("unexpected {other}"),
        }
        let a = store.get(&Key::new("j", "a")).await.unwrap().unwrap();
        assert_eq!((a.version, a.attrs), (1, attrs(json!({"v": 0}))));
        let b = store.get(&Key::new("j", "b")).await.unwrap().unwrap();
        assert_eq!((b.version, b.attrs), (1, attrs(json!({"v": 0}))));
        assert!(store.get(&Key::new("j", "c")).await.unwrap().is_none());
        assert!(store.get(&Key::new("j", "f")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn transaction_shape_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert!(matches!(
            store.transact(vec![]).await,
            Err(StoreError::Invalid(_))
        ));

        let too_many: Vec<TxOp> = (0..=limits::MAX_TRANSACTION_ITEMS)
            .map(|i| put_op("j", &format!("{i:04}"), Condition::Always))
            .collect();
        assert!(matches!(
            store.transact(too_many).await,
            Err(StoreError::TooLarge(o)) if o.size == 101 && o.limit == 100
        ));
        let most: Vec<TxOp> = (0..limits::MAX_TRANSACTION_ITEMS)
            .map(|i| put_op("j", &format!("{i:04}"), Condition::NotExists))
            .collect();
        store.transact(most).await.unwrap();

        let dup = vec![
            put_op("k", "x", Condition::Always),
            TxOp::Check {
                key: Key::new("k", "x"),
                condition: Condition::Always,
            },
        ];
        assert!(matches!(
            store.transact(dup).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(store.get(&Key::new("k", "x")).await.unwrap().is_none());
        let page = store.query("j", "", None, 1000).await.unwrap();
        assert_eq!(page.items.len(), limits::MAX_TRANSACTION_ITEMS);
    }

    #[tokio::test]
    async fn query_prefix_and_pagination() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for sk in [
            "part#0003",
            "part#0001",
            "part#0002",
            "part#0004",
            "part#0005",
            "parts",
            "part",
        ] {
            store
                .put(
                    &Key::new("job1", sk),
                    attrs(json!({"sk": sk})),
                    Condition::Always,
                )
                .await
                .unwrap();
        }
        // Same sort keys under another partition must not leak in.
        store
            .put(
                &Key::new("job2", "part#0001"),
                Attributes::new(),
                Condition::Always,
            )
            .await
            .unwrap();

        let mut seen = Vec::new();
        let mut start: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = store
                .query("job1", "part#", start.as_deref(), 2)
                .await
                .unwrap();
            pages += 1;
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|i| i.key.sk.clone()));
            assert!(page.items.iter().all(|i| i.key.pk == "job1"));
            match page.next {
                Some(n) => start = Some(n),
                None => break,
            }
        }
        assert_eq!(
            seen,
            [
                "part#0001",
                "part#0002",
                "part#0003",
                "part#0004",
                "part#0005"
            ]
        );
        assert_eq!(pages, 3);

        // Exactly a full last page: no further (empty) page is announced.
        let page = store
            .query("job1", "part#", Some("part#0003"), 2)
            .await
            .unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next, None);

        // start_after before the prefix range is harmless.
        let page = store.query("job1", "part#", Some("a"), 10).await.unwrap();
        assert_eq!(page.items.len(), 5);
        let page = store.query("job1", "part", None, 10).await.unwrap();
        assert_eq!(page.items.len(), 7);
        assert_eq!(page.items[0].key.sk, "part");
        assert_eq!(page.items[6].key.sk, "parts");
        let page = store.query("job1", "", None, 100).await.unwrap();
        assert_eq!(page.items.len(), 7);
        let page = store.query("job1", "zzz", None, 100).await.unwrap();
        assert!(page.items.is_empty() && page.next.is_none());
        assert!(matches!(
            store.query("job1", "", None, 0).await,
            Err(StoreError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn query_prefix_handles_non_ascii_and_max_char() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let max = char::MAX.to_string();
        let sks = [
            "a\u{7f}".to_string(),
            "a\u{7f}x".to_string(),
            "a\u{80}".to_string(),
            format!("b{max}"),
            format!("b{max}{max}"),
            "c".to_string(),
            "\u{d7ff}".to_string(),
            "\u{d7ff}z".to_string(),
            "\u{e000}".to_string(),
        ];
        for sk in &sks {
            store
                .put(
                    &Key::new("p", sk.as_str()),
                    Attributes::new(),
                    Condition::Always,
                )
                .await
                .unwrap();
        }
        let sks_of = |page: Page| page.items.into_iter().map(|i| i.key.sk).collect::<Vec<_>>();
        assert_eq!(
            sks_of(store.query("p", "a\u{7f}", None, 10).await.unwrap()),
            ["a\u{7f}", "a\u{7f}x"]
        );
        assert_eq!(
            sks_of(
                store
                    .query("p", &format!("b{max}"), None, 10)
                    .await
                    .unwrap()
            ),
            [format!("b{max}"), format!("b{max}{max}")]
        );
        assert_eq!(
            sks_of(store.query("p", "\u{d7ff}", None, 10).await.unwrap()),
            ["\u{d7ff}", "\u{d7ff}z"]
        );
        assert_eq!(prefix_successor(&max), None);
        assert_eq!(prefix_successor(&format!("a{max}")).as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{d7ff}").as_deref(), Some("\u{e000}"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_create_has_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        // Two handles on one file: conditions must hold across connections (processes), too.
        let stores = [Arc::new(open(&dir)), Arc::new(open(&dir))];
        let key = Key::new("job", "lock");
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(&stores[i % 2]);
                let key = key.clone();
                tokio::spawn(async move {
                    store
                        .put(&key, attrs(json!({"owner": i})), Condition::NotExists)
                        .await
                })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(v) => {
                    assert_eq!(v, 1);
                    winners += 1;
                }
                Err(StoreError::ConditionFailed(_)) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(winners, 1);
        assert_eq!(stores[1].get(&key).await.unwrap().unwrap().version, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn optimistic_increments_lose_no_update() {
        let dir = tempfile::tempdir().unwrap();
        let stores = [Arc::new(open(&dir)), Arc::new(open(&dir))];
        let key = Key::new("job", "counter");
        stores[0]
            .put(&key, attrs(json!({"n": 0})), Condition::NotExists)
            .await
            .unwrap();
        const TASKS: u64 = 8;
        const PER_TASK: u64 = 25;
        let tasks: Vec<_> = (0..TASKS as usize)
            .map(|i| {
                let store = Arc::clone(&stores[i % 2]);
                let key = key.clone();
                tokio::spawn(async move {
                    let mut conflicts = 0u64;
                    for _ in 0..PER_TASK {
                        loop {
                            let item = store.get(&key).await.unwrap().unwrap();
                            let n = item.attrs["n"].as_u64().unwrap();
                            tokio::task::yield_now().await;
                            match store
                                .put(
                                    &key,
                                    attrs(json!({"n": n + 1})),
                                    Condition::VersionIs(item.version),
                                )
                                .await
                            {
                                Ok(_) => break,
                                Err(StoreError::ConditionFailed(_)) => conflicts += 1,
                                Err(e) => panic!("unexpected {e}"),
                            }
                        }
                    }
                    conflicts
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let item = stores[0].get(&key).await.unwrap().unwrap();
        assert_eq!(item.attrs["n"].as_u64().unwrap(), TASKS * PER_TASK);
        assert_eq!(item.version, TASKS * PER_TASK + 1);
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new("job", "meta");
        {
            let store = open(&dir);
            store
                .put(
                    &key,
                    attrs(json!({"state": "running"})),
                    Condition::NotExists,
                )
                .await
                .unwrap();
            store
                .put(
                    &key,
                    attrs(json!({"state": "done"})),
                    Condition::VersionIs(1),
                )
                .await
                .unwrap();
            store
                .transact(vec![put_op("job", "part#1", Condition::NotExists)])
                .await
                .unwrap();
        }
        let store = open(&dir);
        let item = store.get(&key).await.unwrap().unwrap();
        assert_eq!(item.version, 2);
        assert_eq!(item.attrs, attrs(json!({"state": "done"})));
        assert_eq!(
            store
                .query("job", "part#", None, 10)
                .await
                .unwrap()
                .items
                .len(),
            1
        );
    }
}
