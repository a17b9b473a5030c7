//! `wordcount`: the paper's experiment. A synthetic feed of `messages` lines
//! `"{text} {i}"`, a filter, a word count, and a sum. With `input` instead of `messages`,
//! the lines are those of the objects under a blob-store prefix, read by byte range (and
//! by reference: each range is fetched by the first stage that reads it).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::components::blob_lines::{DEFAULT_RANGE_BYTES, MAX_RANGE_BYTES, MIN_RANGE_BYTES};
use crate::components::{BlobLines, Filter, Sum, SyntheticText, WordCount};
use crate::flow::{Flow, Function, JobType, Stage, Step};
use crate::job::{ParamReader, ValidationError};
use crate::keyed;

pub const DEFAULT_TEXT: &str = "the quick brown fox";
/// Messages per queue message. 100 keeps a 2,000-message job parallel (20 partitions)
/// while a 10^6-message job needs only 10^4 queue messages per stage.
pub const DEFAULT_PARTITION_SIZE: u64 = 100;
pub const MAX_MESSAGES: u64 = 100_000_000;

pub struct Wordcount;

/// Where the lines come from.
enum Input {
    Synthetic(SyntheticText),
    /// Every object under the prefix, in ranges of this many bytes.
    Blobs {
        prefix: String,
        range_bytes: u64,
    },
}

struct Params {
    input: Input,
    per_word: bool,
    contains: Option<String>,
    /// The shuffle's reduce partitions, when the request sets them.
    reduce_partitions: Option<u32>,
}

/// Parameters only a synthetic feed has, refused beside `input`.
const SYNTHETIC_ONLY: [&str; 3] = ["messages", "text", "partition_size"];

fn read(params: &Value) -> Result<(Params, Value), ValidationError> {
    let blob_input = params.get("input").is_some_and(|v| !v.is_null());
    if blob_input {
        if let Some(name) = SYNTHETIC_ONLY.iter().find(|n| params.get(**n).is_some()) {
            return Err(ValidationError::new(
                format!("params.{name}"),
                "not with `input`: the lines are the objects'",
            ));
        }
    }
    let mut r = ParamReader::new(params)?;
    let input = if blob_input {
        let prefix = r.string("input", 1_024, None)?.unwrap_or_default();
        let range_bytes = r.integer(
            "range_bytes",
            MIN_RANGE_BYTES,
            MAX_RANGE_BYTES,
            Some(DEFAULT_RANGE_BYTES),
        )?;
        Input::Blobs {
            prefix,
            range_bytes,
        }
    } else {
        let messages = r.integer("messages", 1, MAX_MESSAGES, None)?;
        let text = r
            .string("text", 1_000, Some(DEFAULT_TEXT))?
            .unwrap_or_default();
        let partition_size =
            r.integer("partition_size", 1, 100_000, Some(DEFAULT_PARTITION_SIZE))?;
        Input::Synthetic(SyntheticText {
            messages,
            text,
            partition_size,
        })
    };
    let per_word = r.boolean("per_word", false)?;
    let contains = r.string("contains", 100, None)?;
    let reduce_partitions = match params.get("reduce_partitions") {
        None | Some(Value::Null) => None,
        Some(_) if !per_word => {
            return Err(ValidationError::new(
                "params.reduce_partitions",
                "only with `per_word`: the other results are not keyed",
            ))
        }
        Some(_) => Some(r.integer(
            "reduce_partitions",
            1,
            u64::from(keyed::MAX_PARTITIONS),
            None,
        )? as u32),
    };
    let normalized = r.finish()?;
    Ok((
        Params {
            input,
            per_word,
            contains,
            reduce_partitions,
        },
        normalized,
    ))
}

impl JobType for Wordcount {
    fn name(&self) -> &'static str {
        "wordcount"
    }

    /// 2: `per_word` is a keyed result (a summary and sorted objects).
    fn flow_version(&self) -> u32 {
        2
    }

    fn normalize(&self, params: &Value) -> Result<Value, ValidationError> {
        read(params).map(|(_, normalized)| normalized)
    }

    fn params_schema(&self) -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "description": "Count the words of N synthetic messages \"{text} {i}\" (the paper's experiment), or of the lines of the objects under a blob-store prefix (input).",
            "oneOf": [{"required": ["messages"]}, {"required": ["input"]}],
            "properties": {
                "messages": {"type": "integer", "minimum": 1, "maximum": MAX_MESSAGES,
                    "description": "Number of synthetic messages (this or input)", "examples": [2000]},
                "text": {"type": "string", "maxLength": 1000, "default": DEFAULT_TEXT,
                    "description": "Message text; message i is \"{text} {i}\""},
                "partition_size": {"type": "integer", "minimum": 1, "maximum": 100_000,
                    "default": DEFAULT_PARTITION_SIZE, "description": "Messages per queue message"},
                "input": {"type": "string", "maxLength": 1024,
                    "description": "Count the lines of the objects under this blob-store prefix instead (not with messages, text or partition_size)",
                    "examples": ["text/"]},
                "range_bytes": {"type": "integer", "minimum": MIN_RANGE_BYTES, "maximum": MAX_RANGE_BYTES,
                    "default": DEFAULT_RANGE_BYTES, "description": "With input: bytes per partition"},
                "per_word": {"type": "boolean", "default": false, "description": "Also count each word (a keyed result of any size)"},
                "reduce_partitions": {"type": "integer", "minimum": 1, "maximum": keyed::MAX_PARTITIONS,
                    "description": "With per_word: the shuffle's reduce partitions (default: sized from the input)"},
                "contains": {"type": "string", "maxLength": 100,
                    "description": "Keep only messages containing this text"},
            },
        })
    }

    fn flow(&self, params: &Value) -> Result<Flow, ValidationError> {
        let (p, _) = read(params)?;
        // The stages keep the paper's names (their queues are `…-feed`, `…-filter`, …);
        // the functions are by role, and the filter and count stages share `transform`.
        let stage = |name: &str, function: Function, component, step| Stage {
            name: name.to_owned(),
            function,
            component,
            step,
        };
        let vocabulary = match (&p.input, p.reduce_partitions) {
            (_, Some(r)) => keyed::ExpectedKeys::Partitions(r),
            (Input::Synthetic(s), None) => {
                keyed::ExpectedKeys::AtMost(s.text.split_whitespace().count() as u64)
            }
            (Input::Blobs { .. }, None) => keyed::ExpectedKeys::TextVocabulary,
        };
        let (size, component, source): (u64, _, Step) = match p.input {
            Input::Synthetic(source) => (
                source.messages,
                "synthetic-text",
                Step::Source(Arc::new(source)),
            ),
            // The line count is unknown until the source is planned: static policies get the
            // least concurrency (2 per stage), and a range is a few MiB of work already.
            Input::Blobs {
                prefix,
                range_bytes,
            } => (
                1,
                "blob-lines",
                Step::Source(Arc::new(BlobLines {
                    prefixes: vec![prefix],
                    range_bytes,
                    by_reference: true,
                    ..BlobLines::new(Vec::new())
                })),
            ),
        };
        let flow = Flow {
            size,
            stages: vec![
                stage("feed", Function::Source, component, source),
                stage(
                    "filter",
                    Function::Transform,
                    "filter",
                    Step::Transform(Arc::new(Filter {
                        contains: p.contains,
                    })),
                ),
                stage(
                    "count",
                    Function::Transform,
                    "word-count",
                    Step::Transform(Arc::new(WordCount {
                        per_word: p.per_word,
                    })),
                ),
                stage(
                    "reduce",
                    Function::Reduce,
                    "sum",
                    Step::Reduce(Arc::new(Sum)),
                ),
            ],
            keyed: None,
        };
        Ok(if p.per_word {
            flow.keyed(per_word_spec(vocabulary))
        } else {
            flow
        })
    }
}

/// `per_word` is keyed: a count per word, summed.
pub fn per_word_spec(expected_keys: keyed::ExpectedKeys) -> keyed::Spec {
    keyed::Spec {
        fields: vec![keyed::Field {
            name: "per_word".into(),
            op: keyed::Op::Sum,
            top_per_group: None,
        }],
        expected_keys,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(params: Value, field: &str) {
        let err = Wordcount.normalize(&params).unwrap_err();
        assert_eq!(err.field, field, "{params}: {err}");
    }

    #[test]
    fn validation_names_the_field() {
        check(json!({}), "params.messages");
        check(json!({"messages": 0}), "params.messages");
        check(json!({"messages": 100_000_001u64}), "params.messages");
        check(json!({"messages": -5}), "params.messages");
        check(json!({"messages": 1.5}), "params.messages");
        check(json!({"messages": "10"}), "params.messages");
        check(json!({"messages": 10, "text": 5}), "params.text");
        check(json!({"messages": 10, "text": ""}), "params.text");
        check(
            json!({"messages": 10, "partition_size": 0}),
            "params.partition_size",
        );
        check(
            json!({"messages": 10, "per_word": "yes"}),
            "params.per_word",
        );
        check(json!({"messages": 10, "limit": 3}), "params.limit");
        check(json!(7), "params");
        check(json!({"input": "text/", "messages": 5}), "params.messages");
        check(json!({"input": "text/", "text": "x"}), "params.text");
        check(json!({"input": ""}), "params.input");
        check(json!({"input": 3}), "params.input");
        check(
            json!({"input": "t/", "range_bytes": 10}),
            "params.range_bytes",
        );
        check(
            json!({"messages": 10, "reduce_partitions": 4}),
            "params.reduce_partitions",
        );
        check(
            json!({"messages": 10, "per_word": true, "reduce_partitions": 0}),
            "params.reduce_partitions",
        );
        check(
            json!({"messages": 10, "per_word": true, "reduce_partitions": 257}),
            "params.reduce_partitions",
        );
    }

    #[test]
    fn blob_input_reads_by_reference() {
        let n = Wordcount.normalize(&json!({"input": "text/"})).unwrap();
        assert_eq!(
            n,
            json!({"input": "text/", "range_bytes": DEFAULT_RANGE_BYTES, "per_word": false})
        );
        let flow = Wordcount.flow(&n).unwrap();
        assert_eq!(flow.stages[0].component, "blob-lines");
    }

    #[test]
    fn normalizes_with_defaults() {
        let n = Wordcount.normalize(&json!({"messages": 3})).unwrap();
        assert_eq!(
            n,
            json!({"messages": 3, "text": DEFAULT_TEXT, "partition_size": 100, "per_word": false})
        );
        let flow = Wordcount.flow(&n).unwrap();
        let names: Vec<_> = flow.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["feed", "filter", "count", "reduce"]);
        assert!(flow.source().is_some() && flow.reduce().is_some());
    }
}
