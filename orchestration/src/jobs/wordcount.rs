//! `wordcount`: the paper's experiment. A synthetic feed of `messages` lines
//! `"{text} {i}"`, a filter, a word count, and a sum.

use std::sync::Arc;

use serde_json::Value;

use crate::components::{Filter, Sum, SyntheticText, WordCount};
use crate::flow::{Flow, Function, JobType, Stage, Step};
use crate::job::{ParamReader, ValidationError};

pub const DEFAULT_TEXT: &str = "the quick brown fox";
/// Messages per queue message. 100 keeps a 2,000-message job parallel (20 partitions)
/// while a 10^6-message job needs only 10^4 queue messages per stage.
pub const DEFAULT_PARTITION_SIZE: u64 = 100;
pub const MAX_MESSAGES: u64 = 100_000_000;

pub struct Wordcount;

struct Params {
    messages: u64,
    text: String,
    partition_size: u64,
    per_word: bool,
    contains: Option<String>,
}

fn read(params: &Value) -> Result<(Params, Value), ValidationError> {
    let mut r = ParamReader::new(params)?;
    let messages = r.integer("messages", 1, MAX_MESSAGES, None)?;
    let text = r
        .string("text", 1_000, Some(DEFAULT_TEXT))?
        .unwrap_or_default();
    let partition_size = r.integer("partition_size", 1, 100_000, Some(DEFAULT_PARTITION_SIZE))?;
    let per_word = r.boolean("per_word", false)?;
    let contains = r.string("contains", 100, None)?;
    let normalized = r.finish()?;
    Ok((
        Params {
            messages,
            text,
            partition_size,
            per_word,
            contains,
        },
        normalized,
    ))
}

impl JobType for Wordcount {
    fn name(&self) -> &'static str {
        "wordcount"
    }

    fn flow_version(&self) -> u32 {
        1
    }

    fn normalize(&self, params: &Value) -> Result<Value, ValidationError> {
        read(params).map(|(_, normalized)| normalized)
    }

    fn flow(&self, params: &Value) -> Result<Flow, ValidationError> {
        let (p, _) = read(params)?;
        let stage = |function: Function, component, step| Stage {
            name: function.as_str().to_owned(),
            function,
            component,
            step,
        };
        Ok(Flow {
            size: p.messages,
            stages: vec![
                stage(
                    Function::Feed,
                    "synthetic-text",
                    Step::Source(Arc::new(SyntheticText {
                        messages: p.messages,
                        text: p.text,
                        partition_size: p.partition_size,
                    })),
                ),
                stage(
                    Function::Filter,
                    "filter",
                    Step::Transform(Arc::new(Filter {
                        contains: p.contains,
                    })),
                ),
                stage(
                    Function::Count,
                    "word-count",
                    Step::Transform(Arc::new(WordCount {
                        per_word: p.per_word,
                    })),
                ),
                stage(Function::Reduce, "sum", Step::Reduce(Arc::new(Sum))),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
