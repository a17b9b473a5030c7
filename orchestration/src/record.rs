//! The stored job record and the keys of everything a job keeps in the [`JobStore`].
//!
//! Layout (one table, DynamoDB style):
//! - `job#{id}` / `job`: the [`JobRecord`].
//! - `jobs` / `{created_ms}#{id}`: the job list, in creation order.
//! - `run#{id}#{attempt}#p{partition % 32}` / `p#{partition}`: ledger markers (one per
//!   reduced partition), spread over 32 partition keys so no key takes every commit's writes.
//! - `run#{id}#{attempt}#a{shard}` / `agg`: the small aggregate's shards, a key each.
//! - `run#{id}#{attempt}#d{n % 32}` / `d#{name}`: keyed deltas (references to shuffled data
//!   in the blob store), written in the transaction of the markers they cover.
//! - `run#{id}#{attempt}#m` / `m#{r}`: reduce partitions merged, with their summaries.
//! - `run#{id}#{attempt}` / `dead#{partition}`: dead-lettered partitions.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::Function;
use crate::job::{JobId, JobRequest, JobStatus};
use crate::policy::{Levers, Policy};
use crate::ports::{Attributes, Condition, JobStore, Key, StoreError, TxOp};

pub fn job_key(id: &JobId) -> Key {
    Key::new(format!("job#{id}"), "job")
}

/// The job list: one item per job under one partition key, sorted by creation time.
pub const INDEX_PK: &str = "jobs";

pub fn index_key(created_ms: u64, id: &JobId) -> Key {
    Key::new(INDEX_PK, format!("{created_ms:013}#{id}"))
}

pub fn run_pk(id: &str, attempt: u32) -> String {
    format!("run#{id}#{attempt}")
}

/// Partition keys the markers (and the deltas) of one job attempt are spread over: each
/// takes 1/32 of the commits' writes (DynamoDB serves ~1,000 write units/s per partition).
pub const SPREAD_KEYS: u64 = 32;

pub fn marker_key(id: &str, attempt: u32, partition: u64) -> Key {
    Key::new(
        format!("{}#p{}", run_pk(id, attempt), partition % SPREAD_KEYS),
        format!("p#{partition:020}"),
    )
}

pub fn shard_key(id: &str, attempt: u32, shard: u32) -> Key {
    Key::new(format!("{}#a{shard}", run_pk(id, attempt)), "agg")
}

/// The partition keys of a job attempt's deltas.
pub fn delta_pks(id: &str, attempt: u32) -> impl Iterator<Item = String> + '_ {
    (0..SPREAD_KEYS).map(move |n| format!("{}#d{n}", run_pk(id, attempt)))
}

/// A delta's key: its partition key chosen by the name's first partition number (`p{n}` or
/// `c{n}-…`), so deltas spread as markers do.
pub fn delta_key(id: &str, attempt: u32, first_partition: u64, name: &str) -> Key {
    Key::new(
        format!("{}#d{}", run_pk(id, attempt), first_partition % SPREAD_KEYS),
        format!("d#{name}"),
    )
}

pub fn merged_pk(id: &str, attempt: u32) -> String {
    format!("{}#m", run_pk(id, attempt))
}

pub fn merged_key(id: &str, attempt: u32, r: u32) -> Key {
    Key::new(merged_pk(id, attempt), format!("m#{r:04}"))
}

/// A keyed job's whole result (every field's sorted objects and summary), written once all
/// R parts are merged.
pub fn result_key(id: &str, attempt: u32) -> Key {
    Key::new(merged_pk(id, attempt), "r#")
}

/// Which merge task writes a keyed job's result.
pub fn result_claim_key(id: &str, attempt: u32) -> Key {
    Key::new(merged_pk(id, attempt), "c#")
}

pub fn dead_key(id: &str, attempt: u32, partition: u64) -> Key {
    Key::new(run_pk(id, attempt), format!("dead#{partition:020}"))
}

/// A daemon lease: who may write the job record, until when, and the epoch that fences
/// every write of a previous holder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub epoch: u64,
    pub expires_ms: u64,
}

/// The resources of one stage, as provisioned by the daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub function: Function,
    pub queue_url: String,
    #[serde(default)]
    pub mapping_id: Option<String>,
    #[serde(default)]
    pub levers: Option<Levers>,
}

/// How a finished job ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    #[serde(default)]
    pub result: Option<Value>,
    pub total_partitions: u64,
    pub reduced_partitions: u64,
    /// reduced / total (1 for a job with no partitions).
    pub coverage: f64,
    /// Partitions that ended in the dead-letter queue and were never reduced.
    #[serde(default)]
    pub dead_partitions: Vec<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub request: JobRequest,
    pub policy: Policy,
    pub min_coverage: f64,
    pub status: JobStatus,
    /// Incremented when a failed or cancelled job is submitted again; names its resources.
    pub attempt: u32,
    pub created_ms: u64,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    #[serde(default)]
    pub lease: Lease,
    /// Sequence of the periodic tick chain; a tick carrying another number is stale.
    #[serde(default)]
    pub tick_seq: u64,
    /// When the chain last ticked: a nudge restarts a chain that went silent.
    #[serde(default)]
    pub last_tick_ms: u64,
    #[serde(default)]
    pub dlq_url: Option<String>,
    #[serde(default)]
    pub stages: Vec<StageRecord>,
    #[serde(default)]
    pub total_partitions: Option<u64>,
    /// The source has sent every feed task: with the total known, completion can be judged.
    #[serde(default)]
    pub planned: bool,
    /// Reduce partitions (R) of a keyed job's shuffle, chosen when it is planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_partitions: Option<u32>,
    /// A keyed job's merge tasks have been sent (every input partition is in).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub merging: bool,
    #[serde(default)]
    pub cancel_requested: bool,
    /// A composite job's parts (see `JobType::parts`), in partition order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<JobId>,
    /// Whether this job's submission of each part started its computation (false: the part
    /// was cached, or joined while another job's submission was computing it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts_computed: Vec<bool>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// Queues and mappings deleted after the job ended.
    #[serde(default)]
    pub torn_down: bool,
}

impl JobRecord {
    pub fn new(
        id: JobId,
        request: JobRequest,
        policy: Policy,
        min_coverage: f64,
        now_ms: u64,
    ) -> Self {
        Self {
            id,
            request,
            policy,
            min_coverage,
            status: JobStatus::Pending,
            attempt: 1,
            created_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            lease: Lease::default(),
            tick_seq: 0,
            last_tick_ms: now_ms,
            dlq_url: None,
            stages: Vec::new(),
            total_partitions: None,
            planned: false,
            shuffle_partitions: None,
            merging: false,
            cancel_requested: false,
            parts: Vec::new(),
            parts_computed: Vec::new(),
            outcome: None,
            torn_down: false,
        }
    }

    /// Resets a failed or cancelled job for another attempt, keeping its identity.
    pub fn restart(&mut self, policy: Policy, min_coverage: f64, now_ms: u64) {
        let fresh = Self::new(
            self.id.clone(),
            self.request.clone(),
            policy,
            min_coverage,
            now_ms,
        );
        *self = Self {
            attempt: self.attempt + 1,
            created_ms: self.created_ms,
            lease: self.lease.clone(),
            // A new chain: ticks of the old attempt become stale.
            tick_seq: self.tick_seq + 1,
            ..fresh
        };
    }

    fn to_attrs(&self) -> Result<Attributes, StoreError> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(StoreError::Invalid("job record is not an object".into())),
            Err(e) => Err(StoreError::Invalid(e.to_string())),
        }
    }
}

/// A job record and the store version it was read at.
#[derive(Clone, Debug)]
pub struct Versioned {
    pub record: JobRecord,
    pub version: u64,
}

pub async fn load(store: &dyn JobStore, id: &JobId) -> Result<Option<Versioned>, StoreError> {
    let Some(item) = store.get(&job_key(id)).await? else {
        return Ok(None);
    };
    let record = serde_json::from_value(Value::Object(item.attrs))
        .map_err(|e| StoreError::Backend(format!("job record {id} is corrupt: {e}")))?;
    Ok(Some(Versioned {
        record,
        version: item.version,
    }))
}

/// Creates the record, and its entry in the job list, if no job with its id exists.
/// A lost race is reported as `ConditionFailed`.
pub async fn create(store: &dyn JobStore, record: &JobRecord) -> Result<(), StoreError> {
    let key = job_key(&record.id);
    let mut entry = Attributes::new();
    entry.insert("id".into(), Value::String(record.id.to_string()));
    let ops = vec![
        TxOp::Put {
            key: key.clone(),
            attrs: record.to_attrs()?,
            condition: Condition::NotExists,
        },
        TxOp::Put {
            key: index_key(record.created_ms, &record.id),
            attrs: entry,
            condition: Condition::Always,
        },
    ];
    match store.transact(ops).await {
        Err(StoreError::TransactionCanceled { .. }) => Err(StoreError::ConditionFailed(key)),
        other => other,
    }
}

/// A page of the job list (ids in creation order) after the cursor `after`.
pub async fn list(
    store: &dyn JobStore,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<JobId>, Option<String>), StoreError> {
    let page = store.query(INDEX_PK, "", after, limit).await?;
    let ids = page
        .items
        .iter()
        .filter_map(|item| item.attrs.get("id").and_then(Value::as_str))
        .filter_map(|id| JobId::parse(id).ok())
        .collect();
    Ok((ids, page.next))
}

/// Writes the record if it is still at `version` (optimistic lock). Returns the new version.
pub async fn save(
    store: &dyn JobStore,
    record: &JobRecord,
    version: u64,
) -> Result<u64, StoreError> {
    store
        .put(
            &job_key(&record.id),
            record.to_attrs()?,
            Condition::VersionIs(version),
        )
        .await
}
