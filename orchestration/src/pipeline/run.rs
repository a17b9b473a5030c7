//! A compiled pipeline, and the components it runs as: [`PipelineScan`] reads a
//! partition's lines into records, runs the record steps (fused: no queue between them)
//! and aggregates what reaches their end; [`PipelineReduce`] folds the partials' scalar
//! aggregates. By-key aggregates leave the partial as keyed maps (the shuffle).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cel::{Context, Value as Cel};
use hyperloglogplus::{HyperLogLog, HyperLogLogPF};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::definition::{AggregateOp, Bucket, Definition, Format, ParamType, TimeFormat};
use super::expr::{self, Expr, Number};
use super::fast::{Env, Unsure, F, V};
use super::{
    compile_expr, op_name, DefinitionError, MAX_AGGREGATES, MAX_K, MAX_PARAMS, MAX_STEPS, MAX_TESTS,
};
use crate::components::blob_lines::MAX_LINE_BYTES;
use crate::components::{ComponentError, Reduce, Transform};
use crate::jsonl::{FieldPaths, Fields, Raw};
use crate::keyed::{Cell, KeyedFields, KeyedMap, Op, GROUP_SEPARATOR};
use crate::tweets::calendar::FolderWindow;
use crate::tweets::matching::Needles;
use crate::tweets::Day;

/// Steps of an unfused pipeline (`settings.fuse = false`), each a stage of its own.
pub const MAX_UNFUSED_STEPS: usize = 8;
/// Records one input line may become through `explode` and `tokenize`: past it the line
/// counts in `expression_errors`, so steps cannot multiply a line's cost without bound.
pub const MAX_FANOUT: u64 = 100_000;
/// Names the engine binds: a step may not rebind them.
const RESERVED: [&str; 3] = ["params", "line", "record_time"];
/// Prefixes of the engine's own objects: a source may not read them.
const ENGINE_PREFIXES: [&str; 5] = ["results/", "shuffle/", "dead/", "payloads/", "claims/"];
const KEEP_ALIVE: &str = "keep-alive";

/// Whether fused stages may take the fast path ([`super::fast`]); off, every expression
/// runs in `cel`. A switch for measuring (`sluice bench fire-tweets --unfused` times a
/// fused run without it beside the unfused one), not a setting: both give the same result.
static FAST_PATH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the fast path on or off for the stages that start after it, in this process.
pub fn set_fast_path(on: bool) {
    FAST_PATH.store(on, std::sync::atomic::Ordering::Relaxed);
}

#[derive(Debug)]
pub(crate) enum CStep {
    Filter(Expr),
    Compute(Expr, String),
    Explode(Expr, String),
    Tokenize(Expr, String),
}

impl CStep {
    pub(crate) fn describe(&self) -> String {
        match self {
            CStep::Filter(e) => format!("filter `{}`", e.source),
            CStep::Compute(e, n) => format!("compute {n} = `{}`", e.source),
            CStep::Explode(e, n) => format!("explode `{}` as {n}", e.source),
            CStep::Tokenize(e, n) => format!("tokenize `{}` as {n}", e.source),
        }
    }
}

#[derive(Debug)]
pub(crate) struct CAggregate {
    pub name: String,
    pub op: AggregateOp,
    value: Option<Expr>,
    key: Option<Expr>,
    group: Option<Expr>,
    /// A number, or an integer parameter's name.
    k: Option<Result<u64, String>>,
    time: Option<Expr>,
    bucket: Bucket,
    precision: u8,
    when: Option<Expr>,
}

impl CAggregate {
    /// The keyed field's combining op, for a by-key aggregate.
    pub(crate) fn keyed_op(&self) -> Option<Op> {
        match self.op {
            AggregateOp::CountBy
            | AggregateOp::SumBy
            | AggregateOp::TopK
            | AggregateOp::Histogram => Some(Op::Sum),
            AggregateOp::MinBy => Some(Op::Min),
            AggregateOp::MaxBy => Some(Op::Max),
            _ => None,
        }
    }

    pub(crate) fn top_k(&self, params: &Map<String, Value>) -> Option<u32> {
        if self.op != AggregateOp::TopK {
            return None;
        }
        let k = match self.k.as_ref()? {
            Ok(k) => *k,
            Err(param) => params.get(param).and_then(Value::as_u64).unwrap_or(1),
        };
        Some(k.clamp(1, MAX_K) as u32)
    }

    pub(crate) fn describe(&self, params: &Map<String, Value>) -> String {
        let e = |x: &Option<Expr>| x.as_ref().map(|e| e.source.clone()).unwrap_or_default();
        let mut s = match self.op {
            AggregateOp::Count => "count".to_owned(),
            AggregateOp::Sum | AggregateOp::Min | AggregateOp::Max => {
                format!("{} of `{}`", op_name(self.op), e(&self.value))
            }
            AggregateOp::CountBy => format!("count by `{}` (keyed)", e(&self.key)),
            AggregateOp::SumBy | AggregateOp::MinBy | AggregateOp::MaxBy => format!(
                "{} of `{}` by `{}` (keyed)",
                op_name(self.op),
                e(&self.value),
                e(&self.key)
            ),
            AggregateOp::TopK => format!(
                "top {} of `{}` per `{}` (keyed, ranked per group)",
                self.top_k(params).unwrap_or(0),
                e(&self.key),
                e(&self.group)
            ),
            AggregateOp::Distinct => format!(
                "distinct `{}` (HyperLogLog, 2^{} registers, standard error {:.2} %)",
                e(&self.value),
                self.precision,
                standard_error(self.precision) * 100.0
            ),
            AggregateOp::Histogram => format!(
                "histogram of `{}` by {:?} (keyed)",
                self.time
                    .as_ref()
                    .map_or("record_time".to_owned(), |t| t.source.clone()),
                self.bucket
            )
            .to_lowercase(),
        };
        if let Some(w) = &self.when {
            s.push_str(&format!(" where `{}`", w.source));
        }
        s
    }
}

/// How a record's top-level name is built from the captured fields.
#[derive(Debug)]
struct Root {
    name: String,
    /// (path below the name, empty for the whole value; field index).
    parts: Vec<(Vec<String>, usize)>,
    /// The paths below the name that expressions read: null when the line lacks them.
    fill: Vec<Vec<String>>,
}

#[derive(Debug)]
pub(crate) struct Compiled {
    format: Format,
    records: String,
    paths: Option<FieldPaths>,
    roots: Vec<Root>,
    time: Option<(usize, TimeFormat)>,
    /// Each a list of alternatives: a record holds at least one of them (not null).
    require: Vec<Vec<usize>>,
    notices: Option<(FieldPaths, Vec<String>)>,
    pub(crate) steps: Vec<CStep>,
    pub(crate) aggregates: Vec<CAggregate>,
    has_days: bool,
    /// The same steps and aggregates on the fast path, when every expression compiles to it.
    fast: Option<Fast>,
}

/// A pipeline on the fast path ([`super::fast`]): slots are the captured fields (by
/// their `FieldPaths` index), then `record_time`, then the names steps bind.
#[derive(Debug)]
struct Fast {
    slots: usize,
    time_slot: usize,
    params: Vec<String>,
    steps: Vec<FStep>,
    aggregates: Vec<FAggregate>,
}

#[derive(Debug)]
enum FStep {
    Filter(F),
    Compute(F, usize),
    Explode(F, usize),
    Tokenize(F, usize),
}

#[derive(Debug)]
struct FAggregate {
    value: Option<F>,
    key: Option<F>,
    group: Option<F>,
    time: Option<F>,
    when: Option<F>,
}

/// A record's effect on the aggregates, applied only when the whole record ran on the
/// fast path.
enum Update {
    Count(usize),
    Number(usize, Number),
    Key(usize, String),
    KeyCell(usize, String, Cell),
    Distinct(usize, String),
}

struct FastNames<'n> {
    kept: &'n [String],
    time_slot: Option<usize>,
    bound: &'n std::cell::RefCell<BTreeMap<String, usize>>,
    params: &'n std::cell::RefCell<Vec<String>>,
    declared: &'n BTreeMap<String, super::definition::Param>,
}

impl super::fast::Names for FastNames<'_> {
    fn slot(&self, path: &str) -> Option<usize> {
        let root = path.split('.').next().unwrap_or(path);
        if let Some(&slot) = self.bound.borrow().get(root) {
            return (root == path).then_some(slot);
        }
        if path == "record_time" {
            return self.time_slot;
        }
        if root == "params" {
            return None;
        }
        self.kept.iter().position(|k| k == path)
    }

    fn param(&self, name: &str) -> Option<usize> {
        self.declared.get(name)?;
        let mut params = self.params.borrow_mut();
        Some(match params.iter().position(|p| p == name) {
            Some(i) => i,
            None => {
                params.push(name.to_owned());
                params.len() - 1
            }
        })
    }
}

impl Fast {
    fn new(
        def: &Definition,
        kept: &[String],
        time: bool,
        steps: &[CStep],
        aggregates: &[CAggregate],
    ) -> Option<Fast> {
        let time_slot = kept.len();
        // Names steps bind, and params read, as they compile (each step sees those before).
        let bound: std::cell::RefCell<BTreeMap<String, usize>> = Default::default();
        let params = std::cell::RefCell::new(Vec::new());
        let mut next = time_slot + 1;
        let mut fsteps = Vec::with_capacity(steps.len());
        let names = FastNames {
            kept,
            time_slot: time.then_some(time_slot),
            bound: &bound,
            params: &params,
            declared: &def.params,
        };
        for s in steps {
            let (e, name) = match s {
                CStep::Filter(e) => (e, None),
                CStep::Compute(e, n) | CStep::Explode(e, n) | CStep::Tokenize(e, n) => (e, Some(n)),
            };
            let f = super::fast::compile(e.ast(), &names)?;
            let slot = name.map(|n| {
                *bound.borrow_mut().entry(n.clone()).or_insert_with(|| {
                    next += 1;
                    next - 1
                })
            });
            fsteps.push(match (s, slot) {
                (CStep::Filter(_), _) => FStep::Filter(f),
                (CStep::Compute(..), Some(slot)) => FStep::Compute(f, slot),
                (CStep::Explode(..), Some(slot)) => FStep::Explode(f, slot),
                (CStep::Tokenize(..), Some(slot)) => FStep::Tokenize(f, slot),
                _ => return None,
            });
        }
        let one = |e: &Option<Expr>| -> Option<Option<F>> {
            match e {
                Some(e) => super::fast::compile(e.ast(), &names).map(Some),
                None => Some(None),
            }
        };
        let mut faggs = Vec::with_capacity(aggregates.len());
        for a in aggregates {
            faggs.push(FAggregate {
                value: one(&a.value)?,
                key: one(&a.key)?,
                group: one(&a.group)?,
                time: one(&a.time)?,
                when: one(&a.when)?,
            });
        }
        let params = params.into_inner();
        Some(Fast {
            slots: next,
            time_slot,
            params,
            steps: fsteps,
            aggregates: faggs,
        })
    }
}

fn err(path: impl Into<String>, message: impl Into<String>) -> DefinitionError {
    DefinitionError::new(path, message)
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 64
}

fn is_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Compiled {
    pub(crate) fn new(def: &Definition) -> Result<Compiled, DefinitionError> {
        let name_ok = !def.name.is_empty()
            && def.name.len() <= 63
            && def.name.starts_with(|c: char| c.is_ascii_lowercase())
            && def
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(err(
                "name",
                "must be 1 to 63 lowercase letters, digits and dashes, starting with a letter",
            ));
        }
        if ["wordcount", "fire-tweets", super::AD_HOC].contains(&def.name.as_str()) {
            return Err(err(
                "name",
                format!("`{}` is a built-in job type", def.name),
            ));
        }
        if def.params.len() > MAX_PARAMS {
            return Err(err("params", format!("at most {MAX_PARAMS} parameters")));
        }
        if def.steps.len() > MAX_STEPS {
            return Err(err(
                "steps",
                format!("at most {MAX_STEPS} steps, got {}", def.steps.len()),
            ));
        }
        if def.reduce.is_empty() || def.reduce.len() > MAX_AGGREGATES {
            return Err(err("reduce", format!("1 to {MAX_AGGREGATES} aggregates")));
        }
        if def.tests.len() > MAX_TESTS {
            return Err(err("tests", format!("at most {MAX_TESTS} tests")));
        }
        for (name, p) in &def.params {
            let path = format!("params.{name}");
            if !is_name(name) {
                return Err(err(
                    path,
                    "a parameter's name is lowercase letters, digits and _",
                ));
            }
            if let Some(d) = &p.default {
                super::check_param(&path, p, d.clone())
                    .map_err(|e| err(format!("{path}.default"), e.message))?;
            }
            if let (Some(a), Some(b)) = (p.min, p.max) {
                if a > b {
                    return Err(err(format!("{path}.min"), "is above max"));
                }
            }
        }
        let param_type = |name: &str| def.params.get(name).map(|p| p.kind);

        // The source.
        let src = &def.source;
        let prefix = &src.prefix;
        let synthetic = src.format == Format::SyntheticText;
        if synthetic {
            if !prefix.is_empty() || src.days.is_some() {
                return Err(err(
                    "source",
                    "a synthetic source has no `prefix` or `days`",
                ));
            }
            match src.messages.as_deref().map(param_type) {
                Some(Some(ParamType::Integer)) => {}
                _ => {
                    return Err(err(
                        "source.messages",
                        "a synthetic source names an `integer` parameter: how many messages",
                    ))
                }
            }
            match src.text.as_deref().map(param_type) {
                Some(Some(ParamType::String)) | None => {}
                _ => return Err(err("source.text", "must name a `string` parameter")),
            }
            if let Some(n) = def.settings.partition_size {
                if !(1..=100_000).contains(&n) {
                    return Err(err("settings.partition_size", "must be 1 to 100000"));
                }
            }
        } else if src.messages.is_some() || src.text.is_some() {
            return Err(err(
                "source",
                "`messages` and `text` are for a synthetic source",
            ));
        }
        if !synthetic
            && (prefix.is_empty()
                || prefix.len() > 512
                || prefix.starts_with('/')
                || prefix.split('/').any(|s| s == ".." || s == ".")
                || ENGINE_PREFIXES
                    .iter()
                    .any(|p| prefix.starts_with(p) || p.starts_with(prefix.as_str())))
        {
            return Err(err(
                "source.prefix",
                format!(
                    "must be a relative key prefix in the deployment's data (not under the engine's own {})",
                    ENGINE_PREFIXES.join(", ")
                ),
            ));
        }
        if let Some(days) = &src.days {
            if !prefix.ends_with('/') {
                return Err(err(
                    "source.prefix",
                    "a date-partitioned prefix ends with `/`",
                ));
            }
            for (field, p) in [("from", &days.from), ("to", &days.to)] {
                if param_type(p) != Some(ParamType::Date) {
                    return Err(err(
                        format!("source.days.{field}"),
                        format!("must name a `date` parameter, not `{p}`"),
                    ));
                }
            }
            if let Some(p) = &days.allow_missing {
                if param_type(p) != Some(ParamType::Boolean) {
                    return Err(err(
                        "source.days.allow_missing",
                        format!("must name a `boolean` parameter, not `{p}`"),
                    ));
                }
            }
        }
        let text = matches!(src.format, Format::TextLines | Format::SyntheticText);
        if text && (src.time.is_some() || !src.notices.is_empty() || !src.require.is_empty()) {
            return Err(err(
                "source",
                "`time`, `notices` and `require` read JSON fields: they need `format = \"json-lines\"`",
            ));
        }
        let records = src.records.clone().unwrap_or_else(|| "records".into());
        if !is_name(&records) {
            return Err(err("source.records", "lowercase letters, digits and _"));
        }
        for (i, n) in src.notices.iter().enumerate() {
            if !is_field_name(n) {
                return Err(err(format!("source.notices[{i}]"), "a top-level key"));
            }
        }

        // Steps: names bound so far decide what a free name in an expression is.
        let mut bound: BTreeSet<String> = BTreeSet::new();
        let mut record_paths: BTreeSet<String> = BTreeSet::new();
        let mut steps = Vec::with_capacity(def.steps.len());
        let resolve = |path: &str,
                       refs: &expr::References,
                       bound: &BTreeSet<String>,
                       record_paths: &mut BTreeSet<String>|
         -> Result<(), DefinitionError> {
            for p in &refs.paths {
                let root = p.split('.').next().unwrap_or_default();
                if root == "params" {
                    let name = p.split('.').nth(1);
                    match name {
                        Some(n) if def.params.contains_key(n) => {}
                        Some(n) => {
                            return Err(err(
                                path,
                                format!("`params.{n}` is not a parameter of this pipeline"),
                            ))
                        }
                        None => {}
                    }
                    continue;
                }
                if bound.contains(root) || root == "record_time" && src.time.is_some() {
                    continue;
                }
                if text {
                    if root == "line" {
                        continue;
                    }
                    return Err(err(
                        path,
                        format!("unknown name `{root}`: a text-lines record is `line`, and steps bind names with `as`"),
                    ));
                }
                record_paths.insert(p.clone());
            }
            Ok(())
        };
        let mut fanout_steps = 0;
        for (i, s) in def.steps.iter().enumerate() {
            let path = format!("steps[{i}]");
            let given: Vec<(&str, &String)> = [
                ("filter", &s.filter),
                ("compute", &s.compute),
                ("explode", &s.explode),
                ("tokenize", &s.tokenize),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
            .collect();
            let [(kind, source)] = given[..] else {
                return Err(err(
                    path,
                    "a step is exactly one of `filter`, `compute`, `explode`, `tokenize`",
                ));
            };
            let epath = format!("{path}.{kind}");
            let (e, refs) = compile_expr(&epath, source)?;
            resolve(&epath, &refs, &bound, &mut record_paths)?;
            let step = if kind == "filter" {
                if s.name.is_some() {
                    return Err(err(format!("{path}.as"), "a filter binds no name"));
                }
                CStep::Filter(e)
            } else {
                let name = s.name.clone().ok_or_else(|| {
                    err(
                        format!("{path}.as"),
                        format!("`{kind}` needs `as`: the name it binds"),
                    )
                })?;
                if !is_name(&name) || RESERVED.contains(&name.as_str()) {
                    return Err(err(
                        format!("{path}.as"),
                        format!(
                            "`{name}`: a name is lowercase letters, digits and _, and not {}",
                            RESERVED.join(", ")
                        ),
                    ));
                }
                bound.insert(name.clone());
                match kind {
                    "compute" => CStep::Compute(e, name),
                    "explode" => {
                        fanout_steps += 1;
                        CStep::Explode(e, name)
                    }
                    _ => {
                        fanout_steps += 1;
                        CStep::Tokenize(e, name)
                    }
                }
            };
            steps.push(step);
        }
        let _ = fanout_steps;

        // Aggregates.
        let source_fields: BTreeSet<String> = source_field_names(&records, def);
        let mut aggregates = Vec::with_capacity(def.reduce.len());
        for (name, a) in &def.reduce {
            let path = format!("reduce.{name}");
            if !is_name(name) || source_fields.contains(name) {
                return Err(err(
                    path,
                    format!("a result field is lowercase letters, digits and _, and not one of the source's ({})", source_fields.iter().cloned().collect::<Vec<_>>().join(", ")),
                ));
            }
            let mut expr_of = |field: &str,
                               src: &Option<String>,
                               needed: bool|
             -> Result<Option<Expr>, DefinitionError> {
                let fpath = format!("{path}.{field}");
                match src {
                    Some(s) => {
                        if !needed {
                            return Err(err(
                                fpath,
                                format!("`{}` takes no `{field}`", op_name(a.op)),
                            ));
                        }
                        let (e, refs) = compile_expr(&fpath, s)?;
                        resolve(&fpath, &refs, &bound, &mut record_paths)?;
                        Ok(Some(e))
                    }
                    None => Ok(None),
                }
            };
            use AggregateOp as A;
            let wants_value = matches!(
                a.op,
                A::Sum | A::Min | A::Max | A::SumBy | A::MinBy | A::MaxBy | A::Distinct
            );
            let wants_key = matches!(a.op, A::CountBy | A::SumBy | A::MinBy | A::MaxBy | A::TopK);
            let value = expr_of("value", &a.value, wants_value)?;
            let key = expr_of("key", &a.key, wants_key)?;
            let group = expr_of("group", &a.group, a.op == A::TopK)?;
            let time = expr_of("time", &a.time, a.op == A::Histogram)?;
            let when = expr_of("where", &a.when, true)?;
            if wants_value && value.is_none() {
                return Err(err(
                    format!("{path}.value"),
                    format!("`{}` needs `value`", op_name(a.op)),
                ));
            }
            if wants_key && key.is_none() {
                return Err(err(
                    format!("{path}.key"),
                    format!("`{}` needs `key`", op_name(a.op)),
                ));
            }
            if a.op == A::TopK && group.is_none() {
                return Err(err(
                    format!("{path}.group"),
                    "`top-k` needs `group` (use '' for one group)",
                ));
            }
            if a.op == A::Histogram && time.is_none() && src.time.is_none() {
                return Err(err(
                    format!("{path}.time"),
                    "a histogram needs `time`, or a source with `time`",
                ));
            }
            if a.bucket.is_some() && a.op != A::Histogram {
                return Err(err(
                    format!("{path}.bucket"),
                    "only a histogram has buckets",
                ));
            }
            let k = match (&a.k, a.op) {
                (None, A::TopK) => return Err(err(format!("{path}.k"), "`top-k` needs `k`")),
                (None, _) => None,
                (Some(_), op) if op != A::TopK => {
                    return Err(err(format!("{path}.k"), "only `top-k` takes `k`"))
                }
                (Some(Value::Number(n)), _) => match n.as_u64().filter(|k| (1..=MAX_K).contains(k))
                {
                    Some(k) => Some(Ok(k)),
                    None => return Err(err(format!("{path}.k"), format!("must be 1 to {MAX_K}"))),
                },
                (Some(Value::String(p)), _) => {
                    match def.params.get(p) {
                        Some(spec) if spec.kind == ParamType::Integer && spec.min.is_some_and(|m| m >= 1.0) && spec.max.is_some_and(|m| m <= MAX_K as f64) => {}
                        _ => return Err(err(format!("{path}.k"), format!("`{p}` must be an integer parameter with min >= 1 and max <= {MAX_K}"))),
                    }
                    Some(Err(p.clone()))
                }
                _ => {
                    return Err(err(
                        format!("{path}.k"),
                        "a number, or an integer parameter's name",
                    ))
                }
            };
            let precision = a.precision.unwrap_or(12);
            if a.precision.is_some() && a.op != A::Distinct {
                return Err(err(
                    format!("{path}.precision"),
                    "only `distinct` has a precision",
                ));
            }
            if !(4..=16).contains(&precision) {
                return Err(err(format!("{path}.precision"), "must be 4 to 16"));
            }
            aggregates.push(CAggregate {
                name: name.clone(),
                op: a.op,
                value,
                key,
                group,
                k,
                time,
                bucket: a.bucket.unwrap_or(Bucket::Hour),
                precision,
                when,
            });
        }

        // Settings.
        if let Some(b) = def.settings.partition_bytes {
            let (lo, hi) = super::PARTITION_BYTES;
            if !(lo..=hi).contains(&b) {
                return Err(err(
                    "settings.partition_bytes",
                    format!("must be {lo} to {hi}"),
                ));
            }
        }
        if let Some(p) = &def.settings.policy {
            p.parse::<crate::policy::Policy>()
                .map_err(|e| err("settings.policy", e.to_string()))?;
        }
        if let Some(c) = def.settings.min_coverage {
            if !(0.0..=1.0).contains(&c) {
                return Err(err("settings.min_coverage", "must be 0 to 1"));
            }
        }
        // Unfused, each step is a stage: a queue, an event-source mapping and its least
        // reserved concurrency, for every run.
        if def.settings.fuse == Some(false) && def.steps.len() > MAX_UNFUSED_STEPS {
            return Err(err(
                "settings.fuse",
                format!(
                    "an unfused pipeline runs a stage a step: at most {MAX_UNFUSED_STEPS} steps, got {}",
                    def.steps.len()
                ),
            ));
        }

        // The JSON fields the records need: one captured value per path, none inside another.
        let mut kept_paths: Vec<String> = Vec::new();
        let (paths, roots, time, require, notices) = if text {
            (None, Vec::new(), None, Vec::new(), None)
        } else {
            let mut wanted: BTreeSet<String> = record_paths.clone();
            for (i, r) in src.require.iter().enumerate() {
                for alt in r.split('|') {
                    if alt.is_empty() || alt.split('.').any(|k| !is_field_name(k)) {
                        return Err(err(
                            format!("source.require[{i}]"),
                            "dotted paths of keys, alternatives separated by `|`",
                        ));
                    }
                    wanted.insert(alt.to_owned());
                }
            }
            if let Some(t) = &src.time {
                if t.field.is_empty() || t.field.split('.').any(|k| !is_field_name(k)) {
                    return Err(err("source.time.field", "a dotted path of keys"));
                }
                wanted.insert(t.field.clone());
            }
            let kept: Vec<String> = wanted
                .iter()
                .filter(|p| {
                    !wanted.iter().any(|q| {
                        q != *p
                            && p.starts_with(q.as_str())
                            && p.as_bytes().get(q.len()) == Some(&b'.')
                    })
                })
                .cloned()
                .collect();
            let field_paths = FieldPaths::new(&kept).map_err(|e| err("source", e.to_string()))?;
            // Where a path is found: the kept path it is, or is under.
            let find = |p: &str| -> Option<(usize, Vec<String>)> {
                kept.iter().enumerate().find_map(|(i, k)| {
                    if p == k {
                        Some((i, Vec::new()))
                    } else if p.starts_with(k.as_str()) && p.as_bytes().get(k.len()) == Some(&b'.')
                    {
                        Some((i, p[k.len() + 1..].split('.').map(str::to_owned).collect()))
                    } else {
                        None
                    }
                })
            };
            // Only what expressions read becomes a record's names (not the time or the
            // required fields, unless read too).
            let mut by_root: BTreeMap<String, Root> = BTreeMap::new();
            for p in &record_paths {
                let (i, _) = find(p).ok_or_else(|| err("source", format!("`{p}` is not read")))?;
                let mut keys = p.split('.');
                let name = keys.next().unwrap_or_default().to_owned();
                let below: Vec<String> = keys.map(str::to_owned).collect();
                let root = by_root.entry(name.clone()).or_insert_with(|| Root {
                    name,
                    parts: Vec::new(),
                    fill: Vec::new(),
                });
                let mut kept_keys = kept[i].split('.');
                kept_keys.next();
                let part: Vec<String> = kept_keys.map(str::to_owned).collect();
                if !root.parts.iter().any(|(_, j)| *j == i) {
                    root.parts.push((part, i));
                }
                if !below.is_empty() {
                    root.fill.push(below);
                }
            }
            let roots = by_root.into_values().collect();
            let time = src.time.as_ref().and_then(|t| {
                find(&t.field)
                    .filter(|(_, rest)| rest.is_empty())
                    .map(|(i, _)| (i, t.format))
            });
            if src.time.is_some() && time.is_none() {
                return Err(err(
                    "source.time.field",
                    "an expression reads inside the time field; read it whole",
                ));
            }
            let mut require = Vec::new();
            for r in &src.require {
                let mut alternatives = Vec::new();
                for alt in r.split('|') {
                    match find(alt) {
                        Some((i, rest)) if rest.is_empty() => alternatives.push(i),
                        _ => {
                            return Err(err(
                                "source.require",
                                format!(
                                    "`{alt}` is read inside by an expression; require its parent instead"
                                ),
                            ))
                        }
                    }
                }
                require.push(alternatives);
            }
            let notices = if src.notices.is_empty() {
                None
            } else {
                Some((
                    FieldPaths::new(&src.notices)
                        .map_err(|e| err("source.notices", e.to_string()))?,
                    src.notices.clone(),
                ))
            };
            kept_paths = kept.clone();
            (Some(field_paths), roots, time, require, notices)
        };
        let fast = if text {
            None
        } else {
            Fast::new(def, &kept_paths, time.is_some(), &steps, &aggregates)
        };
        Ok(Compiled {
            format: src.format,
            records,
            paths,
            roots,
            time,
            require,
            notices,
            steps,
            aggregates,
            has_days: src.days.is_some(),
            fast,
        })
    }

    /// The fields the source itself adds to a result.
    pub(crate) fn source_fields(&self) -> Vec<String> {
        let mut out = vec![
            format!("{}_scanned", self.records),
            "malformed_lines".to_owned(),
            "expression_errors".to_owned(),
        ];
        if self.has_days {
            out.push(format!("{}_outside_range", self.records));
            out.push("missing_days".to_owned());
        }
        if self.notices.is_some() {
            out.push("notices".to_owned());
        }
        out
    }
}

fn source_field_names(records: &str, def: &Definition) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = [
        format!("{records}_scanned"),
        "malformed_lines".into(),
        "expression_errors".into(),
    ]
    .into();
    if def.source.days.is_some() {
        out.insert(format!("{records}_outside_range"));
        out.insert("missing_days".into());
    }
    if !def.source.notices.is_empty() {
        out.insert("notices".into());
    }
    out
}

/// HyperLogLog's hash: xxh3, the same in every process and version (a sketch made by one
/// invocation merges with another's).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct StableHash;

impl std::hash::BuildHasher for StableHash {
    type Hasher = xxhash_rust::xxh3::Xxh3;
    fn build_hasher(&self) -> Self::Hasher {
        xxhash_rust::xxh3::Xxh3::new()
    }
}

type Sketch = HyperLogLogPF<str, StableHash>;

pub fn standard_error(precision: u8) -> f64 {
    1.04 / f64::from(1u32 << precision).sqrt()
}

fn sketch_json(mut s: Sketch, precision: u8) -> Value {
    let estimate = s.count().round() as u64;
    json!({
        "estimate": estimate,
        "standard_error": standard_error(precision),
        "precision": precision,
        "sketch": serde_json::to_value(&s).unwrap_or(Value::Null),
    })
}

enum Acc {
    Count(u64),
    Number(Option<Number>),
    Keyed(KeyedMap),
    Distinct(Box<Sketch>),
}

/// One partition's scan: counters and accumulators.
struct Scan<'p> {
    c: &'p Compiled,
    part: Part,
    /// All steps and aggregates in this stage, and the fast path on: it may run.
    fast_path: bool,
    /// An emitting stage's record so far: its names and values, outermost first.
    vars: Vec<(String, Cel)>,
    /// The records an emitting stage sends on.
    sent: Vec<Value>,
    scanned: u64,
    outside_range: u64,
    malformed: u64,
    errors: u64,
    notices: BTreeMap<String, u64>,
    missing_days: BTreeMap<String, u64>,
    accs: Vec<Acc>,
    fanout: u64,
    /// The current record's time (the source's `time`), for histograms.
    record_secs: Option<i64>,
    /// The fast path's params and keyword sets (the stage's), and its record's updates
    /// (reused).
    fast_env: &'p FastEnv,
    updates: Vec<Update>,
    /// Records the fast path was unsure of (run through `cel`).
    pub(crate) unsure: u64,
}

/// A partition's folder under a date-partitioned source, as fire-tweets reads its days:
/// a folder holds the records created on its day and, filed late, the day before.
struct Folder {
    /// Unix seconds `[lo, hi)` a record here must be created in to count.
    window: (i64, i64),
    /// The days a record here may be filed for: one created outside them is misfiled.
    filed_for: Option<(i64, i64)>,
    /// The folder after the range: only its late records are read, nothing else counted.
    late_only: bool,
    /// For Twitter's time format, a SIMD search that skips the folder's other lines.
    late_needles: Option<Needles>,
}

/// Which record steps a stage runs, on what, and what it sends on. A fused pipeline has
/// one such stage, [`Part::fused`]; an unfused one (`settings.fuse = false`) a stage a step,
/// each sending the next its records as JSON (see ARCHITECTURE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// Runs the steps `from..to`.
    pub from: usize,
    pub to: usize,
    /// Reads the source's lines (else the records an earlier stage sent).
    pub lines: bool,
    /// Sends its records on (else aggregates them into the partial).
    pub emit: bool,
}

impl Part {
    /// All the steps and the aggregates in the stage that reads the lines.
    pub(crate) fn fused(steps: usize) -> Part {
        Part {
            from: 0,
            to: steps,
            lines: true,
            emit: false,
        }
    }

    /// The stages of an unfused pipeline of `steps` steps: the lines read and the first
    /// step run, each further step, then the aggregates.
    pub(crate) fn unfused(steps: usize) -> Vec<Part> {
        let first = steps.min(1);
        let mut parts = vec![Part {
            from: 0,
            to: first,
            lines: true,
            emit: true,
        }];
        parts.extend((first..steps).map(|i| Part {
            from: i,
            to: i + 1,
            lines: false,
            emit: true,
        }));
        parts.push(Part {
            from: steps,
            to: steps,
            lines: false,
            emit: false,
        });
        parts
    }
}

/// The record steps and aggregates of a pipeline, or a [`Part`] of them, as a transform
/// stage.
pub struct PipelineScan {
    pub(crate) compiled: Arc<Compiled>,
    pub(crate) part: Part,
    pub(crate) params: Value,
    /// A date-partitioned source's range (inclusive).
    pub(crate) window: Option<(Day, Day)>,
    pub(crate) day_of_prefix: BTreeMap<String, Day>,
    /// The params as the fast path reads them, made by the stage's first partition.
    pub(crate) fast_env: std::sync::OnceLock<FastEnv>,
}

/// A stage's params as the fast path reads them: by index, and the keyword lists among
/// them compiled with their prefilter (once, not per partition).
#[derive(Default)]
pub(crate) struct FastEnv {
    params: Vec<V<'static>>,
    keywords: Vec<Option<super::fast::KeywordSet>>,
}

impl FastEnv {
    fn new(c: &Compiled, params: &Value) -> FastEnv {
        let params: Vec<V<'static>> = c
            .fast
            .as_ref()
            .map(|f| {
                f.params
                    .iter()
                    .map(|p| V::from_json(params.get(p).unwrap_or(&Value::Null)))
                    .collect()
            })
            .unwrap_or_default();
        let keywords = params
            .iter()
            .map(|p| match p {
                V::List(items) => {
                    let words: Option<Vec<String>> = items
                        .iter()
                        .map(|w| match w {
                            V::Str(s) => Some(s.to_string()),
                            _ => None,
                        })
                        .collect();
                    words
                        .and_then(|w| expr::keywords_of(&w).ok())
                        .map(super::fast::KeywordSet::new)
                }
                _ => None,
            })
            .collect();
        FastEnv { params, keywords }
    }
}

impl PipelineScan {
    fn folder(&self, payload: &Map<String, Value>) -> Option<Folder> {
        let (from, to) = self.window?;
        let (_, format) = self.compiled.time?;
        let day = payload
            .get("prefix")
            .and_then(Value::as_str)
            .and_then(|p| self.day_of_prefix.get(p))
            .copied();
        let w = FolderWindow::new(from, to, day);
        Some(Folder {
            window: w.window,
            filed_for: w.filed_for,
            late_only: w.late_only,
            late_needles: if w.late_only && matches!(format, TimeFormat::Twitter) {
                Needles::new(&crate::components::tweet_match::late_needles(to))
            } else {
                None
            },
        })
    }

    fn scan<'l>(
        &self,
        payload: &Map<String, Value>,
        lines: impl Iterator<Item = &'l [u8]>,
    ) -> Result<Scan<'_>, ComponentError> {
        let c = &self.compiled;
        let root = expr::root_context(&self.params).map_err(ComponentError::Malformed)?;
        let mut scan = self.start(payload);
        let folder = self.folder(payload);
        let mut slots: Fields<'_> = c.paths.as_ref().map(FieldPaths::slots).unwrap_or_default();
        let mut values: Vec<V<'_>> = Vec::new();
        for line in lines {
            let line = &line[..line.len().min(MAX_LINE_BYTES)];
            scan.line(line, &root, folder.as_ref(), &mut slots, &mut values);
        }
        Ok(scan)
    }

    /// An unfused stage after the first: the records the stage before sent, with its
    /// counters.
    fn scan_records(&self, payload: &Value) -> Result<Scan<'_>, ComponentError> {
        let root = expr::root_context(&self.params).map_err(ComponentError::Malformed)?;
        let mut scan = self.start(&Map::new());
        let Some(Value::Array(records)) = payload.get("records") else {
            return Err(ComponentError::Malformed(
                "an unfused pipeline stage takes `records`".into(),
            ));
        };
        if let Some(Value::Object(counts)) = payload.get("counts") {
            scan.absorb(counts);
        }
        for r in records {
            match r {
                Value::Object(r) => scan.record(r, &root),
                _ => scan.errors += 1,
            }
        }
        Ok(scan)
    }

    fn start(&self, payload: &Map<String, Value>) -> Scan<'_> {
        let c = &self.compiled;
        let mut scan = Scan {
            c,
            part: self.part,
            fast_path: self.part == Part::fused(c.steps.len())
                && FAST_PATH.load(std::sync::atomic::Ordering::Relaxed),
            vars: Vec::new(),
            sent: Vec::new(),
            scanned: 0,
            outside_range: 0,
            malformed: 0,
            errors: 0,
            notices: BTreeMap::new(),
            missing_days: BTreeMap::new(),
            accs: c
                .aggregates
                .iter()
                .map(|a| match (a.op, a.keyed_op()) {
                    (_, Some(op)) => Acc::Keyed(KeyedMap::new(op)),
                    (AggregateOp::Count, _) => Acc::Count(0),
                    (AggregateOp::Distinct, _) => Acc::Distinct(Box::new(new_sketch(a.precision))),
                    _ => Acc::Number(None),
                })
                .collect(),
            fanout: 0,
            record_secs: None,
            fast_env: self.fast_env.get_or_init(|| FastEnv::new(c, &self.params)),
            updates: Vec::new(),
            unsure: 0,
        };
        if payload.get("empty") == Some(&Value::Bool(true)) {
            if let Some(d) = payload
                .get("prefix")
                .and_then(Value::as_str)
                .and_then(|p| self.day_of_prefix.get(p))
            {
                scan.missing_days.insert(d.to_string(), 1);
            }
        }
        scan
    }

    /// The stage's output: the records it sends on with its counters, or the partial
    /// (by-key aggregates as JSON objects).
    fn output(scan: Scan<'_>) -> Value {
        if scan.part.emit {
            return scan.sent();
        }
        let (mut out, keyed) = scan.finish();
        if let Some(o) = out.as_object_mut() {
            for (name, map) in keyed {
                o.insert(name, map.to_json());
            }
        }
        out
    }
}

fn new_sketch(precision: u8) -> Sketch {
    // The precision is checked (4 to 16) when the definition compiles.
    HyperLogLogPF::new(precision, StableHash).unwrap_or_else(|_| {
        HyperLogLogPF::new(12, StableHash).unwrap_or_else(|e| unreachable!("{e:?}"))
    })
}

fn raw_to_json(raw: Raw<'_>) -> Value {
    serde_json::from_slice(raw.0).unwrap_or(Value::Null)
}

fn parse_time(raw: Raw<'_>, format: TimeFormat) -> Option<i64> {
    match format {
        TimeFormat::Twitter => crate::jsonl::as_str(&Some(raw))
            .and_then(|s| crate::tweets::calendar::parse_twitter_timestamp(&s)),
        TimeFormat::Rfc3339 => crate::jsonl::as_str(&Some(raw))
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.timestamp()),
        TimeFormat::UnixSeconds => raw_to_json(raw).as_f64().map(|f| f.floor() as i64),
        TimeFormat::UnixMillis => {
            let v = raw_to_json(raw);
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(|ms: i64| ms.div_euclid(1000))
        }
    }
}

fn timestamp(secs: i64) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::from_timestamp(secs, 0).map(|t| t.fixed_offset())
}

impl Scan<'_> {
    fn line<'a>(
        &mut self,
        line: &'a [u8],
        root: &Context<'_, '_>,
        folder: Option<&Folder>,
        slots: &mut Fields<'a>,
        values: &mut Vec<V<'a>>,
    ) {
        let c = self.c;
        let late_only = folder.is_some_and(|f| f.late_only);
        if let Some(n) = folder.and_then(|f| f.late_needles.as_ref()) {
            if !n.is_match(line) {
                return;
            }
        }
        if line.trim_ascii().is_empty() {
            if c.notices.is_some() && !late_only {
                *self.notices.entry(KEEP_ALIVE.to_owned()).or_default() += 1;
            }
            return;
        }
        let mut scope = root.new_inner_scope();
        let mut time_secs = None;
        match (&c.paths, c.format) {
            (_, Format::TextLines | Format::SyntheticText) => {
                self.scanned += 1;
                let v = Cel::String(Arc::new(String::from_utf8_lossy(line).into_owned()));
                if self.part.emit {
                    self.vars.clear();
                    self.vars.push(("line".into(), v.clone()));
                }
                scope.add_variable_from_value("line", v);
            }
            (None, _) => return,
            (Some(paths), Format::JsonLines) => {
                if paths.read(line, slots).is_err() {
                    if !late_only {
                        self.malformed += 1;
                    }
                    return;
                }
                if let Some((i, format)) = c.time {
                    time_secs = slots[i].and_then(|raw| parse_time(raw, format));
                    if time_secs.is_none() {
                        if !late_only {
                            self.notice_or_malformed(line);
                        }
                        return;
                    }
                }
                if c.require.iter().any(|alternatives| {
                    alternatives
                        .iter()
                        .all(|&i| slots[i].is_none_or(|r| r.is_null()))
                }) {
                    if !late_only {
                        if c.time.is_some() {
                            self.malformed += 1;
                        } else {
                            self.notice_or_malformed(line);
                        }
                    }
                    return;
                }
                if let (Some(f), Some(t)) = (folder, time_secs) {
                    let in_window = (f.window.0..f.window.1).contains(&t);
                    if !late_only {
                        self.scanned += 1;
                        let misfiled = f.filed_for.is_none_or(|(a, b)| !(a..b).contains(&t));
                        if !in_window && misfiled {
                            self.outside_range += 1;
                        }
                    }
                    if !in_window {
                        return;
                    }
                } else {
                    self.scanned += 1;
                }
                if let Some(fast) = c.fast.as_ref().filter(|_| self.fast_path) {
                    if self.fast_record(fast, slots, values, time_secs).is_ok() {
                        return;
                    }
                    self.unsure += 1;
                }
                self.vars.clear();
                for r in &c.roots {
                    let v = root_value(r, slots);
                    if self.part.emit {
                        self.vars.push((r.name.clone(), v.clone()));
                    }
                    scope.add_variable_from_value(r.name.clone(), v);
                }
                if let Some(t) = time_secs.and_then(timestamp) {
                    scope.add_variable_from_value("record_time", Cel::Timestamp(t));
                }
            }
        }
        self.fanout = 0;
        self.record_secs = time_secs;
        if !self.steps(self.part.from, &scope) {
            self.errors += 1;
        }
    }

    /// A record an earlier unfused stage sent: its names bound as they were.
    fn record(&mut self, rec: &Map<String, Value>, root: &Context<'_, '_>) {
        let mut scope = root.new_inner_scope();
        self.vars.clear();
        self.record_secs = None;
        for (k, v) in rec {
            if k == "record_time" {
                self.record_secs = v.as_i64();
                if let Some(t) = self.record_secs.and_then(timestamp) {
                    scope.add_variable_from_value("record_time", Cel::Timestamp(t));
                }
                continue;
            }
            let v = expr::from_record_json(v);
            if self.part.emit {
                self.vars.push((k.clone(), v.clone()));
            }
            scope.add_variable_from_value(k.clone(), v);
        }
        self.fanout = 0;
        if !self.steps(self.part.from, &scope) {
            self.errors += 1;
        }
    }

    /// Sends the record on: its names' values, and its time.
    fn send(&mut self) -> bool {
        let mut o = Map::with_capacity(self.vars.len() + 1);
        for (k, v) in &self.vars {
            match expr::to_record_json(v) {
                Some(j) => o.insert(k.clone(), j),
                None => return false,
            };
        }
        if let Some(t) = self.record_secs {
            o.insert("record_time".into(), json!(t));
        }
        self.sent.push(Value::Object(o));
        true
    }

    /// Adds the counters an earlier unfused stage sent.
    fn absorb(&mut self, counts: &Map<String, Value>) {
        let records = &self.c.records;
        let n = |k: &str| counts.get(k).and_then(Value::as_u64).unwrap_or(0);
        self.scanned += n(&format!("{records}_scanned"));
        self.outside_range += n(&format!("{records}_outside_range"));
        self.malformed += n("malformed_lines");
        self.errors += n("expression_errors");
        for (key, map) in [
            ("notices", &mut self.notices),
            ("missing_days", &mut self.missing_days),
        ] {
            if let Some(Value::Object(m)) = counts.get(key) {
                for (k, v) in m {
                    *map.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
                }
            }
        }
    }

    /// An emitting stage's output: its records and its counters so far.
    fn sent(self) -> Value {
        let counts = self.counters();
        json!({"records": self.sent, "counts": counts})
    }

    /// One record on the fast path: its updates applied when every step and aggregate was
    /// sure, else nothing (the caller runs it through `cel`).
    fn fast_record<'a>(
        &mut self,
        fast: &Fast,
        fields: &Fields<'a>,
        slots: &mut Vec<V<'a>>,
        time: Option<i64>,
    ) -> Result<(), Unsure> {
        // `slots` are the time and the bound names (the fields are read where they are):
        // a bound slot is always set before it is read, so the last record's stays.
        let bound = fast.slots - fast.time_slot;
        if slots.len() != bound {
            slots.resize(bound, V::Null);
        }
        slots[0] = time.map_or(V::Null, V::Ts);
        self.updates.clear();
        self.fanout = 0;
        let env = self.fast_env;
        let outcome = self.fast_steps(fast, 0, fields, slots, &env.params, &env.keywords);
        if outcome.is_ok() {
            let updates = std::mem::take(&mut self.updates);
            for u in &updates {
                if !self.apply(u) {
                    self.errors += 1;
                }
            }
            self.updates = updates;
        }
        outcome
    }

    fn fast_steps<'a>(
        &mut self,
        fast: &Fast,
        i: usize,
        fields: &Fields<'a>,
        slots: &mut Vec<V<'a>>,
        params: &[V<'static>],
        keywords: &[Option<super::fast::KeywordSet>],
    ) -> Result<(), Unsure> {
        let Some(step) = fast.steps.get(i) else {
            self.fanout += 1;
            if self.fanout > MAX_FANOUT {
                return Err(Unsure);
            }
            return self.fast_aggregate(fast, fields, slots, params, keywords);
        };
        let env = Env {
            fields,
            slots,
            params,
            keywords,
        };
        let base = fast.time_slot;
        match step {
            FStep::Filter(f) => match f.truth(&env)? {
                Some(true) => self.fast_steps(fast, i + 1, fields, slots, params, keywords),
                _ => Ok(()),
            },
            FStep::Compute(f, slot) => {
                let v = f.eval(&env)?;
                slots[*slot - base] = v;
                self.fast_steps(fast, i + 1, fields, slots, params, keywords)
            }
            FStep::Explode(f, slot) => match f.eval(&env)? {
                V::List(items) => {
                    for item in items {
                        slots[*slot - base] = item;
                        self.fast_steps(fast, i + 1, fields, slots, params, keywords)?;
                    }
                    Ok(())
                }
                V::Null => Ok(()),
                _ => Err(Unsure),
            },
            FStep::Tokenize(f, slot) => match f.eval(&env)? {
                V::Str(text) => {
                    let lowered = text.to_lowercase();
                    for w in expr::tokens(&lowered) {
                        slots[*slot - base] = V::Str(std::borrow::Cow::Owned(w.to_owned()));
                        self.fast_steps(fast, i + 1, fields, slots, params, keywords)?;
                    }
                    Ok(())
                }
                V::Null => Ok(()),
                _ => Err(Unsure),
            },
        }
    }

    fn fast_aggregate<'a>(
        &mut self,
        fast: &Fast,
        fields: &Fields<'a>,
        slots: &[V<'a>],
        params: &[V<'static>],
        keywords: &[Option<super::fast::KeywordSet>],
    ) -> Result<(), Unsure> {
        let env = Env {
            fields,
            slots,
            params,
            keywords,
        };
        let eval =
            |f: &Option<F>| -> Result<V<'a>, Unsure> { f.as_ref().ok_or(Unsure)?.eval(&env) };
        for (i, (a, fa)) in self.c.aggregates.iter().zip(&fast.aggregates).enumerate() {
            if let Some(w) = &fa.when {
                if w.truth(&env)? != Some(true) {
                    continue;
                }
            }
            let update = match a.op {
                AggregateOp::Count => Update::Count(i),
                AggregateOp::Sum | AggregateOp::Min | AggregateOp::Max => match eval(&fa.value)? {
                    V::Null => continue,
                    v => Update::Number(i, v.number()?),
                },
                AggregateOp::Distinct => match eval(&fa.value)? {
                    V::Null => continue,
                    v => Update::Distinct(i, v.key_text()?),
                },
                AggregateOp::Histogram => {
                    let t = match &fa.time {
                        Some(f) => f.eval(&env)?,
                        None => slots.first().cloned().ok_or(Unsure)?,
                    };
                    let V::Ts(t) = t else { return Err(Unsure) };
                    Update::Key(i, bucket_key(t, a.bucket).ok_or(Unsure)?)
                }
                AggregateOp::TopK => {
                    let g = eval(&fa.group)?;
                    let k = eval(&fa.key)?;
                    if k == V::Null {
                        continue;
                    }
                    Update::Key(i, group_key(g.key_text()?, &k.key_text()?).ok_or(Unsure)?)
                }
                AggregateOp::CountBy => match eval(&fa.key)? {
                    V::Null => continue,
                    k => Update::Key(i, k.key_text()?),
                },
                AggregateOp::SumBy | AggregateOp::MinBy | AggregateOp::MaxBy => {
                    let k = eval(&fa.key)?;
                    if k == V::Null {
                        continue;
                    }
                    let v = eval(&fa.value)?;
                    if v == V::Null {
                        continue;
                    }
                    Update::KeyCell(i, k.key_text()?, cell_of(v.number()?))
                }
            };
            self.updates.push(update);
        }
        Ok(())
    }

    /// Applies one record's update to its aggregate; false when the keyed map refused it.
    fn apply(&mut self, u: &Update) -> bool {
        match u {
            Update::Count(i) => {
                if let Acc::Count(n) = &mut self.accs[*i] {
                    *n += 1;
                }
            }
            Update::Number(i, x) => {
                let op = self.c.aggregates[*i].op;
                if let Acc::Number(slot) = &mut self.accs[*i] {
                    *slot = Some(match *slot {
                        None => *x,
                        Some(acc) => fold_number(op, acc, *x),
                    });
                }
            }
            Update::Key(i, k) => {
                if let Acc::Keyed(m) = &mut self.accs[*i] {
                    m.count(k);
                }
            }
            Update::KeyCell(i, k, cell) => {
                if let Acc::Keyed(m) = &mut self.accs[*i] {
                    return m.add(k, *cell).is_ok();
                }
            }
            Update::Distinct(i, k) => {
                if let Acc::Distinct(s) = &mut self.accs[*i] {
                    s.insert(k.as_str());
                }
            }
        }
        true
    }

    fn notice_or_malformed(&mut self, line: &[u8]) {
        if let Some((paths, kinds)) = &self.c.notices {
            let mut slots = paths.slots();
            if paths.read(line, &mut slots).is_ok() {
                if let Some((kind, _)) = kinds.iter().zip(&slots).find(|(_, v)| v.is_some()) {
                    *self.notices.entry(kind.clone()).or_default() += 1;
                    return;
                }
            }
        }
        self.malformed += 1;
    }

    /// Runs steps `i..` on one record; false when an expression failed (or the line's
    /// records passed [`MAX_FANOUT`]).
    fn steps(&mut self, i: usize, ctx: &Context<'_, '_>) -> bool {
        let c = self.c;
        let step = c.steps.get(i).filter(|_| i < self.part.to);
        let Some(step) = step else {
            self.fanout += 1;
            if self.fanout > MAX_FANOUT {
                return false;
            }
            if self.part.emit {
                return self.send();
            }
            return self.aggregate(ctx);
        };
        match step {
            CStep::Filter(e) => match e.eval(ctx) {
                Ok(Cel::Bool(true)) => self.steps(i + 1, ctx),
                Ok(Cel::Bool(false)) | Ok(Cel::Null) => true,
                _ => false,
            },
            CStep::Compute(e, name) => match e.eval(ctx) {
                Ok(v) => self.bind(i, ctx, name, v),
                Err(_) => false,
            },
            CStep::Explode(e, name) => match e.eval(ctx) {
                Ok(Cel::List(items)) => {
                    let mut ok = true;
                    for item in items.iter() {
                        ok &= self.bind(i, ctx, name, item.clone());
                        if self.fanout > MAX_FANOUT {
                            return false;
                        }
                    }
                    ok
                }
                Ok(Cel::Null) => true,
                _ => false,
            },
            CStep::Tokenize(e, name) => match e.eval(ctx) {
                Ok(Cel::String(text)) => {
                    let lowered = text.to_lowercase();
                    let mut ok = true;
                    for w in expr::tokens(&lowered) {
                        ok &= self.bind(i, ctx, name, Cel::String(Arc::new(w.to_owned())));
                        if self.fanout > MAX_FANOUT {
                            return false;
                        }
                    }
                    ok
                }
                Ok(Cel::Null) => true,
                _ => false,
            },
        }
    }

    /// Runs the steps after `i` with `name` bound to `v`.
    fn bind(&mut self, i: usize, ctx: &Context<'_, '_>, name: &str, v: Cel) -> bool {
        let mut inner = ctx.new_inner_scope();
        if self.part.emit {
            self.vars.push((name.to_owned(), v.clone()));
        }
        inner.add_variable_from_value(name.to_owned(), v);
        let ok = self.steps(i + 1, &inner);
        if self.part.emit {
            self.vars.pop();
        }
        ok
    }

    fn aggregate(&mut self, ctx: &Context<'_, '_>) -> bool {
        let c = self.c;
        let mut ok = true;
        for (i, a) in c.aggregates.iter().enumerate() {
            if let Some(w) = &a.when {
                match w.eval(ctx) {
                    Ok(Cel::Bool(true)) => {}
                    Ok(Cel::Bool(false)) | Ok(Cel::Null) => continue,
                    _ => {
                        ok = false;
                        continue;
                    }
                }
            }
            match update(i, a, ctx, self.record_secs) {
                Some(Some(u)) => ok &= self.apply(&u),
                Some(None) => {}
                None => ok = false,
            }
        }
        ok
    }

    fn counters(&self) -> Map<String, Value> {
        let c = self.c;
        let mut out = Map::new();
        out.insert(format!("{}_scanned", c.records), json!(self.scanned));
        out.insert("malformed_lines".into(), json!(self.malformed));
        out.insert("expression_errors".into(), json!(self.errors));
        if c.has_days {
            out.insert(
                format!("{}_outside_range", c.records),
                json!(self.outside_range),
            );
            out.insert("missing_days".into(), json!(self.missing_days));
        }
        if c.notices.is_some() {
            out.insert("notices".into(), json!(self.notices));
        }
        out
    }

    /// The partial: counters and scalar aggregates, and the by-key aggregates as maps.
    fn finish(self) -> (Value, KeyedFields) {
        tracing::debug!(
            unsure = self.unsure,
            records = self.scanned,
            "records the fast path left to cel"
        );
        let mut out = self.counters();
        let mut keyed = Vec::new();
        for (a, acc) in self.c.aggregates.iter().zip(self.accs) {
            match acc {
                Acc::Count(n) => {
                    out.insert(a.name.clone(), json!(n));
                }
                Acc::Number(n) => {
                    let v = match (n, a.op) {
                        (None, AggregateOp::Sum) => json!(0),
                        (None, _) => Value::Null,
                        (Some(Number::Int(i)), _) => json!(i),
                        (Some(Number::Real(f)), _) => json!(f),
                    };
                    out.insert(a.name.clone(), v);
                }
                Acc::Keyed(map) => keyed.push((a.name.clone(), map)),
                Acc::Distinct(s) => {
                    out.insert(a.name.clone(), sketch_json(*s, a.precision));
                }
            }
        }
        (Value::Object(out), keyed)
    }
}

/// A record's top-level name from its captured fields: the whole value, or an object of
/// the captured paths below it (absent ones left out; a whole absent name is null).
fn root_value(r: &Root, slots: &Fields<'_>) -> Cel {
    let mut value = match &r.parts[..] {
        [(rest, i)] if rest.is_empty() => match slots[*i] {
            Some(raw) => raw_to_json(raw),
            None => Value::Null,
        },
        _ => {
            // Read only by its fields: an object of those (so an absent or null name reads
            // its fields as null, not as an error).
            let mut obj = Value::Object(Map::new());
            for (rest, i) in &r.parts {
                let Some(raw) = slots[*i] else { continue };
                set_path(&mut obj, rest, raw_to_json(raw));
            }
            obj
        }
    };
    for path in &r.fill {
        fill_null(&mut value, path);
    }
    expr::to_cel(&value)
}

/// Sets `path` below an object, making the objects on the way.
fn set_path(obj: &mut Value, path: &[String], v: Value) {
    let mut at = obj;
    for (j, k) in path.iter().enumerate() {
        let Value::Object(m) = at else { return };
        if j + 1 == path.len() {
            m.insert(k.clone(), v);
            return;
        }
        at = m
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// A field an expression reads and the line lacks reads as null: objects on the way are
/// made (and a null on the way replaced by one), a value that is there stays.
fn fill_null(obj: &mut Value, path: &[String]) {
    let mut at = obj;
    for (j, k) in path.iter().enumerate() {
        if at.is_null() {
            *at = Value::Object(Map::new());
        }
        let Value::Object(m) = at else { return };
        if j + 1 == path.len() {
            m.entry(k.clone()).or_insert(Value::Null);
            return;
        }
        at = m
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// What one record adds to aggregate `i` on the `cel` path: `None` when an expression
/// failed, `Some(None)` when it adds nothing (a null value or key).
fn update(
    i: usize,
    a: &CAggregate,
    ctx: &Context<'_, '_>,
    record_secs: Option<i64>,
) -> Option<Option<Update>> {
    let eval = |e: &Option<Expr>| -> Option<Cel> { e.as_ref()?.eval(ctx).ok() };
    Some(Some(match a.op {
        AggregateOp::Count => Update::Count(i),
        AggregateOp::Sum | AggregateOp::Min | AggregateOp::Max => match eval(&a.value)? {
            Cel::Null => return Some(None),
            v => Update::Number(i, expr::number(&v)?),
        },
        AggregateOp::Distinct => match eval(&a.value)? {
            Cel::Null => return Some(None),
            v => Update::Distinct(i, expr::key_text(&v)?),
        },
        AggregateOp::Histogram => {
            let t = match &a.time {
                Some(e) => e.eval(ctx).ok()?,
                None => Cel::Timestamp(timestamp(record_secs?)?),
            };
            let Cel::Timestamp(t) = t else { return None };
            Update::Key(i, bucket_key(t.timestamp(), a.bucket)?)
        }
        AggregateOp::TopK => {
            let g = eval(&a.group)?;
            let k = eval(&a.key)?;
            if k == Cel::Null {
                return Some(None);
            }
            Update::Key(i, group_key(expr::key_text(&g)?, &expr::key_text(&k)?)?)
        }
        AggregateOp::CountBy => match eval(&a.key)? {
            Cel::Null => return Some(None),
            k => Update::Key(i, expr::key_text(&k)?),
        },
        AggregateOp::SumBy | AggregateOp::MinBy | AggregateOp::MaxBy => {
            let k = eval(&a.key)?;
            if k == Cel::Null {
                return Some(None);
            }
            let v = eval(&a.value)?;
            if v == Cel::Null {
                return Some(None);
            }
            Update::KeyCell(i, expr::key_text(&k)?, cell_of(expr::number(&v)?))
        }
    }))
}

/// A `top-k` aggregate's key: the group and the key, apart; `None` when the group holds
/// the separator (it could not be told apart).
fn group_key(group: String, key: &str) -> Option<String> {
    if group.contains(GROUP_SEPARATOR) {
        return None;
    }
    Some(format!("{group}{GROUP_SEPARATOR}{key}"))
}

/// A number as a keyed map's cell: non-negative integers stay exact.
fn cell_of(n: Number) -> Cell {
    match n {
        Number::Int(i) if i >= 0 => Cell::Int(i as u64),
        n => Cell::Real(n.as_f64()),
    }
}

/// Folds a number into a `sum`, `min` or `max` aggregate's value.
fn fold_number(op: AggregateOp, acc: Number, x: Number) -> Number {
    match op {
        AggregateOp::Sum => add_numbers(acc, x),
        AggregateOp::Min if x.as_f64() < acc.as_f64() => x,
        AggregateOp::Max if x.as_f64() > acc.as_f64() => x,
        _ => acc,
    }
}

fn add_numbers(a: Number, b: Number) -> Number {
    match (a, b) {
        (Number::Int(x), Number::Int(y)) => x
            .checked_add(y)
            .map_or(Number::Real(x as f64 + y as f64), Number::Int),
        (x, y) => Number::Real(x.as_f64() + y.as_f64()),
    }
}

/// A time bucket's key: the bucket's start, RFC 3339 in UTC (sorts as time).
fn bucket_key(secs: i64, bucket: Bucket) -> Option<String> {
    let width = match bucket {
        Bucket::Minute => 60,
        Bucket::Hour => 3600,
        Bucket::Day => 86_400,
    };
    let start = secs.div_euclid(width) * width;
    chrono::DateTime::from_timestamp(start, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn text_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let last = (!text.is_empty() && text.last() != Some(&b'\n')).then_some(text.len());
    let mut start = 0;
    memchr::memchr_iter(b'\n', text)
        .chain(last)
        .map(move |end| {
            let raw = &text[start..end];
            start = end + 1;
            raw.strip_suffix(b"\r").unwrap_or(raw)
        })
}

impl Transform for PipelineScan {
    fn apply(&self, payload: Value) -> Result<Value, ComponentError> {
        if !self.part.lines {
            return self.scan_records(&payload).map(Self::output);
        }
        let fields = payload.as_object().cloned().unwrap_or_default();
        let lines = crate::components::filter::lines(&payload)?;
        let mut bytes: Vec<&[u8]> = Vec::with_capacity(lines.len());
        for l in lines {
            bytes.push(
                l.as_str()
                    .ok_or_else(|| ComponentError::Malformed("a line is not a string".into()))?
                    .as_bytes(),
            );
        }
        Ok(Self::output(self.scan(&fields, bytes.into_iter())?))
    }

    fn apply_text(
        &self,
        text: &[u8],
        fields: &Map<String, Value>,
    ) -> Option<Result<Value, ComponentError>> {
        if !self.part.lines {
            return None;
        }
        Some(self.scan(fields, text_lines(text)).map(Self::output))
    }

    fn apply_text_keyed(
        &self,
        text: &[u8],
    ) -> Option<Result<(Value, KeyedFields), ComponentError>> {
        // The payload's other fields (the day's prefix) matter to a dated source: it takes
        // the `apply_text` path, which has them.
        if self.window.is_some() || self.part != Part::fused(self.compiled.steps.len()) {
            return None;
        }
        Some(self.scan(&Map::new(), text_lines(text)).map(Scan::finish))
    }
}

/// Folds partials: counters and counts add, sums add, mins and maxes keep theirs, maps of
/// counters add by key, HyperLogLog sketches merge.
pub struct PipelineReduce {
    pub(crate) compiled: Arc<Compiled>,
}

#[derive(Clone, Copy)]
enum Fold {
    Add,
    Min,
    Max,
    AddMap,
    Sketch(u8),
    Keyed,
}

impl PipelineReduce {
    fn fold_of(&self, field: &str) -> Option<Fold> {
        let c = &self.compiled;
        if let Some(a) = c.aggregates.iter().find(|a| a.name == field) {
            return Some(match a.op {
                AggregateOp::Count | AggregateOp::Sum => Fold::Add,
                AggregateOp::Min => Fold::Min,
                AggregateOp::Max => Fold::Max,
                AggregateOp::Distinct => Fold::Sketch(a.precision),
                _ => Fold::Keyed,
            });
        }
        match field {
            "notices" | "missing_days" => Some(Fold::AddMap),
            f if c.source_fields().iter().any(|s| s == f) => Some(Fold::Add),
            _ => None,
        }
    }
}

fn json_number(v: &Value) -> Option<Number> {
    v.as_i64()
        .map(Number::Int)
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(Number::Real))
}

fn number_json(n: Number) -> Value {
    match n {
        Number::Int(i) => json!(i),
        Number::Real(f) => json!(f),
    }
}

impl Reduce for PipelineReduce {
    fn zero(&self) -> Value {
        Value::Object(Map::new())
    }

    fn fold(&self, acc: &mut Value, partial: &Value) -> Result<(), ComponentError> {
        let bad = |f: &str, m: &str| ComponentError::Malformed(format!("`{f}` {m}"));
        let part = partial
            .as_object()
            .ok_or_else(|| ComponentError::Malformed("a partial must be an object".into()))?;
        let mut next = acc.as_object().cloned().unwrap_or_default();
        for (field, v) in part {
            let fold = self
                .fold_of(field)
                .ok_or_else(|| bad(field, "is not a field of this pipeline"))?;
            let slot = next.get(field).cloned();
            let merged = match (fold, slot) {
                (Fold::Keyed, _) => v.clone(),
                (_, None) => v.clone(),
                (Fold::Add, Some(a)) => {
                    let (x, y) = (json_number(&a), json_number(v));
                    match (x, y) {
                        (Some(x), Some(y)) => number_json(add_numbers(x, y)),
                        _ => return Err(bad(field, "is not a number")),
                    }
                }
                (Fold::Min | Fold::Max, Some(a)) => match (json_number(&a), json_number(v)) {
                    (None, _) => v.clone(),
                    (Some(_), None) => a,
                    (Some(x), Some(y)) => {
                        let take_y = match fold {
                            Fold::Min => y.as_f64() < x.as_f64(),
                            _ => y.as_f64() > x.as_f64(),
                        };
                        if take_y {
                            v.clone()
                        } else {
                            a
                        }
                    }
                },
                (Fold::AddMap, Some(a)) => {
                    let (Some(a), Some(b)) = (a.as_object(), v.as_object()) else {
                        return Err(bad(field, "is not a map of counts"));
                    };
                    let mut m = a.clone();
                    for (k, n) in b {
                        let n = n
                            .as_u64()
                            .ok_or_else(|| bad(field, "holds a count that is not one"))?;
                        let cur = m.get(k).and_then(Value::as_u64).unwrap_or(0);
                        m.insert(k.clone(), json!(cur.saturating_add(n)));
                    }
                    Value::Object(m)
                }
                (Fold::Sketch(p), Some(a)) => {
                    let read = |v: &Value| -> Result<Sketch, ComponentError> {
                        serde_json::from_value(v.get("sketch").cloned().unwrap_or(Value::Null))
                            .map_err(|e| bad(field, &format!("holds no sketch: {e}")))
                    };
                    let mut x = read(&a)?;
                    let y = read(v)?;
                    x.merge(&y)
                        .map_err(|e| bad(field, &format!("sketches differ: {e:?}")))?;
                    sketch_json(x, p)
                }
            };
            next.insert(field.clone(), merged);
        }
        *acc = Value::Object(next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Pipeline;

    fn pipeline(toml: &str) -> Pipeline {
        Pipeline::from_toml(toml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(p: &Pipeline, params: Value, lines: &[&str]) -> Value {
        let params = p.read_params(&params).unwrap();
        let flow = p.flow(&params).unwrap();
        let crate::flow::Step::Transform(t) = &flow.stages[1].step else {
            panic!()
        };
        let text = lines.join("\n");
        let out = t.apply_text(text.as_bytes(), &Map::new()).unwrap().unwrap();
        let crate::flow::Step::Reduce(r) = &flow.stages[2].step else {
            panic!()
        };
        let mut acc = r.zero();
        // Folded in two halves: the fold must agree with one partial.
        let (first, second): (Vec<_>, Vec<_>) =
            lines.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        for half in [first, second] {
            let text: Vec<&str> = half.into_iter().map(|(_, l)| *l).collect();
            let part = t
                .apply_text(text.join("\n").as_bytes(), &Map::new())
                .unwrap()
                .unwrap();
            let mut scalar = part.clone();
            for f in flow.keyed.iter().flat_map(|k| k.fields.iter()) {
                scalar.as_object_mut().unwrap().remove(&f.name);
            }
            r.fold(&mut acc, &scalar).unwrap();
        }
        for (k, v) in acc.as_object().unwrap() {
            assert_eq!(&out[k], v, "{k}: one partial and two folded differ");
        }
        assert_eq!(unfused(p, &params, &text), out, "unfused and fused differ");
        out
    }

    /// The partial of the same lines unfused: a stage a step, each given the records the
    /// one before sent, as JSON text (as a queue carries them).
    fn unfused(p: &Pipeline, params: &Map<String, Value>, text: &str) -> Value {
        let mut def = p.def.clone();
        def.settings.fuse = Some(false);
        let p = Pipeline::compile(def).unwrap();
        let flow = p.flow(params).unwrap();
        let transforms: Vec<_> = flow
            .stages
            .iter()
            .filter_map(|s| match &s.step {
                crate::flow::Step::Transform(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(transforms.len(), p.def.steps.len().max(1) + 1);
        let mut payload = transforms[0]
            .apply_text(text.as_bytes(), &Map::new())
            .unwrap()
            .unwrap();
        for t in &transforms[1..] {
            let sent: Value = serde_json::from_str(&payload.to_string()).unwrap();
            payload = t.apply(sent).unwrap();
        }
        payload
    }

    const USERS: &str = r#"
name = "users"
[params.country]
type = "string"
default = "GB"
[source]
format = "json-lines"
prefix = "users/"
[[steps]]
filter = "place.country_code == params.country"
[[steps]]
explode = "tags"
as = "tag"
[reduce.n]
op = "count"
[reduce.by_tag]
op = "count-by"
key = "lower(tag)"
[reduce.total_age]
op = "sum"
value = "age"
[reduce.oldest]
op = "max"
value = "age"
[reduce.distinct_users]
op = "distinct"
value = "user"
[reduce.top]
op = "top-k"
group = "place.country_code"
key = "tag"
k = 1
"#;

    #[test]
    fn records_flow_through_steps_into_aggregates() {
        let p = pipeline(USERS);
        let out = run(
            &p,
            json!({}),
            &[
                r#"{"user": "a", "age": 30, "place": {"country_code": "GB"}, "tags": ["X", "y"]}"#,
                r#"{"user": "b", "age": 41, "place": {"country_code": "GB"}, "tags": ["x"]}"#,
                r#"{"user": "c", "age": 99, "place": {"country_code": "IE"}, "tags": ["x"]}"#,
                r#"{"user": "a", "age": 5, "place": null, "tags": ["x"]}"#,
                "not json",
                "",
                r#"{"user": "d", "age": 1, "place": {"country_code": "GB"}, "tags": 3}"#,
            ],
        );
        assert_eq!(out["n"], json!(3));
        assert_eq!(out["by_tag"], json!({"x": 2, "y": 1}));
        assert_eq!(out["total_age"], json!(30 + 30 + 41));
        assert_eq!(out["oldest"], json!(41));
        assert_eq!(out["distinct_users"]["estimate"], json!(2));
        assert_eq!(out["records_scanned"], json!(5));
        assert_eq!(out["malformed_lines"], json!(1));
        // `place` null: its country code reads as null (not GB); `tags` 3: not a list.
        assert_eq!(out["expression_errors"], json!(1));
        assert_eq!(
            out["top"],
            json!({"GB\u{1f}X": 1, "GB\u{1f}x": 1, "GB\u{1f}y": 1})
        );
    }

    #[test]
    fn bad_definitions_name_their_field_and_line() {
        let e = Pipeline::from_toml(&USERS.replace("lower(tag)", "lower(tag")).unwrap_err();
        assert_eq!(e.path, "reduce.by_tag.key");
        assert!(e.at.is_some_and(|(line, _)| line > 1), "{e}");
        let e =
            Pipeline::from_toml(&USERS.replace("== params.country", "== params.nope")).unwrap_err();
        assert_eq!(e.path, "steps[0].filter");
        assert_eq!(e.at.map(|a| a.0), Some(10), "{e}");
        let e =
            Pipeline::from_toml(&USERS.replace("op = \"count\"", "op = \"counts\"")).unwrap_err();
        assert!(e.at.is_some() && e.message.contains("counts"), "{e}");
        let e = Pipeline::from_toml(&USERS.replace("users/", "results/")).unwrap_err();
        assert_eq!(e.path, "source.prefix");
        let many = format!("{}{}", USERS, "[[steps]]\nfilter = \"true\"\n".repeat(100));
        assert_eq!(Pipeline::from_toml(&many).unwrap_err().path, "steps");
        let unfused = format!(
            "{}{}[settings]\nfuse = false\n",
            USERS,
            "[[steps]]\nfilter = \"true\"\n".repeat(MAX_UNFUSED_STEPS)
        );
        let e = Pipeline::from_toml(&unfused).unwrap_err();
        assert_eq!(e.path, "settings.fuse", "{e}");
        assert!(Pipeline::from_toml(&unfused.replace("fuse = false", "fuse = true")).is_ok());
    }

    #[test]
    fn mentions_reads_hashtags_only_when_they_may_match() {
        let p = pipeline(
            r##"
name = "fires"
[params.keywords]
type = "strings"
default = ["fire", "fire truck", "#blaze"]
[source]
format = "json-lines"
prefix = "t/"
[reduce.matching]
op = "count"
where = "mentions(text, params.keywords, entities.hashtags)"
[reduce.ids]
op = "count-by"
key = "id"
where = "mentions(text, params.keywords, entities.hashtags)"
"##,
        );
        let out = run(
            &p,
            json!({}),
            &[
                r#"{"id": 1, "text": "a FIRE here", "entities": {"hashtags": []}}"#,
                r#"{"id": 2, "text": "nothing", "entities": {"hashtags": [{"text": "Blaze", "indices": [0, 6]}]}}"#,
                r#"{"id": 3, "text": "nothing", "entities": {"hashtags": [{"text": "\u0042laze"}]}}"#,
                r#"{"id": 4, "text": "nothing", "entities": {"hashtags": [{"text": "ice"}, "blaze"]}}"#,
                r#"{"id": 5, "text": "nothing", "entities": {"hashtags": [{"text": "blazes"}]}}"#,
                r#"{"id": 6, "text": "fire truck", "entities": {"hashtags": null}}"#,
                r#"{"id": 7, "text": "truck", "entities": {}}"#,
                r#"{"id": 8, "text": "nothing", "entities": {"hashtags": [{"text": 3}]}}"#,
            ],
        );
        assert_eq!(out["matching"], json!(5), "{out}");
        assert_eq!(out["ids"], json!({"1": 1, "2": 1, "3": 1, "4": 1, "6": 1}));
        assert_eq!(out["expression_errors"], json!(0));
    }

    #[test]
    fn histograms_bucket_the_record_time() {
        let p = pipeline(
            r#"
name = "per-hour"
[source]
format = "json-lines"
prefix = "t/"
time = { field = "at", format = "rfc3339" }
[reduce.per_hour]
op = "histogram"
"#,
        );
        let out = run(
            &p,
            json!({}),
            &[
                r#"{"at": "2018-11-01T12:34:56Z"}"#,
                r#"{"at": "2018-11-01T12:00:00Z"}"#,
                r#"{"at": "2018-11-01T13:00:00+00:00"}"#,
                r#"{"x": 1}"#,
            ],
        );
        assert_eq!(
            out["per_hour"],
            json!({"2018-11-01T12:00:00Z": 2, "2018-11-01T13:00:00Z": 1})
        );
        assert_eq!(out["malformed_lines"], json!(1));
    }
}
