//! The `api` function: the job API behind API Gateway (HTTP API, IAM authorization).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    handlers::run_api().await
}
