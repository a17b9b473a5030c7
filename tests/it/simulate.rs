//! `sluice simulate` as a user runs it: the AWS model's must-shows (the ramp and caps, the
//! budget shared by many jobs, backlog against the paper's static policy, the stores'
//! limits on both ledger layouts, provisioned pollers), on the built-in profile so the
//! numbers do not depend on this machine's speed, plus a calibrated run.

use std::path::Path;

use serde_json::Value;

use crate::support::{sluice, sluice_results};

fn simulate(dir: &Path, args: &[&str]) -> Value {
    let mut full = vec!["simulate"];
    full.extend_from_slice(args);
    sluice_results(dir, &full)
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

#[test]
fn a_hundred_million_messages_stay_within_the_ramp_the_caps_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let r = simulate(
        dir.path(),
        &[
            "--messages",
            "100000000",
            "--partition-size",
            "1000",
            "--profile",
            "built-in",
        ],
    );
    assert!(num(&r, &["job_time_s"]) > 0.0);
    assert!(num(&r, &["billed_gb_s"]) > 0.0);
    assert!(num(&r, &["cost_usd"]) > 0.0);
    assert_eq!(num(&r, &["checks", "unfinished_jobs"]), 0.0);
    assert_eq!(num(&r, &["checks", "ramp_violations"]), 0.0);
    assert_eq!(num(&r, &["checks", "throttles"]), 0.0);
    assert!(num(&r, &["checks", "max_reserved_total"]) <= 900.0);
    // The timeline: per stage, never above 5 + 5/s since its first backlog, 1,250, or
    // the function's reserved concurrency.
    let timeline = r["timeline"].as_array().unwrap();
    assert!(timeline.len() > 20, "{} points", timeline.len());
    let mut first: std::collections::HashMap<String, f64> = Default::default();
    let mut peak = 0.0f64;
    for p in timeline {
        let (t, c) = (num(p, &["t"]), num(p, &["concurrency"]));
        let stage = p["stage"].as_str().unwrap().to_owned();
        if c > 0.0 || num(p, &["backlog"]) > 0.0 {
            first.entry(stage.clone()).or_insert(t);
        }
        let since = first.get(&stage).copied().unwrap_or(t);
        assert!(c <= 5.0 + 5.0 * (t - since + 1.0), "{p} above the ramp");
        assert!(c <= 1_250.0);
        if let Some(reserved) = p["reserved"].as_f64() {
            assert!(c <= reserved, "{p} above its reservation");
        }
        peak = peak.max(c);
    }
    assert!(peak > 5.0, "the mappings scaled: peak {peak}");
    // 10^5 partitions at about 2 write units each: the new on-demand table's 4,000 a
    // second bind, and the plan stays within them (no commit gives up).
    assert_eq!(num(&r, &["checks", "failed_invocations"]), 0.0);
    assert!(num(&r, &["store", "peak_table_write_units_per_s"]) <= 4_000.0);
    assert!(num(&r, &["store", "peak_pk_write_units_per_s"]) <= 1_000.0);
    assert!(num(&r, &["job_time_s"]) > 100_000.0 * 2.0 / 4_000.0);
    for plot in [
        "simulate-job-backlog-concurrency",
        "simulate-job-backlog-backlog",
    ] {
        let svg = std::fs::read_to_string(dir.path().join(format!("results/{plot}.svg"))).unwrap();
        assert!(svg.contains("</svg>"), "{plot}");
    }
    let csv = std::fs::read_to_string(dir.path().join("results/simulate-job-backlog.csv")).unwrap();
    assert_eq!(csv.lines().count(), timeline.len() + 1);
}

#[test]
fn the_stores_bound_the_ledger_before_and_after_keyed_aggregation() {
    // A per-word job of 10^7 messages (10^4 partitions of 1,000 lines) over 10^6 words.
    let dir = tempfile::tempdir().unwrap();
    let run = |ledger: &str| {
        simulate(
            dir.path(),
            &[
                "--messages",
                "10000000",
                "--partition-size",
                "1000",
                "--per-word",
                "--ledger",
                ledger,
                "--profile",
                "built-in",
            ],
        )
    };
    let before = run("single-key");
    let after = run("spread");
    // Before: the aggregate shards outgrow DynamoDB's 400 KB item after a few commits;
    // every later commit is refused and the partitions end in the DLQ.
    assert_eq!(before["store"]["layout"], "single-key");
    assert!(num(&before, &["store", "oversized_writes"]) > 0.0);
    assert!(num(&before, &["store", "max_item_bytes"]) > 409_600.0);
    assert!(
        num(&before["jobs"][0], &["dead_partitions"]) > 9_000.0,
        "{}",
        before["jobs"]
    );
    // After: nothing near the item limit, no key above its write limit, the partials
    // shuffled through S3 into R = 4 reduce partitions, every partition counted.
    assert_eq!(num(&after["jobs"][0], &["dead_partitions"]), 0.0);
    assert_eq!(num(&after, &["checks", "unfinished_jobs"]), 0.0);
    assert!(num(&after, &["store", "max_item_bytes"]) < 2_048.0);
    assert!(num(&after, &["store", "peak_pk_write_units_per_s"]) <= 1_000.0);
    assert!(num(&after, &["store", "peak_item_write_units_per_s"]) <= 1_000.0);
    assert!(num(&after, &["store", "peak_table_write_units_per_s"]) <= 4_000.0);
    assert!(num(&after, &["store", "peak_prefix_puts_per_s"]) <= 3_500.0);
    assert_eq!(num(&after, &["store", "shuffle_partitions"]), 4.0);
    assert!(num(&after, &["store", "s3_puts"]) >= 10_000.0);
    assert!(num(&after, &["estimate", "s3_usd"]) > 0.0);
}

#[test]
fn provisioned_pollers_skip_the_ramp_at_a_price() {
    let dir = tempfile::tempdir().unwrap();
    let r = simulate(
        dir.path(),
        &[
            "--messages",
            "50000000",
            "--policy",
            "backlog:table-wcu=30000,backlog:pollers=auto,table-wcu=30000",
            "--table-wcu",
            "30000",
            "--profile",
            "built-in",
        ],
    );
    let runs = r.as_array().expect("one report per policy");
    let (standard, provisioned) = (&runs[0], &runs[1]);
    assert_eq!(
        provisioned["policy"],
        "backlog:pollers=auto,table-wcu=30000"
    );
    assert_eq!(num(standard, &["estimate", "pollers_usd"]), 0.0);
    assert_eq!(num(standard, &["checks", "provisioned_mappings"]), 0.0);
    assert!(num(provisioned, &["checks", "provisioned_mappings"]) > 0.0);
    assert!(num(provisioned, &["checks", "epu_hours"]) > 0.0);
    assert!(num(provisioned, &["estimate", "pollers_usd"]) > 0.0);
    assert!(num(provisioned, &["job_time_s"]) < num(standard, &["job_time_s"]));
    for run in runs {
        assert_eq!(num(run, &["checks", "unfinished_jobs"]), 0.0);
        assert_eq!(num(run, &["checks", "ramp_violations"]), 0.0);
        assert!(num(run, &["checks", "max_reserved_total"]) <= 900.0);
    }
}

#[test]
fn a_thousand_jobs_share_the_budget_and_none_starves() {
    let dir = tempfile::tempdir().unwrap();
    let r = simulate(
        dir.path(),
        &[
            "--scenario",
            "thousand",
            // A table with warm throughput for all of them: the budget, not the store,
            // is what they share here.
            "--table-wcu",
            "1000000",
            "--policy",
            "static-proportional:150,backlog:table-wcu=1000000",
            "--profile",
            "built-in",
        ],
    );
    let runs = r.as_array().expect("one report per policy");
    assert_eq!(runs.len(), 2);
    for run in runs {
        let jobs = run["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1_000);
        assert!(
            jobs.iter().all(|j| j["finished_s"].is_number()),
            "{}: a job never finished",
            run["policy"]
        );
        assert!(jobs.iter().all(|j| num(j, &["dead_partitions"]) == 0.0));
        assert!(num(run, &["checks", "max_reserved_total"]) <= 900.0);
        assert_eq!(num(run, &["checks", "throttles"]), 0.0);
        assert!(num(run, &["checks", "max_account_concurrency"]) <= 1_000.0);
    }
    let (fixed, backlog) = (&runs[0], &runs[1]);
    assert_eq!(fixed["policy"], "static-proportional:150");
    assert!(num(backlog, &["cost_usd"]) <= num(fixed, &["cost_usd"]));
    assert!(num(backlog, &["job_time_s"]) <= num(fixed, &["job_time_s"]));
}

#[test]
fn the_paper_scenario_runs_calibrated_on_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let r = simulate(dir.path(), &["--scenario", "paper"]);
    let runs = r.as_array().unwrap();
    let policies: Vec<&str> = runs.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(
        policies,
        ["always-one", "static-proportional:150", "backlog"]
    );
    for run in runs {
        assert!(run["profile"]["source"]
            .as_str()
            .unwrap()
            .starts_with("calibrated"));
        assert_eq!(run["jobs"][0]["partitions"], 20);
        assert!(
            num(run, &["job_time_s"]) < 61.0,
            "beats the paper's 61 s: {run}"
        );
    }
}

#[test]
fn fire_tweets_runs_on_its_own_profile() {
    let dir = tempfile::tempdir().unwrap();
    let r = simulate(
        dir.path(),
        &[
            "--job",
            "fire-tweets",
            "--messages",
            "10000000",
            "--profile",
            "built-in",
        ],
    );
    assert!(r["profile"]["source"]
        .as_str()
        .unwrap()
        .contains("fire-tweets"));
    let stages: Vec<&str> = r["profile"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["feed", "match", "reduce"]);
    // 10^7 tweets in partitions of 193.
    assert_eq!(r["jobs"][0]["partitions"], 51_814);
    assert_eq!(num(&r, &["checks", "unfinished_jobs"]), 0.0);
    assert_eq!(num(&r, &["checks", "throttles"]), 0.0);
}

#[test]
fn bad_simulate_input_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (vec!["simulate", "--policy", "fastest"], "unknown policy"),
        (vec!["simulate", "--messages", "0"], "--messages"),
        (
            vec!["simulate", "--profile", "/nonexistent/profile.json"],
            "profile.json",
        ),
        (vec!["simulate", "--ledger", "sideways"], "ledger"),
        (vec!["simulate", "--vocabulary", "0"], "--vocabulary"),
        (vec!["simulate", "--table-wcu", "0"], "--table-wcu"),
        (vec!["simulate", "--s3-prefixes", "0"], "--s3-prefixes"),
        (
            vec!["simulate", "--policy", "backlog:pollers=sometimes"],
            "unknown policy",
        ),
    ] {
        let out = sluice(dir.path(), &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
