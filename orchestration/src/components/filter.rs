//! `filter`: keeps the lines that contain a substring (all lines when none is given).

use serde_json::{json, Value};

use super::{ComponentError, Transform};

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub contains: Option<String>,
}

pub(crate) fn lines(payload: &Value) -> Result<&Vec<Value>, ComponentError> {
    payload
        .get("lines")
        .and_then(Value::as_array)
        .ok_or_else(|| ComponentError::Malformed("payload has no `lines` array".into()))
}

impl Transform for Filter {
    fn passes_through(&self) -> bool {
        self.contains.is_none()
    }

    fn apply(&self, payload: Value) -> Result<Value, ComponentError> {
        let Some(needle) = &self.contains else {
            lines(&payload)?;
            return Ok(payload);
        };
        let mut kept = Vec::new();
        for line in lines(&payload)? {
            let line = line
                .as_str()
                .ok_or_else(|| ComponentError::Malformed("a line is not a string".into()))?;
            if line.contains(needle.as_str()) {
                kept.push(Value::String(line.to_owned()));
            }
        }
        Ok(json!({ "lines": kept }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_matching_lines_and_rejects_malformed() {
        let f = Filter {
            contains: Some("fox".into()),
        };
        let out = f.apply(json!({"lines": ["a fox", "a dog"]})).unwrap();
        assert_eq!(out, json!({"lines": ["a fox"]}));
        assert!(Filter::default().apply(json!({"lines": ["x"]})).is_ok());
        assert!(matches!(
            Filter::default().apply(json!({"rows": []})),
            Err(ComponentError::Malformed(_))
        ));
        assert!(f.apply(json!({"lines": [1]})).is_err());
    }
}
