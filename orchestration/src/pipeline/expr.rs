//! Expressions in a definition: CEL (the Common Expression Language, as `cel` implements
//! it), made for untrusted expressions: no loops but the comprehension macros, no
//! recursion, no side effects.
//!
//! What bounds an expression's cost on one record, checked when it compiles:
//! - at most [`MAX_SOURCE`] bytes, [`MAX_NODES`] nodes, nested at most [`MAX_DEPTH`] deep;
//! - no comprehension (`map`, `filter`, `exists`, `all`) inside another's body, so one
//!   costs at most its list's length times its body, and a record's lists are bounded by
//!   its line ([`crate::components::blob_lines::MAX_LINE_BYTES`]);
//! - only known functions; `matches` only with a literal pattern, compiled once (the
//!   `regex` crate: linear time, no backtracking) within [`MAX_REGEX_BYTES`].
//!
//! So an expression's cost is linear in its record, with a constant the compile bounds.
//! A record whose expression fails (a missing key, a type mismatch) is counted in the
//! result's `expression_errors` and goes no further; it never fails the partition.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use cel::common::ast::{EntryExpr, Expr as Node, IdedExpr};
use cel::extractors::{Arguments, This};
use cel::{Context, Env, Program, Value};

pub const MAX_SOURCE: usize = 4096;
pub const MAX_NODES: usize = 1000;
pub const MAX_DEPTH: u16 = 48;
/// How deep brackets may nest, and how deep the parsed expression may be: evaluation
/// recurses once per level, on the stage function's threads.
pub const MAX_NESTING: usize = 16;
pub const MAX_AST_DEPTH: usize = 64;
const COMPILE_STACK: usize = 256 << 20;
pub const MAX_REGEX_BYTES: usize = 1 << 20;

/// The standard environment, shared: compiling expands its macros; it is not needed after.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// Functions an expression may call: CEL's standard ones (operators are `_x_` and `@in`),
/// and [`register`]'s.
const FUNCTIONS: &[&str] = &[
    // standard
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "string",
    "int",
    "uint",
    "double",
    "bytes",
    "bool",
    "dyn",
    "type",
    "timestamp",
    "duration",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "max",
    "min",
    "orValue",
    "hasValue",
    "value",
    "or",
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    // ours
    "lower",
    "upper",
    "trim",
    "html_decode",
    "mentions",
    "coalesce",
    "words",
    "split",
    "join",
    "replace",
    "date",
];

/// CEL's type names (`type(x) == string`): names, but never a record's fields.
const TYPE_NAMES: &[&str] = &[
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "timestamp",
    "duration",
];

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    pub source: String,
    program: Arc<Program>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// What an expression refers to, found when it compiles.
#[derive(Debug, Default)]
pub struct References {
    /// Free names: record fields, computed names, `params`.
    pub names: BTreeSet<String>,
    /// Dotted paths into free names (`place.country_code`; `entities` when indexed or
    /// passed whole).
    pub paths: BTreeSet<String>,
}

impl Expr {
    /// Compiles `source` and checks its cost bounds.
    pub fn compile(source: &str) -> Result<(Expr, References), String> {
        if source.len() > MAX_SOURCE {
            return Err(format!(
                "an expression may be at most {MAX_SOURCE} bytes, this one is {}",
                source.len()
            ));
        }
        if source.trim().is_empty() {
            return Err("the expression is empty".into());
        }
        let nesting = bracket_nesting(source);
        if nesting > MAX_NESTING {
            return Err(format!(
                "brackets may nest at most {MAX_NESTING} deep, these nest {nesting}"
            ));
        }
        // CEL's parser recurses deeply per bracket (debug builds overflowed a 2 MiB stack at
        // 12 levels): it runs on a thread of its own with room to spare.
        let compiled = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("sluice-cel-compile".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(scope, || -> Result<(Program, Walk), String> {
                    let program = ENV
                        .parser()
                        .max_recursion_depth(MAX_DEPTH)
                        .parse(source)
                        .map(|_| ())
                        .and_then(|()| ENV.compile(source))
                        .map_err(|e| one_line(&e.to_string()))?;
                    let mut walk = Walk::default();
                    walk.node(program.expression(), 0, &[], 0)?;
                    Ok((program, walk))
                })
                .map_err(|e| format!("cannot start the compiler: {e}"))?
                .join()
                .map_err(|_| "the expression could not be compiled".to_owned())?
        });
        let (program, walk) = compiled?;
        Ok((
            Expr {
                source: source.to_owned(),
                program: Arc::new(program),
            },
            walk.refs,
        ))
    }

    /// The parsed expression (macros expanded).
    pub fn ast(&self) -> &IdedExpr {
        self.program.expression()
    }

    pub fn eval(&self, ctx: &Context<'_, '_>) -> Result<Value, String> {
        self.program.execute(ctx).map_err(|e| e.to_string())
    }
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or(message)
        .trim_start_matches("ERROR: ")
        .to_owned()
}

#[derive(Default)]
struct Walk {
    refs: References,
    nodes: usize,
}

impl Walk {
    /// `locals`: comprehension variables in scope; `in_loop`: inside a comprehension's body.
    fn node(
        &mut self,
        e: &IdedExpr,
        in_loop: usize,
        locals: &[&str],
        depth: usize,
    ) -> Result<(), String> {
        self.nodes += 1;
        if depth > MAX_AST_DEPTH {
            return Err(format!(
                "an expression may nest at most {MAX_AST_DEPTH} operations deep; split it into steps"
            ));
        }
        let d = depth + 1;
        if self.nodes > MAX_NODES {
            return Err(format!(
                "an expression may have at most {MAX_NODES} parts; split it into steps"
            ));
        }
        match &e.expr {
            Node::Ident(name) => {
                if !locals.contains(&name.as_str()) && !TYPE_NAMES.contains(&name.as_str()) {
                    self.refs.names.insert(name.clone());
                    self.refs.paths.insert(name.clone());
                }
            }
            Node::Select(_) => {
                if let Some(path) = select_path(e, true) {
                    let root = path.split('.').next().unwrap_or_default();
                    if !locals.contains(&root) {
                        self.refs.names.insert(root.to_owned());
                        self.refs.paths.insert(path);
                    }
                    return Ok(());
                }
                if let Node::Select(s) = &e.expr {
                    self.node(&s.operand, in_loop, locals, d)?;
                }
            }
            Node::Call(call) => {
                let name = call.func_name.as_str();
                let operator = name.starts_with('_') || name.starts_with('@') || name == "!_";
                if !operator && !FUNCTIONS.contains(&name) {
                    return Err(format!("unknown function `{name}`"));
                }
                if name == "matches" {
                    let pattern = call.args.last().map(|a| &a.expr);
                    match pattern {
                        Some(Node::Literal(cel::common::ast::LiteralValue::String(p))) => {
                            compiled_regex(p.inner()).map(|_| ())?;
                        }
                        _ => return Err("`matches` takes a literal pattern ('...')".into()),
                    }
                }
                if let Some(t) = &call.target {
                    self.node(t, in_loop, locals, d)?;
                }
                for a in &call.args {
                    self.node(a, in_loop, locals, d)?;
                }
            }
            Node::Comprehension(c) => {
                if in_loop > 0 {
                    return Err(
                        "a comprehension (map, filter, exists, all) may not be nested in another's body: its cost would grow with the square of a list"
                            .into(),
                    );
                }
                self.node(&c.iter_range, in_loop, locals, d)?;
                self.node(&c.accu_init, in_loop, locals, d)?;
                let mut inner: Vec<&str> = locals.to_vec();
                inner.push(&c.iter_var);
                if let Some(v) = &c.iter_var2 {
                    inner.push(v);
                }
                inner.push(&c.accu_var);
                self.node(&c.loop_cond, in_loop + 1, &inner, d)?;
                self.node(&c.loop_step, in_loop + 1, &inner, d)?;
                self.node(&c.result, in_loop, &inner, d)?;
            }
            Node::List(l) => {
                for x in &l.elements {
                    self.node(x, in_loop, locals, d)?;
                }
            }
            Node::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.node(&me.key, in_loop, locals, d)?;
                        self.node(&me.value, in_loop, locals, d)?;
                    }
                }
            }
            Node::Struct(_) => return Err("messages (struct literals) are not supported".into()),
            Node::Literal(_) | Node::Unspecified => {}
        }
        Ok(())
    }
}

/// How deep `(`, `[` and `{` nest (brackets in strings counted too: it only refuses more).
fn bracket_nesting(source: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in source.bytes() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// `a.b.c` as a dotted path, when the select chain ends at a name; `has(a.b)`'s test
/// select counts as a step only `with_tests`.
pub(crate) fn select_path(e: &IdedExpr, with_tests: bool) -> Option<String> {
    let mut parts = Vec::new();
    let mut at = e;
    loop {
        match &at.expr {
            Node::Select(s) if with_tests || !s.test => {
                parts.push(s.field.as_str());
                at = &s.operand;
            }
            Node::Ident(name) => {
                parts.push(name.as_str());
                parts.reverse();
                return Some(parts.join("."));
            }
            _ => return None,
        }
    }
}

/// Patterns compiled once per process, under a size limit.
static REGEXES: LazyLock<Mutex<HashMap<String, Arc<regex::Regex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn compiled_regex(pattern: &str) -> Result<Arc<regex::Regex>, String> {
    let mut cache = REGEXES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = cache.get(pattern) {
        return Ok(r.clone());
    }
    let r = regex::RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_BYTES)
        .dfa_size_limit(MAX_REGEX_BYTES)
        .build()
        .map_err(|e| format!("pattern `{pattern}`: {}", one_line(&e.to_string())))?;
    let r = Arc::new(r);
    if cache.len() < 1024 {
        cache.insert(pattern.to_owned(), r.clone());
    }
    Ok(r)
}

/// Keyword lists compiled once per process (they come from params: one per job).
static KEYWORDS: LazyLock<Mutex<HashMap<Vec<String>, Arc<crate::tweets::Keywords>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn keywords(list: &[Value]) -> Result<Arc<crate::tweets::Keywords>, String> {
    let words: Vec<String> = list
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.to_string()),
            other => Err(format!(
                "mentions: a keyword must be a string, not {other:?}"
            )),
        })
        .collect::<Result<_, _>>()?;
    keywords_of(&words)
}

/// A keyword list, compiled once per process.
pub fn keywords_of(words: &[String]) -> Result<Arc<crate::tweets::Keywords>, String> {
    let mut cache = KEYWORDS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = cache.get(words) {
        return Ok(k.clone());
    }
    let k = Arc::new(crate::tweets::Keywords::new(words).map_err(|e| e.to_string())?);
    if cache.len() < 256 {
        cache.insert(words.to_vec(), k.clone());
    }
    Ok(k)
}

fn text_items(list: &[Value]) -> Vec<String> {
    list.iter()
        .filter_map(|v| match v {
            Value::String(s) => Some(s.to_string()),
            Value::Map(m) => match m.map.get(&cel::objects::Key::from("text")) {
                Some(Value::String(s)) => Some(s.to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn fail(function: &str, message: impl Into<String>) -> cel::ExecutionError {
    cel::ExecutionError::function_error(function, message.into())
}

/// The root context of a partition's evaluation: the functions, and `params`.
pub fn root_context(params: &serde_json::Value) -> Result<Context<'static, 'static>, String> {
    let mut ctx = Context::with_env(ENV.clone());
    register(&mut ctx).map_err(|e| e.to_string())?;
    ctx.add_variable_from_value("params", to_cel(params));
    Ok(ctx)
}

fn register(ctx: &mut Context<'_, '_>) -> Result<(), cel::DeclarationError> {
    ctx.add_function("lower", |s: Arc<String>| s.to_lowercase())?;
    // `date(t)`: a timestamp's day in UTC, `YYYY-MM-DD`.
    ctx.add_function("date", |t: chrono::DateTime<chrono::FixedOffset>| {
        t.to_utc().format("%Y-%m-%d").to_string()
    })?;
    ctx.add_function("upper", |s: Arc<String>| s.to_uppercase())?;
    ctx.add_function("trim", |s: Arc<String>| s.trim().to_owned())?;
    ctx.add_function("html_decode", |s: Arc<String>| {
        crate::tweets::decode_html(&s).into_owned()
    })?;
    ctx.add_function(
        "replace",
        |s: Arc<String>, from: Arc<String>, to: Arc<String>| s.replace(from.as_str(), &to),
    )?;
    ctx.add_function("split", |s: Arc<String>, sep: Arc<String>| {
        Value::List(Arc::new(
            s.split(sep.as_str())
                .map(|p| Value::String(Arc::new(p.to_owned())))
                .collect(),
        ))
    })?;
    ctx.add_function("join", |list: Arc<Vec<Value>>, sep: Arc<String>| {
        text_items(&list).join(&sep)
    })?;
    ctx.add_function("words", |s: Arc<String>| {
        let lowered = s.to_lowercase();
        Value::List(Arc::new(
            tokens(&lowered)
                .map(|w| Value::String(Arc::new(w.to_owned())))
                .collect::<Vec<_>>(),
        ))
    })?;
    ctx.add_function("coalesce", |Arguments(args): Arguments| {
        args.iter()
            .find(|v| !matches!(v, Value::Null))
            .cloned()
            .unwrap_or(Value::Null)
    })?;
    // `mentions(text, keywords[, hashtags])`: a keyword or phrase as whole words, case
    // folded; `#tag` against the hashtags (strings, or entities with `text`), or the text.
    ctx.add_function(
        "mentions",
        |Arguments(args): Arguments| -> Result<bool, cel::ExecutionError> {
            let (text, list) = match (args.first(), args.get(1)) {
                (Some(Value::String(t)), Some(Value::List(l))) => (t, l),
                (Some(Value::Null), Some(Value::List(_))) => return Ok(false),
                _ => return Err(fail("mentions", "takes (string, list[, list])")),
            };
            let tags = match args.get(2) {
                Some(Value::List(tags)) => text_items(tags),
                Some(Value::Null) | None => Vec::new(),
                Some(_) => return Err(fail("mentions", "hashtags must be a list")),
            };
            let k = keywords(list).map_err(|e| fail("mentions", e))?;
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            Ok(k.matches(text, &tags))
        },
    )?;
    ctx.add_function(
        "matches",
        |This(s): This<Arc<String>>, pattern: Arc<String>| -> Result<bool, cel::ExecutionError> {
            let r = compiled_regex(&pattern).map_err(|e| fail("matches", e))?;
            Ok(r.is_match(&s))
        },
    )?;
    Ok(())
}

/// The words of a lowercased text as `tokenize` and `words` split it: runs of letters,
/// digits and `_` (as `mentions` splits a text, so the two agree).
pub fn tokens(text: &str) -> impl Iterator<Item = &str> + '_ {
    crate::tweets::matching::words(text)
}

/// A JSON value as CEL's (integers stay integers; a number too large for i64 is a double).
pub fn to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => match n.as_u64() {
                Some(u) => Value::UInt(u),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(to_cel).collect())),
        serde_json::Value::Object(o) => {
            let map: HashMap<cel::objects::Key, Value> = o
                .iter()
                .map(|(k, v)| (cel::objects::Key::from(k.as_str()), to_cel(v)))
                .collect();
            Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

/// A CEL value as a key of a keyed result: strings as they are, other scalars as JSON.
pub fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(serde_json::json!(f).to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Timestamp(t) => Some(t.to_rfc3339()),
        _ => None,
    }
}

/// A CEL number as a JSON-able one.
pub fn number(v: &Value) -> Option<Number> {
    match v {
        Value::Int(i) => Some(Number::Int(*i)),
        Value::UInt(u) => i64::try_from(*u)
            .map(Number::Int)
            .ok()
            .or(Some(Number::Real(*u as f64))),
        Value::Float(f) if f.is_finite() => Some(Number::Real(*f)),
        _ => None,
    }
}

/// The tag of a value JSON has no type for, in a record passed between unfused stages:
/// an object of one key, the tag, which no JSON a source reads has (a control character).
const TAG: char = '\u{1f}';

/// A CEL value as JSON that [`from_record_json`] reads back as the same value: what an
/// unfused pipeline's stage sends the next. JSON's types as they are; a uint, a
/// non-finite float, bytes, a duration, a timestamp and a map with keys other than strings
/// tagged. `None` for what has no value to send (a function, an opaque value).
pub fn to_record_json(v: &Value) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    let tagged = |tag: char, v: J| J::Object([(format!("{TAG}{tag}"), v)].into_iter().collect());
    Some(match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::UInt(u) => tagged('u', J::from(*u)),
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            // Written with a point or an exponent (`1.0`), so read back as a float.
            Some(n) => J::Number(n),
            None => tagged('f', J::String(f.to_string())),
        },
        Value::String(s) => J::String(s.to_string()),
        Value::Bytes(b) => tagged('b', J::Array(b.iter().map(|x| J::from(*x)).collect())),
        Value::Duration(d) => tagged('d', J::from(d.num_nanoseconds()?)),
        Value::Timestamp(t) => tagged('t', J::String(t.to_rfc3339())),
        Value::List(items) => J::Array(items.iter().map(to_record_json).collect::<Option<_>>()?),
        Value::Map(m) => {
            if m.map
                .keys()
                .all(|k| matches!(k, cel::objects::Key::String(_)))
            {
                let mut o = serde_json::Map::new();
                for (k, v) in m.map.iter() {
                    if let cel::objects::Key::String(k) = k {
                        o.insert(k.to_string(), to_record_json(v)?);
                    }
                }
                if o.len() == 1 && o.keys().all(|k| k.starts_with(TAG)) {
                    return None;
                }
                J::Object(o)
            } else {
                let mut pairs = Vec::with_capacity(m.map.len());
                for (k, v) in m.map.iter() {
                    let k = match k {
                        cel::objects::Key::Int(i) => Value::Int(*i),
                        cel::objects::Key::Uint(u) => Value::UInt(*u),
                        cel::objects::Key::Bool(b) => Value::Bool(*b),
                        cel::objects::Key::String(s) => Value::String(s.clone()),
                    };
                    pairs.push(J::Array(vec![to_record_json(&k)?, to_record_json(v)?]));
                }
                tagged('m', J::Array(pairs))
            }
        }
        Value::Function(..) | Value::Opaque(_) | Value::Struct(_) => return None,
    })
}

/// The CEL value [`to_record_json`] wrote.
pub fn from_record_json(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Array(a) => Value::List(Arc::new(a.iter().map(from_record_json).collect())),
        J::Object(o) => from_tagged(o).unwrap_or_else(|| {
            let map: HashMap<cel::objects::Key, Value> = o
                .iter()
                .map(|(k, v)| (cel::objects::Key::from(k.as_str()), from_record_json(v)))
                .collect();
            Value::Map(cel::objects::Map { map: Arc::new(map) })
        }),
        other => to_cel(other),
    }
}

/// The value a tagged object stands for (null when its content is not the tag's); `None`
/// for an object that is no tag.
fn from_tagged(o: &serde_json::Map<String, serde_json::Value>) -> Option<Value> {
    use serde_json::Value as J;
    if o.len() != 1 {
        return None;
    }
    let (k, x) = o.iter().next()?;
    let mut tag = k.chars();
    if tag.next() != Some(TAG) {
        return None;
    }
    Some(match (tag.next(), x) {
        (Some('u'), J::Number(n)) => n.as_u64().map_or(Value::Null, Value::UInt),
        (Some('f'), J::String(s)) => s.parse().map_or(Value::Null, Value::Float),
        (Some('b'), J::Array(b)) => Value::Bytes(Arc::new(
            b.iter()
                .filter_map(|x| x.as_u64().map(|x| x as u8))
                .collect(),
        )),
        (Some('d'), J::Number(n)) => n.as_i64().map_or(Value::Null, |n| {
            Value::Duration(chrono::Duration::nanoseconds(n))
        }),
        (Some('t'), J::String(s)) => {
            chrono::DateTime::parse_from_rfc3339(s).map_or(Value::Null, Value::Timestamp)
        }
        (Some('m'), J::Array(pairs)) => {
            let mut map = HashMap::with_capacity(pairs.len());
            for p in pairs {
                let J::Array(kv) = p else { continue };
                let (Some(k), Some(v)) = (kv.first(), kv.get(1)) else {
                    continue;
                };
                let key = match from_record_json(k) {
                    Value::Int(i) => cel::objects::Key::Int(i),
                    Value::UInt(u) => cel::objects::Key::Uint(u),
                    Value::Bool(b) => cel::objects::Key::Bool(b),
                    Value::String(s) => cel::objects::Key::String(s),
                    _ => continue,
                };
                map.insert(key, from_record_json(v));
            }
            Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
        _ => Value::Null,
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    Int(i64),
    Real(f64),
}

impl Number {
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Real(f) => f,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_value_survives_json_between_stages() {
        use chrono::TimeZone;
        let t = chrono::Utc
            .with_ymd_and_hms(2018, 11, 1, 10, 0, 0)
            .single()
            .map(|t| t.fixed_offset());
        let Some(t) = t else { panic!("a valid time") };
        let map = |pairs: Vec<(cel::objects::Key, Value)>| {
            Value::Map(cel::objects::Map {
                map: Arc::new(pairs.into_iter().collect()),
            })
        };
        let s = |x: &str| Value::String(Arc::new(x.to_owned()));
        let values = vec![
            Value::Null,
            Value::Bool(true),
            Value::Int(-3),
            Value::UInt(3),
            Value::Float(1.0),
            Value::Float(2.5),
            Value::Float(f64::INFINITY),
            Value::Float(1e300),
            s("fire"),
            Value::Bytes(Arc::new(vec![0, 255])),
            Value::Timestamp(t),
            Value::Duration(chrono::Duration::seconds(90)),
            Value::List(Arc::new(vec![Value::Int(1), s("a"), Value::Float(0.5)])),
            map(vec![("a".into(), Value::Int(1)), ("b".into(), s("x"))]),
            map(vec![("only".into(), Value::UInt(7))]),
            map(vec![(cel::objects::Key::Int(1), s("one"))]),
        ];
        for v in values {
            let Some(j) = to_record_json(&v) else {
                panic!("{v:?} has JSON")
            };
            let text = j.to_string();
            let back: serde_json::Value = match serde_json::from_str(&text) {
                Ok(b) => b,
                Err(e) => panic!("{text}: {e}"),
            };
            assert_eq!(from_record_json(&back), v, "{text}");
        }
        // A map whose only key looks like a tag is not sent (it would read back as another).
        let tag_like = map(vec![(format!("{TAG}u").as_str().into(), Value::Int(1))]);
        assert_eq!(to_record_json(&tag_like), None);
    }

    fn eval(source: &str, vars: serde_json::Value) -> Result<Value, String> {
        let (e, _) = Expr::compile(source)?;
        let root = root_context(&json!({"k": 3}))?;
        let mut scope = root.new_inner_scope();
        for (k, v) in vars.as_object().unwrap() {
            scope.add_variable_from_value(k.clone(), to_cel(v));
        }
        e.eval(&scope)
    }

    #[test]
    fn paths_are_found_and_locals_are_not_fields() {
        let (_, refs) = Expr::compile(
            "place.country_code == params.country && entities.hashtags.exists(h, h.text == 'x') && has(user.id)",
        )
        .unwrap();
        assert_eq!(
            refs.paths.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "entities.hashtags",
                "params.country",
                "place.country_code",
                "user.id"
            ]
        );
        assert!(!refs.names.contains("h"));
    }

    #[test]
    fn functions_work_on_records() {
        let v = eval(
            "mentions(html_decode(t), ['fire & rescue', '#fire'], tags) && lower('ABC') == 'abc' && coalesce(null, params.k) == 3",
            json!({"t": "Big Fire &amp; Rescue here", "tags": [{"text": "x"}]}),
        );
        assert_eq!(v, Ok(Value::Bool(true)));
        let v = eval("'a1b'.matches('^[a-z][0-9]')", json!({}));
        assert_eq!(v, Ok(Value::Bool(true)));
        let v = eval(
            "type(a) == string && type(n) != string && n != 'x' && n == null",
            json!({"a": "s", "n": null}),
        );
        assert_eq!(v, Ok(Value::Bool(true)));
        assert_eq!(
            eval("size(words('The fire, the FIRE!'))", json!({})),
            Ok(Value::Int(4))
        );
    }

    #[test]
    fn hostile_expressions_are_refused_when_they_compile() {
        let nested = "[1,2].map(x, [1,2].map(y, y))";
        assert!(Expr::compile(nested).unwrap_err().contains("nested"));
        let deep = format!("{}1{}", "(".repeat(500), ")".repeat(500));
        assert!(Expr::compile(&deep).unwrap_err().contains("nest"));
        let deep = format!("{}1{}", "[".repeat(16), "]".repeat(16));
        assert!(Expr::compile(&deep).is_ok());
        let chain = "1 + ".repeat(200) + "1";
        assert!(Expr::compile(&chain).unwrap_err().contains("deep"));
        let long = "1 + ".repeat(2000) + "1";
        assert!(Expr::compile(&long).unwrap_err().contains("at most"));
        assert!(Expr::compile("x.matches(y)")
            .unwrap_err()
            .contains("literal"));
        assert!(Expr::compile("'a'.matches('(a{1000}){1000}')")
            .unwrap_err()
            .contains("pattern"));
        assert!(Expr::compile("system('rm')")
            .unwrap_err()
            .contains("unknown function"));
        assert!(Expr::compile("1 +").is_err());
    }

    #[test]
    fn a_bad_value_is_an_error_not_a_panic() {
        assert!(eval("a.b == 1", json!({"a": {}})).is_err());
        assert!(eval("mentions(1, 2)", json!({})).is_err());
    }
}
