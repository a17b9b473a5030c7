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
        let malformed = |e: serde_json::Error| EnvelopeError::Malformed(e.to_string());
        let mut body = serde_json::to_string(&self).map_err(malformed)?;
        if body.len() <= INLINE_PAYLOAD_LIMIT {
            return Ok(body);
        }
        let key = Self::claim_check_key(&self.job, self.attempt, &self.stage, self.partition);
        // `payload` is the last field serialized: the body ends `,"payload":<payload>}`.
        // Cut it out rather than serialize a large payload a second time.
        let payload = self.payload.take();
        let head = serde_json::to_string(&self).map_err(malformed)?;
        let start = head.len() - 1 + r#","payload":"#.len();
        if payload.is_none() || start >= body.len() {
            return Err(EnvelopeError::Malformed(format!(
                "an envelope of {} bytes with no payload to claim-check",
                body.len()
            )));
        }
        body.truncate(body.len() - 1);
        let payload = body.split_off(start).into_bytes();
        // Deterministic key and content: a retried send rewrites the same object.
        blobs.put(&key, payload).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::FileBlobs;
    use serde_json::json;

    fn envelope(payload: Value) -> Envelope {
        Envelope {
            job: "j".repeat(64),
            attempt: 2,
            stage: "count".into(),
            partition: 7,
            payload: Some(payload),
            payload_ref: None,
        }
    }

    #[tokio::test]
    async fn large_payloads_are_claim_checked_byte_for_byte_and_small_ones_inline() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FileBlobs::open(dir.path().to_owned()).unwrap();
        let lines: Vec<String> = (0..20_000).map(|i| format!("line \"{i}\" é")).collect();
        let payload = json!({ "lines": lines });
        let body = envelope(payload.clone()).encode(&blobs).await.unwrap();
        assert!(body.len() < 1024, "{body}");
        let mut parsed = Envelope::parse(&body).unwrap();
        let key = parsed.payload_ref.clone().unwrap();
        assert_eq!(
            key,
            Envelope::claim_check_key(&"j".repeat(64), 2, "count", 7)
        );
        let stored = blobs.get(&key).await.unwrap().unwrap();
        assert_eq!(stored, serde_json::to_vec(&payload).unwrap());
        assert_eq!(parsed.take_payload(&blobs).await.unwrap(), payload);

        let small = envelope(json!({"lines": ["a b"]}));
        let body = small.clone().encode(&blobs).await.unwrap();
        assert_eq!(Envelope::parse(&body).unwrap(), small);
    }
}
