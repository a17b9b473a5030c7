//! The large-text word count: a wordcount job over at least `mib` MiB of generated text in
//! the blob store (`sluice gen text`), against a single-threaded hand-written loop over the
//! same bytes, in the same run. Generating and loading the text is not timed on either side.

use std::time::Instant;

use anyhow::{bail, Context, Result};
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
    let (_, lines, bytes) = write_text(&blobs, mib, PART_MIB, None).await?;
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

/// The per-word count of a Zipf corpus: the job against a single-threaded hash-map loop.
pub struct PerWordRun {
    pub bytes: u64,
    pub keys: u64,
    pub words: u64,
    pub job_s: f64,
    pub hand_loop_s: f64,
}

impl PerWordRun {
    pub fn to_json(&self) -> Value {
        json!({
            "bytes": self.bytes,
            "keys": self.keys,
            "words": self.words,
            "job_s": self.job_s,
            "hand_loop_s": self.hand_loop_s,
            "ratio": self.job_s / self.hand_loop_s,
        })
    }
}

/// The plain loop a user would write: split on whitespace, keep words with a letter,
/// lowercase, count in a hash map (with a fast hasher, as the job's).
pub fn hash_map_loop(
    bytes: &[u8],
    counts: &mut std::collections::HashMap<Box<[u8]>, u64, foldhash::fast::RandomState>,
) {
    let mut lower = Vec::new();
    for word in bytes
        .split(|b| b.is_ascii_whitespace() || *b == 0x0b)
        .filter(|w| w.iter().any(u8::is_ascii_alphabetic))
    {
        let key = if word.iter().any(u8::is_ascii_uppercase) {
            lower.clear();
            lower.extend(word.iter().map(u8::to_ascii_lowercase));
            &lower[..]
        } else {
            word
        };
        match counts.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                counts.insert(key.into(), 1);
            }
        }
    }
}

/// `wordcount --input text/ --per-word` over `mib` MiB of Zipf text with `vocabulary`
/// distinct words, checked key by key against [`hash_map_loop`] over the same bytes.
pub async fn measure_per_word(mib: u64, vocabulary: u64, faults: &str) -> Result<PerWordRun> {
    use orchestration::ports::Blobs;
    let scratch = Scratch::new("per-word")?;
    let root = scratch.path().join(orchestration::local::engine::BLOBS_DIR);
    let blobs = FileBlobs::open(&root)?;
    let (_, _, bytes) = write_text(&blobs, mib, PART_MIB, Some((vocabulary, 1))).await?;
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(root.join(TEXT_PREFIX.trim_end_matches('/')))? {
        parts.push(std::fs::read(entry?.path())?);
    }
    let started = Instant::now();
    let mut counts = std::collections::HashMap::default();
    for p in &parts {
        hash_map_loop(std::hint::black_box(p), &mut counts);
    }
    let hand_loop_s = started.elapsed().as_secs_f64();
    drop(parts);
    let request = JobRequest {
        job_type: "wordcount".into(),
        params: json!({"input": TEXT_PREFIX, "range_bytes": RANGE_BYTES, "per_word": true}),
    };
    let faults: orchestration::faults::Faults = faults.parse()?;
    let (run, _) =
        super::job_with_faults(scratch.path(), request, Policy::default(), faults).await?;
    let summary = orchestration::keyed::Summary::from_result(&run.result["per_word"])
        .with_context(|| format!("no keyed per_word in {}", run.result))?;
    // Every key and count, in the job's sorted object, against the loop's map.
    let object = blobs
        .get(&summary.by_key)
        .await?
        .context("the per-word result object is missing")?;
    let mut seen = 0u64;
    for line in object.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let entry: Value = serde_json::from_slice(line)?;
        let (Some(key), Some(n)) = (entry["key"].as_str(), entry["value"].as_u64()) else {
            bail!("a malformed result line: {entry}");
        };
        if counts.get(key.as_bytes()) != Some(&n) {
            bail!(
                "`{key}`: the job counted {n}, the loop {:?}",
                counts.get(key.as_bytes())
            );
        }
        seen += 1;
    }
    if seen != counts.len() as u64 || summary.keys != seen {
        bail!(
            "the job has {seen} keys (summary {}), the loop {}",
            summary.keys,
            counts.len()
        );
    }
    Ok(PerWordRun {
        bytes,
        keys: seen,
        words: run.result["total_words"].as_u64().unwrap_or(0),
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
    fn a_vocabulary_corpus_holds_every_word_and_the_loop_counts_it() {
        let (parts, lines) = crate::gen::vocabulary_parts(50_000, 10_000, 3_000, 7);
        assert!(parts.iter().all(|p| p.ends_with(b"\n")));
        let mut counts = std::collections::HashMap::default();
        for p in &parts {
            hash_map_loop(p, &mut counts);
        }
        assert_eq!(counts.len(), 3_000);
        let words: u64 = counts.values().sum();
        assert_eq!(words, lines * 12);
        // Zipf: the first word is by far the most common.
        let mut first = Vec::new();
        crate::gen::vocabulary_word(0, &mut first);
        let top = counts.values().max().copied().unwrap_or(0);
        assert_eq!(counts.get(first.as_slice()), Some(&top));
        // Same seed, same bytes.
        assert_eq!(
            crate::gen::vocabulary_parts(50_000, 10_000, 3_000, 7).0,
            parts
        );
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
