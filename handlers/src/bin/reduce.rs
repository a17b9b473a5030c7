//! The `reduce` stage function: SQS batches from job stage queues, with partial batch responses.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    handlers::run_stage(orchestration::flow::Function::Reduce).await
}
