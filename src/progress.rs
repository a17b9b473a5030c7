//! Waiting for a job, with live progress per stage (hidden when stdout is not a terminal).

use std::time::Duration;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use orchestration::job::JobId;
use orchestration::local::Engine;
use orchestration::{record, status};

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
        if show && tick.is_multiple_of(4) && !v.record.stages.is_empty() {
            let view = status::view(&engine.services, &engine.log, &v.record).await?;
            for (i, stage) in view.stages.iter().enumerate() {
                if shown.len() <= i {
                    let bar = bars.add(ProgressBar::new(0).with_style(style.clone()));
                    bar.set_prefix(stage.stage.clone());
                    shown.push(bar);
                }
                let bar = &shown[i];
                bar.set_length(stage.total.unwrap_or(stage.done));
                bar.set_position(stage.done);
                bar.set_message(format!(
                    "queued {} in flight {}",
                    stage.visible, stage.in_flight
                ));
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
