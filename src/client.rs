//! The CLI as a client of the job API (`--api URL`): a local `sluice serve` or a deployed
//! API Gateway. Every request goes through [`ApiClient::send`], the one place where a
//! deployed API's SigV4 signing will be added.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::{Method, RequestBuilder};
use serde_json::Value;

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends a request; returns the status and the JSON body.
    async fn send(&self, request: RequestBuilder) -> Result<(u16, Value)> {
        let response = request
            .send()
            .await
            .with_context(|| format!("calling the API at {}", self.base))?;
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub async fn submit(&self, body: &Value) -> Result<(u16, Value)> {
        self.send(self.request(Method::POST, "/jobs").json(body))
            .await
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(u16, Value)> {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Polls the job until its result is ready.
    pub async fn wait(&self, id: &str) -> Result<Value> {
        self.wait_polling(id, Duration::from_millis(100)).await
    }

    /// [`ApiClient::wait`], asking every `every` (benchmarks want a finer resolution).
    pub async fn wait_polling(&self, id: &str, every: Duration) -> Result<Value> {
        loop {
            let (status, body) = self.get(&format!("/jobs/{id}/result")).await?;
            match status {
                200 => return Ok(body),
                409 => tokio::time::sleep(every).await,
                _ => bail!("{}", error_message(status, &body)),
            }
        }
    }
}

/// The API's error as one line: `404 not_found: no job …`.
pub fn error_message(status: u16, body: &Value) -> String {
    let error = &body["error"];
    let field = error["field"]
        .as_str()
        .map(|f| format!(" (field {f})"))
        .unwrap_or_default();
    format!(
        "{status} {}: {}{field}",
        error["code"].as_str().unwrap_or("error"),
        error["message"].as_str().unwrap_or("no message")
    )
}
