//! Job requests, their validation and identity, and the stored job record with its lifecycle.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A request as the user sends it: `{"type": ..., "params": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    #[serde(rename = "type")]
    pub job_type: String,
    #[serde(default)]
    pub params: Value,
}

/// A request error that names the offending field (`params.messages`, `type`, ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Hex SHA-256 of the canonical JSON of `(type, params, flow version)`: the cache key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// `params` must already be normalized (defaults filled in), so that a request that
    /// spells out a default and one that omits it are the same job.
    pub fn compute(job_type: &str, params: &Value, flow_version: u32) -> Self {
        let canonical = serde_json::json!({
            "flow_version": flow_version,
            "params": params,
            "type": job_type,
        });
        // serde_json's map is ordered by key (no `preserve_order`), and `to_string` emits
        // no whitespace: this is the canonical form. Strings are escaped, so no two distinct
        // values share an encoding (unlike concatenating fields).
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        Self(hex::encode(digest))
    }

    /// The id of a job whose type is a definition: the canonical definition is hashed
    /// with the params, so editing it changes every id it makes.
    pub fn compute_with(
        job_type: &str,
        params: &Value,
        flow_version: u32,
        definition: &Value,
    ) -> Self {
        let canonical = serde_json::json!({
            "definition": definition,
            "flow_version": flow_version,
            "params": params,
            "type": job_type,
        });
        Self(hex::encode(Sha256::digest(
            canonical.to_string().as_bytes(),
        )))
    }

    /// Parses a user-supplied id: exactly 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::new(
                "id",
                "must be 64 lowercase hex digits",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 32 hex digits (128 bits): enough to name a job's queues within SQS's
    /// 80-character limit.
    pub fn short(&self) -> &str {
        &self.0[..32]
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads and checks a job type's parameters one field at a time, so each error names its
/// field, then rejects whatever fields were not read.
pub struct ParamReader<'a> {
    params: &'a Map<String, Value>,
    known: Vec<&'static str>,
    normalized: Map<String, Value>,
}

impl<'a> ParamReader<'a> {
    pub fn new(params: &'a Value) -> Result<Self, ValidationError> {
        match params {
            Value::Object(map) => Ok(Self {
                params: map,
                known: Vec::new(),
                normalized: Map::new(),
            }),
            _ => Err(ValidationError::new("params", "must be an object")),
        }
    }

    fn field(name: &str) -> String {
        format!("params.{name}")
    }

    /// A required or defaulted integer within `min..=max`.
    pub fn integer(
        &mut self,
        name: &'static str,
        min: u64,
        max: u64,
        default: Option<u64>,
    ) -> Result<u64, ValidationError> {
        self.known.push(name);
        let value = match (self.params.get(name), default) {
            (None | Some(Value::Null), Some(d)) => d,
            (None | Some(Value::Null), None) => {
                return Err(ValidationError::new(Self::field(name), "is required"))
            }
            (Some(v), _) => v.as_u64().ok_or_else(|| {
                ValidationError::new(
                    Self::field(name),
                    format!("must be an integer from {min} to {max}"),
                )
            })?,
        };
        if !(min..=max).contains(&value) {
            return Err(ValidationError::new(
                Self::field(name),
                format!("must be from {min} to {max}, got {value}"),
            ));
        }
        self.normalized.insert(name.into(), value.into());
        Ok(value)
    }

    /// A string of 1..=`max_len` characters; `default` when absent.
    pub fn string(
        &mut self,
        name: &'static str,
        max_len: usize,
        default: Option<&str>,
    ) -> Result<Option<String>, ValidationError> {
        self.known.push(name);
        let value = match self.params.get(name) {
            None | Some(Value::Null) => default.map(str::to_owned),
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ValidationError::new(Self::field(name), "must be a string")),
        };
        if let Some(s) = &value {
            let len = s.chars().count();
            if len == 0 || len > max_len || s.trim().is_empty() {
                return Err(ValidationError::new(
                    Self::field(name),
                    format!("must be 1 to {max_len} characters, not blank"),
                ));
            }
            self.normalized
                .insert(name.into(), Value::String(s.clone()));
        }
        Ok(value)
    }

    /// A list of 1..=`max_items` strings of 1..=`max_len` characters, none blank; `default`
    /// when absent. Errors name the item (`params.keywords[2]`).
    pub fn string_list(
        &mut self,
        name: &'static str,
        max_items: usize,
        max_len: usize,
        default: Option<&[&str]>,
    ) -> Result<Option<Vec<String>>, ValidationError> {
        self.known.push(name);
        let items: Vec<String> = match self.params.get(name) {
            None | Some(Value::Null) => match default {
                Some(d) => d.iter().map(|s| (*s).to_owned()).collect(),
                None => return Ok(None),
            },
            Some(Value::Array(values)) => {
                let mut items = Vec::with_capacity(values.len());
                for (i, v) in values.iter().enumerate() {
                    let Value::String(s) = v else {
                        return Err(ValidationError::new(
                            format!("params.{name}[{i}]"),
                            "must be a string",
                        ));
                    };
                    let len = s.chars().count();
                    if len == 0 || len > max_len || s.trim().is_empty() {
                        return Err(ValidationError::new(
                            format!("params.{name}[{i}]"),
                            format!("must be 1 to {max_len} characters, not blank"),
                        ));
                    }
                    items.push(s.clone());
                }
                items
            }
            Some(_) => {
                return Err(ValidationError::new(
                    Self::field(name),
                    "must be an array of strings",
                ))
            }
        };
        if items.is_empty() || items.len() > max_items {
            return Err(ValidationError::new(
                Self::field(name),
                format!("must have 1 to {max_items} items, got {}", items.len()),
            ));
        }
        self.normalized
            .insert(name.into(), serde_json::json!(items));
        Ok(Some(items))
    }

    pub fn boolean(&mut self, name: &'static str, default: bool) -> Result<bool, ValidationError> {
        self.known.push(name);
        let value = match self.params.get(name) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ValidationError::new(
                    Self::field(name),
                    "must be true or false",
                ))
            }
        };
        self.normalized.insert(name.into(), Value::Bool(value));
        Ok(value)
    }

    /// Rejects unknown fields and returns the normalized parameters (defaults filled in).
    pub fn finish(self) -> Result<Value, ValidationError> {
        if let Some(unknown) = self
            .params
            .keys()
            .find(|k| !self.known.contains(&k.as_str()))
        {
            let mut known = self.known.clone();
            known.sort_unstable();
            return Err(ValidationError::new(
                Self::field(unknown),
                format!("unknown field; known fields: {}", known.join(", ")),
            ));
        }
        Ok(Value::Object(self.normalized))
    }
}

/// A job's lifecycle. Transitions are only those [`JobStatus::can_become`] allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }

    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending | Running, Done | Failed | Cancelled)
                // A failed or cancelled job is retried by submitting it again.
                | (Failed | Cancelled, Pending)
        ) || self == next
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_id_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"messages": 5, "text": "a b"}"#).unwrap();
        let b: Value = serde_json::from_str("{\"text\":\"a b\",\n \"messages\":5}").unwrap();
        assert_eq!(
            JobId::compute("wordcount", &a, 1),
            JobId::compute("wordcount", &b, 1)
        );
    }

    #[test]
    fn job_id_separates_what_concatenation_would_merge() {
        // The paper's key concatenated limit and param: (1, "23") and (12, "3") collided.
        let a = JobId::compute("wordcount", &json!({"messages": 1, "text": "23"}), 1);
        let b = JobId::compute("wordcount", &json!({"messages": 12, "text": "3"}), 1);
        assert_ne!(a, b);
        let v1 = JobId::compute("wordcount", &json!({"messages": 1}), 1);
        let v2 = JobId::compute("wordcount", &json!({"messages": 1}), 2);
        assert_ne!(v1, v2, "the flow version is part of the key");
        assert_eq!(a.as_str().len(), 64);
    }

    #[test]
    fn job_id_parse_rejects_malformed() {
        assert!(JobId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "xyz", &"A".repeat(64), &"a".repeat(63), &"g".repeat(64)] {
            assert_eq!(JobId::parse(bad).unwrap_err().field, "id");
        }
    }

    #[test]
    fn param_reader_names_fields() {
        let params = json!({"n": "x"});
        let mut r = ParamReader::new(&params).unwrap();
        assert_eq!(r.integer("n", 1, 5, None).unwrap_err().field, "params.n");

        let params = json!({"n": 9});
        let mut r = ParamReader::new(&params).unwrap();
        let err = r.integer("n", 1, 5, None).unwrap_err();
        assert!(err.message.contains("from 1 to 5"), "{err}");

        let params = json!({"n": 3, "bogus": 1});
        let mut r = ParamReader::new(&params).unwrap();
        r.integer("n", 1, 5, None).unwrap();
        assert_eq!(r.finish().unwrap_err().field, "params.bogus");

        let params = json!({});
        let mut r = ParamReader::new(&params).unwrap();
        assert_eq!(
            r.integer("n", 1, 5, None).unwrap_err().message,
            "is required"
        );
        assert_eq!(r.string("s", 3, Some("ab")).unwrap().as_deref(), Some("ab"));
        assert_eq!(r.finish().unwrap(), json!({"s": "ab"}));

        assert_eq!(ParamReader::new(&json!([1])).err().unwrap().field, "params");

        let params = json!({"k": ["a", "b"], "bad": ["a", 5], "blank": [" "], "none": []});
        let mut r = ParamReader::new(&params).unwrap();
        assert_eq!(
            r.string_list("k", 3, 5, None).unwrap(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            r.string_list("d", 3, 5, Some(&["x"])).unwrap(),
            Some(vec!["x".to_owned()])
        );
        assert_eq!(r.string_list("absent", 3, 5, None).unwrap(), None);
        assert_eq!(
            r.string_list("bad", 3, 5, None).unwrap_err().field,
            "params.bad[1]"
        );
        assert_eq!(
            r.string_list("blank", 3, 5, None).unwrap_err().field,
            "params.blank[0]"
        );
        assert_eq!(
            r.string_list("none", 3, 5, None).unwrap_err().field,
            "params.none"
        );
        assert_eq!(
            r.string_list("k", 1, 5, None).unwrap_err().field,
            "params.k"
        );
        let params = json!({"s": "   "});
        assert!(ParamReader::new(&params)
            .unwrap()
            .string("s", 9, None)
            .is_err());
    }

    #[test]
    fn status_transitions() {
        use JobStatus::*;
        assert!(Pending.can_become(Running));
        assert!(Running.can_become(Done));
        assert!(!Done.can_become(Running));
        assert!(!Done.can_become(Pending));
        assert!(Failed.can_become(Pending));
        assert!(!Running.can_become(Pending));
    }
}
