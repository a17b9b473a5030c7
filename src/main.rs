//! `sluice`: run batch jobs on the embedded engine (or, later, on AWS) from the command line.

mod progress;
mod report;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use orchestration::faults::Faults;
use orchestration::job::{JobId, JobRequest};
use orchestration::local::{Engine, EngineOptions};
use orchestration::policy::Policy;
use orchestration::record;
use orchestration::submit::{submit, Disposition, SubmitOptions};
use serde_json::{json, Value};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Latency-insensitive batch jobs, exact under faults"
)]
struct Cli {
    /// Where the embedded engine keeps its state (jobs, queues, blobs).
    #[arg(long, env = "SLUICE_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job to completion on the embedded engine and print its result.
    Run {
        #[command(subcommand)]
        job: JobCommand,
    },
    /// Show a stored job's status and progress.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a finished job's result.
    Result {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// The paper's experiment: count the words of N synthetic messages "{text} {i}".
    Wordcount {
        /// Number of messages (1 to 100,000,000).
        #[arg(long)]
        messages: u64,
        /// Message text; message i is "{text} {i}".
        #[arg(long)]
        text: Option<String>,
        /// Messages per queue message.
        #[arg(long)]
        partition_size: Option<u64>,
        /// Also count each word.
        #[arg(long)]
        per_word: bool,
        /// Keep only messages containing this text.
        #[arg(long)]
        contains: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Scaling policy: always-one | static-proportional:M.
    #[arg(long, default_value_t = Policy::default())]
    policy: Policy,
    /// Fault injection: duplicate=P,crash=P,daemon-crash=P,poison=ID;ID.
    #[arg(long)]
    inject_faults: Option<Faults>,
    /// Least fraction of partitions that must be reduced for the job to succeed.
    #[arg(long, default_value_t = 1.0)]
    min_coverage: f64,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sluice");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/share/sluice");
    }
    PathBuf::from(".sluice")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let state_dir = cli.state_dir.unwrap_or_else(default_state_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run { job } => run(&state_dir, job).await,
            Command::Status { id, json } => status(&state_dir, &id, json).await,
            Command::Result { id, json } => result(&state_dir, &id, json).await,
        }
    })?;
    std::process::exit(code)
}

async fn run(state_dir: &std::path::Path, job: JobCommand) -> Result<i32> {
    let JobCommand::Wordcount {
        messages,
        text,
        partition_size,
        per_word,
        contains,
        run,
    } = job;
    let mut params = json!({ "messages": messages, "per_word": per_word });
    if let Some(text) = text {
        params["text"] = json!(text);
    }
    if let Some(size) = partition_size {
        params["partition_size"] = json!(size);
    }
    if let Some(contains) = contains {
        params["contains"] = json!(contains);
    }
    let request = JobRequest {
        job_type: "wordcount".into(),
        params,
    };
    let started = Instant::now();
    let engine = Engine::open(
        state_dir,
        EngineOptions {
            faults: run.inject_faults.clone().unwrap_or_default(),
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("opening the engine in {}", state_dir.display()))?;
    let options = SubmitOptions {
        policy: run.policy,
        min_coverage: run.min_coverage,
    };
    let submission = match submit(&engine.services, &request, &options).await {
        Ok(s) => s,
        Err(orchestration::submit::SubmitError::Invalid(e)) => bail!("invalid request: {e}"),
        Err(e) => return Err(e).context("submitting the job"),
    };
    let id = submission.id.clone();
    let cached = submission.disposition == Disposition::Cached;
    if !cached {
        if submission.disposition == Disposition::Joined && !run.json {
            eprintln!("job {id} is already under way; continuing it");
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runner = engine.run(async {
            let _ = stop_rx.await;
        });
        let show = std::io::stdout().is_terminal() && !run.json;
        let waiter = async {
            let waited = progress::wait_for(&engine, &id, show).await;
            let _ = stop_tx.send(());
            waited
        };
        let interrupted = tokio::select! {
            (_, waited) = async { tokio::join!(runner, waiter) } => {
                waited?;
                false
            }
            _ = tokio::signal::ctrl_c() => true,
        };
        if interrupted {
            eprintln!(
                "\ninterrupted: job {id} is saved in {}; run the same command again to continue it",
                state_dir.display()
            );
            return Ok(130);
        }
    }
    let wall = started.elapsed();
    report::finished(&engine, &id, cached, wall, run.json).await
}

async fn load(state_dir: &std::path::Path, id: &str) -> Result<(Engine, JobId)> {
    let id = JobId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = Engine::open(state_dir, EngineOptions::default()).await?;
    Ok((engine, id))
}

async fn status(state_dir: &std::path::Path, id: &str, json: bool) -> Result<i32> {
    let (engine, id) = load(state_dir, id).await?;
    let Some(v) = record::load(engine.services.store.as_ref(), &id).await? else {
        bail!("no job {id} in {}", state_dir.display());
    };
    let progress = progress::snapshot(&engine, &v.record).await?;
    if json {
        println!(
            "{}",
            json!({
                "job_id": id,
                "status": v.record.status,
                "attempt": v.record.attempt,
                "request": v.record.request,
                "policy": v.record.policy,
                "total_partitions": v.record.total_partitions,
                "progress": progress,
                "outcome": v.record.outcome,
            })
        );
    } else {
        println!("job {id}");
        println!("  type      {}", v.record.request.job_type);
        println!(
            "  status    {} (attempt {})",
            v.record.status, v.record.attempt
        );
        println!("  policy    {}", v.record.policy);
        for stage in progress.as_array().into_iter().flatten() {
            println!(
                "  {:<8}  {} done{}",
                stage["stage"].as_str().unwrap_or("?"),
                stage["done"],
                stage["total"]
                    .as_u64()
                    .map(|t| format!(" of {t}"))
                    .unwrap_or_default()
            );
        }
        if let Some(err) = v.record.outcome.as_ref().and_then(|o| o.error.as_ref()) {
            println!("  error     {err}");
        }
    }
    Ok(0)
}

async fn result(state_dir: &std::path::Path, id: &str, json: bool) -> Result<i32> {
    let (engine, id) = load(state_dir, id).await?;
    let Some(v) = record::load(engine.services.store.as_ref(), &id).await? else {
        bail!("no job {id} in {}", state_dir.display());
    };
    if !v.record.status.is_terminal() {
        bail!("job {id} is {}; no result yet", v.record.status);
    }
    report::finished(&engine, &id, true, Duration::ZERO, json).await
}

/// The result as the user sees it: the reduce's aggregate.
pub(crate) fn result_value(rec: &record::JobRecord) -> Value {
    rec.outcome
        .as_ref()
        .and_then(|o| o.result.clone())
        .unwrap_or(Value::Null)
}
