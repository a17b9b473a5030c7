//! A deployed stack, found by its name (`--stack NAME`): its CloudFormation outputs
//! (`template.yaml`'s `Outputs`) tell the CLI where the API, the table, the bucket and the
//! control queue are, so nothing is copied by hand.

use anyhow::{bail, Result};
use aws_config::SdkConfig;
use orchestration::aws::AwsSettings;

/// The outputs the CLI reads (`template.yaml` declares them; `tests/it/template.rs` checks).
pub const API_URL: &str = "ApiUrl";
pub const TABLE: &str = "Table";
pub const BUCKET: &str = "Bucket";
pub const CONTROL_QUEUE_URL: &str = "ControlQueueUrl";

#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    pub name: String,
    pub api_url: String,
    pub table: String,
    pub bucket: String,
    pub control_queue_url: String,
}

impl Stack {
    /// The stack's outputs, by `DescribeStacks` (the SDK's configuration: credentials,
    /// Region, `AWS_ENDPOINT_URL`).
    pub async fn describe(sdk: &SdkConfig, name: &str) -> Result<Self> {
        let client = aws_sdk_cloudformation::Client::new(sdk);
        let out = client
            .describe_stacks()
            .stack_name(name)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "describing the stack {name} (CloudFormation): {}",
                    aws_sdk_cloudformation::error::DisplayErrorContext(&e)
                )
            })?;
        let Some(stack) = out.stacks().first() else {
            bail!("no stack named {name}");
        };
        let outputs = stack
            .outputs()
            .iter()
            .filter_map(|o| Some((o.output_key()?, o.output_value()?)));
        Self::from_outputs(name, outputs)
    }

    /// The stack from its `(OutputKey, OutputValue)` pairs; the four outputs above are
    /// required.
    pub fn from_outputs<'a>(
        name: &str,
        outputs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        let outputs: std::collections::HashMap<&str, &str> = outputs.into_iter().collect();
        let get = |key: &str| -> Result<String> {
            match outputs.get(key) {
                Some(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
                _ => bail!("the stack {name} has no output {key} (is it a sluice stack?)"),
            }
        };
        Ok(Self {
            name: name.to_owned(),
            api_url: get(API_URL)?,
            table: get(TABLE)?,
            bucket: get(BUCKET)?,
            control_queue_url: get(CONTROL_QUEUE_URL)?,
        })
    }

    /// The deployment's settings as its functions read them: the stack name is the prefix
    /// of every resource it names (`template.yaml` sets `SLUICE_PREFIX` to it).
    pub fn settings(&self) -> AwsSettings {
        AwsSettings {
            table: self.table.clone(),
            bucket: self.bucket.clone(),
            control_queue_url: self.control_queue_url.clone(),
            ..AwsSettings::new(&self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `aws cloudformation describe-stacks --query "Stacks[0].Outputs"` of a deployed stack.
    const OUTPUTS_FIXTURE: &str = r#"[
        {"OutputKey": "ApiUrl", "OutputValue": "https://k3x9.execute-api.eu-west-1.amazonaws.com/",
         "Description": "The job API"},
        {"OutputKey": "Bucket", "OutputValue": "sluice-databucket-1x2y3z"},
        {"OutputKey": "Table", "OutputValue": "sluice-JobsTable-ABC123"},
        {"OutputKey": "ControlQueueUrl",
         "OutputValue": "https://sqs.eu-west-1.amazonaws.com/123456789012/sluice-control"},
        {"OutputKey": "AlarmTopic", "OutputValue": "arn:aws:sns:eu-west-1:123456789012:sluice-AlarmTopic-X"}
    ]"#;

    fn fixture() -> Vec<(String, String)> {
        let outputs: Vec<serde_json::Value> = serde_json::from_str(OUTPUTS_FIXTURE).unwrap();
        outputs
            .iter()
            .map(|o| {
                (
                    o["OutputKey"].as_str().unwrap().to_owned(),
                    o["OutputValue"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_stack_is_read_from_its_outputs() {
        let outputs = fixture();
        let stack = Stack::from_outputs(
            "sluice",
            outputs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .unwrap();
        assert_eq!(
            stack.api_url,
            "https://k3x9.execute-api.eu-west-1.amazonaws.com/"
        );
        let settings = stack.settings();
        assert_eq!(settings.prefix, "sluice");
        assert_eq!(settings.table, "sluice-JobsTable-ABC123");
        assert_eq!(settings.bucket, "sluice-databucket-1x2y3z");
        assert_eq!(
            settings.control_queue_url,
            "https://sqs.eu-west-1.amazonaws.com/123456789012/sluice-control"
        );
    }

    #[test]
    fn a_missing_output_is_named() {
        let outputs = fixture();
        let without_table = outputs
            .iter()
            .filter(|(k, _)| k != TABLE)
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let e = Stack::from_outputs("other", without_table).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the stack other has no output Table (is it a sluice stack?)"
        );
    }
}
