//! What the dashboard reads, over real HTTP: the pages and assets built into the binary, and
//! the API routes added for it (`/job-types`, `/jobs/{id}/timeline`, the list's columns). The
//! pages themselves are driven in a real browser by `tests/dashboard/` (scripts/test).

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::support::Server;

async fn get(client: &Client, server: &Server, path: &str) -> (StatusCode, Value) {
    let r = client.get(server.url(path)).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn the_pages_are_served_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::new();
    let r = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    let html = r.text().await.unwrap();
    for asset in [
        "/assets/dashboard/app.js",
        "/assets/dashboard/vendor/uPlot.iife.min.js",
    ] {
        assert!(html.contains(asset), "{asset}");
        let r = client.get(server.url(asset)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
        assert_eq!(
            r.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
    }
    // Anything else is still the API's, with its JSON errors.
    let (status, body) = get(&client, &server, "/assets/dashboard/missing.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let r = client.post(server.url("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn job_types_timeline_and_list_give_the_dashboard_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::new();

    let (status, types) = get(&client, &server, "/job-types").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = types["job_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    // The built-in types first, then ad-hoc pipelines and the shipped definitions.
    assert_eq!(names[..3], ["wordcount", "fire-tweets", "pipeline"]);
    for shipped in [
        "top-hashtags",
        "keyword-per-hour",
        "distinct-users",
        "word-frequencies",
    ] {
        assert!(names.contains(&shipped), "{names:?}");
    }
    let wordcount = &types["job_types"][0]["params"]["properties"];
    assert_eq!(wordcount["messages"]["maximum"], 100_000_000);
    assert_eq!(wordcount["per_word"]["type"], "boolean");

    let r = client
        .post(server.url("/jobs"))
        .json(&json!({"type": "wordcount", "params": {"messages": 3000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let guard = Instant::now();
    loop {
        let (_, job) = get(&client, &server, &format!("/jobs/{id}")).await;
        if job["status"] == "done" {
            // The job's Lambda cost, per stage, from its invocations.
            let cost = &job["cost"];
            assert_eq!(cost["stages"].as_array().unwrap().len(), 4);
            let requests: u64 = job["stages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["invocations"].as_u64().unwrap() - s["throttles"].as_u64().unwrap())
                .sum();
            assert_eq!(cost["requests"], requests);
            assert!(cost["usd"].as_f64().unwrap() > 0.0);
            break;
        }
        assert!(guard.elapsed() < Duration::from_secs(300), "never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every tick the daemon applied the policy is there, with each stage's depth and levers.
    let (status, timeline) = get(&client, &server, &format!("/jobs/{id}/timeline")).await;
    assert_eq!(status, StatusCode::OK, "{timeline}");
    let ticks = timeline["ticks"].as_array().unwrap();
    assert!(!ticks.is_empty());
    assert_eq!(timeline["more"], false);
    let stages: Vec<&str> = ticks[0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["feed", "filter", "count", "reduce"]);
    assert!(
        ticks[0]["stages"][1]["levers"]["max_concurrency"]
            .as_u64()
            .unwrap()
            >= 2
    );
    let t: Vec<u64> = ticks.iter().map(|t| t["t_ms"].as_u64().unwrap()).collect();
    assert!(t.windows(2).all(|w| w[0] < w[1]), "{t:?}");
    // `after` reads on from a tick.
    let (_, later) = get(
        &client,
        &server,
        &format!("/jobs/{id}/timeline?after={}", t[0]),
    )
    .await;
    assert_eq!(later["ticks"].as_array().unwrap().len(), t.len() - 1);
    // Concurrency per stage, from the invocation records: the buckets hold the billed time.
    let concurrency = &timeline["concurrency"];
    let bucket_ms = concurrency["bucket_ms"].as_f64().unwrap();
    let (_, job) = get(&client, &server, &format!("/jobs/{id}")).await;
    for stage in concurrency["stages"].as_array().unwrap() {
        assert!(stage["peak"].as_u64().unwrap() >= 1);
        let busy_ms: f64 = stage["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_f64().unwrap() * bucket_ms)
            .sum();
        let own = job["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == stage["stage"])
            .unwrap();
        let billed_ms = own["billed_ms"].as_f64().unwrap();
        let invocations = own["invocations"].as_f64().unwrap();
        // Billed time rounds each invocation up to the millisecond: under 1 ms more each.
        assert!(busy_ms <= billed_ms + 1e-6, "{busy_ms} > {billed_ms}");
        assert!(billed_ms - busy_ms <= invocations + 1e-6, "{stage}");
    }

    // The list has what its columns show, and filters by type.
    let (_, list) = get(&client, &server, "/jobs?type=wordcount").await;
    let row = &list["jobs"][0];
    assert_eq!(row["params"]["messages"], 3000);
    assert_eq!(row["reduced_partitions"], 30);
    assert_eq!(row["total_partitions"], 30);
    assert!(row["finished_ms"].as_u64() >= row["started_ms"].as_u64());
    assert!(row["lambda_usd"].as_f64().unwrap() > 0.0);
    let (_, none) = get(&client, &server, "/jobs?type=fire-tweets").await;
    assert_eq!(none["jobs"], json!([]));

    // Bad input is named.
    for (path, field) in [
        (format!("/jobs/{id}/timeline?after=soon"), "after"),
        (format!("/jobs/{id}/timeline?limit=3"), "limit"),
        ("/jobs?type=a%20b".to_owned(), "type"),
    ] {
        let (status, body) = get(&client, &server, &path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body["error"]["field"], field, "{path}");
    }
    let (status, _) = get(
        &client,
        &server,
        &format!("/jobs/{}/timeline", "0".repeat(64)),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
