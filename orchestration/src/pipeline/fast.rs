//! A fast path for the CEL a pipeline is usually written in: field reads, comparisons,
//! `&&`, `||`, `!`, `?:`, `type(x) == string`, string concatenation, literals, and the
//! pipeline functions, evaluated over the line's own bytes (a field is decoded only when
//! read, a string borrowed when it has no escapes). `cel`'s interpreter builds maps and
//! boxes a value per variable per record: on fire-tweets that was 8 times the built-in
//! job's time.
//!
//! It is only a fast path: it answers when it is sure of CEL's answer, and says
//! [`Unsure`] otherwise (any error, mixed types, anything it does not compile). A record it
//! is unsure of is run again, whole, through `cel` ([`super::run`]), so a pipeline's result
//! is what `cel` says it is. `tests::the_fast_path_agrees_with_cel` checks the two on
//! random expressions and records.

use std::borrow::Cow;

use cel::common::ast::{EntryExpr, Expr as Node, IdedExpr, LiteralValue};

use super::expr;
use crate::jsonl::Raw;

/// The fast path cannot tell CEL's answer: ask `cel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsure;

/// A value: borrowed from the line where it can be.
#[derive(Clone, Debug, PartialEq)]
pub enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    List(Vec<V<'a>>),
    Map(Vec<(String, V<'a>)>),
    /// Unix seconds (a `timestamp` at whole seconds, in UTC).
    Ts(i64),
}

impl<'a> V<'a> {
    /// A captured JSON value, decoded.
    pub fn from_raw(raw: Raw<'a>) -> Result<V<'a>, Unsure> {
        match raw.0.first() {
            Some(b'"') => raw.as_str().map(V::Str).ok_or(Unsure),
            Some(b'n') => Ok(V::Null),
            Some(b't') => Ok(V::Bool(true)),
            Some(b'f') => Ok(V::Bool(false)),
            // Decoded straight into a value (strings without escapes borrowed), not through
            // `serde_json::Value`: a tweet's hashtags are a list of objects.
            _ => serde_json::from_slice(raw.0).map_err(|_| Unsure),
        }
    }

    pub fn from_json(v: &serde_json::Value) -> V<'static> {
        match v {
            serde_json::Value::Null => V::Null,
            serde_json::Value::Bool(b) => V::Bool(*b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => V::Int(i),
                (None, Some(u)) => V::UInt(u),
                _ => V::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => V::Str(Cow::Owned(s.clone())),
            serde_json::Value::Array(a) => V::List(a.iter().map(V::from_json).collect()),
            serde_json::Value::Object(o) => V::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), V::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// As a keyed result's key (what [`expr::key_text`] makes of the same CEL value).
    pub fn key_text(&self) -> Result<String, Unsure> {
        match self {
            V::Str(s) => Ok(s.to_string()),
            V::Int(i) => Ok(i.to_string()),
            V::UInt(u) => Ok(u.to_string()),
            V::Float(f) => Ok(serde_json::json!(f).to_string()),
            V::Bool(b) => Ok(b.to_string()),
            V::Ts(t) => chrono::DateTime::from_timestamp(*t, 0)
                .map(|t| t.fixed_offset().to_rfc3339())
                .ok_or(Unsure),
            _ => Err(Unsure),
        }
    }

    pub fn number(&self) -> Result<expr::Number, Unsure> {
        match self {
            V::Int(i) => Ok(expr::Number::Int(*i)),
            V::UInt(u) => Ok(i64::try_from(*u)
                .map(expr::Number::Int)
                .unwrap_or(expr::Number::Real(*u as f64))),
            V::Float(f) if f.is_finite() => Ok(expr::Number::Real(*f)),
            _ => Err(Unsure),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            V::Null => Kind::Null,
            V::Bool(_) => Kind::Bool,
            V::Int(_) => Kind::Int,
            V::UInt(_) => Kind::UInt,
            V::Float(_) => Kind::Double,
            V::Str(_) => Kind::String,
            V::List(_) => Kind::List,
            V::Map(_) => Kind::Map,
            V::Ts(_) => Kind::Timestamp,
        }
    }

    fn as_str(&self) -> Result<&str, Unsure> {
        match self {
            V::Str(s) => Ok(s),
            _ => Err(Unsure),
        }
    }
}

/// JSON into a value as [`V::from_json`] makes it of a `serde_json::Value` (an object's
/// keys sorted, the last of a repeated key kept), without building the `Value`.
impl<'de> serde::Deserialize<'de> for V<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = V<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<V<'de>, E> {
                Ok(V::Null)
            }
            fn visit_none<E>(self) -> Result<V<'de>, E> {
                Ok(V::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<V<'de>, E> {
                Ok(V::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<V<'de>, E> {
                Ok(V::Int(i))
            }
            fn visit_u64<E>(self, u: u64) -> Result<V<'de>, E> {
                Ok(i64::try_from(u).map_or(V::UInt(u), V::Int))
            }
            fn visit_f64<E>(self, f: f64) -> Result<V<'de>, E> {
                Ok(V::Float(f))
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<V<'de>, E> {
                Ok(V::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<V<'de>, E> {
                Ok(V::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<V<'de>, E> {
                Ok(V::Str(Cow::Owned(s)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<V<'de>, A::Error> {
                let mut items = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
                while let Some(v) = a.next_element()? {
                    items.push(v);
                }
                Ok(V::List(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<V<'de>, A::Error> {
                let mut entries: Vec<(String, V<'de>)> = Vec::new();
                while let Some((k, v)) = a.next_entry::<Cow<'de, str>, V<'de>>()? {
                    entries.push((k.into_owned(), v));
                }
                // As a `serde_json::Map`: sorted by key, a repeated key's last value.
                entries.reverse();
                entries.sort_by(|x, y| x.0.cmp(&y.0));
                entries.dedup_by(|x, y| x.0 == y.0);
                Ok(V::Map(entries))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Int,
    UInt,
    Double,
    String,
    List,
    Map,
    Timestamp,
}

fn kind_of_name(name: &str) -> Option<Kind> {
    Some(match name {
        "null_type" => Kind::Null,
        "bool" => Kind::Bool,
        "int" => Kind::Int,
        "uint" => Kind::UInt,
        "double" => Kind::Double,
        "string" => Kind::String,
        "list" => Kind::List,
        "map" => Kind::Map,
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug)]
pub enum Func {
    HtmlDecode,
    Lower,
    Upper,
    Trim,
    Date,
    Mentions,
    Coalesce,
    Size,
    Contains,
    StartsWith,
    EndsWith,
}

/// A compiled expression of the fast path.
#[derive(Clone, Debug)]
pub enum F {
    Lit(V<'static>),
    /// A name: a record field read whole, a computed or bound name, `record_time`.
    Slot(usize),
    /// A parameter (resolved when a partition starts).
    Param(usize),
    Select(Box<F>, String),
    Not(Box<F>),
    And(Box<F>, Box<F>),
    Or(Box<F>, Box<F>),
    Cmp(Cmp, Box<F>, Box<F>),
    Cond(Box<F>, Box<F>, Box<F>),
    TypeIs(Box<F>, Kind, bool),
    Add(Box<F>, Box<F>),
    In(Box<F>, Box<F>),
    Call(Func, Vec<F>),
    List(Vec<F>),
    Map(Vec<(String, F)>),
}

/// How names resolve when an expression compiles to the fast path.
pub trait Names {
    /// The slot of a dotted path (`place.country_code`, `status`, `record_time`), when the
    /// record or the steps provide it as one value.
    fn slot(&self, path: &str) -> Option<usize>;
    /// The index of a parameter.
    fn param(&self, name: &str) -> Option<usize>;
}

/// Compiles an expression to the fast path; `None` when it uses anything the fast path
/// does not do (the pipeline then runs on `cel` alone).
pub fn compile(e: &IdedExpr, names: &dyn Names) -> Option<F> {
    let b = |x: &IdedExpr| compile(x, names).map(Box::new);
    Some(match &e.expr {
        Node::Literal(l) => F::Lit(match l {
            LiteralValue::Null => V::Null,
            LiteralValue::Boolean(x) => V::Bool(*x.inner()),
            LiteralValue::Int(i) => V::Int(*i.inner()),
            LiteralValue::UInt(u) => V::UInt(*u.inner()),
            LiteralValue::Double(d) => V::Float(*d.inner()),
            LiteralValue::String(s) => V::Str(Cow::Owned(s.inner().to_owned())),
            _ => return None,
        }),
        Node::Ident(name) => F::Slot(names.slot(name)?),
        Node::Select(s) if !s.test => {
            let path = expr::select_path(e, false);
            if let Some(path) = &path {
                if let Some(rest) = path.strip_prefix("params.") {
                    if !rest.contains('.') {
                        return Some(F::Param(names.param(rest)?));
                    }
                }
                if let Some(slot) = names.slot(path) {
                    return Some(F::Slot(slot));
                }
            }
            F::Select(b(&s.operand)?, s.field.clone())
        }
        Node::Call(c) => {
            let args: Vec<&IdedExpr> = c.target.iter().map(|t| t.as_ref()).chain(&c.args).collect();
            let two = |f: &dyn Fn(Box<F>, Box<F>) -> F| -> Option<F> {
                match args[..] {
                    [x, y] => Some(f(b(x)?, b(y)?)),
                    _ => None,
                }
            };
            match c.func_name.as_str() {
                "_&&_" => two(&F::And)?,
                "_||_" => two(&F::Or)?,
                "!_" => match args[..] {
                    [x] => F::Not(b(x)?),
                    _ => return None,
                },
                "_?_:_" => match args[..] {
                    [x, y, z] => F::Cond(b(x)?, b(y)?, b(z)?),
                    _ => return None,
                },
                "_+_" => two(&F::Add)?,
                "@in" => two(&F::In)?,
                op @ ("_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_") => {
                    let cmp = match op {
                        "_==_" => Cmp::Eq,
                        "_!=_" => Cmp::Ne,
                        "_<_" => Cmp::Lt,
                        "_<=_" => Cmp::Le,
                        "_>_" => Cmp::Gt,
                        _ => Cmp::Ge,
                    };
                    // `type(x) == string`
                    if let ([x, y], Cmp::Eq | Cmp::Ne) = (&args[..], cmp) {
                        if let (Node::Call(t), Node::Ident(k)) = (&x.expr, &y.expr) {
                            if t.func_name == "type" && t.target.is_none() && t.args.len() == 1 {
                                let kind = kind_of_name(k)?;
                                return Some(F::TypeIs(
                                    b(&t.args[0])?,
                                    kind,
                                    matches!(cmp, Cmp::Ne),
                                ));
                            }
                        }
                    }
                    two(&|a, b| F::Cmp(cmp, a, b))?
                }
                name => {
                    let func = match name {
                        "html_decode" => Func::HtmlDecode,
                        "lower" => Func::Lower,
                        "upper" => Func::Upper,
                        "trim" => Func::Trim,
                        "date" => Func::Date,
                        "mentions" => Func::Mentions,
                        "coalesce" => Func::Coalesce,
                        "size" => Func::Size,
                        "contains" if c.target.is_some() => Func::Contains,
                        "startsWith" if c.target.is_some() => Func::StartsWith,
                        "endsWith" if c.target.is_some() => Func::EndsWith,
                        _ => return None,
                    };
                    let args: Option<Vec<F>> = args.iter().map(|a| compile(a, names)).collect();
                    F::Call(func, args?)
                }
            }
        }
        Node::List(l) if l.optional_indices.is_empty() => F::List(
            l.elements
                .iter()
                .map(|x| compile(x, names))
                .collect::<Option<_>>()?,
        ),
        Node::Map(m) => {
            let mut entries = Vec::with_capacity(m.entries.len());
            for entry in &m.entries {
                let EntryExpr::MapEntry(me) = &entry.expr else {
                    return None;
                };
                let Node::Literal(LiteralValue::String(k)) = &me.key.expr else {
                    return None;
                };
                if me.optional {
                    return None;
                }
                entries.push((k.inner().to_owned(), compile(&me.value, names)?));
            }
            F::Map(entries)
        }
        _ => return None,
    })
}

/// What an evaluation reads: the record's captured fields (slots `0..fields.len()`, read
/// from the line where they are, never copied), the values the record's steps bound (the
/// slots after them), and the params.
pub struct Env<'e, 'a> {
    pub fields: &'e [Option<Raw<'a>>],
    pub slots: &'e [V<'a>],
    pub params: &'e [V<'static>],
    /// Parameters that are keyword lists, compiled (for `mentions(text, params.x, ...)`).
    pub keywords: &'e [Option<KeywordSet>],
}

/// A slot's content: a captured field as the line has it (or absent), or a bound value.
enum Slot<'e, 'a> {
    Raw(Raw<'a>),
    Absent,
    Value(&'e V<'a>),
}

static NULL: V<'static> = V::Null;

impl<'e, 'a> Env<'e, 'a> {
    fn slot(&self, i: usize) -> Result<Slot<'e, 'a>, Unsure> {
        match self.fields.get(i) {
            Some(Some(raw)) => Ok(Slot::Raw(*raw)),
            Some(None) => Ok(Slot::Absent),
            None => self
                .slots
                .get(i - self.fields.len())
                .map(Slot::Value)
                .ok_or(Unsure),
        }
    }
}

/// A keyword list and its prefilter: a text none of whose words' needles occur cannot
/// match (as fire-tweets skips a line).
#[derive(Clone, Debug)]
pub struct KeywordSet {
    pub keywords: std::sync::Arc<crate::tweets::Keywords>,
    pub prefilter: Option<crate::tweets::Prefilter>,
}

impl KeywordSet {
    pub fn new(keywords: std::sync::Arc<crate::tweets::Keywords>) -> Self {
        let prefilter = keywords.prefilter();
        Self {
            keywords,
            prefilter,
        }
    }

    /// False when none of `texts` holds a needle of the prefilter (nothing can match).
    fn may_match<'t>(&self, mut texts: impl Iterator<Item = &'t [u8]>) -> bool {
        let Some(p) = &self.prefilter else {
            return true;
        };
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            texts.any(|t| p.may_match(t, &mut scratch))
        })
    }

    fn matches(&self, text: &str, tags: &[&str]) -> bool {
        let texts = std::iter::once(text).chain(tags.iter().copied());
        self.may_match(texts.map(str::as_bytes)) && self.keywords.matches(text, tags)
    }

    /// [`KeywordSet::matches`] with the hashtags as the line has them (a JSON list): they
    /// are decoded only when the prefilter finds a needle in the text or in their JSON.
    fn matches_raw_tags(&self, text: &str, tags: Raw<'_>) -> Result<bool, Unsure> {
        if !self.may_match([text.as_bytes(), tags.0].into_iter()) {
            return Ok(false);
        }
        let tags = V::from_raw(tags)?;
        Ok(self.keywords.matches(text, &text_items(&tags)?))
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A value the fast path compares without copying it: a literal's, a parameter's, a
/// slot's, or one it computed.
enum Operand<'r, 'a> {
    Static(&'r V<'static>),
    Slot(&'r V<'a>),
    Own(V<'a>),
}

impl<'a> Operand<'_, 'a> {
    fn get(&self) -> &V<'_> {
        match self {
            Operand::Static(v) => v,
            Operand::Slot(v) => v,
            Operand::Own(v) => v,
        }
    }
}

impl F {
    fn operand<'r, 'a>(&'r self, env: &Env<'r, 'a>) -> Result<Operand<'r, 'a>, Unsure> {
        Ok(match self {
            F::Lit(v) => Operand::Static(v),
            F::Param(i) => Operand::Static(env.params.get(*i).ok_or(Unsure)?),
            F::Slot(i) => match env.slot(*i)? {
                Slot::Raw(raw) => Operand::Own(V::from_raw(raw)?),
                Slot::Absent => Operand::Static(&NULL),
                Slot::Value(v) => Operand::Slot(v),
            },
            _ => Operand::Own(self.eval(env)?),
        })
    }

    /// A boolean (`None` for null) without building a value where it can.
    pub fn truth(&self, env: &Env<'_, '_>) -> Result<Option<bool>, Unsure> {
        Ok(match self {
            F::Lit(V::Bool(b)) => Some(*b),
            F::Slot(i) => match env.slot(*i)? {
                Slot::Value(V::Bool(b)) => Some(*b),
                Slot::Value(V::Null) | Slot::Absent => None,
                Slot::Raw(raw) => match raw.0 {
                    b"true" => Some(true),
                    b"false" => Some(false),
                    b"null" => None,
                    _ => return Err(Unsure),
                },
                Slot::Value(_) => return Err(Unsure),
            },
            F::Not(x) => Some(!x.truth(env)?.ok_or(Unsure)?),
            F::And(x, y) => {
                let l = x.truth(env);
                if l == Ok(Some(false)) {
                    return Ok(Some(false));
                }
                let r = y.truth(env)?.ok_or(Unsure)?;
                if !r {
                    return Ok(Some(false));
                }
                Some(l?.ok_or(Unsure)?)
            }
            F::Or(x, y) => {
                let l = x.truth(env);
                if l == Ok(Some(true)) {
                    return Ok(Some(true));
                }
                let r = y.truth(env)?.ok_or(Unsure)?;
                if r {
                    return Ok(Some(true));
                }
                Some(l?.ok_or(Unsure)?)
            }
            F::Cmp(cmp, x, y) => {
                let (a, b) = (x.operand(env)?, y.operand(env)?);
                Some(same_kind_cmp(*cmp, a.get(), b.get())?)
            }
            F::TypeIs(x, kind, negate) => Some((x.kind_of(env)? == *kind) != *negate),
            F::Cond(c, x, y) => {
                if c.truth(env)?.ok_or(Unsure)? {
                    x.truth(env)?
                } else {
                    y.truth(env)?
                }
            }
            _ => match self.eval(env)? {
                V::Bool(b) => Some(b),
                V::Null => None,
                _ => return Err(Unsure),
            },
        })
    }

    /// The kind of a value, reading a slot's raw JSON only as far as its first byte.
    fn kind_of<'a>(&self, env: &Env<'_, 'a>) -> Result<Kind, Unsure> {
        if let F::Slot(i) = self {
            match env.slot(*i)? {
                Slot::Raw(raw) => match raw.0.first() {
                    Some(b'"') => return Ok(Kind::String),
                    Some(b'n') => return Ok(Kind::Null),
                    Some(b't' | b'f') => return Ok(Kind::Bool),
                    Some(b'[') => return Ok(Kind::List),
                    Some(b'{') => return Ok(Kind::Map),
                    _ => {}
                },
                Slot::Absent => return Ok(Kind::Null),
                Slot::Value(v) => return Ok(v.kind()),
            }
        }
        Ok(self.eval(env)?.kind())
    }
}

fn same_kind_cmp(cmp: Cmp, a: &V<'_>, b: &V<'_>) -> Result<bool, Unsure> {
    use std::cmp::Ordering;
    let equality = matches!(cmp, Cmp::Eq | Cmp::Ne);
    let ord: Option<Ordering> = match (a, b) {
        (V::Null, V::Null) if equality => Some(Ordering::Equal),
        (V::Bool(x), V::Bool(y)) if equality => Some(x.cmp(y)),
        (V::Null, V::Null) | (V::Bool(_), V::Bool(_)) => return Err(Unsure),
        // CEL: null equals nothing else (and orders with nothing).
        (V::Null, _) | (_, V::Null) => {
            return match cmp {
                Cmp::Eq => Ok(false),
                Cmp::Ne => Ok(true),
                _ => Err(Unsure),
            }
        }
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::UInt(x), V::UInt(y)) => Some(x.cmp(y)),
        (V::Float(x), V::Float(y)) => x.partial_cmp(y),
        (V::Str(x), V::Str(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (V::Ts(x), V::Ts(y)) => Some(x.cmp(y)),
        _ => return Err(Unsure),
    };
    let Some(ord) = ord else { return Err(Unsure) };
    Ok(match cmp {
        Cmp::Eq => ord == Ordering::Equal,
        Cmp::Ne => ord != Ordering::Equal,
        Cmp::Lt => ord == Ordering::Less,
        Cmp::Le => ord != Ordering::Greater,
        Cmp::Gt => ord == Ordering::Greater,
        Cmp::Ge => ord != Ordering::Less,
    })
}

fn text_items<'x>(list: &'x V<'_>) -> Result<Vec<&'x str>, Unsure> {
    let V::List(items) = list else {
        return if *list == V::Null {
            Ok(Vec::new())
        } else {
            Err(Unsure)
        };
    };
    Ok(items
        .iter()
        .filter_map(|v| match v {
            V::Str(s) => Some(s.as_ref()),
            V::Map(m) => m
                .iter()
                .find(|(k, _)| k == "text")
                .and_then(|(_, v)| match v {
                    V::Str(s) => Some(s.as_ref()),
                    _ => None,
                }),
            _ => None,
        })
        .collect())
}

impl F {
    pub fn eval<'a>(&self, env: &Env<'_, 'a>) -> Result<V<'a>, Unsure> {
        Ok(match self {
            F::Lit(v) => v.clone(),
            F::Slot(i) => match env.slot(*i)? {
                Slot::Raw(raw) => V::from_raw(raw)?,
                Slot::Absent => V::Null,
                Slot::Value(v) => v.clone(),
            },
            F::Param(i) => env.params.get(*i).cloned().ok_or(Unsure)?,
            F::Select(x, field) => match x.eval(env)? {
                V::Map(m) => m
                    .into_iter()
                    .find(|(k, _)| k == field)
                    .map(|(_, v)| v)
                    .ok_or(Unsure)?,
                _ => return Err(Unsure),
            },
            F::Not(_) | F::And(..) | F::Or(..) | F::Cmp(..) | F::TypeIs(..) => {
                V::Bool(self.truth(env)?.ok_or(Unsure)?)
            }
            F::Cond(c, x, y) => {
                if c.truth(env)?.ok_or(Unsure)? {
                    x.eval(env)?
                } else {
                    y.eval(env)?
                }
            }
            F::Add(x, y) => match (x.eval(env)?, y.eval(env)?) {
                (V::Str(a), V::Str(b)) => V::Str(Cow::Owned(format!("{a}{b}"))),
                (V::Int(a), V::Int(b)) => V::Int(a.checked_add(b).ok_or(Unsure)?),
                _ => return Err(Unsure),
            },
            F::In(x, list) => {
                let x = x.eval(env)?;
                let V::List(items) = list.eval(env)? else {
                    return Err(Unsure);
                };
                let mut found = false;
                for item in &items {
                    if same_kind_cmp(Cmp::Eq, &x, item)? {
                        found = true;
                        break;
                    }
                }
                V::Bool(found)
            }
            F::List(items) => V::List(
                items
                    .iter()
                    .map(|x| x.eval(env))
                    .collect::<Result<_, _>>()?,
            ),
            F::Map(entries) => V::Map(
                entries
                    .iter()
                    .map(|(k, x)| Ok((k.clone(), x.eval(env)?)))
                    .collect::<Result<_, Unsure>>()?,
            ),
            F::Call(func, args) => call(*func, args, env)?,
        })
    }
}

fn call<'a>(func: Func, args: &[F], env: &Env<'_, 'a>) -> Result<V<'a>, Unsure> {
    // CEL evaluates every argument of a function (an error in any is the call's): so does
    // this, before looking at any (a parameter cannot fail, and is left for `mentions`).
    // `mentions`' hashtags as a field's JSON list are read, not decoded, here (a read
    // never fails): see `KeywordSet::matches_raw_tags`.
    let mut raw_tags = None;
    let mut values: Vec<Option<V<'a>>> = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        values.push(match a {
            F::Param(_) => None,
            F::Slot(s) if matches!(func, Func::Mentions) && i == 2 => match env.slot(*s)? {
                Slot::Raw(raw) if raw.0.first() == Some(&b'[') => {
                    raw_tags = Some(raw);
                    Some(V::Null)
                }
                _ => Some(a.eval(env)?),
            },
            _ => Some(a.eval(env)?),
        });
    }
    // Each argument is taken once, moved out (a list of hashtags is not copied).
    let mut arg = |i: usize| -> Result<V<'a>, Unsure> {
        match values.get_mut(i) {
            Some(Some(v)) => Ok(std::mem::replace(v, V::Null)),
            Some(None) => args.get(i).ok_or(Unsure)?.eval(env),
            None => Err(Unsure),
        }
    };
    let string = |v: V<'a>| -> Result<Cow<'a, str>, Unsure> {
        match v {
            V::Str(s) => Ok(s),
            _ => Err(Unsure),
        }
    };
    Ok(match func {
        Func::HtmlDecode => {
            let s = string(arg(0)?)?;
            match crate::tweets::decode_html(&s) {
                Cow::Borrowed(_) => V::Str(s),
                Cow::Owned(o) => V::Str(Cow::Owned(o)),
            }
        }
        Func::Lower => V::Str(Cow::Owned(string(arg(0)?)?.to_lowercase())),
        Func::Upper => V::Str(Cow::Owned(string(arg(0)?)?.to_uppercase())),
        Func::Trim => {
            let s = string(arg(0)?)?;
            V::Str(Cow::Owned(s.trim().to_owned()))
        }
        Func::Date => match arg(0)? {
            V::Ts(t) => V::Str(Cow::Owned(
                chrono::DateTime::from_timestamp(t, 0)
                    .ok_or(Unsure)?
                    .format("%Y-%m-%d")
                    .to_string(),
            )),
            _ => return Err(Unsure),
        },
        Func::Coalesce => {
            for i in 0..args.len() {
                let v = arg(i)?;
                if v != V::Null {
                    return Ok(v);
                }
            }
            V::Null
        }
        Func::Size => match (args.len(), arg(0)?) {
            (1, V::Str(s)) => V::Int(s.chars().count() as i64),
            (1, V::List(l)) => V::Int(l.len() as i64),
            _ => return Err(Unsure),
        },
        Func::Contains | Func::StartsWith | Func::EndsWith => {
            let (s, needle) = (arg(0)?, arg(1)?);
            let (s, needle) = (s.as_str()?, needle.as_str()?);
            V::Bool(match func {
                Func::Contains => s.contains(needle),
                Func::StartsWith => s.starts_with(needle),
                _ => s.ends_with(needle),
            })
        }
        Func::Mentions => {
            let text = arg(0)?;
            let text = match &text {
                V::Str(s) => s.as_ref(),
                V::Null => return Ok(V::Bool(false)),
                _ => return Err(Unsure),
            };
            if let (Some(raw), Some(F::Param(i))) = (raw_tags, args.get(1)) {
                if let Some(Some(set)) = env.keywords.get(*i) {
                    return Ok(V::Bool(set.matches_raw_tags(text, raw)?));
                }
            }
            let tags = match (args.len(), raw_tags) {
                (2, _) => V::Null,
                (3, Some(raw)) => V::from_raw(raw)?,
                (3, None) => arg(2)?,
                _ => return Err(Unsure),
            };
            let tags = text_items(&tags)?;
            match args.get(1) {
                Some(F::Param(i)) if env.keywords.get(*i).is_some_and(Option::is_some) => {
                    let set = env.keywords[*i].as_ref().ok_or(Unsure)?;
                    V::Bool(set.matches(text, &tags))
                }
                _ => {
                    let list = arg(1)?;
                    let V::List(words) = &list else {
                        return Err(Unsure);
                    };
                    let words: Vec<String> = words
                        .iter()
                        .map(|w| w.as_str().map(str::to_owned))
                        .collect::<Result<_, _>>()?;
                    let k = expr::keywords_of(&words).map_err(|_| Unsure)?;
                    V::Bool(k.matches(text, &tags))
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::expr::{root_context, to_cel, Expr};
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn raw_json_decodes_as_through_serde_json_value() {
        for text in [
            r#"[{"text": "Fire", "indices": [0, 5]}, {"text": "\u00e9t\u00e9"}]"#,
            r#"{"b": 1, "a": [true, null, -2, 18446744073709551615, 1.5, 1e3], "b": "last"}"#,
            r#"[[], {}, "", "a\"b"]"#,
            "9223372036854775807",
            "9223372036854775808",
            "-0.0",
        ] {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            let direct: V<'_> = serde_json::from_str(text).unwrap();
            assert_eq!(direct, V::from_json(&value), "{text}");
            assert_eq!(
                V::from_raw(Raw(text.as_bytes())),
                Ok(V::from_json(&value)),
                "{text}"
            );
        }
    }

    struct TestNames;

    impl Names for TestNames {
        fn slot(&self, path: &str) -> Option<usize> {
            ["a", "n", "s.t", "xs", "b"].iter().position(|p| *p == path)
        }
        fn param(&self, name: &str) -> Option<usize> {
            (name == "p").then_some(0)
        }
    }

    /// CEL-like source over the record's names `a` (a string, or null), `n` (an int),
    /// `s.t` (a string or null), `xs` (a list of strings), `b` (a bool) and `params.p`.
    fn source() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("a".to_owned()),
            Just("n".to_owned()),
            Just("s.t".to_owned()),
            Just("b".to_owned()),
            Just("params.p".to_owned()),
            Just("'fire'".to_owned()),
            Just("'Fire &amp; ice'".to_owned()),
            Just("1".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
        ];
        leaf.prop_recursive(3, 24, 3, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("({x} == {y})")),
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("({x} != {y})")),
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("({x} < {y})")),
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("({x} && {y})")),
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("({x} || {y})")),
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("({x} + {y})")),
                inner.clone().prop_map(|x| format!("!{x}")),
                (inner.clone(), inner.clone(), inner.clone())
                    .prop_map(|(c, x, y)| format!("({c} ? {x} : {y})")),
                inner.clone().prop_map(|x| format!("(type({x}) == string)")),
                inner.clone().prop_map(|x| format!("lower({x})")),
                inner.clone().prop_map(|x| format!("html_decode({x})")),
                inner.clone().prop_map(|x| format!("size({x})")),
                inner.clone().prop_map(|x| format!("({x} in xs)")),
                inner
                    .clone()
                    .prop_map(|x| format!("mentions({x}, ['fire', '#ice'], xs)")),
                (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("coalesce({x}, {y})")),
                inner.clone().prop_map(|x| format!("{x}.contains('i')")),
            ]
        })
    }

    fn record() -> impl Strategy<Value = serde_json::Value> {
        (
            prop_oneof![
                Just(json!(null)),
                "[a-zA-Z &;]{0,12}".prop_map(|s| json!(s))
            ],
            -3i64..3,
            prop_oneof![
                Just(json!(null)),
                "(fire|Fire|ice|x)".prop_map(|s| json!(s))
            ],
            prop::collection::vec("(fire|ice|x)", 0..3),
            any::<bool>(),
        )
            .prop_map(|(a, n, t, xs, b)| json!({"a": a, "n": n, "s": {"t": t}, "xs": xs, "b": b}))
    }

    fn as_v(v: &cel::Value) -> Option<V<'static>> {
        Some(match v {
            cel::Value::Null => V::Null,
            cel::Value::Bool(b) => V::Bool(*b),
            cel::Value::Int(i) => V::Int(*i),
            cel::Value::UInt(u) => V::UInt(*u),
            cel::Value::Float(f) => V::Float(*f),
            cel::Value::String(s) => V::Str(Cow::Owned(s.to_string())),
            cel::Value::List(l) => V::List(l.iter().map(as_v).collect::<Option<_>>()?),
            _ => return None,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Where the fast path answers, `cel` gives the same answer.
        #[test]
        fn the_fast_path_agrees_with_cel(src in source(), rec in record(), p in "(fire|x)") {
            let Ok((expr, _)) = Expr::compile(&src) else { return Ok(()) };
            let Some(f) = compile(expr.ast(), &TestNames) else { return Ok(()) };
            let slots: Vec<V<'static>> = ["a", "n", "s", "xs", "b"]
                .iter()
                .map(|k| {
                    let v = if *k == "s" { rec["s"]["t"].clone() } else { rec[*k].clone() };
                    V::from_json(&v)
                })
                .collect();
            let params = vec![V::Str(Cow::Owned(p.clone()))];
            let env = Env { fields: &[], slots: &slots, params: &params, keywords: &[] };
            let fast = f.eval(&env);
            let root = root_context(&json!({"p": p})).unwrap();
            let mut scope = root.new_inner_scope();
            for k in ["a", "n", "s", "xs", "b"] {
                scope.add_variable_from_value(k, to_cel(&rec[k]));
            }
            let slow = expr.eval(&scope);
            if let Ok(v) = fast {
                let slow = slow.map_err(|e| format!("cel failed where the fast path said {v:?}: {e}"));
                prop_assert_eq!(Some(v), as_v(&slow.unwrap()), "{}", src);
            }
        }
    }
}
