//! The one Lambda artefact: every function of the deployment runs this binary, which takes
//! its role from `SLUICE_FUNCTION` or the function's name (`handlers::role`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let role = handlers::role::Role::from_env()?;
    handlers::run(role).await
}
