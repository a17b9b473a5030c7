//! The large-text word count: a wordcount job over at least `mib` MiB of generated lines,
//! against a single-threaded hand-written loop over the same bytes, in the same run.

use std::time::Instant;

use anyhow::{bail, Result};
use orchestration::policy::Policy;
use serde_json::{json, Value};

use super::{one_job, wordcount};

/// A line of prose (20 words); line i is `"{TEXT} {i}"`, as the paper's feed makes them.
const TEXT: &str =
    "it was the best of times it was the worst of times it was the age of wisdom it was";
/// Lines per partition: about 1 MiB of text each.
const PARTITION_LINES: u64 = 10_000;

pub struct TextRun {
    pub bytes: u64,
    pub lines: u64,
    pub words: u64,
    pub job_s: f64,
    pub hand_loop_s: f64,
}

impl TextRun {
    pub fn to_json(&self) -> Value {
        json!({
            "bytes": self.bytes,
            "lines": self.lines,
            "words": self.words,
            "job_s": self.job_s,
            "hand_loop_s": self.hand_loop_s,
            "job_mib_per_s": self.bytes as f64 / self.job_s / 1048576.0,
            "hand_loop_mib_per_s": self.bytes as f64 / self.hand_loop_s / 1048576.0,
            "ratio": self.job_s / self.hand_loop_s,
        })
    }
}

/// The words of `bytes`: maximal runs of non-whitespace, counted in one pass with no
/// allocation. ASCII whitespace as `char::is_whitespace` has it (with vertical tab).
pub fn hand_loop(bytes: &[u8]) -> u64 {
    let mut words = 0u64;
    let mut in_word = false;
    for &b in bytes {
        let space = b.is_ascii_whitespace() || b == 0x0b;
        words += u64::from(!space && !in_word);
        in_word = !space;
    }
    words
}

pub async fn measure(mib: u64) -> Result<TextRun> {
    let target = mib << 20;
    // The same bytes the job's feed generates: line i is "{TEXT} {i}", one per line.
    let mut text = Vec::with_capacity(target as usize + (1 << 20));
    let mut lines = 0u64;
    while (text.len() as u64) < target {
        lines += 1;
        text.extend_from_slice(TEXT.as_bytes());
        text.push(b' ');
        text.extend_from_slice(lines.to_string().as_bytes());
        text.push(b'\n');
    }
    let words_per_line = TEXT.split_whitespace().count() as u64 + 1;
    let started = Instant::now();
    let words = hand_loop(std::hint::black_box(&text));
    let hand_loop_s = started.elapsed().as_secs_f64();
    if words != lines * words_per_line {
        bail!(
            "the hand loop counted {words} words, not {}",
            lines * words_per_line
        );
    }
    let bytes = text.len() as u64;
    drop(text);

    let request = wordcount(
        lines,
        json!({"text": TEXT, "partition_size": PARTITION_LINES}),
    );
    let (run, _) = one_job(request, Policy::default(), "text").await?;
    if run.result["total_words"].as_u64() != Some(words) {
        bail!(
            "the job counted {}, the hand loop {words}",
            run.result["total_words"]
        );
    }
    Ok(TextRun {
        bytes,
        lines,
        words,
        job_s: run.job_s,
        hand_loop_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_loop_counts_like_split_whitespace() {
        for s in [
            "",
            " ",
            "a",
            " a ",
            "a  b\tc\nd\r\ne",
            "x\u{0b}y\u{0c}z",
            "αβ γ",
        ] {
            assert_eq!(
                hand_loop(s.as_bytes()),
                s.split_whitespace().count() as u64,
                "{s:?}"
            );
        }
    }
}
