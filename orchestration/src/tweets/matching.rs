//! Keyword matching on tweets: case-insensitive, on whole words and phrases, hashtags
//! included.
//!
//! A text is read as a sequence of words: maximal runs of letters, digits and `_` (what `\w`
//! means in a regular expression), lowercased. So `Fire!`, `#FIRE` and `fire-fighters` all
//! contain the word `fire`, while `firefox`, `bonfire` and `fired` do not.
//!
//! - A plain keyword (`fire`, `fire truck`) matches when its words appear consecutively in
//!   the text, or when a hashtag entity equals its words run together (`#FireTruck` matches
//!   `fire truck`): people write a phrase as a hashtag.
//! - A hashtag keyword (`#fire`) matches a hashtag entity with that text, or the literal
//!   `#fire` in the text as a whole word (for tweets whose entities were stripped). It does
//!   not match the bare word `fire`: asking for the hashtag means the hashtag.

use std::fmt;

/// At most this many keywords in one job, each at most this long (characters).
pub const MAX_KEYWORDS: usize = 50;
pub const MAX_KEYWORD_CHARS: usize = 100;

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The words of an already lowercased text, in order. (Lowercasing first, then splitting,
/// is done the same way for keywords and texts, so the two always agree.)
pub fn words(lowered: &str) -> impl Iterator<Item = &str> {
    lowered
        .split(|c: char| !is_word_char(c))
        .filter(|w| !w.is_empty())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeywordError {
    #[error("must have 1 to {MAX_KEYWORDS} keywords, got {0}")]
    Count(usize),
    #[error("keyword `{0}` must be 1 to {MAX_KEYWORD_CHARS} characters with a letter or digit")]
    NoWord(String),
    #[error("hashtag keyword `{0}` must be `#` followed by letters, digits or `_` only")]
    Hashtag(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Keyword {
    /// Lowercased words, matched consecutively; also matched by the hashtag of them joined.
    Phrase(Vec<String>),
    /// Lowercased, without the `#`.
    Hashtag(String),
}

impl fmt::Display for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Phrase(words) => f.write_str(&words.join(" ")),
            Self::Hashtag(tag) => write!(f, "#{tag}"),
        }
    }
}

/// A compiled keyword list. Build it with [`Keywords::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keywords {
    keywords: Vec<Keyword>,
}

impl Keywords {
    /// Checks and compiles keywords: 1 to [`MAX_KEYWORDS`] of them, each with at least one
    /// word; a hashtag keyword is `#` and one word.
    pub fn new<S: AsRef<str>>(keywords: &[S]) -> Result<Self, KeywordError> {
        if keywords.is_empty() || keywords.len() > MAX_KEYWORDS {
            return Err(KeywordError::Count(keywords.len()));
        }
        let mut compiled = Vec::with_capacity(keywords.len());
        for raw in keywords {
            let raw = raw.as_ref();
            let trimmed = raw.trim();
            if trimmed.chars().count() > MAX_KEYWORD_CHARS {
                return Err(KeywordError::NoWord(raw.to_owned()));
            }
            let keyword = if let Some(tag) = trimmed.strip_prefix('#') {
                if tag.is_empty() || !tag.chars().all(is_word_char) {
                    return Err(KeywordError::Hashtag(raw.to_owned()));
                }
                Keyword::Hashtag(tag.to_lowercase())
            } else {
                let words: Vec<String> =
                    words(&trimmed.to_lowercase()).map(str::to_owned).collect();
                if words.is_empty() {
                    return Err(KeywordError::NoWord(raw.to_owned()));
                }
                Keyword::Phrase(words)
            };
            if !compiled.contains(&keyword) {
                compiled.push(keyword);
            }
        }
        // Order does not change what matches: sorted, the normalized list is one spelling.
        compiled.sort_by_key(|k| k.to_string());
        Ok(Self { keywords: compiled })
    }

    /// The keywords in their normalized spelling: lowercased, words separated by one space,
    /// deduplicated and sorted. Two lists with the same normalized form match the same tweets.
    pub fn normalized(&self) -> Vec<String> {
        self.keywords.iter().map(ToString::to_string).collect()
    }

    /// Whether a tweet with this text and these hashtag entities (without `#`) matches any
    /// keyword.
    pub fn matches<H: AsRef<str>>(&self, text: &str, hashtags: &[H]) -> bool {
        let lowered = text.to_lowercase();
        let text_words: Vec<&str> = words(&lowered).collect();
        let tags: Vec<String> = hashtags.iter().map(|h| h.as_ref().to_lowercase()).collect();
        self.keywords.iter().any(|keyword| match keyword {
            Keyword::Phrase(phrase) => {
                text_words
                    .windows(phrase.len())
                    .any(|window| window == phrase)
                    || tags.iter().any(|t| phrase_is_tag(phrase, t))
            }
            Keyword::Hashtag(tag) => {
                tags.iter().any(|t| t == tag) || literal_hashtag(&lowered, tag)
            }
        })
    }
}

/// A fast test that a line may hold a match: an ASCII case-insensitive search (aho-corasick)
/// of the raw line for one word of each keyword. The line is lowercased (ASCII) into a
/// scratch buffer and searched case-sensitively: aho-corasick's SIMD searcher (Teddy) does
/// not do case-insensitive search, and lowering is cheaper than its scalar automaton. A line it rejects matches no keyword, so
/// the text of such a line need not be decoded at all.
///
/// Sound for ASCII keywords: every match needs that word's letters in the text or a hashtag
/// (a phrase's hashtag holds all its words), spelt in ASCII in the line unless the line
/// escapes them (`\u0066`) or spells them with one of the two non-ASCII characters whose
/// lowercase is ASCII (U+0130 `İ` → `i̇`, U+212A Kelvin sign → `k`); lines with either are
/// passed on too. A list with a non-ASCII keyword gets no prefilter.
#[derive(Clone, Debug)]
pub struct Prefilter {
    needles: Needles,
}

/// Several needles searched at once: aho-corasick's packed SIMD searcher (Teddy) when the
/// CPU has it, else its automaton. (The automaton's own prefilter picks "rare" start bytes,
/// here `e` and `t`, and then runs the automaton at nearly every byte.)
#[derive(Clone, Debug)]
pub enum Needles {
    Packed(aho_corasick::packed::Searcher),
    Automaton(aho_corasick::AhoCorasick),
}

impl Needles {
    pub fn new(needles: &[String]) -> Option<Self> {
        if let Some(s) = aho_corasick::packed::Searcher::new(needles) {
            return Some(Self::Packed(s));
        }
        aho_corasick::AhoCorasick::new(needles)
            .ok()
            .map(Self::Automaton)
    }

    pub fn is_match(&self, haystack: &[u8]) -> bool {
        match self {
            Self::Packed(s) => s.find(haystack).is_some(),
            Self::Automaton(a) => a.is_match(haystack),
        }
    }
}

impl Prefilter {
    /// Whether the raw line (JSON) may hold a match. `scratch` is reused from line to line.
    pub fn may_match(&self, line: &[u8], scratch: &mut Vec<u8>) -> bool {
        scratch.clear();
        scratch.extend(line.iter().map(u8::to_ascii_lowercase));
        self.needles.is_match(scratch.as_slice())
    }
}

impl Keywords {
    /// The prefilter for these keywords; `None` when one is not ASCII.
    pub fn prefilter(&self) -> Option<Prefilter> {
        let mut needles: Vec<String> = Vec::new();
        for keyword in &self.keywords {
            let word = match keyword {
                // Any word of the phrase would do; the longest is the rarest.
                Keyword::Phrase(words) => words.iter().max_by_key(|w| w.len())?.clone(),
                Keyword::Hashtag(tag) => tag.clone(),
            };
            if !word.is_ascii() {
                return None;
            }
            needles.push(word);
        }
        // Escaped ASCII (\u0000-\u007f), and the two characters that lowercase to ASCII,
        // escaped or not.
        needles.extend((0..8).map(|d| format!("\\u00{d}")));
        needles.extend(["\\u0130", "\\u212a", "\u{130}", "\u{212a}"].map(String::from));
        let needles = Needles::new(&needles)?;
        Some(Prefilter { needles })
    }
}

/// Whether `tag` is the phrase's words run together (`fire truck` ↔ `firetruck`).
fn phrase_is_tag(phrase: &[String], tag: &str) -> bool {
    let mut rest = tag;
    for word in phrase {
        match rest.strip_prefix(word.as_str()) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// Whether the lowercased text holds `#tag` as a whole word: not inside a word before the
/// `#` (`a#fire` is no hashtag on Twitter) and not followed by a word character (`#fired`).
fn literal_hashtag(lowered: &str, tag: &str) -> bool {
    let needle = format!("#{tag}");
    lowered.match_indices(&needle).any(|(at, _)| {
        let before = lowered[..at].chars().next_back();
        let after = lowered[at + needle.len()..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(list: &[&str]) -> Keywords {
        Keywords::new(list).unwrap()
    }

    const NONE: [&str; 0] = [];

    #[test]
    fn whole_words_case_insensitively() {
        let k = kw(&["fire"]);
        for text in [
            "FIRE!",
            "there's a fire",
            "Fire-fighters are here",
            "fire",
            "the fire's out",
            "Big #Fire downtown",
            "fire\nengine",
        ] {
            assert!(k.matches(text, &NONE), "{text}");
        }
        for text in [
            "firefox crashed",
            "I got fired",
            "bonfire night",
            "ceasefire now",
            "fire_alarm test",
            "wildfires",
            "f i r e",
            "",
        ] {
            assert!(!k.matches(text, &NONE), "{text}");
        }
        // Plain keywords match hashtags too.
        assert!(k.matches("look at this", &["Fire"]));
        assert!(!k.matches("look at this", &["FireAlarm"]));
    }

    #[test]
    fn phrases_are_consecutive_words_or_a_joined_hashtag() {
        let k = kw(&["Fire  Truck"]);
        assert!(k.matches("a fire truck went by", &NONE));
        assert!(k.matches("A FIRE-TRUCK went by", &NONE));
        assert!(!k.matches("the truck caught fire", &NONE));
        assert!(!k.matches("a fire, then a truck", &["fire"]));
        assert!(!k.matches("fire trucks", &NONE));
        assert!(k.matches("so loud", &["FireTruck"]));
        assert!(!k.matches("firetruck", &NONE));
        assert!(!k.matches("so loud", &["FireTrucks"]));
    }

    #[test]
    fn hashtag_keywords_want_the_hashtag() {
        let k = kw(&["#Fire"]);
        assert!(k.matches("anything", &["FIRE"]));
        assert!(k.matches("big #fire!", &NONE));
        assert!(k.matches("#FIRE", &NONE));
        assert!(!k.matches("a fire", &NONE));
        assert!(!k.matches("#fired", &NONE));
        assert!(!k.matches("a#fire", &NONE));
        assert!(!k.matches("x", &["firefox"]));
        // Non-ASCII around the tag is sliced on character boundaries.
        assert!(k.matches("été #fire 🔥", &NONE));
        assert!(!k.matches("é#fireé", &NONE));
    }

    #[test]
    fn the_prefilter_passes_every_line_that_can_match() {
        let k = kw(&["fire truck", "#blaze", "k"]);
        let p = k.prefilter().unwrap();
        let mut scratch = Vec::new();
        for line in [
            r#"{"text":"a TRUCK"}"#,
            r#"{"text":"x","entities":{"hashtags":[{"text":"FireTruck"}]}}"#,
            r##"{"text":"#BLAZE"}"##,
            r#"{"text":"\u0074ruck"}"#,
            "{\"text\":\"\u{212a}\"}",
            r#"{"text":"\u212A"}"#,
        ] {
            assert!(p.may_match(line.as_bytes(), &mut scratch), "{line}");
        }
        assert!(!p.may_match(br#"{"text":"fire only","id":5}"#, &mut scratch));
        // Whatever the prefilter rejects, the matcher rejects.
        assert!(!k.matches("fire only", &NONE));
        assert!(kw(&["été"]).prefilter().is_none());
    }

    #[test]
    fn validation_and_normal_form() {
        assert_eq!(
            kw(&["Fire", " fire ", "#FIRE", "fire   engine", "FIRE-engine"]).normalized(),
            ["#fire", "fire", "fire engine"]
        );
        assert_eq!(Keywords::new(&NONE), Err(KeywordError::Count(0)));
        assert!(Keywords::new(&vec!["a"; 51]).is_err());
        assert!(Keywords::new(&vec!["a"; 50]).is_ok());
        for bad in ["", "  ", "!!", "#", "# fire", "#fire truck", "#fire!"] {
            assert!(Keywords::new(&[bad]).is_err(), "{bad:?}");
        }
        assert!(Keywords::new(&["x".repeat(101)]).is_err());
        assert!(Keywords::new(&["x".repeat(100)]).is_ok());
    }
}
