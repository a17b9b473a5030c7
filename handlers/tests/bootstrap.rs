//! The `bootstrap` artefact as Lambda runs it: a process started with a function's
//! environment that polls the Lambda Runtime API. A stand-in for that API on loopback
//! serves `/2018-06-01/runtime/invocation/next` and takes the responses, so each role is
//! checked to start, take its role from its name, and answer an invocation; and the cold
//! start (process start to its first `next` request) is measured and printed.
//!
//! `SLUICE_BOOTSTRAP=path` measures another build of it (e.g. the Lambda profile's).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the stand-in saw: a request line and its body.
#[derive(Debug)]
struct Seen {
    at: Instant,
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body); `None` at end of stream.
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, String, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await.ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    Some((method, path, body))
}

/// Serves the Runtime API: the first `next` gets `event`, later ones wait forever (as
/// Lambda does between invocations); every request is reported on `seen`.
async fn serve(listener: TcpListener, event: Value, seen: mpsc::UnboundedSender<Seen>) {
    let mut served = false;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let mut reader = BufReader::new(stream);
        while let Some((method, path, body)) = read_request(&mut reader).await {
            let at = Instant::now();
            let is_next = path.ends_with("/runtime/invocation/next");
            let _ = seen.send(Seen {
                at,
                method,
                path,
                body,
            });
            let response = if is_next && !served {
                served = true;
                let body = event.to_string();
                let deadline = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
                    + 30_000;
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     lambda-runtime-aws-request-id: req-1\r\n\
                     lambda-runtime-deadline-ms: {deadline}\r\n\
                     lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:test\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else if is_next {
                std::future::pending::<()>().await;
                unreachable!()
            } else {
                "HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}".to_owned()
            };
            if reader
                .get_mut()
                .write_all(response.as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    }
}

fn bootstrap() -> String {
    std::env::var("SLUICE_BOOTSTRAP").unwrap_or_else(|_| env!("CARGO_BIN_EXE_bootstrap").to_owned())
}

/// Starts the bootstrap as the function `sluice-{role}` against a stand-in runtime that
/// hands it `event`; returns the cold start and the invocation's response body.
async fn invoke(role: &str, event: Value) -> (Duration, Value) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap().to_string();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(serve(listener, event, tx));
    let env: HashMap<&str, String> = HashMap::from([
        ("AWS_LAMBDA_RUNTIME_API", api),
        ("AWS_LAMBDA_FUNCTION_NAME", format!("sluice-{role}")),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("SLUICE_PREFIX", "sluice".into()),
        ("SLUICE_TABLE", "sluice-jobs".into()),
        ("SLUICE_BUCKET", "sluice-data".into()),
        // Nothing answers here: an invocation that called AWS would fail, not hang.
        (
            "SLUICE_CONTROL_QUEUE_URL",
            "http://127.0.0.1:9/sluice-control".into(),
        ),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("RUST_LOG", "warn".into()),
    ]);
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bootstrap())
        .env_clear()
        .envs(&env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the bootstrap starts");
    let mut ready = None;
    let response = loop {
        let seen = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("the bootstrap talks to the runtime API")
            .expect("the stand-in runs");
        if seen.path.ends_with("/invocation/next") {
            ready.get_or_insert(seen.at - started);
            continue;
        }
        assert!(
            seen.path.ends_with("/invocation/req-1/response"),
            "{role}: {} {}: {}",
            seen.method,
            seen.path,
            String::from_utf8_lossy(&seen.body)
        );
        break serde_json::from_slice(&seen.body).unwrap();
    };
    let _ = child.kill().await;
    server.abort();
    (ready.expect("a first `next`"), response)
}

#[tokio::test]
async fn every_role_starts_from_its_function_name_and_answers_an_invocation() {
    let empty_batch = json!({"Records": []});
    for role in ["source", "transform", "reduce", "daemon"] {
        let (cold, response) = invoke(role, empty_batch.clone()).await;
        assert_eq!(response, json!({"batchItemFailures": []}), "{role}");
        eprintln!("cold start of {role}: {:.1} ms", cold.as_secs_f64() * 1e3);
    }
    // The api role answers an API Gateway request; /health reads nothing.
    let health: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/fixtures/apigw-v2-get-health.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let (cold, response) = invoke("api", health).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    eprintln!("cold start of api: {:.1} ms", cold.as_secs_f64() * 1e3);
}
