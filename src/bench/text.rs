//! The large-text word count: a wordcount job over at least `mib` MiB of generated text in
//! the blob store (`sluice gen text`), against a single-threaded hand-written loop over the
//! same bytes, in the same run. Generating and loading the text is not timed on either side.

use std::time::Instant;

use anyhow::{bail, Result};
use orchestration::job::JobRequest;
use orchestration::local::FileBlobs;
use orchestration::policy::Policy;
use serde_json::{json, Value};

use super::{job_in, Scratch};
use crate::gen::{write_text, TEXT, TEXT_PREFIX};

/// Objects of 64 MiB, read in ranges of 16 MiB (the largest `range_bytes`).
const PART_MIB: u64 = 64;
const RANGE_BYTES: u64 = 16 << 20;

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
/// allocation (ASCII whitespace as `char::is_whitespace` has it, with vertical tab).
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
    let scratch = Scratch::new("text")?;
    let root = scratch.path().join(orchestration::local::engine::BLOBS_DIR);
    let blobs = FileBlobs::open(&root)?;
    let (_, lines, bytes) = write_text(&blobs, mib, PART_MIB).await?;
    // The same bytes, read back from the files the job reads, then counted.
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(root.join(TEXT_PREFIX.trim_end_matches('/')))? {
        parts.push(std::fs::read(entry?.path())?);
    }
    let started = Instant::now();
    let words: u64 = parts
        .iter()
        .map(|p| hand_loop(std::hint::black_box(p)))
        .sum();
    let hand_loop_s = started.elapsed().as_secs_f64();
    drop(parts);
    let words_per_line = TEXT.split_whitespace().count() as u64 + 1;
    if words != lines * words_per_line {
        bail!(
            "the hand loop counted {words} words, not {}",
            lines * words_per_line
        );
    }
    let request = JobRequest {
        job_type: "wordcount".into(),
        params: json!({"input": TEXT_PREFIX, "range_bytes": RANGE_BYTES}),
    };
    // The policy the recorded figures (README, docs/bench) were made with.
    let (run, _) = job_in(scratch.path(), request, Policy::StaticProportional(150)).await?;
    if run.result["total_words"].as_u64() != Some(words)
        || run.result["messages"].as_u64() != Some(lines)
    {
        bail!(
            "the job counted {}, the hand loop {words} words in {lines} lines",
            run.result
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

    #[test]
    fn generated_text_is_cut_at_line_ends() {
        let (parts, lines) = crate::gen::text_parts(10_000, 1_000);
        assert!(parts.iter().all(|p| p.ends_with(b"\n")));
        let total: usize = parts.iter().map(Vec::len).sum();
        assert!(total >= 10_000);
        let text: Vec<u8> = parts.concat();
        assert_eq!(text.iter().filter(|&&b| b == b'\n').count() as u64, lines);
    }
}
