//! The CLI against a deployment: requests signed with SigV4, checked by a verifier on
//! loopback that does what API Gateway's IAM authorizer does (the same secret, a 5-minute
//! clock skew) and forwards what it accepts to a `sluice serve`; and `--stack NAME`, which
//! finds the API among a CloudFormation stack's outputs (moto serves DescribeStacks).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::moto;
use crate::support::Server;

const KEY_ID: &str = "AKIDSLUICEVERIFIER";
const SECRET: &str = "the-verifiers-secret";
const REGION: &str = "us-east-1";
const SERVICE: &str = "execute-api";
/// API Gateway refuses a signature dated more than 5 minutes from its clock.
const MAX_SKEW: Duration = Duration::from_secs(300);

/// The `authorization`, `x-amz-date` (and session token) headers that sign a request.
fn sign_request(
    secret: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    time: SystemTime,
) -> Vec<(String, String)> {
    let identity = Credentials::new(KEY_ID, secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `20270115T080000Z` as a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let digits = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    if s.len() != 16 || &s[8..9] != "T" || !s.ends_with('Z') {
        return None;
    }
    let (y, m, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hh, mm, ss) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// What API Gateway's IAM authorizer checks: a signature by a known key, for this Region
/// and service, dated within the skew, over this very method, path, query, signed headers
/// and body.
fn verify(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let auth = header("authorization").ok_or("Missing Authentication Token")?;
    let fields = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not a SigV4 signature")?;
    let field = |name: &str| {
        fields
            .split(", ")
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .ok_or(format!("no {name} in the signature"))
    };
    let scope: Vec<&str> = field("Credential")?.split('/').collect();
    if scope.len() != 5 || scope[0] != KEY_ID {
        return Err("The security token included in the request is invalid".into());
    }
    if scope[2] != REGION || scope[3] != SERVICE {
        return Err(format!(
            "credential scope {scope:?} is not {REGION}/{SERVICE}"
        ));
    }
    let date = header("x-amz-date").ok_or("no x-amz-date")?;
    let time = parse_amz_date(date).ok_or("unreadable x-amz-date")?;
    let now = SystemTime::now();
    let skew = now
        .duration_since(time)
        .or_else(|_| time.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        return Err("Signature expired".into());
    }
    let host = header("host").ok_or("no host")?;
    let url = format!(
        "http://{host}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let signed: Vec<&str> = field("SignedHeaders")?.split(';').collect();
    let mut own = Vec::new();
    for name in &signed {
        if ["host", "x-amz-date", "x-amz-security-token"].contains(name) {
            continue;
        }
        own.push((
            *name,
            header(name).ok_or(format!("signed header {name} is missing"))?,
        ));
    }
    let expected = sign_request(SECRET, method.as_str(), &url, &own, body, time);
    let expected_auth = expected
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str());
    if expected_auth != Some(auth) {
        return Err(
            "The request signature we calculated does not match the signature you provided".into(),
        );
    }
    Ok(())
}

/// The verifier in front of a `sluice serve`: refuses what [`verify`] refuses with API
/// Gateway's `403 {"message": ...}`, and forwards the rest.
struct Verifier {
    base: String,
    _upstream: Server,
}

impl Verifier {
    async fn start(state_dir: &std::path::Path) -> Self {
        let upstream = Server::start(state_dir, &[]);
        let target = upstream.base.clone();
        let http = reqwest::Client::new();
        let state = Arc::new((target, http));
        let app = axum::Router::new()
            .fallback(
                |axum::extract::State(state): axum::extract::State<
                    Arc<(String, reqwest::Client)>,
                >,
                 method: Method,
                 uri: Uri,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    if let Err(message) = verify(&method, &uri, &headers, &body) {
                        return (
                            StatusCode::FORBIDDEN,
                            axum::Json(json!({ "message": message })),
                        )
                            .into_response();
                    }
                    let (target, http) = &*state;
                    let mut forward = http
                        .request(method, format!("{target}{}", uri.path_and_query().unwrap()))
                        .body(body.to_vec());
                    if let Some(ct) = headers.get("content-type") {
                        forward = forward.header("content-type", ct.as_bytes());
                    }
                    let answer = forward.send().await.unwrap();
                    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
                    let body: Value = answer.json().await.unwrap_or(Value::Null);
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(body.to_string()))
                        .unwrap()
                },
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base,
            _upstream: upstream,
        }
    }

    /// Sends a request with these extra headers; returns the status and JSON body.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .body(body.to_vec());
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_accepts_signed_requests_and_refuses_tampered_expired_or_unsigned_ones() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = Verifier::start(dir.path()).await;
    let now = SystemTime::now();
    let json_type = [("content-type", "application/json")];

    let signed = sign_request(SECRET, "GET", &verifier.url("/health"), &[], b"", now);
    let (status, body) = verifier.send("GET", "/health", &signed, b"").await;
    assert_eq!(status, 200, "a signed request is accepted: {body}");

    let job = json!({"type": "wordcount", "params": {"messages": 20}}).to_string();
    let mut post = sign_request(
        SECRET,
        "POST",
        &verifier.url("/jobs"),
        &json_type,
        job.as_bytes(),
        now,
    );
    post.push(("content-type".into(), "application/json".into()));
    let (status, body) = verifier.send("POST", "/jobs", &post, job.as_bytes()).await;
    assert_eq!(status, 202, "{body}");

    let refused = |(status, body): (u16, Value), what: &str, message: &str| {
        assert_eq!(status, 403, "{what} must be refused: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains(message),
            "{what}: {body}"
        );
    };
    // Tampered: another body, another path, another method under the same signature.
    let other = json!({"type": "wordcount", "params": {"messages": 99}}).to_string();
    refused(
        verifier
            .send("POST", "/jobs", &post, other.as_bytes())
            .await,
        "another body",
        "does not match",
    );
    refused(
        verifier.send("GET", "/jobs", &signed, b"").await,
        "another path",
        "does not match",
    );
    refused(
        verifier.send("DELETE", "/health", &signed, b"").await,
        "another method",
        "does not match",
    );
    // Expired: signed 10 minutes ago.
    let old = sign_request(
        SECRET,
        "GET",
        &verifier.url("/health"),
        &[],
        b"",
        now - Duration::from_secs(600),
    );
    refused(
        verifier.send("GET", "/health", &old, b"").await,
        "an expired signature",
        "expired",
    );
    // Signed with another secret, or not at all.
    let forged = sign_request(
        "not-the-secret",
        "GET",
        &verifier.url("/health"),
        &[],
        b"",
        now,
    );
    refused(
        verifier.send("GET", "/health", &forged, b"").await,
        "another secret",
        "does not match",
    );
    refused(
        verifier.send("GET", "/health", &[], b"").await,
        "an unsigned request",
        "Missing Authentication Token",
    );
}

/// The `sluice` binary with the verifier's credentials (or others), from the environment
/// as the SDK's standard chain reads it.
fn cli(dir: &std::path::Path, secret: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_STATE_DIR", dir)
        .env("SLUICE_LOG", "error")
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", REGION)
        .env("AWS_ENDPOINT_URL", moto::endpoint())
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("SLUICE_API")
        .env_remove("SLUICE_STACK")
        .output()
        .expect("the sluice binary runs")
}

fn json_of(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_its_requests_and_finds_the_api_of_a_stack() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = Verifier::start(dir.path()).await;
    let client_dir = tempfile::tempdir().unwrap();
    let api = verifier.base.as_str();

    // Signed (--sign: the verifier speaks plain HTTP), the job runs and its result returns.
    let out = cli(
        client_dir.path(),
        SECRET,
        &[
            "submit",
            "wordcount",
            "--messages",
            "100",
            "--api",
            api,
            "--sign",
            "--wait",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = json_of(&out);
    assert_eq!(result["result"]["total_words"], 500, "{result}");
    let id = result["job_id"].as_str().unwrap().to_owned();

    // Unsigned, or signed with the wrong secret: refused, and the CLI says why.
    for (secret, flags) in [(SECRET, vec![]), ("wrong", vec!["--sign"])] {
        let mut args = vec!["status", id.as_str(), "--api", api, "--json"];
        args.extend(flags);
        let out = cli(client_dir.path(), secret, &args);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("403"), "{stderr}");
    }

    // `--stack NAME`: the API URL comes from the stack's outputs (DescribeStacks), and
    // requests are signed without being asked.
    let stack = moto::prefix("stack");
    let template = json!({
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": format!("{stack}-q")}}},
        "Outputs": {
            "ApiUrl": {"Value": format!("{api}/")},
            "Table": {"Value": format!("{stack}-jobs")},
            "Bucket": {"Value": format!("{stack}-data")},
            "ControlQueueUrl": {"Value": format!("http://sqs.invalid/{stack}-control")},
        },
    });
    aws_sdk_cloudformation::Client::new(&moto::sdk().await)
        .create_stack()
        .stack_name(&stack)
        .template_body(template.to_string())
        .send()
        .await
        .expect("moto creates the stack");
    let out = cli(
        client_dir.path(),
        SECRET,
        &["result", &id, "--stack", &stack, "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_of(&out)["result"]["total_words"], 500);
    let out = cli(
        client_dir.path(),
        SECRET,
        &["status", &id, "--stack", "no-such-stack"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-stack"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
