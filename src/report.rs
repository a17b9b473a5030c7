//! The result and summary of a finished job, for people or (`--json`) for programs.

use std::time::Duration;

use anyhow::{bail, Result};
use orchestration::cost::Usage;
use orchestration::job::{JobId, JobStatus};
use orchestration::local::InvocationLog;
use orchestration::ports::{JobStore, StageStats};
use orchestration::record::{self, JobRecord};
use serde_json::{json, Value};

/// Prints the job's outcome; returns the process exit code (0 only for a done job).
pub async fn finished(
    store: &dyn JobStore,
    log: &InvocationLog,
    id: &JobId,
    cached: bool,
    wall: Duration,
    usage: Option<Usage>,
    as_json: bool,
) -> Result<i32> {
    let Some(v) = record::load(store, id).await? else {
        bail!("no job {id}");
    };
    let rec = v.record;
    log.flush().await;
    let stages = job_stats(store, log, &rec).await?;
    let billed_ms: u64 = stages.iter().map(|s| s.billed_ms).sum();
    let invocations: u64 = stages.iter().map(|s| s.invocations).sum();
    let outcome = rec.outcome.clone();
    let coverage = outcome.as_ref().map(|o| o.coverage);
    let run_ms = match (rec.started_ms, rec.finished_ms) {
        (Some(s), Some(f)) => Some(f.saturating_sub(s)),
        _ => None,
    };
    let exit = if rec.status == JobStatus::Done { 0 } else { 1 };
    // What this run would have cost on AWS: its requests, plus the mappings' empty polls
    // over the job's time.
    let usage =
        usage.map(|u| u.with_job_polling(rec.stages.len(), run_ms.unwrap_or(0) as f64 / 1e3));
    let estimate = usage.as_ref().map(Usage::estimate);
    if as_json {
        let document = json!({
            "job_id": id,
            "status": rec.status,
            "cached": cached,
            "result": crate::result_value(&rec),
            "coverage": coverage,
            "dead_partitions": outcome.as_ref().map(|o| o.dead_partitions.clone()).unwrap_or_default(),
            "error": outcome.as_ref().and_then(|o| o.error.clone()),
            "stats": {
                "wall_ms": wall.as_secs_f64() * 1e3,
                "job_ms": run_ms,
                "attempt": rec.attempt,
                "policy": rec.policy,
                "total_partitions": rec.total_partitions,
                "invocations": invocations,
                "billed_ms": billed_ms,
                "stages": stages,
                "aws_cost_model": estimate.as_ref().map(|e| json!({"estimate": e, "usage": usage})),
                "parts": rec.parts.iter().zip(&rec.parts_computed).map(|(id, computed)| {
                    json!({"job_id": id, "computed": computed})
                }).collect::<Vec<_>>(),
            },
        });
        println!("{document}");
        return Ok(exit);
    }
    println!("job {id}");
    println!(
        "  type       {} {}",
        rec.request.job_type, rec.request.params
    );
    let how = if cached { " (cached)" } else { "" };
    println!("  status     {}{how}", rec.status);
    if let Some(o) = &outcome {
        println!(
            "  coverage   {:.2}% ({} of {} partitions)",
            o.coverage * 100.0,
            o.reduced_partitions,
            o.total_partitions
        );
        if !o.dead_partitions.is_empty() {
            println!("  dead       partitions {:?}", o.dead_partitions);
        }
        if let Some(e) = &o.error {
            println!("  error      {e}");
        }
    }
    if let Some(Value::Object(result)) = outcome.as_ref().and_then(|o| o.result.as_ref()) {
        println!("result");
        for (k, v) in result {
            match orchestration::keyed::Summary::from_result(v) {
                Some(summary) => print_keyed(k, &summary),
                None => println!("  {k:<12} {v}"),
            }
        }
    }
    println!("summary");
    if !cached {
        println!("  wall time  {:.3} s", wall.as_secs_f64());
    }
    if let Some(ms) = run_ms {
        println!(
            "  job time   {:.3} s (first tick to result)",
            ms as f64 / 1e3
        );
    }
    println!("  policy     {}", rec.policy);
    println!(
        "  {:<8} {:>11} {:>10} {:>8} {:>9} {:>10}",
        "stage", "invocations", "messages", "failed", "throttled", "billed ms"
    );
    for s in &stages {
        println!(
            "  {:<8} {:>11} {:>10} {:>8} {:>9} {:>10}",
            s.stage, s.invocations, s.messages, s.failed_messages, s.throttles, s.billed_ms
        );
    }
    println!(
        "  {:<8} {:>11} {:>10} {:>8} {:>9} {:>10}",
        "total", invocations, "", "", "", billed_ms
    );
    if let (Some(u), Some(e)) = (&usage, &estimate) {
        println!("aws cost model (this run's requests at list prices; AWS-FACTS.md)");
        let line = |service: &str, what: String, usd: f64| {
            println!("  {service:<10} {what:<44} ${usd:.6}");
        };
        line(
            "lambda",
            format!(
                "{} requests, {:.2} billed s, {:.3} GB-s",
                e.lambda_requests, e.lambda_billed_s, e.lambda_gb_s
            ),
            e.lambda_usd,
        );
        line(
            "sqs",
            format!(
                "{} requests + {} empty polls",
                u.sqs_requests, u.sqs_empty_receives
            ),
            e.sqs_usd,
        );
        line(
            "dynamodb",
            format!(
                "{} write units, {} read units",
                u.dynamodb_write_units, u.dynamodb_read_units
            ),
            e.dynamodb_usd,
        );
        line(
            "s3",
            format!(
                "{} put/list, {} get",
                u.s3_write_requests, u.s3_read_requests
            ),
            e.s3_usd,
        );
        println!("  {:<10} {:<44} ${:.6}", "total", "", e.total_usd);
    }
    Ok(exit)
}

/// Per-stage statistics in flow order. A composite job runs no stages itself: its figures
/// are those of the parts it computed (parts served from the cache cost nothing now).
async fn job_stats(
    store: &dyn JobStore,
    log: &InvocationLog,
    rec: &JobRecord,
) -> Result<Vec<StageStats>> {
    let mut own = log.stats(rec.id.as_str(), rec.attempt)?;
    own.sort_by_key(|s| rec.stages.iter().position(|r| r.name == s.stage));
    if rec.parts.is_empty() {
        return Ok(own);
    }
    let mut merged: Vec<StageStats> = Vec::new();
    for (part, computed) in rec.parts.iter().zip(&rec.parts_computed) {
        let Some(v) = record::load(store, part).await? else {
            continue;
        };
        if !computed {
            continue;
        }
        let mut stats = log.stats(part.as_str(), v.record.attempt)?;
        stats.sort_by_key(|s| v.record.stages.iter().position(|r| r.name == s.stage));
        for s in stats {
            match merged.iter_mut().find(|m| m.stage == s.stage) {
                Some(m) => {
                    m.invocations += s.invocations;
                    m.messages += s.messages;
                    m.failed_messages += s.failed_messages;
                    m.failed_invocations += s.failed_invocations;
                    m.throttles += s.throttles;
                    m.billed_ms += s.billed_ms;
                }
                None => merged.push(s),
            }
        }
    }
    Ok(merged)
}

/// A keyed result: its size, total and top entries; the whole is in the blob store.
fn print_keyed(name: &str, summary: &orchestration::keyed::Summary) {
    let total = summary
        .total
        .as_ref()
        .map(|t| format!(", total {t}"))
        .unwrap_or_default();
    println!("  {name:<12} {} keys{total}", summary.keys);
    for (i, (key, value)) in summary.top.iter().enumerate() {
        println!("    {:>2}. {key:<30} {value}", i + 1);
    }
    println!(
        "    (all of it: `sluice result ID --out FILE`; sorted by key in {}, by value in {})",
        summary.by_key, summary.by_value
    );
}
