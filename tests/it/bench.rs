//! `sluice bench` and the cost model, as a user runs them (small sizes: the numbers are
//! measured by hand, these check what is written and that every job was exact).

use std::path::Path;

use serde_json::Value;

use crate::support::{sluice_json, sluice_results};

fn bench(dir: &Path, args: &[&str]) -> Value {
    let mut full = vec!["bench"];
    full.extend_from_slice(args);
    sluice_results(dir, &full)
}

/// The CSV's rows (without the header), and that each plot exists as SVG and PNG.
fn written(dir: &Path, csv: &str, plots: &[&str]) -> Vec<String> {
    let results = dir.join("results");
    for plot in plots {
        let svg = std::fs::read_to_string(results.join(format!("{plot}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("</svg>"),
            "{plot}.svg"
        );
        let png = std::fs::read(results.join(format!("{plot}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}.png");
    }
    let text = std::fs::read_to_string(results.join(format!("{csv}.csv"))).unwrap();
    text.lines().skip(1).map(str::to_owned).collect()
}

#[test]
fn the_run_summary_models_what_the_job_would_cost_on_aws() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["run", "wordcount", "--messages", "2000", "--json"];
    let (out, status) = sluice_json(dir.path(), &args);
    assert!(status.status.success(), "{out}");
    let model = &out["stats"]["aws_cost_model"];
    let (estimate, usage) = (&model["estimate"], &model["usage"]);
    // Every stage invocation is a Lambda request, and so is every daemon tick.
    let invocations = out["stats"]["invocations"].as_u64().unwrap();
    let requests = estimate["lambda_requests"].as_u64().unwrap();
    assert!(requests > invocations, "{requests} vs {invocations}");
    let functions: Vec<&str> = usage["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap())
        .collect();
    assert_eq!(functions, ["daemon", "reduce", "source", "transform"]);
    // 20 partitions: each reduced in a transaction (2 units per item), markers included.
    assert!(usage["dynamodb_write_units"].as_u64().unwrap() >= 2 * 20);
    assert!(usage["sqs_requests"].as_u64().unwrap() >= 4);
    assert!(usage["sqs_empty_receives"].as_u64().unwrap() >= 5 * 5);
    assert!(
        usage["s3_write_requests"].as_u64().unwrap() >= 1,
        "the result"
    );
    let total = estimate["total_usd"].as_f64().unwrap();
    let parts: f64 = ["lambda_usd", "sqs_usd", "dynamodb_usd", "s3_usd"]
        .iter()
        .map(|k| estimate[k].as_f64().unwrap())
        .sum();
    assert!(
        (total - parts).abs() < 1e-12 && total > 0.0 && total < 0.01,
        "{estimate}"
    );
    // Modelled billed time is at least what was measured here.
    let measured_s = out["stats"]["billed_ms"].as_f64().unwrap() / 1e3;
    assert!(estimate["lambda_billed_s"].as_f64().unwrap() >= measured_s);

    // A cached answer runs nothing and is not billed as a job.
    let (cached, _) = sluice_json(dir.path(), &args);
    assert_eq!(cached["cached"], true);
    assert!(cached["stats"]["aws_cost_model"].is_null());
}

#[test]
fn bench_job_size_writes_its_table_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let summary = bench(
        dir.path(),
        &[
            "job-size",
            "--sizes",
            "10,200",
            "--policies",
            "always-one,static-proportional:150",
            "--process-runs",
            "1",
        ],
    );
    assert_eq!(summary["experiment"], "job-size");
    assert_eq!(summary["runs"], 4);
    assert_eq!(
        summary["whole_process_2000_s"]["runs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(summary["paper"]["static_proportional_150_job_s"], 61.0);
    let rows = written(
        dir.path(),
        "job-size",
        &["job-size-time", "job-size-billed"],
    );
    assert_eq!(rows.len(), 4);
    assert!(rows[0].starts_with("10,always-one,"), "{}", rows[0]);
    assert!(
        rows[3].starts_with("200,static-proportional:150,"),
        "{}",
        rows[3]
    );
}

#[test]
fn bench_concurrency_caching_automation_and_queues_write_their_figures() {
    let dir = tempfile::tempdir().unwrap();
    let summary = bench(
        dir.path(),
        &["concurrency", "--jobs", "1,3", "--messages", "500"],
    );
    assert_eq!(summary["spread"].as_array().unwrap().len(), 2);
    assert_eq!(
        written(dir.path(), "concurrency", &["concurrency"]).len(),
        1 + 3
    );

    let summary = bench(
        dir.path(),
        &["caching", "--requests", "3", "--messages", "500"],
    );
    assert_eq!(summary["response_s"].as_array().unwrap().len(), 3);
    let rows = written(dir.path(), "caching", &["caching"]);
    assert!(
        rows[0].contains(",computed,") && rows[1].contains(",cached,"),
        "{rows:?}"
    );

    let summary = bench(dir.path(), &["automation", "--messages", "2000"]);
    let stages: Vec<&str> = summary["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["count", "feed", "filter", "reduce"]);
    assert!(!written(dir.path(), "automation", &["automation"]).is_empty());

    let summary = bench(
        dir.path(),
        &["queues", "--messages", "20000", "--every-ms", "1"],
    );
    assert_eq!(summary["experiment"], "queues");
    written(dir.path(), "queues", &["queues"]);
}

#[test]
fn bench_throughput_counts_text_exactly_against_the_hand_loop() {
    let dir = tempfile::tempdir().unwrap();
    let summary = bench(
        dir.path(),
        &[
            "throughput",
            "--messages",
            "3000",
            "--partition-sizes",
            "1,100",
            "--text-mib",
            "2",
            "--per-word-mib",
            "2",
            "--vocabulary",
            "30000",
            "--per-word-faults",
            "duplicate=0.2,crash=0.1,daemon-crash=0.2",
        ],
    );
    let rates = summary["msgs_per_s"].as_array().unwrap();
    assert_eq!(rates.len(), 2);
    assert!(rates
        .iter()
        .all(|r| r["msgs_per_s"].as_f64().unwrap() > 0.0));
    // The bench fails unless the job's count equals the hand loop's.
    let text = &summary["text"];
    assert!(text["bytes"].as_u64().unwrap() >= 2 << 20);
    assert_eq!(
        text["words"].as_u64().unwrap(),
        text["lines"].as_u64().unwrap() * 21
    );
    assert!(text["ratio"].as_f64().unwrap() > 0.0);
    // The per-word count of a Zipf corpus: the bench fails unless every key's count
    // equals the hash-map loop's (here under faults).
    let per_word = &summary["per_word"];
    assert_eq!(per_word["keys"], 30_000);
    assert!(per_word["ratio"].as_f64().unwrap() > 0.0);
    // Rows: two partition sizes, the text, the per-word corpus.
    assert_eq!(written(dir.path(), "throughput", &["throughput"]).len(), 4);
}

/// `sluice bench fire-tweets` at a tiny size: the job and DuckDB (from the project's .venv)
/// count the same generated files, and their answers agree (the command fails otherwise).
#[test]
fn fire_tweets_bench_agrees_with_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let python = std::env::var("SLUICE_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let args = [
        "fire-tweets",
        "--tweets",
        "20000",
        "--days",
        "2",
        "--data",
        data,
        "--python",
        &python,
    ];
    let out = bench(dir.path(), &args);
    assert_eq!(out["experiment"], "fire-tweets");
    assert_eq!(out["tweets"], 40_000);
    let (sluice, duckdb) = (&out["sluice"], &out["duckdb"]);
    assert_eq!(sluice["cities"], duckdb["cities"]);
    assert_eq!(sluice["matching"], duckdb["matching"]);
    assert!(sluice["matching"].as_u64().unwrap() > 100, "{out}");
    assert!(
        !sluice["unattributed"].as_object().unwrap().is_empty(),
        "{out}"
    );
    assert!(out["ratio"].as_f64().unwrap() > 0.0);
    let rows = written(dir.path(), "fire-tweets", &[]);
    assert_eq!(rows.len(), 2);
    // The data is reused by a second run (same options): no generation, same answer.
    let again = bench(dir.path(), &args);
    assert_eq!(again["sluice"]["cities"], sluice["cities"]);
}
