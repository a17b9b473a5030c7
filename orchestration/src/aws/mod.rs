//! The AWS adapters: the port traits over aws-sdk-rust (DynamoDB, SQS, S3, Lambda), the
//! deployment's configuration, and the provisioning an emulator needs.
//!
//! Endpoints come from the SDK's standard configuration, so `AWS_ENDPOINT_URL` points every
//! client at an emulator (moto server) on loopback. Throttling and transient errors are
//! retried by the SDK's standard retry strategy with exponential backoff and jitter
//! ([`retry_config`]).

pub mod config;
pub mod dynamodb;
pub mod lambda;
pub mod provision;
pub mod s3;
pub mod sqs;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

pub use config::AwsSettings;
pub use dynamodb::DynamoDbJobStore;
pub use lambda::{LambdaMappings, Triggers};
pub use s3::S3Blobs;
pub use sqs::SqsQueues;
pub use telemetry::StageCounters;

use crate::faults::Faults;
use crate::flow::Registry;
use crate::local::runtime::RuntimeConfig;
use crate::local::Engine;
use crate::ports::SystemClock;
use crate::services::Services;

/// Attempts per call, throttling included: the standard strategy backs off exponentially
/// (with jitter) from `INITIAL_BACKOFF` up to `MAX_BACKOFF` between them.
pub const MAX_ATTEMPTS: u32 = 8;
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// No call may hang: a connection that never answers would stall a poller or a daemon tick
/// until the function times out. An attempt outlasts the longest SQS long poll (20 s); the
/// whole call, its retries included, is bounded too.
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(25))
        .operation_timeout(Duration::from_secs(90))
        .build()
}
/// The Region when none is configured (an emulator does not care which).
pub const FALLBACK_REGION: &str = "us-east-1";

/// How every client retries: the SDK's standard mode (it classifies throttling errors such
/// as `ThrottlingException`, `RequestLimitExceeded` and `TooManyRequestsException` as
/// retryable, and uses a client-side rate limiter).
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(MAX_BACKOFF)
}

/// The SDK configuration from the environment (credentials, Region, `AWS_ENDPOINT_URL`).
pub async fn sdk_config() -> SdkConfig {
    let region = RegionProviderChain::default_provider().or_else(FALLBACK_REGION);
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(retry_config())
        .timeout_config(timeout_config())
        .load()
        .await
}

/// The four AWS adapters of one deployment.
#[derive(Clone)]
pub struct AwsPorts {
    pub store: Arc<DynamoDbJobStore>,
    pub queues: Arc<SqsQueues>,
    pub blobs: Arc<S3Blobs>,
    pub mappings: Arc<LambdaMappings>,
    pub telemetry: Arc<StageCounters>,
}

impl AwsPorts {
    pub fn new(sdk: &SdkConfig, settings: &AwsSettings, triggers: Triggers) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let sqs = aws_sdk_sqs::Client::new(sdk);
        // Emulators serve buckets by path, not by virtual host.
        let s3_config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(sdk.endpoint_url().is_some())
            .build();
        let s3 = aws_sdk_s3::Client::from_conf(s3_config);
        let lambda = aws_sdk_lambda::Client::new(sdk);
        let queues = Arc::new(SqsQueues::new(sqs));
        Self {
            store: Arc::new(DynamoDbJobStore::new(dynamodb.clone(), &settings.table)),
            telemetry: Arc::new(StageCounters::new(dynamodb, &settings.table)),
            blobs: Arc::new(S3Blobs::new(s3, &settings.bucket)),
            mappings: Arc::new(LambdaMappings::new(
                lambda,
                queues.clone(),
                &settings.prefix,
                triggers,
                settings.concurrency_budget + 100,
            )),
            queues,
        }
    }

    /// The ports bundle the core's handlers take (`emit_metrics`: on Lambda only).
    pub fn services(
        &self,
        settings: &AwsSettings,
        registry: Registry,
        faults: Faults,
        emit_metrics: bool,
    ) -> Services {
        Services {
            store: self.store.clone(),
            queues: self.queues.clone(),
            blobs: self.blobs.clone(),
            mappings: self.mappings.clone(),
            // The stage functions count their invocations in the table (`telemetry`).
            telemetry: self.telemetry.clone(),
            clock: Arc::new(SystemClock),
            registry,
            settings: settings.settings(emit_metrics),
            faults,
        }
    }
}

/// What a Lambda entry point does first: read the deployment's environment, connect to its
/// services, and build the core's services over them.
pub async fn services_from_env() -> Result<Arc<Services>, config::ConfigError> {
    let settings = AwsSettings::from_env()?;
    let sdk = sdk_config().await;
    let ports = AwsPorts::new(&sdk, &settings, Triggers::Lambda);
    Ok(Arc::new(ports.services(
        &settings,
        Registry::default(),
        Faults::default(),
        true,
    )))
}

/// How the local runtime polls an AWS account or emulator: its mappings are re-listed
/// twice a second (there is no change feed), everything else as on the embedded engine.
pub fn runtime_config() -> RuntimeConfig {
    RuntimeConfig {
        resync_interval: Duration::from_millis(500),
        ..RuntimeConfig::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocalEngineError {
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    #[error(transparent)]
    Engine(#[from] crate::local::engine::EngineError),
}

/// An engine whose state lives in AWS (or an emulator) and whose functions run here: the
/// AWS adapters for every port, the local ESM runtime polling the real queues, and the
/// invocation log under `state_dir`. With `provision`, whatever of the deployment is
/// missing is created first (as `sam deploy` would), and the control queue's URL is found.
pub async fn local_engine(
    state_dir: &std::path::Path,
    sdk: &SdkConfig,
    mut settings: AwsSettings,
    provision: bool,
    registry: Registry,
    faults: Faults,
) -> Result<(Engine, AwsPorts), LocalEngineError> {
    let ports = AwsPorts::new(sdk, &settings, Triggers::Local);
    if provision {
        provision::provision(sdk, &mut settings, &ports).await?;
    }
    let services = Arc::new(ports.services(&settings, registry, faults, false));
    let engine = Engine::with_services(state_dir, services, runtime_config())?;
    Ok((engine, ports))
}

/// A tiny deployment package: what an emulator's `CreateFunction` is given for functions
/// that the local runtime runs in-process (`bootstrap` says so and exits 1).
pub(crate) const STAND_IN_ZIP: &[u8] = &[
    80, 75, 3, 4, 20, 0, 0, 0, 0, 0, 0, 0, 33, 92, 76, 201, 50, 230, 70, 0, 0, 0, 70, 0, 0, 0, 9,
    0, 0, 0, 98, 111, 111, 116, 115, 116, 114, 97, 112, 35, 33, 47, 98, 105, 110, 47, 115, 104, 10,
    101, 99, 104, 111, 32, 39, 97, 32, 115, 116, 97, 110, 100, 45, 105, 110, 58, 32, 115, 108, 117,
    105, 99, 101, 32, 114, 117, 110, 115, 32, 116, 104, 105, 115, 32, 102, 117, 110, 99, 116, 105,
    111, 110, 32, 108, 111, 99, 97, 108, 108, 121, 39, 10, 101, 120, 105, 116, 32, 49, 10, 80, 75,
    1, 2, 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 33, 92, 76, 201, 50, 230, 70, 0, 0, 0, 70, 0, 0, 0, 9, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 237, 1, 0, 0, 0, 0, 98, 111, 111, 116, 115, 116, 114, 97, 112,
    80, 75, 5, 6, 0, 0, 0, 0, 1, 0, 1, 0, 55, 0, 0, 0, 109, 0, 0, 0, 0, 0,
];
