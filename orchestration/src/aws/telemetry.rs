//! [`Telemetry`] on AWS: counters the stage functions keep themselves, in the job table.
//!
//! CloudWatch's Lambda metrics are per function, not per job, and the current CloudWatch
//! SDK speaks a protocol (CBOR) that the emulator the tests run against does not route. So
//! every stage invocation adds its outcome to a counter item with one `UpdateItem ... ADD`
//! (one write unit; no read, and retried writes only over-count an invocation that was
//! itself retried), and `backlog` reads them back as it reads the local runtime's log.
//!
//! Layout: `pk = tel#{job}#{attempt}#{shard}`, `sk = {stage}`, top-level numbers
//! `invocations`, `messages`, `failed_messages`, `failed_invocations`, `throttles`,
//! `billed_ms`, the `function`, and `expires_at` (the table's TTL, 30 days on). An
//! invocation picks one of [`SHARDS`] partition keys, so one job's invocations can add
//! `SHARDS` × 1,000 a second before a partition key throttles; reading is one query per
//! shard (a few items each: one per stage).
//!
//! What a function cannot count about itself stays zero: throttles (the mapping never
//! invoked it) and invocations that died (timeout, crash) before they could write.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::provision::TTL_ATTRIBUTE;
use crate::ports::{StageStats, Telemetry, TelemetryError};

/// Partition keys per job attempt that invocations spread their counts over.
pub const SHARDS: u64 = 8;
/// How long counters are kept after their last write.
const KEEP_SECS: u64 = 30 * 24 * 3600;

const COUNTERS: [&str; 6] = [
    "invocations",
    "messages",
    "failed_messages",
    "failed_invocations",
    "throttles",
    "billed_ms",
];

pub struct StageCounters {
    client: Client,
    table: String,
}

fn partition_key(job: &str, attempt: u32, shard: u64) -> String {
    format!("tel#{job}#{attempt}#{shard}")
}

fn counts(s: &StageStats) -> [u64; 6] {
    [
        s.invocations,
        s.messages,
        s.failed_messages,
        s.failed_invocations,
        s.throttles,
        s.billed_ms,
    ]
}

fn counts_mut(s: &mut StageStats) -> [&mut u64; 6] {
    [
        &mut s.invocations,
        &mut s.messages,
        &mut s.failed_messages,
        &mut s.failed_invocations,
        &mut s.throttles,
        &mut s.billed_ms,
    ]
}

fn failed(op: &str, e: impl std::error::Error) -> TelemetryError {
    TelemetryError(format!("{op}: {}", DisplayErrorContext(e)))
}

impl StageCounters {
    pub fn new(client: Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }

    /// The counter items under one shard's partition key.
    async fn shard(
        &self,
        job: &str,
        attempt: u32,
        shard: u64,
    ) -> Result<Vec<StageStats>, TelemetryError> {
        let pk = partition_key(job, attempt, shard);
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| failed("Query", e))?;
            for item in page.items() {
                let text = |name: &str| {
                    item.get(name)
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .unwrap_or_default()
                };
                let mut stats = StageStats {
                    stage: text("sk"),
                    function: text("function"),
                    ..StageStats::default()
                };
                for (name, slot) in COUNTERS.iter().zip(counts_mut(&mut stats)) {
                    *slot = match item.get(*name).map(|v| v.as_n()) {
                        None => 0,
                        Some(Ok(n)) => n.parse().map_err(|_| {
                            TelemetryError(format!("{pk}: counter {name} is not a count: {n}"))
                        })?,
                        Some(Err(_)) => {
                            return Err(TelemetryError(format!("{pk}: {name} is not a number")))
                        }
                    };
                }
                out.push(stats);
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(out),
            }
        }
    }
}

#[async_trait]
impl Telemetry for StageCounters {
    async fn stage_stats(
        &self,
        job: &str,
        attempt: u32,
    ) -> Result<Vec<StageStats>, TelemetryError> {
        let shards =
            futures::future::try_join_all((0..SHARDS).map(|shard| self.shard(job, attempt, shard)))
                .await?;
        let mut by_stage: BTreeMap<String, StageStats> = BTreeMap::new();
        for stats in shards.into_iter().flatten() {
            let sum = by_stage
                .entry(stats.stage.clone())
                .or_insert_with(|| StageStats {
                    stage: stats.stage.clone(),
                    function: stats.function.clone(),
                    ..StageStats::default()
                });
            for (total, n) in counts_mut(sum).into_iter().zip(counts(&stats)) {
                *total += n;
            }
        }
        Ok(by_stage.into_values().collect())
    }

    async fn record(
        &self,
        job: &str,
        attempt: u32,
        invocation: &StageStats,
    ) -> Result<(), TelemetryError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Which shard: any spread will do; the clock's nanoseconds are one.
        let shard = u64::from(now.subsec_nanos()) % SHARDS;
        let now = now.as_secs();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(partition_key(job, attempt, shard)))
            .key("sk", AttributeValue::S(invocation.stage.clone()))
            // Every name through a placeholder: some are DynamoDB reserved words.
            .update_expression(format!(
                "ADD {} SET #function = :function, #expires = :expires",
                (0..COUNTERS.len())
                    .map(|i| format!("#c{i} :c{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .expression_attribute_names("#function", "function")
            .expression_attribute_names("#expires", TTL_ATTRIBUTE)
            .expression_attribute_values(
                ":function",
                AttributeValue::S(invocation.function.clone()),
            )
            .expression_attribute_values(
                ":expires",
                AttributeValue::N((now + KEEP_SECS).to_string()),
            );
        for (i, (name, n)) in COUNTERS.iter().zip(counts(invocation)).enumerate() {
            request = request
                .expression_attribute_names(format!("#c{i}"), *name)
                .expression_attribute_values(format!(":c{i}"), AttributeValue::N(n.to_string()));
        }
        request.send().await.map_err(|e| failed("UpdateItem", e))?;
        Ok(())
    }
}
