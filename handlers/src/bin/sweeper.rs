//! The `sweeper` function: on an EventBridge schedule, restarts silent daemons and deletes
//! leaked queues and mappings.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    handlers::run_sweeper().await
}
