//! A pipeline definition as written: TOML in `pipelines/NAME.toml`, or the same structure
//! as JSON in an ad-hoc request. [`Definition`] is only its shape (serde, and the JSON
//! Schema published from it); what it means is checked by [`super::Pipeline::compile`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job type written as data: typed parameters, a source, record steps, and a reduce of
/// named aggregates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The job type's name: lowercase letters, digits and dashes (`top-hashtags`).
    pub name: String,
    /// What the job computes, for people (the dashboard's form shows it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The request's parameters, by name; expressions read them as `params.NAME`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, Param>,
    pub source: Source,
    /// Record steps, in order: each is one of `filter`, `compute`, `explode`, `tokenize`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// The result's fields, by name: each an aggregate of the records that reach the end of
    /// the steps.
    pub reduce: BTreeMap<String, Aggregate>,
    #[serde(default, skip_serializing_if = "Settings::is_default")]
    pub settings: Settings,
    /// Tests declared beside the definition: input records and the expected result
    /// (`sluice pipeline test`). They are not part of the job's identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<TestCase>,
}

/// A parameter of the request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Param {
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// The value when the request leaves it out; without one the parameter is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Least value (`integer`, `number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Greatest value (`integer`, `number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Longest string, in characters (`string`, and each item of `strings`; default 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// Most items (`strings`; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_items: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    /// A day, `YYYY-MM-DD`.
    Date,
    /// A list of strings.
    Strings,
}

/// Where the records come from: the lines of the objects under a prefix of the
/// deployment's data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub format: Format,
    /// The objects' key prefix, relative to the deployment's data (`tweets/`). With `days`,
    /// each day's objects are under `{prefix}YYYY-MM-DD/`. Not for `synthetic-text`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// `synthetic-text`: the `integer` parameter that says how many messages
    /// (`"{text} {i}"`, i from 1) the job generates, as the paper's word count does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<String>,
    /// `synthetic-text`: the `string` parameter of the messages' text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A date-partitioned layout: the days from the `from` to the `to` parameter, each a
    /// part of the job cached on its own (an overlapping range reuses the days it shares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<Days>,
    /// `json-lines`: the record's time, when it has one. With `days`, a record counts for
    /// the day it was created on, whichever day's folder holds it (a folder may hold the
    /// previous day's records, filed late).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeField>,
    /// `json-lines`: top-level keys that make a line a notice (`delete`, `limit`), counted
    /// by kind in `notices` and never as records. Blank lines are `keep-alive` notices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
    /// `json-lines`: dotted paths a record must hold; a line without one is malformed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<String>,
    /// What a record is called in the source's counters (`{records}_scanned`,
    /// `{records}_outside_range`). Default `records`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One JSON object a line; expressions read its fields by name (`place.country_code`).
    JsonLines,
    /// One string a line, as `line`.
    TextLines,
    /// Generated lines `"{text} {i}"` (the paper's synthetic input), as `line`; partitions
    /// of `settings.partition_size` messages.
    SyntheticText,
}

/// The parameters that bound a date-partitioned source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Days {
    /// The `date` parameter of the first day.
    pub from: String,
    /// The `date` parameter of the last day (inclusive).
    pub to: String,
    /// A `boolean` parameter: when true, a day without data counts as empty (named in
    /// `missing_days`) instead of failing the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_missing: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeField {
    /// The field's dotted path (`created_at`).
    pub field: String,
    pub format: TimeFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TimeFormat {
    /// Twitter's `Thu Nov 01 12:34:56 +0000 2018`.
    Twitter,
    /// `2018-11-01T12:34:56Z`.
    Rfc3339,
    /// Seconds since 1970 (a number).
    UnixSeconds,
    /// Milliseconds since 1970 (a number, or a string of digits).
    UnixMillis,
}

/// One record step: exactly one of `filter`, `compute`, `explode`, `tokenize`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Keeps the records for which this CEL predicate is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Binds the value of this CEL expression to the name in `as`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<String>,
    /// Makes one record per item of this list-valued CEL expression, the item bound to `as`
    /// (a record whose list is empty or null ends here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explode: Option<String>,
    /// Makes one record per word of this string-valued CEL expression (lowercased runs of
    /// letters and digits, as the word count splits text), the word bound to `as`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenize: Option<String>,
    /// The name `compute`, `explode` and `tokenize` bind.
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One field of the result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    pub op: AggregateOp,
    /// The value aggregated (`sum`, `min`, `max`, `sum-by`, `min-by`, `max-by`, `distinct`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The key (`count-by`, `sum-by`, `min-by`, `max-by`, `top-k`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `top-k`: the group each key is ranked within (`country + ' ' + day`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `top-k`: how many keys a group keeps: a number, or the name of an `integer` parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<Value>,
    /// `histogram`: the time a record is counted at (a CEL `timestamp`); default the
    /// source's `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `histogram`: the bucket width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<Bucket>,
    /// `distinct`: HyperLogLog's precision p (4 to 16; 2^p registers, standard error
    /// 1.04/sqrt(2^p)). Default 14 (0.81 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u8>,
    /// Only the records for which this CEL predicate is true are aggregated here.
    #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AggregateOp {
    /// How many records.
    Count,
    Sum,
    Min,
    Max,
    /// How many records per key: a keyed result, of any size.
    CountBy,
    SumBy,
    MinBy,
    MaxBy,
    /// The k keys with the most records, per group (exact: counted per key, then ranked).
    TopK,
    /// How many distinct values, approximately (HyperLogLog), with its error bound.
    Distinct,
    /// How many records per time bucket.
    Histogram,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

/// Settings a run of the pipeline uses unless the request says otherwise.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Input bytes per partition (1 KiB to 16 MiB; default 4 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_bytes: Option<u64>,
    /// `synthetic-text`: messages per partition (1 to 100,000; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_size: Option<u64>,
    /// The scaling policy (`backlog`, `static-proportional:M`, `always-one`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The share of partitions that must be reduced for the job to succeed (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_coverage: Option<f64>,
    /// Expected distinct keys of the keyed aggregates (sizes the shuffle); default from the
    /// input's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_keys: Option<u64>,
    /// Runs the record steps fused in one stage (`true`, the default), or each in a stage
    /// of its own with a queue between (`false`: at most 8 steps, each record sent on as
    /// JSON; slower, see ARCHITECTURE.md, kept to measure the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse: Option<bool>,
}

impl Settings {
    fn is_default(&self) -> bool {
        *self == Settings::default()
    }
}

/// A test of the definition: objects to read, the params, and the fields the result must
/// have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: serde_json::Map<String, Value>,
    /// Objects by key under the source's prefix (`2018-11-01/a.jsonl`), each a list of
    /// lines: strings as they are, anything else written as one JSON line.
    pub input: BTreeMap<String, Vec<Value>>,
    /// Fields of the result and their values (a keyed field as its whole map of keys).
    pub expect: serde_json::Map<String, Value>,
}

impl Definition {
    /// The definition as it identifies a job: its JSON without `description` and `tests`
    /// (they do not change a result), keys sorted.
    pub fn canonical(&self) -> Value {
        let mut def = self.clone();
        def.description.clear();
        def.tests.clear();
        serde_json::to_value(&def).unwrap_or(Value::Null)
    }

    /// The published JSON Schema of a definition.
    pub fn json_schema() -> Value {
        serde_json::to_value(schemars::schema_for!(Definition)).unwrap_or(Value::Null)
    }
}
