//! `fire-tweets`: the paper's motivating application. Counts, per city, the tweets from one
//! country in a range of days that mention a fire (or any other keywords).
//!
//! The flow: `blob-lines` over `tweets/{day}/` for each day and the day after (for tweets
//! filed late), by reference → `tweet-match` (read the needed fields, filter, count per city)
//! → `sum`. Nothing here is engine code: a parameter schema, and a flow of components.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::components::blob_lines::{DEFAULT_RANGE_BYTES, MAX_RANGE_BYTES, MIN_RANGE_BYTES};
use crate::components::{BlobLines, Sum, TweetMatch};
use crate::flow::{Flow, Function, JobType, Stage, Step};
use crate::job::{JobRequest, ParamReader, ValidationError};
use crate::keyed;
use crate::tweets::matching::{MAX_KEYWORDS, MAX_KEYWORD_CHARS};
use crate::tweets::{day_prefix, Day, Keywords};

pub const DEFAULT_KEYWORDS: [&str; 4] = ["fire", "fire truck", "fire engine", "#fire"];
/// The longest range, in days (a leap year).
pub const MAX_DAYS: i64 = 366;

pub struct FireTweets;

/// Validated parameters.
#[derive(Clone, Debug)]
pub struct Params {
    pub country: String,
    pub from: Day,
    pub to: Day,
    pub keywords: Keywords,
    pub partition_bytes: u64,
    pub include_retweets: bool,
    pub allow_missing_days: bool,
}

impl Params {
    pub fn days(&self) -> impl Iterator<Item = Day> {
        Day::range(self.from, self.to)
    }
}

fn day(r: &mut ParamReader<'_>, name: &'static str) -> Result<Day, ValidationError> {
    let s = r
        .string(name, 10, None)?
        .ok_or_else(|| ValidationError::new(format!("params.{name}"), "is required"))?;
    s.parse().map_err(|e: crate::tweets::DateError| {
        ValidationError::new(format!("params.{name}"), e.to_string())
    })
}

/// Reads and checks the params; returns them with their normalized form (the job's
/// identity): country, dates, keywords lowercased, deduplicated and sorted.
pub fn read(params: &Value) -> Result<(Params, Value), ValidationError> {
    let mut r = ParamReader::new(params)?;
    let country = r
        .string("country", 2, None)?
        .ok_or_else(|| ValidationError::new("params.country", "is required"))?;
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ValidationError::new(
            "params.country",
            format!("must be an ISO 3166-1 alpha-2 code: two uppercase letters like GB, got `{country}`"),
        ));
    }
    let from = day(&mut r, "from")?;
    let to = day(&mut r, "to")?;
    if to < from {
        return Err(ValidationError::new(
            "params.to",
            format!("must not be before `from` ({from}), got {to}"),
        ));
    }
    let days = from.days_until(to) + 1;
    if days > MAX_DAYS {
        return Err(ValidationError::new(
            "params.to",
            format!("the range may span at most {MAX_DAYS} days, got {days}"),
        ));
    }
    let keywords = r
        .string_list(
            "keywords",
            MAX_KEYWORDS,
            MAX_KEYWORD_CHARS,
            Some(&DEFAULT_KEYWORDS),
        )?
        .unwrap_or_default();
    let keywords = Keywords::new(&keywords)
        .map_err(|e| ValidationError::new("params.keywords", e.to_string()))?;
    let partition_bytes = r.integer(
        "partition_bytes",
        MIN_RANGE_BYTES,
        MAX_RANGE_BYTES,
        Some(DEFAULT_RANGE_BYTES),
    )?;
    let include_retweets = r.boolean("include_retweets", true)?;
    let allow_missing_days = r.boolean("allow_missing_days", false)?;
    let mut normalized = r.finish()?;
    normalized["keywords"] = Value::from(keywords.normalized());
    Ok((
        Params {
            country,
            from,
            to,
            keywords,
            partition_bytes,
            include_retweets,
            allow_missing_days,
        },
        normalized,
    ))
}

impl JobType for FireTweets {
    fn name(&self) -> &'static str {
        "fire-tweets"
    }

    /// 2: `cities` is a keyed result (a summary and sorted objects).
    /// 3: real-data semantics: notices, retweets on their full text, cities by full name and
    /// city places only, HTML entities decoded, late tweets from the next day's folder,
    /// missing days named.
    fn flow_version(&self) -> u32 {
        3
    }

    fn normalize(&self, params: &Value) -> Result<Value, ValidationError> {
        read(params).map(|(_, normalized)| normalized)
    }

    fn params_schema(&self) -> Value {
        serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "description": "Count, per city, the tweets from a country in a range of days that mention a fire (reads tweets/YYYY-MM-DD/ for each day; `sluice gen tweets` writes them).",
            "required": ["country", "from", "to"],
            "properties": {
                "country": {"type": "string", "minLength": 2, "maxLength": 2, "pattern": "^[A-Z]{2}$",
                    "description": "ISO 3166-1 alpha-2 country code: GB, IE, US...", "examples": ["GB"]},
                "from": {"type": "string", "format": "date", "description": "First day, YYYY-MM-DD",
                    "examples": ["2018-11-01"]},
                "to": {"type": "string", "format": "date",
                    "description": format!("Last day, YYYY-MM-DD (inclusive; at most {MAX_DAYS} days in all)"),
                    "examples": ["2018-11-03"]},
                "keywords": {"type": "array", "maxItems": MAX_KEYWORDS, "default": DEFAULT_KEYWORDS,
                    "items": {"type": "string", "minLength": 1, "maxLength": MAX_KEYWORD_CHARS},
                    "description": "Keywords or phrases, #tag for a hashtag"},
                "partition_bytes": {"type": "integer", "minimum": MIN_RANGE_BYTES, "maximum": MAX_RANGE_BYTES,
                    "default": DEFAULT_RANGE_BYTES, "description": "Input bytes per partition"},
                "include_retweets": {"type": "boolean", "default": true,
                    "description": "Count matching retweets (matched on the retweeted status's full text; reported apart as matching_retweets either way)"},
                "allow_missing_days": {"type": "boolean", "default": false,
                    "description": "Count a day without data as empty (named in missing_days) instead of failing the job"},
            },
        })
    }

    /// A range of days is the merge of one job per day: each day's result is cached under
    /// its own id, so an overlapping range computes only the days it does not share.
    fn parts(&self, params: &Value) -> Result<Option<Vec<JobRequest>>, ValidationError> {
        let (p, normalized) = read(params)?;
        if p.from == p.to {
            return Ok(None);
        }
        let part = |day: Day| {
            let mut params = normalized.clone();
            params["from"] = Value::String(day.to_string());
            params["to"] = Value::String(day.to_string());
            JobRequest {
                job_type: self.name().to_owned(),
                params,
            }
        };
        Ok(Some(p.days().map(part).collect()))
    }

    fn flow(&self, params: &Value) -> Result<Flow, ValidationError> {
        let (p, _) = read(params)?;
        let mut day_of_prefix: BTreeMap<String, Day> =
            p.days().map(|d| (day_prefix(d), d)).collect();
        let days = day_of_prefix.len() as u64;
        let prefixes: Vec<String> = day_of_prefix.keys().cloned().collect();
        // The day after the range: its folder holds the last day's tweets filed late.
        let next = day_prefix(p.to.plus(1));
        day_of_prefix.insert(next.clone(), p.to.plus(1));
        let stage = |function: Function, name: &str, component, step| Stage {
            name: name.to_owned(),
            function,
            component,
            step,
        };
        Ok(Flow {
            // The record count is unknown until the source is planned, so static policies
            // scale with the days: ceil(days / M) concurrent invocations per stage, which
            // keeps the few-MiB partitions in flight (and in memory) few.
            size: days,
            stages: vec![
                stage(
                    Function::Source,
                    "feed",
                    "blob-lines",
                    // By reference: the match stage reads each range's bytes in place.
                    Step::Source(Arc::new(BlobLines {
                        by_reference: true,
                        prefixes,
                        optional_prefixes: vec![next],
                        range_bytes: p.partition_bytes,
                        allow_empty: p.allow_missing_days,
                    })),
                ),
                stage(
                    Function::Transform,
                    "match",
                    "tweet-match",
                    Step::Transform(Arc::new(TweetMatch {
                        country: p.country,
                        from: p.from,
                        to: p.to,
                        keywords: p.keywords,
                        include_retweets: p.include_retweets,
                        day_of_prefix,
                    })),
                ),
                stage(
                    Function::Reduce,
                    "reduce",
                    "sum",
                    Step::Reduce(Arc::new(Sum)),
                ),
            ],
            keyed: None,
        }
        .keyed(cities_spec()))
    }
}

/// `cities` is keyed: counts per city, shuffled and merged like any keyed result (a few
/// hundred cities at most: one reduce partition).
pub fn cities_spec() -> keyed::Spec {
    keyed::Spec {
        fields: vec![keyed::Field {
            name: "cities".into(),
            op: keyed::Op::Sum,
            top_per_group: None,
        }],
        expected_keys: keyed::ExpectedKeys::AtMost(10_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(params: Value, field: &str) {
        let err = FireTweets.normalize(&params).unwrap_err();
        assert_eq!(err.field, field, "{params}: {err}");
    }

    fn ok() -> Value {
        json!({"country": "GB", "from": "2018-11-01", "to": "2018-11-03"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut p = ok();
        p[key] = value;
        p
    }

    #[test]
    fn validation_names_the_field() {
        check(
            json!({"from": "2018-11-01", "to": "2018-11-01"}),
            "params.country",
        );
        for bad in [
            json!("gb"),
            json!("GBR"),
            json!("G"),
            json!("G1"),
            json!(44),
            json!("ÉE"),
        ] {
            check(with("country", bad), "params.country");
        }
        check(json!({"country": "GB", "to": "2018-11-01"}), "params.from");
        for bad in [
            json!("2018-11-1"),
            json!("2018-02-30"),
            json!("01/11/2018"),
            json!(20181101),
        ] {
            check(with("from", bad.clone()), "params.from");
            check(with("to", bad), "params.to");
        }
        check(with("to", json!("2018-10-31")), "params.to");
        check(with("to", json!("2019-11-02")), "params.to");
        assert!(FireTweets
            .normalize(&with("to", json!("2019-11-01")))
            .is_ok());
        check(with("keywords", json!([])), "params.keywords");
        check(with("keywords", json!("fire")), "params.keywords");
        check(with("keywords", json!(["fire", 3])), "params.keywords[1]");
        check(with("keywords", json!(["!!"])), "params.keywords");
        check(with("keywords", json!(["#two words"])), "params.keywords");
        check(with("keywords", json!(vec!["a"; 51])), "params.keywords");
        check(with("partition_bytes", json!(10)), "params.partition_bytes");
        check(
            with("include_retweets", json!("no")),
            "params.include_retweets",
        );
        check(
            with("allow_missing_days", json!(1)),
            "params.allow_missing_days",
        );
        check(with("limit", json!(3)), "params.limit");
        check(json!([]), "params");
    }

    #[test]
    fn normalizes_keywords_and_defaults() {
        let n = FireTweets.normalize(&ok()).unwrap();
        assert_eq!(
            n,
            json!({"country": "GB", "from": "2018-11-01", "to": "2018-11-03",
                   "keywords": ["#fire", "fire", "fire engine", "fire truck"],
                   "partition_bytes": DEFAULT_RANGE_BYTES, "include_retweets": true,
                   "allow_missing_days": false})
        );
        // Same keywords in another order and case: the same job.
        let again = FireTweets
            .normalize(&with(
                "keywords",
                json!(["#FIRE", "Fire Truck", "fire  engine", "fire", "FIRE"]),
            ))
            .unwrap();
        assert_eq!(again, n);

        let flow = FireTweets.flow(&n).unwrap();
        let names: Vec<_> = flow
            .stages
            .iter()
            .map(|s| (s.name.as_str(), s.component))
            .collect();
        assert_eq!(
            names,
            [
                ("feed", "blob-lines"),
                ("match", "tweet-match"),
                ("reduce", "sum"),
                ("merge", "merge")
            ]
        );
        assert_eq!(flow.keyed, Some(cities_spec()));
        assert_eq!(flow.size, 3);
        assert!(flow.source().is_some() && flow.reduce().is_some());
    }
}
