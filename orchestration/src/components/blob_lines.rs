//! `blob-lines`: the lines of every object under some prefixes, split into partitions by
//! object and byte range, so no invocation reads more than a range.
//!
//! **Which partition owns a line.** A partition `[start, end)` of an object owns exactly the
//! lines that *start* in it. A line starts at byte 0 and after every `\n`. So a partition
//! skips the partial line it begins in (unless `start` is 0 or byte `start - 1` is `\n`),
//! and reads past `end` to finish its last line. Every line has one start, hence one owner:
//! none is lost or read twice at a boundary. A final line without a trailing `\n` is a line
//! (it ends at the end of the object); a trailing `\n` does not begin an empty last line.
//! A `\r` before a `\n` is dropped, so CRLF files read like LF ones.
//!
//! **Gzip.** A `.gz` object cannot be read from the middle, so one feed task decompresses it
//! and cuts the decompressed lines into partitions by the same rule. The plan sizes that
//! task from the gzip trailer (ISIZE, the uncompressed size mod 2^32), read with a 4-byte
//! range request; the task emits exactly that many partitions whatever the content holds
//! (the last takes any excess), because completion counts planned partitions.
//!
//! **Payload.** `{"lines": [...], "prefix": "..."}`: the lines (as `synthetic-text` emits
//! them, so any line transform applies) and the prefix the object was listed under (the
//! first of the source's prefixes that holds it), for transforms whose rules differ by
//! prefix (`tweet-match` reads a day's folder as that day).
//!
//! Bytes that are not UTF-8 are replaced (U+FFFD), never refused: judging lines is the next
//! stage's job. Objects must not change while a job reads them (the plan fixes the ranges).

use std::collections::BTreeMap;
use std::io::Read;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::debug;

use super::{ComponentError, FeedTask, Partition, Plan, Source, SourceContext};
use crate::ports::{BlobError, Blobs};

/// Bytes per partition by default: large enough that an invocation does real work, small
/// enough that its `{"lines": [...]}` payload (claim-checked, since it exceeds 192 KiB)
/// stays a few MiB.
pub const DEFAULT_RANGE_BYTES: u64 = 4 * 1024 * 1024;
pub const MIN_RANGE_BYTES: u64 = 1024;
pub const MAX_RANGE_BYTES: u64 = 16 * 1024 * 1024;
/// A line longer than this is cut here (and then fails to parse, downstream): one runaway
/// line must not make a partition unbounded.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// A gzip object that inflates to more than this is refused (a decompression bomb).
pub const MAX_INFLATED_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Deflate cannot inflate more than ~1032:1; a trailer claiming more is not to be trusted.
const MAX_DEFLATE_RATIO: u64 = 1032;
/// The first read past `end` when finishing a line; doubled while no `\n` turns up.
const TAIL_CHUNK: u64 = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobLines {
    /// Every object under any of these prefixes is read once (prefixes may overlap).
    pub prefixes: Vec<String>,
    /// Read as well, but nothing is wrong when one holds no objects (the day after a range
    /// of days, say).
    pub optional_prefixes: Vec<String>,
    pub range_bytes: u64,
    /// Emit `{"range": {...}, "prefix": ...}` for plain objects instead of their lines: the
    /// text stays in the blob store and the first stage that reads it fetches its range
    /// ([`resolve`]). Stages that pass a partition through never touch its bytes.
    pub by_reference: bool,
    /// A prefix of `prefixes` without objects fails the plan (a typo, a missing day) unless
    /// this is set: then it is one partition `{"lines": [], "prefix": p, "empty": true}`,
    /// for the next stage to name.
    pub allow_empty: bool,
}

/// A feed task's detail: the object and the byte range of it the task reads. For a gzip
/// object, the whole object, whose inflated lines the task cuts into `count` partitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSpec {
    pub key: String,
    pub start: u64,
    pub end: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gzip: bool,
}

fn is_gzip(key: &str) -> bool {
    key.ends_with(".gz")
}

fn blob_error(e: BlobError) -> ComponentError {
    match e {
        BlobError::InvalidKey(k) => ComponentError::Malformed(format!("invalid object key `{k}`")),
        other => ComponentError::Transient(other.to_string()),
    }
}

fn missing(key: &str) -> ComponentError {
    // The plan saw it: it was deleted since, and retrying will not bring it back.
    ComponentError::Malformed(format!("object `{key}` is gone"))
}

impl BlobLines {
    pub fn new(prefixes: Vec<String>) -> Self {
        Self {
            prefixes,
            optional_prefixes: Vec::new(),
            range_bytes: DEFAULT_RANGE_BYTES,
            by_reference: false,
            allow_empty: false,
        }
    }

    /// Partitions of a gzip object of `size` bytes: its inflated size over the range size.
    async fn gzip_partitions(
        &self,
        blobs: &dyn Blobs,
        key: &str,
        size: u64,
    ) -> Result<u64, ComponentError> {
        if size < 4 {
            return Ok(1);
        }
        let trailer = blobs
            .get_range(key, size - 4, size)
            .await
            .map_err(blob_error)?
            .ok_or_else(|| missing(key))?;
        let isize = match <[u8; 4]>::try_from(trailer.as_slice()) {
            Ok(bytes) => u64::from(u32::from_le_bytes(bytes)),
            Err(_) => 0,
        };
        let most = (size.saturating_mul(MAX_DEFLATE_RATIO)).div_ceil(self.range_bytes);
        Ok(isize.div_ceil(self.range_bytes).clamp(1, most.max(1)))
    }

    async fn read_gzip(
        &self,
        blobs: &dyn Blobs,
        spec: &RangeSpec,
        task: &FeedTask,
    ) -> Result<Vec<Partition>, ComponentError> {
        let compressed = blobs
            .get(&spec.key)
            .await
            .map_err(blob_error)?
            .ok_or_else(|| missing(&spec.key))?;
        let mut inflated = Vec::new();
        flate2::read::MultiGzDecoder::new(compressed.as_slice())
            .take(MAX_INFLATED_BYTES + 1)
            .read_to_end(&mut inflated)
            .map_err(|e| ComponentError::Malformed(format!("`{}`: not gzip: {e}", spec.key)))?;
        if inflated.len() as u64 > MAX_INFLATED_BYTES {
            return Err(ComponentError::Malformed(format!(
                "`{}` inflates to more than {MAX_INFLATED_BYTES} bytes",
                spec.key
            )));
        }
        let r = self.range_bytes as usize;
        Ok((0..task.count)
            .map(|i| {
                let start = (i as usize).saturating_mul(r);
                // The last partition takes whatever the trailer did not announce.
                let end = if i + 1 == task.count {
                    usize::MAX
                } else {
                    start.saturating_add(r)
                };
                Partition {
                    index: task.first + i,
                    payload: self.payload(&spec.key, owned(&inflated, start, end)),
                }
            })
            .collect())
    }

    async fn read_range(
        &self,
        blobs: &dyn Blobs,
        spec: &RangeSpec,
    ) -> Result<Value, ComponentError> {
        let region = read_region(blobs, spec).await?;
        Ok(self.payload(&spec.key, &region))
    }

    /// `{"lines": [...], "prefix": ...}` from a run of whole lines of object `key`.
    fn payload(&self, key: &str, region: &[u8]) -> Value {
        lines_payload(region, self.prefix_field(key))
    }

    /// `{"prefix": ...}`: the first of the source's prefixes that holds `key`.
    fn prefix_field(&self, key: &str) -> serde_json::Map<String, Value> {
        let mut fields = serde_json::Map::new();
        let mut all = self.prefixes.iter().chain(&self.optional_prefixes);
        if let Some(prefix) = all.find(|p| key.starts_with(p.as_str())) {
            fields.insert("prefix".into(), Value::String(prefix.clone()));
        }
        fields
    }

    /// `{"range": spec, "prefix": ...}`: the partition by reference.
    fn reference(&self, spec: &RangeSpec) -> Value {
        let mut payload = self.prefix_field(&spec.key);
        payload.insert("range".into(), serde_json::json!(spec));
        Value::Object(payload)
    }
}

/// A partition's text, when its payload is a reference (`{"range": ...}`): the bytes of the
/// lines it owns, and the payload without the reference (its other fields, e.g. `prefix`).
/// `None` for a payload that carries its lines.
pub async fn resolve(
    blobs: &dyn Blobs,
    payload: &Value,
) -> Result<Option<(Region, serde_json::Map<String, Value>)>, ComponentError> {
    let Some(range) = payload.get("range") else {
        return Ok(None);
    };
    let spec: RangeSpec = serde_json::from_value(range.clone())
        .map_err(|e| ComponentError::Malformed(format!("range reference: {e}")))?;
    if spec.gzip {
        return Err(ComponentError::Malformed(
            "a gzip object cannot be read by range".into(),
        ));
    }
    let mut rest = payload.as_object().cloned().unwrap_or_default();
    rest.remove("range");
    Ok(Some((read_region(blobs, &spec).await?, rest)))
}

/// The payload `{"lines": [...], ...rest}` of a region of whole lines.
pub fn lines_payload(region: &[u8], mut rest: serde_json::Map<String, Value>) -> Value {
    rest.insert("lines".into(), Value::Array(lines_of(region)));
    Value::Object(rest)
}

/// The bytes of a run of whole lines, where they were read: a range's read begins with the
/// end of a line it does not own, and moving 4 MiB to drop those few bytes cost more than
/// the rest of its handling.
#[derive(Debug, Default)]
pub struct Region {
    buf: Vec<u8>,
    start: usize,
}

impl std::ops::Deref for Region {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// The bytes of the lines that start in the spec's range (module docs).
async fn read_region(blobs: &dyn Blobs, spec: &RangeSpec) -> Result<Region, ComponentError> {
    let (start, end) = (spec.start, spec.end);
    if start >= end {
        return Ok(Region::default());
    }
    // One byte before `start` tells whether a line starts at `start`. Reading a little past
    // `end` at once usually finishes the last line: one request, and no second read
    // appended to (and so copying) a full buffer.
    let from = start.saturating_sub(1);
    let ahead = end.saturating_add(TAIL_CHUNK);
    let mut buf = blobs
        .get_range(&spec.key, from, ahead)
        .await
        .map_err(blob_error)?
        .ok_or_else(|| missing(&spec.key))?;
    let (rel_start, rel_end) = ((start - from) as usize, (end - from) as usize);
    let reached_eof = buf.len() < (ahead - from) as usize;
    let owns_a_line = first_line_start(&buf, rel_start).is_some_and(|p| p < rel_end);
    let finished = buf
        .get(rel_end - 1..)
        .is_some_and(|rest| memchr::memchr(b'\n', rest).is_some());
    if owns_a_line && !reached_eof && !finished {
        // Finish the last line: read on until a newline or the end of the object.
        let mut at = ahead;
        let mut chunk = TAIL_CHUNK.saturating_mul(2);
        let mut tail = buf.len().saturating_sub(rel_end);
        loop {
            let more = blobs
                .get_range(&spec.key, at, at + chunk)
                .await
                .map_err(blob_error)?
                .ok_or_else(|| missing(&spec.key))?;
            let got = more.len() as u64;
            if let Some(nl) = more.iter().position(|&b| b == b'\n') {
                buf.extend_from_slice(&more[..=nl]);
                break;
            }
            buf.extend_from_slice(&more);
            tail += more.len();
            if got < chunk || tail > MAX_LINE_BYTES {
                break; // the end of the object, or a line past all reason
            }
            at += got;
            chunk = chunk.saturating_mul(2);
        }
    }
    let (p, q) = owned_bounds(&buf, rel_start, rel_end);
    buf.truncate(q);
    Ok(Region { buf, start: p })
}

/// Where the first line starting at or after `start` begins, if one does (before the end).
fn first_line_start(data: &[u8], start: usize) -> Option<usize> {
    if start == 0 {
        return (!data.is_empty()).then_some(0);
    }
    let from = start - 1;
    let nl = data.get(from..)?.iter().position(|&b| b == b'\n')?;
    let p = from + nl + 1;
    (p < data.len()).then_some(p)
}

/// The bytes of the lines that start in `[start, end)` of `data`, through the newline that
/// ends the last of them (or the end of `data`). `data` must hold that newline if it exists.
fn owned(data: &[u8], start: usize, end: usize) -> &[u8] {
    let (p, q) = owned_bounds(data, start, end);
    &data[p..q]
}

/// Where [`owned`]'s bytes begin and end in `data` (`(0, 0)` for none).
fn owned_bounds(data: &[u8], start: usize, end: usize) -> (usize, usize) {
    let Some(p) = first_line_start(data, start) else {
        return (0, 0);
    };
    if p >= end {
        return (0, 0);
    }
    // The last owned line is the one holding byte `end - 1` (or the last line, if `data`
    // ends first); it ends at the first newline at or after that byte.
    let last = end.saturating_sub(1).min(data.len() - 1).max(p);
    let q = data[last..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |i| last + i + 1);
    (p, q)
}

/// The lines of a run of whole lines, each without its `\n` (or `\r\n`).
fn lines_of(region: &[u8]) -> Vec<Value> {
    let mut lines: Vec<Value> = Vec::new();
    if !region.is_empty() {
        let body = region.strip_suffix(b"\n").unwrap_or(region);
        for raw in body.split(|&b| b == b'\n') {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let raw = &raw[..raw.len().min(MAX_LINE_BYTES)];
            lines.push(Value::String(String::from_utf8_lossy(raw).into_owned()));
        }
    }
    lines
}

#[async_trait]
impl Source for BlobLines {
    async fn plan(&self, ctx: &SourceContext) -> Result<Plan, ComponentError> {
        if !(MIN_RANGE_BYTES..=MAX_RANGE_BYTES).contains(&self.range_bytes) {
            return Err(ComponentError::Malformed(format!(
                "range of {} bytes is outside {MIN_RANGE_BYTES}..={MAX_RANGE_BYTES}",
                self.range_bytes
            )));
        }
        let mut objects = BTreeMap::new();
        let mut empty = Vec::new();
        for prefix in &self.prefixes {
            let listed = ctx.blobs.list_sizes(prefix).await.map_err(blob_error)?;
            // An empty prefix is almost always a typo or a missing day, which must not pass
            // for "no records".
            if listed.is_empty() {
                if !self.allow_empty {
                    return Err(ComponentError::Malformed(format!(
                        "no objects under `{prefix}`"
                    )));
                }
                empty.push(prefix.clone());
            }
            objects.extend(listed.into_iter().map(|o| (o.key, o.size)));
        }
        for prefix in &self.optional_prefixes {
            let listed = ctx.blobs.list_sizes(prefix).await.map_err(blob_error)?;
            objects.extend(listed.into_iter().map(|o| (o.key, o.size)));
        }
        let mut tasks = Vec::new();
        let mut next = 0u64;
        let input_bytes = objects.iter().map(|o| o.1).sum();
        for (key, size) in objects {
            if is_gzip(&key) {
                let count = self.gzip_partitions(ctx.blobs.as_ref(), &key, size).await?;
                tasks.push(task(next, count, key, 0, size, true));
                next += count;
                continue;
            }
            // An empty object still gets a partition: it is planned, read and counted.
            let ranges = size.div_ceil(self.range_bytes).max(1);
            for i in 0..ranges {
                let start = i * self.range_bytes;
                let end = (start + self.range_bytes).min(size);
                tasks.push(task(next, 1, key.clone(), start, end, false));
                next += 1;
            }
        }
        for prefix in empty {
            tasks.push(FeedTask {
                first: next,
                count: 1,
                spec: serde_json::json!({ "empty": prefix }),
            });
            next += 1;
        }
        debug!(partitions = next, tasks = tasks.len(), "blob-lines planned");
        Ok(Plan {
            total_partitions: next,
            tasks,
            input_bytes: Some(input_bytes),
        })
    }

    async fn emit(
        &self,
        task: &FeedTask,
        ctx: &SourceContext,
    ) -> Result<Vec<Partition>, ComponentError> {
        if let Some(prefix) = task.spec.get("empty").and_then(Value::as_str) {
            let payload = serde_json::json!({"lines": [], "prefix": prefix, "empty": true});
            return Ok(vec![Partition {
                index: task.first,
                payload,
            }]);
        }
        let spec: RangeSpec = serde_json::from_value(task.spec.clone())
            .map_err(|e| ComponentError::Malformed(format!("blob-lines task: {e}")))?;
        if spec.gzip {
            return self.read_gzip(ctx.blobs.as_ref(), &spec, task).await;
        }
        if task.count != 1 {
            return Err(ComponentError::Malformed(format!(
                "a byte-range task is one partition, not {}",
                task.count
            )));
        }
        if self.by_reference {
            return Ok(vec![Partition {
                index: task.first,
                payload: self.reference(&spec),
            }]);
        }
        let payload = self.read_range(ctx.blobs.as_ref(), &spec).await?;
        debug!(key = %spec.key, start = spec.start, end = spec.end,
               lines = payload["lines"].as_array().map_or(0, Vec::len), "range read");
        Ok(vec![Partition {
            index: task.first,
            payload,
        }])
    }
}

fn task(first: u64, count: u64, key: String, start: u64, end: u64, gzip: bool) -> FeedTask {
    let spec = RangeSpec {
        key,
        start,
        end,
        gzip,
    };
    FeedTask {
        first,
        count,
        spec: serde_json::to_value(spec).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::components::Transform;
    use crate::local::FileBlobs;

    struct Fixture {
        _dir: tempfile::TempDir,
        ctx: SourceContext,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(FileBlobs::open(dir.path()).unwrap());
        Fixture {
            _dir: dir,
            ctx: SourceContext { blobs },
        }
    }

    /// Every line the source emits, in partition order.
    async fn read_all(source: &BlobLines, ctx: &SourceContext) -> Vec<String> {
        let plan = source.plan(ctx).await.unwrap();
        let mut index = 0;
        let mut lines = Vec::new();
        for task in &plan.tasks {
            assert_eq!(task.first, index);
            let parts = source.emit(task, ctx).await.unwrap();
            assert_eq!(parts.len() as u64, task.count);
            for p in parts {
                assert_eq!(p.index, index);
                index += 1;
                for l in p.payload["lines"].as_array().unwrap() {
                    lines.push(l.as_str().unwrap().to_owned());
                }
            }
        }
        assert_eq!(index, plan.total_partitions);
        lines
    }

    /// The lines of `content` as a line reader should see them.
    fn expected(content: &str) -> Vec<String> {
        let body = content.strip_suffix('\n').unwrap_or(content);
        if content.is_empty() {
            return Vec::new();
        }
        body.split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
            .collect()
    }

    fn source(prefix: &str, range_bytes: u64) -> BlobLines {
        BlobLines {
            optional_prefixes: Vec::new(),
            allow_empty: false,
            prefixes: vec![prefix.into()],
            range_bytes,
            by_reference: false,
        }
    }

    /// Every boundary position, for every range size, over tricky contents.
    #[tokio::test]
    async fn every_line_once_at_every_split() {
        let f = fixture();
        let contents = [
            "a\nbb\nccc\n",
            "a\nbb\nccc",          // a final line without a newline
            "x",                   // one byte, no newline
            "\n",                  // one empty line
            "\n\n\nz\n\n",         // empty lines around
            "one\r\ntwo\r\nthree", // CRLF, last without
            "ünïcödé 🔥\nlíne\n🔥",
            "",
        ];
        for (n, content) in contents.iter().enumerate() {
            let prefix = format!("t{n}/");
            f.ctx
                .blobs
                .put(&format!("{prefix}obj"), content.as_bytes().to_vec())
                .await
                .unwrap();
            for range in 1..=content.len().max(1) + 1 {
                let mut s = source(&prefix, MIN_RANGE_BYTES);
                s.range_bytes = range as u64; // below the minimum on purpose: direct calls
                let plan_ok = s.plan(&f.ctx).await;
                // plan() refuses tiny ranges; exercise the reader directly.
                assert!(plan_ok.is_err());
                let mut lines = Vec::new();
                let size = content.len() as u64;
                let ranges = size.div_ceil(range as u64).max(1);
                for i in 0..ranges {
                    let spec = RangeSpec {
                        key: format!("{prefix}obj"),
                        start: i * range as u64,
                        end: ((i + 1) * range as u64).min(size),
                        gzip: false,
                    };
                    let v = s.read_range(f.ctx.blobs.as_ref(), &spec).await.unwrap();
                    // By reference, the same range resolves to the same lines, and a word
                    // count over its bytes agrees with one over its lines.
                    let reference = serde_json::json!({ "range": spec });
                    let (text, rest) = resolve(f.ctx.blobs.as_ref(), &reference)
                        .await
                        .unwrap()
                        .unwrap();
                    let by_lines = lines_payload(&text, rest);
                    assert_eq!(by_lines["lines"], v["lines"], "{content:?} at {range}");
                    let wc = crate::components::WordCount::default();
                    if let Some(out) = wc.apply_text(&text, &Default::default()) {
                        assert_eq!(out.unwrap(), wc.apply(by_lines).unwrap(), "{content:?}");
                    } else {
                        assert!(!content.is_ascii(), "{content:?}: ASCII has a fast path");
                    }
                    for l in v["lines"].as_array().unwrap() {
                        lines.push(l.as_str().unwrap().to_owned());
                    }
                }
                assert_eq!(lines, expected(content), "{content:?} split every {range}");
            }
        }
    }

    /// A widely used framework's line reader drops the last byte of an object that does
    /// not end in a newline when a split ends exactly there. Not this one.
    #[tokio::test]
    async fn final_line_without_newline_keeps_its_last_byte() {
        let f = fixture();
        let content = format!("{}\nthe end", "x".repeat(2_000));
        f.ctx
            .blobs
            .put("f/obj", content.clone().into_bytes())
            .await
            .unwrap();
        for range in [1024, 1025, 2001, 2002, 2006, 2007, 2008, 4096] {
            let lines = read_all(&source("f/", range), &f.ctx).await;
            assert_eq!(lines.last().map(String::as_str), Some("the end"), "{range}");
            assert_eq!(lines.len(), 2);
        }
    }

    /// Random contents (generated tweets, long lines, CRLF) at random range sizes.
    #[tokio::test]
    async fn random_contents_and_ranges() {
        let f = fixture();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..25 {
            let mut content = String::new();
            let n = rng.random_range(0..400);
            for i in 0..n {
                let len = if rng.random_bool(0.02) {
                    rng.random_range(3_000..9_000)
                } else {
                    rng.random_range(0..120)
                };
                content.push_str(&format!("{round}:{i}:"));
                content.extend((0..len).map(|j| if j % 17 == 0 { 'é' } else { 'a' }));
                content.push_str(if rng.random_bool(0.1) { "\r\n" } else { "\n" });
            }
            if rng.random_bool(0.5) {
                content.push_str("no newline at the end");
            }
            let key = format!("r{round}/data.jsonl");
            f.ctx
                .blobs
                .put(&key, content.clone().into_bytes())
                .await
                .unwrap();
            let range = rng.random_range(MIN_RANGE_BYTES..20_000);
            let lines = read_all(&source(&format!("r{round}/"), range), &f.ctx).await;
            assert_eq!(lines, expected(&content), "round {round}, range {range}");
        }
    }

    #[tokio::test]
    async fn a_line_longer_than_the_cap_is_cut_once() {
        let f = fixture();
        let long = "y".repeat(MAX_LINE_BYTES + 100_000);
        let content = format!("a\n{long}\nb\n");
        f.ctx.blobs.put("l/o", content.into_bytes()).await.unwrap();
        let lines = read_all(&source("l/", 4096), &f.ctx).await;
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "a");
        assert_eq!(lines[1].len(), MAX_LINE_BYTES);
        assert_eq!(lines[2], "b");
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    #[tokio::test]
    async fn gzip_objects_are_inflated_and_cut_by_the_trailer() {
        let f = fixture();
        let content: String = (0..5_000).map(|i| format!("line {i}\n")).collect();
        f.ctx
            .blobs
            .put("g/a.jsonl.gz", gzip(content.as_bytes()))
            .await
            .unwrap();
        f.ctx
            .blobs
            .put("g/b.jsonl.gz", gzip(b"last\nwithout newline"))
            .await
            .unwrap();
        f.ctx.blobs.put("g/c.gz", gzip(b"")).await.unwrap();
        f.ctx
            .blobs
            .put("g/d.jsonl", b"plain\n".to_vec())
            .await
            .unwrap();
        let s = source("g/", 4096);
        let plan = s.plan(&f.ctx).await.unwrap();
        // a: ~44 KB inflated → 11 partitions in one task; b, c: one each; d: one.
        let counts: Vec<u64> = plan.tasks.iter().map(|t| t.count).collect();
        assert_eq!(counts, [content.len().div_ceil(4096) as u64, 1, 1, 1]);
        let mut want = expected(&content);
        want.extend(["last".to_owned(), "without newline".to_owned()]);
        want.push("plain".to_owned());
        assert_eq!(read_all(&s, &f.ctx).await, want);

        // Concatenated members, and a trailer that undercounts: nothing is lost.
        let mut two = gzip(b"m1\n");
        two.extend(gzip(content.as_bytes()));
        f.ctx.blobs.put("h/x.gz", two).await.unwrap();
        let lines = read_all(&source("h/", 4096), &f.ctx).await;
        assert_eq!(lines.len(), 5_001);

        f.ctx
            .blobs
            .put("bad/x.gz", b"not gzip at all".to_vec())
            .await
            .unwrap();
        let s = source("bad/", 4096);
        let plan = s.plan(&f.ctx).await.unwrap();
        assert!(matches!(
            s.emit(&plan.tasks[0], &f.ctx).await,
            Err(ComponentError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn plans_every_object_once_and_refuses_empty_prefixes() {
        let f = fixture();
        for (key, size) in [("p/1/a", 10_000), ("p/1/b", 0), ("p/2/c", 4096)] {
            f.ctx.blobs.put(key, vec![b'x'; size]).await.unwrap();
        }
        let s = BlobLines {
            optional_prefixes: Vec::new(),
            allow_empty: false,
            prefixes: vec!["p/1/".into(), "p/".into(), "p/2/".into()],
            range_bytes: 4096,
            by_reference: false,
        };
        let plan = s.plan(&f.ctx).await.unwrap();
        let specs: Vec<(String, u64, u64)> = plan
            .tasks
            .iter()
            .map(|t| {
                let r: RangeSpec = serde_json::from_value(t.spec.clone()).unwrap();
                (r.key, r.start, r.end)
            })
            .collect();
        let own = |k: &str, s, e| (k.to_owned(), s, e);
        assert_eq!(
            specs,
            [
                own("p/1/a", 0, 4096),
                own("p/1/a", 4096, 8192),
                own("p/1/a", 8192, 10_000),
                own("p/1/b", 0, 0),
                own("p/2/c", 0, 4096),
            ]
        );
        assert_eq!(plan.total_partitions, 5);
        // The payload names the first listed prefix that holds the object.
        let first = s.emit(&plan.tasks[0], &f.ctx).await.unwrap();
        assert_eq!(first[0].payload["prefix"], "p/1/");
        assert_eq!(first[0].payload["lines"].as_array().unwrap().len(), 1);
        let last = s.emit(&plan.tasks[4], &f.ctx).await.unwrap();
        assert_eq!(last[0].payload["prefix"], "p/");
        let err = BlobLines::new(vec!["p/".into(), "nothing/".into()])
            .plan(&f.ctx)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nothing/"), "{err}");
        // Optional prefixes may be empty; allowed empty ones are named in a partition.
        let lenient = BlobLines {
            prefixes: vec!["p/2/".into(), "nothing/".into()],
            optional_prefixes: vec!["p/1/".into(), "none/".into()],
            range_bytes: 4096,
            allow_empty: true,
            ..BlobLines::new(Vec::new())
        };
        let plan = lenient.plan(&f.ctx).await.unwrap();
        assert_eq!(plan.total_partitions, 6);
        let marker = lenient.emit(&plan.tasks[5], &f.ctx).await.unwrap();
        assert_eq!(
            marker[0].payload,
            serde_json::json!({"lines": [], "prefix": "nothing/", "empty": true})
        );
        assert_eq!(marker[0].index, 5);
        let from_optional = lenient.emit(&plan.tasks[0], &f.ctx).await.unwrap();
        assert_eq!(from_optional[0].payload["prefix"], "p/1/");

        // A task for an object deleted since the plan is poison, not a retry loop.
        f.ctx.blobs.delete("p/2/c").await.unwrap();
        assert!(matches!(
            s.emit(&plan.tasks[4], &f.ctx).await,
            Err(ComponentError::Malformed(_))
        ));
        let bad = FeedTask {
            first: 0,
            count: 1,
            spec: serde_json::json!({"key": 5}),
        };
        assert!(s.emit(&bad, &f.ctx).await.is_err());
    }
}
