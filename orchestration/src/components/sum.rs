//! `sum` (and `merge-counts`): adds partials field by field. Numbers add; objects merge
//! recursively, adding the numbers under equal keys. That covers totals and count maps alike.

use serde_json::{Map, Value};

use super::{ComponentError, Reduce};

#[derive(Clone, Copy, Debug, Default)]
pub struct Sum;

fn add(acc: &mut Value, partial: &Value, path: &str) -> Result<(), ComponentError> {
    match (acc, partial) {
        (Value::Number(a), Value::Number(b)) => {
            let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) else {
                return Err(ComponentError::Malformed(format!(
                    "`{path}` is not a non-negative integer"
                )));
            };
            let sum = x.checked_add(y).ok_or_else(|| {
                ComponentError::Malformed(format!("`{path}` overflows a 64-bit count"))
            })?;
            *a = sum.into();
            Ok(())
        }
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                let slot = a.entry(k.clone()).or_insert_with(|| zero_like(v));
                add(slot, v, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        _ => Err(ComponentError::Malformed(format!(
            "`{path}` has a shape that cannot be summed"
        ))),
    }
}

fn zero_like(v: &Value) -> Value {
    match v {
        Value::Object(_) => Value::Object(Map::new()),
        _ => Value::from(0u64),
    }
}

impl Reduce for Sum {
    fn zero(&self) -> Value {
        Value::Object(Map::new())
    }

    fn fold(&self, acc: &mut Value, partial: &Value) -> Result<(), ComponentError> {
        if !partial.is_object() {
            return Err(ComponentError::Malformed(
                "a partial must be an object".into(),
            ));
        }
        // Validate on a copy so a malformed partial leaves the aggregate untouched.
        let mut next = acc.clone();
        add(&mut next, partial, "partial")?;
        *acc = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn adds_numbers_and_merges_maps() {
        let mut acc = Sum.zero();
        Sum.fold(&mut acc, &json!({"n": 2, "m": {"a": 1}})).unwrap();
        Sum.fold(&mut acc, &json!({"n": 3, "m": {"a": 1, "b": 5}}))
            .unwrap();
        assert_eq!(acc, json!({"n": 5, "m": {"a": 2, "b": 5}}));
    }

    #[test]
    fn malformed_partial_changes_nothing() {
        let mut acc = json!({"n": 1});
        assert!(Sum.fold(&mut acc, &json!({"n": "x"})).is_err());
        assert!(Sum.fold(&mut acc, &json!({"n": -1})).is_err());
        assert!(Sum.fold(&mut acc, &json!([1])).is_err());
        assert!(Sum.fold(&mut acc, &json!({"n": u64::MAX})).is_err());
        assert_eq!(acc, json!({"n": 1}));
    }
}
