//! sluice's Lambda entry points: one multi-call binary, `bootstrap` (`src/bin/bootstrap.rs`),
//! that every function runs, picking its role at start ([`role`]); this crate only adapts
//! Lambda's events to the core in `orchestration` (where all the logic is, testable without
//! Lambda).
//!
//! | role | event | core |
//! |---|---|---|
//! | `api` | API Gateway HTTP API (payload v2) | [`orchestration::api::Api::handle`] |
//! | `daemon` | SQS batch from the control queue | [`orchestration::daemon::Daemon::handle`] |
//! | `sweeper` | EventBridge schedule | [`orchestration::sweeper::Sweeper::sweep`] |
//! | `feed`, `filter`, `count`, `reduce` | SQS batch from a job's stage queue | [`orchestration::worker::StageHandler::handle`] |
//!
//! SQS handlers answer with a partial batch response: a message that fails (a malformed
//! body included) is a batch item failure, never a failed invocation.

pub mod http;
pub mod role;

use std::sync::Arc;

use aws_lambda_events::event::cloudwatch_events::CloudWatchEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use orchestration::api::Api;
use orchestration::daemon::Daemon;
use orchestration::flow::Function;
use orchestration::services::Services;
use orchestration::sweeper::{SweepReport, Sweeper};
use orchestration::worker::StageHandler;

/// Logs as JSON lines (CloudWatch Logs Insights reads their fields: `job_id`, `stage`,
/// `partition`), filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_target(false)
        .without_time() // CloudWatch stamps every line
        .try_init();
}

/// The core's services over this deployment's AWS resources, from the environment.
pub async fn services() -> Result<Arc<Services>, Error> {
    Ok(orchestration::aws::services_from_env().await?)
}

/// A stage function: its SQS batches through the stage handler.
pub async fn stage(
    svc: Arc<Services>,
    function: Function,
    event: SqsEvent,
) -> Result<SqsBatchResponse, Error> {
    Ok(StageHandler::new(svc, function).handle(event).await?)
}

/// `main` of a stage function.
pub async fn run_stage(function: Function) -> Result<(), Error> {
    init_tracing();
    let handler = Arc::new(StageHandler::new(services().await?, function));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let handler = handler.clone();
        async move { Ok::<_, Error>(handler.handle(event.payload).await?) }
    }))
    .await
}

/// `main` of the daemon function: control-queue ticks.
pub async fn run_daemon() -> Result<(), Error> {
    init_tracing();
    let daemon = Arc::new(Daemon::new(services().await?));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let daemon = daemon.clone();
        async move { Ok::<_, Error>(daemon.handle(event.payload).await?) }
    }))
    .await
}

/// `main` of the `bootstrap` every function runs: its role's loop.
pub async fn run(role: role::Role) -> Result<(), Error> {
    match role {
        role::Role::Api => run_api().await,
        role::Role::Daemon => run_daemon().await,
        role::Role::Sweeper => run_sweeper().await,
        role::Role::Stage(function) => run_stage(function).await,
    }
}

/// The sweeper's handler: one sweep per scheduled event.
pub async fn sweep(sweeper: &Sweeper, event: CloudWatchEvent) -> Result<SweepReport, Error> {
    tracing::info!(source = ?event.source, time = ?event.time, "sweep");
    Ok(sweeper.sweep().await?)
}

/// `main` of the sweeper function.
pub async fn run_sweeper() -> Result<(), Error> {
    init_tracing();
    let sweeper = Arc::new(Sweeper::new(services().await?));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<CloudWatchEvent>| {
        let sweeper = sweeper.clone();
        async move { sweep(&sweeper, event.payload).await }
    }))
    .await
}

/// `main` of the api function. Its status views report the stages' invocation counts from
/// the counters the stage functions keep in the table, beside queues and the ledger.
pub async fn run_api() -> Result<(), Error> {
    init_tracing();
    let svc = services().await?;
    let api = Arc::new(Api::new(svc.clone(), svc.telemetry.clone()));
    lambda_http::run(lambda_http::service_fn(move |request| {
        let api = api.clone();
        async move { Ok::<_, Error>(http::handle(&api, request).await) }
    }))
    .await
}
