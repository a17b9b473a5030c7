//! Keyed results of any size: a per-word count over text with many distinct words, exact
//! against a plain hash-map count, on the embedded engine and over the AWS wire protocol
//! (moto), with duplicates, crashes and daemon crashes; paged through the API and the CLI;
//! and nothing of the shuffle left behind.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use orchestration::aws::local_engine;
use orchestration::flow::Registry;
use orchestration::job::{JobId, JobRequest, JobStatus};
use orchestration::keyed::{self, Summary};
use orchestration::local::{Engine, EngineOptions};
use orchestration::ports::{Blobs, JobStore};
use orchestration::record;
use orchestration::submit::{submit, SubmitOptions};
use serde_json::{json, Value};

use crate::engine::run_until_done_within;
use crate::moto;
use crate::support::{sluice, sluice_json, Server};

const FAULTS: &str = "duplicate=0.2,crash=0.1,daemon-crash=0.2";

/// Text over `vocabulary` distinct words (every word at least once, then skewed repeats),
/// lines of 10 words, a few of them capitalized or with punctuation, cut into objects.
fn corpus(vocabulary: u64, repeats: u64) -> Vec<Vec<u8>> {
    let mut text = String::new();
    let mut n = 0u64;
    let mut word = |i: u64, text: &mut String| {
        n += 1;
        let w = match i % 97 {
            0 => format!("Word{i}"),
            1 => format!("w{i}!"),
            _ => format!("w{i}"),
        };
        text.push_str(&w);
        text.push(if n.is_multiple_of(10) { '\n' } else { ' ' });
    };
    for i in 0..vocabulary {
        word(i, &mut text);
    }
    // A skewed tail: small ranks often, as in natural text.
    let mut x = 7u64;
    for _ in 0..repeats {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (x >> 33) % vocabulary;
        word(r * r / vocabulary.max(1), &mut text);
    }
    text.push('\n');
    text.into_bytes()
        .chunks(300_000)
        .map(<[u8]>::to_vec)
        .collect::<Vec<_>>()
        .into_iter()
        .fold(Vec::<Vec<u8>>::new(), |mut parts, chunk| {
            // Cut at line ends: carry the tail of each chunk into the next object.
            match parts.last_mut() {
                Some(last) if !last.ends_with(b"\n") => {
                    let nl = chunk
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(chunk.len(), |p| p + 1);
                    last.extend_from_slice(&chunk[..nl]);
                    if nl < chunk.len() {
                        parts.push(chunk[nl..].to_vec());
                    }
                }
                _ => parts.push(chunk),
            }
            parts
        })
}

/// The plain count: words with a letter, lowercased.
fn hash_map_count(parts: &[Vec<u8>]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for p in parts {
        for w in std::str::from_utf8(p).unwrap().split_whitespace() {
            if w.chars().any(char::is_alphabetic) {
                *counts.entry(w.to_lowercase()).or_default() += 1;
            }
        }
    }
    counts
}

async fn put_corpus(blobs: &dyn Blobs, parts: &[Vec<u8>]) {
    for (i, p) in parts.iter().enumerate() {
        blobs
            .put(&format!("text/part-{i:05}.txt"), p.clone())
            .await
            .unwrap();
    }
}

fn per_word(reduce_partitions: u32) -> JobRequest {
    JobRequest {
        job_type: "wordcount".into(),
        params: json!({"input": "text/", "range_bytes": 65_536, "per_word": true,
                       "reduce_partitions": reduce_partitions}),
    }
}

/// The job is done, its per-word result is exactly `expected`, in both orders, and the
/// shuffle's objects are gone.
async fn assert_exact(
    store: &dyn JobStore,
    blobs: &dyn Blobs,
    id: &JobId,
    expected: &HashMap<String, u64>,
) {
    let rec = record::load(store, id).await.unwrap().unwrap().record;
    let outcome = rec.outcome.clone().unwrap();
    assert_eq!(rec.status, JobStatus::Done, "{:?}", outcome.error);
    let result = outcome.result.unwrap();
    let summary = Summary::from_result(&result["per_word"]).expect("a keyed summary");
    assert_eq!(summary.keys, expected.len() as u64);
    assert_eq!(summary.total, Some(json!(expected.values().sum::<u64>())));
    let got = keyed::read_all(blobs, &summary).await.unwrap();
    let want: BTreeMap<String, Value> = expected
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    assert!(
        got == want,
        "{} keys differ",
        got.iter().filter(|(k, v)| want.get(*k) != Some(v)).count()
    );
    // The by-value object: the same entries, largest first, ties by key.
    let by_value = blobs.get(&summary.by_value).await.unwrap().unwrap();
    let entries: Vec<(String, u64)> = by_value
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let e: Value = serde_json::from_slice(l).unwrap();
            (
                e["key"].as_str().unwrap().to_owned(),
                e["value"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(entries.len(), expected.len());
    assert!(entries
        .windows(2)
        .all(|w| (w[1].1, &w[0].0) <= (w[0].1, &w[1].0)));
    let top: Vec<(String, Value)> = entries
        .iter()
        .take(keyed::TOP_N)
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    assert_eq!(summary.top, top);
    // Nothing of the shuffle is left: only the result.
    let prefix = keyed::shuffle_prefix(id.as_str(), rec.attempt);
    assert!(
        blobs.list(&prefix).await.unwrap().is_empty(),
        "shuffle objects left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_word_counts_of_many_distinct_words_are_exact_under_faults() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        dir.path(),
        EngineOptions {
            faults: FAULTS.parse().unwrap(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let parts = corpus(60_000, 40_000);
    let expected = hash_map_count(&parts);
    assert_eq!(expected.len(), 60_000);
    put_corpus(engine.services.blobs.as_ref(), &parts).await;
    let s = submit(&engine.services, &per_word(4), &SubmitOptions::default())
        .await
        .unwrap();
    run_until_done_within(
        &engine,
        std::slice::from_ref(&s.id),
        Duration::from_secs(600),
    )
    .await;
    let rec = record::load(engine.services.store.as_ref(), &s.id)
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(rec.shuffle_partitions, Some(4));
    assert!(rec.total_partitions.unwrap() > 10);
    assert_exact(
        engine.services.store.as_ref(),
        engine.services.blobs.as_ref(),
        &s.id,
        &expected,
    )
    .await;
    // No stored item holds the keys: the record is small (the summary), whatever the result.
    let stored = serde_json::to_vec(&rec).unwrap();
    assert!(
        stored.len() < 16 * 1024,
        "the job record is {} bytes",
        stored.len()
    );
}

/// Over moto: the same per-word job through DynamoDB, SQS and S3 (the shuffle, the deltas
/// and the result objects), with faults. `SLUICE_KEYED_WORDS` scales the vocabulary (the
/// closing note's run used 1,000,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_word_counts_are_exact_over_the_aws_protocol() {
    let vocabulary = std::env::var("SLUICE_KEYED_WORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000u64);
    let dir = tempfile::tempdir().unwrap();
    let sdk = moto::sdk().await;
    let settings = orchestration::aws::AwsSettings::local(&moto::prefix("keyed"));
    let (engine, ports) = local_engine(
        dir.path(),
        &sdk,
        settings,
        true,
        Registry::default(),
        FAULTS.parse().unwrap(),
    )
    .await
    .expect("a local engine over the emulator");
    let parts = corpus(vocabulary, vocabulary / 2);
    let expected = hash_map_count(&parts);
    assert_eq!(expected.len() as u64, vocabulary);
    put_corpus(ports.blobs.as_ref(), &parts).await;
    let mut request = per_word(3);
    request.params["range_bytes"] = json!(1 << 20);
    let s = submit(&engine.services, &request, &SubmitOptions::default())
        .await
        .unwrap();
    // 10^6 words over moto take a while: the guard grows with the vocabulary.
    let guard = Duration::from_secs(600.max(vocabulary / 250));
    run_until_done_within(&engine, std::slice::from_ref(&s.id), guard).await;
    assert_exact(ports.store.as_ref(), ports.blobs.as_ref(), &s.id, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_cli_page_through_a_keyed_result() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let parts = corpus(3_000, 2_000);
    let expected = hash_map_count(&parts);
    let text = state.join("blobs").join("text");
    std::fs::create_dir_all(&text).unwrap();
    for (i, p) in parts.iter().enumerate() {
        std::fs::write(text.join(format!("part-{i:05}.txt")), p).unwrap();
    }
    let (run, out) = sluice_json(
        &state,
        &[
            "run",
            "wordcount",
            "--input",
            "text/",
            "--per-word",
            "--reduce-partitions",
            "3",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = run["job_id"].as_str().unwrap().to_owned();
    assert_eq!(run["result"]["per_word"]["keys"], expected.len());

    // The CLI writes the whole result, sorted by value.
    let file = dir.path().join("words.jsonl");
    let out = sluice(
        &state,
        &[
            "result",
            &id,
            "--out",
            file.to_str().unwrap(),
            "--order",
            "value",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), expected.len());
    let max = expected.values().max().unwrap();
    assert_eq!(lines[0]["value"], *max);

    // The API pages through it by key; the pages are the object, in order.
    let server = Server::start(&state, &[]);
    let http = reqwest::Client::new();
    let get = |q: String| {
        let request = http.get(server.url(&format!("/jobs/{id}/result{q}")));
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let mut cursor = "0".to_owned();
    let mut paged: Vec<(String, u64)> = Vec::new();
    loop {
        let (status, page) = get(format!(
            "?field=per_word&order=key&limit=1000&cursor={cursor}"
        ))
        .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["keys"], expected.len());
        for e in page["entries"].as_array().unwrap() {
            paged.push((
                e["key"].as_str().unwrap().to_owned(),
                e["value"].as_u64().unwrap(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    let mut want: Vec<(String, u64)> = expected.into_iter().collect();
    want.sort();
    assert_eq!(paged, want);
    // The whole object, as JSON lines.
    let whole = http
        .get(server.url(&format!("/jobs/{id}/result?field=per_word&format=jsonl")))
        .send()
        .await
        .unwrap();
    assert_eq!(whole.headers()["content-type"], "application/x-ndjson");
    assert_eq!(whole.text().await.unwrap().lines().count(), want.len());
    // Bad queries name their parameter, and a 4xx changes nothing.
    for (q, field) in [
        ("?field=nope", "field"),
        ("?order=key", "field"),
        ("?field=per_word&order=size", "order"),
        ("?field=per_word&limit=0", "limit"),
        ("?field=per_word&cursor=x", "cursor"),
        ("?field=per_word&cursor=3", "cursor"),
        ("?field=per_word&format=csv", "format"),
        ("?field=per_word&colour=red", "colour"),
    ] {
        let (status, body) = get(q.to_owned()).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert_eq!(body["error"]["field"], field, "{q}: {body}");
    }
    server.kill();
}
