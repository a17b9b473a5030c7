//! `tweet-match`: reads each line as a tweet and counts, per city, the tweets from one
//! country, created within the days asked for, that match a keyword list.
//!
//! Lines that are not tweets are counted (`malformed_lines`) and skipped: bad input never
//! fails the partition. The output is a partial for `sum`:
//!
//! ```json
//! {"cities": {"Leeds": 2}, "matching": 2, "tweets_in_country": 310,
//!  "tweets_scanned": 1000, "tweets_outside_range": 0, "malformed_lines": 1}
//! ```
//!
//! A day's folder is read as that day: when the payload's `prefix` is one this transform
//! knows the day of, a tweet there counts only if it was created on that day (tweets filed
//! late under the next day are `tweets_outside_range`). So a range's result is exactly the
//! sum of its days' results, which is what lets a range be computed from cached days.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::filter::lines;
use super::{ComponentError, Transform};
use crate::tweets::{Day, Keywords, TweetView};

/// The city key of a matching tweet whose place has no name.
pub const UNNAMED_PLACE: &str = "(unnamed place)";

#[derive(Clone, Debug)]
pub struct TweetMatch {
    /// ISO 3166-1 alpha-2, compared with `place.country_code` exactly.
    pub country: String,
    pub from: Day,
    /// Inclusive.
    pub to: Day,
    pub keywords: Keywords,
    /// The day of each prefix the source lists (`tweets/2018-11-01/` → 2018-11-01).
    pub day_of_prefix: BTreeMap<String, Day>,
}

#[derive(Default)]
struct Counts {
    cities: BTreeMap<String, u64>,
    matching: u64,
    in_country: u64,
    scanned: u64,
    outside_range: u64,
    malformed: u64,
}

impl TweetMatch {
    /// Unix seconds `[lo, hi)` a tweet of this payload must be created in.
    fn window(&self, payload: &Value) -> (i64, i64) {
        let day = payload
            .get("prefix")
            .and_then(Value::as_str)
            .and_then(|p| self.day_of_prefix.get(p))
            .filter(|d| (self.from..=self.to).contains(d));
        match day {
            Some(d) => (d.start_secs(), d.plus(1).start_secs()),
            None => (self.from.start_secs(), self.to.plus(1).start_secs()),
        }
    }

    fn count(&self, line: &str, (lo, hi): (i64, i64), c: &mut Counts) {
        let Some(tweet) = TweetView::parse(line) else {
            c.malformed += 1;
            return;
        };
        c.scanned += 1;
        if !(lo..hi).contains(&tweet.created_at) {
            c.outside_range += 1;
            return;
        }
        let Some(place) = &tweet.place else {
            return;
        };
        if place.country_code.as_deref() != Some(self.country.as_str()) {
            return;
        }
        c.in_country += 1;
        if !self.keywords.matches(&tweet.text, &tweet.hashtags) {
            return;
        }
        c.matching += 1;
        let city = place
            .name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(UNNAMED_PLACE);
        *c.cities.entry(city.to_owned()).or_default() += 1;
    }
}

impl Transform for TweetMatch {
    fn apply(&self, payload: Value) -> Result<Value, ComponentError> {
        let window = self.window(&payload);
        let mut c = Counts::default();
        for line in lines(&payload)? {
            // The source emits strings; anything else means the payload itself is broken.
            let line = line
                .as_str()
                .ok_or_else(|| ComponentError::Malformed("a line is not a string".into()))?;
            self.count(line, window, &mut c);
        }
        Ok(json!({
            "cities": c.cities,
            "matching": c.matching,
            "tweets_in_country": c.in_country,
            "tweets_scanned": c.scanned,
            "tweets_outside_range": c.outside_range,
            "malformed_lines": c.malformed,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tweet(
        created_at: &str,
        text: &str,
        country: Option<&str>,
        city: &str,
        tags: &[&str],
    ) -> String {
        let place = match country {
            Some(cc) => {
                json!({"country_code": cc, "name": city, "full_name": format!("{city}, X"), "place_type": "city"})
            }
            None => Value::Null,
        };
        let hashtags: Vec<Value> = tags
            .iter()
            .map(|t| json!({"text": t, "indices": [0, 1]}))
            .collect();
        json!({"created_at": created_at, "id_str": "1", "text": text, "place": place,
               "entities": {"hashtags": hashtags}})
        .to_string()
    }

    fn matcher() -> TweetMatch {
        let from: Day = "2018-11-01".parse().unwrap();
        TweetMatch {
            country: "GB".into(),
            from,
            to: from.plus(1),
            keywords: Keywords::new(&["fire", "#fire", "fire truck"]).unwrap(),
            day_of_prefix: [
                ("t/2018-11-01/".to_owned(), from),
                ("t/2018-11-02/".to_owned(), from.plus(1)),
            ]
            .into_iter()
            .collect(),
        }
    }

    const NOV1: &str = "Thu Nov 01 10:00:00 +0000 2018";
    const NOV2: &str = "Fri Nov 02 23:59:59 +0000 2018";
    const OCT31: &str = "Wed Oct 31 23:59:59 +0000 2018";
    const NOV3: &str = "Sat Nov 03 00:00:00 +0000 2018";

    #[test]
    fn counts_matching_tweets_per_city() {
        let lines = vec![
            tweet(NOV1, "Big fire!", Some("GB"), "Leeds", &[]),
            tweet(NOV2, "look", Some("GB"), "Leeds", &["FIRE"]),
            tweet(NOV1, "firefox again", Some("GB"), "York", &["firefox"]),
            tweet(NOV1, "a fire", Some("US"), "Birmingham", &[]),
            tweet(NOV1, "a fire", None, "", &[]),
            tweet(OCT31, "a fire", Some("GB"), "Leeds", &[]),
            tweet(NOV3, "a fire", Some("GB"), "Leeds", &[]),
            tweet(NOV1, "FIRE TRUCK", Some("GB"), "", &[]),
            "{\"created_at\": \"Thu Nov 01".to_owned(),
            "".to_owned(),
            "<html>".to_owned(),
        ];
        let out = matcher().apply(json!({ "lines": lines })).unwrap();
        assert_eq!(
            out,
            json!({"cities": {"Leeds": 2, UNNAMED_PLACE: 1}, "matching": 3,
                   "tweets_in_country": 4, "tweets_scanned": 8,
                   "tweets_outside_range": 2, "malformed_lines": 3})
        );
    }

    #[test]
    fn a_days_folder_holds_that_days_tweets() {
        let lines = vec![
            tweet(NOV1, "fire", Some("GB"), "Leeds", &[]),
            tweet(NOV2, "fire", Some("GB"), "Leeds", &[]),
        ];
        let m = matcher();
        let day2 = m
            .apply(json!({"lines": lines, "prefix": "t/2018-11-02/"}))
            .unwrap();
        assert_eq!(
            (
                day2["matching"].as_u64(),
                day2["tweets_outside_range"].as_u64()
            ),
            (Some(1), Some(1))
        );
        // An unknown prefix (or none) falls back to the whole range.
        let other = m.apply(json!({"lines": lines, "prefix": "x/"})).unwrap();
        assert_eq!(other["matching"], 2);
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
}
