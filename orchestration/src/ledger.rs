//! Exactly-once aggregation. Every reduced partition leaves a marker, written in the same
//! transaction as the aggregate update that adds its partial; a partition whose marker
//! exists is never added again, however often its message is delivered.

use std::collections::BTreeMap;

use rand::Rng;
use serde_json::{json, Value};

use crate::components::{ComponentError, Reduce};
use crate::ports::{Condition, JobStore, StoreError, TxOp, MAX_TRANSACTION_ITEMS};
use crate::record::{dead_key, marker_key, run_pk, shard_key};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error("aggregate shard {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error("gave up after {0} conflicting attempts")]
    Contention(u32),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Partitions recorded by this call.
    pub recorded: u64,
    /// Partitions that were already recorded (or repeated in the input): dropped.
    pub duplicates: u64,
}

/// One job attempt's ledger.
pub struct Ledger<'a> {
    pub store: &'a dyn JobStore,
    pub job: &'a str,
    pub attempt: u32,
    pub shards: u32,
}

const MAX_CONFLICTS: u32 = 64;

struct Shard {
    version: Option<u64>,
    partitions: u64,
    state: Value,
}

impl<'a> Ledger<'a> {
    async fn read_shard(&self, shard: u32, reduce: &dyn Reduce) -> Result<Shard, LedgerError> {
        let key = shard_key(self.job, self.attempt, shard);
        let Some(item) = self.store.get(&key).await? else {
            return Ok(Shard {
                version: None,
                partitions: 0,
                state: reduce.zero(),
            });
        };
        let corrupt = |what: &str| LedgerError::Corrupt(key.sk.clone(), what.to_owned());
        Ok(Shard {
            version: Some(item.version),
            partitions: item
                .attrs
                .get("partitions")
                .and_then(Value::as_u64)
                .ok_or_else(|| corrupt("no partition count"))?,
            state: item
                .attrs
                .get("state")
                .cloned()
                .ok_or_else(|| corrupt("no state"))?,
        })
    }

    /// Adds each partition's partial to the aggregate exactly once.
    pub async fn commit(
        &self,
        reduce: &dyn Reduce,
        partials: Vec<(u64, Value)>,
    ) -> Result<CommitOutcome, LedgerError> {
        let input = partials.len() as u64;
        // A batch can hold the same partition twice (duplicated delivery): keep one.
        let unique: BTreeMap<u64, Value> = partials.into_iter().collect();
        let mut outcome = CommitOutcome {
            recorded: 0,
            duplicates: input - unique.len() as u64,
        };
        let mut pending: Vec<(u64, Value)> = unique.into_iter().collect();
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(MAX_TRANSACTION_ITEMS - 1));
            let (recorded, duplicates) = self.commit_chunk(reduce, pending).await?;
            outcome.recorded += recorded;
            outcome.duplicates += duplicates;
            pending = rest;
        }
        Ok(outcome)
    }

    async fn commit_chunk(
        &self,
        reduce: &dyn Reduce,
        mut chunk: Vec<(u64, Value)>,
    ) -> Result<(u64, u64), LedgerError> {
        let mut duplicates = 0;
        for _ in 0..MAX_CONFLICTS {
            if chunk.is_empty() {
                return Ok((0, duplicates));
            }
            let shard = rand::rng().random_range(0..self.shards.max(1));
            let mut current = self.read_shard(shard, reduce).await?;
            for (_, partial) in &chunk {
                reduce.fold(&mut current.state, partial)?;
            }
            let mut ops: Vec<TxOp> = chunk
                .iter()
                .map(|(p, _)| TxOp::Put {
                    key: marker_key(self.job, self.attempt, *p),
                    attrs: Default::default(),
                    condition: Condition::NotExists,
                })
                .collect();
            let mut attrs = crate::ports::Attributes::new();
            attrs.insert(
                "partitions".into(),
                json!(current.partitions + chunk.len() as u64),
            );
            attrs.insert("state".into(), current.state);
            ops.push(TxOp::Put {
                key: shard_key(self.job, self.attempt, shard),
                attrs,
                condition: current
                    .version
                    .map_or(Condition::NotExists, Condition::VersionIs),
            });
            match self.store.transact(ops).await {
                Ok(()) => return Ok((chunk.len() as u64, duplicates)),
                Err(StoreError::TransactionCanceled { failed }) => {
                    // Markers that already exist belong to partitions counted before: drop
                    // them and retry the rest. A failed shard condition is a concurrent
                    // reduce on the same shard: retry, likely on another shard.
                    let before = chunk.len();
                    let mut i = 0;
                    chunk.retain(|_| {
                        let keep = !failed.get(i).copied().unwrap_or(false);
                        i += 1;
                        keep
                    });
                    duplicates += (before - chunk.len()) as u64;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(LedgerError::Contention(MAX_CONFLICTS))
    }

    /// Partitions reduced so far, and the aggregate of their partials.
    pub async fn totals(&self, reduce: &dyn Reduce) -> Result<(u64, Value), LedgerError> {
        let mut partitions = 0;
        let mut state = reduce.zero();
        for shard in 0..self.shards.max(1) {
            let s = self.read_shard(shard, reduce).await?;
            partitions += s.partitions;
            reduce.fold(&mut state, &s.state)?;
        }
        Ok((partitions, state))
    }

    /// Partitions reduced so far (without merging the aggregate).
    pub async fn reduced_count(&self) -> Result<u64, LedgerError> {
        let mut partitions = 0;
        for shard in 0..self.shards.max(1) {
            if let Some(item) = self
                .store
                .get(&shard_key(self.job, self.attempt, shard))
                .await?
            {
                partitions += item
                    .attrs
                    .get("partitions")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
            }
        }
        Ok(partitions)
    }

    pub async fn is_reduced(&self, partition: u64) -> Result<bool, LedgerError> {
        Ok(self
            .store
            .get(&marker_key(self.job, self.attempt, partition))
            .await?
            .is_some())
    }

    /// Records partitions dead-lettered at `stage` (idempotent).
    pub async fn record_dead(
        &self,
        stage: &str,
        partitions: impl IntoIterator<Item = u64>,
    ) -> Result<(), LedgerError> {
        let mut attrs = crate::ports::Attributes::new();
        attrs.insert("stage".into(), json!(stage));
        for p in partitions {
            self.store
                .put(
                    &dead_key(self.job, self.attempt, p),
                    attrs.clone(),
                    Condition::Always,
                )
                .await?;
        }
        Ok(())
    }

    /// Dead-lettered partitions, in order, with the stage each died at.
    pub async fn dead_letters(&self) -> Result<Vec<(u64, String)>, LedgerError> {
        let pk = run_pk(self.job, self.attempt);
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .query(&pk, "dead#", after.as_deref(), 1000)
                .await?;
            for item in &page.items {
                if let Some(p) = item
                    .key
                    .sk
                    .strip_prefix("dead#")
                    .and_then(|s| s.parse().ok())
                {
                    let stage = item
                        .attrs
                        .get("stage")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    out.push((p, stage.to_owned()));
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    pub async fn dead_partitions(&self) -> Result<Vec<u64>, LedgerError> {
        Ok(self
            .dead_letters()
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::components::Sum;
    use crate::local::SqliteJobStore;

    fn store() -> (tempfile::TempDir, Arc<SqliteJobStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteJobStore::open(&dir.path().join("s.db")).unwrap());
        (dir, store)
    }

    fn partials(range: std::ops::Range<u64>) -> Vec<(u64, Value)> {
        range.map(|p| (p, json!({"n": 1, "p": p}))).collect()
    }

    #[tokio::test]
    async fn a_partition_counts_once_however_often_it_arrives() {
        let (_dir, store) = store();
        let ledger = Ledger {
            store: store.as_ref(),
            job: "j",
            attempt: 1,
            shards: 4,
        };
        let first = ledger.commit(&Sum, partials(0..3)).await.unwrap();
        assert_eq!(
            first,
            CommitOutcome {
                recorded: 3,
                duplicates: 0
            }
        );
        let mut again = partials(1..5);
        again.push((4, json!({"n": 1, "p": 4}))); // duplicated within one batch too
        let second = ledger.commit(&Sum, again).await.unwrap();
        assert_eq!(
            second,
            CommitOutcome {
                recorded: 2,
                duplicates: 3
            }
        );
        let (count, total) = ledger.totals(&Sum).await.unwrap();
        assert_eq!(count, 5);
        assert_eq!(total, json!({"n": 5, "p": 10}));
        assert!(ledger.is_reduced(4).await.unwrap());
        assert!(!ledger.is_reduced(5).await.unwrap());
    }

    #[tokio::test]
    async fn batches_larger_than_a_transaction_are_chunked() {
        let (_dir, store) = store();
        let ledger = Ledger {
            store: store.as_ref(),
            job: "j",
            attempt: 1,
            shards: 2,
        };
        let out = ledger.commit(&Sum, partials(0..250)).await.unwrap();
        assert_eq!(out.recorded, 250);
        assert_eq!(ledger.reduced_count().await.unwrap(), 250);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_overlapping_commits_count_each_partition_once() {
        let (_dir, store) = store();
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let ledger = Ledger {
                    store: store.as_ref(),
                    job: "j",
                    attempt: 1,
                    shards: 2,
                };
                // Every task commits 0..120 in its own order of chunks.
                let mut all = partials(0..120);
                all.rotate_left((t * 15) as usize);
                for chunk in all.chunks(30) {
                    ledger.commit(&Sum, chunk.to_vec()).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let ledger = Ledger {
            store: store.as_ref(),
            job: "j",
            attempt: 1,
            shards: 2,
        };
        let (count, total) = ledger.totals(&Sum).await.unwrap();
        assert_eq!(count, 120);
        assert_eq!(total, json!({"n": 120, "p": (0..120).sum::<u64>()}));
    }

    #[tokio::test]
    async fn a_malformed_partial_records_nothing() {
        let (_dir, store) = store();
        let ledger = Ledger {
            store: store.as_ref(),
            job: "j",
            attempt: 1,
            shards: 1,
        };
        let bad = vec![(0, json!({"n": 1})), (1, json!({"n": "x"}))];
        assert!(ledger.commit(&Sum, bad).await.is_err());
        assert_eq!(ledger.reduced_count().await.unwrap(), 0);
        assert!(!ledger.is_reduced(0).await.unwrap());
    }

    #[tokio::test]
    async fn attempts_and_dead_partitions_are_separate() {
        let (_dir, store) = store();
        let one = Ledger {
            store: store.as_ref(),
            job: "j",
            attempt: 1,
            shards: 1,
        };
        let two = Ledger {
            store: store.as_ref(),
            job: "j",
            attempt: 2,
            shards: 1,
        };
        one.commit(&Sum, partials(0..2)).await.unwrap();
        assert_eq!(two.reduced_count().await.unwrap(), 0);
        one.record_dead("filter", [7, 3, 7]).await.unwrap();
        assert_eq!(
            one.dead_letters().await.unwrap()[0],
            (3, "filter".to_owned())
        );
        assert_eq!(one.dead_partitions().await.unwrap(), vec![3, 7]);
        assert!(two.dead_partitions().await.unwrap().is_empty());
    }
}
