//! `sluice bench`: measurements, run on the embedded engine in a scratch state directory.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use orchestration::local::{Engine, EngineOptions};
use serde_json::{json, Value};

use crate::client::ApiClient;

/// Latency of a cached result over local HTTP: one job is run, then the same request is
/// sent `requests` times, one after another, to a `sluice serve` in this process.
pub async fn cached_api(requests: usize, as_json: bool) -> Result<i32> {
    let scratch = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let engine = Engine::open(&scratch, EngineOptions::default()).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (addr, serving) = crate::serve::bind(&engine, 0, stop_rx).await?;
    let measure = async {
        let api = ApiClient::new(&format!("http://{addr}"))?;
        let body = json!({"type": "wordcount", "params": {"messages": 2000}});
        let (status, first) = api.submit(&body).await?;
        if status != 202 {
            bail!("unexpected first answer {status}: {first}");
        }
        let id = first["job_id"].as_str().context("no job id")?.to_owned();
        api.wait(&id).await?;
        let mut latencies = Vec::with_capacity(requests);
        for _ in 0..requests {
            let started = Instant::now();
            let (status, answer) = api.submit(&body).await?;
            latencies.push(started.elapsed());
            if status != 200 || answer["cached"] != true {
                bail!("expected a cached 200, got {status}: {answer}");
            }
        }
        Ok(latencies)
    };
    let (latencies, _) = tokio::join!(
        async {
            let r = measure.await;
            let _ = stop_tx.send(true);
            r
        },
        serving
    );
    drop(engine);
    let _ = std::fs::remove_dir_all(&scratch);
    let mut latencies = latencies?;
    latencies.sort();
    let pct = |p: f64| -> f64 {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    let summary = json!({
        "experiment": "cached-api",
        "requests": latencies.len(),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": latencies.last().copied().unwrap_or(Duration::ZERO).as_secs_f64() * 1e3,
    });
    print_summary(&summary, as_json);
    Ok(0)
}

fn print_summary(summary: &Value, as_json: bool) {
    if as_json {
        println!("{summary}");
        return;
    }
    if let Some(map) = summary.as_object() {
        for (k, v) in map {
            match v.as_f64() {
                Some(f) if !v.is_u64() => println!("{k:<12} {f:.3}"),
                _ => println!("{k:<12} {v}"),
            }
        }
    }
}
