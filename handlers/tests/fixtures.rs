//! The handlers fed with recorded Lambda events (`tests/fixtures/*.json`, in the shapes
//! `aws_lambda_events` and `lambda_http` read): API Gateway HTTP API v2 requests, SQS
//! batches with malformed bodies, and an EventBridge scheduled event. The services behind
//! them are the embedded engine's, so these tests need no emulator.

use std::sync::Arc;

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_http::Body;
use orchestration::api::Api;
use orchestration::daemon::Daemon;
use orchestration::flow::Function;
use orchestration::local::{Engine, EngineOptions};
use orchestration::status::NoTelemetry;
use orchestration::sweeper::Sweeper;
use serde_json::Value;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), EngineOptions::default())
        .await
        .unwrap();
    (dir, engine)
}

async fn call_api(api: &Api, name: &str) -> (u16, Value) {
    let request = lambda_http::request::from_str(&fixture(name)).unwrap();
    let response = handlers::http::handle(api, request).await;
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = match response.body() {
        Body::Text(text) => serde_json::from_str(text).unwrap(),
        other => panic!("not a text body: {other:?}"),
    };
    (response.status().as_u16(), body)
}

#[tokio::test]
async fn api_gateway_requests_reach_the_job_api() {
    let (_dir, engine) = engine().await;
    let api = Api::new(engine.services.clone(), Arc::new(NoTelemetry));

    let (status, body) = call_api(&api, "apigw-v2-get-health.json").await;
    assert_eq!(status, 200, "{body}");

    // Bad requests: 400 naming the field, or the parse position; nothing is created.
    let (status, body) = call_api(&api, "apigw-v2-post-jobs-invalid.json").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("params.messages")),
        "{body}"
    );
    let (status, body) = call_api(&api, "apigw-v2-post-jobs-malformed.json").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_json", "{body}");
    let (_, listed) = call_api(&api, "apigw-v2-get-jobs.json").await;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(0), "{listed}");

    // A job: 202 with its id; the same request again joins it.
    let (status, created) = call_api(&api, "apigw-v2-post-jobs.json").await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["created"], true);
    let (status, again) = call_api(&api, "apigw-v2-post-jobs.json").await;
    assert_eq!((status, &again["job_id"]), (202, &created["job_id"]));
    assert_eq!(again["created"], false);
    let (_, listed) = call_api(&api, "apigw-v2-get-jobs.json").await;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test]
async fn a_malformed_stage_message_is_a_batch_item_failure() {
    let (_dir, engine) = engine().await;
    let event: SqsEvent = serde_json::from_str(&fixture("sqs-stage-batch.json")).unwrap();
    let response = handlers::stage(engine.services.clone(), Function::Transform, event)
        .await
        .expect("a malformed message never fails the invocation");
    let mut failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    failed.sort();
    // Not an envelope, and an envelope of the wrong shape, fail; a well-formed message of
    // a job that no longer exists is acknowledged (dropped), so it cannot loop.
    assert_eq!(
        failed,
        [
            "c7f4e1a2-0001-4d5e-9a3b-000000000001",
            "c7f4e1a2-0001-4d5e-9a3b-000000000003"
        ]
    );
}

#[tokio::test]
async fn a_malformed_tick_is_a_batch_item_failure() {
    let (_dir, engine) = engine().await;
    let event: SqsEvent = serde_json::from_str(&fixture("sqs-control-batch.json")).unwrap();
    let response = Daemon::new(engine.services.clone())
        .handle(event)
        .await
        .expect("a malformed tick never fails the invocation");
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["d1e2f3a4-0001-4d5e-9a3b-000000000001"]);
}

#[tokio::test]
async fn a_scheduled_event_runs_a_sweep() {
    let (_dir, engine) = engine().await;
    let api = Api::new(engine.services.clone(), Arc::new(NoTelemetry));
    let (status, _) = call_api(&api, "apigw-v2-post-jobs.json").await;
    assert_eq!(status, 202);
    let event: CloudWatchEvent = serde_json::from_str(&fixture("scheduled-event.json")).unwrap();
    assert_eq!(event.detail_type.as_deref(), Some("Scheduled Event"));
    let report = handlers::sweep(&Sweeper::new(engine.services.clone()), event)
        .await
        .unwrap();
    // The new job's daemon has not ticked yet, but it is not silent for long enough either.
    assert_eq!(report.jobs_seen, 1);
    assert!(report.restarted.is_empty(), "{report:?}");
    assert!(report.deleted_queues.is_empty(), "{report:?}");
}
