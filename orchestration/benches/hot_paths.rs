//! Criterion benchmarks for the engine's hot paths: the embedded queue round trip, the
//! exactly-once ledger commit, the word-count transform, the stage envelope, and
//! fire-tweets' record stage built in and as a definition (the same lines, one thread).
//!
//! `cargo bench -p orchestration --bench hot_paths` (add `-- <filter>` for one group).
//! Every store lives in a fresh tempdir; async calls run on a current-thread tokio runtime.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use orchestration::components::{Sum, SyntheticText, Transform, WordCount};
use orchestration::envelope::Envelope;
use orchestration::ledger::Ledger;
use orchestration::local::{FileBlobs, SqliteJobStore, SqliteQueues};
use orchestration::ports::{OutgoingMessage, QueueSpec, Queues};

/// A job id as the engine makes them: the hex SHA-256 of the request.
const JOB: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The `wordcount` job's default feed: `partition_size` messages "the quick brown fox {i}".
fn partition_lines(partition: u64, partition_size: u64) -> Vec<String> {
    SyntheticText {
        messages: (partition + 1) * partition_size,
        text: "the quick brown fox".into(),
        partition_size,
    }
    .lines(partition)
}

/// The message a transform stage receives: one partition of the default feed.
fn stage_envelope(partition: u64) -> Envelope {
    Envelope {
        job: JOB.into(),
        attempt: 1,
        stage: "word-count".into(),
        partition,
        payload: Some(json!({ "lines": partition_lines(partition, 100) })),
        payload_ref: None,
    }
}

/// What the word-count stage sends to the reduce: a partition's partial.
fn partial_envelope(partition: u64) -> Envelope {
    Envelope {
        job: JOB.into(),
        attempt: 1,
        stage: "sum".into(),
        partition,
        payload: Some(json!({ "messages": 100, "total_words": 500 })),
        payload_ref: None,
    }
}

fn queue(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let queues = rt.block_on(async {
        SqliteQueues::open(&dir.path().join("queues.db")).expect("open queues")
    });
    let url = rt
        .block_on(queues.create_queue(&QueueSpec {
            name: "bench-count".into(),
            visibility_timeout: Duration::from_secs(30),
            dead_letter: None,
        }))
        .expect("create queue");
    let blobs = FileBlobs::open(dir.path().join("blobs")).expect("open blobs");
    let body = rt
        .block_on(stage_envelope(7).encode(&blobs))
        .expect("encode body");

    let mut group = c.benchmark_group("queue");
    // The local adapter takes any `max`, as the local ESM runtime asks for a whole
    // BatchSize at once; the AWS adapter splits a receive into calls of 10.
    for batch in [10usize, 100] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("send_receive_delete", batch),
            &batch,
            |b, &batch| {
                b.iter(|| {
                    rt.block_on(async {
                        let out = vec![OutgoingMessage::new(body.clone()); batch];
                        queues.send(&url, out).await.expect("send");
                        let got = queues
                            .receive(&url, batch, Duration::ZERO, None)
                            .await
                            .expect("receive");
                        assert_eq!(got.len(), batch, "the queue holds exactly one batch");
                        let handles = got.into_iter().map(|m| m.receipt_handle).collect();
                        queues.delete(&url, handles).await.expect("delete");
                    })
                })
            },
        );
    }
    group.finish();
}

fn ledger(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteJobStore::open(&dir.path().join("store.db")).expect("open store");
    // As the reduce stage builds it (Settings::aggregate_shards defaults to 8).
    let ledger = Ledger {
        store: &store,
        job: JOB,
        attempt: 1,
        shards: 8,
        keyed: None,
    };
    let partial = json!({ "messages": 100, "total_words": 500 });
    let partials = |first: u64, n: u64| -> Vec<(u64, Value)> {
        (first..first + n).map(|p| (p, partial.clone())).collect()
    };

    let mut group = c.benchmark_group("ledger");
    // Fresh partitions every iteration: the success path (markers + shard in one transaction).
    let mut next = 1_000_000u64;
    for n in [1u64, 10] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("commit", n), &n, |b, &n| {
            b.iter(|| {
                let input = partials(next, n);
                next += n;
                let out = rt
                    .block_on(ledger.commit(&Sum, input))
                    .expect("ledger commit");
                assert_eq!(out.recorded, n);
            })
        });
    }
    // Partitions committed before: the transaction is cancelled on the markers' condition.
    rt.block_on(ledger.commit(&Sum, partials(0, 10)))
        .expect("seed ledger");
    for n in [1u64, 10] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("commit_duplicate", n), &n, |b, &n| {
            b.iter(|| {
                let out = rt
                    .block_on(ledger.commit(&Sum, partials(0, n)))
                    .expect("ledger commit");
                assert_eq!((out.recorded, out.duplicates), (0, n));
            })
        });
    }
    group.finish();
}

/// Whitespace-separated tokens, one byte at a time: the floor for what word-count does.
fn count_tokens(bytes: &[u8]) -> u64 {
    let mut words = 0u64;
    let mut in_word = false;
    for &b in bytes {
        let space = b.is_ascii_whitespace();
        words += u64::from(!space && !in_word);
        in_word = !space;
    }
    words
}

fn word_count(c: &mut Criterion) {
    let mut group = c.benchmark_group("word_count");
    for messages in [100u64, 10_000] {
        let lines = partition_lines(0, messages);
        let text = lines.join("\n");
        let payload = json!({ "lines": lines });
        let payload_json = serde_json::to_string(&payload).expect("payload json");
        let expected = count_tokens(text.as_bytes());
        assert_eq!(expected, 5 * messages);
        // The same bytes for every variant: the lines and their separators.
        group.throughput(Throughput::Bytes(text.len() as u64));

        group.bench_function(BenchmarkId::new("component", messages), |b| {
            let wc = WordCount { per_word: false };
            b.iter_batched(
                || payload.clone(),
                |p| {
                    let out = wc.apply(p).expect("word count");
                    debug_assert_eq!(out["total_words"], expected);
                    out
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function(BenchmarkId::new("component_per_word", messages), |b| {
            let wc = WordCount { per_word: true };
            b.iter_batched(
                || payload.clone(),
                |p| wc.apply(p).expect("word count"),
                BatchSize::SmallInput,
            )
        });
        // What the count stage pays per partition: the payload arrives as JSON text.
        group.bench_function(BenchmarkId::new("component_from_json", messages), |b| {
            let wc = WordCount { per_word: false };
            b.iter(|| {
                let p: Value = serde_json::from_str(black_box(&payload_json)).expect("parse");
                wc.apply(p).expect("word count")
            })
        });
        group.bench_function(BenchmarkId::new("str_split_whitespace", messages), |b| {
            b.iter(|| black_box(text.as_str()).split_whitespace().count())
        });
        group.bench_function(BenchmarkId::new("hand_loop", messages), |b| {
            b.iter(|| count_tokens(black_box(text.as_bytes())))
        });
    }
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = FileBlobs::open(dir.path().join("blobs")).expect("open blobs");

    let mut group = c.benchmark_group("envelope");
    for (name, env) in [
        ("partial", partial_envelope(42)),
        ("partition_100_lines", stage_envelope(42)),
    ] {
        let body = rt.block_on(env.clone().encode(&blobs)).expect("encode");
        assert!(
            Envelope::parse(&body).expect("parse").payload_ref.is_none(),
            "a small payload stays inline"
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter_batched(
                || env.clone(),
                |e| rt.block_on(e.encode(&blobs)).expect("encode"),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(BenchmarkId::new("parse", name), |b| {
            b.iter(|| Envelope::parse(black_box(&body)).expect("parse"))
        });
    }
    group.finish();
}

/// Fire-tweets' record stage on one partition of generated tweets (20,000 with their
/// notices, ~30 MB): the built-in `tweet-match` against `pipelines/fire-tweets.toml`'s
/// fused stage.
fn fire_tweets(c: &mut Criterion) {
    use orchestration::flow::{Registry, Step};
    use orchestration::job::JobRequest;
    use orchestration::tweets::{generate, GenOptions};

    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = FileBlobs::open(dir.path()).expect("blobs");
    let day: orchestration::tweets::Day = "2018-11-01".parse().expect("a day");
    let options = GenOptions {
        per_part: 20_000,
        seed: 2018,
        ..GenOptions::new(day, day, 20_000)
    };
    rt.block_on(generate(&blobs, &options)).expect("generated");
    let text: Vec<u8> = rt.block_on(async {
        use orchestration::ports::Blobs;
        let keys = blobs.list("tweets/2018-11-01/").await.expect("listed");
        let key = keys.first().expect("a part");
        blobs.get(key).await.expect("read").expect("there")
    });
    let registry = Registry::default();
    let params = json!({"country": "GB", "from": "2018-11-01", "to": "2018-11-01"});
    let stage = |job_type: &str| -> std::sync::Arc<dyn Transform> {
        let flow = registry
            .flow(&JobRequest {
                job_type: job_type.into(),
                params: params.clone(),
            })
            .expect("a flow");
        match &flow.stages[1].step {
            Step::Transform(t) => t.clone(),
            _ => panic!("the second stage is the records"),
        }
    };
    let fields: serde_json::Map<String, Value> =
        [("prefix".to_owned(), json!("tweets/2018-11-01/"))]
            .into_iter()
            .collect();
    let built_in = stage("fire-tweets");
    let definition = stage("fire-tweets-pipeline");
    let mut group = c.benchmark_group("fire_tweets");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("built_in", |b| {
        b.iter(|| black_box(built_in.apply_text(&text, &fields)))
    });
    group.bench_function("definition", |b| {
        b.iter(|| black_box(definition.apply_text(&text, &fields)))
    });
    group.finish();
    // A partition's fixed cost: the first 64 KiB of lines.
    let end = text[..64 * 1024]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let small = &text[..end];
    let mut group = c.benchmark_group("fire_tweets_64k");
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("built_in", |b| {
        b.iter(|| black_box(built_in.apply_text(small, &fields)))
    });
    group.bench_function("definition", |b| {
        b.iter(|| black_box(definition.apply_text(small, &fields)))
    });
    group.finish();
}

criterion_group!(benches, queue, ledger, word_count, envelope, fire_tweets);
criterion_main!(benches);
