//! Keyed aggregation: results of any size.
//!
//! A keyed field of a partial maps keys to values (a count per word, a sum per city). The
//! transform before the reduce combines its partition's values per key (the map-side
//! combiner), cuts the map into `R` segments by a hash of the key, and writes them as one
//! object in the blob store: the **shuffle**. The reduce records a reference to it (a
//! [`Delta`]) in the same transaction as the partition's ledger marker, so each input
//! partition is folded in exactly once; small deltas of one batch are combined into one.
//! When every partition is in, reduce partition `r` reads segment `r` of every delta,
//! combines per key ([`merge_partition`]) and writes its keys sorted; the daemon then
//! merges the `R` sorted parts into the result objects (JSON lines, by key and by value),
//! and the job record keeps only a [`Summary`]: key count, total, top N, object keys.
//!
//! Object formats:
//! - shuffle segments: lines `"<key as a JSON string>"\t<value>\n`, unsorted;
//! - parts and results: JSON lines `{"key":"…","value":…}`, sorted.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io::Write as _;

use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ports::{BlobError, Blobs};

/// Entries kept in a summary's `top`.
pub const TOP_N: usize = 20;
/// The most reduce partitions a job gets.
pub const MAX_PARTITIONS: u32 = 256;
/// Keys one reduce partition is planned for.
pub const KEYS_PER_PARTITION: u64 = 250_000;
/// The field a partial carries its shuffle reference in.
pub const SHUFFLE_FIELD: &str = "$shuffle";

#[derive(Debug, thiserror::Error)]
pub enum KeyedError {
    #[error("keyed field `{field}`: {message}")]
    Malformed { field: String, message: String },
    #[error("shuffle object {0} is missing")]
    Missing(String),
    #[error("shuffle object {object} is corrupt: {message}")]
    Corrupt { object: String, message: String },
    #[error("cursor {0} is not the start of an entry")]
    BadCursor(u64),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

impl KeyedError {
    fn malformed(field: &str, message: impl Into<String>) -> Self {
        Self::Malformed {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// How a keyed field combines the values of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Adds (counts are sums of ones). Non-negative integers stay exact 64-bit integers.
    Sum,
    Min,
    Max,
}

/// A keyed field of a flow's partials: its name in the partial and how values combine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    pub op: Op,
    /// A `top-k` field: keys are `group␟key`, and the result also ranks the k largest
    /// keys of each group ([`Summary::groups`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_per_group: Option<u32>,
}

/// A flow's keyed fields, and how many keys to expect (to choose `R`).
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub fields: Vec<Field>,
    pub expected_keys: ExpectedKeys,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExpectedKeys {
    /// At most this many keys, whatever the input (cities, a fixed vocabulary).
    AtMost(u64),
    /// Words of natural text: estimated from the input's size with Heaps' law.
    TextVocabulary,
    /// The request chose R itself.
    Partitions(u32),
}

impl Spec {
    /// `R`: one reduce partition per [`KEYS_PER_PARTITION`] expected keys, 1 to
    /// [`MAX_PARTITIONS`].
    pub fn partitions(&self, input_bytes: Option<u64>) -> u32 {
        let keys = match self.expected_keys {
            ExpectedKeys::AtMost(n) => n,
            ExpectedKeys::TextVocabulary => heaps_vocabulary(input_bytes.unwrap_or(0)),
            ExpectedKeys::Partitions(r) => return r.clamp(1, MAX_PARTITIONS),
        };
        keys.div_ceil(KEYS_PER_PARTITION)
            .clamp(1, u64::from(MAX_PARTITIONS)) as u32
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Heaps' law, V = K·n^β, with English-like constants (K = 30, β = 0.55) over the words in
/// `bytes` of text (about 7 bytes a word): 1 GiB of prose has about a million distinct words.
pub fn heaps_vocabulary(bytes: u64) -> u64 {
    let words = bytes as f64 / 7.0;
    (30.0 * words.powf(0.55)).ceil() as u64
}

/// One key's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell {
    Int(u64),
    Real(f64),
}

impl Cell {
    pub fn from_json(v: &Value) -> Option<Cell> {
        match v {
            Value::Number(n) => match n.as_u64() {
                Some(u) => Some(Cell::Int(u)),
                None => n.as_f64().filter(|f| f.is_finite()).map(Cell::Real),
            },
            _ => None,
        }
    }

    pub fn to_json(self) -> Value {
        match self {
            Cell::Int(u) => json!(u),
            Cell::Real(f) => json!(f),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Cell::Int(u) => u as f64,
            Cell::Real(f) => f,
        }
    }

    fn write(self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = match self {
            Cell::Int(u) => write!(out, "{u}"),
            Cell::Real(f) => write!(out, "{}", json!(f)),
        };
    }

    fn parse(text: &str) -> Option<Cell> {
        if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
            return text.parse().ok().map(Cell::Int);
        }
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Cell::Real)
    }

    /// Descending by value, for `top` and the by-value order.
    fn cmp_value(self, other: Cell) -> Ordering {
        match (self, other) {
            (Cell::Int(a), Cell::Int(b)) => a.cmp(&b),
            (a, b) => a.as_f64().total_cmp(&b.as_f64()),
        }
    }
}

impl Op {
    pub fn combine(self, acc: &mut Cell, v: Cell) -> Result<(), String> {
        match self {
            Op::Sum => {
                *acc = match (*acc, v) {
                    (Cell::Int(a), Cell::Int(b)) => Cell::Int(
                        a.checked_add(b)
                            .ok_or_else(|| "a sum overflows a 64-bit count".to_owned())?,
                    ),
                    (a, b) => Cell::Real(a.as_f64() + b.as_f64()),
                }
            }
            Op::Min => {
                if v.cmp_value(*acc) == Ordering::Less {
                    *acc = v;
                }
            }
            Op::Max => {
                if v.cmp_value(*acc) == Ordering::Greater {
                    *acc = v;
                }
            }
        }
        Ok(())
    }
}

type Hasher = foldhash::fast::RandomState;

/// A partial's keyed fields as maps, by field name.
pub type KeyedFields = Vec<(String, KeyedMap)>;

/// A field's values by key, combined with its [`Op`].
#[derive(Clone, Debug)]
pub struct KeyedMap {
    pub op: Op,
    entries: HashMap<Box<str>, Cell, Hasher>,
}

impl KeyedMap {
    pub fn new(op: Op) -> Self {
        Self {
            op,
            entries: HashMap::default(),
        }
    }

    /// A map with room for `keys` keys before it grows.
    pub fn with_capacity(op: Op, keys: usize) -> Self {
        Self {
            op,
            entries: HashMap::with_capacity_and_hasher(keys, Hasher::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<Cell> {
        self.entries.get(key).copied()
    }

    /// Combines `value` into `key` (allocates only for a new key).
    pub fn add(&mut self, key: &str, value: Cell) -> Result<(), String> {
        match self.entries.get_mut(key) {
            Some(acc) => self.op.combine(acc, value),
            None => {
                self.entries.insert(key.into(), value);
                Ok(())
            }
        }
    }

    /// Adds one to `key`: a count.
    pub fn count(&mut self, key: &str) {
        match self.entries.get_mut(key) {
            Some(Cell::Int(n)) => *n = n.saturating_add(1),
            Some(acc) => *acc = Cell::Real(acc.as_f64() + 1.0),
            None => {
                self.entries.insert(key.into(), Cell::Int(1));
            }
        }
    }

    pub fn merge(&mut self, other: KeyedMap) -> Result<(), String> {
        if self.entries.is_empty() {
            self.entries = other.entries;
            return Ok(());
        }
        for (k, v) in other.entries {
            match self.entries.get_mut(&k) {
                Some(acc) => self.op.combine(acc, v)?,
                None => {
                    self.entries.insert(k, v);
                }
            }
        }
        Ok(())
    }

    /// A JSON object of numbers (what a transform's partial holds) as a map.
    pub fn from_json(field: &Field, value: &Value) -> Result<Self, KeyedError> {
        let object = value
            .as_object()
            .ok_or_else(|| KeyedError::malformed(&field.name, "is not an object"))?;
        let mut map = Self::new(field.op);
        map.entries.reserve(object.len());
        for (k, v) in object {
            let cell = Cell::from_json(v).ok_or_else(|| {
                KeyedError::malformed(&field.name, format!("the value of `{k}` is not a number"))
            })?;
            map.add(k, cell)
                .map_err(|e| KeyedError::malformed(&field.name, e))?;
        }
        Ok(map)
    }

    /// Entries sorted by key (byte order of their UTF-8).
    pub fn sorted_by_key(self) -> Vec<(Box<str>, Cell)> {
        let mut v: Vec<_> = self.entries.into_iter().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// As a JSON object (small maps: tests and composite results).
    pub fn to_json(&self) -> Value {
        let map: serde_json::Map<String, Value> = self
            .entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_json()))
            .collect();
        Value::Object(map)
    }
}

/// Reduce partition of a key: a stable hash (xxh3, the same on every machine and version),
/// mapped onto `0..r` by multiplication.
pub fn partition_of(key: &str, r: u32) -> u32 {
    let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    ((u128::from(h) * u128::from(r)) >> 64) as u32
}

/// Where a field's segments lie in a shuffle object: `offsets[r]..offsets[r + 1]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segments {
    pub field: String,
    pub object: String,
    pub offsets: Vec<u64>,
    /// `true`: the object is a sorted result (`{"key","value"}` lines, one segment).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jsonl: bool,
}

/// A reference to shuffled data, recorded once per commit beside its partitions' markers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub segments: Vec<Segments>,
}

impl Delta {
    pub fn bytes(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| {
                s.offsets.last().copied().unwrap_or(0) - s.offsets.first().copied().unwrap_or(0)
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn from_value(v: &Value) -> Result<Delta, KeyedError> {
        serde_json::from_value(v.clone())
            .map_err(|e| KeyedError::malformed(SHUFFLE_FIELD, e.to_string()))
    }
}

/// Writes `maps` (one per field) as one shuffle object of `r` segments per field; returns
/// its bytes and where each field's segments are. Deterministic for the same maps.
pub fn shuffle_bytes(maps: &[(String, KeyedMap)], r: u32, object: &str) -> (Vec<u8>, Delta) {
    let r = r.max(1);
    let mut out = Vec::new();
    let mut delta = Delta::default();
    for (field, map) in maps {
        let mut buckets: Vec<Vec<(&str, Cell)>> = vec![Vec::new(); r as usize];
        for (k, v) in &map.entries {
            buckets[partition_of(k, r) as usize].push((k, *v));
        }
        let mut offsets = Vec::with_capacity(r as usize + 1);
        offsets.push(out.len() as u64);
        for mut bucket in buckets {
            // Sorted so the bytes do not depend on the hash map's order.
            bucket.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (k, v) in bucket {
                write_json_str(&mut out, k);
                out.push(b'\t');
                v.write(&mut out);
                out.push(b'\n');
            }
            offsets.push(out.len() as u64);
        }
        delta.segments.push(Segments {
            field: field.clone(),
            object: object.to_owned(),
            offsets,
            jsonl: false,
        });
    }
    (out, delta)
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f)
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // serde_json escapes what JSON requires; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Parses a key written by [`write_json_str`] (or any JSON string).
fn parse_json_str(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(std::borrow::Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw)
        .ok()
        .map(std::borrow::Cow::Owned)
}

/// Adds the lines of a shuffle segment into `map`.
pub fn read_segment(bytes: &[u8], object: &str, map: &mut KeyedMap) -> Result<(), KeyedError> {
    let corrupt = |message: String| KeyedError::Corrupt {
        object: object.to_owned(),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))?;
    for line in text.lines() {
        let (key, value) = line
            .rsplit_once('\t')
            .ok_or_else(|| corrupt(format!("a line without a value: {line:.80}")))?;
        let key = parse_json_str(key).ok_or_else(|| corrupt(format!("a bad key: {key:.80}")))?;
        let value =
            Cell::parse(value).ok_or_else(|| corrupt(format!("a bad value: {value:.80}")))?;
        map.add(&key, value).map_err(corrupt)?;
    }
    Ok(())
}

/// One `{"key","value"}` line of a part or result object.
#[derive(Debug, Deserialize)]
struct Entry {
    key: String,
    value: Value,
}

fn parse_entry(line: &str, object: &str) -> Result<(String, Cell), KeyedError> {
    let corrupt = |message: String| KeyedError::Corrupt {
        object: object.to_owned(),
        message,
    };
    let e: Entry = serde_json::from_str(line).map_err(|e| corrupt(e.to_string()))?;
    let cell = Cell::from_json(&e.value).ok_or_else(|| corrupt(format!("value {}", e.value)))?;
    Ok((e.key, cell))
}

/// Adds the entries of a JSON-lines result object into `map`.
pub fn read_jsonl(bytes: &[u8], object: &str, map: &mut KeyedMap) -> Result<(), KeyedError> {
    let text = std::str::from_utf8(bytes).map_err(|e| KeyedError::Corrupt {
        object: object.to_owned(),
        message: e.to_string(),
    })?;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (k, v) = parse_entry(line, object)?;
        map.add(&k, v).map_err(|message| KeyedError::Corrupt {
            object: object.to_owned(),
            message,
        })?;
    }
    Ok(())
}

fn write_entry(out: &mut Vec<u8>, key: &str, value: Cell) {
    out.extend_from_slice(b"{\"key\":");
    write_json_str(out, key);
    out.extend_from_slice(b",\"value\":");
    value.write(out);
    out.extend_from_slice(b"}\n");
}

/// What one field's part (or whole result) holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub keys: u64,
    /// The sum of the values (for `sum` fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Value>,
    /// The largest values, descending (ties by key).
    pub top: Vec<(String, Value)>,
    /// The object sorted by key, and the one sorted by value (descending).
    pub by_key: String,
    pub by_value: String,
    pub bytes: u64,
    /// A `top-k` field's ranking: the object of each group's k largest keys, one line a
    /// group (`{"group": g, "top": [[key, value], ...]}`, groups sorted), and how many
    /// groups it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_count: Option<u64>,
}

impl Summary {
    /// The summary as a job result shows it.
    pub fn to_result(&self) -> Value {
        let mut v = json!({
            "keyed": true,
            "keys": self.keys,
            "top": self.top.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
            "by_key": self.by_key,
            "by_value": self.by_value,
            "bytes": self.bytes,
        });
        if let Some(total) = &self.total {
            v["total"] = total.clone();
        }
        if let Some(groups) = &self.groups {
            v["groups"] = json!(groups);
            v["group_count"] = json!(self.group_count.unwrap_or(0));
        }
        v
    }

    pub fn from_result(v: &Value) -> Option<Summary> {
        if v.get("keyed") != Some(&Value::Bool(true)) {
            return None;
        }
        let top = v
            .get("top")?
            .as_array()?
            .iter()
            .filter_map(|e| Some((e.get("key")?.as_str()?.to_owned(), e.get("value")?.clone())))
            .collect();
        Some(Summary {
            keys: v.get("keys")?.as_u64()?,
            total: v.get("total").cloned(),
            top,
            by_key: v.get("by_key")?.as_str()?.to_owned(),
            by_value: v.get("by_value")?.as_str()?.to_owned(),
            bytes: v.get("bytes").and_then(Value::as_u64).unwrap_or(0),
            groups: v.get("groups").and_then(Value::as_str).map(str::to_owned),
            group_count: v.get("group_count").and_then(Value::as_u64),
        })
    }
}

fn by_value_order(a: &(Box<str>, Cell), b: &(Box<str>, Cell)) -> Ordering {
    b.1.cmp_value(a.1).then_with(|| a.0.cmp(&b.0))
}

/// A map sorted and written out: the bytes of its by-key and by-value objects, and its
/// summary (without the objects' keys). CPU work only: callers run it off the async threads.
pub fn sorted_bytes(map: KeyedMap) -> (Vec<u8>, Vec<u8>, Summary) {
    let op = map.op;
    let mut entries = map.sorted_by_key();
    let total = (op == Op::Sum).then(|| {
        let mut acc = Cell::Int(0);
        for (_, v) in &entries {
            if op.combine(&mut acc, *v).is_err() {
                acc = Cell::Real(acc.as_f64() + v.as_f64());
            }
        }
        acc.to_json()
    });
    let mut by_key = Vec::with_capacity(entries.len() * 24);
    for (k, v) in &entries {
        write_entry(&mut by_key, k, *v);
    }
    entries.sort_unstable_by(by_value_order);
    let mut by_value = Vec::with_capacity(by_key.len());
    for (k, v) in &entries {
        write_entry(&mut by_value, k, *v);
    }
    let summary = Summary {
        keys: entries.len() as u64,
        total,
        top: entries
            .iter()
            .take(TOP_N)
            .map(|(k, v)| (shown_key(k), v.to_json()))
            .collect(),
        by_key: String::new(),
        by_value: String::new(),
        bytes: by_key.len() as u64,
        ..Summary::default()
    };
    (by_key, by_value, summary)
}

/// Keys longer than this are cut in a summary's `top` (the objects keep them whole), so a
/// summary stays small whatever the keys.
const SHOWN_KEY_BYTES: usize = 256;

fn shown_key(key: &str) -> String {
    if key.len() <= SHOWN_KEY_BYTES {
        return key.to_owned();
    }
    let mut end = SHOWN_KEY_BYTES;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

/// Sorts `map` and writes it as `{by_key}` and `{by_value}` objects; returns their summary.
pub async fn write_sorted(
    blobs: &dyn Blobs,
    map: KeyedMap,
    by_key: &str,
    by_value: &str,
) -> Result<Summary, KeyedError> {
    let (key_bytes, value_bytes, summary) = sorted_bytes(map);
    blobs.put(by_key, key_bytes).await?;
    blobs.put(by_value, value_bytes).await?;
    Ok(Summary {
        by_key: by_key.to_owned(),
        by_value: by_value.to_owned(),
        ..summary
    })
}

/// Segment `r` of one field, as read from a delta.
pub struct Fetched {
    object: String,
    bytes: Vec<u8>,
    jsonl: bool,
}

/// Reads segment `r` of `field` from every delta.
pub async fn fetch_segments(
    blobs: &dyn Blobs,
    field: &Field,
    deltas: &[Delta],
    r: u32,
) -> Result<Vec<Fetched>, KeyedError> {
    // What to read: (object, byte range or the whole object).
    let mut reads: Vec<(&str, Option<(u64, u64)>)> = Vec::new();
    for delta in deltas {
        for seg in delta.segments.iter().filter(|s| s.field == field.name) {
            if seg.jsonl {
                // A whole sorted result (a composite's part): every key is in partition 0.
                if r == 0 {
                    reads.push((&seg.object, None));
                }
                continue;
            }
            let (Some(&start), Some(&end)) =
                (seg.offsets.get(r as usize), seg.offsets.get(r as usize + 1))
            else {
                return Err(KeyedError::Corrupt {
                    object: seg.object.clone(),
                    message: format!("no segment {r} in {} offsets", seg.offsets.len()),
                });
            };
            if start != end {
                reads.push((&seg.object, Some((start, end))));
            }
        }
    }
    // Many in flight (a merge task reads one segment of every delta: thousands at 10^9
    // messages), in order, so that the merge is deterministic.
    // The futures made first and then polled as a stream (not made inside a closure
    // passed to `map`), so the compiler sees one lifetime for their borrows and the whole
    // stays `Send`.
    let fetches: Vec<_> = reads
        .into_iter()
        .map(|(object, range)| fetch_one(blobs, object, range, r))
        .collect();
    futures::stream::iter(fetches)
        .buffered(FETCHES_IN_FLIGHT)
        .try_collect()
        .await
}

async fn fetch_one(
    blobs: &dyn Blobs,
    object: &str,
    range: Option<(u64, u64)>,
    r: u32,
) -> Result<Fetched, KeyedError> {
    let bytes = match range {
        None => blobs.get(object).await?,
        Some((start, end)) => blobs.get_range(object, start, end).await?,
    }
    .ok_or_else(|| KeyedError::Missing(object.to_owned()))?;
    if let Some((start, end)) = range {
        if bytes.len() as u64 != end - start {
            return Err(KeyedError::Corrupt {
                object: object.to_owned(),
                message: format!("segment {r} is cut short"),
            });
        }
    }
    Ok(Fetched {
        object: object.to_owned(),
        bytes,
        jsonl: range.is_none(),
    })
}

/// Segment reads a merge task keeps in flight (as `sluice simulate` assumes of an
/// invocation's S3 requests).
const FETCHES_IN_FLIGHT: usize = 16;

/// Combines fetched segments per key.
pub fn parse_fetched(field: &Field, fetched: &[Fetched]) -> Result<KeyedMap, KeyedError> {
    let mut map = KeyedMap::new(field.op);
    for f in fetched {
        if f.jsonl {
            read_jsonl(&f.bytes, &f.object, &mut map)?;
        } else {
            read_segment(&f.bytes, &f.object, &mut map)?;
        }
    }
    Ok(map)
}

/// Reduce partition `r` of one field: segment `r` of every delta, combined per key.
pub async fn merge_partition(
    blobs: &dyn Blobs,
    field: &Field,
    deltas: &[Delta],
    r: u32,
) -> Result<KeyedMap, KeyedError> {
    parse_fetched(field, &fetch_segments(blobs, field, deltas, r).await?)
}

/// Combines the deltas of many small partials into one delta of `r` segments.
pub async fn combine(
    blobs: &dyn Blobs,
    spec: &Spec,
    deltas: &[Delta],
    r: u32,
    object: &str,
) -> Result<Delta, KeyedError> {
    let mut maps: Vec<(String, KeyedMap)> = Vec::new();
    for field in &spec.fields {
        let mut map = KeyedMap::new(field.op);
        for p in 0..r {
            map.merge(merge_partition(blobs, field, deltas, p).await?)
                .map_err(|e| KeyedError::malformed(&field.name, e))?;
        }
        if !map.is_empty() {
            maps.push((field.name.clone(), map));
        }
    }
    if maps.is_empty() {
        return Ok(Delta::default());
    }
    let (bytes, delta) = shuffle_bytes(&maps, r, object);
    blobs.put(object, bytes).await?;
    Ok(delta)
}

/// Takes a partial's keyed fields out of it, as maps (the fields it lacks are empty).
pub fn take_fields(
    spec: &Spec,
    partial: &mut Value,
) -> Result<Vec<(String, KeyedMap)>, KeyedError> {
    let mut out = Vec::with_capacity(spec.fields.len());
    for field in &spec.fields {
        let map = match partial.as_object_mut().and_then(|o| o.remove(&field.name)) {
            Some(v) => KeyedMap::from_json(field, &v)?,
            None => KeyedMap::new(field.op),
        };
        out.push((field.name.clone(), map));
    }
    Ok(out)
}

/// Reduce partition `r` of every field: merged from the deltas, sorted and written as the
/// partition's part objects. Deterministic: a repeated task writes the same bytes. The
/// parsing and sorting run on the blocking pool, so merge tasks of one batch run in
/// parallel.
pub async fn merge_reduce_partition(
    blobs: &dyn Blobs,
    spec: &Spec,
    deltas: &[Delta],
    job: &str,
    attempt: u32,
    r: u32,
) -> Result<BTreeMap<String, Summary>, KeyedError> {
    let mut out = BTreeMap::new();
    for field in &spec.fields {
        let fetched = fetch_segments(blobs, field, deltas, r).await?;
        let f = field.clone();
        let (key_bytes, value_bytes, summary) =
            crate::cpu::run(move || parse_fetched(&f, &fetched).map(sorted_bytes))
                .await
                .map_err(|e| {
                    KeyedError::malformed(&field.name, format!("the merge panicked: {e}"))
                })??;
        let (by_key, by_value) = part_objects(job, attempt, &field.name, r);
        blobs.put(&by_key, key_bytes).await?;
        blobs.put(&by_value, value_bytes).await?;
        out.insert(
            field.name.clone(),
            Summary {
                by_key,
                by_value,
                ..summary
            },
        );
    }
    Ok(out)
}

/// One reader of a sorted object for the k-way merge.
struct Cursor {
    lines: std::vec::IntoIter<(String, Cell)>,
}

struct Head {
    key: String,
    value: Cell,
    source: usize,
    by_value: bool,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    /// Reversed: `BinaryHeap` pops the greatest, the merge wants the first in order.
    fn cmp(&self, other: &Self) -> Ordering {
        let order = if self.by_value {
            other
                .value
                .cmp_value(self.value)
                .then_with(|| self.key.cmp(&other.key))
        } else {
            self.key.cmp(&other.key)
        };
        order.then(self.source.cmp(&other.source)).reverse()
    }
}

/// Merges sorted objects (disjoint key sets: the parts of one field) into one.
async fn merge_sorted(
    blobs: &dyn Blobs,
    parts: &[String],
    by_value: bool,
    into: &str,
) -> Result<u64, KeyedError> {
    let mut objects = Vec::with_capacity(parts.len());
    for key in parts {
        let bytes = blobs
            .get(key)
            .await?
            .ok_or_else(|| KeyedError::Missing(key.clone()))?;
        objects.push((key.clone(), bytes));
    }
    let out = crate::cpu::run(move || merge_objects(objects, by_value))
        .await
        .map_err(|e| KeyedError::Corrupt {
            object: into.to_owned(),
            message: format!("the merge panicked: {e}"),
        })??;
    let bytes = out.len() as u64;
    blobs.put(into, out).await?;
    Ok(bytes)
}

/// The k-way merge of sorted parts (`(name, bytes)`) into one sorted object.
fn merge_objects(objects: Vec<(String, Vec<u8>)>, by_value: bool) -> Result<Vec<u8>, KeyedError> {
    let mut cursors = Vec::with_capacity(objects.len());
    for (key, bytes) in objects {
        let text = String::from_utf8(bytes).map_err(|e| KeyedError::Corrupt {
            object: key.clone(),
            message: e.to_string(),
        })?;
        let lines = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| parse_entry(l, &key))
            .collect::<Result<Vec<_>, _>>()?;
        cursors.push(Cursor {
            lines: lines.into_iter(),
        });
    }
    let mut heap = BinaryHeap::new();
    for (source, c) in cursors.iter_mut().enumerate() {
        if let Some((key, value)) = c.lines.next() {
            heap.push(Head {
                key,
                value,
                source,
                by_value,
            });
        }
    }
    let mut out = Vec::new();
    while let Some(head) = heap.pop() {
        write_entry(&mut out, &head.key, head.value);
        if let Some((key, value)) = cursors[head.source].lines.next() {
            heap.push(Head {
                key,
                value,
                source: head.source,
                by_value,
            });
        }
    }
    Ok(out)
}

/// Every keyed field's result from the merged parts of all R reduce partitions (`merged`:
/// by partition, each field's part).
pub async fn finish_fields(
    blobs: &dyn Blobs,
    spec: &Spec,
    merged: &BTreeMap<u32, BTreeMap<String, Summary>>,
    job: &str,
) -> Result<BTreeMap<String, Summary>, KeyedError> {
    let mut out = BTreeMap::new();
    for field in &spec.fields {
        let parts: Vec<Summary> = merged
            .values()
            .filter_map(|fields| fields.get(&field.name).cloned())
            .collect();
        let (by_key, by_value) = result_objects(job, &field.name);
        let summary = finish_field(blobs, field, &parts, &by_key, &by_value).await?;
        out.insert(field.name.clone(), summary);
    }
    Ok(out)
}

/// The result of a field from its reduce partitions' parts: the parts merged into one
/// object per order, and the summary (keys and totals added, the tops merged).
pub async fn finish_field(
    blobs: &dyn Blobs,
    field: &Field,
    parts: &[Summary],
    by_key: &str,
    by_value: &str,
) -> Result<Summary, KeyedError> {
    let keys: Vec<String> = parts.iter().map(|p| p.by_key.clone()).collect();
    let values: Vec<String> = parts.iter().map(|p| p.by_value.clone()).collect();
    // Both orders at once: each is a core's work.
    let (bytes, _) = futures::try_join!(
        merge_sorted(blobs, &keys, false, by_key),
        merge_sorted(blobs, &values, true, by_value)
    )?;
    let (groups, group_count) = match field.top_per_group {
        Some(k) => {
            let object = format!("{}.groups.jsonl", by_key.trim_end_matches(".by-key.jsonl"));
            let sorted = blobs
                .get(by_key)
                .await?
                .ok_or_else(|| KeyedError::Missing(by_key.to_owned()))?;
            let name = by_key.to_owned();
            let (out, n) = crate::cpu::run(move || rank_groups(&sorted, &name, k as usize))
                .await
                .map_err(|e| {
                    KeyedError::malformed(&field.name, format!("ranking panicked: {e}"))
                })??;
            blobs.put(&object, out).await?;
            (Some(object), Some(n))
        }
        None => (None, None),
    };
    let mut total: Option<Cell> = None;
    let mut top: Vec<(Box<str>, Cell)> = Vec::new();
    for p in parts {
        if let Some(t) = p.total.as_ref().and_then(Cell::from_json) {
            match &mut total {
                Some(acc) => {
                    if field.op.combine(acc, t).is_err() {
                        *acc = Cell::Real(acc.as_f64() + t.as_f64());
                    }
                }
                None => total = Some(t),
            }
        }
        top.extend(
            p.top
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().into(), Cell::from_json(v)?))),
        );
    }
    top.sort_by(by_value_order);
    top.truncate(TOP_N);
    Ok(Summary {
        keys: parts.iter().map(|p| p.keys).sum(),
        total: if field.op == Op::Sum {
            Some(total.unwrap_or(Cell::Int(0)).to_json())
        } else {
            None
        },
        top: top
            .into_iter()
            .map(|(k, v)| (k.into_string(), v.to_json()))
            .collect(),
        by_key: by_key.to_owned(),
        by_value: by_value.to_owned(),
        bytes,
        groups,
        group_count,
    })
}

/// The separator of a `top-k` field's group and key.
pub const GROUP_SEPARATOR: char = '\u{1f}';

/// Each group's k largest keys (ties by key), from a by-key object whose keys are
/// `group␟key` (so one group's keys are adjacent): one JSON line a group, in group order,
/// and how many groups. Memory is one group's keys at a time.
pub fn rank_groups(sorted: &[u8], object: &str, k: usize) -> Result<(Vec<u8>, u64), KeyedError> {
    let text = std::str::from_utf8(sorted).map_err(|e| KeyedError::Corrupt {
        object: object.to_owned(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut groups = 0u64;
    let mut current: Option<String> = None;
    let mut keys: Vec<(Box<str>, Cell)> = Vec::new();
    let flush = |group: &str, keys: &mut Vec<(Box<str>, Cell)>, out: &mut Vec<u8>| {
        keys.sort_by(by_value_order);
        keys.truncate(k);
        let top: Vec<Value> = keys.iter().map(|(k, v)| json!([k, v.to_json()])).collect();
        out.extend_from_slice(json!({"group": group, "top": top}).to_string().as_bytes());
        out.push(b'\n');
        keys.clear();
    };
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (key, value) = parse_entry(line, object)?;
        let (group, key) = key
            .split_once(GROUP_SEPARATOR)
            .unwrap_or(("", key.as_str()));
        if current.as_deref() != Some(group) {
            if let Some(g) = current.take() {
                flush(&g, &mut keys, &mut out);
            }
            current = Some(group.to_owned());
            groups += 1;
        }
        keys.push((key.into(), value));
    }
    if let Some(g) = current {
        flush(&g, &mut keys, &mut out);
    }
    Ok((out, groups))
}

/// A page of a result object: up to `limit` entries from byte offset `cursor`, and the
/// offset of the next page (`None` at the end).
pub async fn page(
    blobs: &dyn Blobs,
    object: &str,
    cursor: u64,
    limit: usize,
) -> Result<(Vec<Value>, Option<u64>), KeyedError> {
    if cursor > 0 {
        let before = blobs
            .get_range(object, cursor - 1, cursor)
            .await?
            .ok_or_else(|| KeyedError::Missing(object.to_owned()))?;
        if before != b"\n" {
            return Err(KeyedError::BadCursor(cursor));
        }
    }
    // Entries are short; read in growing ranges until `limit` whole lines are in.
    let mut want = (limit as u64 + 1) * 64;
    loop {
        let bytes = blobs
            .get_range(object, cursor, cursor + want)
            .await?
            .ok_or_else(|| KeyedError::Missing(object.to_owned()))?;
        let got = bytes.len() as u64;
        let mut entries = Vec::new();
        let mut used = 0usize;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if entries.len() == limit || !line.ends_with(b"\n") {
                break;
            }
            let text = std::str::from_utf8(line).map_err(|e| KeyedError::Corrupt {
                object: object.to_owned(),
                message: e.to_string(),
            })?;
            let (key, value) = parse_entry(text.trim_end(), object)?;
            entries.push(json!({"key": key, "value": value.to_json()}));
            used += line.len();
        }
        let at_end = got < want;
        if entries.len() == limit || at_end {
            let next = cursor + used as u64;
            let more = !(at_end && used as u64 == got);
            return Ok((entries, more.then_some(next)));
        }
        want *= 4;
    }
}

/// The whole of a small keyed field, as a JSON object: for tests and composite folds.
pub async fn read_all(
    blobs: &dyn Blobs,
    summary: &Summary,
) -> Result<BTreeMap<String, Value>, KeyedError> {
    let bytes = blobs
        .get(&summary.by_key)
        .await?
        .ok_or_else(|| KeyedError::Missing(summary.by_key.clone()))?;
    let text = String::from_utf8(bytes).map_err(|e| KeyedError::Corrupt {
        object: summary.by_key.clone(),
        message: e.to_string(),
    })?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| parse_entry(l, &summary.by_key).map(|(k, v)| (k, v.to_json())))
        .collect()
}

/// A `top-k` field's ranking, whole: `{group: [[key, value], ...]}`.
pub async fn read_groups(blobs: &dyn Blobs, object: &str) -> Result<Value, KeyedError> {
    let bytes = blobs
        .get(object)
        .await?
        .ok_or_else(|| KeyedError::Missing(object.to_owned()))?;
    let corrupt = |message: String| KeyedError::Corrupt {
        object: object.to_owned(),
        message,
    };
    let text = String::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut out = serde_json::Map::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| corrupt(e.to_string()))?;
        let group = v["group"].as_str().unwrap_or_default().to_owned();
        out.insert(group, v["top"].clone());
    }
    Ok(Value::Object(out))
}

/// A result with every keyed summary replaced by the whole map it summarizes.
pub async fn expand(blobs: &dyn Blobs, result: &Value) -> Result<Value, KeyedError> {
    let mut out = result.clone();
    if let Some(object) = out.as_object_mut() {
        for (_, v) in object.iter_mut() {
            if let Some(summary) = Summary::from_result(v) {
                *v = match &summary.groups {
                    Some(object) => read_groups(blobs, object).await?,
                    None => json!(read_all(blobs, &summary).await?),
                };
            }
        }
    }
    Ok(out)
}

/// Blob keys: shuffle objects live under the job attempt's prefix (deleted at teardown);
/// results under the job's.
pub fn shuffle_prefix(job: &str, attempt: u32) -> String {
    format!("shuffle/{job}/{attempt}/")
}

pub fn map_object(job: &str, attempt: u32, partition: u64) -> String {
    format!("{}p/{partition:020}", shuffle_prefix(job, attempt))
}

pub fn part_objects(job: &str, attempt: u32, field: &str, r: u32) -> (String, String) {
    let base = format!("{}m/{field}/{r:04}", shuffle_prefix(job, attempt));
    (
        format!("{base}.by-key.jsonl"),
        format!("{base}.by-value.jsonl"),
    )
}

pub fn result_objects(job: &str, field: &str) -> (String, String) {
    (
        format!("results/{job}/{field}.by-key.jsonl"),
        format!("results/{job}/{field}.by-value.jsonl"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::FileBlobs;

    fn field() -> Field {
        Field {
            name: "w".into(),
            op: Op::Sum,
            top_per_group: None,
        }
    }

    fn map(pairs: &[(&str, u64)]) -> KeyedMap {
        let mut m = KeyedMap::new(Op::Sum);
        for (k, v) in pairs {
            m.add(k, Cell::Int(*v)).unwrap();
        }
        m
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // The same key lands in the same partition on every machine, forever.
        assert_eq!(partition_of("the", 1), 0);
        let r = 16;
        let mut counts = vec![0u32; r as usize];
        for i in 0..16_000 {
            counts[partition_of(&format!("w{i}"), r) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(partition_of("the", r), partition_of("the", r));
    }

    #[test]
    fn r_follows_the_expected_keys() {
        let spec = |e| Spec {
            fields: vec![field()],
            expected_keys: e,
        };
        assert_eq!(spec(ExpectedKeys::AtMost(10)).partitions(None), 1);
        assert_eq!(spec(ExpectedKeys::AtMost(10_000_000)).partitions(None), 40);
        assert_eq!(spec(ExpectedKeys::AtMost(u64::MAX)).partitions(None), 256);
        let gib = spec(ExpectedKeys::TextVocabulary).partitions(Some(1 << 30));
        assert!((2..=8).contains(&gib), "{gib}");
        assert_eq!(spec(ExpectedKeys::TextVocabulary).partitions(Some(1000)), 1);
        assert_eq!(spec(ExpectedKeys::Partitions(7)).partitions(None), 7);
    }

    #[test]
    fn ops_combine() {
        let mut c = Cell::Int(2);
        Op::Sum.combine(&mut c, Cell::Int(3)).unwrap();
        assert_eq!(c, Cell::Int(5));
        assert!(Op::Sum.combine(&mut c, Cell::Int(u64::MAX)).is_err());
        Op::Sum.combine(&mut c, Cell::Real(0.5)).unwrap();
        assert_eq!(c, Cell::Real(5.5));
        let mut m = Cell::Int(4);
        Op::Min.combine(&mut m, Cell::Real(-1.5)).unwrap();
        assert_eq!(m, Cell::Real(-1.5));
        Op::Max.combine(&mut m, Cell::Int(7)).unwrap();
        assert_eq!(m, Cell::Int(7));
    }

    #[tokio::test]
    async fn a_shuffle_round_trips_through_every_partition() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FileBlobs::open(dir.path().to_owned()).unwrap();
        let odd = "tab\there \"quoted\" back\\slash ünï";
        let a = map(&[("the", 3), ("fox", 1), (odd, 2)]);
        let b = map(&[("the", 1), ("dog", 4)]);
        let mut deltas = Vec::new();
        for (i, m) in [a, b].into_iter().enumerate() {
            let object = format!("s/{i}");
            let (bytes, delta) = shuffle_bytes(&[("w".into(), m)], 4, &object);
            blobs.put(&object, bytes).await.unwrap();
            deltas.push(delta);
        }
        let mut all = KeyedMap::new(Op::Sum);
        let mut parts = Vec::new();
        for r in 0..4 {
            let part = merge_partition(&blobs, &field(), &deltas, r).await.unwrap();
            for (k, _) in part.entries.iter() {
                assert_eq!(partition_of(k, 4), r);
            }
            all.merge(part.clone()).unwrap();
            let (k, v) = (format!("p/{r}.k"), format!("p/{r}.v"));
            parts.push(write_sorted(&blobs, part, &k, &v).await.unwrap());
        }
        assert_eq!(all.get("the"), Some(Cell::Int(4)));
        assert_eq!(all.get(odd), Some(Cell::Int(2)));
        assert_eq!(all.len(), 4);
        let summary = finish_field(&blobs, &field(), &parts, "res.k", "res.v")
            .await
            .unwrap();
        assert_eq!(summary.keys, 4);
        assert_eq!(summary.total, Some(json!(11)));
        // Descending by value, ties by key.
        assert_eq!(summary.top[0], ("dog".to_owned(), json!(4)));
        assert_eq!(summary.top[1], ("the".to_owned(), json!(4)));
        let whole = read_all(&blobs, &summary).await.unwrap();
        let keys: Vec<&String> = whole.keys().collect();
        assert_eq!(
            keys,
            ["dog", "fox", "tab\there \"quoted\" back\\slash ünï", "the"]
        );
        // A cursor that is not at a line's start is refused.
        assert!(matches!(
            page(&blobs, "res.v", 1, 3).await,
            Err(KeyedError::BadCursor(1))
        ));
        // Pages of 3 cover the by-value object in order, then end.
        let (first, next) = page(&blobs, "res.v", 0, 3).await.unwrap();
        assert_eq!(first.len(), 3);
        assert_eq!(first[0], json!({"key": "dog", "value": 4}));
        assert_eq!(first[2], json!({"key": odd, "value": 2}));
        let (rest, end) = page(&blobs, "res.v", next.unwrap(), 3).await.unwrap();
        assert_eq!(rest, vec![json!({"key": "fox", "value": 1})]);
        assert_eq!(end, None);
        // The summary survives the result document.
        assert_eq!(
            Summary::from_result(&summary.to_result()),
            Some(summary.clone())
        );
    }

    #[tokio::test]
    async fn small_deltas_combine_into_one() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FileBlobs::open(dir.path().to_owned()).unwrap();
        let spec = Spec {
            fields: vec![field()],
            expected_keys: ExpectedKeys::AtMost(10),
        };
        let mut deltas = Vec::new();
        for i in 0..3u64 {
            let object = format!("s/{i}");
            let (bytes, delta) =
                shuffle_bytes(&[("w".into(), map(&[("a", i), ("b", 1)]))], 2, &object);
            blobs.put(&object, bytes).await.unwrap();
            deltas.push(delta);
        }
        let combined = combine(&blobs, &spec, &deltas, 2, "c").await.unwrap();
        let mut all = KeyedMap::new(Op::Sum);
        for r in 0..2 {
            all.merge(
                merge_partition(&blobs, &field(), std::slice::from_ref(&combined), r)
                    .await
                    .unwrap(),
            )
            .unwrap();
        }
        assert_eq!(all.get("a"), Some(Cell::Int(3)));
        assert_eq!(all.get("b"), Some(Cell::Int(3)));
    }

    #[test]
    fn corrupt_segments_are_errors() {
        let mut m = KeyedMap::new(Op::Sum);
        assert!(read_segment(b"\"a\"\t1\n\"b\"\n", "o", &mut m).is_err());
        assert!(read_segment(b"\"a\"\tx\n", "o", &mut m).is_err());
        assert!(read_segment(b"a\t1\n", "o", &mut m).is_err());
        assert!(KeyedMap::from_json(&field(), &json!({"a": "1"})).is_err());
        assert!(KeyedMap::from_json(&field(), &json!([1])).is_err());
    }
}
