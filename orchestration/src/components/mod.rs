//! Reusable pipeline steps. A job type's flow is an ordered list of them: one source, any
//! number of transforms, one reduce. Every transform is deterministic, which is what makes
//! redelivery harmless: a duplicate produces the same partial, and the ledger drops it.

pub mod blob_lines;
pub(crate) mod filter;
mod sum;
mod synthetic_text;
pub(crate) mod tweet_match;
mod word_count;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ports::Blobs;

pub use blob_lines::BlobLines;
pub use filter::Filter;
pub use sum::Sum;
pub use synthetic_text::SyntheticText;
pub use tweet_match::TweetMatch;
pub use word_count::WordCount;

#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The input can never be processed (poison): retrying will not help.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A dependency failed; a retry may succeed.
    #[error("transient failure: {0}")]
    Transient(String),
}

/// What a source needs from the outside world.
#[derive(Clone)]
pub struct SourceContext {
    pub blobs: Arc<dyn Blobs>,
}

/// A source's plan: how many partitions the job has, and the tasks the feed stage runs to
/// emit them. Each task covers the partitions `first..first + count`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub total_partitions: u64,
    pub tasks: Vec<FeedTask>,
    /// The input's size, when the source knows it (what a keyed job sizes its shuffle by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedTask {
    pub first: u64,
    pub count: u64,
    /// Source-specific detail (an object key and byte range, say).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub spec: Value,
}

/// A partition emitted by a source: its number and its payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Partition {
    pub index: u64,
    pub payload: Value,
}

#[async_trait]
pub trait Source: Send + Sync {
    /// Plans the job. Called by the daemon once per attempt; must be deterministic.
    async fn plan(&self, ctx: &SourceContext) -> Result<Plan, ComponentError>;
    /// Emits the partitions of one task. Deterministic: a re-run emits the same partitions.
    async fn emit(
        &self,
        task: &FeedTask,
        ctx: &SourceContext,
    ) -> Result<Vec<Partition>, ComponentError>;
}

pub trait Transform: Send + Sync {
    /// Turns one partition's payload into the next stage's payload. It never drops the
    /// partition itself (an empty payload still has to reach the reduce to be counted).
    fn apply(&self, payload: Value) -> Result<Value, ComponentError>;

    /// True when `apply` would return its payload unchanged: the stage then forwards the
    /// message as it came (a claim-check stays where it is) without reading the payload,
    /// and the next stage is the one to judge it.
    fn passes_through(&self) -> bool {
        false
    }

    /// The output for a partition given as text (the bytes of its whole lines, from a
    /// source that emits references), when the transform can work on bytes directly; `None`
    /// to be given `{"lines": [...]}` instead. Must agree with [`Transform::apply`].
    /// `fields` are the payload's other fields (`prefix`, say).
    fn apply_text(
        &self,
        _text: &[u8],
        _fields: &serde_json::Map<String, Value>,
    ) -> Option<Result<Value, ComponentError>> {
        None
    }

    /// [`Transform::apply_text`] for a keyed flow: the partial's keyed fields as maps
    /// rather than JSON objects (a per-word count of a 16 MiB range has ~10^5 keys).
    /// Must agree with `apply` on the same lines; `None` to take the other paths.
    fn apply_text_keyed(
        &self,
        _text: &[u8],
    ) -> Option<Result<(Value, crate::keyed::KeyedFields), ComponentError>> {
        None
    }
}

pub trait Reduce: Send + Sync {
    /// The aggregate of no partitions.
    fn zero(&self) -> Value;
    /// Adds one partition's partial into the aggregate. Must be associative and commutative:
    /// partials arrive in any order and are folded into several aggregate shards.
    fn fold(&self, acc: &mut Value, partial: &Value) -> Result<(), ComponentError>;
}

/// Splits `total` partitions into feed tasks: enough tasks for the feed stage to run in
/// parallel, each large enough that one invocation does real work.
pub fn feed_tasks(total: u64) -> Vec<FeedTask> {
    const TARGET_TASKS: u64 = 256;
    const MIN_PARTITIONS_PER_TASK: u64 = 100;
    let per_task = total.div_ceil(TARGET_TASKS).max(MIN_PARTITIONS_PER_TASK);
    (0..total)
        .step_by(per_task as usize)
        .map(|first| FeedTask {
            first,
            count: per_task.min(total - first),
            spec: Value::Null,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_tasks_cover_every_partition_once() {
        for total in [1, 99, 100, 101, 25_600, 25_601, 1_000_000] {
            let tasks = feed_tasks(total);
            assert!(tasks.len() <= 256, "{total}");
            let mut next = 0;
            for t in &tasks {
                assert_eq!(t.first, next);
                assert!(t.count > 0);
                next += t.count;
            }
            assert_eq!(next, total);
        }
    }
}
