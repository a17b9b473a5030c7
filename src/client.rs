//! The CLI as a client of the job API: a local `sluice serve`, or a deployed API Gateway
//! with IAM auth. Every request goes through [`ApiClient::send`], which signs it with SigV4
//! (service `execute-api`) when the API is a deployment: `--stack NAME`, an `https://` URL,
//! or `--sign`. Credentials come from the AWS SDK's standard chain (environment, profile,
//! SSO, instance or container role); TLS is rustls.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use clap::Args;
use reqwest::Method;
use serde_json::Value;

use crate::stack::Stack;

/// The service name API Gateway verifies signatures for.
const SIGNING_SERVICE: &str = "execute-api";

/// How the CLI reaches a deployed stack (global flags).
#[derive(Args, Clone, Debug, Default)]
pub struct Remote {
    /// A deployed stack: its API URL (and, with `--backend aws`, its table, bucket and
    /// control queue) are read from its CloudFormation outputs; requests are signed.
    #[arg(long, env = "SLUICE_STACK", global = true)]
    pub stack: Option<String>,
    /// Sign requests to the job API with SigV4 even over plain HTTP (a local verifier or
    /// proxy); `https://` APIs and `--stack` are always signed.
    #[arg(long, env = "SLUICE_SIGN", global = true)]
    pub sign: bool,
}

impl Remote {
    /// Whether a job is read through an API: `--stack` without `--backend aws` (which reads
    /// the stack's table directly).
    pub fn is_api(&self, backend: crate::Backend) -> bool {
        self.stack.is_some() && backend != crate::Backend::Aws
    }
}

/// SigV4 for API Gateway's IAM authorizer.
#[derive(Clone, Debug)]
pub struct Signer {
    credentials: SharedCredentialsProvider,
    region: String,
}

impl Signer {
    pub fn new(credentials: SharedCredentialsProvider, region: &str) -> Self {
        Self {
            credentials,
            region: region.to_owned(),
        }
    }

    /// The headers that sign this request at `time` (`authorization`, `x-amz-date`, and
    /// `x-amz-security-token` with temporary credentials). `headers` are the request's own
    /// headers, all of which are signed.
    pub async fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(String, String)>> {
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .context("no AWS credentials to sign the request with (the SDK's standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, SSO, a role)")?;
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SIGNING_SERVICE)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .context("SigV4 parameters")?
            .into();
        let request = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .context("a request SigV4 can sign")?;
        let (instructions, _signature) = sign(request, &params)
            .context("signing the request")?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect())
    }
}

/// The Region of an API Gateway URL (`https://{id}.execute-api.{region}.amazonaws.com/`).
fn region_of(url: &str) -> Option<&str> {
    let host = url.split("://").nth(1)?.split(['/', ':']).next()?;
    let mut labels = host.split('.');
    labels.find(|l| *l == "execute-api")?;
    labels.next().filter(|r| !r.is_empty())
}

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    signer: Option<Signer>,
}

impl ApiClient {
    /// An unsigned client (a local `sluice serve`).
    pub fn new(base: &str) -> Result<Self> {
        Self::with_signer(base, None)
    }

    fn with_signer(base: &str, signer: Option<Signer>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            signer,
        })
    }

    /// The client for `api`, or for the stack's API with `--stack`; signed when the API
    /// is a deployment (see the module doc).
    pub async fn connect(api: &str, remote: &Remote) -> Result<Self> {
        let needs_sdk = remote.stack.is_some() || remote.sign || api.starts_with("https://");
        if !needs_sdk {
            return Self::new(api);
        }
        let sdk = orchestration::aws::sdk_config().await;
        let base = match &remote.stack {
            Some(name) => Stack::describe(&sdk, name).await?.api_url,
            None => api.to_owned(),
        };
        let Some(credentials) = sdk.credentials_provider() else {
            bail!("no AWS credentials provider: cannot sign requests to {base}");
        };
        let region = region_of(&base)
            .map(str::to_owned)
            .or_else(|| sdk.region().map(|r| r.to_string()))
            .unwrap_or_else(|| orchestration::aws::FALLBACK_REGION.to_owned());
        Self::with_signer(&base, Some(Signer::new(credentials, &region)))
    }

    /// Sends a request (signed if this client signs); returns the status and the JSON body.
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let body = match body {
            Some(v) => serde_json::to_vec(v).context("encoding the request")?,
            None => Vec::new(),
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        if !body.is_empty() {
            headers.push(("content-type".into(), "application/json".into()));
        }
        if let Some(signer) = &self.signer {
            let own: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let signed = signer
                .sign(method.as_str(), &url, &own, &body, SystemTime::now())
                .await?;
            headers.extend(signed);
        }
        let mut request = self.http.request(method, &url).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling the API at {}", self.base))?;
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub async fn submit(&self, body: &Value) -> Result<(u16, Value)> {
        self.send(Method::POST, "/jobs", Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.send(Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Result<(u16, Value)> {
        self.send(Method::DELETE, path, None).await
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

/// The API's error as one line: `404 not_found: no job …`. API Gateway's own refusals
/// (`403 {"message": "Forbidden"}`, a bad or missing signature) say only `message`.
pub fn error_message(status: u16, body: &Value) -> String {
    let error = &body["error"];
    if error.is_null() {
        if let Some(message) = body["message"].as_str() {
            return format!("{status} {message}");
        }
    }
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

#[cfg(test)]
mod tests {
    use aws_credential_types::Credentials;

    use super::*;

    #[test]
    fn the_region_comes_from_an_api_gateway_url() {
        assert_eq!(
            region_of("https://abc123.execute-api.eu-west-1.amazonaws.com/"),
            Some("eu-west-1")
        );
        assert_eq!(
            region_of("https://abc123.execute-api.us-east-1.amazonaws.com.cn:443/jobs"),
            Some("us-east-1")
        );
        assert_eq!(region_of("http://127.0.0.1:8080"), None);
        assert_eq!(region_of("https://api.example.com/"), None);
    }

    fn headers_of(signed: &[(String, String)]) -> std::collections::BTreeMap<&str, &str> {
        signed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[tokio::test]
    async fn a_request_is_signed_for_execute_api_over_its_body_and_time() {
        let credentials = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let signer = Signer::new(SharedCredentialsProvider::new(credentials), "eu-west-1");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let url = "https://abc.execute-api.eu-west-1.amazonaws.com/jobs";
        let json = [("content-type", "application/json")];
        let sign = |body: &'static [u8], time| {
            let signer = signer.clone();
            async move { signer.sign("POST", url, &json, body, time).await.unwrap() }
        };
        let signed = sign(b"{}", time).await;
        let h = headers_of(&signed);
        assert_eq!(h["x-amz-date"], "20270115T080000Z");
        let auth = h["authorization"];
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20270115/eu-west-1/execute-api/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="
            ),
            "{auth}"
        );
        // The same request at the same time signs the same; another body or time does not.
        assert_eq!(sign(b"{}", time).await, signed);
        let other_body = sign(b"{ }", time).await;
        assert_ne!(
            headers_of(&other_body)["authorization"],
            auth,
            "the body is signed"
        );
        let later = sign(b"{}", time + Duration::from_secs(1)).await;
        assert_ne!(headers_of(&later)["authorization"], auth);
    }

    #[tokio::test]
    async fn temporary_credentials_send_their_session_token() {
        let credentials = Credentials::new("ASIA", "secret", Some("token".into()), None, "test");
        let signer = Signer::new(SharedCredentialsProvider::new(credentials), "us-east-1");
        let signed = signer
            .sign(
                "GET",
                "https://x.execute-api.us-east-1.amazonaws.com/health",
                &[],
                b"",
                SystemTime::now(),
            )
            .await
            .unwrap();
        assert_eq!(headers_of(&signed)["x-amz-security-token"], "token");
    }

    #[test]
    fn gateway_refusals_are_one_line_too() {
        assert_eq!(
            error_message(403, &serde_json::json!({"message": "Forbidden"})),
            "403 Forbidden"
        );
        assert_eq!(
            error_message(
                400,
                &serde_json::json!({"error": {"code": "invalid_request", "message": "bad", "field": "params"}})
            ),
            "400 invalid_request: bad (field params)"
        );
    }
}
