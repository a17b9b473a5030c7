//! `word-count`: counts the lines and whitespace-separated words of a partition.
//!
//! `total_words` counts every token (the paper's feed appends the message number, which is a
//! word). `per_word`, when asked for, counts lowercased words that contain a letter: numbers
//! would make the map as large as the job.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::filter::lines;
use super::{ComponentError, Transform};

#[derive(Clone, Debug, Default)]
pub struct WordCount {
    pub per_word: bool,
}

impl Transform for WordCount {
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

/// `line.split_whitespace().count()`, a byte at a time while the line is ASCII (the Unicode
/// whitespace rules need decoding only past ASCII).
pub fn count_words(line: &str) -> u64 {
    let mut words = 0u64;
    let mut in_word = false;
    for &b in line.as_bytes() {
        let class = BYTE_CLASS[usize::from(b)];
        if class == NON_ASCII {
            return line.split_whitespace().count() as u64;
        }
        let space = class == SPACE;
        words += u64::from(!space && !in_word);
        in_word = !space;
    }
    words
}

const WORD: u8 = 0;
const SPACE: u8 = 1;
const NON_ASCII: u8 = 2;

/// Each byte's class: ASCII whitespace as `char::is_whitespace` has it (with vertical tab),
/// other ASCII, or a byte of a multi-byte character.
static BYTE_CLASS: [u8; 256] = {
    let mut table = [WORD; 256];
    let mut b = 0x80;
    while b < 256 {
        table[b] = NON_ASCII;
        b += 1;
    }
    table[b' ' as usize] = SPACE;
    table[b'\t' as usize] = SPACE;
    table[b'\n' as usize] = SPACE;
    table[b'\r' as usize] = SPACE;
    table[0x0b] = SPACE;
    table[0x0c] = SPACE;
    table
};

#[cfg(test)]
mod tests {
    use super::*;

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
