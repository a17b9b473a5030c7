//! `tweet-match`: reads each line as a tweet and counts, per city, the tweets from one
//! country, created within the days asked for, that match a keyword list. What counts is
//! the README's "fire-tweets: what counts"; in short:
//!
//! - Stream notices (`delete`, `limit`, ...) and blank keep-alive lines are `notices`, by
//!   kind; lines that are neither tweets nor notices are `malformed_lines`. Bad input never
//!   fails the partition.
//! - A retweet is matched on its retweeted status's full text; matching retweets are also
//!   counted apart (`matching_retweets`), and left out of the counts when
//!   `include_retweets` is false.
//! - Only `city` places are cities, keyed by `place.full_name`; a matching tweet with another
//!   place type counts in `unattributed`, by type.
//! - Texts are matched with their HTML entities (`&amp;`, `&lt;`, `&gt;`) decoded.
//!   `truncated_without_full_text` counts tweets whose text was cut and that carry no full text.
//! - A day's folder holds tweets created that day and, filed late, the day before: a tweet in
//!   folder F counts when created on F or F-1 within the range. So the folder after the range
//!   is read too, for its late tweets only (a SIMD search for the date finds their lines), and
//!   a range is exactly the sum of its days. A tweet created on any other day is
//!   `tweets_outside_range`.
//! - A payload `{"empty": true, "prefix": ...}` is a day without data (`blob-lines` with
//!   `allow_empty`): the day is named in `missing_days`.
//!
//! The output is a partial for `sum` (`cities` is the flow's keyed field):
//!
//! ```json
//! {"cities": {"Leeds, England": 2}, "matching": 2, "matching_retweets": 0,
//!  "tweets_in_country": 310, "tweets_scanned": 1000, "tweets_outside_range": 0,
//!  "malformed_lines": 1, "notices": {"delete": 7}, "unattributed": {"admin": 1},
//!  "truncated_without_full_text": 0, "missing_days": {}}
//! ```

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::blob_lines::MAX_LINE_BYTES;
use super::filter::lines;
use super::{ComponentError, Transform};
use crate::jsonl::Fields;
use crate::tweets::calendar::{twitter_timestamp, FolderWindow};
use crate::tweets::matching::Needles;
use crate::tweets::{self, Day, Keywords, Line, Prefilter, TweetReader};

/// The city key of a matching tweet whose city place has no full name.
pub const UNNAMED_PLACE: &str = "(unnamed place)";
/// The `unattributed` key of a matching tweet whose place has no type.
pub const NO_PLACE_TYPE: &str = "(no type)";

#[derive(Clone, Debug)]
pub struct TweetMatch {
    /// ISO 3166-1 alpha-2, compared with `place.country_code` exactly.
    pub country: String,
    pub from: Day,
    /// Inclusive.
    pub to: Day,
    pub keywords: Keywords,
    /// Whether matching retweets count (they are reported apart either way).
    pub include_retweets: bool,
    /// The day of each folder the source lists (`tweets/2018-11-01/` → 2018-11-01), the
    /// day after the range's included.
    pub day_of_prefix: BTreeMap<String, Day>,
}

#[derive(Default)]
struct Counts {
    cities: BTreeMap<String, u64>,
    matching: u64,
    matching_retweets: u64,
    in_country: u64,
    scanned: u64,
    outside_range: u64,
    malformed: u64,
    notices: BTreeMap<&'static str, u64>,
    unattributed: BTreeMap<String, u64>,
    truncated: u64,
    missing_days: BTreeMap<String, u64>,
}

/// How a partition's folder is read.
struct Folder {
    /// Unix seconds `[lo, hi)` a tweet here must be created in to count.
    window: (i64, i64),
    /// Unix seconds of the days a tweet here may be filed for (its own and the one before):
    /// one created outside them is misfiled. `None` when the folder is not known.
    filed_for: Option<(i64, i64)>,
    /// The folder after the range: only its late tweets are read, and nothing else about
    /// it is counted (it is that day's). Their lines hold one of these dates.
    late_only: Option<Needles>,
}

/// What counting one partition needs besides the lines: built once per partition.
struct Scan<'m> {
    m: &'m TweetMatch,
    reader: TweetReader,
    prefilter: Option<Prefilter>,
    /// The prefilter's lowercased line.
    scratch: Vec<u8>,
    folder: Folder,
    counts: Counts,
}

/// What a line whose `created_at` may fall on `day` holds: ` Nov 01 ` (the weekday is not
/// checked), or an offset other than `+0000` (Twitter writes none, but the format allows it,
/// and then the date shown may be another day's), or escaped ASCII (`\u0031`) that could
/// spell either. Every other line of a folder read for `day`'s late tweets is skipped unread.
pub(crate) fn late_needles(day: Day) -> Vec<String> {
    let date = &twitter_timestamp(day.start_secs())[3..11];
    let mut needles = vec![date.to_owned(), "\\u00".to_owned()];
    for d in 1..=9 {
        needles.push(format!(" +{d}"));
        needles.push(format!(" +0{d}"));
        needles.push(format!(" +00{d}"));
        needles.push(format!(" +000{d}"));
    }
    needles.extend((0..=9).map(|d| format!(" -{d}")));
    needles
}

impl TweetMatch {
    fn folder(&self, payload: &Map<String, Value>) -> Folder {
        let day = payload
            .get("prefix")
            .and_then(Value::as_str)
            .and_then(|p| self.day_of_prefix.get(p))
            .copied();
        let w = FolderWindow::new(self.from, self.to, day);
        Folder {
            window: w.window,
            filed_for: w.filed_for,
            late_only: if w.late_only {
                Needles::new(&late_needles(self.to))
            } else {
                None
            },
        }
    }

    fn scan(&self, payload: &Map<String, Value>) -> Scan<'_> {
        Scan {
            m: self,
            reader: TweetReader::new(),
            prefilter: self.keywords.prefilter(),
            scratch: Vec::new(),
            folder: self.folder(payload),
            counts: Counts::default(),
        }
    }
}

impl Scan<'_> {
    /// Counts one line. The hot loop: a line the prefilter rejects has only its date, place
    /// and truncation read, and nothing is allocated for it.
    fn line<'a>(&mut self, line: &'a [u8], fields: &mut Fields<'a>) {
        let c = &mut self.counts;
        let late_only = self.folder.late_only.as_ref();
        if late_only.is_some_and(|dates| !dates.is_match(line)) {
            return;
        }
        let created_at = match self.reader.read(line, fields) {
            Line::Tweet { created_at } => created_at,
            _ if late_only.is_some() => return,
            Line::Notice(kind) => {
                *c.notices.entry(kind).or_default() += 1;
                return;
            }
            Line::Malformed => {
                c.malformed += 1;
                return;
            }
        };
        let (lo, hi) = self.folder.window;
        let in_window = (lo..hi).contains(&created_at);
        if late_only.is_none() {
            c.scanned += 1;
            let misfiled = self
                .folder
                .filed_for
                .is_none_or(|(a, b)| !(a..b).contains(&created_at));
            if !in_window && misfiled {
                c.outside_range += 1;
            }
        }
        if !in_window {
            return;
        }
        if tweets::truncated_without_full_text(fields) {
            c.truncated += 1;
        }
        let place = tweets::place(fields);
        if place.country_code.as_deref() != Some(self.m.country.as_str()) {
            return;
        }
        c.in_country += 1;
        let scratch = &mut self.scratch;
        if self
            .prefilter
            .as_ref()
            .is_some_and(|p| !p.may_match(line, scratch))
        {
            return;
        }
        let Some(text) = tweets::text(fields) else {
            return;
        };
        if !self
            .m
            .keywords
            .matches(&tweets::decode_html(&text.text), &text.hashtags)
        {
            return;
        }
        if text.retweet {
            c.matching_retweets += 1;
            if !self.m.include_retweets {
                return;
            }
        }
        c.matching += 1;
        let (key, map) = if place.place_type.as_deref() == Some("city") {
            let name = place
                .full_name
                .as_deref()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or(UNNAMED_PLACE);
            (name, &mut c.cities)
        } else {
            let kind = place.place_type.as_deref().unwrap_or(NO_PLACE_TYPE);
            (kind, &mut c.unattributed)
        };
        match map.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                map.insert(key.to_owned(), 1);
            }
        }
    }

    fn output(self) -> Value {
        let c = self.counts;
        json!({
            "cities": c.cities,
            "matching": c.matching,
            "matching_retweets": c.matching_retweets,
            "tweets_in_country": c.in_country,
            "tweets_scanned": c.scanned,
            "tweets_outside_range": c.outside_range,
            "malformed_lines": c.malformed,
            "notices": c.notices,
            "unattributed": c.unattributed,
            "truncated_without_full_text": c.truncated,
            "missing_days": c.missing_days,
        })
    }
}

impl Transform for TweetMatch {
    fn apply(&self, payload: Value) -> Result<Value, ComponentError> {
        let fields = payload.as_object().cloned().unwrap_or_default();
        let mut scan = self.scan(&fields);
        let lines = lines(&payload)?;
        if payload.get("empty") == Some(&Value::Bool(true)) {
            let day = fields
                .get("prefix")
                .and_then(Value::as_str)
                .and_then(|p| self.day_of_prefix.get(p))
                .ok_or_else(|| ComponentError::Malformed("an empty prefix of no day".into()))?;
            scan.counts.missing_days.insert(day.to_string(), 1);
        }
        let mut slots = scan.reader.slots();
        for line in lines {
            // The source emits strings; anything else means the payload itself is broken.
            let line = line
                .as_str()
                .ok_or_else(|| ComponentError::Malformed("a line is not a string".into()))?;
            scan.line(line.as_bytes(), &mut slots);
        }
        Ok(scan.output())
    }

    /// The lines of a range read in place: each is cut as `blob-lines` cuts it (a `\r`
    /// before its `\n` dropped, at most `MAX_LINE_BYTES`), and none is copied. Bytes that
    /// are not UTF-8 are replaced where a string is decoded, as the lines path replaces them
    /// in the whole line (`jsonl::Raw::as_str`), so the two agree.
    fn apply_text(
        &self,
        text: &[u8],
        fields: &Map<String, Value>,
    ) -> Option<Result<Value, ComponentError>> {
        let mut scan = self.scan(fields);
        let mut slots = scan.reader.slots();
        let mut start = 0;
        let last = (!text.is_empty() && text.last() != Some(&b'\n')).then_some(text.len());
        for end in memchr::memchr_iter(b'\n', text).chain(last) {
            let raw = &text[start..end];
            start = end + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            scan.line(&raw[..raw.len().min(MAX_LINE_BYTES)], &mut slots);
        }
        Some(Ok(scan.output()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(country: &str, kind: &str, full_name: &str) -> Value {
        json!({"country_code": country, "name": "x", "full_name": full_name, "place_type": kind})
    }

    fn tweet(created_at: &str, text: &str, place: Value, tags: &[&str]) -> String {
        let hashtags: Vec<Value> = tags
            .iter()
            .map(|t| json!({"text": t, "indices": [0, 1]}))
            .collect();
        json!({"created_at": created_at, "id_str": "1", "text": text, "place": place,
               "entities": {"hashtags": hashtags}})
        .to_string()
    }

    fn city(name: &str) -> Value {
        place("GB", "city", name)
    }

    fn matcher() -> TweetMatch {
        let from: Day = "2018-11-01".parse().unwrap();
        TweetMatch {
            country: "GB".into(),
            from,
            to: from.plus(1),
            keywords: Keywords::new(&["fire", "#fire", "fire truck", "fire rescue"]).unwrap(),
            include_retweets: true,
            day_of_prefix: [
                ("t/2018-11-01/".to_owned(), from),
                ("t/2018-11-02/".to_owned(), from.plus(1)),
                ("t/2018-11-03/".to_owned(), from.plus(2)),
            ]
            .into_iter()
            .collect(),
        }
    }

    const NOV1: &str = "Thu Nov 01 10:00:00 +0000 2018";
    const NOV2: &str = "Fri Nov 02 23:59:59 +0000 2018";
    const OCT31: &str = "Wed Oct 31 23:59:59 +0000 2018";
    const NOV3: &str = "Sat Nov 03 00:00:00 +0000 2018";

    fn both(m: &TweetMatch, lines: &[String], prefix: Option<&str>) -> Value {
        let mut payload = json!({ "lines": lines });
        let mut fields = Map::new();
        if let Some(p) = prefix {
            payload["prefix"] = json!(p);
            fields.insert("prefix".into(), json!(p));
        }
        let by_lines = m.apply(payload).unwrap();
        let text = lines.join("\n");
        let by_text = m.apply_text(text.as_bytes(), &fields).unwrap().unwrap();
        assert_eq!(by_lines, by_text, "{lines:?}");
        by_lines
    }

    #[test]
    fn counts_matching_tweets_per_city() {
        let retweet = json!({"created_at": NOV1, "text": "RT @a: nothing here…",
            "retweeted_status": {"text": "nothing here…", "truncated": true,
                "extended_tweet": {"full_text": "nothing here, then a fire"}},
            "place": city("Leeds, England"), "entities": {"hashtags": []}})
        .to_string();
        let lines = vec![
            tweet(NOV1, "Big fire!", city("Leeds, England"), &[]),
            tweet(NOV2, "look", city("Leeds, England"), &["FIRE"]),
            tweet(NOV1, "firefox again", city("York, England"), &["firefox"]),
            tweet(NOV1, "a fire", place("US", "city", "Birmingham, AL"), &[]),
            tweet(NOV1, "a fire", Value::Null, &[]),
            tweet(OCT31, "a fire", city("Leeds, England"), &[]),
            tweet(NOV3, "a fire", city("Leeds, England"), &[]),
            tweet(NOV1, "FIRE TRUCK", city(" "), &[]),
            tweet(
                NOV1,
                "Fire &amp; Rescue",
                place("GB", "admin", "England, United Kingdom"),
                &[],
            ),
            tweet(NOV1, "a fire", place("GB", "poi", "Leeds Station"), &[]),
            tweet(NOV1, "a fire", json!({"country_code": "GB"}), &[]),
            retweet.clone(),
            r#"{"created_at":"Thu Nov 01 10:00:00 +0000 2018","text":"cut…","truncated":true}"#
                .to_owned(),
            "{\"created_at\": \"Thu Nov 01".to_owned(),
            "".to_owned(),
            r#"{"delete":{"status":{"id":1}}}"#.to_owned(),
            "<html>".to_owned(),
        ];
        let m = matcher();
        assert_eq!(
            both(&m, &lines, None),
            json!({"cities": {"Leeds, England": 3, UNNAMED_PLACE: 1}, "matching": 7,
                   "matching_retweets": 1, "tweets_in_country": 8, "tweets_scanned": 13,
                   "tweets_outside_range": 2, "malformed_lines": 2,
                   "notices": {"delete": 1, "keep-alive": 1},
                   "unattributed": {"admin": 1, "poi": 1, NO_PLACE_TYPE: 1},
                   "truncated_without_full_text": 1, "missing_days": {}})
        );
        // Without retweets: reported apart, not counted.
        let without = TweetMatch {
            include_retweets: false,
            ..m
        };
        let out = both(&without, &[retweet], None);
        assert_eq!(
            (&out["matching"], &out["matching_retweets"], &out["cities"]),
            (&json!(0), &json!(1), &json!({}))
        );
    }

    #[test]
    fn a_days_folder_holds_that_days_tweets_and_the_next_its_late_ones() {
        let lines = vec![
            tweet(OCT31, "fire", city("Leeds"), &[]),
            tweet(NOV1, "fire", city("Leeds"), &[]),
            tweet(NOV2, "fire", city("Leeds"), &[]),
            tweet(NOV3, "fire", city("Leeds"), &[]),
            "junk".to_owned(),
            r#"{"delete":{}}"#.to_owned(),
        ];
        let m = matcher();
        let stats = |v: &Value| {
            [
                "matching",
                "tweets_scanned",
                "tweets_outside_range",
                "malformed_lines",
            ]
            .map(|k| v[k].as_u64().unwrap())
        };
        // Day 1's folder: its own tweet; Oct 31's is filed late (not ours, not misfiled);
        // Nov 2's and 3's are misfiled.
        let day1 = both(&m, &lines, Some("t/2018-11-01/"));
        assert_eq!(stats(&day1), [1, 4, 2, 1]);
        // Day 2's folder: Nov 1 (late) and Nov 2 both count; Oct 31 and Nov 3 are misfiled.
        let day2 = both(&m, &lines, Some("t/2018-11-02/"));
        assert_eq!(stats(&day2), [2, 4, 2, 1]);
        // The folder after the range: only the last day's late tweets, nothing else counted.
        let after = both(&m, &lines, Some("t/2018-11-03/"));
        assert_eq!(stats(&after), [1, 0, 0, 0]);
        assert_eq!(after["notices"], json!({}));
        // An unknown prefix (or none) falls back to the whole range.
        let other = both(&m, &lines, Some("x/"));
        assert_eq!(stats(&other), [2, 4, 2, 1]);
    }

    #[test]
    fn an_empty_day_is_named() {
        let out = matcher()
            .apply(json!({"lines": [], "prefix": "t/2018-11-02/", "empty": true}))
            .unwrap();
        assert_eq!(out["missing_days"], json!({"2018-11-02": 1}));
        assert!(matcher()
            .apply(json!({"lines": [], "prefix": "x/", "empty": true}))
            .is_err());
    }

    #[test]
    fn a_broken_payload_is_poison() {
        assert!(matches!(
            matcher().apply(json!({"rows": []})),
            Err(ComponentError::Malformed(_))
        ));
        assert!(matcher().apply(json!({"lines": [1]})).is_err());
        let empty = matcher().apply(json!({"lines": []})).unwrap();
        assert_eq!(empty["cities"], json!({}));
        assert_eq!(empty["tweets_scanned"], 0);
    }

    #[test]
    fn text_and_lines_agree_on_line_ends() {
        let m = matcher();
        let t = tweet(NOV1, "a fire", city("Leeds"), &[]);
        for text in [
            format!("{t}\r\n{t}\n"),
            format!("{t}\n\n{t}"),
            format!("\n{t}\r\n"),
            String::new(),
        ] {
            let by_text = m.apply_text(text.as_bytes(), &Map::new()).unwrap().unwrap();
            let region = crate::components::blob_lines::lines_payload(text.as_bytes(), Map::new());
            assert_eq!(by_text, m.apply(region).unwrap(), "{text:?}");
        }
        let bad = tweet(NOV1, "a fire \u{fffd}", city("Leeds"), &[]).replace('\u{fffd}', "\u{1}");
        let bad = bad.replace("\\u0001", "\u{1}").into_bytes();
        for text in [
            b"\xff\n".to_vec(),
            [&bad[..], b"\n"].concat(),
            bad.iter().map(|&b| if b == 1 { 0xff } else { b }).collect(),
        ] {
            let by_text = m.apply_text(&text, &Map::new()).unwrap().unwrap();
            let region = crate::components::blob_lines::lines_payload(&text, Map::new());
            assert_eq!(by_text, m.apply(region).unwrap(), "{text:?}");
        }
    }
}
