//! `sluice gen`: writes input data sets into the blob store jobs read from.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use orchestration::local::FileBlobs;
use orchestration::tweets::generator::{self, GenOptions, MAX_TWEETS_PER_PART};
use orchestration::tweets::Day;
use serde_json::json;

#[derive(Subcommand)]
pub enum GenCommand {
    /// Tweets in the Twitter API v1.1 JSON format, one per line, under
    /// tweets/YYYY-MM-DD/part-NNNNN.jsonl (.jsonl.gz with --gzip). Regenerating a day
    /// replaces it.
    Tweets(TweetsArgs),
    /// Plain text for `run wordcount --input text/`: lines "{prose} {i}", in objects of
    /// --part-mib under text/part-NNNNN.txt. Regenerating replaces them.
    Text(TextArgs),
}

#[derive(Args)]
pub struct TextArgs {
    /// Total size, MiB (the last line may end a little past it).
    #[arg(long)]
    mib: u64,
    /// Size of each object, MiB.
    #[arg(long, default_value_t = 64)]
    part_mib: u64,
    /// Instead of the repeated prose: words drawn from a vocabulary of this many distinct
    /// words, Zipf-distributed (s = 1, as natural text), each word at least once (so the
    /// text holds exactly this many distinct words once it is large enough).
    #[arg(long)]
    vocabulary: Option<u64>,
    /// The same seed gives the same bytes (with --vocabulary).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Where `gen text` writes.
pub const TEXT_PREFIX: &str = "text/";
/// The prose of every generated line (20 words); line i is `"{TEXT} {i}"`.
pub const TEXT: &str =
    "it was the best of times it was the worst of times it was the age of wisdom it was";

/// Generated text: at least `total` bytes of lines `"{TEXT} {i}"` (i from 1), cut into
/// objects of about `part` bytes at line ends. Returns the objects and the line count.
pub fn text_parts(total: u64, part: u64) -> (Vec<Vec<u8>>, u64) {
    let mut parts = Vec::new();
    let mut current = Vec::with_capacity(part as usize + 256);
    let (mut written, mut lines) = (0u64, 0u64);
    while written < total {
        lines += 1;
        let before = current.len();
        current.extend_from_slice(TEXT.as_bytes());
        current.push(b' ');
        current.extend_from_slice(lines.to_string().as_bytes());
        current.push(b'\n');
        written += (current.len() - before) as u64;
        if current.len() as u64 >= part {
            parts.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    (parts, lines)
}

/// Word `rank` of a generated vocabulary: the bijective base-26 numeral of `rank + 702`,
/// in letters (so every word has at least 3 letters and no two are the same).
pub fn vocabulary_word(rank: u64, out: &mut Vec<u8>) {
    let start = out.len();
    let mut n = rank + 702;
    loop {
        out.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
        n -= 1;
    }
    out[start..].reverse();
}

/// Words per generated vocabulary line.
const WORDS_PER_LINE: u64 = 12;

/// Text of at least `total` bytes over a vocabulary of `vocabulary` words: every word once
/// (in rank order), then Zipf-distributed draws; lines of 12 words, objects of about `part`
/// bytes. Returns the objects and the line count.
pub fn vocabulary_parts(total: u64, part: u64, vocabulary: u64, seed: u64) -> (Vec<Vec<u8>>, u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let zipf = rand_distr::Zipf::new(vocabulary.max(1) as f64, 1.0).ok();
    let mut parts = Vec::new();
    let mut current = Vec::with_capacity(part as usize + 256);
    let (mut written, mut lines, mut words) = (0u64, 0u64, 0u64);
    while written < total || words < vocabulary {
        let before = current.len();
        for i in 0..WORDS_PER_LINE {
            let rank = if words < vocabulary {
                words
            } else {
                zipf.map_or(0, |z| rng.sample(z) as u64 - 1)
            };
            if i > 0 {
                current.push(b' ');
            }
            vocabulary_word(rank, &mut current);
            words += 1;
        }
        current.push(b'\n');
        lines += 1;
        written += (current.len() - before) as u64;
        if current.len() as u64 >= part {
            parts.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    (parts, lines)
}

/// Writes [`text_parts`] (or, with a vocabulary, [`vocabulary_parts`]) under
/// [`TEXT_PREFIX`], replacing what was there; returns `(objects, lines, bytes)`.
pub async fn write_text(
    blobs: &FileBlobs,
    mib: u64,
    part_mib: u64,
    vocabulary: Option<(u64, u64)>,
) -> Result<(usize, u64, u64)> {
    use orchestration::ports::Blobs;
    for key in blobs.list(TEXT_PREFIX).await? {
        blobs.delete(&key).await?;
    }
    let (parts, lines) = match vocabulary {
        Some((words, seed)) => vocabulary_parts(mib << 20, part_mib.max(1) << 20, words, seed),
        None => text_parts(mib << 20, part_mib.max(1) << 20),
    };
    let mut bytes = 0;
    for (i, part) in parts.iter().enumerate() {
        bytes += part.len() as u64;
        blobs
            .put(&format!("{TEXT_PREFIX}part-{i:05}.txt"), part.clone())
            .await?;
    }
    Ok((parts.len(), lines, bytes))
}

#[derive(Args)]
pub struct TweetsArgs {
    /// First day, YYYY-MM-DD.
    #[arg(long)]
    from: Day,
    /// Last day, YYYY-MM-DD (inclusive; at most 366 days after --from).
    #[arg(long)]
    to: Day,
    /// Tweets per day (a few malformed lines come on top).
    #[arg(long)]
    per_day: u64,
    /// The same seed gives the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tweets per part file (at most 100,000).
    #[arg(long, default_value_t = MAX_TWEETS_PER_PART)]
    per_part: u64,
    /// Write gzip-compressed parts (.jsonl.gz).
    #[arg(long)]
    gzip: bool,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(state_dir: &Path, command: GenCommand) -> Result<i32> {
    let args = match command {
        GenCommand::Tweets(args) => args,
        GenCommand::Text(args) => {
            let root = state_dir.join(orchestration::local::engine::BLOBS_DIR);
            let blobs = FileBlobs::open(&root)
                .with_context(|| format!("opening the blob store {}", root.display()))?;
            let vocabulary = args.vocabulary.map(|v| (v, args.seed));
            let (objects, lines, bytes) =
                write_text(&blobs, args.mib, args.part_mib, vocabulary).await?;
            println!(
                "wrote {lines} lines, {:.1} MiB in {objects} objects under {}/{TEXT_PREFIX}",
                bytes as f64 / 1048576.0,
                root.display()
            );
            return Ok(0);
        }
    };
    let options = GenOptions {
        from: args.from,
        to: args.to,
        per_day: args.per_day,
        per_part: args.per_part,
        seed: args.seed,
        gzip: args.gzip,
    };
    options.validate()?;
    // The engine keeps its blobs here (`Engine::open`); opening only the blob store keeps
    // `gen` off the engine's databases, so it can run beside a live engine.
    let root = state_dir.join(orchestration::local::engine::BLOBS_DIR);
    let blobs = FileBlobs::open(&root)
        .with_context(|| format!("opening the blob store {}", root.display()))?;
    let started = Instant::now();
    let summary = generator::generate(&blobs, &options).await?;
    let secs = started.elapsed().as_secs_f64();
    let rate = summary.tweets as f64 / secs.max(1e-9);
    if args.json {
        let mut doc = serde_json::to_value(&summary)?;
        doc["wall_ms"] = json!(secs * 1e3);
        doc["tweets_per_second"] = json!(rate.round());
        doc["prefix"] = json!(generator::TWEETS_PREFIX);
        println!("{doc}");
        return Ok(0);
    }
    println!(
        "wrote {} tweets (+{} notices, {} malformed lines) for {} days ({} to {}) in {} objects, {:.1} MB",
        summary.tweets,
        summary.notices,
        summary.malformed_lines,
        summary.days,
        options.from,
        options.to,
        summary.objects,
        summary.bytes as f64 / 1e6
    );
    println!(
        "  under {}/{}  ({:.2} s, {:.0} tweets/s)",
        root.display(),
        generator::TWEETS_PREFIX,
        secs,
        rate
    );
    if summary.removed_objects > 0 {
        println!(
            "  replaced {} objects from an earlier run",
            summary.removed_objects
        );
    }
    Ok(0)
}
