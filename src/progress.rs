//! Waiting for a job, with live progress per stage (hidden when stdout is not a terminal).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use orchestration::job::JobId;
use orchestration::ledger::Ledger;
use orchestration::local::Engine;
use orchestration::record::{self, JobRecord};
use serde_json::{json, Value};

/// Per stage: partitions done (messages handled, or reduced for the last stage), the total
/// when known, and the queue's approximate depth.
pub async fn snapshot(engine: &Engine, rec: &JobRecord) -> Result<Value> {
    let stats: HashMap<String, u64> = engine
        .log
        .stats(rec.id.as_str(), rec.attempt)?
        .into_iter()
        .map(|s| (s.stage, s.messages))
        .collect();
    let svc = &engine.services;
    let reduced = Ledger {
        store: svc.store.as_ref(),
        job: rec.id.as_str(),
        attempt: rec.attempt,
        shards: svc.settings.aggregate_shards,
    }
    .reduced_count()
    .await?;
    let mut stages = Vec::new();
    let last = rec.stages.len().saturating_sub(1);
    for (i, stage) in rec.stages.iter().enumerate() {
        let counts = if rec.torn_down {
            Default::default()
        } else {
            svc.queues
                .counts(&stage.queue_url)
                .await
                .unwrap_or_default()
        };
        let done = if i == last {
            reduced
        } else {
            stats.get(&stage.name).copied().unwrap_or(0)
        };
        stages.push(json!({
            "stage": stage.name,
            "function": stage.function,
            "done": done,
            "total": if i == 0 { None } else { rec.total_partitions },
            "visible": counts.visible,
            "in_flight": counts.in_flight,
        }));
    }
    Ok(Value::Array(stages))
}

/// Polls the job record until the job has ended and its resources are gone.
pub async fn wait_for(engine: &Engine, id: &JobId, show: bool) -> Result<()> {
    let bars = MultiProgress::with_draw_target(if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("{prefix:>8} {bar:30} {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut shown: Vec<ProgressBar> = Vec::new();
    let mut tick = 0u64;
    loop {
        let Some(v) = record::load(engine.services.store.as_ref(), id).await? else {
            anyhow::bail!("job {id} disappeared from the store");
        };
        if v.record.status.is_terminal() && v.record.torn_down {
            for bar in &shown {
                bar.finish();
            }
            return Ok(());
        }
        if show && tick % 4 == 0 && !v.record.stages.is_empty() {
            let snap = snapshot(engine, &v.record).await?;
            for (i, stage) in snap.as_array().into_iter().flatten().enumerate() {
                if shown.len() <= i {
                    let bar = bars.add(ProgressBar::new(0).with_style(style.clone()));
                    bar.set_prefix(stage["stage"].as_str().unwrap_or("?").to_owned());
                    shown.push(bar);
                }
                let bar = &shown[i];
                bar.set_length(
                    stage["total"]
                        .as_u64()
                        .unwrap_or(stage["done"].as_u64().unwrap_or(0)),
                );
                bar.set_position(stage["done"].as_u64().unwrap_or(0));
                bar.set_message(format!(
                    "queued {} in flight {}",
                    stage["visible"], stage["in_flight"]
                ));
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
