//! sluice over the AWS wire protocol, end to end, against moto server: a request through
//! the `api` Lambda handler (an API Gateway fixture), daemon ticks that create real queues,
//! mappings and reserved concurrency in the emulator, stage handlers invoked by the local
//! ESM runtime polling the emulator's SQS, the result in S3, and nothing left behind.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lambda_http::Body;
use orchestration::api::Api;
use orchestration::aws::{local_engine, AwsPorts, AwsSettings};
use orchestration::faults::Faults;
use orchestration::flow::{Function, Registry};
use orchestration::job::{JobId, JobStatus};
use orchestration::local::Engine;
use orchestration::ports::{Blobs, Mappings, QueueCounts, Queues, StageStats, Telemetry};
use orchestration::record::{self, Lease};
use orchestration::services::Tick;
use orchestration::status::NoTelemetry;
use orchestration::sweeper::Sweeper;
use serde_json::{json, Value};

use crate::moto;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/handlers/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn deployment(test: &str) -> (tempfile::TempDir, Engine, AwsPorts, AwsSettings) {
    deployment_on(&moto::sdk().await, test).await
}

async fn deployment_on(
    sdk: &aws_config::SdkConfig,
    test: &str,
) -> (tempfile::TempDir, Engine, AwsPorts, AwsSettings) {
    let dir = tempfile::tempdir().unwrap();
    let settings = AwsSettings::local(&moto::prefix(test));
    let (engine, ports) = local_engine(
        dir.path(),
        sdk,
        settings.clone(),
        true,
        Registry::default(),
        Faults::default(),
    )
    .await
    .expect("a local engine over the emulator");
    let settings = AwsSettings {
        control_queue_url: engine.services.settings.control_queue_url.clone(),
        ..settings
    };
    (dir, engine, ports, settings)
}

/// `POST /jobs` through the `api` Lambda handler, from the API Gateway fixture.
async fn post_fixture_job(engine: &Engine) -> JobId {
    post_event(engine, &fixture("apigw-v2-post-jobs.json")).await
}

/// An API Gateway event through the `api` Lambda handler: the job it made.
async fn post_event(engine: &Engine, event: &str) -> JobId {
    let api = Api::new(engine.services.clone(), Arc::new(NoTelemetry));
    let request = lambda_http::request::from_str(event).unwrap();
    let response = handlers::http::handle(&api, request).await;
    let Body::Text(text) = response.body() else {
        panic!("no body")
    };
    let body: Value = serde_json::from_str(text).unwrap();
    assert_eq!(response.status().as_u16(), 202, "{body}");
    JobId::parse(body["job_id"].as_str().unwrap()).unwrap()
}

/// What a sampler saw of the deployment while the job ran.
#[derive(Default, Debug)]
struct Seen {
    job_queues: BTreeSet<String>,
    job_mappings: BTreeSet<String>,
    reserved: BTreeSet<(String, u32)>,
}

/// Runs the engine until the job has ended and been torn down, sampling the emulator's
/// queues, mappings and reserved concurrency meanwhile.
async fn run_until_done(
    engine: &Engine,
    ports: &AwsPorts,
    settings: &AwsSettings,
    id: &JobId,
) -> Seen {
    run_until_all_done(engine, ports, settings, std::slice::from_ref(id)).await
}

/// [`run_until_done`] for jobs that run together.
async fn run_until_all_done(
    engine: &Engine,
    ports: &AwsPorts,
    settings: &AwsSettings,
    ids: &[JobId],
) -> Seen {
    let seen = Mutex::new(Seen::default());
    let done = AtomicBool::new(false);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let jobs: BTreeSet<String> = ids.iter().map(JobId::to_string).collect();
    let sampler = async {
        let guard = Instant::now();
        while !done.load(Ordering::SeqCst) {
            let mut queues = Vec::new();
            for id in ids {
                let job_prefix = format!("{}-{}", settings.prefix, id.short());
                queues.extend(ports.queues.list_queues(&job_prefix).await.unwrap());
            }
            let mappings = ports.mappings.list_mappings(None).await.unwrap();
            let mut reserved = Vec::new();
            for f in Function::STAGE_FUNCTIONS {
                if let Some(n) = ports
                    .mappings
                    .get_reserved_concurrency(f.as_str())
                    .await
                    .unwrap()
                {
                    reserved.push((f.as_str().to_owned(), n));
                }
            }
            {
                let mut s = seen.lock().unwrap();
                s.job_queues.extend(queues);
                s.job_mappings.extend(
                    mappings
                        .into_iter()
                        .filter(|m| m.tags.get("sluice:job").is_some_and(|j| jobs.contains(j)))
                        .map(|m| m.id),
                );
                s.reserved.extend(reserved);
            }
            assert!(
                guard.elapsed() < Duration::from_secs(600),
                "the job never finished"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let waiter = async {
        for id in ids {
            loop {
                let v = record::load(engine.services.store.as_ref(), id)
                    .await
                    .unwrap()
                    .unwrap();
                if v.record.status.is_terminal() && v.record.torn_down {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        done.store(true, Ordering::SeqCst);
        let _ = stop.send(());
    };
    tokio::join!(
        engine.run(async {
            let _ = stopped.await;
        }),
        waiter,
        sampler
    );
    seen.into_inner().unwrap()
}

/// The job is done with the exact result, in the record and in S3, and its queues,
/// mappings and reserved concurrency are gone: only the control queue, its DLQ and its
/// mapping remain.
async fn assert_exact_and_clean(ports: &AwsPorts, settings: &AwsSettings, id: &JobId) {
    assert_exact(ports, id, 200, 20).await;
    assert_clean(ports, settings, std::slice::from_ref(id)).await;
}

/// A word count of `messages` fixture messages ("the quick brown fox {i}") in `partitions`
/// partitions is done with the exact result, in the record and in S3.
async fn assert_exact(ports: &AwsPorts, id: &JobId, messages: u64, partitions: u64) {
    let words = messages * 5;
    let rec = record::load(ports.store.as_ref(), id)
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(rec.status, JobStatus::Done, "{:?}", rec.outcome);
    let outcome = rec.outcome.unwrap();
    assert_eq!(outcome.result.as_ref().unwrap()["total_words"], words);
    assert_eq!(outcome.result.as_ref().unwrap()["messages"], messages);
    assert_eq!(
        (outcome.reduced_partitions, outcome.coverage),
        (partitions, 1.0)
    );
    let stored = ports
        .blobs
        .get(&format!("results/{id}.json"))
        .await
        .unwrap()
        .expect("the result in S3");
    let stored: Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored["status"], "done");
    assert_eq!(stored["outcome"]["result"]["total_words"], words);
}

/// The jobs' queues, mappings, reserved concurrency and payloads are gone: only the
/// control queue, its DLQ and its mapping remain.
async fn assert_clean(ports: &AwsPorts, settings: &AwsSettings, ids: &[JobId]) {
    let left = ports.queues.list_queues(&settings.prefix).await.unwrap();
    let names: Vec<&str> = left.iter().map(|u| u.rsplit('/').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            format!("{}-control", settings.prefix),
            format!("{}-control-dlq", settings.prefix)
        ],
        "job queues left behind"
    );
    let mappings = ports.mappings.list_mappings(None).await.unwrap();
    assert_eq!(mappings.len(), 1, "job mappings left behind: {mappings:?}");
    assert_eq!(mappings[0].function, "daemon");
    for f in Function::STAGE_FUNCTIONS {
        assert_eq!(
            ports
                .mappings
                .get_reserved_concurrency(f.as_str())
                .await
                .unwrap(),
            None,
            "{f}'s reserved concurrency was not released"
        );
    }
    for id in ids {
        assert!(ports
            .blobs
            .list(&format!("payloads/{id}/"))
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_end_to_end_over_the_aws_protocol() {
    let (_dir, engine, ports, settings) = deployment("e2e").await;
    let id = post_fixture_job(&engine).await;
    let seen = run_until_done(&engine, &ports, &settings, &id).await;

    // The daemon made the job's resources in the emulator: a queue per stage and a DLQ,
    // a mapping per stage, and reserved concurrency for the stage functions.
    let attempt = record::load(ports.store.as_ref(), &id)
        .await
        .unwrap()
        .unwrap()
        .record
        .attempt;
    for stage in ["feed", "filter", "count", "reduce", "dlq"] {
        assert!(
            seen.job_queues
                .iter()
                .any(|q| q.ends_with(&format!("-{attempt}-{stage}"))),
            "no {stage} queue seen: {seen:?}"
        );
    }
    assert_eq!(seen.job_mappings.len(), 4, "{seen:?}");
    let functions: BTreeSet<&str> = seen.reserved.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        functions,
        BTreeSet::from(["reduce", "source", "transform"]),
        "{seen:?}"
    );
    assert!(seen.reserved.iter().all(|(_, n)| *n >= 2), "{seen:?}");

    // The stage handlers ran in the local runtime, fed from the emulator's queues.
    let stats = engine.log.stats(id.as_str(), attempt).unwrap();
    let count = stats
        .iter()
        .find(|s| s.stage == "count")
        .expect("count invocations");
    assert_eq!(count.messages, 20, "{stats:?}");

    // On AWS the stage functions count themselves (what `backlog` reads there): the
    // counters in the table agree with the runtime's own log, stage by stage.
    let counted = ports
        .telemetry
        .stage_stats(id.as_str(), attempt)
        .await
        .unwrap();
    let stages = |stats: &[StageStats]| -> Vec<(String, String, u64, u64, u64)> {
        stats
            .iter()
            .map(|s| {
                (
                    s.stage.clone(),
                    s.function.clone(),
                    s.invocations - s.throttles,
                    s.messages,
                    s.failed_messages,
                )
            })
            .collect()
    };
    let mut logged = stages(&stats);
    logged.sort();
    assert_eq!(stages(&counted), logged, "{counted:?} vs {stats:?}");
    assert!(
        counted.iter().all(|s| s.billed_ms >= s.invocations),
        "{counted:?}"
    );
    assert!(
        counted.iter().all(|s| s.throughput().is_some()),
        "{counted:?}"
    );
    assert_exact_and_clean(&ports, &settings, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_dies_after_claiming_a_tick_is_taken_over() {
    let (_dir, engine, ports, settings) = deployment("takeover").await;
    let id = post_fixture_job(&engine).await;

    // Play the daemon that dies: receive the job's first tick from the control queue, take
    // the job's lease as a tick does, and die — no lease release, no delete, no next tick.
    let control = &settings.control_queue_url;
    let start = Instant::now();
    let claimed = loop {
        let batch = ports
            .queues
            .receive(control, 1, Duration::from_secs(1), None)
            .await
            .unwrap();
        if let Some(m) = batch.into_iter().next() {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no tick was sent"
        );
    };
    let tick: Tick = serde_json::from_str(&claimed.body).unwrap();
    assert_eq!(tick.job, id);
    let v = record::load(ports.store.as_ref(), &id)
        .await
        .unwrap()
        .unwrap();
    let mut rec = v.record;
    let dead_epoch = rec.lease.epoch + 1;
    rec.lease = Lease {
        owner: "the-daemon-that-died".into(),
        epoch: dead_epoch,
        expires_ms: engine.services.clock.now_ms() + settings.lease_ttl.as_millis() as u64,
    };
    record::save(ports.store.as_ref(), &rec, v.version)
        .await
        .unwrap();
    let counts: QueueCounts = ports.queues.counts(control).await.unwrap();
    assert_eq!(counts.in_flight, 1, "the claimed tick stays in flight");

    // The tick comes back after its visibility timeout, waits out the dead lease, and the
    // next daemon takes over with a higher epoch and finishes the job exactly.
    run_until_done(&engine, &ports, &settings, &id).await;
    let rec = record::load(ports.store.as_ref(), &id)
        .await
        .unwrap()
        .unwrap()
        .record;
    assert!(
        rec.lease.epoch > dead_epoch,
        "no takeover: epoch {}",
        rec.lease.epoch
    );
    assert_ne!(rec.lease.owner, "the-daemon-that-died");
    assert_exact_and_clean(&ports, &settings, &id).await;
}

/// AWS's faults on the wire: the emulator fails a tenth of all requests — provisioning,
/// the daemon's ticks, the stage functions' calls and the runtime's polls alike — with
/// throttling errors, 500s, 503s and dropped connections, and two jobs running together
/// still end exact and leave nothing behind: the SDK's retries absorb every fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_stay_exact_when_a_tenth_of_aws_requests_fail() {
    let (_dir, engine, ports, settings) = deployment_on(&moto::faulty_sdk().await, "faults").await;
    let first = post_fixture_job(&engine).await;
    let other = orchestration::job::JobRequest {
        job_type: "wordcount".into(),
        params: json!({"messages": 300, "partition_size": 20}),
    };
    let second = orchestration::submit::submit(&engine.services, &other, &Default::default())
        .await
        .unwrap()
        .id;
    run_until_all_done(&engine, &ports, &settings, &[first.clone(), second.clone()]).await;
    assert_exact(&ports, &first, 200, 20).await;
    assert_exact(&ports, &second, 300, 15).await;
    assert_clean(&ports, &settings, &[first, second]).await;

    // The faults were real: every kind was injected, at about the rate asked for.
    let report = moto::injected_faults().await;
    let requests = report["requests"].as_u64().unwrap();
    let faulted: u64 = ["throttle", "500", "503", "drop"]
        .iter()
        .map(|kind| {
            let n = report["faulted"][kind].as_u64().unwrap();
            assert!(n > 0, "no {kind} fault was injected: {report}");
            n
        })
        .sum();
    let rate = faulted as f64 / requests as f64;
    eprintln!("injected faults: {report}");
    assert!(
        requests > 500 && (rate - moto::FAULT_RATE).abs() < 0.03,
        "{faulted} of {requests} requests faulted: {report}"
    );
}

/// `sluice run --backend aws` against an empty deployment in the emulator: it provisions
/// what it needs, runs the job exactly, and leaves only the deployment's static resources;
/// the same command again is answered from the stored record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_a_job_on_the_aws_backend() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = moto::prefix("cli");
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "run",
                "wordcount",
                "--messages",
                "300",
                "--partition-size",
                "20",
                "--json",
            ])
            .args(["--backend", "aws", "--aws-prefix", &prefix])
            .env("SLUICE_STATE_DIR", dir.path())
            .env("SLUICE_LOG", "error")
            .env("AWS_ENDPOINT_URL", moto::endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_PROFILE")
            .output()
            .expect("the sluice binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "not one JSON object ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(out.status.success(), "{json}");
        json
    };
    let first = run();
    assert_eq!(first["status"], "done", "{first}");
    assert_eq!(first["cached"], false);
    assert_eq!(first["result"]["total_words"], 1_500);
    let again = run();
    assert_eq!(
        (
            again["cached"].clone(),
            again["result"]["total_words"].clone()
        ),
        (json!(true), json!(1_500))
    );

    let sdk = moto::sdk().await;
    let settings = AwsSettings::local(&prefix);
    let ports = AwsPorts::new(&sdk, &settings, orchestration::aws::Triggers::Local);
    let left = ports.queues.list_queues(&prefix).await.unwrap();
    assert_eq!(
        left.len(),
        2,
        "only the control queue and its DLQ remain: {left:?}"
    );
    let id = JobId::parse(first["job_id"].as_str().unwrap()).unwrap();
    assert!(ports
        .blobs
        .get(&format!("results/{id}.json"))
        .await
        .unwrap()
        .is_some());
}

/// The sweeper deletes a finished job's leftovers (a queue and its mapping that a daemon
/// dying during teardown would leave) and restarts a job whose daemon went silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_cleans_up_after_dead_daemons() {
    let (_dir, engine, ports, settings) = deployment("sweep").await;
    let id = post_fixture_job(&engine).await;
    run_until_done(&engine, &ports, &settings, &id).await;
    let rec = record::load(ports.store.as_ref(), &id)
        .await
        .unwrap()
        .unwrap()
        .record;

    // Leftovers of the finished attempt: a queue, a mapping reading it, a reservation.
    let leaked = ports
        .queues
        .create_queue(&orchestration::ports::QueueSpec {
            name: format!("{}-{}-{}-count", settings.prefix, id.short(), rec.attempt),
            visibility_timeout: Duration::from_secs(30),
            dead_letter: None,
        })
        .await
        .unwrap();
    let tags = std::collections::BTreeMap::from([
        ("sluice:job".to_owned(), id.to_string()),
        ("sluice:attempt".to_owned(), rec.attempt.to_string()),
        ("sluice:stage".to_owned(), "count".to_owned()),
    ]);
    let config = orchestration::ports::MappingConfig {
        batch_size: 10,
        batching_window_secs: 0,
        max_concurrency: Some(2),
        provisioned_pollers: None,
        enabled: true,
    };
    let mapping = ports
        .mappings
        .create_mapping(&leaked, "transform", config, tags)
        .await
        .unwrap();
    let need = [("transform".to_owned(), 7)].into_iter().collect();
    orchestration::reserve::acquire(&engine.services, id.as_str(), rec.attempt, &need, 900)
        .await
        .unwrap();
    orchestration::reserve::apply(
        &engine.services,
        &[orchestration::flow::Function::Transform],
    )
    .await
    .unwrap();
    assert_eq!(
        ports
            .mappings
            .get_reserved_concurrency("transform")
            .await
            .unwrap(),
        Some(7)
    );

    // A job whose daemon went silent: created long ago, never ticked, no tick in flight.
    let silent = orchestration::job::JobRequest {
        job_type: "wordcount".into(),
        params: json!({"messages": 50, "partition_size": 10}),
    };
    let submitted = orchestration::submit::submit(&engine.services, &silent, &Default::default())
        .await
        .unwrap();
    let control = &settings.control_queue_url;
    let drained = ports
        .queues
        .receive(control, 10, Duration::from_secs(1), None)
        .await
        .unwrap();
    ports
        .queues
        .delete(
            control,
            drained.into_iter().map(|m| m.receipt_handle).collect(),
        )
        .await
        .unwrap();
    let v = record::load(ports.store.as_ref(), &submitted.id)
        .await
        .unwrap()
        .unwrap();
    let mut old = v.record;
    old.created_ms -= 3_600_000;
    old.last_tick_ms = old.created_ms;
    record::save(ports.store.as_ref(), &old, v.version)
        .await
        .unwrap();

    let report = Sweeper::new(engine.services.clone()).sweep().await.unwrap();
    assert_eq!(report.deleted_queues, vec![leaked.clone()], "{report:?}");
    assert_eq!(
        report.deleted_mappings,
        vec![mapping.id.clone()],
        "{report:?}"
    );
    assert_eq!(report.released_needs, 1, "{report:?}");
    assert_eq!(report.restarted, vec![submitted.id.clone()], "{report:?}");
    assert!(ports
        .mappings
        .list_mappings(Some(&leaked))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ports
            .queues
            .queue_url(leaked.rsplit('/').next().unwrap())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        ports
            .mappings
            .get_reserved_concurrency("transform")
            .await
            .unwrap(),
        None
    );
    // The restarted job runs to the end.
    run_until_done(&engine, &ports, &settings, &submitted.id).await;
    let done = record::load(ports.store.as_ref(), &submitted.id)
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(done.outcome.unwrap().result.unwrap()["total_words"], 250);
}

/// An ad-hoc pipeline, sent through the `api` Lambda handler as a deployed API receives it:
/// no deploy, the same adapters, exactly the records in S3, nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_hoc_pipeline_runs_over_the_aws_protocol() {
    let (_dir, engine, ports, settings) = deployment("adhoc").await;
    let mut lines = Vec::new();
    for i in 0..300 {
        let city = ["Leeds", "York", "Cork"][i % 3];
        let country = if city == "Cork" { "IE" } else { "GB" };
        lines.push(
            json!({"city": city, "country": country, "user": format!("u{}", i % 7)}).to_string(),
        );
    }
    lines.push("not json".into());
    ports
        .blobs
        .put("users/a.jsonl", lines.join("\n").into_bytes())
        .await
        .unwrap();
    let definition = json!({
        "name": "gb-users",
        "source": {"format": "json-lines", "prefix": "users/"},
        "steps": [{"filter": "country == 'GB'"}],
        "reduce": {
            "n": {"op": "count"},
            "by_city": {"op": "count-by", "key": "city"},
            "users": {"op": "distinct", "value": "user"},
        },
        "settings": {"partition_bytes": 2048},
    });
    let mut event: Value = serde_json::from_str(&fixture("apigw-v2-post-jobs.json")).unwrap();
    event["body"] =
        json!(json!({"type": "pipeline", "params": {"definition": definition}}).to_string());
    let id = post_event(&engine, &event.to_string()).await;
    run_until_done(&engine, &ports, &settings, &id).await;

    let rec = record::load(ports.store.as_ref(), &id)
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(rec.status, JobStatus::Done, "{:?}", rec.outcome);
    assert!(rec.total_partitions.unwrap() > 1, "{rec:?}");
    let result =
        orchestration::keyed::expand(ports.blobs.as_ref(), &rec.outcome.unwrap().result.unwrap())
            .await
            .unwrap();
    assert_eq!(result["n"], 200);
    assert_eq!(result["by_city"], json!({"Leeds": 100, "York": 100}));
    assert_eq!(result["users"]["estimate"], 7);
    assert_eq!(result["records_scanned"], 300);
    assert_eq!(result["malformed_lines"], 1);
    assert_clean(&ports, &settings, &[id]).await;
}
