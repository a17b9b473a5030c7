//! `sluice bench fire-tweets`: the fire-tweets job against DuckDB on the same files, with
//! the same semantics, in the same run. Generating the tweets is not timed (and a data
//! directory that already holds them is reused); each side's answer must agree with the
//! other's, or the benchmark fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use orchestration::job::JobRequest;
use orchestration::local::FileBlobs;
use orchestration::policy::Policy;
use orchestration::tweets::{generate, Day, GenOptions};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{job_in, Output};

const SCRIPT: &str = include_str!("duckdb_fire_tweets.py");

#[derive(Args, Clone, Debug)]
pub struct FireTweetsArgs {
    /// Tweets per day.
    #[arg(long, default_value_t = 1_000_000)]
    pub tweets: u64,
    /// Days, from --from.
    #[arg(long, default_value_t = 1)]
    pub days: u64,
    #[arg(long, default_value = "2018-11-01")]
    pub from: Day,
    #[arg(long, default_value = "GB")]
    pub country: String,
    /// Where the generated tweets are kept (and reused when they match).
    #[arg(long, default_value = "bench-results/fire-tweets-data")]
    pub data: PathBuf,
    /// The Python with DuckDB (default: $SLUICE_PYTHON, else the project's .venv, made or
    /// refreshed by scripts/python-env).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Threads for DuckDB (default: every core, as the engine uses).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also run fire-tweets written as a definition (`pipelines/fire-tweets.toml`, type
    /// `fire-tweets-pipeline`) on the same files, after the built-in job: its time against
    /// the built-in's, and its answer, which must be the built-in's.
    #[arg(long)]
    pub pipeline: bool,
    /// Also run the definition unfused (`settings.fuse = false`: a stage a step, each
    /// sending the next its records as JSON), as an ad-hoc pipeline: its time against the
    /// fused definition's. Implies --pipeline.
    #[arg(long)]
    pub unfused: bool,
    /// Rounds, each running every side once in turn (DuckDB, the built-in job, the
    /// definition...): the table gives each side's median, the title each round's ratios.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
}

/// One side's run: times and answer.
#[derive(Clone, Debug, Deserialize)]
pub struct Side {
    pub wall_s: f64,
    pub cpu_s: f64,
    pub matching: u64,
    pub cities: BTreeMap<String, u64>,
    #[serde(default)]
    pub unattributed: BTreeMap<String, u64>,
}

pub struct Comparison {
    pub bytes: u64,
    pub tweets: u64,
    pub cores: usize,
    pub sluice: Side,
    pub duckdb: Side,
    pub duckdb_version: String,
    /// The definition's run (`--pipeline`).
    pub pipeline: Option<Side>,
    /// The definition's run unfused (`--unfused`).
    pub unfused: Option<Side>,
    /// The fused definition with every expression in `cel` (`--unfused`).
    pub cel_only: Option<Side>,
}

impl Comparison {
    fn mb_per_s_per_core(&self, side: &Side) -> f64 {
        self.bytes as f64 / 1e6 / side.wall_s / self.cores as f64
    }

    pub fn to_json(&self) -> Value {
        let side = |s: &Side| {
            json!({"wall_s": s.wall_s, "cpu_s": s.cpu_s, "matching": s.matching,
                   "cities": s.cities, "unattributed": s.unattributed,
                   "mb_per_s_per_core": self.mb_per_s_per_core(s)})
        };
        json!({
            "experiment": "fire-tweets",
            "bytes": self.bytes,
            "tweets": self.tweets,
            "cores": self.cores,
            "sluice": side(&self.sluice),
            "duckdb": side(&self.duckdb),
            "duckdb_version": self.duckdb_version,
            "ratio": self.sluice.wall_s / self.duckdb.wall_s,
            "cpu_ratio": self.sluice.cpu_s / self.duckdb.cpu_s.max(1e-9),
            "pipeline": self.pipeline.as_ref().map(|p| json!({
                "wall_s": p.wall_s, "cpu_s": p.cpu_s,
                "ratio_to_built_in": p.wall_s / self.sluice.wall_s,
                "cpu_ratio_to_built_in": p.cpu_s / self.sluice.cpu_s.max(1e-9),
            })),
            "unfused": self.unfused.as_ref().map(|u| json!({
                "wall_s": u.wall_s, "cpu_s": u.cpu_s,
                "ratio_to_fused": self.pipeline.as_ref().map(|p| u.wall_s / p.wall_s),
                "cpu_ratio_to_fused": self.pipeline.as_ref().map(|p| u.cpu_s / p.cpu_s.max(1e-9)),
                "ratio_to_fused_cel_only": self.cel_only.as_ref().map(|p| u.wall_s / p.wall_s),
            })),
            "cel_only": self.cel_only.as_ref().map(|u| json!({
                "wall_s": u.wall_s, "cpu_s": u.cpu_s,
                "ratio_to_fused": self.pipeline.as_ref().map(|p| u.wall_s / p.wall_s),
            })),
        })
    }
}

/// CPU seconds (user + system) this process has used so far. Linux's /proc; elsewhere 0.
pub fn process_cpu_s() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second on Linux).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the name, field 3 (state) is index 0: utime (14) is index 11, stime 12.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The generated days, reused when a stamp says they were made with the same options.
async fn ensure_data(dir: &Path, options: &GenOptions) -> Result<u64> {
    let stamp_path = dir.join("generated.json");
    let stamp = json!({"from": options.from.to_string(), "to": options.to.to_string(),
                       "per_day": options.per_day, "per_part": options.per_part,
                       "seed": options.seed, "generator": GENERATOR_VERSION});
    let blobs_dir = dir.join("blobs");
    if std::fs::read(&stamp_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|s| s == stamp)
    {
        return dir_bytes(&blobs_dir.join("tweets"));
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&blobs_dir)
        .with_context(|| format!("creating {}", blobs_dir.display()))?;
    let blobs = FileBlobs::open(&blobs_dir)?;
    eprintln!(
        "generating {} tweets a day for {} day(s) in {}",
        options.per_day,
        options.from.days_until(options.to) + 1,
        dir.display()
    );
    let summary = generate(&blobs, options).await?;
    std::fs::write(&stamp_path, stamp.to_string())?;
    Ok(summary.bytes)
}

/// Bumped when the generator's output changes, so old data is not reused.
const GENERATOR_VERSION: u32 = 2;

fn dir_bytes(dir: &Path) -> Result<u64> {
    Ok(tweet_files(dir)?
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum())
}

/// Every file under `dir`, sorted.
fn tweet_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A fresh engine state directory whose blob store holds the generated tweets, hard-linked
/// (copied where links are refused): every run computes, none is served from a cache.
fn fresh_state(data: &Path, n: usize) -> Result<PathBuf> {
    let state = data.join(format!("run-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let from = data.join("blobs");
    for file in tweet_files(&from.join("tweets"))? {
        let rel = file.strip_prefix(&from)?;
        let to = state.join("blobs").join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::hard_link(&file, &to).is_err() {
            std::fs::copy(&file, &to)?;
        }
    }
    Ok(state)
}

fn python(args: &FireTweetsArgs) -> Result<PathBuf> {
    if let Some(p) = &args.python {
        return Ok(p.clone());
    }
    if let Ok(p) = std::env::var("SLUICE_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let env = Path::new("scripts/python-env");
    if !env.exists() {
        bail!("no scripts/python-env here: run from the project's checkout, or pass --python");
    }
    let out = std::process::Command::new(env)
        .output()
        .context("running scripts/python-env")?;
    if !out.status.success() {
        bail!(
            "scripts/python-env failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("python"))
}

/// Runs one job type on the generated files in a fresh state: its side, and its whole
/// result (keyed fields expanded).
/// `extra` params are added to the days and country.
async fn run_job(
    args: &FireTweetsArgs,
    job_type: &str,
    extra: Value,
    n: usize,
) -> Result<(Side, Value)> {
    let to = args.from.plus(args.days as i64 - 1);
    let state = fresh_state(&args.data, n)?;
    let mut params =
        json!({"country": args.country, "from": args.from.to_string(), "to": to.to_string()});
    if let (Some(p), Value::Object(extra)) = (params.as_object_mut(), extra) {
        p.extend(extra);
    }
    let request = JobRequest {
        job_type: job_type.into(),
        params,
    };
    let cpu0 = process_cpu_s();
    // The default policy, as `sluice run` uses.
    let run = job_in(&state, request, Policy::default()).await;
    let cpu_s = process_cpu_s() - cpu0;
    let expanded = match &run {
        Ok((run, _)) => {
            let blobs = FileBlobs::open(state.join("blobs"))?;
            Some(orchestration::keyed::expand(&blobs, &run.result).await)
        }
        Err(_) => None,
    };
    let _ = std::fs::remove_dir_all(&state);
    // Submitted to torn down, seen from outside (the engine's opening excluded, as
    // DuckDB's connecting is).
    let wall_s = run?.0.wall_s;
    let result = expanded.context("no result")??;
    let count_map = |v: &Value| -> BTreeMap<String, u64> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let side = Side {
        wall_s,
        cpu_s,
        matching: result["matching"].as_u64().unwrap_or(0),
        cities: count_map(&result["cities"]),
        unattributed: count_map(&result["unattributed"]),
    };
    Ok((side, result))
}

/// Runs both sides on the same files and checks that they agree.
/// `round`: the definition runs before the built-in job in odd rounds, after it in even
/// ones, so neither always runs second (on a warmer, or a busier, machine).
pub async fn compare(args: &FireTweetsArgs, round: usize) -> Result<Comparison> {
    if args.days == 0 {
        bail!("--days must be at least 1");
    }
    let to = args.from.plus(args.days as i64 - 1);
    let options = GenOptions {
        per_part: args.tweets.clamp(1, 100_000),
        ..GenOptions::new(args.from, to, args.tweets)
    };
    options.validate()?;
    let bytes = ensure_data(&args.data, &options).await?;
    let files: Vec<String> = tweet_files(&args.data.join("blobs").join("tweets"))?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores);

    // DuckDB first: it reads the files from the page cache warmed by the generator (or a
    // previous run), as the job then does.
    let python = python(args)?;
    let input = json!({"files": files, "country": args.country, "threads": threads,
                       "from": format!("{} 00:00:00", args.from),
                       "until": format!("{} 00:00:00", to.plus(1)),
                       "retweets": true});
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(input.to_string())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "DuckDB's side failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let duck: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("DuckDB's answer: {}", String::from_utf8_lossy(&out.stdout)))?;
    let duckdb_version = duck["duckdb"].as_str().unwrap_or("?").to_owned();
    let duckdb: Side = serde_json::from_value(duck)?;

    let definition_first = (args.pipeline || args.unfused) && round % 2 == 1;
    let early = if definition_first {
        Some(run_job(args, "fire-tweets-pipeline", json!({}), 1).await?)
    } else {
        None
    };
    let (sluice, builtin_result) = run_job(args, "fire-tweets", json!({}), 0).await?;
    let same = |side: Side, mut result: Value, what: &str| -> Result<Side> {
        let errors = result
            .as_object_mut()
            .and_then(|o| o.remove("expression_errors"));
        if result != builtin_result || errors != Some(json!(0)) {
            bail!(
                "the {what}'s answer differs from the built-in job's:\n  {what}: {result}\n  built-in: {builtin_result}"
            );
        }
        Ok(side)
    };
    let pipeline = if args.pipeline || args.unfused {
        let (side, result) = match early {
            Some(run) => run,
            None => run_job(args, "fire-tweets-pipeline", json!({}), 1).await?,
        };
        Some(same(side, result, "definition")?)
    } else {
        None
    };
    // The fused definition again with every expression in `cel`, as the unfused stages
    // run them: what the queue hops cost apart from the fast path.
    let cel_only = if args.unfused {
        orchestration::pipeline::run::set_fast_path(false);
        let run = run_job(args, "fire-tweets-pipeline", json!({}), 3).await;
        orchestration::pipeline::run::set_fast_path(true);
        let (side, result) = run?;
        Some(same(side, result, "definition without its fast path")?)
    } else {
        None
    };
    let unfused = if args.unfused {
        let text = orchestration::pipeline::shipped()
            .into_iter()
            .find(|(file, _)| *file == "fire-tweets.toml")
            .map(|(_, text)| text)
            .context("no pipelines/fire-tweets.toml in this build")?;
        let mut def = orchestration::pipeline::Pipeline::from_toml(text)
            .map_err(|e| anyhow::anyhow!("pipelines/fire-tweets.toml: {e}"))?
            .def;
        def.name = "fire-tweets-unfused".into();
        def.settings.fuse = Some(false);
        let extra = json!({"definition": serde_json::to_value(&def)?});
        let (side, result) = run_job(args, orchestration::pipeline::AD_HOC, extra, 2).await?;
        Some(same(side, result, "unfused definition")?)
    } else {
        None
    };
    if (sluice.matching, &sluice.cities, &sluice.unattributed)
        != (duckdb.matching, &duckdb.cities, &duckdb.unattributed)
    {
        bail!(
            "the answers differ:\n  sluice: {} matching, cities {:?}, unattributed {:?}\n  duckdb: {} matching, cities {:?}, unattributed {:?}",
            sluice.matching,
            sluice.cities,
            sluice.unattributed,
            duckdb.matching,
            duckdb.cities,
            duckdb.unattributed
        );
    }
    Ok(Comparison {
        bytes,
        tweets: args.tweets * args.days,
        cores,
        sluice,
        duckdb,
        duckdb_version,
        pipeline,
        unfused,
        cel_only,
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Each side's median wall and CPU time over the rounds (the answer is every round's).
fn medians(rounds: &[Comparison]) -> Option<Comparison> {
    let first = rounds.first()?;
    let side = |get: &dyn Fn(&Comparison) -> Option<&Side>| -> Option<Side> {
        let sides: Vec<&Side> = rounds.iter().filter_map(get).collect();
        let s = sides.first()?;
        Some(Side {
            wall_s: median(sides.iter().map(|s| s.wall_s).collect()),
            cpu_s: median(sides.iter().map(|s| s.cpu_s).collect()),
            ..(*s).clone()
        })
    };
    Some(Comparison {
        bytes: first.bytes,
        tweets: first.tweets,
        cores: first.cores,
        sluice: side(&|c| Some(&c.sluice))?,
        duckdb: side(&|c| Some(&c.duckdb))?,
        duckdb_version: first.duckdb_version.clone(),
        pipeline: side(&|c| c.pipeline.as_ref()),
        unfused: side(&|c| c.unfused.as_ref()),
        cel_only: side(&|c| c.cel_only.as_ref()),
    })
}

pub async fn run(args: &FireTweetsArgs, out: &Output) -> Result<i32> {
    let mut rounds = Vec::with_capacity(args.runs.max(1));
    for round in 0..args.runs.max(1) {
        let c = compare(args, round).await?;
        if args.runs > 1 && !out.json {
            let definition = c
                .pipeline
                .as_ref()
                .map(|p| format!(", definition/built-in {:.2}", p.wall_s / c.sluice.wall_s))
                .unwrap_or_default();
            println!(
                "  round {}: sluice/duckdb wall {:.2}{definition}",
                round + 1,
                c.sluice.wall_s / c.duckdb.wall_s
            );
        }
        rounds.push(c);
    }
    let per_round: Vec<Value> = rounds.iter().map(Comparison::to_json).collect();
    let ratios = |f: &dyn Fn(&Comparison) -> Option<f64>| -> Vec<f64> {
        rounds.iter().filter_map(f).collect()
    };
    let duck_ratios = ratios(&|c| Some(c.sluice.wall_s / c.duckdb.wall_s));
    let def_ratios = ratios(&|c| c.pipeline.as_ref().map(|p| p.wall_s / c.sluice.wall_s));
    let c = medians(&rounds).context("no round ran")?;
    let row = |name: &str, s: &Side| {
        vec![
            name.to_owned(),
            format!("{:.3}", s.wall_s),
            format!("{:.2}", s.cpu_s),
            format!("{:.0}", c.mb_per_s_per_core(s)),
            s.matching.to_string(),
            s.cities.len().to_string(),
        ]
    };
    let mut rows = vec![
        row("sluice", &c.sluice),
        row(&format!("duckdb {}", c.duckdb_version), &c.duckdb),
    ];
    if let Some(p) = &c.pipeline {
        rows.push(row("sluice (definition)", p));
    }
    if let Some(u) = &c.cel_only {
        rows.push(row("sluice (definition, cel only)", u));
    }
    if let Some(u) = &c.unfused {
        rows.push(row("sluice (definition, unfused)", u));
    }
    let header = [
        "engine",
        "wall_s",
        "cpu_s",
        "MB/s/core",
        "matching",
        "cities",
    ];
    out.csv("fire-tweets", &header, &rows)?;
    let title = format!(
        "fire-tweets: {} tweets, {:.2} GB, {} cores; sluice/duckdb wall {:.2}, CPU {:.2}; the answers agree",
        c.tweets,
        c.bytes as f64 / 1e9,
        c.cores,
        c.sluice.wall_s / c.duckdb.wall_s,
        c.sluice.cpu_s / c.duckdb.cpu_s.max(1e-9),
    );
    let title = match &c.pipeline {
        Some(p) => format!(
            "{title}; the definition/built-in wall {:.2}, CPU {:.2} (same answer)",
            p.wall_s / c.sluice.wall_s,
            p.cpu_s / c.sluice.cpu_s.max(1e-9)
        ),
        None => title,
    };
    let title = match (&c.pipeline, &c.unfused, &c.cel_only) {
        (Some(p), Some(u), Some(k)) => format!(
            "{title}; unfused/fused wall {:.2}, CPU {:.2}; unfused/fused-in-cel wall {:.2} (same answers)",
            u.wall_s / p.wall_s,
            u.cpu_s / p.cpu_s.max(1e-9),
            u.wall_s / k.wall_s,
        ),
        _ => title,
    };
    let title = if rounds.len() > 1 {
        let list = |xs: &[f64]| {
            xs.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let def = if def_ratios.is_empty() {
            String::new()
        } else {
            format!(
                "; definition/built-in per round {} (median {:.2})",
                list(&def_ratios),
                median(def_ratios.clone())
            )
        };
        format!(
            "{title}\n  medians of {} rounds; sluice/duckdb per round {} (median {:.2}){def}",
            rounds.len(),
            list(&duck_ratios),
            median(duck_ratios.clone()),
        )
    } else {
        title
    };
    let mut json = c.to_json();
    if rounds.len() > 1 {
        json["rounds"] = Value::Array(per_round);
        json["ratio_median_of_rounds"] = json!(median(duck_ratios));
        if !def_ratios.is_empty() {
            json["pipeline_ratio_median_of_rounds"] = json!(median(def_ratios));
        }
    }
    out.report(&title, &header, &rows, json);
    if !out.json {
        let top: Vec<String> = {
            let mut v: Vec<_> = c.sluice.cities.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            v.iter().take(5).map(|(k, n)| format!("{k} {n}")).collect()
        };
        println!("  top cities (both): {}", top.join(", "));
    }
    Ok(0)
}
