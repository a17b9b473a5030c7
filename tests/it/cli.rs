//! The CLI as a user runs it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{sluice, sluice_json};

#[test]
fn wordcount_2000_is_exact_with_every_policy() {
    for policy in [
        "always-one",
        "static-proportional:150",
        "backlog",
        "backlog:target=30",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (out, status) = sluice_json(
            dir.path(),
            &[
                "run",
                "wordcount",
                "--messages",
                "2000",
                "--policy",
                policy,
                "--json",
            ],
        );
        assert!(status.status.success(), "{policy}: {out}");
        assert_eq!(out["status"], "done");
        assert_eq!(out["cached"], false);
        assert_eq!(out["result"]["total_words"], 10_000, "{policy}");
        assert_eq!(out["result"]["messages"], 2_000);
        assert_eq!(out["coverage"], 1.0);
        assert_eq!(out["stats"]["policy"], policy);
        let stages = out["stats"]["stages"].as_array().unwrap();
        let names: Vec<_> = stages
            .iter()
            .map(|s| s["stage"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["feed", "filter", "count", "reduce"]);
        assert_eq!(
            stages[3]["messages"], 20,
            "20 partitions of 100 reduced once each"
        );
        assert_eq!(out["job_id"].as_str().unwrap().len(), 64);
    }
}

#[test]
fn second_identical_run_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "wordcount",
        "--messages",
        "3000",
        "--per-word",
        "--json",
    ];
    let (first, _) = sluice_json(dir.path(), &args);
    let (second, out) = sluice_json(dir.path(), &args);
    assert!(out.status.success());
    assert_eq!(first["cached"], false);
    assert_eq!(second["cached"], true);
    assert_eq!(first["job_id"], second["job_id"]);
    assert_eq!(first["result"], second["result"]);
    // `per_word` is keyed: a summary here, the whole in the result objects.
    let per_word = &second["result"]["per_word"];
    assert_eq!(per_word["keys"], 4);
    assert_eq!(per_word["total"], 12_000);
    let top: Vec<(&str, u64)> = per_word["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["key"].as_str().unwrap(), e["value"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        top,
        [
            ("brown", 3000),
            ("fox", 3000),
            ("quick", 3000),
            ("the", 3000)
        ]
    );
    assert_eq!(second["result"]["total_words"], 15_000);

    // A different policy is the same job (the policy does not change the result).
    let (third, _) = sluice_json(
        dir.path(),
        &[
            "run",
            "wordcount",
            "--messages",
            "3000",
            "--per-word",
            "--policy",
            "always-one",
            "--json",
        ],
    );
    assert_eq!(third["cached"], true);
    // The text is part of the request: a different text is a different job.
    let (other, _) = sluice_json(
        dir.path(),
        &[
            "run",
            "wordcount",
            "--messages",
            "3000",
            "--text",
            "a b",
            "--json",
        ],
    );
    assert_eq!(other["cached"], false);
    assert_ne!(other["job_id"], first["job_id"]);
    assert_eq!(other["result"]["total_words"], 9_000);
}

#[test]
fn filter_keeps_only_matching_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = sluice_json(
        dir.path(),
        &[
            "run",
            "wordcount",
            "--messages",
            "120",
            "--partition-size",
            "7",
            "--contains",
            "fox 1",
            "--json",
        ],
    );
    // Messages "… fox 1", "… fox 10".."19", "… fox 100".."120": 1 + 10 + 21 = 32.
    assert_eq!(out["result"]["messages"], 32);
    assert_eq!(out["result"]["total_words"], 32 * 5);
}

#[test]
fn poison_partitions_fail_the_job_naming_them_unless_coverage_allows() {
    let dir = tempfile::tempdir().unwrap();
    let (out, status) = sluice_json(
        dir.path(),
        &[
            "run",
            "wordcount",
            "--messages",
            "10000",
            "--inject-faults",
            "poison=3;77",
            "--json",
        ],
    );
    assert!(!status.status.success());
    assert_eq!(out["status"], "failed");
    assert_eq!(out["dead_partitions"], serde_json::json!([3, 77]));
    let error = out["error"].as_str().unwrap();
    assert!(error.contains("partitions 3, 77"), "{error}");
    assert_eq!(out["coverage"], 0.98);
    // The 98 good partitions are still exactly counted.
    assert_eq!(out["result"]["total_words"], 98 * 100 * 5);

    // Submitting again with a lower bar retries the job as a new attempt, and succeeds.
    let (out, status) = sluice_json(
        dir.path(),
        &[
            "run",
            "wordcount",
            "--messages",
            "10000",
            "--inject-faults",
            "poison=3;77",
            "--min-coverage",
            "0.98",
            "--json",
        ],
    );
    assert!(status.status.success(), "{out}");
    assert_eq!(out["status"], "done");
    assert_eq!(out["cached"], false);
    assert_eq!(out["stats"]["attempt"], 2);
    assert_eq!(out["coverage"], 0.98);
    assert_eq!(out["dead_partitions"], serde_json::json!([3, 77]));
}

#[test]
fn bad_input_is_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "wordcount", "--messages", "0"], "params.messages"),
        (
            &["run", "wordcount", "--messages", "100000001"],
            "params.messages",
        ),
        (
            &[
                "run",
                "wordcount",
                "--messages",
                "5",
                "--partition-size",
                "0",
            ],
            "params.partition_size",
        ),
        (
            &["run", "wordcount", "--messages", "5", "--text", ""],
            "params.text",
        ),
        (
            &[
                "run",
                "wordcount",
                "--messages",
                "5",
                "--min-coverage",
                "1.5",
            ],
            "min_coverage",
        ),
        (
            &[
                "run",
                "wordcount",
                "--messages",
                "5",
                "--policy",
                "always-two",
            ],
            "unknown policy",
        ),
        (
            &[
                "run",
                "wordcount",
                "--messages",
                "5",
                "--inject-faults",
                "melt=1",
            ],
            "unknown fault",
        ),
        (&["status", "not-a-job-id"], "64 lowercase hex"),
    ];
    for (args, needle) in cases {
        let out = sluice(dir.path(), args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // Nothing was created by the rejected requests.
    let store = dir.path().join("blobs/results");
    assert!(!store.exists() || std::fs::read_dir(store).unwrap().next().is_none());
}

#[test]
fn status_and_result_read_the_stored_job() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = sluice_json(
        dir.path(),
        &["run", "wordcount", "--messages", "50", "--json"],
    );
    let id = run["job_id"].as_str().unwrap();
    let (status, out) = sluice_json(dir.path(), &["status", id, "--json"]);
    assert!(out.status.success());
    assert_eq!(status["status"], "done");
    assert_eq!(status["params"]["messages"], 50);
    assert_eq!(status["type"], "wordcount");
    assert_eq!(status["stages"].as_array().unwrap().len(), 4);
    let (result, out) = sluice_json(dir.path(), &["result", id, "--json"]);
    assert!(out.status.success());
    assert_eq!(result["result"], run["result"]);
    assert_eq!(result["cached"], true);
    let unknown = "0".repeat(64);
    let out = sluice(dir.path(), &["result", &unknown]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job"));
}

/// kill -9 in the middle of a run, then the same command again: nothing lost, nothing
/// counted twice.
#[test]
fn a_killed_run_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "wordcount",
        "--messages",
        "1000000",
        "--partition-size",
        "10",
        "--json",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_STATE_DIR", dir.path())
        .env("SLUICE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Compute the id the way the engine does, then wait until some partitions are reduced.
    let request = orchestration::job::JobRequest {
        job_type: "wordcount".into(),
        params: serde_json::json!({"messages": 1_000_000, "partition_size": 10, "per_word": false}),
    };
    let id = orchestration::flow::Registry::default()
        .validate(&request)
        .unwrap()
        .id;
    // Watch the job through its store (a read; no engine is opened): some partitions reduced.
    let store_path = dir.path().join(orchestration::local::engine::STORE_FILE);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let guard = Instant::now();
    loop {
        assert!(
            guard.elapsed() < Duration::from_secs(600),
            "the job never got under way"
        );
        let reduced = rt.block_on(async {
            let Ok(store) = orchestration::local::SqliteJobStore::open(&store_path) else {
                return 0;
            };
            let Ok(Some(v)) = orchestration::record::load(&store, &id).await else {
                return 0;
            };
            let reduced = orchestration::ledger::Ledger {
                store: &store,
                job: id.as_str(),
                attempt: v.record.attempt,
                shards: orchestration::services::Settings::default().aggregate_shards,
                keyed: None,
            }
            .reduced_count()
            .await
            .unwrap_or(0);
            if reduced > 0 {
                // Under way, and not finished: the kill lands mid-run.
                assert_eq!(v.record.status, orchestration::job::JobStatus::Running);
            }
            reduced
        });
        if reduced > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (out, status) = sluice_json(dir.path(), &args);
    assert!(status.status.success(), "{out}");
    assert_eq!(out["cached"], false, "the first run was interrupted");
    assert_eq!(out["result"]["total_words"], 5_000_000);
    assert_eq!(out["result"]["messages"], 1_000_000);
    assert_eq!(out["coverage"], 1.0);
}

/// Stored text, counted by reference: the same words as a plain count of the files, with
/// and without a filter (which needs the lines themselves).
#[test]
fn wordcount_counts_stored_text_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let out = sluice(
        dir.path(),
        &["gen", "text", "--mib", "3", "--part-mib", "1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = String::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.path().join("blobs/text"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3);
    for f in &files {
        text.push_str(&std::fs::read_to_string(f).unwrap());
    }
    let lines = text.lines().count() as u64;
    let words = text.split_whitespace().count() as u64;
    // Ranges of 64 KiB cut lines everywhere; every line is still counted once.
    let args = [
        "run",
        "wordcount",
        "--input",
        "text/",
        "--range-bytes",
        "65536",
        "--json",
    ];
    let (all, status) = sluice_json(dir.path(), &args);
    assert!(status.status.success(), "{all}");
    assert_eq!(all["result"]["total_words"], words);
    assert_eq!(all["result"]["messages"], lines);
    let ranges: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len().div_ceil(65536))
        .sum();
    assert_eq!(all["stats"]["total_partitions"], ranges);

    let mut filtered = args.to_vec();
    filtered.splice(2..2, ["--contains", "99"]);
    let (some, status) = sluice_json(dir.path(), &filtered);
    assert!(status.status.success(), "{some}");
    let kept: Vec<&str> = text.lines().filter(|l| l.contains("99")).collect();
    assert!(!kept.is_empty());
    assert_eq!(some["result"]["messages"], kept.len() as u64);
    assert_eq!(
        some["result"]["total_words"],
        kept.iter()
            .map(|l| l.split_whitespace().count() as u64)
            .sum::<u64>()
    );

    // `input` and `messages` do not mix.
    let out = sluice(
        dir.path(),
        &["run", "wordcount", "--input", "text/", "--messages", "5"],
    );
    assert!(!out.status.success());
}
