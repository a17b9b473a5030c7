//! The experiments: what each runs, writes and prints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use orchestration::flow::Registry;
use orchestration::local::{Engine, EngineOptions};
use orchestration::policy::Policy;
use orchestration::record;
use serde_json::{json, Value};

use super::{fmt_s, fmt_usd, one_job, paper, run_jobs, wordcount, JobRun, Output, Scratch};
use crate::client::ApiClient;
use crate::plot::{Chart, Scale, Series, Style};

#[derive(Subcommand, Clone, Debug)]
pub enum Experiment {
    /// Paper fig. 2: job time and billed time over job size, for each policy.
    JobSize {
        /// Job sizes (messages).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10,20,50,100,200,500,1000,2000,10000,100000"
        )]
        sizes: Vec<u64>,
        /// Policies to compare.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "always-one,static-proportional:150,backlog"
        )]
        policies: Vec<String>,
        /// Whole-process runs of `sluice run wordcount --messages 2000` to time.
        #[arg(long, default_value_t = 5)]
        process_runs: usize,
    },
    /// Paper fig. 3: the spread of job times with k distinct jobs at once.
    Concurrency {
        #[arg(long, value_delimiter = ',', default_value = "1,2,5,10,20,50")]
        jobs: Vec<usize>,
        #[arg(long, default_value_t = 2000)]
        messages: u64,
    },
    /// Paper fig. 4: response times of identical requests over HTTP (the first computes).
    Caching {
        #[arg(long, default_value_t = 5)]
        requests: usize,
        #[arg(long, default_value_t = 2000)]
        messages: u64,
    },
    /// Paper fig. 5: concurrent invocations per stage over one job's time.
    Automation {
        #[arg(long, default_value_t = 2000)]
        messages: u64,
        #[arg(long, default_value_t = Policy::StaticProportional(150))]
        policy: Policy,
    },
    /// Paper fig. 6: each stage queue's depth over one job's time.
    Queues {
        #[arg(long, default_value_t = 2000)]
        messages: u64,
        #[arg(long, default_value_t = Policy::StaticProportional(150))]
        policy: Policy,
        /// Sampling period, ms.
        #[arg(long, default_value_t = 5)]
        every_ms: u64,
    },
    /// Messages per second at several partition sizes, and a large-text word count against
    /// a hand-written loop over the same bytes.
    Throughput {
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        partition_sizes: Vec<u64>,
        /// Size of the generated text, MiB.
        #[arg(long, default_value_t = 1024)]
        text_mib: u64,
        /// Size of the per-word corpus (Zipf words), MiB; 0 skips it.
        #[arg(long, default_value_t = 1024)]
        per_word_mib: u64,
        /// Distinct words in the per-word corpus.
        #[arg(long, default_value_t = 1_000_000)]
        vocabulary: u64,
        /// Faults injected into the per-word job (`--inject-faults` syntax).
        #[arg(long, default_value = "")]
        per_word_faults: String,
    },
    /// fire-tweets against DuckDB on the same generated files, with the same semantics:
    /// both times (wall, CPU-s), their ratio, MB/s per core, and both answers (which must
    /// agree).
    FireTweets(super::tweets::FireTweetsArgs),
    /// p50/p99 latency of a cached result over local HTTP (the paper: about 600 ms).
    CachedApi {
        #[arg(long, default_value_t = 1000)]
        requests: usize,
    },
}

pub async fn run(experiment: Experiment, out: &Output) -> Result<i32> {
    match experiment {
        Experiment::JobSize {
            sizes,
            policies,
            process_runs,
        } => {
            let policies = super::simulate::parse_policies(&policies)?;
            job_size(&sizes, &policies, process_runs, out).await
        }
        Experiment::Concurrency { jobs, messages } => concurrency(&jobs, messages, out).await,
        Experiment::Caching { requests, messages } => caching(requests, messages, out).await,
        Experiment::Automation { messages, policy } => automation(messages, policy, out).await,
        Experiment::Queues {
            messages,
            policy,
            every_ms,
        } => queues(messages, policy, every_ms, out).await,
        Experiment::Throughput {
            messages,
            partition_sizes,
            text_mib,
            per_word_mib,
            vocabulary,
            per_word_faults,
        } => {
            let per_word =
                (per_word_mib > 0).then_some((per_word_mib, vocabulary, per_word_faults));
            throughput(messages, &partition_sizes, text_mib, per_word, out).await
        }
        Experiment::CachedApi { requests } => cached_api(requests, out).await,
        Experiment::FireTweets(args) => super::tweets::run(&args, out).await,
    }
}

/// `total_words` of a default-text wordcount job of `n` messages: four words and a number.
fn expected_words(n: u64) -> u64 {
    n * 5
}

fn check_words(run: &JobRun, n: u64) -> Result<()> {
    let got = run.result["total_words"].as_u64();
    if got != Some(expected_words(n)) {
        bail!(
            "job {} counted {got:?} words, not {}",
            run.id,
            expected_words(n)
        );
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

pub(super) fn series(label: impl Into<String>, points: Vec<(f64, f64)>, style: Style) -> Series {
    Series {
        label: label.into(),
        points,
        style,
    }
}

async fn job_size(
    sizes: &[u64],
    policies: &[Policy],
    process_runs: usize,
    out: &Output,
) -> Result<i32> {
    let header = [
        "messages",
        "policy",
        "job_s",
        "wall_s",
        "invocations",
        "billed_s_measured",
        "billed_s_modelled",
        "cost_usd_modelled",
    ];
    let mut rows = Vec::new();
    let mut by_policy: BTreeMap<String, Vec<(u64, JobRun, orchestration::cost::Estimate)>> =
        BTreeMap::new();
    for policy in policies {
        for &n in sizes {
            let (run, usage) = one_job(wordcount(n, json!({})), *policy, "job-size").await?;
            check_words(&run, n)?;
            let estimate = usage.estimate();
            rows.push(vec![
                n.to_string(),
                policy.to_string(),
                fmt_s(run.job_s),
                fmt_s(run.wall_s),
                run.invocations.to_string(),
                fmt_s(run.billed_s),
                fmt_s(estimate.lambda_billed_s),
                fmt_usd(&estimate),
            ]);
            by_policy
                .entry(policy.to_string())
                .or_default()
                .push((n, run, estimate));
        }
    }
    out.csv("job-size", &header, &rows)?;

    let mut time = Vec::new();
    let mut billed = Vec::new();
    for (policy, runs) in &by_policy {
        time.push(series(
            format!("{policy} (local engine)"),
            runs.iter().map(|(n, r, _)| (*n as f64, r.job_s)).collect(),
            Style::LinesAndPoints,
        ));
        billed.push(series(
            format!("{policy}: measured here"),
            runs.iter()
                .map(|(n, r, _)| (*n as f64, r.billed_s))
                .collect(),
            Style::LinesAndPoints,
        ));
        billed.push(series(
            format!("{policy}: modelled on AWS"),
            runs.iter()
                .map(|(n, _, e)| (*n as f64, e.lambda_billed_s))
                .collect(),
            Style::Lines,
        ));
    }
    time.push(series(
        "paper, static-proportional:150 (AWS)",
        vec![(2000.0, paper::STATIC_150_JOB_S)],
        Style::Points,
    ));
    time.push(series(
        "paper, always-one (AWS)",
        vec![(2000.0, paper::ALWAYS_ONE_JOB_S)],
        Style::Points,
    ));
    billed.push(series(
        "paper, static-proportional:150 (AWS)",
        vec![(2000.0, paper::STATIC_150_BILLED_S)],
        Style::Points,
    ));
    billed.push(series(
        "paper, always-one (AWS)",
        vec![(2000.0, paper::ALWAYS_ONE_BILLED_S)],
        Style::Points,
    ));
    out.plot(
        &Chart {
            title: "Job time over job size (paper fig. 2)".into(),
            x_label: "messages".into(),
            y_label: "job time, s (first tick to result)".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            series: time,
            references: vec![],
        },
        "job-size-time",
    )?;
    out.plot(
        &Chart {
            title: "Billed Lambda time over job size".into(),
            x_label: "messages".into(),
            y_label: "billed time, s".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            series: billed,
            references: vec![],
        },
        "job-size-billed",
    )?;

    // The whole process, as a user runs it: start, open a fresh state directory, run the
    // 2,000-message job, print, exit.
    let mut process = Vec::new();
    for _ in 0..process_runs {
        process.push(whole_process(2000).await?);
    }
    let process_median = median(&mut process);

    let at_2000: Vec<Value> = by_policy
        .iter()
        .filter_map(|(policy, runs)| {
            runs.iter().find(|(n, _, _)| *n == 2000).map(|(_, r, e)| {
                json!({"policy": policy, "job_s": r.job_s, "billed_s_measured": r.billed_s,
                       "billed_s_modelled": e.lambda_billed_s, "cost_usd_modelled": e.total_usd,
                       "lambda_gb_s_modelled": e.lambda_gb_s})
            })
        })
        .collect();
    let summary = json!({
        "experiment": "job-size",
        "runs": rows.len(),
        "at_2000_messages": at_2000,
        "whole_process_2000_s": {"median": process_median, "runs": process},
        "paper": {"static_proportional_150_job_s": paper::STATIC_150_JOB_S,
                  "always_one_job_s": paper::ALWAYS_ONE_JOB_S,
                  "billed_s": [paper::STATIC_150_BILLED_S, paper::ALWAYS_ONE_BILLED_S]},
    });
    out.report("job size (paper fig. 2)", &header, &rows, summary);
    if !out.json {
        println!(
            "whole process, `sluice run wordcount --messages 2000` on a fresh state directory: median {:.3} s of {process_runs}",
            process_median
        );
    }
    Ok(0)
}

/// Runs this very binary as a user would and times it from spawn to exit.
async fn whole_process(messages: u64) -> Result<f64> {
    let scratch = Scratch::new("process")?;
    let exe = std::env::current_exe().context("locating the sluice binary")?;
    let dir = scratch.path().to_owned();
    let (output, elapsed) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let output = std::process::Command::new(exe)
            .arg("--state-dir")
            .arg(dir)
            .args([
                "run",
                "wordcount",
                "--messages",
                &messages.to_string(),
                "--json",
            ])
            .output();
        (output, started.elapsed().as_secs_f64())
    })
    .await?;
    let output = output.context("running sluice")?;
    if !output.status.success() {
        bail!(
            "sluice run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let doc: Value = serde_json::from_slice(&output.stdout).context("reading its JSON")?;
    if doc["result"]["total_words"].as_u64() != Some(expected_words(messages)) {
        bail!("sluice run gave {}", doc["result"]);
    }
    Ok(elapsed)
}

async fn concurrency(jobs: &[usize], messages: u64, out: &Output) -> Result<i32> {
    let header = ["jobs", "job", "job_s", "wall_s"];
    let mut rows = Vec::new();
    let mut all = Vec::new();
    let mut medians = Vec::new();
    let mut table = Vec::new();
    for &k in jobs {
        let scratch = Scratch::new("concurrency")?;
        let engine = Engine::open(scratch.path(), EngineOptions::default()).await?;
        // Distinct jobs: the text differs, so no two share a result.
        let requests: Vec<_> = (0..k)
            .map(|j| {
                (
                    wordcount(messages, json!({"text": format!("the quick brown fox{j}")})),
                    // The paper's policy, which the recorded figures (docs/bench) used.
                    Policy::StaticProportional(150),
                )
            })
            .collect();
        let runs = run_jobs(&engine, &requests).await?;
        let mut times = Vec::new();
        for (j, run) in runs.iter().enumerate() {
            check_words(run, messages)?;
            rows.push(vec![
                k.to_string(),
                j.to_string(),
                fmt_s(run.job_s),
                fmt_s(run.wall_s),
            ]);
            all.push((k as f64, run.job_s));
            times.push(run.job_s);
        }
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let max = times.iter().copied().fold(0.0, f64::max);
        let med = median(&mut times);
        medians.push((k as f64, med));
        table.push(vec![k.to_string(), fmt_s(min), fmt_s(med), fmt_s(max)]);
    }
    out.csv("concurrency", &header, &rows)?;
    out.plot(
        &Chart {
            title: format!(
                "Job time over concurrent distinct jobs, {messages} messages each (paper fig. 3)"
            ),
            x_label: "concurrent jobs".into(),
            y_label: "job time, s".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Linear,
            series: vec![
                series("each job", all, Style::Points),
                series("median", medians, Style::Lines),
            ],
            references: vec![],
        },
        "concurrency",
    )?;
    let summary = json!({
        "experiment": "concurrency",
        "messages": messages,
        "spread": table.iter().map(|r| json!({"jobs": r[0], "min_s": r[1], "median_s": r[2], "max_s": r[3]})).collect::<Vec<_>>(),
    });
    out.report(
        "concurrency (paper fig. 3)",
        &["jobs", "min_s", "median_s", "max_s"],
        &table,
        summary,
    );
    Ok(0)
}

/// A `sluice serve` in this process on a fresh engine, for `body` to be sent to.
async fn with_server<T>(f: impl AsyncFnOnce(ApiClient) -> Result<T>) -> Result<T> {
    let scratch = Scratch::new("api")?;
    let engine = Engine::open(scratch.path(), EngineOptions::default()).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (addr, serving) = crate::serve::bind(&engine, 0, stop_rx).await?;
    let (result, served) = tokio::join!(
        async {
            let r = async { f(ApiClient::new(&format!("http://{addr}"))?).await }.await;
            let _ = stop_tx.send(true);
            r
        },
        serving
    );
    served?;
    result
}

async fn caching(requests: usize, messages: u64, out: &Output) -> Result<i32> {
    let body = json!({"type": "wordcount", "params": {"messages": messages}});
    let times = with_server(async |api: ApiClient| {
        let mut times = Vec::new();
        for i in 0..requests {
            let started = Instant::now();
            let (status, answer) = api.submit(&body).await?;
            match status {
                200 if answer["cached"] == true => {}
                202 => {
                    let id = answer["job_id"].as_str().context("no job id")?;
                    api.wait_polling(id, Duration::from_millis(2)).await?;
                }
                _ => bail!("request {i}: unexpected answer {status}: {answer}"),
            }
            times.push((status == 200, started.elapsed().as_secs_f64()));
        }
        Ok(times)
    })
    .await?;
    let header = ["request", "answer", "response_s"];
    let rows: Vec<Vec<String>> = times
        .iter()
        .enumerate()
        .map(|(i, (cached, s))| {
            vec![
                (i + 1).to_string(),
                if *cached { "cached" } else { "computed" }.into(),
                format!("{s:.5}"),
            ]
        })
        .collect();
    out.csv("caching", &header, &rows)?;
    out.plot(
        &Chart {
            title: format!("Response time of {requests} identical requests (paper fig. 4)"),
            x_label: "request".into(),
            y_label: "response time, s".into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Log,
            series: vec![series(
                "sluice serve, local engine",
                times
                    .iter()
                    .enumerate()
                    .map(|(i, (_, s))| ((i + 1) as f64, *s))
                    .collect(),
                Style::LinesAndPoints,
            )],
            references: vec![(
                "paper: cached answer on AWS, about 0.6 s".into(),
                paper::CACHED_RESPONSE_S,
            )],
        },
        "caching",
    )?;
    let summary = json!({
        "experiment": "caching",
        "response_s": times.iter().map(|(_, s)| s).collect::<Vec<_>>(),
        "paper_cached_s": paper::CACHED_RESPONSE_S,
    });
    out.report("caching (paper fig. 4)", &header, &rows, summary);
    Ok(0)
}

/// Concurrent invocations per stage at every change, from the invocation records.
fn concurrency_timeline(run: &JobRun) -> BTreeMap<String, Vec<(f64, f64)>> {
    let t0 = run
        .records
        .iter()
        .map(|r| r.started_ms * 1000)
        .min()
        .unwrap_or(0)
        .min(run.started_ms * 1000);
    let mut events: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
    for r in &run.records {
        let start = r.started_ms * 1000 - t0;
        let e = events.entry(r.stage.clone()).or_default();
        e.push((start, 1));
        e.push((start + r.duration_us.max(1), -1));
    }
    events
        .into_iter()
        .map(|(stage, mut e)| {
            e.sort();
            let mut level = 0i64;
            let mut points = vec![(0.0, 0.0)];
            for (t, d) in e {
                level += d;
                points.push((t as f64 / 1e6, level as f64));
            }
            (stage, points)
        })
        .collect()
}

async fn automation(messages: u64, policy: Policy, out: &Output) -> Result<i32> {
    let (run, _) = one_job(wordcount(messages, json!({})), policy, "automation").await?;
    check_words(&run, messages)?;
    let timeline = concurrency_timeline(&run);
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for (stage, points) in &timeline {
        for (t, c) in points {
            rows.push(vec![format!("{t:.6}"), stage.clone(), c.to_string()]);
        }
        let peak = points.iter().map(|p| p.1).fold(0.0, f64::max);
        let n = run.records.iter().filter(|r| &r.stage == stage).count();
        table.push(vec![stage.clone(), n.to_string(), peak.to_string()]);
    }
    out.csv("automation", &["t_s", "stage", "concurrency"], &rows)?;
    out.plot(
        &Chart {
            title: format!(
                "Concurrent invocations per stage, {messages} messages, {policy} (paper fig. 5)"
            ),
            x_label: "time since the first invocation, s".into(),
            y_label: "concurrent invocations".into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            series: timeline
                .into_iter()
                .map(|(stage, points)| series(stage, points, Style::Steps))
                .collect(),
            references: vec![],
        },
        "automation",
    )?;
    let summary = json!({
        "experiment": "automation", "messages": messages, "policy": policy.to_string(),
        "job_s": run.job_s,
        "stages": table.iter().map(|r| json!({"stage": r[0], "invocations": r[1], "peak_concurrency": r[2]})).collect::<Vec<_>>(),
    });
    out.report(
        &format!("automation (paper fig. 5): job time {:.3} s", run.job_s),
        &["stage", "invocations", "peak_concurrency"],
        &table,
        summary,
    );
    Ok(0)
}

async fn queues(messages: u64, policy: Policy, every_ms: u64, out: &Output) -> Result<i32> {
    let request = wordcount(messages, json!({}));
    let id = Registry::default()
        .validate(&request)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .id;
    let scratch = Scratch::new("queues")?;
    let engine = Engine::open(scratch.path(), EngineOptions::default()).await?;
    let done = AtomicBool::new(false);
    let t0 = Instant::now();
    let sampler = async {
        let mut samples: Vec<(f64, String, u64, u64)> = Vec::new();
        while !done.load(Ordering::SeqCst) {
            if let Some(v) = record::load(engine.services.store.as_ref(), &id).await? {
                let t = t0.elapsed().as_secs_f64();
                for stage in &v.record.stages {
                    // The queue goes at teardown; the last samples are the ones before.
                    if let Ok(c) = engine.services.queues.counts(&stage.queue_url).await {
                        samples.push((t, stage.name.clone(), c.visible, c.in_flight));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
        }
        Ok::<_, anyhow::Error>(samples)
    };
    let (runs, samples) = tokio::join!(
        async {
            let r = run_jobs(&engine, &[(request.clone(), policy)]).await;
            done.store(true, Ordering::SeqCst);
            r
        },
        sampler
    );
    let run = runs?.pop().context("no run")?;
    check_words(&run, messages)?;
    let samples = samples?;
    let rows: Vec<Vec<String>> = samples
        .iter()
        .map(|(t, s, v, f)| vec![format!("{t:.4}"), s.clone(), v.to_string(), f.to_string()])
        .collect();
    out.csv("queues", &["t_s", "stage", "visible", "in_flight"], &rows)?;
    let mut per_stage: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (t, s, v, f) in &samples {
        per_stage
            .entry(s.clone())
            .or_default()
            .push((*t, (v + f) as f64));
    }
    let table: Vec<Vec<String>> = per_stage
        .iter()
        .map(|(s, p)| {
            let peak = p.iter().map(|x| x.1).fold(0.0, f64::max);
            vec![s.clone(), p.len().to_string(), peak.to_string()]
        })
        .collect();
    out.plot(
        &Chart {
            title: format!("Queue depth per stage, {messages} messages, {policy} (paper fig. 6)"),
            x_label: "time since submit, s".into(),
            y_label: "messages queued or in flight".into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            series: per_stage
                .into_iter()
                .map(|(stage, points)| series(stage, points, Style::Steps))
                .collect(),
            references: vec![],
        },
        "queues",
    )?;
    let summary = json!({
        "experiment": "queues", "messages": messages, "policy": policy.to_string(),
        "job_s": run.job_s, "every_ms": every_ms,
        "stages": table.iter().map(|r| json!({"stage": r[0], "samples": r[1], "peak_depth": r[2]})).collect::<Vec<_>>(),
    });
    out.report(
        &format!(
            "queues (paper fig. 6): job time {:.3} s, sampled every {every_ms} ms",
            run.job_s
        ),
        &["stage", "samples", "peak_depth"],
        &table,
        summary,
    );
    Ok(0)
}

async fn throughput(
    messages: u64,
    partition_sizes: &[u64],
    text_mib: u64,
    per_word: Option<(u64, u64, String)>,
    out: &Output,
) -> Result<i32> {
    let mut rows = Vec::new();
    let mut points = Vec::new();
    for &size in partition_sizes {
        let (run, usage) = one_job(
            wordcount(messages, json!({"partition_size": size})),
            // The policy the recorded figures (docs/bench) were made with.
            Policy::StaticProportional(150),
            "throughput",
        )
        .await?;
        check_words(&run, messages)?;
        let rate = messages as f64 / run.job_s.max(1e-9);
        points.push((size as f64, rate));
        rows.push(vec![
            "messages".into(),
            size.to_string(),
            fmt_s(run.job_s),
            fmt_s(run.wall_s),
            format!("{rate:.0}"),
            format!("{:.0}", messages as f64 / run.wall_s.max(1e-9)),
            fmt_usd(&usage.estimate()),
        ]);
    }
    let text = super::text::measure(text_mib).await?;
    rows.push(vec![
        "text".into(),
        format!("{} MiB", text.bytes >> 20),
        fmt_s(text.job_s),
        fmt_s(text.hand_loop_s),
        format!("{:.0} MiB/s", text.bytes as f64 / text.job_s / 1048576.0),
        format!(
            "{:.0} MiB/s",
            text.bytes as f64 / text.hand_loop_s / 1048576.0
        ),
        format!("ratio {:.2}", text.job_s / text.hand_loop_s),
    ]);
    let per_word = match per_word {
        Some((mib, vocabulary, faults)) => {
            let run = super::text::measure_per_word(mib, vocabulary, &faults).await?;
            rows.push(vec![
                "per-word".into(),
                format!("{} MiB, {} keys", run.bytes >> 20, run.keys),
                fmt_s(run.job_s),
                fmt_s(run.hand_loop_s),
                format!("{:.0} MiB/s", run.bytes as f64 / run.job_s / 1048576.0),
                format!(
                    "{:.0} MiB/s",
                    run.bytes as f64 / run.hand_loop_s / 1048576.0
                ),
                format!("ratio {:.2}", run.job_s / run.hand_loop_s),
            ]);
            Some(run.to_json())
        }
        None => None,
    };
    let header = [
        "what",
        "partition",
        "job_s",
        "wall_s/loop_s",
        "rate(job)",
        "rate(wall/loop)",
        "cost_usd/ratio",
    ];
    out.csv("throughput", &header, &rows)?;
    out.plot(
        &Chart {
            title: format!("Throughput, {messages} messages (durable, local engine)"),
            x_label: "messages per partition".into(),
            y_label: "messages per second".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            series: vec![series(
                "wordcount job",
                points.clone(),
                Style::LinesAndPoints,
            )],
            references: vec![
                ("target at partition 1: 50,000/s".into(), 50_000.0),
                ("target at partition 1000: 2,000,000/s".into(), 2_000_000.0),
            ],
        },
        "throughput",
    )?;
    let summary = json!({
        "experiment": "throughput",
        "messages": messages,
        "msgs_per_s": points.iter().map(|(p, r)| json!({"partition_size": p, "msgs_per_s": r})).collect::<Vec<_>>(),
        "text": text.to_json(),
        "per_word": per_word,
    });
    out.report("throughput", &header, &rows, summary);
    Ok(0)
}

/// Latency of a cached result over local HTTP: one job is run, then the same request is
/// sent `requests` times, one after another.
async fn cached_api(requests: usize, out: &Output) -> Result<i32> {
    let body = json!({"type": "wordcount", "params": {"messages": 2000}});
    let mut latencies = with_server(async |api: ApiClient| {
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
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
            if status != 200 || answer["cached"] != true {
                bail!("expected a cached 200, got {status}: {answer}");
            }
        }
        Ok(latencies)
    })
    .await?;
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    let rows = vec![vec![
        latencies.len().to_string(),
        format!("{:.3}", pct(0.50)),
        format!("{:.3}", pct(0.90)),
        format!("{:.3}", pct(0.99)),
        format!("{:.3}", latencies.last().copied().unwrap_or(0.0)),
    ]];
    let header = ["requests", "p50_ms", "p90_ms", "p99_ms", "max_ms"];
    out.csv("cached-api", &header, &rows)?;
    let summary = json!({
        "experiment": "cached-api",
        "requests": latencies.len(),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": latencies.last().copied().unwrap_or(0.0),
    });
    out.report("cached answers over local HTTP", &header, &rows, summary);
    Ok(0)
}
