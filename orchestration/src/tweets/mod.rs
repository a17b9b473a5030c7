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
pub use matching::{KeywordError, Keywords, Prefilter};

use crate::jsonl::{self, FieldPaths, Fields};

/// The fields counting reads from a line (indices into [`TweetReader`]'s slots).
pub mod field {
    pub const CREATED_AT: usize = 0;
    pub const TEXT: usize = 1;
    pub const FULL_TEXT: usize = 2;
    pub const EXTENDED_FULL_TEXT: usize = 3;
    pub const HASHTAGS: usize = 4;
    pub const EXTENDED_HASHTAGS: usize = 5;
    pub const TRUNCATED: usize = 6;
    pub const PLACE_COUNTRY_CODE: usize = 7;
    pub const PLACE_NAME: usize = 8;
    pub const PLACE_FULL_NAME: usize = 9;
    pub const PLACE_TYPE: usize = 10;
    /// The retweeted status's text fields, at the same offsets from this as the tweet's
    /// from `TEXT`.
    pub const RETWEETED: usize = 11;
}

/// The paths of [`field`], in order.
const PATHS: [&str; 17] = [
    "created_at",
    "text",
    "full_text",
    "extended_tweet.full_text",
    "entities.hashtags",
    "extended_tweet.entities.hashtags",
    "truncated",
    "place.country_code",
    "place.name",
    "place.full_name",
    "place.place_type",
    "retweeted_status.text",
    "retweeted_status.full_text",
    "retweeted_status.extended_tweet.full_text",
    "retweeted_status.entities.hashtags",
    "retweeted_status.extended_tweet.entities.hashtags",
    "retweeted_status.truncated",
];

/// The streaming API's messages that are not tweets, by their one top-level key.
pub const NOTICE_KINDS: [&str; 12] = [
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

/// What a line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// A tweet created at these Unix seconds; its fields are in the slots.
    Tweet { created_at: i64 },
    /// A stream notice (`delete`, `limit`, ...), or `keep-alive` for a blank line.
    Notice(&'static str),
    /// Neither: not JSON, not an object, or an object that is no tweet.
    Malformed,
}

/// The kind of a blank line: the streaming API sends one to keep the connection alive.
pub const KEEP_ALIVE: &str = "keep-alive";

/// Reads tweets from lines with [`jsonl::FieldPaths`]: only the fields counting needs are
/// found, and every other value is skipped unbuilt.
///
/// A line is a tweet when it is a JSON object whose `created_at` is in Twitter's format and
/// that has a `text` (or, for extended tweets, `full_text` / `extended_tweet.full_text`).
#[derive(Clone, Debug)]
pub struct TweetReader {
    paths: FieldPaths,
    /// Read again, for these keys only, when a line is no tweet: a tweet's keys are then
    /// compared with fewer wanted ones.
    notices: FieldPaths,
}

impl Default for TweetReader {
    fn default() -> Self {
        Self::new()
    }
}

impl TweetReader {
    pub fn new() -> Self {
        // The paths are constants that do not overlap (unit tests read with them).
        let compile = |p: &[&str]| FieldPaths::new(p).unwrap_or_else(|e| unreachable!("{e}"));
        Self {
            paths: compile(&PATHS),
            notices: compile(&NOTICE_KINDS),
        }
    }

    /// Slots for [`TweetReader::read`], reused line after line.
    pub fn slots<'a>(&self) -> Fields<'a> {
        self.paths.slots()
    }

    /// Reads one line (without its newline) into `fields` and says what it is.
    pub fn read<'a>(&self, line: &'a [u8], fields: &mut Fields<'a>) -> Line {
        if line.trim_ascii().is_empty() {
            fields.iter_mut().for_each(|f| *f = None);
            return Line::Notice(KEEP_ALIVE);
        }
        if self.paths.read(line, fields).is_err() {
            return Line::Malformed;
        }
        let created_at = jsonl::as_str(&fields[field::CREATED_AT])
            .and_then(|s| calendar::parse_twitter_timestamp(&s));
        match created_at {
            Some(created_at) if text_of(fields, field::TEXT).is_some() => {
                Line::Tweet { created_at }
            }
            Some(_) => Line::Malformed,
            None => {
                let mut kinds = self.notices.slots();
                if self.notices.read(line, &mut kinds).is_err() {
                    return Line::Malformed;
                }
                NOTICE_KINDS
                    .iter()
                    .zip(&kinds)
                    .find(|(_, v)| v.is_some())
                    .map_or(Line::Malformed, |(kind, _)| Line::Notice(kind))
            }
        }
    }
}

/// Which captured text a status's full text is: `extended_tweet.full_text`, else
/// `full_text`, else `text` (`base` is `field::TEXT` or `field::RETWEETED`).
fn text_of(fields: &Fields<'_>, base: usize) -> Option<usize> {
    let at = |offset: usize| base + offset;
    [
        field::EXTENDED_FULL_TEXT - field::TEXT,
        field::FULL_TEXT - field::TEXT,
        0,
    ]
    .into_iter()
    .map(at)
    .find(|&i| jsonl::is_str(&fields[i]))
}

/// A tweet's place, as counting sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct PlaceView<'f> {
    pub country_code: Option<Cow<'f, str>>,
    pub name: Option<Cow<'f, str>>,
    pub full_name: Option<Cow<'f, str>>,
    pub place_type: Option<Cow<'f, str>>,
}

/// The place of a tweet read by [`TweetReader`].
pub fn place<'f>(fields: &Fields<'f>) -> PlaceView<'f> {
    PlaceView {
        country_code: jsonl::as_str(&fields[field::PLACE_COUNTRY_CODE]),
        name: jsonl::as_str(&fields[field::PLACE_NAME]),
        full_name: jsonl::as_str(&fields[field::PLACE_FULL_NAME]),
        place_type: jsonl::as_str(&fields[field::PLACE_TYPE]),
    }
}

/// The text keywords are matched on, and its hashtag entities (without `#`).
#[derive(Debug)]
pub struct TweetText<'f> {
    pub text: Cow<'f, str>,
    pub hashtags: Vec<String>,
    /// The text is a retweeted status's.
    pub retweet: bool,
}

#[derive(Deserialize)]
struct RawHashtag<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

/// The text a tweet read by [`TweetReader`] is matched on: its retweeted status's when it
/// is a retweet (its own text is cut: `RT @name: …`), else its own. A status's text is
/// `extended_tweet.full_text`, else `full_text`, else `text`, with the hashtag entities of
/// the extended tweet when there is one. HTML entities are left as they are
/// ([`decode_html`]).
pub fn text<'f>(fields: &Fields<'f>) -> Option<TweetText<'f>> {
    if let Some(t) = status_text(fields, field::RETWEETED) {
        return Some(TweetText { retweet: true, ..t });
    }
    status_text(fields, field::TEXT)
}

/// Whether the status a tweet is matched on (see [`text`]) was cut and carries no full text
/// (`truncated`, without `full_text` or `extended_tweet.full_text`): data fetched without
/// extended mode.
pub fn truncated_without_full_text(fields: &Fields<'_>) -> bool {
    let base = if text_of(fields, field::RETWEETED).is_some() {
        field::RETWEETED
    } else {
        field::TEXT
    };
    let at = |f: usize| &fields[base + (f - field::TEXT)];
    jsonl::as_bool(at(field::TRUNCATED)) == Some(true)
        && !jsonl::is_str(at(field::FULL_TEXT))
        && !jsonl::is_str(at(field::EXTENDED_FULL_TEXT))
}

/// The HTML entities Twitter escapes texts with (`&amp;`, `&lt;`, `&gt;`), decoded in one
/// pass (`&amp;lt;` is `&lt;`). Others (`&quot;`, `&#39;`) Twitter does not send, and they
/// are left alone.
pub fn decode_html(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let (decoded, len) = if rest.starts_with("&amp;") {
            ('&', 5)
        } else if rest.starts_with("&lt;") {
            ('<', 4)
        } else if rest.starts_with("&gt;") {
            ('>', 4)
        } else {
            ('&', 1)
        };
        out.push(decoded);
        rest = &rest[len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn status_text<'f>(fields: &Fields<'f>, base: usize) -> Option<TweetText<'f>> {
    let i = text_of(fields, base)?;
    let text = jsonl::as_str(&fields[i])?;
    let extended = i == base + (field::EXTENDED_FULL_TEXT - field::TEXT);
    let tags = if extended {
        &fields[base + (field::EXTENDED_HASHTAGS - field::TEXT)]
    } else {
        &fields[base + (field::HASHTAGS - field::TEXT)]
    };
    let hashtags = tags
        .as_ref()
        .and_then(|v| sonic_rs::from_str::<Vec<RawHashtag>>(v.as_raw_str()).ok())
        .map(|tags| tags.into_iter().map(|h| h.text.into_owned()).collect())
        .unwrap_or_default();
    Some(TweetText {
        text,
        hashtags,
        retweet: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(line: &str) -> (Line, Option<String>, Vec<String>, bool, bool) {
        let r = TweetReader::new();
        let mut f = r.slots();
        let kind = r.read(line.as_bytes(), &mut f);
        let t = text(&f);
        (
            kind,
            t.as_ref().map(|t| t.text.to_string()),
            t.as_ref().map(|t| t.hashtags.clone()).unwrap_or_default(),
            t.is_some_and(|t| t.retweet),
            truncated_without_full_text(&f),
        )
    }

    #[test]
    fn reads_what_counting_needs_and_rejects_non_tweets() {
        let line = r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","id":1,"text":"Big \"fire\" #Fire","user":{"id":2},"place":{"country_code":"GB","name":"Leeds","full_name":"Leeds, England","place_type":"city","bounding_box":{}},"entities":{"hashtags":[{"text":"Fire","indices":[11,16]}],"urls":[]}}"#;
        let r = TweetReader::new();
        let mut f = r.slots();
        assert_eq!(
            r.read(line.as_bytes(), &mut f),
            Line::Tweet {
                created_at: 1_541_075_696
            }
        );
        assert_eq!(
            place(&f),
            PlaceView {
                country_code: Some("GB".into()),
                name: Some("Leeds".into()),
                full_name: Some("Leeds, England".into()),
                place_type: Some("city".into()),
            }
        );
        let (_, t, tags, rt, cut) = read(line);
        assert_eq!(
            (t.as_deref(), tags, rt, cut),
            (
                Some("Big \"fire\" #Fire"),
                vec!["Fire".to_owned()],
                false,
                false
            )
        );

        let no_place =
            r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","text":"hi","place":null}"#;
        r.read(no_place.as_bytes(), &mut f);
        assert_eq!(place(&f).country_code, None);

        let extended = r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","text":"short…","truncated":true,"extended_tweet":{"full_text":"the long one #fire","entities":{"hashtags":[{"text":"fire"}]}},"entities":{"hashtags":[]}}"#;
        let (_, t, tags, _, cut) = read(extended);
        assert_eq!(
            (t.as_deref(), tags.len(), cut),
            (Some("the long one #fire"), 1, false)
        );
        let cut_only =
            r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","text":"short…","truncated":true}"#;
        assert!(read(cut_only).4);

        // A retweet is read as its retweeted status, whose full text is whole.
        let retweet = r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","text":"RT @a: a long…","truncated":false,"retweeted_status":{"text":"a long…","truncated":true,"extended_tweet":{"full_text":"a long text about a fire","entities":{"hashtags":[{"text":"x"}]}}},"entities":{"hashtags":[]}}"#;
        let (_, t, tags, rt, cut) = read(retweet);
        assert_eq!(
            (t.as_deref(), tags, rt, cut),
            (
                Some("a long text about a fire"),
                vec!["x".to_owned()],
                true,
                false
            )
        );

        for (notice, kind) in [
            (r#"{"limit":{"track":5}}"#, "limit"),
            (r#"{"delete":{"status":{"id":1}}}"#, "delete"),
            ("", KEEP_ALIVE),
            ("  \t", KEEP_ALIVE),
        ] {
            assert_eq!(read(notice).0, Line::Notice(kind), "{notice}");
        }
        for bad in [
            "not json",
            "[1,2]",
            "null",
            r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018"}"#,
            r#"{"created_at":"2018-11-01T12:34:56Z","text":"x"}"#,
            r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","text":5}"#,
            r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","text":"x""#,
            r#"{"created_at":"Thu Nov 01 12:34:56 +0000 2018","limit":{}}"#,
            r#"{"something":"else"}"#,
        ] {
            assert_eq!(read(bad).0, Line::Malformed, "{bad}");
        }
    }

    #[test]
    fn html_entities_are_decoded_once() {
        for (raw, decoded) in [
            ("Fire &amp; Rescue", "Fire & Rescue"),
            ("a &lt;3 b &gt; c", "a <3 b > c"),
            ("&amp;lt; &amp;amp;", "&lt; &amp;"),
            ("AT&T &quot; & &", "AT&T &quot; & &"),
            ("no entities", "no entities"),
            ("é&amp;é", "é&é"),
        ] {
            assert_eq!(decode_html(raw), decoded, "{raw}");
        }
    }
}
