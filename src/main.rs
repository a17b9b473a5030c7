//! `sluice`: run batch jobs on the embedded engine (or, later, on AWS) from the command line.

mod bench;
mod client;
mod dashboard;
mod gen;
mod pipeline_cmd;
mod plot;
mod progress;
mod report;
mod serve;
mod stack;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use orchestration::faults::Faults;
use orchestration::job::{JobId, JobRequest};
use orchestration::keyed;
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
    /// Where jobs live and queues are: `embedded` (SQLite and files in the state directory)
    /// or `aws` (DynamoDB, SQS, S3 and Lambda through the AWS SDK's configuration, e.g.
    /// moto server with AWS_ENDPOINT_URL); either way the functions run here.
    #[arg(long, env = "SLUICE_BACKEND", global = true, value_enum, default_value_t = Backend::Embedded)]
    backend: Backend,
    /// With `--backend aws`: the deployment's name, the prefix of its resources. Its table,
    /// bucket, control queue and function records are created if missing, unless the
    /// SLUICE_TABLE/SLUICE_BUCKET/SLUICE_CONTROL_QUEUE_URL environment of a deployed stack
    /// is set.
    #[arg(
        long,
        env = "SLUICE_AWS_PREFIX",
        global = true,
        default_value = "sluice"
    )]
    aws_prefix: String,
    #[command(flatten)]
    remote: client::Remote,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Embedded,
    Aws,
}

/// Where the CLI's jobs live: the backend and its place.
struct Target {
    state_dir: PathBuf,
    backend: Backend,
    aws_prefix: String,
    stack: Option<String>,
}

impl Target {
    async fn open(&self, faults: Faults) -> Result<Engine> {
        match self.backend {
            Backend::Embedded => Engine::open(
                &self.state_dir,
                EngineOptions {
                    faults,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("opening the engine in {}", self.state_dir.display())),
            Backend::Aws => {
                use orchestration::aws::{local_engine, sdk_config, AwsSettings};
                let sdk = sdk_config().await;
                let (settings, provision) = match (&self.stack, AwsSettings::from_env()) {
                    (Some(name), _) => {
                        (stack::Stack::describe(&sdk, name).await?.settings(), false)
                    }
                    (None, Ok(deployed)) => (deployed, false),
                    (None, Err(_)) => (AwsSettings::local(&self.aws_prefix), true),
                };
                let log_dir = self.state_dir.join(format!("aws-{}", settings.prefix));
                let (engine, _) = local_engine(
                    &log_dir,
                    &sdk,
                    settings,
                    provision,
                    orchestration::flow::Registry::default(),
                    faults,
                )
                .await
                .context(
                    "connecting to AWS (check AWS_ENDPOINT_URL, AWS_REGION and credentials)",
                )?;
                Ok(engine)
            }
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a job to completion on the embedded engine and print its result.
    Run {
        #[command(subcommand)]
        job: JobCommand,
    },
    /// Serve the job API and the dashboard (http://127.0.0.1:PORT/) and run the jobs.
    Serve {
        /// Port to listen on (0: any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Fault injection for the jobs this server runs (see `run --help`).
        #[arg(long)]
        inject_faults: Option<Faults>,
    },
    /// Submit a job to a job API (`sluice serve`, or a deployed API).
    Submit {
        #[command(subcommand)]
        job: JobCommand,
    },
    /// Show a job's status and progress (from the state directory, or `--api`).
    Status {
        id: String,
        #[arg(long, env = "SLUICE_API")]
        api: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print a finished job's result (from the state directory, or `--api`); with `--out`,
    /// write a keyed result's whole object (JSON lines, sorted) to a file.
    Result {
        id: String,
        #[arg(long, env = "SLUICE_API")]
        api: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keyed: KeyedOut,
    },
    /// Reproduce the paper's experiments and measure throughput on the embedded engine:
    /// CSV and plots (SVG, PNG) in the results directory, a summary on stdout.
    Bench {
        #[command(subcommand)]
        experiment: bench::Experiment,
        /// Where to write CSV files and plots.
        #[arg(long, global = true, default_value = "bench-results")]
        out: PathBuf,
        /// Print exactly one JSON object on stdout.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Model a job (or many) on AWS at any size: the real policy and reservation code on
    /// simulated time, the stages' costs calibrated on the embedded engine. Prints job
    /// time, billed GB-s, requests and cost per policy; CSV and plots of concurrency and
    /// backlog per stage in --out.
    Simulate(bench::simulate::SimulateArgs),
    /// Pipelines as data: check a definition, run its declared tests, explain its stages.
    Pipeline {
        #[command(subcommand)]
        command: pipeline_cmd::PipelineCommand,
    },
    /// Generate input data in the state directory's blob store (`gen tweets`).
    Gen {
        #[command(subcommand)]
        data: gen::GenCommand,
    },
    /// Cancel a job through a job API: it stops and its resources are torn down.
    Cancel {
        id: String,
        #[arg(long, env = "SLUICE_API", default_value = DEFAULT_API)]
        api: String,
    },
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_API: &str = "http://127.0.0.1:8080";

#[derive(Subcommand)]
enum JobCommand {
    /// The paper's experiment: count the words of N synthetic messages "{text} {i}".
    Wordcount {
        /// Number of messages (1 to 100,000,000).
        #[arg(long, required_unless_present = "input", conflicts_with = "input")]
        messages: Option<u64>,
        /// Count the lines of the objects under this blob-store prefix instead of synthetic
        /// messages (`sluice gen text` writes text/).
        #[arg(long)]
        input: Option<String>,
        /// With --input: bytes per partition (1 KiB to 16 MiB; default 4 MiB).
        #[arg(long, requires = "input")]
        range_bytes: Option<u64>,
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
        /// Reduce partitions of the per-word shuffle (default: sized from the input).
        #[arg(long, requires = "per_word")]
        reduce_partitions: Option<u32>,
        #[command(flatten)]
        options: JobOptions,
    },
    /// Count, per city, the tweets from a country in a range of days that mention a fire
    /// (reads tweets/YYYY-MM-DD/ for each day; `sluice gen tweets` writes them).
    FireTweets {
        /// ISO 3166-1 alpha-2 country code: GB, IE, US...
        #[arg(long)]
        country: String,
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD (inclusive; at most 366 days in all).
        #[arg(long)]
        to: String,
        /// A keyword or phrase, `#tag` for a hashtag; repeat for several (default: fire,
        /// "fire truck", "fire engine", #fire).
        #[arg(long = "keyword")]
        keywords: Vec<String>,
        /// Input bytes per partition (1 KiB to 16 MiB; default 4 MiB).
        #[arg(long)]
        partition_bytes: Option<u64>,
        /// Leave matching retweets out of the counts (they are still reported apart).
        #[arg(long)]
        no_retweets: bool,
        /// Count a day without data as empty (named in `missing_days`) instead of failing.
        #[arg(long)]
        allow_missing_days: bool,
        #[command(flatten)]
        options: JobOptions,
    },
    /// A pipeline: one of `pipelines/` by name (top-hashtags, fire-tweets-pipeline, ...), or
    /// a definition file (`./mine.toml`), run as it is with no rebuild.
    Pipeline {
        /// The pipeline's name, or the path of a `.toml` definition.
        name: String,
        /// A parameter, NAME=VALUE (VALUE as JSON, else as a string); repeatable.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[command(flatten)]
        options: JobOptions,
    },
}

#[derive(Args)]
struct JobOptions {
    /// Scaling policy: always-one | static-proportional:M | backlog[:target=S,max-cost=USD].
    #[arg(long, default_value_t = Policy::default())]
    policy: Policy,
    /// Least fraction of partitions that must be reduced for the job to succeed.
    #[arg(long, default_value_t = 1.0)]
    min_coverage: f64,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Fault injection (run only): duplicate=P,crash=P,daemon-crash=P,poison=ID;ID.
    #[arg(long)]
    inject_faults: Option<Faults>,
    /// The job API to submit to (submit only).
    #[arg(long, env = "SLUICE_API", default_value = DEFAULT_API)]
    api: String,
    /// Wait for the result (submit only).
    #[arg(long)]
    wait: bool,
}

impl JobCommand {
    fn request(&self) -> (JobRequest, &JobOptions) {
        match self {
            JobCommand::Pipeline {
                name,
                params,
                options,
            } => {
                let mut given = pipeline_cmd::params(params).unwrap_or_else(|e| {
                    eprintln!("error: {e}");
                    std::process::exit(2)
                });
                let request = if name.ends_with(".toml") {
                    let definition = std::fs::read_to_string(name)
                        .map_err(|e| e.to_string())
                        .and_then(|text| {
                            orchestration::pipeline::Pipeline::from_toml(&text)
                                .map_err(|e| e.to_string())
                        })
                        .unwrap_or_else(|e| {
                            eprintln!("error: {name}: {e}");
                            std::process::exit(2)
                        });
                    given.insert(
                        "definition".into(),
                        serde_json::to_value(&definition.def).unwrap_or_default(),
                    );
                    JobRequest {
                        job_type: orchestration::pipeline::AD_HOC.into(),
                        params: serde_json::Value::Object(given),
                    }
                } else {
                    JobRequest {
                        job_type: name.clone(),
                        params: serde_json::Value::Object(given),
                    }
                };
                (request, options)
            }
            JobCommand::Wordcount {
                messages,
                input,
                range_bytes,
                text,
                partition_size,
                per_word,
                contains,
                reduce_partitions,
                options,
            } => {
                let mut params = json!({ "per_word": per_word });
                match (messages, input) {
                    (_, Some(input)) => params["input"] = json!(input),
                    (Some(messages), None) => params["messages"] = json!(messages),
                    (None, None) => {}
                }
                if let Some(bytes) = range_bytes {
                    params["range_bytes"] = json!(bytes);
                }
                if let Some(text) = text {
                    params["text"] = json!(text);
                }
                if let Some(size) = partition_size {
                    params["partition_size"] = json!(size);
                }
                if let Some(contains) = contains {
                    params["contains"] = json!(contains);
                }
                if let Some(r) = reduce_partitions {
                    params["reduce_partitions"] = json!(r);
                }
                let request = JobRequest {
                    job_type: "wordcount".into(),
                    params,
                };
                (request, options)
            }
            JobCommand::FireTweets {
                country,
                from,
                to,
                keywords,
                partition_bytes,
                no_retweets,
                allow_missing_days,
                options,
            } => {
                let mut params = json!({ "country": country, "from": from, "to": to });
                if !keywords.is_empty() {
                    params["keywords"] = json!(keywords);
                }
                if let Some(bytes) = partition_bytes {
                    params["partition_bytes"] = json!(bytes);
                }
                if *no_retweets {
                    params["include_retweets"] = json!(false);
                }
                if *allow_missing_days {
                    params["allow_missing_days"] = json!(true);
                }
                let request = JobRequest {
                    job_type: "fire-tweets".into(),
                    params,
                };
                (request, options)
            }
        }
    }
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
    let target = Target {
        state_dir: state_dir.clone(),
        backend: cli.backend,
        aws_prefix: cli.aws_prefix,
        stack: cli.remote.stack.clone(),
    };
    let remote = cli.remote;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run { job } => run(&target, job).await,
            Command::Serve {
                port,
                inject_faults,
            } => {
                let engine = target.open(inject_faults.unwrap_or_default()).await?;
                serve::serve(engine, port).await
            }
            Command::Submit { job } => remote_submit(job, &remote).await,
            // With `--stack` (and no `--backend aws`), a job is read through the stack's API.
            Command::Status { id, api, json } if api.is_some() || remote.is_api(cli.backend) => {
                remote_show(api.as_deref(), &remote, &id, "", json).await
            }
            Command::Status { id, json, .. } => status(&target, &id, json).await,
            Command::Result {
                id,
                api,
                keyed:
                    KeyedOut {
                        out: Some(out),
                        field,
                        order,
                    },
                ..
            } if api.is_some() || remote.is_api(cli.backend) => {
                remote_save(api.as_deref(), &remote, &id, &out, field, order).await
            }
            Command::Result { id, api, json, .. }
                if api.is_some() || remote.is_api(cli.backend) =>
            {
                remote_show(api.as_deref(), &remote, &id, "/result", json).await
            }
            Command::Result {
                id, json, keyed, ..
            } => result(&target, &id, json, keyed).await,
            Command::Cancel { id, api } => remote_cancel(&api, &remote, &id).await,
            Command::Gen { data } => gen::run(&state_dir, data).await,
            Command::Bench {
                experiment,
                out,
                json,
            } => bench::run(experiment, bench::Output { dir: out, json }).await,
            Command::Simulate(args) => bench::simulate::run(args).await,
            Command::Pipeline { command } => pipeline_cmd::run(command, &state_dir).await,
        }
    })?;
    std::process::exit(code)
}

async fn run(target: &Target, job: JobCommand) -> Result<i32> {
    let state_dir = target.state_dir.as_path();
    let (request, run) = job.request();
    let started = Instant::now();
    if target.backend == Backend::Embedded {
        if let Some(code) = cached_fast_path(state_dir, &request, run.json, started).await? {
            return Ok(code);
        }
    }
    let engine = target
        .open(run.inject_faults.clone().unwrap_or_default())
        .await?;
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
    let usage = if cached {
        None
    } else {
        Some(engine.usage().await?)
    };
    report::finished(
        engine.services.store.as_ref(),
        &engine.log,
        &id,
        cached,
        wall,
        usage,
        run.json,
    )
    .await
}

async fn load(target: &Target, id: &str) -> Result<(Engine, JobId)> {
    let id = JobId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = target.open(Faults::default()).await?;
    Ok((engine, id))
}

async fn status(target: &Target, id: &str, json: bool) -> Result<i32> {
    let (engine, id) = load(target, id).await?;
    let Some(v) = record::load(engine.services.store.as_ref(), &id).await? else {
        bail!("no job {id} in {}", target.state_dir.display());
    };
    let view = orchestration::status::view(&engine.services, &engine.log, &v.record).await?;
    if json {
        println!("{}", serde_json::to_string(&view)?);
        return Ok(0);
    }
    println!("job {id}");
    println!("  type      {} {}", view.job_type, view.params);
    println!("  status    {} (attempt {})", view.status, view.attempt);
    println!("  policy    {}", view.policy);
    for stage in &view.stages {
        let total = stage.total.map(|t| format!(" of {t}")).unwrap_or_default();
        println!(
            "  {:<8}  {} done{total}, {} dead-lettered, {} invocations",
            stage.stage, stage.done, stage.dead_lettered, stage.invocations
        );
    }
    if let Some(err) = &view.error {
        println!("  error     {err}");
    }
    Ok(0)
}

/// Where `sluice result --out` writes a keyed result, and which one.
#[derive(clap::Args, Debug, Default)]
struct KeyedOut {
    /// Write the whole keyed result (JSON lines `{"key","value"}`, sorted) to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// The keyed field to write (default: the result's only keyed field).
    #[arg(long, requires = "out")]
    field: Option<String>,
    /// Sort order of the file: by key, or by value (largest first).
    #[arg(long, value_parser = ["key", "value"], default_value = "key", requires = "out")]
    order: String,
}

/// The keyed field `--field` names, or the result's only one.
fn keyed_field(result: &Value, field: Option<String>) -> Result<(String, keyed::Summary)> {
    let keyed: Vec<(String, keyed::Summary)> = result
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), keyed::Summary::from_result(v)?)))
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<&str> = keyed.iter().map(|(k, _)| k.as_str()).collect();
    match field {
        Some(f) => keyed
            .iter()
            .find(|(k, _)| *k == f)
            .cloned()
            .with_context(|| format!("the result has no keyed field `{f}`; it has: {names:?}")),
        None if keyed.len() == 1 => Ok(keyed[0].clone()),
        None => bail!("name the keyed field with --field; the result has: {names:?}"),
    }
}

async fn result(target: &Target, id: &str, json: bool, keyed_out: KeyedOut) -> Result<i32> {
    let (engine, id) = load(target, id).await?;
    let Some(v) = record::load(engine.services.store.as_ref(), &id).await? else {
        bail!("no job {id} in {}", target.state_dir.display());
    };
    if !v.record.status.is_terminal() {
        bail!("job {id} is {}; no result yet", v.record.status);
    }
    if let Some(out) = &keyed_out.out {
        let (field, summary) = keyed_field(&result_value(&v.record), keyed_out.field)?;
        let object = if keyed_out.order == "value" {
            &summary.by_value
        } else {
            &summary.by_key
        };
        let bytes = engine
            .services
            .blobs
            .get(object)
            .await?
            .with_context(|| format!("the result object {object} is gone"))?;
        std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "wrote {} keys of `{field}` ({} bytes) to {}",
            summary.keys,
            bytes.len(),
            out.display()
        );
    }
    report::finished(
        engine.services.store.as_ref(),
        &engine.log,
        &id,
        true,
        Duration::ZERO,
        None,
        json,
    )
    .await
}

/// The result as the user sees it: the reduce's aggregate.
pub(crate) fn result_value(rec: &record::JobRecord) -> Value {
    rec.outcome
        .as_ref()
        .and_then(|o| o.result.clone())
        .unwrap_or(Value::Null)
}

async fn remote_submit(job: JobCommand, remote: &client::Remote) -> Result<i32> {
    let (request, options) = job.request();
    if options.inject_faults.is_some() {
        bail!("faults are injected where jobs run: pass --inject-faults to `sluice serve`");
    }
    let api = client::ApiClient::connect(&options.api, remote).await?;
    let body = json!({
        "type": request.job_type,
        "params": request.params,
        "policy": options.policy.to_string(),
        "min_coverage": options.min_coverage,
    });
    let (status, response) = api.submit(&body).await?;
    if !(200..300).contains(&status) {
        bail!("{}", client::error_message(status, &response));
    }
    let response = match (options.wait, response["job_id"].as_str()) {
        (true, Some(id)) if status == 202 => api.wait(id).await?,
        _ => response,
    };
    print_remote(&response, options.json);
    Ok(i32::from(response["status"] == "failed"))
}

async fn remote_show(
    api: Option<&str>,
    remote: &client::Remote,
    id: &str,
    suffix: &str,
    as_json: bool,
) -> Result<i32> {
    let id = JobId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let api = client::ApiClient::connect(api.unwrap_or(DEFAULT_API), remote).await?;
    let (status, body) = api.get(&format!("/jobs/{id}{suffix}")).await?;
    if status != 200 {
        bail!("{}", client::error_message(status, &body));
    }
    print_remote(&body, as_json);
    Ok(0)
}

/// `sluice result --out` against an API: the keyed result, page by page, into a file.
async fn remote_save(
    api: Option<&str>,
    remote: &client::Remote,
    id: &str,
    out: &std::path::Path,
    field: Option<String>,
    order: String,
) -> Result<i32> {
    use std::io::Write as _;
    let id = JobId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let api = client::ApiClient::connect(api.unwrap_or(DEFAULT_API), remote).await?;
    let (status, body) = api.get(&format!("/jobs/{id}/result")).await?;
    if status != 200 {
        bail!("{}", client::error_message(status, &body));
    }
    let (field, summary) = keyed_field(&body["result"], field)?;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    );
    let mut cursor = "0".to_owned();
    loop {
        let path =
            format!("/jobs/{id}/result?field={field}&order={order}&limit=10000&cursor={cursor}");
        let (status, page) = api.get(&path).await?;
        if status != 200 {
            bail!("{}", client::error_message(status, &page));
        }
        for entry in page["entries"].as_array().into_iter().flatten() {
            writeln!(file, "{entry}")?;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    file.flush()?;
    eprintln!(
        "wrote {} keys of `{field}` to {}",
        summary.keys,
        out.display()
    );
    Ok(0)
}

async fn remote_cancel(api: &str, remote: &client::Remote, id: &str) -> Result<i32> {
    let id = JobId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let api = client::ApiClient::connect(api, remote).await?;
    let (status, body) = api.delete(&format!("/jobs/{id}")).await?;
    if status != 202 {
        bail!("{}", client::error_message(status, &body));
    }
    println!("job {id}: cancelling");
    Ok(0)
}

fn print_remote(body: &Value, as_json: bool) {
    if as_json {
        println!("{body}");
    } else {
        println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
    }
}

/// A finished job is answered from its record alone: no queues, mappings or runtime are
/// opened, so a cached answer costs a couple of SQLite reads.
async fn cached_fast_path(
    state_dir: &std::path::Path,
    request: &JobRequest,
    as_json: bool,
    started: Instant,
) -> Result<Option<i32>> {
    let store_path = state_dir.join(orchestration::local::engine::STORE_FILE);
    if !store_path.exists() {
        return Ok(None);
    }
    let Ok(valid) = orchestration::flow::Registry::default().validate(request) else {
        return Ok(None); // the full path reports the error
    };
    let store = orchestration::local::SqliteJobStore::open(&store_path)?;
    match record::load(&store, &valid.id).await? {
        Some(v) if v.record.status == orchestration::job::JobStatus::Done => {
            let log = orchestration::local::InvocationLog::open(
                &state_dir.join(orchestration::local::engine::INVOCATIONS_FILE),
            )?;
            let code = report::finished(
                &store,
                &log,
                &valid.id,
                true,
                started.elapsed(),
                None,
                as_json,
            )
            .await?;
            Ok(Some(code))
        }
        _ => Ok(None),
    }
}
