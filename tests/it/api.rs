//! The job API over real HTTP: `sluice serve` on a free loopback port, driven with reqwest.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::support::Server;

pub(crate) async fn post(client: &Client, server: &Server, body: &Value) -> (StatusCode, Value) {
    let r = client
        .post(server.url("/jobs"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn get(client: &Client, server: &Server, path: &str) -> (StatusCode, Value) {
    let r = client.get(server.url(path)).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// Polls the result route until it stops answering 409 (a hang guard, not a timing check).
pub(crate) async fn wait_result(client: &Client, server: &Server, id: &str) -> Value {
    let guard = Instant::now();
    loop {
        let (status, body) = get(client, server, &format!("/jobs/{id}/result")).await;
        if status == StatusCode::OK {
            return body;
        }
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            guard.elapsed() < Duration::from_secs(300),
            "job {id} never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wordcount(messages: u64) -> Value {
    json!({"type": "wordcount", "params": {"messages": messages}})
}

#[tokio::test]
async fn every_route_does_what_it_says() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::new();

    let (status, health) = get(&client, &server, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

    let (status, doc) = get(&client, &server, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    // A new job: 202 with its id and links, and a Location header.
    let r = client
        .post(server.url("/jobs"))
        .json(&wordcount(2000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = r.json().await.unwrap();
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/jobs/{id}"));
    assert_eq!(accepted["created"], true);
    assert_eq!(accepted["links"]["result"], format!("/jobs/{id}/result"));

    let result = wait_result(&client, &server, &id).await;
    assert_eq!(result["status"], "done");
    assert_eq!(result["result"]["total_words"], 10_000);

    // The same request again: 200 with the stored result.
    let (status, cached) = post(&client, &server, &wordcount(2000)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cached["cached"], true);
    assert_eq!(cached["result"], result["result"]);

    // The job's status: progress per stage, timings, coverage.
    let (status, job) = get(&client, &server, &format!("/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["status"], "done");
    assert_eq!(job["coverage"], 1.0);
    assert_eq!(job["total_partitions"], 20);
    let stages = job["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 4);
    assert_eq!(stages[3]["done"], 20);
    assert!(
        stages
            .iter()
            .all(|s| s["invocations"].as_u64().unwrap() > 0),
        "{job}"
    );
    assert!(job["timings"]["run_ms"].is_u64());

    // Unknown but well-formed ids.
    let unknown = "f".repeat(64);
    for path in [
        format!("/jobs/{unknown}"),
        format!("/jobs/{unknown}/result"),
    ] {
        let (status, body) = get(&client, &server, &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let r = client
        .delete(server.url(&format!("/jobs/{unknown}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Cancelling a finished job is a conflict.
    let r = client
        .delete(server.url(&format!("/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn cancel_stops_a_running_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::new();
    let big = json!({"type": "wordcount", "params": {"messages": 5_000_000, "partition_size": 10}});
    let (status, accepted) = post(&client, &server, &big).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = accepted["job_id"].as_str().unwrap().to_owned();

    // While it runs, its result is a 409.
    let (status, body) = get(&client, &server, &format!("/jobs/{id}/result")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_finished");

    let r = client
        .delete(server.url(&format!("/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let result = wait_result(&client, &server, &id).await;
    assert_eq!(result["status"], "cancelled");
    let (_, job) = get(&client, &server, &format!("/jobs/{id}")).await;
    assert_eq!(job["status"], "cancelled");
    assert!(
        job["reduced_partitions"].as_u64().unwrap() < 500_000,
        "it stopped before the end"
    );
    let (_, listed) = get(&client, &server, "/jobs?status=cancelled").await;
    assert_eq!(listed["jobs"][0]["job_id"], id.as_str());
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::new();
    let url = server.url("/jobs");

    let check =
        |status: StatusCode, body: &Value, want: StatusCode, code: &str, field: Option<&str>| {
            assert_eq!(status, want, "{body}");
            assert_eq!(body["error"]["code"], code, "{body}");
            if let Some(field) = field {
                assert_eq!(body["error"]["field"], field, "{body}");
            }
            assert!(body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        };

    // Over 64 KiB: 413.
    let huge = json!({"type": "wordcount", "params": {"messages": 1, "text": "x".repeat(70_000)}});
    let (s, b) = post(&client, &server, &huge).await;
    check(
        s,
        &b,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );

    // Wrong content type: 415.
    let r = client
        .post(&url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    let s = r.status();
    check(
        s,
        &r.json().await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    );

    // Invalid JSON: 400 with its position.
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"type\": \"wordcount\",\n \"params\": {,}}")
        .send()
        .await
        .unwrap();
    let s = r.status();
    let b: Value = r.json().await.unwrap();
    check(s, &b, StatusCode::BAD_REQUEST, "invalid_json", None);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2 column"),
        "{b}"
    );

    // Schema violations name the field.
    let cases = [
        (
            json!({"type": "wordcount", "params": {"messages": 0}}),
            "params.messages",
        ),
        (
            json!({"type": "wordcount", "params": {"messages": "10"}}),
            "params.messages",
        ),
        (
            json!({"type": "wordcount", "params": {"messages": 10, "bogus": 1}}),
            "params.bogus",
        ),
        (
            json!({"type": "wordcount", "params": {}}),
            "params.messages",
        ),
        (json!({"type": "wordcount", "params": []}), "params"),
        (json!({"params": {"messages": 10}}), "type"),
        (json!({"type": 7}), "type"),
        (
            json!({"type": "wordcount", "params": {"messages": 10}, "extra": 1}),
            "extra",
        ),
        (
            json!({"type": "wordcount", "params": {"messages": 10}, "policy": "always-two"}),
            "policy",
        ),
        (
            json!({"type": "wordcount", "params": {"messages": 10}, "min_coverage": 2}),
            "min_coverage",
        ),
        (json!([1, 2]), "body"),
    ];
    for (body, field) in cases {
        let (s, b) = post(&client, &server, &body).await;
        check(
            s,
            &b,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(field),
        );
    }

    // Unknown job type: 400 listing the known ones.
    let (s, b) = post(&client, &server, &json!({"type": "sort", "params": {}})).await;
    check(
        s,
        &b,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("type"),
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wordcount"),
        "{b}"
    );

    // Malformed ids: 400.
    for path in [
        "/jobs/xyz",
        "/jobs/ABC/result",
        &format!("/jobs/{}", "g".repeat(64)),
    ] {
        let (s, b) = get(&client, &server, path).await;
        check(
            s,
            &b,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("id"),
        );
    }
    let r = client
        .delete(server.url("/jobs/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Wrong method: 405 with Allow.
    for (method, path, allow) in [
        (reqwest::Method::PUT, "/jobs", "GET, POST"),
        (reqwest::Method::POST, "/health", "GET"),
        (reqwest::Method::POST, "/jobs/x/result", "GET"),
        (reqwest::Method::PATCH, "/jobs/x", "GET, DELETE"),
    ] {
        let r = client
            .request(method, server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(r.headers()["allow"], allow);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["code"], "method_not_allowed");
    }

    // Unknown routes and bad list queries.
    let (s, b) = get(&client, &server, "/nope").await;
    check(s, &b, StatusCode::NOT_FOUND, "not_found", None);
    for (query, field) in [
        ("status=sleeping", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("cursor=abc", "cursor"),
        ("sort=asc", "sort"),
    ] {
        let (s, b) = get(&client, &server, &format!("/jobs?{query}")).await;
        check(
            s,
            &b,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(field),
        );
    }

    // None of it created a job.
    let (s, b) = get(&client, &server, "/jobs").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["jobs"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_make_one_job_each() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(Server::start(dir.path(), &[]));
    let client = Client::new();

    // 100 concurrent identical POSTs: one job, one id, one creation.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (client, server) = (client.clone(), server.clone());
        tasks.push(tokio::spawn(async move {
            post(&client, &server, &wordcount(50_000)).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert!(
            status == StatusCode::ACCEPTED || status == StatusCode::OK,
            "{body}"
        );
        created += usize::from(body["created"] == true);
        ids.insert(body["job_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);

    // 20 concurrent distinct jobs: all exact.
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let (client, server) = (client.clone(), server.clone());
        tasks.push(tokio::spawn(async move {
            let messages = 1_000 + 113 * i;
            let body = json!({"type": "wordcount", "params": {"messages": messages, "partition_size": 7 + i}});
            let (status, accepted) = post(&client, &server, &body).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
            let id = accepted["job_id"].as_str().unwrap().to_owned();
            (messages, wait_result(&client, &server, &id).await)
        }));
    }
    for t in tasks {
        let (messages, result) = t.await.unwrap();
        assert_eq!(result["status"], "done");
        assert_eq!(result["result"]["total_words"], messages * 5);
    }
    let (_, listed) = get(&client, &server, "/jobs?limit=100").await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 21);
}

#[tokio::test]
async fn listing_pages_through_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::new();
    let mut ids = Vec::new();
    for m in [10, 20, 30] {
        let (_, accepted) = post(&client, &server, &wordcount(m)).await;
        ids.push(accepted["job_id"].as_str().unwrap().to_owned());
        wait_result(&client, &server, ids.last().unwrap()).await;
    }
    let (s, first) = get(&client, &server, "/jobs?limit=2&status=done").await;
    assert_eq!(s, StatusCode::OK);
    let page: Vec<_> = first["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].clone())
        .collect();
    assert_eq!(page, [json!(ids[0]), json!(ids[1])]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = get(&client, &server, &format!("/jobs?limit=2&cursor={cursor}")).await;
    let page: Vec<_> = second["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].clone())
        .collect();
    assert_eq!(page, [json!(ids[2])]);
    assert_eq!(second["next_cursor"], Value::Null);
    let (_, none) = get(&client, &server, "/jobs?status=running").await;
    assert_eq!(none["jobs"], json!([]));
}

/// Jobs live in the state directory: a server killed mid-job and started again finishes it.
#[tokio::test]
async fn jobs_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let body = json!({"type": "wordcount", "params": {"messages": 400_000, "partition_size": 10}});
    let id = {
        let server = Server::start(dir.path(), &[]);
        let (status, accepted) = post(&client, &server, &body).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let id = accepted["job_id"].as_str().unwrap().to_owned();
        // Let it get under way, then crash the server.
        let guard = Instant::now();
        loop {
            let (_, job) = get(&client, &server, &format!("/jobs/{id}")).await;
            if job["reduced_partitions"].as_u64().unwrap_or(0) > 0 {
                assert_eq!(job["status"], "running");
                break;
            }
            assert!(guard.elapsed() < Duration::from_secs(300));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill();
        id
    };
    let server = Server::start(dir.path(), &[]);
    // A fresh client: the new server may get the old one's port, and a pooled connection
    // to the killed process would be reset.
    let client = Client::new();
    let result = wait_result(&client, &server, &id).await;
    assert_eq!(result["status"], "done");
    assert_eq!(result["result"]["total_words"], 2_000_000);
}

/// `sluice submit/status/result/cancel --api URL` against a running server.
#[tokio::test]
async fn the_cli_is_a_client_of_the_api() {
    use crate::support::{sluice, sluice_json};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let api = server.base.clone();
    let elsewhere = tempfile::tempdir().unwrap(); // the client needs no state of its own
    let (done, out) = sluice_json(
        elsewhere.path(),
        &[
            "submit",
            "wordcount",
            "--messages",
            "700",
            "--wait",
            "--json",
            "--api",
            &api,
        ],
    );
    assert!(out.status.success(), "{done}");
    assert_eq!(done["result"]["total_words"], 3_500);
    let id = done["job_id"].as_str().unwrap();
    let (status, _) = sluice_json(elsewhere.path(), &["status", id, "--json", "--api", &api]);
    assert_eq!(status["status"], "done");
    assert_eq!(status["stages"].as_array().unwrap().len(), 4);
    let (result, _) = sluice_json(elsewhere.path(), &["result", id, "--json", "--api", &api]);
    assert_eq!(result["result"], done["result"]);

    // Errors from the API reach the user with the field named.
    let out = sluice(
        elsewhere.path(),
        &["submit", "wordcount", "--messages", "0", "--api", &api],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("params.messages"));
    let out = sluice(elsewhere.path(), &["cancel", id, "--api", &api]);
    assert!(!out.status.success(), "a finished job cannot be cancelled");
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"));

    // Submit without waiting, then cancel.
    let (accepted, _) = sluice_json(
        elsewhere.path(),
        &[
            "submit",
            "wordcount",
            "--messages",
            "5000000",
            "--partition-size",
            "10",
            "--json",
            "--api",
            &api,
        ],
    );
    let big = accepted["job_id"].as_str().unwrap();
    let out = sluice(elsewhere.path(), &["cancel", big, "--api", &api]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = Client::new();
    let result = wait_result(&client, &server, big).await;
    assert_eq!(result["status"], "cancelled");
}
