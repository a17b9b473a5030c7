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
            for word in line.split_whitespace() {
                total_words += 1;
                if self.per_word && word.chars().any(char::is_alphabetic) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
