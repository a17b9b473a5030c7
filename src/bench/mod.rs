//! `sluice bench <experiment>`: the paper's experiments (figures 2–6) and throughput runs on
//! the embedded engine. Each writes a CSV and plots (SVG and PNG) into the results
//! directory and prints a summary table (or, with `--json`, one JSON object).

mod experiments;
pub mod simulate;
mod text;
pub mod tweets;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use orchestration::cost::{Estimate, Usage};
use orchestration::faults::Faults;
use orchestration::job::{JobId, JobRequest};
use orchestration::local::{Engine, EngineOptions, InvocationRecord};
use orchestration::policy::Policy;
use orchestration::record;
use orchestration::submit::{submit, SubmitOptions};
use serde_json::{json, Value};

pub use experiments::Experiment;

/// The paper's measurements on AWS (its section 4), for the plots and tables.
pub mod paper {
    /// Job time of the 2,000-message job with StaticProportional(150), seconds.
    pub const STATIC_150_JOB_S: f64 = 61.0;
    /// Job time of the 2,000-message job with AlwaysOne, seconds.
    pub const ALWAYS_ONE_JOB_S: f64 = 338.0;
    /// Billed Lambda time of the 2,000-message job. The paper says StaticProportional
    /// bills more per message than AlwaysOne, so the larger figure is its.
    pub const STATIC_150_BILLED_S: f64 = 2_570.0;
    pub const ALWAYS_ONE_BILLED_S: f64 = 1_380.0;
    /// Response time of a cached answer.
    pub const CACHED_RESPONSE_S: f64 = 0.6;
}

/// Where an experiment writes, and how it reports.
pub struct Output {
    pub dir: PathBuf,
    pub json: bool,
}

impl Output {
    fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))
    }

    /// Writes `{stem}.csv` with `header` and `rows`.
    fn csv(&self, stem: &str, header: &[&str], rows: &[Vec<String>]) -> Result<PathBuf> {
        let path = self.dir.join(format!("{stem}.csv"));
        let mut text = header.join(",");
        text.push('\n');
        for row in rows {
            text.push_str(&row.join(","));
            text.push('\n');
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    fn plot(&self, chart: &crate::plot::Chart, stem: &str) -> Result<Vec<PathBuf>> {
        crate::plot::write(chart, &self.dir, stem)
    }

    /// Prints the summary: a table of `rows` for people, or `summary` as JSON.
    fn report(&self, title: &str, header: &[&str], rows: &[Vec<String>], summary: Value) {
        if self.json {
            println!("{summary}");
            return;
        }
        println!("{title}");
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .filter_map(|r| r.get(i))
                    .map(String::len)
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect();
            println!("  {}", padded.join("  "));
        };
        line(header.to_vec());
        for row in rows {
            line(row.iter().map(String::as_str).collect());
        }
        println!("written to {}", self.dir.display());
    }
}

/// A scratch state directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sluice-bench-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How often the benchmarks look at job records (an outside observer's resolution).
const POLL: Duration = Duration::from_millis(2);

/// One finished job as the benchmarks see it.
#[derive(Clone, Debug)]
pub struct JobRun {
    pub id: JobId,
    /// First tick to result, from the job record.
    pub job_s: f64,
    /// Submit to torn down, seen from outside.
    pub wall_s: f64,
    /// Lambda time measured here (rounded up per invocation to 1 ms).
    pub billed_s: f64,
    pub invocations: u64,
    pub result: Value,
    pub records: Vec<InvocationRecord>,
    pub started_ms: u64,
    /// The job's stages (each one a mapping).
    pub stages: usize,
}

/// Submits `requests` to `engine` at once, runs the engine until every one has finished
/// and been torn down, and reports each.
async fn run_jobs(engine: &Engine, requests: &[(JobRequest, Policy)]) -> Result<Vec<JobRun>> {
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(requests.len());
    for (request, policy) in requests {
        let options = SubmitOptions {
            policy: *policy,
            min_coverage: 1.0,
        };
        let submission = submit(&engine.services, request, &options)
            .await
            .map_err(|e| anyhow::anyhow!("submitting {}: {e}", request.params))?;
        ids.push(submission.id);
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = async {
        let mut done_at: Vec<Option<f64>> = vec![None; ids.len()];
        loop {
            for (i, id) in ids.iter().enumerate() {
                if done_at[i].is_some() {
                    continue;
                }
                let v = record::load(engine.services.store.as_ref(), id)
                    .await?
                    .with_context(|| format!("job {id} disappeared"))?;
                if v.record.status.is_terminal() && v.record.torn_down {
                    done_at[i] = Some(t0.elapsed().as_secs_f64());
                }
            }
            if done_at.iter().all(Option::is_some) {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        Ok::<_, anyhow::Error>(done_at)
    };
    let (_, done_at) = tokio::join!(
        engine.run(async {
            let _ = stop_rx.await;
        }),
        async {
            let r = watcher.await;
            let _ = stop_tx.send(());
            r
        }
    );
    let done_at = done_at?;
    engine.log.flush().await;
    let mut runs = Vec::with_capacity(ids.len());
    for (id, wall) in ids.into_iter().zip(done_at) {
        let v = record::load(engine.services.store.as_ref(), &id)
            .await?
            .with_context(|| format!("job {id} disappeared"))?;
        let rec = v.record;
        if rec.status != orchestration::job::JobStatus::Done {
            bail!("job {id} ended {}: {:?}", rec.status, rec.outcome);
        }
        let records = engine.log.records(id.as_str(), rec.attempt)?;
        let billed_ms: u64 = records.iter().map(InvocationRecord::billed_ms).sum();
        let (started, finished) = (rec.started_ms.unwrap_or(0), rec.finished_ms.unwrap_or(0));
        runs.push(JobRun {
            job_s: finished.saturating_sub(started) as f64 / 1e3,
            wall_s: wall.unwrap_or_default(),
            billed_s: billed_ms as f64 / 1e3,
            invocations: records.len() as u64,
            result: crate::result_value(&rec),
            records,
            started_ms: started,
            stages: rec.stages.len(),
            id,
        });
    }
    Ok(runs)
}

/// One job on a fresh engine: its run, and what it would cost on AWS.
async fn one_job(request: JobRequest, policy: Policy, tag: &str) -> Result<(JobRun, Usage)> {
    let scratch = Scratch::new(tag)?;
    job_in(scratch.path(), request, policy).await
}

/// One job on an engine in `state_dir` (which may hold input data).
async fn job_in(state_dir: &Path, request: JobRequest, policy: Policy) -> Result<(JobRun, Usage)> {
    job_with_faults(state_dir, request, policy, Faults::default()).await
}

async fn job_with_faults(
    state_dir: &Path,
    request: JobRequest,
    policy: Policy,
    faults: Faults,
) -> Result<(JobRun, Usage)> {
    let options = EngineOptions {
        faults,
        ..EngineOptions::default()
    };
    let engine = Engine::open(state_dir, options).await?;
    let mut runs = run_jobs(&engine, &[(request, policy)]).await?;
    let run = runs.pop().context("no run")?;
    let usage = engine
        .usage()
        .await?
        .with_job_polling(run.stages, run.job_s);
    Ok((run, usage))
}

fn wordcount(messages: u64, extra: Value) -> JobRequest {
    let mut params = json!({ "messages": messages });
    if let (Some(p), Some(extra)) = (params.as_object_mut(), extra.as_object()) {
        p.extend(extra.clone());
    }
    JobRequest {
        job_type: "wordcount".into(),
        params,
    }
}

fn fmt_s(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.3}")
    } else {
        format!("{s:.1}")
    }
}

fn fmt_usd(e: &Estimate) -> String {
    format!("{:.6}", e.total_usd)
}

/// Runs `experiment`.
pub async fn run(experiment: Experiment, out: Output) -> Result<i32> {
    out.prepare()?;
    experiments::run(experiment, &out).await
}
