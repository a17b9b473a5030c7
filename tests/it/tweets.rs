//! The fire-tweets job end to end: generated tweets, counted by the engine, checked against
//! a plain loop over the generated files.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use orchestration::job::{JobId, JobRequest, JobStatus};
use orchestration::local::{Engine, EngineOptions, FileBlobs};
use orchestration::record;
use orchestration::submit::{submit, Disposition, SubmitOptions};
use orchestration::tweets::{generate, Day, GenOptions};
use serde_json::{json, Value};

use crate::engine::run_until_done_within;
use crate::real_tweets::{expected, Folder};
use crate::support::{sluice, sluice_json};

const FROM: &str = "2018-11-01";
const TO: &str = "2018-11-03";

fn day(s: &str) -> Day {
    s.parse().unwrap()
}

fn options(per_day: u64, gzip: bool) -> GenOptions {
    GenOptions {
        from: day(FROM),
        to: day(TO),
        per_day,
        per_part: 1_000,
        seed: 2018,
        gzip,
    }
}

/// What fire-tweets with the default keywords must answer, computed the obvious way: every
/// line of every object under each day's folder, counted by the plain loop that implements
/// the README's rules (`real_tweets::expected`). The day after the range is not generated.
fn expected_from_files(blob_root: &Path, country: &str, days: &[&str]) -> Value {
    let ymd = |d: &str| -> (i64, i64, i64) {
        let v: Vec<i64> = d.split('-').map(|x| x.parse().unwrap()).collect();
        (v[0], v[1], v[2])
    };
    let mut lines: Vec<(String, usize)> = Vec::new();
    let mut folders = Vec::new();
    for (i, d) in days.iter().enumerate() {
        let before = day(d).plus(-1).ymd();
        folders.push(Folder {
            day: ymd(d),
            before,
            before_in_range: i > 0,
        });
        let mut files: Vec<_> = std::fs::read_dir(blob_root.join("tweets").join(d))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let raw = std::fs::read(&path).unwrap();
            let bytes = if path.extension().is_some_and(|e| e == "gz") {
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(raw.as_slice())
                    .read_to_end(&mut out)
                    .unwrap();
                out
            } else {
                raw
            };
            let text = String::from_utf8(bytes).unwrap();
            lines.extend(text.lines().map(|l| (l.to_owned(), i)));
        }
    }
    let lines = lines.iter().map(|(l, i)| (l.as_str(), Some(&folders[*i])));
    // The default keywords: fire, "fire truck", "fire engine", #fire. As one-word keywords
    // they are these (a phrase holds the word `fire`; as hashtags, they are these).
    let keywords = ["fire", "#firetruck", "#fireengine"];
    expected(lines, country, &keywords, true)
}

fn fire_tweets(params: Value) -> JobRequest {
    JobRequest {
        job_type: "fire-tweets".into(),
        params,
    }
}

/// Runs the engine until every job has ended and been torn down.
async fn run_until_done(engine: &Engine, ids: &[JobId]) {
    run_until_done_within(engine, ids, Duration::from_secs(600)).await;
}

/// Generates 3 days × 3,000 tweets, runs fire-tweets for GB and for IE, and compares each
/// result with the plain count.
async fn count_and_compare(dir: &Path, faults: &str, gzip: bool) {
    let engine = Engine::open(
        dir,
        EngineOptions {
            faults: faults.parse().unwrap(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let summary = generate(engine.services.blobs.as_ref(), &options(3_000, gzip))
        .await
        .unwrap();
    assert_eq!((summary.tweets, summary.objects), (9_000, 9));

    let mut jobs = Vec::new();
    for country in ["GB", "IE"] {
        // 64 KiB partitions: ~60 of them per day, so many lines straddle a boundary (and a
        // gzip part is cut into several partitions).
        let request = fire_tweets(json!({"country": country, "from": FROM, "to": TO,
                                         "partition_bytes": 65_536}));
        let s = submit(&engine.services, &request, &SubmitOptions::default())
            .await
            .unwrap();
        assert_eq!(s.disposition, Disposition::Created);
        jobs.push((s.id, country));
    }
    let ids: Vec<JobId> = jobs.iter().map(|j| j.0.clone()).collect();
    run_until_done(&engine, &ids).await;

    let days = ["2018-11-01", "2018-11-02", "2018-11-03"];
    for (id, country) in &jobs {
        let rec = record::load(engine.services.store.as_ref(), id)
            .await
            .unwrap()
            .unwrap()
            .record;
        let outcome = rec.outcome.clone().unwrap();
        assert_eq!(
            rec.status,
            JobStatus::Done,
            "{country}: {:?}",
            outcome.error
        );
        assert_eq!(outcome.coverage, 1.0);
        // A range is the merge of one job per day: the days did the work.
        assert_eq!(rec.parts.len(), 3);
        let mut days_partitions = 0;
        let mut stats = Vec::new();
        engine.log.flush().await;
        for part in &rec.parts {
            let day = record::load(engine.services.store.as_ref(), part)
                .await
                .unwrap()
                .unwrap()
                .record;
            days_partitions += day.total_partitions.unwrap();
            stats.extend(engine.log.stats(part.as_str(), day.attempt).unwrap());
        }
        assert!(days_partitions >= 9, "{days_partitions}");
        // `cities` is keyed: compare the whole of it, read from its result object.
        let result =
            orchestration::keyed::expand(engine.services.blobs.as_ref(), &outcome.result.unwrap())
                .await
                .unwrap();
        let expected = expected_from_files(&dir.join("blobs"), country, &days);
        assert_eq!(result, expected, "{country} under `{faults}`");
        // The data is what it claims to be: fire is rare, there are misses to avoid, and a
        // few lines are broken.
        assert!(result["malformed_lines"].as_u64().unwrap() >= 1, "{result}");
        if !faults.is_empty() {
            // The faults did happen: deliveries beyond one per partition, failed invocations.
            let delivered: u64 = stats.iter().map(|s| s.messages + s.failed_messages).sum();
            let failed: u64 = stats.iter().map(|s| s.failed_invocations).sum();
            let planned = days_partitions * 2; // match + reduce
            assert!(delivered > planned && failed > 0, "{stats:?}");
        }
        if *country == "GB" {
            assert!(result["matching"].as_u64().unwrap() > 20, "{result}");
            assert!(result["cities"].as_object().unwrap().len() > 3, "{result}");
        }
    }
    // Nothing leaks: only the control queue and its DLQ, only the control mapping.
    let queues = engine.services.queues.list_queues("sluice-").await.unwrap();
    assert_eq!(queues.len(), 2, "{queues:?}");
    let mappings = engine.services.mappings.list_mappings(None).await.unwrap();
    assert_eq!(mappings.len(), 1, "{mappings:?}");
}

/// 1–3 Nov, then 2–4 Nov: the second request computes only 4 Nov; the days it shares are
/// served from their cached results (their invocation counts do not move).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_ranges_compute_only_the_missing_days() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default())
        .await
        .unwrap();
    let mut opts = options(2_000, false);
    opts.to = day("2018-11-04");
    generate(engine.services.blobs.as_ref(), &opts)
        .await
        .unwrap();
    let store = engine.services.store.clone();
    let job = |id: JobId| {
        let store = store.clone();
        async move {
            record::load(store.as_ref(), &id)
                .await
                .unwrap()
                .unwrap()
                .record
        }
    };
    let invocations = |id: JobId| {
        let log = engine.log.clone();
        async move {
            log.flush().await;
            log.stats(id.as_str(), 1)
                .unwrap()
                .iter()
                .map(|s| s.invocations)
                .sum::<u64>()
        }
    };

    let first = fire_tweets(json!({"country": "GB", "from": "2018-11-01", "to": "2018-11-03"}));
    let s1 = submit(&engine.services, &first, &SubmitOptions::default())
        .await
        .unwrap();
    run_until_done(&engine, std::slice::from_ref(&s1.id)).await;
    let r1 = job(s1.id.clone()).await;
    assert_eq!(r1.status, JobStatus::Done);
    assert_eq!(r1.parts_computed, [true, true, true]);
    let mut before = Vec::new();
    for part in &r1.parts {
        before.push(invocations(part.clone()).await);
    }

    let second = fire_tweets(json!({"country": "GB", "from": "2018-11-02", "to": "2018-11-04"}));
    let s2 = submit(&engine.services, &second, &SubmitOptions::default())
        .await
        .unwrap();
    run_until_done(&engine, std::slice::from_ref(&s2.id)).await;
    let r2 = job(s2.id.clone()).await;
    assert_eq!(r2.status, JobStatus::Done);
    assert_eq!(
        r2.parts_computed,
        [false, false, true],
        "only 4 Nov was computed"
    );
    assert_eq!(r2.parts[..2], r1.parts[1..]);
    for (part, n) in r1.parts[1..].iter().zip(&before[1..]) {
        assert_eq!(
            invocations(part.clone()).await,
            *n,
            "a shared day ran again"
        );
    }
    let new_day = invocations(r2.parts[2].clone()).await;
    assert!(new_day > 0);
    println!("invocations per day, 1-3 Nov: {before:?}; 2-4 Nov added {new_day} (4 Nov only)");

    // The merged result is the direct count of 2–4 Nov (its keyed cities read whole).
    let result = orchestration::keyed::expand(
        engine.services.blobs.as_ref(),
        &r2.outcome.unwrap().result.unwrap(),
    )
    .await
    .unwrap();
    let expected = expected_from_files(
        &dir.path().join("blobs"),
        "GB",
        &["2018-11-02", "2018-11-03", "2018-11-04"],
    );
    assert_eq!(result, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_tweets_match_a_plain_count() {
    let dir = tempfile::tempdir().unwrap();
    count_and_compare(dir.path(), "", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_tweets_are_exact_under_faults_on_gzip_parts() {
    let dir = tempfile::tempdir().unwrap();
    count_and_compare(dir.path(), "duplicate=0.2,crash=0.1,daemon-crash=0.2", true).await;
}

/// Same seed, same bytes (plain and gzip); another seed, other bytes; regenerating a day
/// with fewer parts leaves none of the old ones behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_tweets_are_deterministic() {
    async fn files(opts: &GenOptions) -> (tempfile::TempDir, BTreeMap<String, Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FileBlobs::open(dir.path()).unwrap();
        generate(&blobs, opts).await.unwrap();
        let mut out = BTreeMap::new();
        for key in orchestration::ports::Blobs::list(&blobs, "tweets/")
            .await
            .unwrap()
        {
            let bytes = std::fs::read(dir.path().join(&key)).unwrap();
            out.insert(key, bytes);
        }
        (dir, out)
    }
    for gzip in [false, true] {
        let opts = options(2_500, gzip);
        let (_a, first) = files(&opts).await;
        let (_b, second) = files(&opts).await;
        assert_eq!(first.len(), 9, "3 days of 3 parts");
        assert_eq!(first, second, "gzip: {gzip}");
        let mut other = opts.clone();
        other.seed += 1;
        let (_c, third) = files(&other).await;
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            third.keys().collect::<Vec<_>>()
        );
        assert!(first.values().zip(third.values()).all(|(a, b)| a != b));
    }

    let dir = tempfile::tempdir().unwrap();
    let blobs = FileBlobs::open(dir.path()).unwrap();
    generate(&blobs, &options(2_500, false)).await.unwrap();
    let mut fewer = options(900, true);
    fewer.to = fewer.from;
    let summary = generate(&blobs, &fewer).await.unwrap();
    assert_eq!(summary.removed_objects, 3);
    let keys = orchestration::ports::Blobs::list(&blobs, "tweets/2018-11-01/")
        .await
        .unwrap();
    assert_eq!(keys, ["tweets/2018-11-01/part-00000.jsonl.gz"]);
}

/// `sluice gen tweets` then `sluice run fire-tweets`, as a user would.
#[tokio::test]
async fn cli_generates_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (gen, out) = sluice_json(
        dir.path(),
        &[
            "gen",
            "tweets",
            "--from",
            FROM,
            "--to",
            TO,
            "--per-day",
            "2000",
            "--seed",
            "5",
            "--json",
        ],
    );
    assert!(out.status.success(), "{gen}");
    assert_eq!(gen["tweets"], 6_000);
    assert_eq!(gen["objects"], 3);

    let run = [
        "run",
        "fire-tweets",
        "--country",
        "GB",
        "--from",
        FROM,
        "--to",
        TO,
        "--partition-bytes",
        "200000",
        "--json",
    ];
    let (first, out) = sluice_json(dir.path(), &run);
    assert!(out.status.success(), "{first}");
    assert_eq!(first["status"], "done");
    let days = ["2018-11-01", "2018-11-02", "2018-11-03"];
    let expected = expected_from_files(&dir.path().join("blobs"), "GB", &days);
    let blobs = orchestration::local::FileBlobs::open(dir.path().join("blobs")).unwrap();
    let whole = orchestration::keyed::expand(&blobs, &first["result"])
        .await
        .unwrap();
    assert_eq!(whole, expected);
    let stages: Vec<_> = first["stats"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stages, ["feed", "match", "reduce", "merge"]);

    // The same request (keywords in another spelling) is the same job: cached.
    let mut again = run.to_vec();
    again.extend([
        "--keyword",
        "FIRE",
        "--keyword",
        "#Fire",
        "--keyword",
        "fire  truck",
    ]);
    again.extend(["--keyword", "Fire-Engine"]);
    let (second, out) = sluice_json(dir.path(), &again);
    assert!(out.status.success());
    assert_eq!(
        (second["cached"].as_bool(), &second["job_id"]),
        (Some(true), &first["job_id"])
    );

    // Bad parameters name the field and create nothing.
    let out = sluice(
        dir.path(),
        &[
            "run",
            "fire-tweets",
            "--country",
            "gb",
            "--from",
            FROM,
            "--to",
            TO,
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("params.country"), "{stderr}");

    // A day that was never generated fails the job by name, rather than counting zero.
    let (missing, out) = sluice_json(
        dir.path(),
        &[
            "run",
            "fire-tweets",
            "--country",
            "GB",
            "--from",
            FROM,
            "--to",
            "2018-11-04",
            "--json",
        ],
    );
    assert!(!out.status.success());
    assert_eq!(missing["status"], "failed");
    let error = missing["error"].as_str().unwrap_or_default();
    assert!(error.contains("tweets/2018-11-04/"), "{missing}");

    // Unless the request allows it: the day then counts as empty, and is named.
    let (allowed, out) = sluice_json(
        dir.path(),
        &[
            "run",
            "fire-tweets",
            "--country",
            "GB",
            "--from",
            TO,
            "--to",
            "2018-11-04",
            "--allow-missing-days",
            "--json",
        ],
    );
    assert!(out.status.success(), "{allowed}");
    assert_eq!(allowed["result"]["missing_days"], json!({"2018-11-04": 1}));
    let whole = orchestration::keyed::expand(&blobs, &allowed["result"])
        .await
        .unwrap();
    let mut expected = expected_from_files(&dir.path().join("blobs"), "GB", &[TO]);
    expected["missing_days"] = json!({"2018-11-04": 1});
    assert_eq!(whole, expected);
}
