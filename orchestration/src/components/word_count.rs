//! `word-count`: counts the lines and whitespace-separated words of a partition.
//!
//! `total_words` counts every token (the paper's feed appends the message number, which is a
//! word). `per_word`, when asked for, counts lowercased words that contain a letter: numbers
//! would make the map as large as the job.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::blob_lines::MAX_LINE_BYTES;
use super::filter::lines;
use super::{ComponentError, Transform};
use crate::keyed::{KeyedFields, KeyedMap, Op};

#[derive(Clone, Debug, Default)]
pub struct WordCount {
    pub per_word: bool,
}

impl Transform for WordCount {
    /// Counts lines and words in one pass over the bytes when they are ASCII and no line is
    /// longer than `blob-lines` keeps (it would cut it); otherwise the lines path decides.
    fn apply_text(
        &self,
        text: &[u8],
        _fields: &serde_json::Map<String, Value>,
    ) -> Option<Result<Value, ComponentError>> {
        if self.per_word || !text.is_ascii() {
            return None;
        }
        let lines = ascii_lines(text)?;
        let words = count_ascii_words(text);
        Some(Ok(json!({ "messages": lines, "total_words": words })))
    }

    /// The per-word count of ASCII text in one pass, straight into a keyed map: no line
    /// or word is allocated, only new keys.
    fn apply_text_keyed(
        &self,
        text: &[u8],
    ) -> Option<Result<(Value, KeyedFields), ComponentError>> {
        if !self.per_word || !text.is_ascii() {
            return None;
        }
        let lines = ascii_lines(text)?;
        // ASCII, so UTF-8 (checked once here, not per word), and every byte offset is a
        // character boundary.
        let text_str = std::str::from_utf8(text).ok()?;
        // Sized once for the distinct words Heaps' law expects (as R is planned): fewer
        // rehashes as the map grows.
        let expected = crate::keyed::heaps_vocabulary(text.len() as u64);
        let mut map = KeyedMap::with_capacity(Op::Sum, expected.min(1 << 22) as usize);
        let mut lower = Vec::with_capacity(64);
        let mut words = 0u64;
        let mut i = 0;
        while i < text.len() {
            while i < text.len() && is_space(text[i]) {
                i += 1;
            }
            let start = i;
            let (mut alpha, mut upper) = (false, false);
            while i < text.len() && !is_space(text[i]) {
                alpha |= text[i].is_ascii_alphabetic();
                upper |= text[i].is_ascii_uppercase();
                i += 1;
            }
            if i == start {
                break;
            }
            words += 1;
            if !alpha {
                continue;
            }
            if upper {
                lower.clear();
                lower.extend(text[start..i].iter().map(u8::to_ascii_lowercase));
                if let Ok(word) = std::str::from_utf8(&lower) {
                    map.count(word);
                }
            } else if let Some(word) = text_str.get(start..i) {
                map.count(word);
            }
        }
        Some(Ok((
            json!({ "messages": lines, "total_words": words }),
            vec![("per_word".to_owned(), map)],
        )))
    }

    fn apply(&self, payload: Value) -> Result<Value, ComponentError> {
        let lines = lines(&payload)?;
        let mut total_words = 0u64;
        let mut per_word: BTreeMap<String, u64> = BTreeMap::new();
        for line in lines {
            let line = line
                .as_str()
                .ok_or_else(|| ComponentError::Malformed("a line is not a string".into()))?;
            if !self.per_word {
                total_words += count_words(line);
                continue;
            }
            for word in line.split_whitespace() {
                total_words += 1;
                if word.chars().any(char::is_alphabetic) {
                    *per_word.entry(word.to_lowercase()).or_default() += 1;
                }
            }
        }
        let mut out = json!({ "messages": lines.len(), "total_words": total_words });
        if self.per_word {
            out["per_word"] = json!(per_word);
        }
        Ok(out)
    }
}

/// Lines of text, or `None` when one is longer than `blob-lines` keeps (it would cut it,
/// and the lines path decides what that means).
fn ascii_lines(text: &[u8]) -> Option<u64> {
    let mut lines = 0u64;
    let mut line_start = 0usize;
    for nl in memchr::memchr_iter(b'\n', text) {
        if nl - line_start > MAX_LINE_BYTES {
            return None;
        }
        lines += 1;
        line_start = nl + 1;
    }
    if line_start < text.len() {
        if text.len() - line_start > MAX_LINE_BYTES {
            return None;
        }
        lines += 1; // a last line without its newline
    }
    Some(lines)
}

/// ASCII whitespace as `char::is_whitespace` has it: space and 0x09..=0x0d.
fn is_space(b: u8) -> bool {
    (b == b' ') | (b.wrapping_sub(9) < 5)
}

/// `line.split_whitespace().count()`, without decoding when the line is ASCII.
pub fn count_words(line: &str) -> u64 {
    if line.is_ascii() {
        count_ascii_words(line.as_bytes())
    } else {
        line.split_whitespace().count() as u64
    }
}

/// Words in ASCII text: the bytes that are not whitespace and follow whitespace (or start
/// the text). Written without a loop-carried state so the compiler vectorizes it.
pub fn count_ascii_words(text: &[u8]) -> u64 {
    // ASCII whitespace as `char::is_whitespace` has it: space and 0x09..=0x0d.
    let space = |b: u8| (b == b' ') | (b.wrapping_sub(9) < 5);
    if text.is_empty() {
        return 0;
    }
    text.chunks(1 << 16)
        .enumerate()
        .map(|(i, chunk)| {
            let before = if i == 0 { b' ' } else { text[(i << 16) - 1] };
            let mut n = u64::from(space(before) & !space(chunk[0]));
            n += chunk
                .iter()
                .zip(&chunk[1..])
                .map(|(&a, &b)| u32::from(space(a) & !space(b)))
                .sum::<u32>() as u64;
            n
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_word_count_agrees_with_split_whitespace_across_chunks() {
        let long = "ab  c\t".repeat(30_000);
        for s in [
            "",
            " ",
            "a",
            " a ",
            "a  b\tc\nd\r\ne",
            "x\u{0b}y\u{0c}z",
            long.as_str(),
        ] {
            assert_eq!(
                count_ascii_words(s.as_bytes()),
                s.split_whitespace().count() as u64,
                "{s:?}"
            );
        }
        // A word across a 64 KiB chunk boundary is one word.
        let mut t = vec![b'x'; (1 << 16) + 3];
        t[10] = b' ';
        assert_eq!(count_ascii_words(&t), 2);
    }

    #[test]
    fn count_words_agrees_with_split_whitespace() {
        for s in [
            "",
            " ",
            "a",
            " a ",
            "a  b\tc\nd\r\ne",
            "x\u{0b}y\u{0c}z",
            "αβ γ",
            "a\u{2003}b",
        ] {
            assert_eq!(count_words(s), s.split_whitespace().count() as u64, "{s:?}");
        }
    }

    #[test]
    fn the_keyed_text_path_agrees_with_the_lines_path() {
        let wc = WordCount { per_word: true };
        let text = "The quick  fox 1\nthe FOX 2 x1\t\u{0b}y\n\nlast";
        let (small, maps) = wc.apply_text_keyed(text.as_bytes()).unwrap().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut full = wc.apply(json!({ "lines": lines })).unwrap();
        let per_word = full.as_object_mut().unwrap().remove("per_word").unwrap();
        assert_eq!(small, full);
        assert_eq!(maps.len(), 1);
        assert_eq!(maps[0].1.to_json(), per_word);
        assert_eq!(maps[0].1.get("fox"), Some(crate::keyed::Cell::Int(2)));
        // Not ASCII, or not per word: the other paths decide.
        assert!(wc.apply_text_keyed("é".as_bytes()).is_none());
        assert!(WordCount::default().apply_text_keyed(b"a").is_none());
    }

    #[test]
    fn counts_words_and_letters_only_per_word() {
        let wc = WordCount { per_word: true };
        let out = wc
            .apply(json!({"lines": ["The quick fox 1", "the  fox 2"]}))
            .unwrap();
        assert_eq!(
            out,
            json!({"messages": 2, "total_words": 7,
                   "per_word": {"the": 2, "quick": 1, "fox": 2}})
        );
        let out = WordCount::default().apply(json!({"lines": []})).unwrap();
        assert_eq!(out, json!({"messages": 0, "total_words": 0}));
    }
}
