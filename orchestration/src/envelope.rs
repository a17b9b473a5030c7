//! The envelope every stage message carries: `{job, attempt, stage, partition, payload}`.
//! Payloads too large for a queue message travel as a claim-check: the payload goes to the
//! blob store and the envelope carries its key.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ports::{BlobError, Blobs};

/// Payloads above this go to the blob store. Below SQS's limit with room for the envelope.
pub const INLINE_PAYLOAD_LIMIT: usize = 192 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub job: String,
    pub attempt: u32,
    /// The stage that is to process this message.
    pub stage: String,
    pub partition: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// Claim-check: blob key of the payload when it was too large to inline.
    #[serde(
        default,
        rename = "payload_ref",
        skip_serializing_if = "Option::is_none"
    )]
    pub payload_ref: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("claim-checked payload {0} is missing")]
    MissingPayload(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

impl Envelope {
    pub fn claim_check_key(job: &str, attempt: u32, stage: &str, partition: u64) -> String {
        format!("payloads/{job}/{attempt}/{stage}/{partition}.json")
    }

    /// Serializes the envelope, moving a large payload to the blob store first.
    pub async fn encode(mut self, blobs: &dyn Blobs) -> Result<String, EnvelopeError> {
        let body =
            serde_json::to_string(&self).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if body.len() <= INLINE_PAYLOAD_LIMIT {
            return Ok(body);
        }
        let key = Self::claim_check_key(&self.job, self.attempt, &self.stage, self.partition);
        let payload = serde_json::to_vec(&self.payload)
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        // Deterministic key and content: a retried send rewrites the same object.
        blobs.put(&key, payload).await?;
        self.payload = None;
        self.payload_ref = Some(key);
        serde_json::to_string(&self).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// Parses a message body without resolving a claim-check.
    pub fn parse(body: &str) -> Result<Self, EnvelopeError> {
        serde_json::from_str(body).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// The payload, fetched from the blob store when claim-checked.
    pub async fn take_payload(&mut self, blobs: &dyn Blobs) -> Result<Value, EnvelopeError> {
        if let Some(payload) = self.payload.take() {
            return Ok(payload);
        }
        let Some(key) = &self.payload_ref else {
            return Ok(Value::Null);
        };
        let bytes = blobs
            .get(key)
            .await?
            .ok_or_else(|| EnvelopeError::MissingPayload(key.clone()))?;
        serde_json::from_slice(&bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }
}
