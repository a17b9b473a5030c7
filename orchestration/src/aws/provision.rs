//! What `sam deploy` creates, made directly for an emulator (moto server) or a scratch
//! account: the table, the bucket, the control queue with its DLQ, an execution role and a
//! record for each function (so that mappings and reserved concurrency have something to
//! name), and the control queue's mapping to the daemon. Idempotent: what exists is kept.
//!
//! A real deployment does not use this; `template.yaml` declares the same resources.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Architecture, FunctionCode, Runtime};
use tracing::info;

use super::config::{function_name, AwsSettings, FUNCTIONS};
use super::AwsPorts;
use crate::flow::Function;
use crate::ports::{
    DeadLetter, MappingConfig, MappingError, Mappings, QueueError, QueueSpec, Queues,
};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Service(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

fn service(what: &str, e: impl std::error::Error) -> ProvisionError {
    ProvisionError::Service(format!("{what}: {}", DisplayErrorContext(&e)))
}

/// Attribute the table's TTL reads (seconds since the epoch), as in `template.yaml`.
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// The control queue's mapping to the daemon, as in `template.yaml`.
pub const CONTROL_MAPPING: MappingConfig = MappingConfig {
    batch_size: 10,
    batching_window_secs: 0,
    max_concurrency: Some(10),
    provisioned_pollers: None,
    enabled: true,
};

/// Creates whatever of the deployment is missing and sets `settings.control_queue_url`.
pub async fn provision(
    sdk: &SdkConfig,
    settings: &mut AwsSettings,
    ports: &AwsPorts,
) -> Result<(), ProvisionError> {
    table(sdk, &settings.table).await?;
    bucket(sdk, &settings.bucket).await?;
    functions(sdk, &settings.prefix).await?;
    settings.control_queue_url = control_queue(ports.queues.as_ref(), &settings.prefix).await?;
    let existing = ports
        .mappings
        .list_mappings(Some(&settings.control_queue_url))
        .await?;
    if !existing
        .iter()
        .any(|m| m.function == Function::Daemon.as_str())
    {
        ports
            .mappings
            .create_mapping(
                &settings.control_queue_url,
                Function::Daemon.as_str(),
                CONTROL_MAPPING,
                Default::default(),
            )
            .await?;
    }
    info!(prefix = %settings.prefix, "deployment provisioned");
    Ok(())
}

/// The control queue and its DLQ; returns the control queue's URL.
pub async fn control_queue(queues: &dyn Queues, prefix: &str) -> Result<String, QueueError> {
    let dlq = queues
        .create_queue(&QueueSpec {
            name: format!("{prefix}-control-dlq"),
            visibility_timeout: Duration::from_secs(30),
            dead_letter: None,
        })
        .await?;
    queues
        .create_queue(&QueueSpec {
            name: format!("{prefix}-control"),
            // Short: a tick that died, or found the lease busy, comes back soon. The local
            // runtime keeps running ticks invisible with its heartbeat.
            visibility_timeout: Duration::from_secs(2),
            dead_letter: Some(DeadLetter {
                queue_url: dlq,
                // A chain tick waits out a dead daemon's lease by failing; give it room.
                max_receive_count: 100,
            }),
        })
        .await
}

async fn table(sdk: &SdkConfig, name: &str) -> Result<(), ProvisionError> {
    let client = aws_sdk_dynamodb::Client::new(sdk);
    let attribute = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| service("CreateTable", e))
    };
    let key = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .map_err(|e| service("CreateTable", e))
    };
    let created = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk")?)
        .attribute_definitions(attribute("sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e) if e.code() == Some("ResourceInUseException") => return Ok(()),
        Err(e) => return Err(service("CreateTable", e)),
    }
    // Wait until it is active (an emulator is at once; AWS takes seconds).
    for _ in 0..120 {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| service("DescribeTable", e))?;
        let active = out
            .table()
            .and_then(|t| t.table_status())
            .is_some_and(|s| s.as_str() == "ACTIVE");
        if active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ttl = TimeToLiveSpecification::builder()
        .attribute_name(TTL_ATTRIBUTE)
        .enabled(true)
        .build()
        .map_err(|e| service("UpdateTimeToLive", e))?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(ttl)
        .send()
        .await
        .map_err(|e| service("UpdateTimeToLive", e))?;
    info!(table = name, "created table");
    Ok(())
}

async fn bucket(sdk: &SdkConfig, name: &str) -> Result<(), ProvisionError> {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    let mut request = client.create_bucket().bucket(name);
    if let Some(region) = sdk.region().map(|r| r.as_ref().to_owned()) {
        if region != "us-east-1" {
            request = request.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        region.as_str(),
                    ))
                    .build(),
            );
        }
    }
    match request.send().await {
        Ok(_) => {
            info!(bucket = name, "created bucket");
            Ok(())
        }
        Err(e)
            if matches!(
                e.code(),
                Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(service("CreateBucket", e)),
    }
}

async fn functions(sdk: &SdkConfig, prefix: &str) -> Result<(), ProvisionError> {
    let iam = aws_sdk_iam::Client::new(sdk);
    let role_name = format!("{prefix}-functions");
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole"
        }]
    });
    let role_arn = match iam
        .create_role()
        .role_name(&role_name)
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
    {
        Ok(out) => out.role().map(|r| r.arn().to_owned()),
        Err(e) if e.code() == Some("EntityAlreadyExists") => None,
        Err(e) => return Err(service("CreateRole", e)),
    };
    let role_arn = match role_arn {
        Some(arn) => arn,
        None => iam
            .get_role()
            .role_name(&role_name)
            .send()
            .await
            .map_err(|e| service("GetRole", e))?
            .role()
            .map(|r| r.arn().to_owned())
            .ok_or_else(|| ProvisionError::Service(format!("GetRole {role_name}: no role")))?,
    };
    let lambda = aws_sdk_lambda::Client::new(sdk);
    for function in FUNCTIONS {
        let name = function_name(prefix, function);
        let created = lambda
            .create_function()
            .function_name(&name)
            .runtime(Runtime::Providedal2023)
            .architectures(Architecture::Arm64)
            .handler("bootstrap")
            .role(&role_arn)
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(super::STAND_IN_ZIP))
                    .build(),
            )
            .send()
            .await;
        match created {
            Ok(_) => info!(function = %name, "created function record"),
            Err(e) if e.code() == Some("ResourceConflictException") => {}
            Err(e) => return Err(service("CreateFunction", e)),
        }
    }
    Ok(())
}
