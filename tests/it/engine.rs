//! The embedded engine driven through the library: many jobs at once, faults, dedup.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestration::job::{JobId, JobRequest, JobStatus};
use orchestration::local::{Engine, EngineOptions};
use orchestration::record;
use orchestration::submit::{submit, Disposition, SubmitOptions};
use serde_json::json;

fn wordcount(messages: u64, partition_size: u64, per_word: bool) -> JobRequest {
    JobRequest {
        job_type: "wordcount".into(),
        params: json!({"messages": messages, "partition_size": partition_size, "per_word": per_word}),
    }
}

/// Runs the engine until every job has ended and been torn down.
async fn run_until_done(engine: &Engine, ids: &[JobId]) {
    run_until_done_within(engine, ids, Duration::from_secs(900)).await;
}

/// [`run_until_done`] with a hang guard of `guard` (other modules' jobs are bigger or
/// smaller).
pub(crate) async fn run_until_done_within(engine: &Engine, ids: &[JobId], guard: Duration) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let waiter = async {
        // A hang guard, not a timing assertion: a job that never ends fails the test.
        let started = Instant::now();
        loop {
            let mut open = 0;
            for id in ids {
                let v = record::load(engine.services.store.as_ref(), id)
                    .await
                    .unwrap()
                    .unwrap();
                if !(v.record.status.is_terminal() && v.record.torn_down) {
                    open += 1;
                }
            }
            if open == 0 {
                break;
            }
            assert!(started.elapsed() < guard, "{open} jobs never finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stop.send(());
    };
    tokio::join!(
        engine.run(async {
            let _ = stopped.await;
        }),
        waiter
    );
}

/// Distinct jobs under duplicated deliveries, crashing handlers and crashing daemons are
/// all exact. `SLUICE_FAULT_JOBS` sets how many (the closing note's big run used 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_jobs_are_exact_under_faults() {
    let jobs: u64 = std::env::var("SLUICE_FAULT_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        dir.path(),
        EngineOptions {
            faults: "duplicate=0.2,crash=0.1,daemon-crash=0.2".parse().unwrap(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut expected = Vec::new();
    for i in 0..jobs {
        let messages = 300 + 37 * i;
        let request = wordcount(messages, 5 + i % 11, i % 2 == 0);
        let s = submit(&engine.services, &request, &SubmitOptions::default())
            .await
            .unwrap();
        assert_eq!(s.disposition, Disposition::Created);
        expected.push((s.id, messages, i % 2 == 0));
    }
    let ids: Vec<JobId> = expected.iter().map(|e| e.0.clone()).collect();
    run_until_done(&engine, &ids).await;

    for (id, messages, per_word) in &expected {
        let rec = record::load(engine.services.store.as_ref(), id)
            .await
            .unwrap()
            .unwrap()
            .record;
        let outcome = rec.outcome.clone().unwrap();
        assert_eq!(rec.status, JobStatus::Done, "{id}: {:?}", outcome.error);
        let result = outcome.result.unwrap();
        assert_eq!(result["total_words"], messages * 5, "{id}");
        assert_eq!(result["messages"], *messages, "{id}");
        if *per_word {
            let whole = orchestration::keyed::expand(engine.services.blobs.as_ref(), &result)
                .await
                .unwrap();
            assert_eq!(whole["per_word"]["fox"], *messages, "{id}");
        }
        assert_eq!(outcome.coverage, 1.0);
    }
    // Nothing leaks: only the control queue and its DLQ, only the control mapping.
    let queues = engine.services.queues.list_queues("sluice-").await.unwrap();
    assert_eq!(queues.len(), 2, "{queues:?}");
    let mappings = engine.services.mappings.list_mappings(None).await.unwrap();
    assert_eq!(mappings.len(), 1, "{mappings:?}");
}

/// Concurrent identical requests create exactly one job; all of them get its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_make_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(
        Engine::open(dir.path(), EngineOptions::default())
            .await
            .unwrap(),
    );
    let request = wordcount(1_000, 10, false);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let engine = engine.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            submit(&engine.services, &request, &SubmitOptions::default())
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let s = t.await.unwrap();
        created += usize::from(s.disposition == Disposition::Created);
        ids.insert(s.id);
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    let ids: Vec<JobId> = ids.into_iter().collect();
    run_until_done(&engine, &ids).await;
    let rec = record::load(engine.services.store.as_ref(), &ids[0])
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(rec.outcome.unwrap().result.unwrap()["total_words"], 5_000);
    assert_eq!(rec.attempt, 1);
    let again = submit(&engine.services, &request, &SubmitOptions::default())
        .await
        .unwrap();
    assert_eq!(again.disposition, Disposition::Cached);
}

/// A composite job type for the test: the sum of `wordcount` jobs of `from..=to` messages,
/// each part a job of its own.
struct WordcountRange;

impl orchestration::flow::JobType for WordcountRange {
    fn name(&self) -> &'static str {
        "wordcount-range"
    }
    fn flow_version(&self) -> u32 {
        1
    }
    fn normalize(
        &self,
        params: &serde_json::Value,
    ) -> Result<serde_json::Value, orchestration::job::ValidationError> {
        let mut r = orchestration::job::ParamReader::new(params)?;
        r.integer("from", 1, 1000, None)?;
        r.integer("to", 1, 1000, None)?;
        r.finish()
    }
    fn flow(
        &self,
        _params: &serde_json::Value,
    ) -> Result<orchestration::flow::Flow, orchestration::job::ValidationError> {
        use orchestration::flow::{Flow, Function, Stage, Step};
        Ok(Flow {
            size: 0,
            stages: vec![Stage {
                name: "reduce".into(),
                function: Function::Reduce,
                component: "sum",
                step: Step::Reduce(Arc::new(orchestration::components::Sum)),
            }],
            keyed: None,
        })
    }
    fn parts(
        &self,
        params: &serde_json::Value,
    ) -> Result<Option<Vec<JobRequest>>, orchestration::job::ValidationError> {
        let (from, to) = (
            params["from"].as_u64().unwrap_or(1),
            params["to"].as_u64().unwrap_or(0),
        );
        Ok(Some(
            (from..=to).map(|m| wordcount(m * 100, 10, false)).collect(),
        ))
    }
}

fn registry() -> orchestration::flow::Registry {
    orchestration::flow::Registry::new(vec![
        Arc::new(orchestration::jobs::Wordcount),
        Arc::new(WordcountRange),
    ])
}

async fn invocations(engine: &Engine, id: &JobId, attempt: u32) -> u64 {
    engine.log.flush().await;
    engine
        .log
        .stats(id.as_str(), attempt)
        .unwrap()
        .iter()
        .map(|s| s.invocations)
        .sum()
}

/// Overlapping composite requests compute each shared part once: 1..=3 then 2..=4 runs
/// only part 4 the second time; two concurrent overlapping requests share their parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_jobs_reuse_their_parts() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        dir.path(),
        EngineOptions {
            registry: Some(registry()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let range = |from: u64, to: u64| JobRequest {
        job_type: "wordcount-range".into(),
        params: json!({"from": from, "to": to}),
    };
    let store = engine.services.store.clone();
    let load = |id: JobId| {
        let store = store.clone();
        async move {
            record::load(store.as_ref(), &id)
                .await
                .unwrap()
                .unwrap()
                .record
        }
    };

    let first = submit(&engine.services, &range(1, 3), &SubmitOptions::default())
        .await
        .unwrap();
    run_until_done(&engine, std::slice::from_ref(&first.id)).await;
    let rec = load(first.id.clone()).await;
    assert_eq!(rec.status, JobStatus::Done);
    // 100 + 200 + 300 messages of 5 words.
    assert_eq!(rec.outcome.unwrap().result.unwrap()["total_words"], 3_000);
    assert_eq!(rec.parts_computed, [true, true, true]);
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for part in &rec.parts {
            v.push(invocations(&engine, part, 1).await);
        }
        v
    };
    assert!(before.iter().all(|n| *n > 0));

    let second = submit(&engine.services, &range(2, 4), &SubmitOptions::default())
        .await
        .unwrap();
    run_until_done(&engine, std::slice::from_ref(&second.id)).await;
    let rec2 = load(second.id.clone()).await;
    assert_eq!(rec2.outcome.unwrap().result.unwrap()["total_words"], 4_500);
    assert_eq!(
        rec2.parts_computed,
        [false, false, true],
        "only part 4 was computed"
    );
    assert_eq!(rec2.parts[..2], rec.parts[1..]);
    for (part, n) in rec.parts[1..].iter().zip(&before[1..]) {
        assert_eq!(
            invocations(&engine, part, 1).await,
            *n,
            "a shared part ran again"
        );
    }
    assert!(invocations(&engine, &rec2.parts[2], 1).await > 0);

    // Concurrent overlapping requests: parts 5..=6 are submitted by both, computed once.
    let a = submit(&engine.services, &range(5, 7), &SubmitOptions::default())
        .await
        .unwrap();
    let b = submit(&engine.services, &range(4, 6), &SubmitOptions::default())
        .await
        .unwrap();
    run_until_done(&engine, &[a.id.clone(), b.id.clone()]).await;
    let (ra, rb) = (load(a.id).await, load(b.id).await);
    assert_eq!(ra.outcome.unwrap().result.unwrap()["total_words"], 9_000);
    assert_eq!(rb.outcome.unwrap().result.unwrap()["total_words"], 7_500);
    assert_eq!(ra.parts[..2], rb.parts[1..]);
    let computed = ra.parts_computed.iter().filter(|c| **c).count()
        + rb.parts_computed.iter().filter(|c| **c).count();
    assert_eq!(computed, 3, "parts 5, 6 and 7 were each computed once");
}

/// A job whose tick chain is lost (its first tick never handled) is restarted by the
/// engine's periodic sweep, as the scheduled sweeper restarts it on AWS, and ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_ticks_are_lost_is_restarted_by_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let settings = orchestration::services::Settings {
        tick_interval: Duration::from_millis(100),
        lease_ttl: Duration::from_millis(500),
        ..Default::default()
    };
    let engine = Engine::open(
        dir.path(),
        EngineOptions {
            settings: Some(settings),
            runtime: orchestration::local::runtime::RuntimeConfig {
                sweep_interval: Some(Duration::from_millis(300)),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let submitted = submit(
        &engine.services,
        &wordcount(500, 50, false),
        &SubmitOptions::default(),
    )
    .await
    .unwrap();
    // Lose the chain: take the job's first tick off the control queue.
    let control = engine.services.settings.control_queue_url.clone();
    let ticks = engine
        .services
        .queues
        .receive(&control, 10, Duration::from_millis(200), None)
        .await
        .unwrap();
    assert_eq!(ticks.len(), 1);
    engine
        .services
        .queues
        .delete(
            &control,
            ticks.into_iter().map(|m| m.receipt_handle).collect(),
        )
        .await
        .unwrap();
    run_until_done(&engine, std::slice::from_ref(&submitted.id)).await;
    let rec = record::load(engine.services.store.as_ref(), &submitted.id)
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(rec.status, JobStatus::Done);
    assert_eq!(rec.outcome.unwrap().result.unwrap()["total_words"], 2_500);
}

/// A batch with a message twice (the same body: SQS's at-least-once delivery, or a
/// sender's retry) does the work once and acknowledges both; a twin of a message that
/// fails fails with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_messages_in_one_batch_are_processed_once() {
    use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
    use orchestration::daemon::Daemon;
    use orchestration::flow::Function;
    use orchestration::services::Tick;
    use orchestration::worker::StageHandler;

    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default())
        .await
        .unwrap();
    let svc = engine.services.clone();
    let id = submit(&svc, &wordcount(40, 10, false), &SubmitOptions::default())
        .await
        .unwrap()
        .id;
    // The daemon's first steps, by hand: plan, provision, and send the feed its tasks.
    let daemon = Daemon::new(svc.clone());
    let rec = loop {
        daemon
            .tick(Tick {
                job: id.clone(),
                seq: None,
            })
            .await
            .unwrap();
        let rec = record::load(svc.store.as_ref(), &id)
            .await
            .unwrap()
            .unwrap()
            .record;
        if rec.stages.len() > 1
            && svc
                .queues
                .counts(&rec.stages[0].queue_url)
                .await
                .unwrap()
                .visible
                > 0
        {
            break rec;
        }
    };
    let (feed, filter) = (&rec.stages[0].queue_url, &rec.stages[1].queue_url);
    let task = svc
        .queues
        .receive(feed, 1, Duration::ZERO, None)
        .await
        .unwrap()
        .remove(0);
    let message = |id: &str, body: &str| {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.receipt_handle = Some(task.receipt_handle.clone());
        m.body = Some(body.into());
        m
    };
    let mut batch = SqsEvent::default();
    batch.records = vec![
        message("a", &task.body),
        message("b", &task.body),
        message("c", "not an envelope"),
        message("d", "not an envelope"),
    ];
    let response = StageHandler::new(svc.clone(), Function::Source)
        .handle(batch)
        .await
        .unwrap();
    let mut failed: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    failed.sort();
    assert_eq!(failed, ["c", "d"]);
    // The feed task's partitions were sent once: one task's worth, not two.
    let sent = svc.queues.counts(filter).await.unwrap().visible;
    let mut again = SqsEvent::default();
    again.records = vec![message("e", &task.body)];
    StageHandler::new(svc.clone(), Function::Source)
        .handle(again)
        .await
        .unwrap();
    let twice = svc.queues.counts(filter).await.unwrap().visible;
    assert!(sent > 0);
    assert_eq!(twice, 2 * sent, "a lone copy sends as much again");
}
