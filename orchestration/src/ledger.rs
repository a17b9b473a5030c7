//! Exactly-once aggregation. Every reduced partition leaves a marker, written in the same
//! transaction as the aggregate update that adds its partial; a partition whose marker
//! exists is never added again, however often its message is delivered.
//!
//! A keyed job's partials also carry a reference to their shuffled keyed data
//! ([`keyed::Delta`]): the reference is recorded in the same transaction as the markers it
//! covers, so the merge at the end reads each input partition's keys exactly once. Small
//! deltas of one commit are combined into one first (fewer objects for the merge to read).

use std::collections::BTreeMap;

use rand::Rng;
use serde_json::{json, Value};

use crate::components::{ComponentError, Reduce};
use crate::keyed::{self, Delta, KeyedError, Spec, Summary};
use crate::ports::{
    Blobs, Condition, Item, JobStore, Key, StoreError, TxOp, MAX_TRANSACTION_ITEMS,
};
use crate::record::{
    dead_key, delta_key, delta_pks, marker_key, merged_key, merged_pk, result_claim_key,
    result_key, run_pk, shard_key,
};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error(transparent)]
    Keyed(#[from] KeyedError),
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

/// What a keyed ledger needs besides the store.
#[derive(Clone, Copy)]
pub struct Keyed<'a> {
    pub spec: &'a Spec,
    pub blobs: &'a dyn Blobs,
    /// The job's reduce partitions (R).
    pub partitions: u32,
}

/// One job attempt's ledger.
pub struct Ledger<'a> {
    pub store: &'a dyn JobStore,
    pub job: &'a str,
    pub attempt: u32,
    pub shards: u32,
    /// Set for a keyed job: partials may carry shuffle references.
    pub keyed: Option<Keyed<'a>>,
}

const MAX_CONFLICTS: u32 = 64;

/// The `fields` (summaries by field) of a merged part's or a result's record.
fn summaries_of(item: &Item) -> Result<BTreeMap<String, Summary>, LedgerError> {
    let corrupt = |what: &str| LedgerError::Corrupt(item.key.sk.clone(), what.into());
    let fields = item
        .attrs
        .get("fields")
        .cloned()
        .ok_or_else(|| corrupt("no fields"))?;
    serde_json::from_value(fields).map_err(|e| corrupt(&e.to_string()))
}

/// The wait after the `attempt`-th cancelled transaction that failed no condition: 10 ms
/// doubling to at most 1 s, jittered over its upper half (as AWS advises for contended
/// retries), so 64
/// attempts span about a minute rather than a few round trips.
fn conflict_backoff(attempt: u32) -> std::time::Duration {
    let cap_ms = 10u64.saturating_mul(1 << attempt.min(7)).min(1_000);
    std::time::Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms))
}
/// Deltas of one commit are combined into one when together they are at most this large
/// (many small partials); larger ones are referenced as they are (no copy).
const COMBINE_MAX_BYTES: u64 = 8 << 20;

struct Shard {
    version: Option<u64>,
    partitions: u64,
    state: Value,
}

/// A partition's partial: its small values, and its shuffled keyed data.
type Pending = (u64, Value, Option<Delta>);

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
        let corrupt = |what: &str| LedgerError::Corrupt(key.pk.clone(), what.to_owned());
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
        let mut pending = Vec::with_capacity(unique.len());
        for (p, mut partial) in unique {
            let shuffled = partial
                .as_object_mut()
                .and_then(|o| o.remove(keyed::SHUFFLE_FIELD));
            let delta = match (shuffled, self.keyed) {
                (Some(v), Some(_)) => Some(Delta::from_value(&v)?),
                (Some(_), None) => {
                    return Err(ComponentError::Malformed(format!(
                        "partition {p} carries shuffled data, but the job is not keyed"
                    ))
                    .into())
                }
                // Keyed fields that came as JSON (no map side wrote them): shuffle them here.
                (None, Some(k)) => self.shuffle_here(k, p, &mut partial).await?,
                (None, None) => None,
            };
            pending.push((p, partial, delta));
        }
        // A chunk's markers, its shard, and a delta per partition fit one transaction.
        let per_chunk = if pending.iter().any(|p| p.2.is_some()) {
            (MAX_TRANSACTION_ITEMS - 1) / 2
        } else {
            MAX_TRANSACTION_ITEMS - 1
        };
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(per_chunk));
            let (recorded, duplicates) = self.commit_chunk(reduce, pending).await?;
            outcome.recorded += recorded;
            outcome.duplicates += duplicates;
            pending = rest;
        }
        Ok(outcome)
    }

    async fn shuffle_here(
        &self,
        k: Keyed<'_>,
        partition: u64,
        partial: &mut Value,
    ) -> Result<Option<Delta>, LedgerError> {
        let maps: Vec<_> = keyed::take_fields(k.spec, partial)?
            .into_iter()
            .filter(|(_, m)| !m.is_empty())
            .collect();
        if maps.is_empty() {
            return Ok(None);
        }
        let object = keyed::map_object(self.job, self.attempt, partition);
        let (bytes, delta) = keyed::shuffle_bytes(&maps, k.partitions, &object);
        k.blobs
            .put(&object, bytes)
            .await
            .map_err(KeyedError::from)?;
        Ok(Some(delta))
    }

    /// The delta records a chunk writes: one combined delta for many small ones, or each
    /// as it is.
    async fn deltas_for(&self, chunk: &[Pending]) -> Result<Vec<(Key, Delta)>, LedgerError> {
        let refs: Vec<(u64, &Delta)> = chunk
            .iter()
            .filter_map(|(p, _, d)| d.as_ref().filter(|d| !d.is_empty()).map(|d| (*p, d)))
            .collect();
        let Some(keyed) = self.keyed else {
            return Ok(Vec::new());
        };
        let bytes: u64 = refs.iter().map(|(_, d)| d.bytes()).sum();
        let r = keyed.partitions;
        let combinable = refs
            .iter()
            .all(|(_, d)| d.segments.iter().all(|s| !s.jsonl));
        if refs.len() >= 2 && bytes <= COMBINE_MAX_BYTES && combinable {
            let first = refs[0].0;
            let name = format!("c{first:020}-{:016x}", rand::rng().random::<u64>());
            let object = format!("{}d/{name}", keyed::shuffle_prefix(self.job, self.attempt));
            let deltas: Vec<Delta> = refs.iter().map(|(_, d)| (*d).clone()).collect();
            let combined = keyed::combine(keyed.blobs, keyed.spec, &deltas, r, &object).await?;
            return Ok(vec![(
                delta_key(self.job, self.attempt, first, &name),
                combined,
            )]);
        }
        Ok(refs
            .into_iter()
            .map(|(p, d)| {
                (
                    delta_key(self.job, self.attempt, p, &format!("p{p:020}")),
                    d.clone(),
                )
            })
            .collect())
    }

    async fn commit_chunk(
        &self,
        reduce: &dyn Reduce,
        mut chunk: Vec<Pending>,
    ) -> Result<(u64, u64), LedgerError> {
        let mut duplicates = 0;
        // The deltas of the chunk as it was when they were made (redone if it shrinks).
        let mut deltas: Option<(usize, Vec<(Key, Delta)>)> = None;
        for attempt in 0..MAX_CONFLICTS {
            if chunk.is_empty() {
                return Ok((0, duplicates));
            }
            if deltas.as_ref().map(|d| d.0) != Some(chunk.len()) {
                deltas = Some((chunk.len(), self.deltas_for(&chunk).await?));
            }
            let shard = rand::rng().random_range(0..self.shards.max(1));
            let mut current = self.read_shard(shard, reduce).await?;
            for (_, partial, _) in &chunk {
                reduce.fold(&mut current.state, partial)?;
            }
            let mut ops: Vec<TxOp> = chunk
                .iter()
                .map(|(p, _, _)| TxOp::Put {
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
            for (key, delta) in deltas.iter().flat_map(|d| d.1.iter()) {
                let mut attrs = crate::ports::Attributes::new();
                attrs.insert("delta".into(), json!(delta));
                // Unconditional: a delta is written only beside markers that are new.
                ops.push(TxOp::Put {
                    key: key.clone(),
                    attrs,
                    condition: Condition::Always,
                });
            }
            match self.store.transact(ops).await {
                Ok(()) => return Ok((chunk.len() as u64, duplicates)),
                Err(StoreError::TransactionCanceled { failed }) => {
                    if !failed.contains(&true) {
                        // No condition failed: a conflicting transaction, or DynamoDB
                        // throttled it (`ThrottlingError`; the SDK does not retry a
                        // cancelled transaction). Trying again at once only adds load.
                        tokio::time::sleep(conflict_backoff(attempt)).await;
                    }
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

    /// Whether merge task `r` has recorded its parts.
    pub async fn is_merged(&self, r: u32) -> Result<bool, LedgerError> {
        Ok(self
            .store
            .get(&merged_key(self.job, self.attempt, r))
            .await?
            .is_some())
    }

    /// Every item under `pk` whose sort key starts with `prefix`, page by page.
    async fn query_all(
        &self,
        pk: &str,
        prefix: &str,
    ) -> Result<Vec<crate::ports::Item>, LedgerError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.query(pk, prefix, after.as_deref(), 1000).await?;
            out.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Every delta recorded: what the merge reads.
    pub async fn deltas(&self) -> Result<Vec<Delta>, LedgerError> {
        let mut out = Vec::new();
        for pk in delta_pks(self.job, self.attempt) {
            for item in self.query_all(&pk, "d#").await? {
                let v = item
                    .attrs
                    .get("delta")
                    .ok_or_else(|| LedgerError::Corrupt(item.key.sk.clone(), "no delta".into()))?;
                out.push(Delta::from_value(v)?);
            }
        }
        Ok(out)
    }

    /// Records that reduce partition `r` is merged, with its fields' summaries. False if it
    /// was recorded before (a duplicate merge task: the same bytes were written again).
    pub async fn record_merged(
        &self,
        r: u32,
        summaries: &BTreeMap<String, Summary>,
    ) -> Result<bool, LedgerError> {
        self.put_once(
            &merged_key(self.job, self.attempt, r),
            "fields",
            json!(summaries),
        )
        .await
    }

    /// Writes `{name: value}` at `key` unless something is there; false if it was.
    async fn put_once(&self, key: &Key, name: &str, value: Value) -> Result<bool, LedgerError> {
        let mut attrs = crate::ports::Attributes::new();
        attrs.insert(name.into(), value);
        match self.store.put(key, attrs, Condition::NotExists).await {
            Ok(_) => Ok(true),
            Err(StoreError::ConditionFailed(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether merge task `r` is the one to write the result: the first to ask is, and so
    /// is its own redelivery (if it died writing); any other is not (the merge tasks of a
    /// batch finish together, and each would redo the whole k-way merge).
    pub async fn claim_result(&self, r: u32) -> Result<bool, LedgerError> {
        let key = result_claim_key(self.job, self.attempt);
        if self.put_once(&key, "r", json!(r)).await? {
            return Ok(true);
        }
        Ok(self
            .store
            .get(&key)
            .await?
            .and_then(|item| item.attrs.get("r").and_then(Value::as_u64))
            == Some(u64::from(r)))
    }

    /// Records a keyed job's result (by field); false if it was recorded before.
    pub async fn record_result(
        &self,
        fields: &BTreeMap<String, Summary>,
    ) -> Result<bool, LedgerError> {
        self.put_once(&result_key(self.job, self.attempt), "fields", json!(fields))
            .await
    }

    /// A keyed job's result, once its last merge has written it.
    pub async fn result(&self) -> Result<Option<BTreeMap<String, Summary>>, LedgerError> {
        let Some(item) = self.store.get(&result_key(self.job, self.attempt)).await? else {
            return Ok(None);
        };
        summaries_of(&item).map(Some)
    }

    /// The reduce partitions merged so far, with their summaries, by partition.
    pub async fn merged(&self) -> Result<BTreeMap<u32, BTreeMap<String, Summary>>, LedgerError> {
        let mut out = BTreeMap::new();
        for item in self
            .query_all(&merged_pk(self.job, self.attempt), "m#")
            .await?
        {
            let corrupt = |what: &str| LedgerError::Corrupt(item.key.sk.clone(), what.into());
            let r: u32 = item
                .key
                .sk
                .strip_prefix("m#")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("bad key"))?;
            out.insert(r, summaries_of(&item)?);
        }
        Ok(out)
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
        for item in self.query_all(&pk, "dead#").await? {
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
        Ok(out)
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

    #[test]
    fn conflicts_back_off_exponentially_to_a_second() {
        let ms = |a| conflict_backoff(a).as_millis();
        assert!((5..=10).contains(&ms(0)), "{}", ms(0));
        assert!((40..=80).contains(&ms(3)), "{}", ms(3));
        for attempt in [7, 20, 63] {
            assert!((500..=1_000).contains(&ms(attempt)), "{}", ms(attempt));
        }
    }

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
            keyed: None,
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
            keyed: None,
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
                    keyed: None,
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
            keyed: None,
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
            keyed: None,
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
            keyed: None,
        };
        let two = Ledger {
            store: store.as_ref(),
            job: "j",
            attempt: 2,
            shards: 1,
            keyed: None,
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
