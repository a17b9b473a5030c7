//! The `daemon` function: ticks from the control queue, with partial batch responses.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    handlers::run_daemon().await
}
