//! Pipelines as data: every definition in `pipelines/` passes the tests declared beside
//! it, and an ad-hoc definition runs over HTTP on a running `sluice serve` (no restart, no
//! rebuild), with bad definitions refused by field.

use std::time::Duration;

use orchestration::pipeline::{testing, Pipeline};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use crate::api::{post, wait_result};
use crate::support::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_pipeline_passes_its_declared_tests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "pipelines/ holds {files:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for f in &files {
        let p = Pipeline::from_toml(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!p.def.tests.is_empty(), "{} declares no tests", f.display());
        for (name, outcome) in testing::run_all(&p, dir.path()).await {
            if let Err(e) = outcome {
                failures.push(format!("{} :: {name}: {e}", f.display()));
            }
        }
        // Unfused, a stage a step with records sent between them as JSON: the same results.
        let mut def = p.def.clone();
        def.settings.fuse = Some(false);
        let unfused = Pipeline::compile(def).unwrap();
        for (name, outcome) in testing::run_all(&unfused, dir.path()).await {
            if let Err(e) = outcome {
                failures.push(format!("{} (unfused) :: {name}: {e}", f.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn definition(filter: &str) -> Value {
    json!({
        "name": "adhoc-users",
        "params": {"country": {"type": "string", "default": "GB"}},
        "source": {"format": "json-lines", "prefix": "users/"},
        "steps": [{"filter": filter}],
        "reduce": {
            "n": {"op": "count"},
            "by_city": {"op": "count-by", "key": "city"},
        },
        "settings": {"policy": "always-one", "min_coverage": 0.5},
    })
}

#[tokio::test]
async fn an_ad_hoc_pipeline_runs_over_http_with_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("blobs/users");
    std::fs::create_dir_all(&users).unwrap();
    std::fs::write(
        users.join("a.jsonl"),
        [
            r#"{"country": "GB", "city": "Leeds"}"#,
            r#"{"country": "GB", "city": "York"}"#,
            r#"{"country": "GB", "city": "Leeds"}"#,
            r#"{"country": "IE", "city": "Cork"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = Client::new();

    let body = json!({"type": "pipeline", "params": {"definition": definition("country == params.country")}});
    let (status, accepted) = post(&client, &server, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let result = wait_result(&client, &server, &id).await;
    assert_eq!(result["status"], "done", "{result}");
    assert_eq!(result["result"]["n"], 3);
    assert_eq!(result["result"]["records_scanned"], 4);
    assert_eq!(result["result"]["by_city"]["keys"], 2);
    // The definition's settings are the request's defaults.
    let status: Value = client
        .get(server.url(&format!("/jobs/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["policy"], "always-one", "{status}");
    assert_eq!(status["min_coverage"], 0.5, "{status}");

    // The same request is the same job; an edited definition is another.
    let (_, again) = post(&client, &server, &body).await;
    assert_eq!(again["job_id"], id.as_str());
    let edited = json!({"type": "pipeline", "params": {"definition": definition("country != params.country")}});
    let (status, other) = post(&client, &server, &edited).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(other["job_id"], id.as_str());
    let result = wait_result(&client, &server, other["job_id"].as_str().unwrap()).await;
    assert_eq!(result["result"]["n"], 1);

    // Bad definitions: a 400 naming the field, and no job.
    let cases = [
        (
            definition("country == "),
            "params.definition.steps[0].filter",
        ),
        (
            definition("country == params.nope"),
            "params.definition.steps[0].filter",
        ),
        (
            definition("[1].map(x, [1].map(y, y)).size() > 0"),
            "params.definition.steps[0].filter",
        ),
        (
            {
                let mut d = definition("true");
                d["source"]["prefix"] = json!("results/");
                d
            },
            "params.definition.source.prefix",
        ),
        (
            {
                let mut d = definition("true");
                d["steps"] = json!(vec![json!({"filter": "true"}); 1000]);
                d
            },
            "params.definition.steps",
        ),
        (
            {
                let mut d = definition("true");
                d["reduce"]["n"]["op"] = json!("counts");
                d
            },
            "params.definition.reduce.n.op",
        ),
    ];
    for (def, field) in cases {
        let (status, body) = post(
            &client,
            &server,
            &json!({"type": "pipeline", "params": {"definition": def}}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let (status, body) = post(
        &client,
        &server,
        &json!({"type": "pipeline", "params": {"definition": definition("true"), "country": 3}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "params.country", "{body}");
}

/// `pipelines/fire-tweets.toml` gives exactly the built-in fire-tweets' result on 3
/// generated days (its own `expression_errors`, 0, aside), with and without faults; and so
/// does the same definition unfused (a stage a step, records sent between them as JSON).
async fn fire_tweets_as_a_definition(faults: &str, gzip: bool) {
    use orchestration::job::{JobRequest, JobStatus};
    use orchestration::local::{Engine, EngineOptions};
    use orchestration::submit::{submit, SubmitOptions};
    use orchestration::tweets::{generate, GenOptions};

    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        dir.path(),
        EngineOptions {
            faults: faults.parse().unwrap(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let options = GenOptions {
        from: "2018-11-01".parse().unwrap(),
        to: "2018-11-03".parse().unwrap(),
        per_day: 3_000,
        per_part: 1_000,
        seed: 2018,
        gzip,
    };
    generate(engine.services.blobs.as_ref(), &options)
        .await
        .unwrap();
    let params = json!({"country": "GB", "from": "2018-11-01", "to": "2018-11-03"});
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let text = std::fs::read_to_string(root.join("fire-tweets.toml")).unwrap();
    let mut unfused = Pipeline::from_toml(&text).unwrap().def;
    unfused.name = "fire-tweets-unfused".into();
    unfused.settings.fuse = Some(false);
    let mut unfused_params = params.clone();
    unfused_params["definition"] = serde_json::to_value(&unfused).unwrap();
    let mut ids = Vec::new();
    for (job_type, params) in [
        ("fire-tweets", &params),
        ("fire-tweets-pipeline", &params),
        ("pipeline", &unfused_params),
    ] {
        let request = JobRequest {
            job_type: job_type.into(),
            params: params.clone(),
        };
        let s = submit(&engine.services, &request, &SubmitOptions::default())
            .await
            .unwrap();
        ids.push(s.id);
    }
    crate::engine::run_until_done_within(&engine, &ids, Duration::from_secs(600)).await;
    let mut results = Vec::new();
    for id in &ids {
        let rec = orchestration::record::load(engine.services.store.as_ref(), id)
            .await
            .unwrap()
            .unwrap()
            .record;
        let outcome = rec.outcome.unwrap();
        assert_eq!(rec.status, JobStatus::Done, "{:?}", outcome.error);
        let result =
            orchestration::keyed::expand(engine.services.blobs.as_ref(), &outcome.result.unwrap())
                .await
                .unwrap();
        results.push(result);
    }
    let builtin = results.remove(0);
    for (mut pipeline, how) in results.into_iter().zip(["fused", "unfused"]) {
        let errors = pipeline
            .as_object_mut()
            .unwrap()
            .remove("expression_errors");
        assert_eq!(errors, Some(json!(0)), "{how}");
        assert_eq!(pipeline, builtin, "{how}, under `{faults}`");
    }
    assert!(builtin["matching"].as_u64().unwrap() > 20, "{builtin}");
    assert!(
        builtin["notices"].as_object().unwrap().len() > 1,
        "{builtin}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_tweets_as_a_definition_matches_the_built_in_job() {
    fire_tweets_as_a_definition("", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_tweets_as_a_definition_matches_the_built_in_job_under_faults() {
    fire_tweets_as_a_definition("duplicate=0.2,crash=0.1,daemon-crash=0.2", true).await;
}
