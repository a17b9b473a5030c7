//! CloudWatch metrics as Embedded Metric Format (EMF) log lines: one JSON object per line
//! on standard output, which Lambda ships to CloudWatch Logs and CloudWatch turns into
//! metrics, with no API call (and nothing an emulator needs to support). The alarms in
//! `template.yaml` watch these metrics.

use serde_json::{json, Map, Value};

/// The metrics' namespace, as in `template.yaml`.
pub const NAMESPACE: &str = "Sluice";
/// The dimension every metric carries: the deployment (stack) it comes from.
pub const DIMENSION: &str = "Stack";
/// Messages the daemon found in a job's dead-letter queue in one tick.
pub const DEAD_LETTER_MESSAGES: &str = "DeadLetterMessages";
/// 1 for each tick of a job that has run past its deadline.
pub const JOBS_OVERDUE: &str = "JobsOverdue";

/// One EMF document: `metrics` (name, value, unit) under the stack's dimension, plus
/// `properties` (searchable in Logs Insights, not metrics).
pub fn document(
    stack: &str,
    timestamp_ms: u64,
    metrics: &[(&str, f64, &str)],
    properties: &[(&str, Value)],
) -> Value {
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|(name, _, unit)| json!({"Name": name, "Unit": unit}))
        .collect();
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[DIMENSION]],
                "Metrics": definitions,
            }]
        }),
    );
    doc.insert(DIMENSION.into(), json!(stack));
    for (name, value, _) in metrics {
        doc.insert((*name).into(), json!(value));
    }
    for (name, value) in properties {
        doc.insert((*name).into(), value.clone());
    }
    Value::Object(doc)
}

/// Prints one EMF line to standard output (on Lambda: to CloudWatch Logs).
pub fn emit(
    stack: &str,
    timestamp_ms: u64,
    metrics: &[(&str, f64, &str)],
    properties: &[(&str, Value)],
) {
    println!("{}", document(stack, timestamp_ms, metrics, properties));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_follow_the_embedded_metric_format() {
        let doc = document(
            "sl",
            1_700_000_000_000,
            &[
                (DEAD_LETTER_MESSAGES, 3.0, "Count"),
                (JOBS_OVERDUE, 1.0, "Count"),
            ],
            &[("job_id", json!("abc"))],
        );
        let cw = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(doc["_aws"]["Timestamp"], json!(1_700_000_000_000_u64));
        assert_eq!(cw["Namespace"], json!(NAMESPACE));
        assert_eq!(cw["Dimensions"], json!([[DIMENSION]]));
        assert_eq!(
            cw["Metrics"][0],
            json!({"Name": DEAD_LETTER_MESSAGES, "Unit": "Count"})
        );
        // Every metric and dimension named in the metadata is a top-level member.
        assert_eq!(doc[DIMENSION], json!("sl"));
        assert_eq!(doc[DEAD_LETTER_MESSAGES], json!(3.0));
        assert_eq!(doc[JOBS_OVERDUE], json!(1.0));
        assert_eq!(doc["job_id"], json!("abc"));
    }
}
