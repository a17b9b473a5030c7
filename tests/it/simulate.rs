//! `sluice simulate` as a user runs it: the AWS model's must-shows (the ramp and caps, the
//! budget shared by many jobs, backlog against the paper's static policy), on the built-in
//! profile so the numbers do not depend on this machine's speed, plus a calibrated run.

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
fn a_hundred_million_messages_stay_within_the_ramp_and_the_caps() {
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
    assert!(peak > 20.0, "the mappings scaled: peak {peak}");
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
fn a_thousand_jobs_share_the_budget_and_none_starves() {
    let dir = tempfile::tempdir().unwrap();
    let r = simulate(
        dir.path(),
        &[
            "--scenario",
            "thousand",
            "--policy",
            "static-proportional:150,backlog",
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
    ] {
        let out = sluice(dir.path(), &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
