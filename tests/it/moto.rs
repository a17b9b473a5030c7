//! The AWS-API emulator for the tests: one moto server per test process, started on a free
//! loopback port from the project's `.venv` (made by `scripts/python-env`), and stopped when
//! the process exits (it serves until its stdin closes). Tests isolate themselves by giving
//! every deployment a prefix of its own, so they can share the server and run in parallel.
//! A second server, started on first use, fails a tenth of the requests the way AWS does
//! (`scripts/moto-server --fault-rate`), for the tests of the adapters' retries.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sqs::config::{Credentials, Region};
use orchestration::aws::{provision, AwsPorts, AwsSettings, Triggers};

struct Moto {
    endpoint: String,
    _child: Mutex<Child>,
}

fn python() -> String {
    std::env::var("SLUICE_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

fn start(args: &[&str]) -> Moto {
    let python = python();
    let mut child = Command::new(&python)
        .arg(format!(
            "{}/scripts/moto-server",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start moto with {python} ({e}); run scripts/python-env first")
        });
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("moto announces its endpoint");
    let endpoint = line.trim().to_owned();
    assert!(
        endpoint.starts_with("http://127.0.0.1:"),
        "moto did not start (is moto[server] in .venv? run scripts/python-env): {line:?}"
    );
    Moto {
        endpoint,
        _child: Mutex::new(child),
    }
}

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| start(&[]))
}

/// The share of requests the faulty emulator fails.
pub const FAULT_RATE: f64 = 0.1;

fn faulty() -> &'static Moto {
    static FAULTY: OnceLock<Moto> = OnceLock::new();
    FAULTY.get_or_init(|| start(&["--fault-rate", &FAULT_RATE.to_string()]))
}

/// The emulator's endpoint URL (for child processes: `AWS_ENDPOINT_URL`).
pub fn endpoint() -> &'static str {
    &moto().endpoint
}

/// The SDK configuration for the emulator: loopback endpoint, fixed test credentials.
pub async fn sdk() -> SdkConfig {
    sdk_at(&moto().endpoint).await
}

/// The SDK configuration for the emulator that fails [`FAULT_RATE`] of the requests, with
/// the retry and timeout settings the deployment uses.
pub async fn faulty_sdk() -> SdkConfig {
    sdk_at(&faulty().endpoint).await
}

/// What the faulty emulator has injected so far: `{"requests": N, "faulted": {kind: n}}`.
pub async fn injected_faults() -> serde_json::Value {
    reqwest::get(format!("{}/sluice-faults", faulty().endpoint))
        .await
        .expect("the faulty emulator answers")
        .json()
        .await
        .expect("a JSON report of the faults")
}

async fn sdk_at(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .retry_config(orchestration::aws::retry_config())
        .timeout_config(orchestration::aws::timeout_config())
        .load()
        .await
}

/// A fresh deployment prefix: every test gets its own table, bucket and queues.
pub fn prefix(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed),
        test
    )
}

/// A deployment in the emulator, provisioned as `sam deploy` would (table, bucket, control
/// queue, function records), with mappings left to the local runtime.
pub struct Deployment {
    pub settings: AwsSettings,
    pub ports: AwsPorts,
}

pub async fn deployment(test: &str) -> Deployment {
    let sdk = sdk().await;
    let mut settings = AwsSettings::new(&prefix(test));
    let ports = AwsPorts::new(&sdk, &settings, Triggers::Local);
    provision::provision(&sdk, &mut settings, &ports)
        .await
        .expect("provisioning the emulator");
    Deployment { settings, ports }
}
