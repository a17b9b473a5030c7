//! `sluice simulate`: the AWS model (`orchestration::sim`) run on the paper's sizes and
//! beyond, its stage costs calibrated from a job measured on the embedded engine.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use orchestration::cost;
use orchestration::local::InvocationOutcome;
use orchestration::policy::Policy;
use orchestration::sim::{
    self, JobSpec, Keyed, Layout, PerPartition, Profile, Report, Scenario, StageProfile, StoreSpec,
};
use serde_json::{json, Value};

use super::experiments::series;
use super::{fmt_s, one_job, paper, wordcount, Output, Scratch};
use crate::plot::{Chart, Scale, Style};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// The paper's 2,000 messages, beside its measured times.
    Paper,
    /// 10^9 messages in partitions of 1,000 (a year of tweets, at the word count's costs).
    Billion,
    /// 1,000 jobs of 100,000 messages submitted within 10 s, sharing one account.
    Thousand,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// A preset scenario; without one, a single job of --messages.
    #[arg(long, value_enum)]
    scenario: Option<Preset>,
    /// Messages of the job (each job, with --jobs).
    #[arg(long, default_value_t = 2_000)]
    messages: u64,
    /// Messages (lines, tweets) per partition: one SQS message each (default: the
    /// calibrated job's).
    #[arg(long)]
    partition_size: Option<u64>,
    /// The job type whose stages are calibrated and modelled.
    #[arg(long, value_enum, default_value = "wordcount")]
    job: Workload,
    /// Policies to compare, comma-separated (each runs the whole scenario): always-one,
    /// static-proportional:M, backlog, backlog:target=SECONDS,max-cost=USD,pollers=auto
    /// (pollers=auto: provisioned event pollers where the ramp binds).
    #[arg(long, value_delimiter = ',')]
    policy: Vec<String>,
    /// Where the ledger keeps its items: `spread` (markers over 32 partition keys, a keyed
    /// job's partials shuffled through S3) or `single-key` (every item of a job attempt
    /// under one partition key, the aggregate rewritten whole: the layout before).
    #[arg(long, default_value = "spread", value_parser = parse_layout)]
    ledger: Layout,
    /// A keyed job: counts per word, its words drawn from --vocabulary distinct words
    /// (Zipf), 10 to a message.
    #[arg(long)]
    per_word: bool,
    #[arg(long, default_value_t = 1_000_000)]
    vocabulary: u64,
    /// Write units a second the job table serves from the start: 4,000 for an on-demand
    /// table; more where warm throughput was set ahead.
    #[arg(long, default_value_t = 4_000)]
    table_wcu: u32,
    /// S3 prefixes each kind of shuffle object is spread over (the design: 1).
    #[arg(long, default_value_t = 1)]
    s3_prefixes: u32,
    /// Jobs submitted together, spread evenly over --spread-s seconds.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    #[arg(long, default_value_t = 0.0)]
    spread_s: f64,
    /// Reserved concurrency all jobs may hold together (0: reserve none).
    #[arg(long, default_value_t = 900)]
    budget: u32,
    /// The stage costs to use instead of measuring them: a JSON profile (as `--json`
    /// prints under `profile`), or `built-in`.
    #[arg(long)]
    profile: Option<String>,
    /// Where to write CSV files and plots.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Print one JSON object (one run) or array (several policies) on stdout.
    #[arg(long)]
    json: bool,
}

struct Plan {
    name: &'static str,
    jobs: usize,
    spread_s: f64,
    messages: u64,
    partition_size: Option<u64>,
    workload: Workload,
    policies: Vec<Policy>,
    /// The paper's measured job time per policy, where it has one.
    paper_s: BTreeMap<String, f64>,
}

fn plan(args: &SimulateArgs) -> Result<Plan> {
    let policies = |default: &[&str]| -> Result<Vec<Policy>> {
        if args.policy.is_empty() {
            return default
                .iter()
                .map(|p| p.parse().map_err(anyhow::Error::from))
                .collect();
        }
        parse_policies(&args.policy)
    };
    Ok(match args.scenario {
        Some(Preset::Paper) => Plan {
            name: "paper",
            jobs: 1,
            spread_s: 0.0,
            messages: 2_000,
            partition_size: Some(100),
            workload: Workload::Wordcount,
            policies: policies(&["always-one", "static-proportional:150", "backlog"])?,
            paper_s: BTreeMap::from([
                ("always-one".to_owned(), paper::ALWAYS_ONE_JOB_S),
                (
                    "static-proportional:150".to_owned(),
                    paper::STATIC_150_JOB_S,
                ),
            ]),
        },
        Some(Preset::Billion) => Plan {
            name: "billion",
            jobs: 1,
            spread_s: 0.0,
            messages: 1_000_000_000,
            partition_size: Some(1_000),
            workload: Workload::Wordcount,
            policies: policies(&["static-proportional:150", "backlog"])?,
            paper_s: BTreeMap::new(),
        },
        Some(Preset::Thousand) => Plan {
            name: "thousand",
            jobs: 1_000,
            spread_s: 10.0,
            messages: 100_000,
            partition_size: Some(100),
            workload: Workload::Wordcount,
            policies: policies(&["static-proportional:150", "backlog"])?,
            paper_s: BTreeMap::new(),
        },
        None => Plan {
            name: "job",
            jobs: args.jobs.max(1),
            spread_s: args.spread_s.max(0.0),
            messages: args.messages,
            partition_size: args.partition_size,
            workload: args.job,
            policies: policies(&["backlog"])?,
            paper_s: BTreeMap::new(),
        },
    })
}

/// Policies from the comma-separated list, where a goal's own parts (`backlog:target=60,
/// max-cost=0.5`) belong to the policy before them.
pub(super) fn parse_policies(pieces: &[String]) -> Result<Vec<Policy>> {
    let mut merged: Vec<String> = Vec::new();
    for piece in pieces {
        match merged.last_mut() {
            Some(last) if piece.contains('=') && !piece.contains(':') => {
                last.push(',');
                last.push_str(piece);
            }
            _ => merged.push(piece.clone()),
        }
    }
    merged
        .iter()
        .map(|p| p.parse().map_err(anyhow::Error::from))
        .collect()
}

fn parse_layout(s: &str) -> Result<Layout, String> {
    s.parse()
}

pub async fn run(args: SimulateArgs) -> Result<i32> {
    if args.messages == 0 || args.partition_size == Some(0) {
        bail!("--messages and --partition-size must be positive");
    }
    if args.vocabulary == 0 {
        bail!("--vocabulary must be positive");
    }
    if args.table_wcu == 0 {
        bail!("--table-wcu must be positive");
    }
    if !(1..=1_000).contains(&args.s3_prefixes) {
        bail!("--s3-prefixes must be within 1..=1000");
    }
    let store = StoreSpec {
        layout: args.ledger,
        keyed: args.per_word.then_some(Keyed {
            vocabulary: args.vocabulary,
            words_per_message: sim::model::WORDS_PER_MESSAGE,
        }),
        table_write_units: f64::from(args.table_wcu),
        s3_prefixes: args.s3_prefixes,
    };
    let mut plan = plan(&args)?;
    let profile = match args.profile.as_deref() {
        Some("built-in") => match plan.workload {
            Workload::Wordcount => Profile::wordcount(),
            Workload::FireTweets => Profile::fire_tweets(),
        },
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            serde_json::from_str(&text).with_context(|| format!("{path} is not a profile"))?
        }
        None => calibrate_apart(plan.workload).await?,
    };
    let partition_size = *plan.partition_size.get_or_insert(profile.partition_size);
    let out = Output {
        dir: args.out.clone(),
        json: args.json,
    };
    out.prepare()?;
    let mut reports = Vec::new();
    for policy in &plan.policies {
        let jobs = (0..plan.jobs)
            .map(|i| JobSpec {
                name: format!("job{i}"),
                at_s: if plan.jobs > 1 {
                    plan.spread_s * i as f64 / plan.jobs as f64
                } else {
                    0.0
                },
                messages: plan.messages,
                partition_size,
                policy: *policy,
            })
            .collect();
        let mut scenario = Scenario::new(jobs, profile.clone());
        scenario.budget = (args.budget > 0).then_some(args.budget);
        scenario.store = store.clone();
        let scratch = Scratch::new("simulate")?;
        let started = std::time::Instant::now();
        let report = sim::run(scenario, scratch.path()).await?;
        let wall_s = started.elapsed().as_secs_f64();
        write_timeline(&out, &plan, policy, &report)?;
        reports.push((policy.to_string(), report, wall_s));
    }
    print(&out, &plan, &profile, &store, &reports);
    Ok(0)
}

/// [`calibrate`] on a runtime of its own, shut down after: the engine's background tasks
/// must not share the simulation's threads.
async fn calibrate_apart(workload: Workload) -> Result<Profile> {
    tokio::task::spawn_blocking(move || -> Result<Profile> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let profile = rt.block_on(calibrate(workload));
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        profile
    })
    .await?
}

/// What job type a calibration measures (`--job`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// `wordcount` over synthetic text: messages are lines.
    Wordcount,
    /// `fire-tweets` over generated tweets: messages are tweets, partitions byte ranges.
    FireTweets,
}

/// Measures a job type's stages on the embedded engine, with the `backlog` policy so that
/// batch sizes vary: a word count of 100,000 messages, or fire-tweets over a generated day
/// of 40,000 tweets in 256 KiB partitions. Per stage, a least-squares line through
/// (units, duration) of its invocations gives the fixed and per-unit time; the modelled
/// round trips of the calls each function made are added per unit.
pub async fn calibrate(workload: Workload) -> Result<Profile> {
    let backlog: Policy = "backlog".parse()?;
    match workload {
        Workload::Wordcount => {
            const MESSAGES: u64 = 100_000;
            // wordcount's default partition size.
            const PARTITION_SIZE: u64 = 100;
            let (run, usage) =
                one_job(wordcount(MESSAGES, json!({})), backlog, "calibrate").await?;
            fit_profile(
                &format!("wordcount of {MESSAGES} messages"),
                &run,
                &usage,
                &["feed", "filter", "count", "reduce"],
                PARTITION_SIZE,
            )
        }
        Workload::FireTweets => {
            use orchestration::tweets::generator::{generate, GenOptions};
            let scratch = Scratch::new("calibrate-tweets")?;
            let blobs = orchestration::local::FileBlobs::open(
                scratch.path().join(orchestration::local::engine::BLOBS_DIR),
            )?;
            let options = GenOptions {
                // One day: a longer range is a composite job, one part per day.
                from: "2018-11-01".parse()?,
                to: "2018-11-01".parse()?,
                per_day: 40_000,
                per_part: 5_000,
                seed: 2018,
                gzip: false,
            };
            let summary = generate(&blobs, &options).await?;
            drop(blobs);
            let request = orchestration::job::JobRequest {
                job_type: "fire-tweets".into(),
                params: json!({"country": "GB", "from": "2018-11-01", "to": "2018-11-01",
                               "partition_bytes": 262_144}),
            };
            let (run, usage) = super::job_in(scratch.path(), request, backlog).await?;
            let partitions: u64 = run
                .records
                .iter()
                .filter(|r| r.stage == "reduce" && r.outcome == InvocationOutcome::Ok)
                .map(|r| u64::from(r.batch_size))
                .sum();
            fit_profile(
                &format!("fire-tweets over {} generated tweets", summary.tweets),
                &run,
                &usage,
                &["feed", "match", "reduce"],
                summary.tweets.div_ceil(partitions.max(1)),
            )
        }
    }
}

/// A profile from one measured job: `stages` in flow order (the first the source, the last
/// the reduce), `partition_size` messages per partition.
fn fit_profile(
    what: &str,
    run: &super::JobRun,
    usage: &cost::Usage,
    stages: &[&str],
    partition_size: u64,
) -> Result<Profile> {
    fn ok<'a>(
        run: &'a super::JobRun,
        name: &'a str,
    ) -> impl Iterator<Item = &'a orchestration::local::InvocationRecord> {
        run.records
            .iter()
            .filter(move |r| r.stage == name && r.outcome == InvocationOutcome::Ok)
    }
    let last = stages.last().copied().unwrap_or("reduce");
    let partitions: u64 = ok(run, last).map(|r| u64::from(r.batch_size)).sum();
    let tasks: u64 = ok(run, stages[0]).map(|r| u64::from(r.batch_size)).sum();
    if partitions == 0 || tasks == 0 {
        bail!(
            "calibration: the {what} job ran no partitions (result: {}; stages run: {:?})",
            run.result,
            run.records
                .iter()
                .map(|r| r.stage.as_str())
                .collect::<std::collections::BTreeSet<_>>()
        );
    }
    let mut profiles = Vec::new();
    for (i, name) in stages.iter().enumerate() {
        let is_source = i == 0;
        let function = ok(run, name)
            .next()
            .map(|r| r.function.clone())
            .with_context(|| format!("calibration: no invocations of {name}"))?;
        let points: Vec<(f64, f64)> = ok(run, name)
            .map(|r| {
                let units = if is_source {
                    f64::from(r.batch_size) * partitions as f64 / tasks as f64
                } else {
                    f64::from(r.batch_size)
                };
                (units, r.duration_us as f64 / 1e3)
            })
            .collect();
        let (fixed_ms, per_unit_ms) = fit(&points);
        let units: f64 = points.iter().map(|p| p.0).sum();
        let network_ms = usage
            .functions
            .iter()
            .find(|f| f.function == function)
            .map(|f| f.modelled_ms() - f.measured_ms as f64)
            .unwrap_or(0.0);
        profiles.push(StageProfile {
            name: (*name).into(),
            is_source,
            fixed_ms,
            per_unit_ms: per_unit_ms + network_ms / units.max(1.0),
            // A transform reads every record; a source emits, a reduce merges, per
            // partition.
            per_record: !is_source && i + 1 < stages.len(),
            memory_mb: cost::memory_mb(&function),
            function,
        });
    }
    let per = |n: u64| n as f64 / partitions as f64;
    Ok(Profile {
        source: format!(
            "calibrated: {what} on the embedded engine ({} invocations), plus modelled API round trips",
            run.records.len()
        ),
        partition_size,
        stages: profiles,
        per_partition: PerPartition {
            sqs_requests: per(usage.sqs_requests),
            dynamodb_write_units: per(usage.dynamodb_write_units),
            dynamodb_read_units: per(usage.dynamodb_read_units),
            s3_write_requests: per(usage.s3_write_requests),
            s3_read_requests: per(usage.s3_read_requests),
        },
    })
}

/// Least squares `y = a + b x`, both clamped at 0; with one distinct x, all of y is per unit.
fn fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx <= f64::EPSILON * n || mx <= 0.0 {
        return (0.0, if mx > 0.0 { my / mx } else { 0.0 });
    }
    let b = (sxy / sxx).max(0.0);
    let a = my - b * mx;
    if a < 0.0 {
        (0.0, my / mx)
    } else {
        (a, b)
    }
}

fn write_timeline(out: &Output, plan: &Plan, policy: &Policy, report: &Report) -> Result<()> {
    let stem = format!(
        "simulate-{}-{}",
        plan.name,
        policy.to_string().replace([':', ',', '='], "-")
    );
    let rows: Vec<Vec<String>> = report
        .timeline
        .iter()
        .map(|p| {
            vec![
                format!("{:.3}", p.t),
                p.stage.clone(),
                p.concurrency.to_string(),
                p.backlog.to_string(),
                p.reserved.map(|r| r.to_string()).unwrap_or_default(),
            ]
        })
        .collect();
    out.csv(
        &stem,
        &["t_s", "stage", "concurrency", "backlog", "reserved"],
        &rows,
    )?;
    let mut concurrency: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut backlog: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for p in &report.timeline {
        concurrency
            .entry(&p.stage)
            .or_default()
            .push((p.t, f64::from(p.concurrency)));
        backlog
            .entry(&p.stage)
            .or_default()
            .push((p.t, p.backlog as f64));
    }
    let chart = |title: String, y: &str, data: BTreeMap<&str, Vec<(f64, f64)>>, scale| Chart {
        title,
        x_label: "simulated time, s".into(),
        y_label: y.into(),
        x_scale: Scale::Linear,
        y_scale: scale,
        series: data
            .into_iter()
            .map(|(stage, points)| series(stage, points, Style::Steps))
            .collect(),
        references: vec![],
    };
    let what = format!(
        "{} × {} messages, {policy} (simulated AWS)",
        plan.jobs, plan.messages
    );
    out.plot(
        &chart(
            format!("Concurrent invocations per stage, {what}"),
            "concurrent invocations",
            concurrency,
            Scale::Linear,
        ),
        &format!("{stem}-concurrency"),
    )?;
    out.plot(
        &chart(
            format!("Queue backlog per stage, {what}"),
            "messages visible or in flight",
            backlog,
            Scale::Linear,
        ),
        &format!("{stem}-backlog"),
    )?;
    Ok(())
}

fn print(
    out: &Output,
    plan: &Plan,
    profile: &Profile,
    store: &StoreSpec,
    reports: &[(String, Report, f64)],
) {
    if out.json {
        let one = |(policy, report, wall_s): &(String, Report, f64)| -> Value {
            let mut v = serde_json::to_value(report).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("policy".into(), json!(policy));
                o.insert("scenario".into(), json!(plan.name));
                o.insert("wall_s".into(), json!(wall_s));
                o.insert("profile".into(), json!(profile));
            }
            v
        };
        match reports {
            [single] => println!("{}", one(single)),
            many => println!("{}", Value::Array(many.iter().map(one).collect())),
        }
        return;
    }
    let header = [
        "policy",
        "jobs",
        "job time",
        "slowest job",
        "paper",
        "billed GB-s",
        "Lambda requests",
        "cost",
        "max reserved",
        "throttles",
        "failed",
        "dead",
        "wall",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|(policy, r, wall_s)| {
            let slowest = r
                .jobs
                .iter()
                .filter_map(|j| j.job_time_s)
                .fold(0.0, f64::max);
            vec![
                policy.clone(),
                format!(
                    "{}/{}",
                    r.jobs.len() as u64 - r.checks.unfinished_jobs,
                    r.jobs.len()
                ),
                fmt_s(r.job_time_s),
                fmt_s(slowest),
                plan.paper_s
                    .get(policy)
                    .map(|s| fmt_s(*s))
                    .unwrap_or_else(|| "-".into()),
                format!("{:.1}", r.billed_gb_s),
                r.requests.lambda.to_string(),
                format!("${:.4}", r.cost_usd),
                r.checks.max_reserved_total.to_string(),
                r.checks.throttles.to_string(),
                r.checks.failed_invocations.to_string(),
                r.jobs
                    .iter()
                    .map(|j| j.dead_partitions)
                    .sum::<u64>()
                    .to_string(),
                fmt_s(*wall_s),
            ]
        })
        .collect();
    out.report(
        &format!(
            "simulate {}: {} × {} messages in partitions of {} ({})",
            plan.name,
            plan.jobs,
            plan.messages,
            plan.partition_size.unwrap_or(profile.partition_size),
            profile.source
        ),
        &header,
        &rows,
        Value::Null,
    );
    let header = [
        "policy",
        "WCU/s: key",
        "hottest key",
        "item",
        "table",
        "S3/s per prefix: PUT",
        "GET",
        "throttled: DynamoDB",
        "S3",
        "gave up",
        "largest item",
        "oversized",
        "pollers",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|(policy, r, _)| {
            let s = &r.store;
            vec![
                policy.clone(),
                format!("{:.0}", s.peak_pk_write_units_per_s),
                s.peak_pk.clone(),
                format!("{:.0}", s.peak_item_write_units_per_s),
                format!("{:.0}", s.peak_table_write_units_per_s),
                format!("{:.0}", s.peak_prefix_puts_per_s),
                format!("{:.0}", s.peak_prefix_gets_per_s),
                s.dynamodb_throttles.to_string(),
                s.s3_slowdowns.to_string(),
                s.failed_calls.to_string(),
                format!("{} B", s.max_item_bytes),
                s.oversized_writes.to_string(),
                format!("${:.4}", r.estimate.pollers_usd),
            ]
        })
        .collect();
    out.report(
        &format!(
            "stores: ledger {}{}; table {:.0} WCU/s at first; {} S3 prefix(es) per kind (peaks per second)",
            store.layout,
            store
                .keyed
                .map(|k| format!(", per word over {} words", k.vocabulary))
                .unwrap_or_default(),
            store.table_write_units,
            store.s3_prefixes,
        ),
        &header,
        &rows,
        Value::Null,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_goal_with_both_parts_stays_one_policy() {
        let pieces: Vec<String> =
            "always-one,backlog:target=60,max-cost=0.5,static-proportional:150"
                .split(',')
                .map(str::to_owned)
                .collect();
        let policies: Vec<String> = parse_policies(&pieces)
            .unwrap()
            .iter()
            .map(Policy::to_string)
            .collect();
        assert_eq!(
            policies,
            [
                "always-one",
                "backlog:target=60,max-cost=0.5",
                "static-proportional:150"
            ]
        );
        assert!(parse_policies(&["max-cost=1".to_owned()]).is_err());
    }

    #[test]
    fn the_fit_separates_fixed_and_per_unit_time() {
        let (a, b) = fit(&[(1.0, 3.0), (2.0, 5.0), (4.0, 9.0)]);
        assert!((a - 1.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9, "{a} {b}");
        // One batch size only: all of it is per unit.
        assert_eq!(fit(&[(10.0, 5.0), (10.0, 7.0)]), (0.0, 0.6));
        // A negative intercept is clamped: the line through the origin and the mean.
        assert_eq!(fit(&[(1.0, 0.0), (3.0, 4.0)]), (0.0, 1.0));
    }
}
