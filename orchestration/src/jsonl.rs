//! Reading a few fields from JSON lines, fast: the component any JSON-lines job reads its
//! fields with (fire-tweets today; a generic JSON-lines source tomorrow).
//!
//! [`FieldPaths`] is compiled once from the dotted paths a job needs (`created_at`,
//! `place.country_code`, `retweeted_status.extended_tweet.full_text`...). [`FieldPaths::read`]
//! then walks one line: at each object it compares keys with the paths, descends only into
//! objects on a path, and skips every other value without building it: a string by a SIMD
//! search for its closing quote (`memchr`), an object or array 64 bytes at a time with AVX2
//! where the CPU has it (quote and bracket masks, strings masked out by a prefix XOR, as
//! simdjson finds structure), else by SIMD searches for the next quote or bracket. A wanted value is captured as a [`Raw`] slice of the
//! line, decoded only when the caller asks ([`Raw::as_str`]: borrowed when it has no escapes;
//! sonic-rs decodes the others). Reading a line allocates nothing.
//!
//! Why not sonic-rs's own lazy walk (`get_many`, or serde over `LazyValue`): on generated
//! tweets it ran at 430-570 MB/s per core on this project's machine, with or without AVX2
//! compiled in, against ~970 for this walk. Its SIMD is chosen at compile time (a default
//! x86-64 build gets its scalar fallback); `memchr` and the AVX2 skip here are chosen at run
//! time.
//!
//! A path is a run of object keys, compared with keys as the line spells them (escapes are
//! not decoded: no real key has them). When an object on a path holds a value that is not an
//! object (`"place": null`), the fields under it are absent. A line must be one JSON object
//! (with only whitespace after it): brackets balanced, strings closed, keys quoted, literals
//! spelled right; numbers are checked no further than their characters. Duplicate keys: the
//! last wins.

use std::borrow::Cow;

use memchr::{memchr2, memchr3};

/// Paths compiled into a tree of keys; field `i` is the `i`th path given to [`FieldPaths::new`].
#[derive(Clone, Debug)]
pub struct FieldPaths {
    /// Node 0 is the line's object.
    nodes: Vec<Node>,
    fields: usize,
}

/// An object on the paths: its wanted keys, each a field or another object.
type Node = Vec<(Box<[u8]>, Child)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Child {
    Field(usize),
    Object(usize),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path `{0}` has an empty key")]
    EmptyKey(String),
    #[error("path `{0}` is given twice, or is inside another path's value")]
    Overlap(String),
}

/// A value as the line has it: its raw JSON, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raw<'a>(pub &'a [u8]);

impl<'a> Raw<'a> {
    /// The raw JSON text.
    pub fn as_raw_str(&self) -> &'a str {
        std::str::from_utf8(self.0).unwrap_or_default()
    }

    pub fn is_str(&self) -> bool {
        self.0.first() == Some(&b'"')
    }

    pub fn is_null(&self) -> bool {
        self.0 == b"null"
    }

    /// A string value, decoded: borrowed from the line when it has no escapes. Bytes that
    /// are not UTF-8 are replaced (U+FFFD), as `blob-lines` replaces them in a line: a line
    /// is never validated whole, only the strings a job decodes.
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        let inner = self.0.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        if !inner.contains(&b'\\') {
            // Valid UTF-8 is the rule: checked whole first (SIMD), replaced only if not.
            return Some(match std::str::from_utf8(inner) {
                Ok(s) => Cow::Borrowed(s),
                Err(_) => String::from_utf8_lossy(inner),
            });
        }
        let text = String::from_utf8_lossy(self.0);
        sonic_rs::from_str::<String>(&text).ok().map(Cow::Owned)
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.0 {
            b"true" => Some(true),
            b"false" => Some(false),
            _ => None,
        }
    }
}

/// A line's fields, as [`FieldPaths::read`] found them: `None` for an absent field.
pub type Fields<'a> = Vec<Option<Raw<'a>>>;

impl FieldPaths {
    /// Compiles dotted paths (`a.b.c`). A path may not be a prefix of another: a value is
    /// either captured whole or descended into.
    pub fn new<S: AsRef<str>>(paths: &[S]) -> Result<Self, PathError> {
        let mut nodes: Vec<Node> = vec![Vec::new()];
        for (field, path) in paths.iter().enumerate() {
            let path = path.as_ref();
            let keys: Vec<&str> = path.split('.').collect();
            if keys.iter().any(|k| k.is_empty()) {
                return Err(PathError::EmptyKey(path.to_owned()));
            }
            let mut node = 0;
            for (depth, key) in keys.iter().enumerate() {
                let last = depth + 1 == keys.len();
                let found = nodes[node]
                    .iter()
                    .find(|(k, _)| **k == *key.as_bytes())
                    .map(|c| c.1);
                node = match (found, last) {
                    (None, true) => {
                        nodes[node].push((key.as_bytes().into(), Child::Field(field)));
                        break;
                    }
                    (None, false) => {
                        let next = nodes.len();
                        nodes.push(Vec::new());
                        nodes[node].push((key.as_bytes().into(), Child::Object(next)));
                        next
                    }
                    (Some(Child::Object(next)), false) => next,
                    _ => return Err(PathError::Overlap(path.to_owned())),
                };
            }
        }
        Ok(Self {
            nodes,
            fields: paths.len(),
        })
    }

    /// How many fields [`FieldPaths::read`] fills.
    pub fn len(&self) -> usize {
        self.fields
    }

    pub fn is_empty(&self) -> bool {
        self.fields == 0
    }

    /// Space for one line's fields (reused from line to line: `read` clears it).
    pub fn slots<'a>(&self) -> Fields<'a> {
        vec![None; self.fields]
    }

    /// Reads the fields of one line into `out` (which `slots` made). An error when the line
    /// is not one JSON object.
    pub fn read<'a>(&self, line: &'a [u8], out: &mut Fields<'a>) -> Result<(), LineError> {
        out.iter_mut().for_each(|f| *f = None);
        out.resize(self.fields, None);
        let mut c = Cursor { b: line, i: 0 };
        c.ws();
        if c.peek()? != b'{' {
            return Err(LineError);
        }
        c.object(&self.nodes, 0, out)?;
        c.ws();
        if c.i != line.len() {
            return Err(LineError);
        }
        Ok(())
    }
}

/// The line is not one JSON object.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a JSON object")]
pub struct LineError;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Result<u8, LineError> {
        self.b.get(self.i).copied().ok_or(LineError)
    }

    /// From just after an opening quote to the closing quote's index.
    #[inline]
    fn string_end(&self, mut j: usize) -> Result<usize, LineError> {
        loop {
            let k = memchr2(b'"', b'\\', self.b.get(j..).ok_or(LineError)?).ok_or(LineError)?;
            if self.b[j + k] == b'"' {
                return Ok(j + k);
            }
            j += k + 2;
        }
    }

    fn container(&mut self, open: u8, close: u8) -> Result<(), LineError> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present (checked just above).
                let end = unsafe { container_end_avx2(self.b, self.i, open, close) };
                self.i = end.ok_or(LineError)?;
                return Ok(());
            }
        }
        self.container_scalar(open, close)
    }

    fn container_scalar(&mut self, open: u8, close: u8) -> Result<(), LineError> {
        let mut depth = 0usize;
        loop {
            let rest = self.b.get(self.i..).ok_or(LineError)?;
            let k = memchr3(b'"', open, close, rest).ok_or(LineError)?;
            let at = self.i + k;
            match self.b[at] {
                b'"' => self.i = self.string_end(at + 1)? + 1,
                c if c == open => {
                    depth += 1;
                    self.i = at + 1;
                }
                _ => {
                    depth -= 1;
                    self.i = at + 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn skip_value(&mut self) -> Result<(), LineError> {
        match self.peek()? {
            b'"' => self.i = self.string_end(self.i + 1)? + 1,
            b'{' => self.container(b'{', b'}')?,
            b'[' => self.container(b'[', b']')?,
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                let start = self.i;
                while let Some(&c) = self.b.get(self.i) {
                    if !(c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-')) {
                        break;
                    }
                    self.i += 1;
                }
                let lit = &self.b[start..self.i];
                let ok = match lit[0] {
                    b't' => lit == b"true",
                    b'f' => lit == b"false",
                    b'n' => lit == b"null",
                    _ => true,
                };
                if !ok {
                    return Err(LineError);
                }
            }
            _ => return Err(LineError),
        }
        Ok(())
    }

    fn object(
        &mut self,
        nodes: &[Node],
        node: usize,
        out: &mut [Option<Raw<'a>>],
    ) -> Result<(), LineError> {
        self.i += 1; // '{'
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return Err(LineError);
            }
            let end = self.string_end(self.i + 1)?;
            let key = &self.b[self.i + 1..end];
            self.i = end + 1;
            self.ws();
            if self.peek()? != b':' {
                return Err(LineError);
            }
            self.i += 1;
            self.ws();
            // Length and first byte first: most keys differ there, and a call to memcmp per
            // key and candidate showed in profiles.
            let child = nodes[node]
                .iter()
                .find(|(k, _)| k.len() == key.len() && k.first() == key.first() && **k == *key)
                .map(|c| c.1);
            match child {
                Some(Child::Field(f)) => {
                    let start = self.i;
                    self.skip_value()?;
                    out[f] = Some(Raw(&self.b[start..self.i]));
                }
                Some(Child::Object(n)) if self.peek()? == b'{' => self.object(nodes, n, out)?,
                _ => self.skip_value()?,
            }
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(LineError),
            }
        }
    }
}

/// Where the container opened at `b[i]` ends (the index after its closing bracket), found
/// 64 bytes at a time: masks of quotes and brackets, strings masked out by a prefix XOR of
/// the quotes (simdjson's way). A block with a backslash, or after one, is stepped through
/// byte by byte, escapes and all.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn container_end_avx2(b: &[u8], i: usize, open: u8, close: u8) -> Option<usize> {
    use std::arch::x86_64::*;
    let mut at = i;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let (vq, vb, vo, vc) = (
        _mm256_set1_epi8(b'"' as i8),
        _mm256_set1_epi8(b'\\' as i8),
        _mm256_set1_epi8(open as i8),
        _mm256_set1_epi8(close as i8),
    );
    while at + 64 <= b.len() {
        let p = b.as_ptr().add(at);
        let lo = _mm256_loadu_si256(p as *const __m256i);
        let hi = _mm256_loadu_si256(p.add(32) as *const __m256i);
        let mask = |v: __m256i| -> u64 {
            let l = _mm256_movemask_epi8(_mm256_cmpeq_epi8(lo, v)) as u32 as u64;
            let h = _mm256_movemask_epi8(_mm256_cmpeq_epi8(hi, v)) as u32 as u64;
            l | (h << 32)
        };
        let backslashes = mask(vb);
        if backslashes != 0 || escaped {
            // Byte by byte through this block.
            for k in 0..64 {
                let c = *p.add(k);
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if c == b'\\' {
                        escaped = true;
                    } else if c == b'"' {
                        in_string = false;
                    }
                } else if c == b'"' {
                    in_string = true;
                } else if c == open {
                    depth += 1;
                } else if c == close {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(at + k + 1);
                    }
                }
            }
            at += 64;
            continue;
        }
        let quotes = mask(vq);
        let mut inside = quotes;
        inside ^= inside << 1;
        inside ^= inside << 2;
        inside ^= inside << 4;
        inside ^= inside << 8;
        inside ^= inside << 16;
        inside ^= inside << 32;
        if in_string {
            inside = !inside;
        }
        let opens = mask(vo) & !inside;
        let closes = mask(vc) & !inside;
        let mut brackets = opens | closes;
        while brackets != 0 {
            let k = brackets.trailing_zeros();
            if opens & (1 << k) != 0 {
                depth += 1;
            } else {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at + k as usize + 1);
                }
            }
            brackets &= brackets - 1;
        }
        in_string = inside >> 63 == 1;
        at += 64;
    }
    // The tail, byte by byte.
    while let Some(&c) = b.get(at) {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if c == b'"' {
            in_string = true;
        } else if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(at + 1);
            }
        }
        at += 1;
    }
    None
}

/// A captured value as a string, decoded (escapes resolved); `None` when it is not a string.
pub fn as_str<'a>(v: &Option<Raw<'a>>) -> Option<Cow<'a, str>> {
    v.as_ref().and_then(Raw::as_str)
}

/// Whether a captured value is a string (without decoding it).
pub fn is_str(v: &Option<Raw<'_>>) -> bool {
    v.as_ref().is_some_and(Raw::is_str)
}

/// A captured value as a boolean.
pub fn as_bool(v: &Option<Raw<'_>>) -> Option<bool> {
    v.as_ref().and_then(Raw::as_bool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(paths: &FieldPaths, line: &str) -> Result<Vec<Option<String>>, LineError> {
        let mut out = paths.slots();
        paths.read(line.as_bytes(), &mut out)?;
        Ok(out
            .iter()
            .map(|v| v.as_ref().map(|v| v.as_raw_str().to_owned()))
            .collect())
    }

    #[test]
    fn reads_only_the_paths_asked_for() {
        let p = FieldPaths::new(&["a", "b.c", "b.d.e", "x.y"]).unwrap();
        let got = read(
            &p,
            r#"{"z":[1,{"a":2}],"a":"s\"t","b":{"c":[1, 2],"q":{"c":9},"d":{"e":null}},"x":null}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                Some(r#""s\"t""#.to_owned()),
                Some("[1, 2]".to_owned()),
                Some("null".to_owned()),
                None
            ]
        );
        let mut out = p.slots();
        p.read(br#" {"a":"\u00e9t\u00e9"} "#, &mut out).unwrap();
        assert_eq!(as_str(&out[0]).as_deref(), Some("été"));
        // The slots are cleared between lines.
        p.read(br#"{"b":7,"x":{"y":true}}"#, &mut out).unwrap();
        assert!(out[0].is_none() && out[1].is_none());
        assert_eq!(as_bool(&out[3]), Some(true));
    }

    #[test]
    fn a_line_must_be_one_object() {
        let p = FieldPaths::new(&["a"]).unwrap();
        for bad in [
            "",
            "[1]",
            "null",
            "\"a\"",
            "{\"a\":1",
            "{\"a\":1} x",
            "{\"a\":1}{}",
            "<html>",
            "{\"a\":tru}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":\"x}",
            "{\"a\":1,}",
        ] {
            assert_eq!(read(&p, bad), Err(LineError), "{bad}");
        }
        assert_eq!(read(&p, "{}").unwrap(), [None]);
    }

    /// The 64-byte AVX2 skip and the plain one agree on where every container ends, with
    /// brackets and escapes in strings across block boundaries.
    #[test]
    fn containers_end_where_they_end() {
        let pieces = [
            r#""a{b}c""#,
            r#""q\"}""#,
            r#""\\""#,
            r#"{"k":[1,2,{"x":"]}"}]}"#,
            "[[],{}]",
            r#""é 🔥 é""#,
            "12345",
            r#""                                                              ""#,
        ];
        let mut seed = 7u64;
        for n in 0..400 {
            let mut body = String::from("{\"a\":[");
            for k in 0..(n % 40) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if k > 0 {
                    body.push(',');
                }
                body.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            body.push_str("]}");
            let tail = ",\"z\":1}";
            let line = format!("{{\"p\":{body}{tail}");
            let start = "{\"p\":".len();
            let mut plain = Cursor {
                b: line.as_bytes(),
                i: start,
            };
            plain.container_scalar(b'{', b'}').unwrap();
            assert_eq!(plain.i, start + body.len(), "{line}");
            let mut fast = Cursor {
                b: line.as_bytes(),
                i: start,
            };
            fast.container(b'{', b'}').unwrap();
            assert_eq!(fast.i, plain.i, "{line}");
            let cut = &line.as_bytes()[..start + body.len() - 1];
            let mut short = Cursor { b: cut, i: start };
            assert!(short.container(b'{', b'}').is_err(), "{line}");
        }
    }

    #[test]
    fn paths_must_not_overlap() {
        assert!(matches!(
            FieldPaths::new(&["a", "a.b"]),
            Err(PathError::Overlap(_))
        ));
        assert!(matches!(
            FieldPaths::new(&["a.b", "a"]),
            Err(PathError::Overlap(_))
        ));
        assert!(matches!(
            FieldPaths::new(&["a..b"]),
            Err(PathError::EmptyKey(_))
        ));
        assert_eq!(FieldPaths::new(&["a.b", "a.c"]).unwrap().len(), 2);
    }
}
