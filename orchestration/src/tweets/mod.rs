//! Tweets in the Twitter API v1.1 JSON format: reading them ([`TweetView`]), matching them
//! against keywords ([`matching`]), generating realistic days of them ([`generator`]), and
//! the dates both need ([`calendar`]).

pub mod calendar;
pub mod generator;
pub mod matching;
mod places;

use std::borrow::Cow;

use serde::Deserialize;

pub use calendar::{DateError, Day};
pub use generator::{day_prefix, generate, GenError, GenOptions, GenSummary, TWEETS_PREFIX};
pub use matching::{KeywordError, Keywords};

/// The fields of a tweet that counting needs, borrowed from its JSON line where it can be.
/// Every other field is skipped without being built.
///
/// A line is a tweet when it is a JSON object whose `created_at` is in Twitter's format and
/// that has a `text` (or, for extended tweets, `full_text` / `extended_tweet.full_text`).
#[derive(Debug)]
pub struct TweetView<'a> {
    /// Unix seconds.
    pub created_at: i64,
    /// The full text: `extended_tweet.full_text`, else `full_text`, else `text`.
    pub text: Cow<'a, str>,
    /// Hashtag entities' texts (without `#`), of the extended tweet when there is one.
    pub hashtags: Vec<Cow<'a, str>>,
    pub place: Option<PlaceView<'a>>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct PlaceView<'a> {
    pub country_code: Option<Cow<'a, str>>,
    pub name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawTweet<'a> {
    #[serde(borrow)]
    created_at: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    full_text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    extended_tweet: Option<RawExtended<'a>>,
    #[serde(default, borrow)]
    entities: Option<RawEntities<'a>>,
    #[serde(default, borrow)]
    place: Option<RawPlace<'a>>,
}

#[derive(Deserialize)]
struct RawExtended<'a> {
    #[serde(default, borrow)]
    full_text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    entities: Option<RawEntities<'a>>,
}

#[derive(Deserialize)]
struct RawEntities<'a> {
    #[serde(default, borrow)]
    hashtags: Vec<RawHashtag<'a>>,
}

#[derive(Deserialize)]
struct RawHashtag<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawPlace<'a> {
    #[serde(default, borrow)]
    country_code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
}

impl<'a> TweetView<'a> {
    /// Reads a tweet from one line; `None` when the line is not a tweet.
    pub fn parse(line: &'a str) -> Option<Self> {
        let raw: RawTweet<'a> = serde_json::from_str(line).ok()?;
        let created_at = calendar::parse_twitter_timestamp(&raw.created_at)?;
        let (ext_text, ext_entities) = match raw.extended_tweet {
            Some(e) => (e.full_text, e.entities),
            None => (None, None),
        };
        let text = ext_text.or(raw.full_text).or(raw.text)?;
        let hashtags = ext_entities
            .or(raw.entities)
            .map(|e| e.hashtags.into_iter().map(|h| h.text).collect())
            .unwrap_or_default();
        Some(Self {
            created_at,
            text,
            hashtags,
            place: raw.place.map(|p| PlaceView {
                country_code: p.country_code,
                name: p.name,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_counting_needs_and_rejects_non_tweets() {
        let line = r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","id":1,"text":"Big \"fire\" #Fire","user":{"id":2},"place":{"country_code":"GB","name":"Leeds","bounding_box":{}},"entities":{"hashtags":[{"text":"Fire","indices":[11,16]}],"urls":[]}}"#;
        let t = TweetView::parse(line).unwrap();
        assert_eq!(t.text, "Big \"fire\" #Fire");
        assert_eq!(t.hashtags, ["Fire"]);
        assert_eq!(t.created_at, 1_541_075_696);
        let place = t.place.unwrap();
        assert_eq!(place.country_code.as_deref(), Some("GB"));
        assert_eq!(place.name.as_deref(), Some("Leeds"));

        let no_place =
            r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","text":"hi","place":null}"#;
        let t = TweetView::parse(no_place).unwrap();
        assert!(t.place.is_none() && t.hashtags.is_empty());

        let extended = r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","text":"short…","truncated":true,"extended_tweet":{"full_text":"the long one #fire","entities":{"hashtags":[{"text":"fire"}]}},"entities":{"hashtags":[]}}"#;
        let t = TweetView::parse(extended).unwrap();
        assert_eq!(
            (t.text.as_ref(), t.hashtags.len()),
            ("the long one #fire", 1)
        );

        for bad in [
            "",
            "not json",
            "[1,2]",
            "null",
            r#"{"limit":{"track":5}}"#,
            r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018"}"#,
            r#"{"created_at":"2018-11-01T12:34:56Z","text":"x"}"#,
            r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","text":5}"#,
            r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","text":"x","place":7}"#,
            r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","text":"x""#,
        ] {
            assert!(TweetView::parse(bad).is_none(), "{bad}");
        }
    }
}
