//! Pipelines as data: a job type written as a definition (TOML in `pipelines/`, or JSON
//! in an ad-hoc request) instead of Rust. A definition names typed parameters, a source
//! (the lines of objects under a prefix, optionally one folder a day), record steps (CEL
//! expressions: `filter`, `compute`, `explode`, `tokenize`) and a reduce of named
//! aggregates (`count`, `sum`, `min`, `max`, `count-by`, `sum-by`, `min-by`, `max-by`,
//! `top-k`, `distinct`, `histogram`), each with an optional `where`.
//!
//! It runs on the same engine as the built-in job types: the source is `blob-lines` (ranges
//! by reference), the record steps and aggregates are one fused transform stage
//! ([`run::PipelineScan`]), scalar aggregates fold in the ledger ([`run::PipelineReduce`])
//! and by-key aggregates are keyed fields (shuffled, merged, results of any size). A
//! date-partitioned source makes each day a part of its own, cached and reused like
//! fire-tweets' days.
//!
//! A definition's job id hashes its canonical form ([`Definition::canonical`]) with the
//! params: an edited definition never serves a result computed by the old one.

pub mod definition;
pub mod expr;
pub mod fast;
pub mod run;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

pub use definition::Definition;
use definition::{AggregateOp, ParamType};
use expr::Expr;

use crate::components::blob_lines::{DEFAULT_RANGE_BYTES, MAX_RANGE_BYTES, MIN_RANGE_BYTES};
use crate::components::BlobLines;
use crate::flow::{Flow, Function, JobType, Stage, Step};
use crate::job::{JobRequest, ValidationError};
use crate::keyed;
use crate::tweets::Day;

/// Bounds on a definition's size: a hostile one is refused before anything runs.
pub const MAX_STEPS: usize = 64;
pub const MAX_AGGREGATES: usize = 32;
pub const MAX_PARAMS: usize = 32;
pub const MAX_TESTS: usize = 32;
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;
/// The longest range of days a date-partitioned source reads (a leap year).
pub const MAX_DAYS: i64 = 366;
/// `top-k`'s largest k.
pub const MAX_K: u64 = 10_000;
/// A synthetic source's most messages (as the word count's).
pub const MAX_MESSAGES: u64 = 100_000_000;
/// A synthetic source's text when no parameter gives it (the paper's).
pub const DEFAULT_TEXT: &str = "the quick brown fox jumps over the lazy dog";

/// What is wrong with a definition, and where: a path of fields (`steps[2].filter`), and
/// in a file its line and column.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}{}{message}", .at.map(|(l, c)| format!("line {l}, column {c}: ")).unwrap_or_default(), if .path.is_empty() { String::new() } else { format!("{}: ", .path) })]
pub struct DefinitionError {
    pub path: String,
    pub message: String,
    /// Line and column (from 1) in the file, when the definition came from one.
    pub at: Option<(usize, usize)>,
}

impl DefinitionError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            at: None,
        }
    }

    /// As a request's validation error, under `prefix` (`params.definition`).
    pub fn to_validation(&self, prefix: &str) -> ValidationError {
        let field = if self.path.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.path)
        };
        ValidationError::new(field, self.message.clone())
    }
}

/// A compiled pipeline: its definition, checked, with its expressions compiled.
#[derive(Debug)]
pub struct Pipeline {
    pub def: Definition,
    pub(crate) compiled: Arc<run::Compiled>,
}

impl Pipeline {
    /// A definition in TOML (a file): errors carry the line and column.
    pub fn from_toml(text: &str) -> Result<Pipeline, DefinitionError> {
        if text.len() > MAX_DEFINITION_BYTES {
            return Err(DefinitionError::new(
                "",
                format!("a definition may be at most {MAX_DEFINITION_BYTES} bytes"),
            ));
        }
        let def: Definition = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| line_col(text, s.start));
            DefinitionError {
                path: String::new(),
                message: e.message().trim().to_owned(),
                at,
            }
        })?;
        Pipeline::compile(def).map_err(|mut e| {
            e.at = locate(text, &e.path);
            e
        })
    }

    /// A definition as JSON (an ad-hoc request): errors name the field's path.
    pub fn from_json(value: &Value) -> Result<Pipeline, DefinitionError> {
        if value.to_string().len() > MAX_DEFINITION_BYTES {
            return Err(DefinitionError::new(
                "",
                format!("a definition may be at most {MAX_DEFINITION_BYTES} bytes"),
            ));
        }
        let def: Definition = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            DefinitionError::new(
                if path == "." { String::new() } else { path },
                e.into_inner().to_string(),
            )
        })?;
        Pipeline::compile(def)
    }

    /// Checks a definition and compiles its expressions.
    pub fn compile(def: Definition) -> Result<Pipeline, DefinitionError> {
        let compiled = run::Compiled::new(&def)?;
        Ok(Pipeline {
            def,
            compiled: Arc::new(compiled),
        })
    }

    /// The request's params checked against the definition's, defaults filled in.
    pub fn read_params(&self, params: &Value) -> Result<Map<String, Value>, ValidationError> {
        let given = match params {
            Value::Object(o) => o.clone(),
            Value::Null => Map::new(),
            _ => return Err(ValidationError::new("params", "must be an object")),
        };
        for key in given.keys() {
            if !self.def.params.contains_key(key) {
                let known: Vec<&str> = self.def.params.keys().map(String::as_str).collect();
                return Err(ValidationError::new(
                    format!("params.{key}"),
                    format!(
                        "unknown parameter; `{}` takes: {}",
                        self.def.name,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        let mut out = Map::new();
        for (name, spec) in &self.def.params {
            let field = format!("params.{name}");
            let value = match given.get(name).or(spec.default.as_ref()) {
                Some(v) => v.clone(),
                None => return Err(ValidationError::new(field, "is required")),
            };
            out.insert(name.clone(), check_param(&field, spec, value)?);
        }
        if let Some(days) = &self.def.source.days {
            let (from, to) = self.days_of(&out)?;
            if to < from {
                return Err(ValidationError::new(
                    format!("params.{}", days.to),
                    format!("must not be before `{}` ({from}), got {to}", days.from),
                ));
            }
            let n = from.days_until(to) + 1;
            if n > MAX_DAYS {
                return Err(ValidationError::new(
                    format!("params.{}", days.to),
                    format!("the range may span at most {MAX_DAYS} days, got {n}"),
                ));
            }
        }
        Ok(out)
    }

    fn days_of(&self, params: &Map<String, Value>) -> Result<(Day, Day), ValidationError> {
        let Some(days) = &self.def.source.days else {
            return Err(ValidationError::new(
                "source.days",
                "the source has no days",
            ));
        };
        let day = |name: &str| -> Result<Day, ValidationError> {
            params
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| ValidationError::new(format!("params.{name}"), "is required"))?
                .parse()
                .map_err(|e: crate::tweets::DateError| {
                    ValidationError::new(format!("params.{name}"), e.to_string())
                })
        };
        Ok((day(&days.from)?, day(&days.to)?))
    }

    /// The flow of a run with these (checked) params.
    pub fn flow(&self, params: &Map<String, Value>) -> Result<Flow, ValidationError> {
        let def = &self.def;
        let range_bytes = def.settings.partition_bytes.unwrap_or(DEFAULT_RANGE_BYTES);
        let prefix = def.source.prefix.clone();
        let mut day_of_prefix = BTreeMap::new();
        let mut window = None;
        let synthetic = match (def.source.format, &def.source.messages) {
            (definition::Format::SyntheticText, Some(messages)) => {
                let n = params.get(messages).and_then(Value::as_u64).unwrap_or(0);
                if !(1..=MAX_MESSAGES).contains(&n) {
                    return Err(ValidationError::new(
                        format!("params.{messages}"),
                        format!("must be 1 to {MAX_MESSAGES}"),
                    ));
                }
                let text = def
                    .source
                    .text
                    .as_ref()
                    .and_then(|t| params.get(t))
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_TEXT)
                    .to_owned();
                Some(crate::components::SyntheticText {
                    messages: n,
                    text,
                    partition_size: def.settings.partition_size.unwrap_or(100),
                })
            }
            _ => None,
        };
        let (prefixes, optional, allow_empty, size) = match &def.source.days {
            Some(days) => {
                let (from, to) = self.days_of(params)?;
                for d in Day::range(from, to) {
                    day_of_prefix.insert(format!("{prefix}{}", day_folder(d)), d);
                }
                let prefixes: Vec<String> = day_of_prefix.keys().cloned().collect();
                let next = format!("{prefix}{}", day_folder(to.plus(1)));
                day_of_prefix.insert(next.clone(), to.plus(1));
                window = Some((from, to));
                let allow = days
                    .allow_missing
                    .as_ref()
                    .and_then(|p| params.get(p))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let optional = if def.source.time.is_some() {
                    vec![next]
                } else {
                    Vec::new()
                };
                let n = prefixes.len() as u64;
                (prefixes, optional, allow, n)
            }
            None => (
                vec![prefix],
                Vec::new(),
                false,
                synthetic.as_ref().map_or(1, |s| s.messages),
            ),
        };
        let steps = self.compiled.steps.len();
        let parts = if def.settings.fuse == Some(false) {
            run::Part::unfused(steps)
        } else {
            vec![run::Part::fused(steps)]
        };
        let params_value = Value::Object(params.clone());
        let scan = |part: run::Part| run::PipelineScan {
            compiled: self.compiled.clone(),
            part,
            params: params_value.clone(),
            window,
            day_of_prefix: day_of_prefix.clone(),
            fast_env: Default::default(),
        };
        let reduce = run::PipelineReduce {
            compiled: self.compiled.clone(),
        };
        let stage = |function, name: &str, component, step| Stage {
            name: name.to_owned(),
            function,
            component,
            step,
        };
        let mut stages = vec![match synthetic {
            Some(source) => stage(
                Function::Source,
                "source",
                "synthetic-text",
                Step::Source(Arc::new(source)),
            ),
            None => stage(
                Function::Source,
                "source",
                "blob-lines",
                Step::Source(Arc::new(BlobLines {
                    by_reference: true,
                    prefixes,
                    optional_prefixes: optional,
                    range_bytes,
                    allow_empty,
                })),
            ),
        }];
        for part in parts {
            let (name, component) = match part {
                run::Part { lines: true, .. } => ("records".to_owned(), "pipeline-records"),
                run::Part { emit: false, .. } => ("aggregate".to_owned(), "pipeline-aggregate"),
                run::Part { from, .. } => (format!("step-{from}"), "pipeline-step"),
            };
            stages.push(stage(
                Function::Transform,
                &name,
                component,
                Step::Transform(Arc::new(scan(part))),
            ));
        }
        stages.push(stage(
            Function::Reduce,
            "reduce",
            "pipeline-reduce",
            Step::Reduce(Arc::new(reduce)),
        ));
        let flow = Flow {
            size,
            stages,
            keyed: None,
        };
        Ok(match self.keyed_spec(params) {
            Some(spec) => flow.keyed(spec),
            None => flow,
        })
    }

    fn keyed_spec(&self, params: &Map<String, Value>) -> Option<keyed::Spec> {
        let fields: Vec<keyed::Field> = self
            .compiled
            .aggregates
            .iter()
            .filter_map(|a| {
                let op = a.keyed_op()?;
                Some(keyed::Field {
                    name: a.name.clone(),
                    op,
                    top_per_group: a.top_k(params),
                })
            })
            .collect();
        if fields.is_empty() {
            return None;
        }
        Some(keyed::Spec {
            fields,
            expected_keys: match self.def.settings.expected_keys {
                Some(n) => keyed::ExpectedKeys::AtMost(n),
                None => keyed::ExpectedKeys::TextVocabulary,
            },
        })
    }

    /// A date-partitioned run of more than one day is the merge of one job per day.
    pub fn parts(
        &self,
        params: &Map<String, Value>,
    ) -> Result<Option<Vec<Map<String, Value>>>, ValidationError> {
        let Some(days) = &self.def.source.days else {
            return Ok(None);
        };
        let (from, to) = self.days_of(params)?;
        if from == to {
            return Ok(None);
        }
        Ok(Some(
            Day::range(from, to)
                .map(|d| {
                    let mut p = params.clone();
                    p.insert(days.from.clone(), Value::String(d.to_string()));
                    p.insert(days.to.clone(), Value::String(d.to_string()));
                    p
                })
                .collect(),
        ))
    }

    /// The definition's `settings.policy` and `settings.min_coverage` (checked when it
    /// compiled).
    pub fn default_options(&self) -> (Option<crate::policy::Policy>, Option<f64>) {
        let s = &self.def.settings;
        (
            s.policy.as_deref().and_then(|p| p.parse().ok()),
            s.min_coverage,
        )
    }

    /// The params as a JSON Schema, for forms (`GET /job-types`).
    pub fn params_schema(&self) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for (name, p) in &self.def.params {
            let mut s = match p.kind {
                ParamType::String => {
                    json!({"type": "string", "maxLength": p.max_length.unwrap_or(1000)})
                }
                ParamType::Integer => json!({"type": "integer"}),
                ParamType::Number => json!({"type": "number"}),
                ParamType::Boolean => json!({"type": "boolean"}),
                ParamType::Date => json!({"type": "string", "format": "date", "maxLength": 10}),
                ParamType::Strings => {
                    json!({"type": "array", "items": {"type": "string", "maxLength": p.max_length.unwrap_or(1000)}, "maxItems": p.max_items.unwrap_or(100)})
                }
            };
            if let Some(min) = p.min {
                s["minimum"] = json!(min);
            }
            if let Some(max) = p.max {
                s["maximum"] = json!(max);
            }
            if let Some(d) = &p.default {
                s["default"] = d.clone();
            } else {
                required.push(name.clone());
            }
            if !p.description.is_empty() {
                s["description"] = json!(p.description);
            }
            properties.insert(name.clone(), s);
        }
        json!({
            "type": "object",
            "additionalProperties": false,
            "description": self.def.description,
            "required": required,
            "properties": properties,
        })
    }

    /// What a run will use: its stages, the functions and queues they run in, and the
    /// source's objects.
    pub fn explain(&self, params: &Map<String, Value>) -> Result<String, ValidationError> {
        let flow = self.flow(params)?;
        let mut out = String::new();
        let def = &self.def;
        out.push_str(&format!("pipeline {}\n", def.name));
        if !def.description.is_empty() {
            out.push_str(&format!("  {}\n", def.description));
        }
        out.push_str(&format!("params {}\n", Value::Object(params.clone())));
        if let Some(parts) = self.parts(params)? {
            out.push_str(&format!(
                "parts: {} jobs, one a day, each cached on its own (a range that overlaps another reuses the days they share); each runs:\n",
                parts.len()
            ));
        }
        out.push_str("stages (each a queue `{prefix}-{job}-{attempt}-{stage}` feeding its function through an event-source mapping):\n");
        for (i, s) in flow.stages.iter().enumerate() {
            let what = match s.name.as_str() {
                "source" if def.source.format == definition::Format::SyntheticText => format!(
                    "generated messages `{{text}} {{i}}` (`{}` of them), {} a partition",
                    def.source.messages.clone().unwrap_or_default(),
                    def.settings.partition_size.unwrap_or(100)
                ),
                "source" => format!(
                    "lines of the objects under {} in ranges of {} bytes, by reference",
                    match &def.source.days {
                        Some(d) => format!(
                            "{}YYYY-MM-DD/ for each day from `{}` to `{}`",
                            def.source.prefix, d.from, d.to
                        ),
                        None => def.source.prefix.clone(),
                    },
                    def.settings.partition_bytes.unwrap_or(DEFAULT_RANGE_BYTES)
                ),
                "records" if def.settings.fuse == Some(false) => {
                    format!(
                        "the lines read into records{}; each record sent on as JSON",
                        match self.compiled.steps.first() {
                            Some(s) => format!(", then {}", s.describe()),
                            None => String::new(),
                        }
                    )
                }
                "records" => {
                    let steps: Vec<String> =
                        self.compiled.steps.iter().map(|s| s.describe()).collect();
                    format!(
                        "{} record steps fused in one stage (no queue between them): {}; then the aggregates",
                        steps.len(),
                        if steps.is_empty() { "none".into() } else { steps.join(" → ") }
                    )
                }
                "aggregate" => "the aggregates of the records sent (unfused)".into(),
                name if name.starts_with("step-") => {
                    let i: usize = name["step-".len()..].parse().unwrap_or(0);
                    match self.compiled.steps.get(i) {
                        Some(s) => {
                            format!("{} (unfused: records in and out as JSON)", s.describe())
                        }
                        None => String::new(),
                    }
                }
                "reduce" => {
                    "scalar aggregates folded exactly once per partition in the ledger".into()
                }
                "merge" => {
                    "by-key aggregates: each reduce partition of the shuffle merged and sorted"
                        .into()
                }
                _ => String::new(),
            };
            out.push_str(&format!(
                "  {}. {:<8} function {:<7} {}\n",
                i + 1,
                s.name,
                s.function.as_str(),
                what
            ));
        }
        out.push_str("result fields:\n");
        for a in &self.compiled.aggregates {
            out.push_str(&format!("  {:<24} {}\n", a.name, a.describe(params)));
        }
        for f in self.compiled.source_fields() {
            out.push_str(&format!("  {f:<24} (source)\n"));
        }
        Ok(out)
    }
}

/// `YYYY-MM-DD/`: a day's folder under a date-partitioned source's prefix.
fn day_folder(d: Day) -> String {
    format!("{d}/")
}

fn check_param(
    field: &str,
    spec: &definition::Param,
    value: Value,
) -> Result<Value, ValidationError> {
    let err = |m: String| ValidationError::new(field.to_owned(), m);
    let max_len = spec.max_length.unwrap_or(1000) as usize;
    let in_bounds = |x: f64| -> Result<(), ValidationError> {
        if let Some(min) = spec.min {
            if x < min {
                return Err(err(format!("must be at least {min}, got {x}")));
            }
        }
        if let Some(max) = spec.max {
            if x > max {
                return Err(err(format!("must be at most {max}, got {x}")));
            }
        }
        Ok(())
    };
    match spec.kind {
        ParamType::String => {
            let s = value
                .as_str()
                .ok_or_else(|| err("must be a string".into()))?;
            if s.chars().count() > max_len {
                return Err(err(format!("must be at most {max_len} characters")));
            }
            Ok(value)
        }
        ParamType::Integer => {
            let n = value
                .as_i64()
                .ok_or_else(|| err("must be an integer".into()))?;
            in_bounds(n as f64)?;
            Ok(value)
        }
        ParamType::Number => {
            let n = value
                .as_f64()
                .ok_or_else(|| err("must be a number".into()))?;
            in_bounds(n)?;
            Ok(value)
        }
        ParamType::Boolean => {
            value
                .as_bool()
                .ok_or_else(|| err("must be true or false".into()))?;
            Ok(value)
        }
        ParamType::Date => {
            let s = value
                .as_str()
                .ok_or_else(|| err("must be a date, YYYY-MM-DD".into()))?;
            let d: Day = s
                .parse()
                .map_err(|e: crate::tweets::DateError| err(e.to_string()))?;
            Ok(Value::String(d.to_string()))
        }
        ParamType::Strings => {
            let items = value
                .as_array()
                .ok_or_else(|| err("must be a list of strings".into()))?;
            let max_items = spec.max_items.unwrap_or(100) as usize;
            if items.len() > max_items {
                return Err(err(format!("may have at most {max_items} items")));
            }
            for (i, item) in items.iter().enumerate() {
                let s = item.as_str().ok_or_else(|| {
                    ValidationError::new(format!("{field}[{i}]"), "must be a string")
                })?;
                if s.chars().count() > max_len {
                    return Err(ValidationError::new(
                        format!("{field}[{i}]"),
                        format!("must be at most {max_len} characters"),
                    ));
                }
            }
            Ok(value)
        }
    }
}

/// Line and column (from 1) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Where a field path (`steps[2].filter`, `reduce.cities.key`) is written in a TOML file.
fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut span = doc.span();
    let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
    let mut array: Option<&[toml::Spanned<DeValue<'_>>]> = None;
    for part in path_parts(path) {
        match part {
            PathPart::Key(k) => {
                let t = table?;
                let (key, value) = t.iter().find(|(key, _)| key.get_ref().as_ref() == k)?;
                span = key.span();
                match value.get_ref() {
                    DeValue::Table(inner) => {
                        table = Some(inner);
                        array = None;
                    }
                    DeValue::Array(items) => {
                        array = Some(items.as_ref());
                        table = None;
                    }
                    _ => {
                        table = None;
                        array = None;
                    }
                }
            }
            PathPart::Index(i) => {
                let item = array?.get(i)?;
                span = item.span();
                match item.get_ref() {
                    DeValue::Table(inner) => table = Some(inner),
                    _ => table = None,
                }
                array = None;
            }
        }
    }
    Some(line_col(text, span.start))
}

enum PathPart<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_parts(path: &str) -> Vec<PathPart<'_>> {
    let mut out = Vec::new();
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let (key, rest) = seg.split_once('[').map_or((seg, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(PathPart::Key(key));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(PathPart::Index(i));
            }
        }
    }
    out
}

/// A pipeline as a named job type (a file in `pipelines/`).
pub struct NamedPipeline {
    name: &'static str,
    pipeline: Pipeline,
}

impl NamedPipeline {
    pub fn new(pipeline: Pipeline) -> Self {
        // Job type names live as long as the registry, which lives as long as the process.
        let name: &'static str = Box::leak(pipeline.def.name.clone().into_boxed_str());
        Self { name, pipeline }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }
}

impl JobType for NamedPipeline {
    fn name(&self) -> &'static str {
        self.name
    }

    fn flow_version(&self) -> u32 {
        1
    }

    fn definition(&self) -> Option<Value> {
        Some(self.pipeline.def.canonical())
    }

    fn default_options(&self, _params: &Value) -> (Option<crate::policy::Policy>, Option<f64>) {
        self.pipeline.default_options()
    }

    fn normalize(&self, params: &Value) -> Result<Value, ValidationError> {
        self.pipeline.read_params(params).map(Value::Object)
    }

    fn flow(&self, params: &Value) -> Result<Flow, ValidationError> {
        let params = self.pipeline.read_params(params)?;
        self.pipeline.flow(&params)
    }

    fn parts(&self, params: &Value) -> Result<Option<Vec<JobRequest>>, ValidationError> {
        let params = self.pipeline.read_params(params)?;
        Ok(self.pipeline.parts(&params)?.map(|parts| {
            parts
                .into_iter()
                .map(|p| JobRequest {
                    job_type: self.name.to_owned(),
                    params: Value::Object(p),
                })
                .collect()
        }))
    }

    fn params_schema(&self) -> Value {
        self.pipeline.params_schema()
    }
}

/// `{"type": "pipeline", "params": {"definition": {...}, ...}}`: a definition run as it
/// is sent, with no deploy. The definition is part of the params, so of the job id.
pub struct AdHocPipeline;

pub const AD_HOC: &str = "pipeline";

/// Ad-hoc definitions compiled lately, by their JSON text: a job's definition is asked for
/// its flow on every daemon tick and by every invocation that starts its context, and
/// compiling runs each expression's parser on a thread of its own.
static AD_HOC_COMPILED: std::sync::LazyLock<std::sync::Mutex<AdHocCache>> =
    std::sync::LazyLock::new(Default::default);
type AdHocCache = std::collections::HashMap<String, Arc<Pipeline>>;
/// At most this many are kept (each at most `MAX_DEFINITION_BYTES` of text).
const AD_HOC_CACHED: usize = 32;

impl AdHocPipeline {
    /// The definition compiled, from the cache when it was lately.
    fn compiled(definition: &Value) -> Result<Arc<Pipeline>, ValidationError> {
        let text = definition.to_string();
        // A poisoned cache is only a cache: it is used as it is.
        let cache = || {
            AD_HOC_COMPILED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        if let Some(p) = cache().get(&text).cloned() {
            return Ok(p);
        }
        let pipeline = Arc::new(
            Pipeline::from_json(definition).map_err(|e| e.to_validation("params.definition"))?,
        );
        let mut map = cache();
        if map.len() >= AD_HOC_CACHED {
            map.clear();
        }
        map.insert(text, pipeline.clone());
        Ok(pipeline)
    }

    fn split(params: &Value) -> Result<(Arc<Pipeline>, Map<String, Value>), ValidationError> {
        let mut given = params
            .as_object()
            .cloned()
            .ok_or_else(|| ValidationError::new("params", "must be an object"))?;
        let definition = given.remove("definition").ok_or_else(|| {
            ValidationError::new("params.definition", "is required: the pipeline to run")
        })?;
        let pipeline = Self::compiled(&definition)?;
        let params = pipeline.read_params(&Value::Object(given))?;
        Ok((pipeline, params))
    }
}

impl JobType for AdHocPipeline {
    fn name(&self) -> &'static str {
        AD_HOC
    }

    fn flow_version(&self) -> u32 {
        1
    }

    fn normalize(&self, params: &Value) -> Result<Value, ValidationError> {
        let (pipeline, mut params) = Self::split(params)?;
        params.insert("definition".into(), pipeline.def.canonical());
        Ok(Value::Object(params))
    }

    fn flow(&self, params: &Value) -> Result<Flow, ValidationError> {
        let (pipeline, params) = Self::split(params)?;
        pipeline.flow(&params)
    }

    fn default_options(&self, params: &Value) -> (Option<crate::policy::Policy>, Option<f64>) {
        Self::split(params).map_or((None, None), |(p, _)| p.default_options())
    }

    fn parts(&self, params: &Value) -> Result<Option<Vec<JobRequest>>, ValidationError> {
        let (pipeline, params) = Self::split(params)?;
        let definition = pipeline.def.canonical();
        Ok(pipeline.parts(&params)?.map(|parts| {
            parts
                .into_iter()
                .map(|mut p| {
                    p.insert("definition".into(), definition.clone());
                    JobRequest {
                        job_type: AD_HOC.to_owned(),
                        params: Value::Object(p),
                    }
                })
                .collect()
        }))
    }

    fn params_schema(&self) -> Value {
        json!({
            "type": "object",
            "description": "Runs the pipeline definition in `definition` (the JSON form of a pipelines/*.toml file; schema: GET /pipelines/schema), with its other params.",
            "required": ["definition"],
            "properties": {
                "definition": {"type": "object", "description": "A pipeline definition"},
            },
        })
    }
}

/// The pipelines shipped in the binary: `pipelines/*.toml` at build time.
pub fn shipped() -> Vec<(&'static str, &'static str)> {
    include!(concat!(env!("OUT_DIR"), "/pipelines.rs")).to_vec()
}

/// The shipped pipelines as job types. One that does not compile is left out (a unit test
/// compiles every one, so a shipped build has none).
pub fn shipped_types() -> Vec<Arc<dyn JobType>> {
    shipped()
        .into_iter()
        .filter_map(|(file, text)| match Pipeline::from_toml(text) {
            Ok(p) => Some(Arc::new(NamedPipeline::new(p)) as Arc<dyn JobType>),
            Err(e) => {
                tracing::error!(file, error = %e, "a shipped pipeline does not compile");
                None
            }
        })
        .collect()
}

pub(crate) fn compile_expr(
    path: &str,
    source: &str,
) -> Result<(Expr, expr::References), DefinitionError> {
    Expr::compile(source).map_err(|m| DefinitionError::new(path, m))
}

pub(crate) fn op_name(op: AggregateOp) -> &'static str {
    match op {
        AggregateOp::Count => "count",
        AggregateOp::Sum => "sum",
        AggregateOp::Min => "min",
        AggregateOp::Max => "max",
        AggregateOp::CountBy => "count-by",
        AggregateOp::SumBy => "sum-by",
        AggregateOp::MinBy => "min-by",
        AggregateOp::MaxBy => "max-by",
        AggregateOp::TopK => "top-k",
        AggregateOp::Distinct => "distinct",
        AggregateOp::Histogram => "histogram",
    }
}

/// Range bounds for `settings.partition_bytes`.
pub(crate) const PARTITION_BYTES: (u64, u64) = (MIN_RANGE_BYTES, MAX_RANGE_BYTES);

/// Running a definition's declared tests: each on a fresh embedded engine, the input
/// objects written under the source's prefix, the job run to its end, and the expected
/// fields compared with the result (keyed fields expanded to their whole maps).
pub mod testing {
    use std::path::Path;
    use std::time::Duration;

    use serde_json::Value;

    use super::definition::TestCase;
    use super::{Pipeline, AD_HOC};
    use crate::job::{JobRequest, JobStatus};
    use crate::local::{Engine, EngineOptions};
    use crate::submit::{submit, SubmitOptions};

    /// One test's outcome: `Ok` when every expected field matched, else what differed.
    pub type Outcome = Result<(), String>;

    /// Runs one test in `dir` (which it fills with the engine's state).
    pub async fn run_test(p: &Pipeline, test: &TestCase, dir: &Path) -> Outcome {
        let engine = Engine::open(dir, EngineOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        for (key, lines) in &test.input {
            let mut bytes = Vec::new();
            for line in lines {
                match line {
                    Value::String(s) => bytes.extend_from_slice(s.as_bytes()),
                    other => bytes.extend_from_slice(other.to_string().as_bytes()),
                }
                bytes.push(b'\n');
            }
            let object = format!("{}{key}", p.def.source.prefix);
            engine
                .services
                .blobs
                .put(&object, bytes)
                .await
                .map_err(|e| format!("writing {object}: {e}"))?;
        }
        let mut params = test.params.clone();
        params.insert(
            "definition".into(),
            serde_json::to_value(&p.def).map_err(|e| e.to_string())?,
        );
        let request = JobRequest {
            job_type: AD_HOC.into(),
            params: Value::Object(params),
        };
        let submission = submit(&engine.services, &request, &SubmitOptions::default())
            .await
            .map_err(|e| format!("the request was refused: {e}"))?;
        let id = submission.id;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let svc = engine.services.clone();
        let watch = async move {
            // A test's job is a few partitions; a minute means it hangs.
            for _ in 0..6000 {
                let rec = crate::record::load(svc.store.as_ref(), &id).await;
                if let Ok(Some(v)) = rec {
                    if v.record.status.is_terminal() {
                        let _ = stop_tx.send(());
                        return Ok(v.record);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = stop_tx.send(());
            Err("the job did not end within a minute".to_owned())
        };
        let (_, rec) = tokio::join!(
            engine.run(async {
                let _ = stop_rx.await;
            }),
            watch
        );
        let rec = rec?;
        let (result, error) = match rec.outcome {
            Some(o) => (o.result, o.error),
            None => (None, None),
        };
        if rec.status != JobStatus::Done {
            return Err(format!(
                "the job ended {}: {}",
                rec.status,
                error.unwrap_or_default()
            ));
        }
        let result = result.unwrap_or(Value::Null);
        let mut result = crate::keyed::expand(engine.services.blobs.as_ref(), &result)
            .await
            .map_err(|e| e.to_string())?;
        // A distinct count's sketch is how it merges, not what it says.
        for a in &p.def.reduce {
            if a.1.op == super::definition::AggregateOp::Distinct {
                if let Some(o) = result.get_mut(a.0).and_then(Value::as_object_mut) {
                    o.remove("sketch");
                }
            }
        }
        let mut wrong = Vec::new();
        for (field, expected) in &test.expect {
            let got = result.get(field).cloned().unwrap_or(Value::Null);
            if !same(&got, expected) {
                wrong.push(format!("{field}: expected {expected}, got {got}"));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }

    /// Equal as JSON, numbers by value (1 and 1.0 are the same).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }

    /// Every test of a definition, each in its own directory under `dir`: (name, outcome).
    pub async fn run_all(p: &Pipeline, dir: &Path) -> Vec<(String, Outcome)> {
        let mut out = Vec::new();
        for (i, t) in p.def.tests.iter().enumerate() {
            let d = dir.join(format!("test-{i}"));
            let _ = std::fs::remove_dir_all(&d);
            let outcome = run_test(p, t, &d).await;
            let _ = std::fs::remove_dir_all(&d);
            out.push((t.name.clone(), outcome));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_pipeline_compiles_and_is_a_job_type() {
        let shipped = shipped();
        assert!(shipped.len() >= 4, "{shipped:?}");
        for (file, text) in &shipped {
            Pipeline::from_toml(text).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        let registry = crate::flow::Registry::default();
        for t in shipped_types() {
            assert!(
                registry.get(t.name()).is_ok(),
                "{} is not registered",
                t.name()
            );
        }
    }

    #[test]
    fn an_ad_hoc_definition_is_compiled_once() {
        let def = |filter: &str| {
            serde_json::json!({
                "name": "cached",
                "source": {"format": "json-lines", "prefix": "in/"},
                "steps": [{"filter": filter}],
                "reduce": {"n": {"op": "count"}},
            })
        };
        let a = AdHocPipeline::compiled(&def("x == 1")).unwrap();
        let b = AdHocPipeline::compiled(&def("x == 1")).unwrap();
        let c = AdHocPipeline::compiled(&def("x == 2")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.def.steps[0].filter.as_deref(), Some("x == 2"));
        // A definition that does not compile is refused every time, and never cached.
        for _ in 0..2 {
            let e = AdHocPipeline::compiled(&def("x ==")).unwrap_err();
            assert_eq!(e.field, "params.definition.steps[0].filter", "{e:?}");
        }
    }

    #[test]
    fn the_definition_is_part_of_the_job_id() {
        let registry = crate::flow::Registry::default();
        let text = shipped()
            .into_iter()
            .find(|(f, _)| *f == "word-frequencies.toml")
            .map(|(_, t)| t)
            .unwrap_or_default();
        let request = JobRequest {
            job_type: "word-frequencies".into(),
            params: json!({"from": "2018-11-01", "to": "2018-11-01"}),
        };
        let a = registry.validate(&request).unwrap();
        let edited =
            Pipeline::from_toml(&text.replace("default = \"en\"", "default = \"fr\"")).unwrap();
        let registry = crate::flow::Registry::new(vec![Arc::new(NamedPipeline::new(edited))]);
        let b = registry.validate(&request).unwrap();
        assert_ne!(a.id, b.id);
        // Tests and description are not part of it.
        let mut p = Pipeline::from_toml(text).unwrap();
        let canonical = p.def.canonical();
        p.def.tests.clear();
        p.def.description = "other".into();
        assert_eq!(p.def.canonical(), canonical);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON, a few levels deep.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                "[a-z_.| -]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Text that looks like CEL, brackets and quotes included (often unbalanced).
        fn cel_text() -> impl Strategy<Value = String> {
            "[a-z0-9_ .()\\[\\]{}'\"+*/!<>=&|?:,-]{0,120}"
        }

        fn valid() -> Value {
            json!({
                "name": "fuzzed",
                "params": {"k": {"type": "integer", "default": 3, "min": 1, "max": 10}},
                "source": {"format": "json-lines", "prefix": "data/"},
                "steps": [{"filter": "a.b == 1"}, {"explode": "xs", "as": "x"}],
                "reduce": {
                    "n": {"op": "count"},
                    "t": {"op": "top-k", "group": "a.c", "key": "x", "k": "k"},
                },
            })
        }

        fn check(definition: Value, params: Value) {
            let mut p = params.as_object().cloned().unwrap_or_default();
            p.insert("definition".into(), definition);
            let request = JobRequest {
                job_type: AD_HOC.into(),
                params: Value::Object(p),
            };
            let registry = crate::flow::Registry::new(vec![Arc::new(AdHocPipeline)]);
            // Either a job with a flow, or a refusal naming a field of the request.
            match registry.validate(&request) {
                Ok(valid) => {
                    registry
                        .flow(&valid.request)
                        .expect("a valid request has a flow");
                }
                Err(e) => assert!(e.field.starts_with("params"), "{e:?}"),
            }
        }

        #[test]
        fn the_definition_the_fuzzer_mutates_is_valid() {
            let registry = crate::flow::Registry::new(vec![Arc::new(AdHocPipeline)]);
            let request = JobRequest {
                job_type: AD_HOC.into(),
                params: json!({"definition": valid()}),
            };
            registry.validate(&request).unwrap();
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn any_json_definition_is_refused_by_field_or_runs(def in json_value(), params in json_value()) {
                check(def, params);
            }

            #[test]
            fn any_expression_is_refused_by_field_or_runs(which in 0usize..4, text in cel_text()) {
                let mut def = valid();
                match which {
                    0 => def["steps"][0]["filter"] = json!(text),
                    1 => def["steps"][1]["explode"] = json!(text),
                    2 => def["reduce"]["t"]["group"] = json!(text),
                    _ => def["reduce"]["n"]["where"] = json!(text),
                }
                check(def, json!({}));
            }
        }
    }

    #[test]
    fn the_schema_is_published_and_names_the_parts() {
        let schema = Definition::json_schema();
        let text = schema.to_string();
        for part in [
            "source",
            "steps",
            "reduce",
            "params",
            "settings",
            "tests",
            "top-k",
            "histogram",
        ] {
            assert!(text.contains(part), "{part} missing from the schema");
        }
    }
}
