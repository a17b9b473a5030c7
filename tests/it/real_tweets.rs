//! The README's "what counts" for fire-tweets as a plain loop over lines with serde_json
//! ([`expected`]: the oracle `tweets.rs` checks generated days with too), and the real sample
//! (`../shared/data/real-tweets`, 4,106 objects from public fixtures, never copied into the
//! project) counted by fire-tweets' transform and by the loop: they must agree. Skipped, with
//! a notice, where the sample is absent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use orchestration::components::{Transform, TweetMatch};
use orchestration::tweets::{Day, Keywords};
use serde_json::{json, Map, Value};

fn sample_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/real-tweets");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "NOTICE: {} is absent; the real-tweet tests are skipped",
            dir.display()
        );
        None
    }
}

fn sample_files(dir: &PathBuf) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

const NOTICES: [&str; 12] = [
    "delete",
    "scrub_geo",
    "limit",
    "status_withheld",
    "user_withheld",
    "disconnect",
    "warning",
    "friends",
    "friends_str",
    "event",
    "control",
    "direct_message",
];

/// "Thu Nov 01 12:34:56 +0000 2018" → a sortable (y, m, d, secs of day), written out here.
pub fn created(s: &str) -> Option<(i64, i64, i64, i64)> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let f: Vec<&str> = s.split(' ').collect();
    if f.len() != 6 || f[4] != "+0000" || f[2].len() != 2 || !DAYS.contains(&f[0]) {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == f[1])? as i64 + 1;
    let hms: Vec<i64> = f[3]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || f[3].len() != 8 || f[5].len() != 4 {
        return None;
    }
    Some((
        f[5].parse().ok()?,
        month,
        f[2].parse().ok()?,
        hms[0] * 3600 + hms[1] * 60 + hms[2],
    ))
}

fn decode_html(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn words(lower: &str) -> Vec<&str> {
    lower
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// One-word keywords (`fire`) and hashtags (`#fire`), matched as the README says.
fn matches(keywords: &[&str], text: &str, tags: &[String]) -> bool {
    let lower = text.to_lowercase();
    let ws = words(&lower);
    keywords.iter().any(|k| match k.strip_prefix('#') {
        Some(tag) => {
            tags.iter().any(|t| t == tag)
                || lower.match_indices(&format!("#{tag}")).any(|(at, m)| {
                    let before = lower[..at].chars().next_back();
                    let after = lower[at + m.len()..].chars().next();
                    let w = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                    !w(before) && !w(after)
                })
        }
        None => ws.contains(k) || tags.iter().any(|t| t == k),
    })
}

/// The folder a line was read from: its day, the calendar day before, and whether that one
/// is in the range (then its late tweets here count).
pub struct Folder {
    pub day: (i64, i64, i64),
    pub before: (i64, i64, i64),
    pub before_in_range: bool,
}

/// The plain loop: every line with serde_json, the README's rules one by one. With a folder,
/// a tweet counts when created on its day (or the day before, within the range); without
/// one, whatever its date. (It does not read a folder after the range.)
pub fn expected<'l>(
    lines: impl IntoIterator<Item = (&'l str, Option<&'l Folder>)>,
    country: &str,
    keywords: &[&str],
    retweets: bool,
) -> Value {
    let mut c: BTreeMap<&str, u64> = BTreeMap::new();
    let mut cities: BTreeMap<String, u64> = BTreeMap::new();
    let mut notices: BTreeMap<String, u64> = BTreeMap::new();
    let mut unattributed: BTreeMap<String, u64> = BTreeMap::new();
    for (line, folder) in lines {
        if line.trim().is_empty() {
            *notices.entry("keep-alive".into()).or_default() += 1;
            continue;
        }
        let Ok(Value::Object(t)) = serde_json::from_str::<Value>(line) else {
            *c.entry("malformed_lines").or_default() += 1;
            continue;
        };
        let text_of = |s: &Map<String, Value>| -> Option<(String, bool)> {
            if let Some(x) = s
                .get("extended_tweet")
                .and_then(|e| e["full_text"].as_str())
            {
                return Some((x.to_owned(), true));
            }
            s.get("full_text")
                .and_then(Value::as_str)
                .or_else(|| s.get("text").and_then(Value::as_str))
                .map(|x| (x.to_owned(), false))
        };
        let date = t
            .get("created_at")
            .and_then(Value::as_str)
            .and_then(created);
        if date.is_none() || text_of(&t).is_none() {
            match NOTICES.iter().find(|k| t.contains_key(**k)) {
                Some(kind) if date.is_none() => *notices.entry((*kind).into()).or_default() += 1,
                _ => *c.entry("malformed_lines").or_default() += 1,
            }
            continue;
        }
        *c.entry("tweets_scanned").or_default() += 1;
        if let (Some(f), Some((y, m, d, _))) = (folder, date) {
            let on = (y, m, d);
            if on != f.day && !(on == f.before && f.before_in_range) {
                if on != f.before {
                    *c.entry("tweets_outside_range").or_default() += 1;
                }
                continue;
            }
        }
        let original = t
            .get("retweeted_status")
            .and_then(Value::as_object)
            .filter(|rt| text_of(rt).is_some());
        let status = original.unwrap_or(&t);
        let (text, extended) = text_of(status).unwrap();
        let truncated = status.get("truncated") == Some(&Value::Bool(true));
        let has_full = status.get("full_text").is_some_and(Value::is_string)
            || status
                .get("extended_tweet")
                .is_some_and(|e| e["full_text"].is_string());
        if truncated && !has_full {
            *c.entry("truncated_without_full_text").or_default() += 1;
        }
        let place = t.get("place").cloned().unwrap_or(Value::Null);
        if place["country_code"] != country {
            continue;
        }
        *c.entry("tweets_in_country").or_default() += 1;
        let entities = if extended {
            &status["extended_tweet"]["entities"]
        } else {
            status.get("entities").unwrap_or(&Value::Null)
        };
        let tags: Vec<String> = entities["hashtags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h["text"].as_str())
                    .map(str::to_lowercase)
                    .collect()
            })
            .unwrap_or_default();
        if !matches(keywords, &decode_html(&text), &tags) {
            continue;
        }
        if original.is_some() {
            *c.entry("matching_retweets").or_default() += 1;
            if !retweets {
                continue;
            }
        }
        *c.entry("matching").or_default() += 1;
        if place["place_type"] == "city" {
            let name = place["full_name"]
                .as_str()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or("(unnamed place)");
            *cities.entry(name.to_owned()).or_default() += 1;
        } else {
            let kind = place["place_type"].as_str().unwrap_or("(no type)");
            *unattributed.entry(kind.to_owned()).or_default() += 1;
        }
    }
    let n = |k: &str| c.get(k).copied().unwrap_or(0);
    json!({
        "cities": cities,
        "matching": n("matching"),
        "matching_retweets": n("matching_retweets"),
        "tweets_in_country": n("tweets_in_country"),
        "tweets_scanned": n("tweets_scanned"),
        "tweets_outside_range": n("tweets_outside_range"),
        "malformed_lines": n("malformed_lines"),
        "notices": notices,
        "unattributed": unattributed,
        "truncated_without_full_text": n("truncated_without_full_text"),
        "missing_days": {},
    })
}

fn matcher(country: &str, keywords: &[&str], retweets: bool) -> TweetMatch {
    let from: Day = "2006-03-21".parse().unwrap();
    TweetMatch {
        country: country.into(),
        from,
        to: "2030-12-31".parse().unwrap(),
        keywords: Keywords::new(keywords).unwrap(),
        include_retweets: retweets,
        day_of_prefix: BTreeMap::new(),
    }
}

/// Sums partials as the `sum` reduce does (numbers add, objects merge).
fn add(acc: &mut Value, partial: &Value) {
    match (acc, partial) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                let slot = a.entry(k.clone()).or_insert_with(|| match v {
                    Value::Object(_) => json!({}),
                    _ => json!(0),
                });
                add(slot, v);
            }
        }
        (a, b) => *a = json!(a.as_u64().unwrap() + b.as_u64().unwrap()),
    }
}

#[test]
fn the_real_sample_is_counted_as_documented() {
    let Some(dir) = sample_dir() else {
        return;
    };
    let files = sample_files(&dir);
    assert!(files.len() >= 5, "{files:?}");
    let mut all_lines = Vec::new();
    let cases: [(&str, &[&str], bool); 5] = [
        ("US", &["fire", "#fire", "the", "a", "i"], true),
        ("US", &["love", "#nba", "rt"], false),
        ("GB", &["london", "the"], true),
        ("CA", &["a", "#canada"], true),
        ("MX", &["de", "que"], true),
    ];
    let mut totals: Vec<Value> = cases.iter().map(|_| json!({})).collect();
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        all_lines.extend(text.lines().map(str::to_owned));
        for ((country, keywords, retweets), total) in cases.iter().zip(&mut totals) {
            let m = matcher(country, keywords, *retweets);
            // By reference (the bytes, in place) and by value (JSON lines) agree.
            let by_text = m.apply_text(&bytes, &Map::new()).unwrap().unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let by_lines = m.apply(json!({ "lines": lines })).unwrap();
            assert_eq!(by_text, by_lines, "{}", file.display());
            add(total, &by_text);
        }
    }
    assert_eq!(all_lines.len(), 4_106);
    for ((country, keywords, retweets), got) in cases.iter().zip(&totals) {
        let lines = all_lines.iter().map(|l| (l.as_str(), None));
        let want = expected(lines, country, keywords, *retweets);
        assert_eq!(got, &want, "{country} {keywords:?} retweets={retweets}");
    }
    // Every stream notice is a notice, none malformed: the sample's 23, by kind.
    let got = &totals[0];
    assert_eq!(
        got["notices"],
        json!({"delete": 14, "limit": 3, "friends": 3, "warning": 2, "scrub_geo": 1}),
        "{got}"
    );
    assert_eq!(got["malformed_lines"], 0, "{got}");
    // The shapes the semantics are about do occur in the sample.
    let sum = |f: &dyn Fn(&Value) -> u64| totals.iter().map(f).sum::<u64>();
    assert!(sum(&|t| t["unattributed"]["admin"].as_u64().unwrap_or(0)) > 0);

    // No retweet in the sample has a place: to count retweets by country, every tweet is
    // given one (in memory), and both counts run again on the real texts.
    let placed: Vec<String> = all_lines
        .iter()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(mut t)) if t.contains_key("created_at") => {
                t.insert(
                    "place".into(),
                    json!({"country_code": "US", "place_type": "city", "full_name": "Here, US"}),
                );
                Value::Object(t).to_string()
            }
            _ => l.clone(),
        })
        .collect();
    let keywords: &[&str] = &["the", "#rstats", "love", "fire"];
    for retweets in [true, false] {
        let m = matcher("US", keywords, retweets);
        let text = placed.join("\n");
        let got = m.apply_text(text.as_bytes(), &Map::new()).unwrap().unwrap();
        let lines = placed.iter().map(|l| (l.as_str(), None));
        assert_eq!(
            got,
            expected(lines, "US", keywords, retweets),
            "retweets={retweets}"
        );
        let n = |k: &str| got[k].as_u64().unwrap();
        assert!(n("matching_retweets") > 20, "{got}");
        if !retweets {
            assert_eq!(
                n("matching"),
                got["cities"]["Here, US"].as_u64().unwrap_or(0)
            );
        }
    }
    assert!(
        got["truncated_without_full_text"].as_u64().unwrap() > 0,
        "{got}"
    );
    let cities = got["cities"].as_object().unwrap();
    assert!(cities.keys().all(|k| k.contains(", ")), "{cities:?}");
}
