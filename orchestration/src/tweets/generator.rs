//! The tweet generator behind `sluice gen tweets`: days of tweets in the Twitter API v1.1
//! JSON format, one per line, under `tweets/YYYY-MM-DD/part-NNNNN.jsonl[.gz]`.
//!
//! What makes the data realistic (and a fair test of a fire-tweet count):
//! - places are real cities weighted by population, mostly in GB, many elsewhere (with
//!   namesakes: London ON, Birmingham AL), and 40% of tweets have no place at all;
//! - about 1% of tweets are about a fire (`Fire engines everywhere…`, `#fire`, `#firetruck`),
//!   a third of them in one GB city per day (an incident), and 2.5% are near misses
//!   (`Firefox`, `fired`, `bonfire night`, `ceasefire`, `fireworks`, `🔥`);
//! - users have homes, display names, free-text locations naming other cities, replies;
//! - about one line in 4,000 is not a tweet: a truncated write, an HTML error page, an ISO
//!   date where Twitter's format belongs;
//! - the stream's notices come between tweets: `delete` (one line in 150), `limit`, a rare
//!   `scrub_geo` or `status_withheld`, and blank keep-alive lines;
//! - a fifth of tweets are retweets, whose text is cut (`RT @name: …`) and whose retweeted
//!   status holds the whole text (in `extended_tweet` when it is long); a few long tweets are
//!   in compatibility mode (`extended_tweet`), and some were fetched without it (`truncated`,
//!   no full text at all);
//! - most places are cities, but some are admin areas, countries, points of interest and
//!   neighborhoods, as Twitter attributes them;
//! - texts are HTML-escaped as Twitter sends them (`&amp;`, `&lt;`, `&gt;`);
//! - a day is filed by collection time: its first part starts with up to 3 tweets created
//!   in the last two seconds of the day before.
//!
//! Every part is a pure function of (options, day, part number): the same seed gives the
//! same bytes, and parts are generated in parallel. The random generator is ChaCha8 from
//! `rand_chacha`, whose output is fixed by its specification; `rand`'s `StdRng` documents
//! that its algorithm may change between versions, which would change the data.

use std::io::Write;

use futures::{StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tracing::info;

use super::calendar::{twitter_timestamp, Day, SECONDS_PER_DAY};
use super::places::{City, Country, COUNTRIES};
use crate::ports::{BlobError, Blobs};

/// Where tweets live in the blob store.
pub const TWEETS_PREFIX: &str = "tweets/";
/// A part holds at most this many tweets (about 100 MB), so no object is unwieldy.
pub const MAX_TWEETS_PER_PART: u64 = 100_000;
pub const MAX_TWEETS_PER_DAY: u64 = 100_000_000;
/// At most this many days in one `gen` call (a leap year).
pub const MAX_DAYS: i64 = 366;
/// At most this many parts per day: each covers a slice of the day of at least ~9 s.
pub const MAX_PARTS_PER_DAY: u64 = 10_000;

/// About 1 line in this many is malformed (in addition to the tweets asked for).
const MALFORMED_ONE_IN: u32 = 4_000;
const FIRE_RATE: f64 = 0.01;
const NEAR_MISS_RATE: f64 = 0.025;
const PLACED_RATE: f64 = 0.6;
const RETWEET_RATE: f64 = 0.2;
/// Of the tweets that are not retweets, these are long (over 140 characters)...
const LONG_RATE: f64 = 0.05;
/// ...and of the long ones, these were fetched without extended mode: cut, no full text.
const NO_EXTENDED_SHARE: f64 = 0.2;
/// Notices: about one line in this many.
const DELETE_ONE_IN: u32 = 150;
const LIMIT_ONE_IN: u32 = 4_000;
const KEEP_ALIVE_ONE_IN: u32 = 5_000;
const RARE_NOTICE_ONE_IN: u32 = 50_000;
/// Of the placed tweets, the shares of place types other than `city` (per 1,000).
const ADMIN_PER_MILLE: u32 = 115;
const POI_PER_MILLE: u32 = 20;
const NEIGHBORHOOD_PER_MILLE: u32 = 10;
const COUNTRY_PER_MILLE: u32 = 5;
/// Text that makes a tweet long, before its topic (no keyword, no near miss in it).
const LEADS: &[&str] = &[
    "Quick update for everyone who keeps asking what is happening this evening, I have been out and about for most of the afternoon and here it is: ",
    "Long day, long thread, sorry in advance to anyone who follows me for the cat pictures, but this needs saying and it needs saying properly now: ",
];
/// Of the fire tweets, this share come from the day's incident city.
const INCIDENT_SHARE: f64 = 0.35;
const USERS: u64 = 250_000;
/// Twitter's snowflake epoch (2010-11-04T01:42:54.657Z), for realistic `id`s.
const SNOWFLAKE_EPOCH_MS: i64 = 1_288_834_974_657;

/// The prefix of one day's tweets: `tweets/2018-11-01/`.
pub fn day_prefix(day: Day) -> String {
    format!("{TWEETS_PREFIX}{day}/")
}

/// The key of one part: `tweets/2018-11-01/part-00000.jsonl` (`.jsonl.gz` when gzipped).
pub fn part_key(day: Day, part: u64, gzip: bool) -> String {
    let ext = if gzip { ".jsonl.gz" } else { ".jsonl" };
    format!("{}part-{part:05}{ext}", day_prefix(day))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenOptions {
    pub from: Day,
    pub to: Day,
    pub per_day: u64,
    /// Tweets per part: 1 to [`MAX_TWEETS_PER_PART`].
    pub per_part: u64,
    pub seed: u64,
    pub gzip: bool,
}

impl GenOptions {
    pub fn new(from: Day, to: Day, per_day: u64) -> Self {
        Self {
            from,
            to,
            per_day,
            per_part: MAX_TWEETS_PER_PART,
            seed: 0,
            gzip: false,
        }
    }

    pub fn validate(&self) -> Result<(), GenError> {
        let days = self.from.days_until(self.to) + 1;
        if days < 1 {
            return Err(GenError::Invalid(format!(
                "--to {} is before --from {}",
                self.to, self.from
            )));
        }
        if days > MAX_DAYS {
            return Err(GenError::Invalid(format!(
                "at most {MAX_DAYS} days at once, got {days}"
            )));
        }
        if !(1..=MAX_TWEETS_PER_DAY).contains(&self.per_day) {
            return Err(GenError::Invalid(format!(
                "--per-day must be from 1 to {MAX_TWEETS_PER_DAY}, got {}",
                self.per_day
            )));
        }
        if !(1..=MAX_TWEETS_PER_PART).contains(&self.per_part) {
            return Err(GenError::Invalid(format!(
                "--per-part must be from 1 to {MAX_TWEETS_PER_PART}, got {}",
                self.per_part
            )));
        }
        if self.parts_per_day() > MAX_PARTS_PER_DAY {
            return Err(GenError::Invalid(format!(
                "{} parts per day is more than {MAX_PARTS_PER_DAY}: raise --per-part",
                self.parts_per_day()
            )));
        }
        Ok(())
    }

    pub fn parts_per_day(&self) -> u64 {
        self.per_day.div_ceil(self.per_part.max(1))
    }

    pub fn days(&self) -> impl Iterator<Item = Day> {
        Day::range(self.from, self.to)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("generating a part failed: {0}")]
    Task(String),
}

/// What a `gen` call wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GenSummary {
    pub days: u64,
    pub objects: u64,
    pub tweets: u64,
    pub malformed_lines: u64,
    /// Stream notices and keep-alive lines, between the tweets.
    pub notices: u64,
    /// Bytes written (compressed, with `--gzip`).
    pub bytes: u64,
    /// Objects left from an earlier `gen` under the same days, deleted so a day holds only
    /// this call's parts.
    pub removed_objects: u64,
}

/// One generated part.
pub struct Part {
    pub key: String,
    pub bytes: Vec<u8>,
    pub tweets: u64,
    pub malformed_lines: u64,
    pub notices: u64,
}

/// Writes every part of every day through `blobs`, then deletes whatever else was under
/// those days. Parts are generated in parallel, a few at a time (each is up to ~100 MB).
pub async fn generate(blobs: &dyn Blobs, opts: &GenOptions) -> Result<GenSummary, GenError> {
    opts.validate()?;
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let work: Vec<(Day, u64)> = opts
        .days()
        .flat_map(|day| (0..opts.parts_per_day()).map(move |part| (day, part)))
        .collect();
    let mut summary = futures::stream::iter(work)
        .map(|(day, part)| {
            let opts = opts.clone();
            async move {
                let part = tokio::task::spawn_blocking(move || render_part(&opts, day, part))
                    .await
                    .map_err(|e| GenError::Task(e.to_string()))??;
                let stats = GenSummary {
                    objects: 1,
                    tweets: part.tweets,
                    malformed_lines: part.malformed_lines,
                    notices: part.notices,
                    bytes: part.bytes.len() as u64,
                    ..GenSummary::default()
                };
                blobs.put(&part.key, part.bytes).await?;
                Ok::<_, GenError>(stats)
            }
        })
        .buffer_unordered(parallel)
        .try_fold(GenSummary::default(), |mut acc, s| async move {
            acc.objects += s.objects;
            acc.tweets += s.tweets;
            acc.malformed_lines += s.malformed_lines;
            acc.notices += s.notices;
            acc.bytes += s.bytes;
            Ok(acc)
        })
        .await?;
    for day in opts.days() {
        summary.days += 1;
        let keep: Vec<String> = (0..opts.parts_per_day())
            .map(|p| part_key(day, p, opts.gzip))
            .collect();
        for key in blobs.list(&day_prefix(day)).await? {
            if !keep.contains(&key) {
                blobs.delete(&key).await?;
                summary.removed_objects += 1;
            }
        }
        info!(%day, parts = keep.len(), "day generated");
    }
    Ok(summary)
}

/// SplitMix64's finalizer: spreads a seed so that nearby inputs give unrelated streams.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn day_seed(seed: u64, day: Day) -> u64 {
    mix(seed ^ mix(day.number() as u64))
}

/// Renders one part: a pure function of its arguments.
pub fn render_part(opts: &GenOptions, day: Day, part: u64) -> Result<Part, GenError> {
    opts.validate()?;
    let parts = opts.parts_per_day();
    let first = part * opts.per_part;
    let count = opts.per_part.min(opts.per_day.saturating_sub(first));
    let world = World::new(opts.seed, day);
    let mut rng = ChaCha8Rng::seed_from_u64(mix(day_seed(opts.seed, day) ^ mix(part + 1)));

    // Each part covers an equal slice of the day, so tweets are in time order across parts
    // as they would be in a real dump.
    let day_ms = day.start_secs() * 1000;
    let slice = |k: u64| day_ms + (SECONDS_PER_DAY as u64 * 1000 * k / parts.max(1)) as i64;
    let (lo, hi) = (slice(part), slice(part + 1));
    let mut times: Vec<i64> = (0..count).map(|_| rng.random_range(lo..hi)).collect();
    if part == 0 {
        // Collection lag: the day's file opens with tweets from just before midnight.
        let late = rng.random_range(0..=3usize).min(times.len());
        for t in &mut times[..late] {
            *t = day_ms - rng.random_range(1..2_000);
        }
    }
    times.sort_unstable();
    let worker: u64 = rng.random_range(0..1024);

    let mut out = Vec::with_capacity(count as usize * 1_100);
    let mut malformed_lines = 0;
    let mut notices = 0;
    for (i, &ms) in times.iter().enumerate() {
        let id = (((ms - SNOWFLAKE_EPOCH_MS) as u64) << 22) | (worker << 12) | (i as u64 & 0xFFF);
        let tweet = world.tweet(&mut rng, id, ms);
        let line = tweet.to_json(None);
        if rng.random_ratio(1, MALFORMED_ONE_IN) {
            out.extend_from_slice(&malformed(&mut rng, &tweet, &line, ms));
            out.push(b'\n');
            malformed_lines += 1;
        }
        if let Some(notice) = notice(&mut rng, id, tweet.user.id, ms) {
            out.extend_from_slice(&notice);
            out.push(b'\n');
            notices += 1;
        }
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    let bytes = if opts.gzip {
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(out.len() / 4),
            flate2::Compression::fast(),
        );
        gz.write_all(&out)
            .and_then(|()| gz.finish())
            .map_err(|e| GenError::Task(format!("gzip: {e}")))?
    } else {
        out
    };
    Ok(Part {
        key: part_key(day, part, opts.gzip),
        bytes,
        tweets: count,
        malformed_lines,
        notices,
    })
}

/// A stream notice (or a blank keep-alive line) to put before a tweet, now and then.
fn notice(rng: &mut ChaCha8Rng, id: u64, user: u64, ms: i64) -> Option<Vec<u8>> {
    let deleted = id.saturating_sub(rng.random_range(1..1u64 << 40));
    let line = if rng.random_ratio(1, DELETE_ONE_IN) {
        format!("{{\"delete\":{{\"status\":{{\"id\":{deleted},\"id_str\":\"{deleted}\",\"user_id\":{user},\"user_id_str\":\"{user}\"}},\"timestamp_ms\":\"{ms}\"}}}}")
    } else if rng.random_ratio(1, LIMIT_ONE_IN) {
        format!(
            "{{\"limit\":{{\"track\":{},\"timestamp_ms\":\"{ms}\"}}}}",
            rng.random_range(1..5_000)
        )
    } else if rng.random_ratio(1, KEEP_ALIVE_ONE_IN) {
        String::new()
    } else if rng.random_ratio(1, RARE_NOTICE_ONE_IN) {
        format!("{{\"scrub_geo\":{{\"user_id\":{user},\"user_id_str\":\"{user}\",\"up_to_status_id\":{deleted},\"up_to_status_id_str\":\"{deleted}\"}}}}")
    } else if rng.random_ratio(1, RARE_NOTICE_ONE_IN) {
        format!("{{\"status_withheld\":{{\"id\":{deleted},\"user_id\":{user},\"withheld_in_countries\":[\"DE\",\"FR\"],\"timestamp_ms\":\"{ms}\"}}}}")
    } else {
        return None;
    };
    Some(line.into_bytes())
}

/// A line that is not a tweet, of the kinds real dumps contain.
fn malformed(rng: &mut ChaCha8Rng, tweet: &Tweet, line: &[u8], ms: i64) -> Vec<u8> {
    match rng.random_range(0..3) {
        // A write cut short (then retried: the full tweet follows). Cut on a character
        // boundary: the line stays UTF-8, only its JSON is broken.
        0 => {
            let text = String::from_utf8_lossy(line);
            let mut cut = rng
                .random_range(10..text.len().saturating_sub(1).max(11))
                .min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text[..cut].as_bytes().to_vec()
        }
        1 => b"<html><head><title>503 Service Unavailable</title></head><body>Service Unavailable</body></html>".to_vec(),
        // A tweet whose date is not in Twitter's format.
        _ => {
            let secs = ms.div_euclid(1000);
            let (y, m, d) = Day::from_ymd(1970, 1, 1)
                .map(|epoch| epoch.plus(secs.div_euclid(SECONDS_PER_DAY)).ymd())
                .unwrap_or((1970, 1, 1));
            let of_day = secs.rem_euclid(SECONDS_PER_DAY);
            let iso = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
                of_day / 3600,
                of_day / 60 % 60,
                of_day % 60
            );
            tweet.to_json(Some(&iso))
        }
    }
}

/// Picks from cumulative weights.
fn pick(rng_value: u64, cumulative: &[u64]) -> usize {
    let total = cumulative.last().copied().unwrap_or(1).max(1);
    let x = rng_value % total;
    cumulative.partition_point(|&c| c <= x)
}

/// A place with what every tweet from it repeats, computed once per part.
struct PlaceInfo {
    country: &'static Country,
    city: &'static City,
    id: String,
    full_name: String,
    /// The city as a hashtag: `#MiltonKeynes`, `#StokeonTrent`.
    tag: String,
    bbox: [[[f64; 2]; 5]; 1],
}

/// The tables a part draws from, and the day's fire incident.
struct World {
    seed: u64,
    places: Vec<PlaceInfo>,
    /// Cumulative weights over `places`: country share × city population share.
    place_weights: Vec<u64>,
    /// Index into `places` of the GB city with today's big fire.
    incident: usize,
}

impl World {
    fn new(seed: u64, day: Day) -> Self {
        let mut places = Vec::new();
        let mut place_weights = Vec::new();
        let mut total = 0u64;
        for country in COUNTRIES {
            let population: u64 = country.cities.iter().map(|c| u64::from(c.population)).sum();
            for city in country.cities {
                // Weight in parts per 10^9 of the placed tweets.
                total += u64::from(country.share) * 1_000_000 * u64::from(city.population)
                    / population.max(1);
                place_weights.push(total);
                let full_name = format!("{}, {}", city.name, city.region);
                let id = format!("{:016x}", mix(fnv(&full_name) ^ fnv(country.code)));
                let (dlat, dlon) = (0.08, 0.12);
                let ring = [
                    [city.lon - dlon, city.lat - dlat],
                    [city.lon + dlon, city.lat - dlat],
                    [city.lon + dlon, city.lat + dlat],
                    [city.lon - dlon, city.lat + dlat],
                    [city.lon - dlon, city.lat - dlat],
                ];
                places.push(PlaceInfo {
                    country,
                    city,
                    id,
                    full_name,
                    tag: city.name.chars().filter(|c| c.is_alphanumeric()).collect(),
                    bbox: [ring.map(|[x, y]| [round6(x), round6(y)])],
                });
            }
        }
        // The incident city: a GB city, weighted by population like everything else.
        let gb: Vec<usize> = (0..places.len())
            .filter(|&i| places[i].country.code == "GB")
            .collect();
        let mut gb_weights = Vec::with_capacity(gb.len());
        let mut acc = 0u64;
        for &i in &gb {
            acc += u64::from(places[i].city.population);
            gb_weights.push(acc);
        }
        let incident = gb
            .get(pick(mix(day_seed(seed, day) ^ 0xF1AE), &gb_weights))
            .copied()
            .unwrap_or(0);
        Self {
            seed,
            places,
            place_weights,
            incident,
        }
    }

    fn random_place(&self, value: u64) -> usize {
        pick(value, &self.place_weights).min(self.places.len() - 1)
    }

    fn user(&self, n: u64) -> User {
        let h = mix(self.seed ^ mix(n ^ 0x5EED_0F05_E125));
        let bits = |shift: u32, modulo: u64| (h.rotate_right(shift)) % modulo;
        let first = FIRST_NAMES[bits(0, FIRST_NAMES.len() as u64) as usize];
        let last = LAST_NAMES[bits(8, LAST_NAMES.len() as u64) as usize];
        let home = self.random_place(mix(h));
        let city = self.places[home].city;
        let digits = bits(16, 100);
        let ascii = |s: &str| -> String { s.chars().filter(char::is_ascii_alphanumeric).collect() };
        let screen_name = match bits(24, 5) {
            0 => format!(
                "{}_{}{digits}",
                ascii(first).to_lowercase(),
                ascii(last).to_lowercase()
            ),
            1 => format!("{}{}", ascii(first), ascii(last)),
            2 => format!("{}{}", ascii(first).to_lowercase(), 1960 + bits(28, 45)),
            3 => format!("{}_{}", ascii(last), ascii(city.name)),
            _ => format!("real{}{digits}", ascii(first)),
        };
        let name = match bits(32, 6) {
            0 => first.to_owned(),
            1 => format!("{first} {} 🏳️‍🌈", last.chars().next().unwrap_or('X')),
            2 => format!("{first} {last} ✨"),
            _ => format!("{first} {last}"),
        };
        let location = match bits(36, 8) {
            0 | 1 => None,
            2 => Some(city.name.to_owned()),
            3 => Some(format!("{}, {}", city.name, city.region)),
            4 => Some("Earth 🌍".to_owned()),
            // Free text naming another city: a location is not a place.
            5 => Some(format!("{} ➡️ London", city.name)),
            6 => Some(format!("somewhere near {}", city.name)),
            _ => Some(format!("{} | {}", city.name, self.places[0].city.name)),
        };
        let old_account = bits(40, 10) < 6;
        let id = if old_account {
            10_000 + bits(44, 4_000_000_000)
        } else {
            700_000_000_000_000_000 + bits(12, 360_000_000_000_000_000)
        };
        let followers = 1u64 << bits(48, 15);
        User {
            id,
            id_str: id.to_string(),
            name,
            screen_name,
            location,
            followers_count: followers + bits(52, followers.max(1)),
            friends_count: 20 + bits(20, 2_000),
            statuses_count: 10 + bits(4, 90_000),
            created_at: twitter_timestamp(1_180_000_000 + bits(56, 360_000_000) as i64),
            verified: bits(60, 1_000) == 0,
            geo_enabled: bits(2, 3) != 0,
            home,
        }
    }

    fn tweet(&self, rng: &mut ChaCha8Rng, id: u64, ms: i64) -> Tweet<'_> {
        // A few heavy users tweet a lot: squaring skews towards low user numbers.
        let u = (rng.random::<f64>().powi(2) * USERS as f64) as u64;
        let user = self.user(u);
        let retweet = rng.random_bool(RETWEET_RATE);
        let roll: f64 = rng.random();
        let topic = if roll < FIRE_RATE {
            Topic::Fire
        } else if roll < FIRE_RATE + NEAR_MISS_RATE {
            Topic::NearMiss
        } else {
            Topic::Chatter
        };
        let place = rng.random_bool(PLACED_RATE).then(|| {
            if topic == Topic::Fire && rng.random_bool(INCIDENT_SHARE) {
                self.incident
            } else if rng.random_bool(0.9) {
                user.home
            } else {
                self.random_place(rng.random())
            }
        });
        let place_kind = match (place, rng.random_range(0..1_000u32)) {
            (None, _) => PlaceKind::City,
            (_, x) if x < ADMIN_PER_MILLE => PlaceKind::Admin,
            (_, x) if x < ADMIN_PER_MILLE + POI_PER_MILLE => PlaceKind::Poi,
            (_, x) if x < ADMIN_PER_MILLE + POI_PER_MILLE + NEIGHBORHOOD_PER_MILLE => {
                PlaceKind::Neighborhood
            }
            (_, x)
                if x < ADMIN_PER_MILLE
                    + POI_PER_MILLE
                    + NEIGHBORHOOD_PER_MILLE
                    + COUNTRY_PER_MILLE =>
            {
                PlaceKind::Country
            }
            _ => PlaceKind::City,
        };
        let here = &self.places[place.unwrap_or(user.home)];
        let local_lang = here.country.lang != "en" && rng.random_bool(0.7);
        let lang = if local_lang { here.country.lang } else { "en" };
        let templates: &[&str] = match (lang, topic) {
            ("fr", Topic::Fire) => FIRE_FR,
            ("fr", _) => CHATTER_FR,
            ("de", Topic::Fire) => FIRE_DE,
            ("de", _) => CHATTER_DE,
            ("es", Topic::Fire) => FIRE_ES,
            ("es", _) => CHATTER_ES,
            (_, Topic::Fire) => FIRE_EN,
            (_, Topic::NearMiss) => NEAR_MISS_EN,
            (_, Topic::Chatter) => CHATTER_EN,
        };
        let template = templates[rng.random_range(0..templates.len())];
        let mut text = String::with_capacity(160);
        let reply_to =
            (!retweet && rng.random_bool(0.12)).then(|| self.user(rng.random_range(0..USERS)));
        if let Some(other) = &reply_to {
            text.push('@');
            text.push_str(&other.screen_name);
            text.push(' ');
        }
        let long = rng.random_bool(if retweet { 0.5 } else { LONG_RATE });
        if long {
            text.push_str(LEADS[rng.random_range(0..LEADS.len())]);
        }
        expand(template, rng, here, &mut text);
        if rng.random_bool(0.12) {
            text.push(' ');
            text.push_str(EMOJI[rng.random_range(0..EMOJI.len())]);
        }
        if rng.random_bool(0.05) {
            text.push_str("\n\n#");
            text.push_str(TAGS[rng.random_range(0..TAGS.len())]);
        }
        let coordinates = match place {
            Some(_) if rng.random_bool(0.3) => {
                let lat = round6(here.city.lat + rng.random_range(-0.05..0.05));
                let lon = round6(here.city.lon + rng.random_range(-0.07..0.07));
                Some((lat, lon))
            }
            _ => None,
        };
        let form = if retweet {
            let author = self.user(rng.random_range(0..USERS));
            let original_ms = ms - rng.random_range(1_000..86_400_000);
            let original_id = id.saturating_sub(rng.random_range(1u64 << 30..1u64 << 40));
            let top = cut(&format!("RT @{}: {text}", author.screen_name));
            let original = Original {
                created_at: twitter_timestamp(original_ms.div_euclid(1000)),
                id: original_id,
                text: std::mem::replace(&mut text, top),
                user: author,
            };
            Form::Retweet(Box::new(original))
        } else if long && rng.random_bool(NO_EXTENDED_SHARE) {
            Form::Cut
        } else if long {
            Form::Extended
        } else {
            Form::Plain
        };
        let mention = reply_to.map(|other| {
            let end = other.screen_name.chars().count() + 1;
            (other, [0, end])
        });
        Tweet {
            created_at: twitter_timestamp(ms.div_euclid(1000)),
            id,
            text,
            form,
            place_kind,
            source: SOURCES[rng.random_range(0..SOURCES.len())],
            user,
            mention,
            coordinates,
            place: place.map(|p| &self.places[p]),
            lang,
            timestamp_ms: ms,
            retweet_count: if rng.random_bool(0.2) {
                rng.random_range(1..50)
            } else {
                0
            },
        }
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Six decimals, as Twitter's coordinates have (and shorter lines).
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Topic {
    Fire,
    NearMiss,
    Chatter,
}

/// Fills `{city}`, `{tag}` (the city as a hashtag), `{street}`, `{n}` and `{team}`.
fn expand(template: &str, rng: &mut ChaCha8Rng, place: &PlaceInfo, out: &mut String) {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        match &rest[open + 1..open + close] {
            "city" => out.push_str(place.city.name),
            "tag" => out.push_str(&place.tag),
            "street" => out.push_str(STREETS[rng.random_range(0..STREETS.len())]),
            "n" => out.push_str(&rng.random_range(2..9u32).to_string()),
            "team" => out.push_str(TEAMS[rng.random_range(0..TEAMS.len())]),
            other => out.push_str(other),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
}

/// Hashtag entities as Twitter extracts them: `#` not preceded by a word character, then
/// word characters with at least one that is not a digit. Indices count characters.
pub fn hashtags(text: &str) -> Vec<(String, [usize; 2])> {
    let chars: Vec<char> = text.chars().collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '#' && (i == 0 || !word(chars[i - 1])) {
            let end = (i + 1..chars.len())
                .find(|&j| !word(chars[j]))
                .unwrap_or(chars.len());
            let tag: String = chars[i + 1..end].iter().collect();
            if tag.chars().any(|c| !c.is_ascii_digit()) {
                out.push((tag, [i, end]));
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

struct User {
    id: u64,
    id_str: String,
    name: String,
    screen_name: String,
    location: Option<String>,
    followers_count: u64,
    friends_count: u64,
    statuses_count: u64,
    created_at: String,
    verified: bool,
    geo_enabled: bool,
    /// Index of the user's home place.
    home: usize,
}

struct Tweet<'w> {
    created_at: String,
    id: u64,
    /// The whole text, unescaped (for a retweet: `RT @name: ` and the start of the text).
    text: String,
    form: Form,
    place_kind: PlaceKind,
    source: &'static str,
    user: User,
    mention: Option<(User, [usize; 2])>,
    /// (lat, lon)
    coordinates: Option<(f64, f64)>,
    place: Option<&'w PlaceInfo>,
    lang: &'static str,
    timestamp_ms: i64,
    retweet_count: u32,
}

/// How a tweet's text reaches the wire.
enum Form {
    Plain,
    /// Long, in compatibility mode: `text` cut, `extended_tweet.full_text` whole.
    Extended,
    /// Long, fetched without extended mode: `text` cut, `truncated`, no full text anywhere.
    Cut,
    /// A retweet of this status.
    Retweet(Box<Original>),
}

/// The status a retweet retweets.
struct Original {
    created_at: String,
    id: u64,
    text: String,
    user: User,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PlaceKind {
    City,
    Admin,
    Country,
    Poi,
    Neighborhood,
}

/// What compatibility mode leaves of a text over 140 characters: 138 and ` …`.
fn cut(text: &str) -> String {
    if text.chars().count() <= 140 {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(138).collect();
    out.push_str(" …");
    out
}

/// Twitter sends `&`, `<` and `>` in texts as HTML entities.
fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A text as the wire has it (escaped), with its hashtag entities.
fn wire_text(text: &str) -> (String, Vec<(String, [usize; 2])>) {
    let escaped = escape_html(text);
    let tags = hashtags(&escaped);
    (escaped, tags)
}

// The wire format: Twitter API v1.1 field names and order.

#[derive(Serialize)]
struct TweetJson<'a> {
    created_at: &'a str,
    id: u64,
    id_str: String,
    text: String,
    source: &'a str,
    truncated: bool,
    in_reply_to_status_id: Option<u64>,
    in_reply_to_status_id_str: Option<String>,
    in_reply_to_user_id: Option<u64>,
    in_reply_to_user_id_str: Option<&'a str>,
    in_reply_to_screen_name: Option<&'a str>,
    user: UserJson<'a>,
    geo: Option<PointJson>,
    coordinates: Option<PointJson>,
    place: Option<PlaceJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extended_tweet: Option<ExtendedJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retweeted_status: Option<StatusJson<'a>>,
    contributors: Option<()>,
    is_quote_status: bool,
    quote_count: u32,
    reply_count: u32,
    retweet_count: u32,
    favorite_count: u32,
    entities: EntitiesJson<'a>,
    favorited: bool,
    retweeted: bool,
    filter_level: &'a str,
    lang: &'a str,
    timestamp_ms: String,
}

#[derive(Serialize)]
struct ExtendedJson<'a> {
    full_text: String,
    entities: EntitiesJson<'a>,
}

/// A retweeted status: the fields a reader of retweets needs.
#[derive(Serialize)]
struct StatusJson<'a> {
    created_at: &'a str,
    id: u64,
    id_str: String,
    text: String,
    truncated: bool,
    user: UserJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extended_tweet: Option<ExtendedJson<'a>>,
    entities: EntitiesJson<'a>,
}

#[derive(Serialize)]
struct UserJson<'a> {
    id: u64,
    id_str: &'a str,
    name: &'a str,
    screen_name: &'a str,
    location: Option<&'a str>,
    url: Option<&'a str>,
    description: Option<&'a str>,
    protected: bool,
    verified: bool,
    followers_count: u64,
    friends_count: u64,
    statuses_count: u64,
    created_at: &'a str,
    geo_enabled: bool,
    lang: Option<&'a str>,
}

#[derive(Serialize)]
struct PointJson {
    #[serde(rename = "type")]
    kind: &'static str,
    coordinates: [f64; 2],
}

#[derive(Serialize)]
struct PlaceJson<'a> {
    id: String,
    url: String,
    place_type: &'a str,
    name: String,
    full_name: String,
    country_code: &'a str,
    country: &'a str,
    bounding_box: BoxJson<'a>,
    attributes: Empty,
}

#[derive(Serialize)]
struct BoxJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    coordinates: &'a [[[f64; 2]; 5]; 1],
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct EntitiesJson<'a> {
    hashtags: Vec<HashtagJson<'a>>,
    urls: [(); 0],
    user_mentions: Vec<MentionJson<'a>>,
    symbols: [(); 0],
}

#[derive(Serialize)]
struct HashtagJson<'a> {
    text: &'a str,
    indices: [usize; 2],
}

#[derive(Serialize)]
struct MentionJson<'a> {
    screen_name: &'a str,
    name: &'a str,
    id: u64,
    id_str: &'a str,
    indices: [usize; 2],
}

fn entities_json<'a>(
    tags: &'a [(String, [usize; 2])],
    mention: Option<&'a (User, [usize; 2])>,
) -> EntitiesJson<'a> {
    EntitiesJson {
        hashtags: tags
            .iter()
            .map(|(text, indices)| HashtagJson {
                text,
                indices: *indices,
            })
            .collect(),
        urls: [],
        user_mentions: mention
            .iter()
            .map(|(o, indices)| MentionJson {
                screen_name: &o.screen_name,
                name: &o.name,
                id: o.id,
                id_str: &o.id_str,
                indices: *indices,
            })
            .collect(),
        symbols: [],
    }
}

fn user_json(u: &User) -> UserJson<'_> {
    UserJson {
        id: u.id,
        id_str: &u.id_str,
        name: &u.name,
        screen_name: &u.screen_name,
        location: u.location.as_deref(),
        url: None,
        description: None,
        protected: false,
        verified: u.verified,
        followers_count: u.followers_count,
        friends_count: u.friends_count,
        statuses_count: u.statuses_count,
        created_at: &u.created_at,
        geo_enabled: u.geo_enabled,
        lang: None,
    }
}

impl Tweet<'_> {
    /// The tweet as one JSON line (without the newline); `created_at` replaced when given.
    fn to_json(&self, created_at: Option<&str>) -> Vec<u8> {
        let u = &self.user;
        let point = |[x, y]: [f64; 2]| PointJson {
            kind: "Point",
            coordinates: [x, y],
        };
        let reply = self.mention.as_ref().map(|(other, _)| other);
        let entities =
            |tags, mentions: bool| entities_json(tags, self.mention.as_ref().filter(|_| mentions));
        // What the wire carries: `text` (cut when long), and the whole text when the mode
        // keeps it.
        let long = matches!(self.form, Form::Extended | Form::Cut);
        let (text, tags) = wire_text(&if long {
            cut(&self.text)
        } else {
            self.text.clone()
        });
        let (full_text, full_tags) = wire_text(&self.text);
        let extended_tweet = matches!(self.form, Form::Extended).then(|| ExtendedJson {
            full_text,
            entities: entities(&full_tags, true),
        });
        let original = match &self.form {
            Form::Retweet(o) => Some(o),
            _ => None,
        };
        let original_wire = original.map(|o| {
            let long = o.text.chars().count() > 140;
            (wire_text(&cut(&o.text)), wire_text(&o.text), long)
        });
        let retweeted_status = match (original, &original_wire) {
            (Some(o), Some(((cut_text, cut_tags), (full, full_tags), long))) => Some(StatusJson {
                created_at: &o.created_at,
                id: o.id,
                id_str: o.id.to_string(),
                text: cut_text.clone(),
                truncated: *long,
                user: user_json(&o.user),
                extended_tweet: long.then(|| ExtendedJson {
                    full_text: full.clone(),
                    entities: entities(full_tags, false),
                }),
                entities: entities(cut_tags, false),
            }),
            _ => None,
        };
        let place = self.place.map(|p| {
            let (kind, name, full_name) = match self.place_kind {
                PlaceKind::City => ("city", p.city.name.to_owned(), p.full_name.clone()),
                PlaceKind::Admin => (
                    "admin",
                    p.city.region.to_owned(),
                    format!("{}, {}", p.city.region, p.country.name),
                ),
                PlaceKind::Country => (
                    "country",
                    p.country.name.to_owned(),
                    p.country.name.to_owned(),
                ),
                PlaceKind::Poi => {
                    let name = format!("{} Central Station", p.city.name);
                    ("poi", name.clone(), name)
                }
                PlaceKind::Neighborhood => (
                    "neighborhood",
                    "City Centre".to_owned(),
                    format!("City Centre, {}", p.city.name),
                ),
            };
            let id = if kind == "city" {
                p.id.clone()
            } else {
                format!("{:016x}", mix(fnv(&full_name) ^ fnv(kind)))
            };
            PlaceJson {
                url: format!("https://api.twitter.com/1.1/geo/id/{id}.json"),
                id,
                place_type: kind,
                name,
                full_name,
                country_code: p.country.code,
                country: p.country.name,
                bounding_box: BoxJson {
                    kind: "Polygon",
                    coordinates: &p.bbox,
                },
                attributes: Empty {},
            }
        });
        let json = TweetJson {
            created_at: created_at.unwrap_or(&self.created_at),
            id: self.id,
            id_str: self.id.to_string(),
            text,
            source: self.source,
            truncated: long,
            in_reply_to_status_id: reply.map(|_| self.id.saturating_sub(1 << 30)),
            in_reply_to_status_id_str: reply.map(|_| self.id.saturating_sub(1 << 30).to_string()),
            in_reply_to_user_id: reply.map(|o| o.id),
            in_reply_to_user_id_str: reply.map(|o| o.id_str.as_str()),
            in_reply_to_screen_name: reply.map(|o| o.screen_name.as_str()),
            user: user_json(u),
            // `geo` is the deprecated [lat, lon]; `coordinates` is GeoJSON [lon, lat].
            geo: self.coordinates.map(|(lat, lon)| point([lat, lon])),
            coordinates: self.coordinates.map(|(lat, lon)| point([lon, lat])),
            place,
            extended_tweet,
            retweeted_status,
            contributors: None,
            is_quote_status: false,
            quote_count: 0,
            reply_count: 0,
            retweet_count: self.retweet_count,
            favorite_count: self.retweet_count * 3,
            entities: entities(&tags, true),
            favorited: false,
            retweeted: false,
            filter_level: "low",
            lang: self.lang,
            timestamp_ms: self.timestamp_ms.to_string(),
        };
        // Serializing plain structs of strings and numbers cannot fail; an empty line
        // (counted as malformed downstream) would be the visible symptom if it ever did.
        serde_json::to_vec(&json).unwrap_or_default()
    }
}

const SOURCES: &[&str] = &[
    "<a href=\"http://twitter.com/download/iphone\" rel=\"nofollow\">Twitter for iPhone</a>",
    "<a href=\"http://twitter.com/download/android\" rel=\"nofollow\">Twitter for Android</a>",
    "<a href=\"https://mobile.twitter.com\" rel=\"nofollow\">Twitter Web App</a>",
    "<a href=\"https://about.twitter.com/products/tweetdeck\" rel=\"nofollow\">TweetDeck</a>",
    "<a href=\"http://instagram.com\" rel=\"nofollow\">Instagram</a>",
];

const FIRST_NAMES: &[&str] = &[
    "Oliver", "Amelia", "Harry", "Olivia", "Jack", "Isla", "George", "Emily", "Noah", "Ava",
    "Charlie", "Sophie", "Jacob", "Grace", "Alfie", "Mia", "Freddie", "Poppy", "Thomas", "Ella",
    "Aoife", "Siobhán", "Seán", "Niamh", "Zoë", "Chloé", "Mohammed", "Priya", "Rhys", "Ffion",
    "Callum", "Eilidh", "Gaz", "Bex", "Dave", "Shaz", "Ciarán", "Mairead", "Jamal", "Lucia",
];

const LAST_NAMES: &[&str] = &[
    "Smith",
    "Jones",
    "Taylor",
    "Brown",
    "Williams",
    "Wilson",
    "Johnson",
    "Davies",
    "Robinson",
    "Wright",
    "Thompson",
    "Evans",
    "Walker",
    "White",
    "Roberts",
    "Green",
    "Hall",
    "Wood",
    "Jackson",
    "Clarke",
    "Murphy",
    "O'Brien",
    "Kelly",
    "MacDonald",
    "Campbell",
    "Patel",
    "Khan",
    "Singh",
    "Hughes",
    "Morgan",
    "Lewis",
    "Price",
    "Byrne",
    "Nowak",
    "Ahmed",
    "Begum",
    "Reid",
    "Fraser",
    "Doyle",
    "Kowalski",
];

const STREETS: &[&str] = &[
    "the High Street",
    "Station Road",
    "Church Lane",
    "Victoria Road",
    "Market Street",
    "Queen Street",
    "Park Road",
    "the ring road",
    "Mill Lane",
    "King Street",
    "the retail park",
    "the industrial estate",
];

const TEAMS: &[&str] = &[
    "Reds", "Blues", "Villa", "Toffees", "Magpies", "Hoops", "Gers", "Saints", "Owls", "Foxes",
];

const EMOJI: &[&str] = &[
    "😂",
    "🙄",
    "😍",
    "🙌",
    "👀",
    "😭",
    "🤷‍♀️",
    "☕",
    "🍺",
    "⚽",
    "🌧️",
];

const TAGS: &[&str] = &[
    "MondayMotivation",
    "photography",
    "StrictlyComeDancing",
    "GBBO",
    "traffic",
    "weather",
    "November",
    "FF",
];

/// About a fire. Each matches the default keywords (`fire`, `fire truck`, `fire engine`,
/// `#fire`) through at least one word or hashtag.
const FIRE_EN: &[&str] = &[
    "Massive fire on {street} right now, stay safe everyone #fire",
    "Fire engines everywhere near {street}. Anyone know what's going on?",
    "{n} fire engines just flew past the house",
    "Smoke all over {city}, huge fire near the station #{tag} #fire",
    "Fire truck blocking {street} again",
    "Thank you to the fire brigade, you were amazing tonight",
    "FIRE at the old warehouse on {street}!! 🔥",
    "Can see the flames from here. Hope everyone got out of that fire ok",
    "Road closed on {street} due to a fire, avoid the area #fire #traffic",
    "Kitchen fire at work today, all fine now. Fire alarm still ringing in my ears",
    "Firefighters tackling a blaze on {street} #Fire",
    "Huge blaze in {city} tonight #FireTruck",
    "Watching the fire engine crews at work on {street}, absolute heroes",
    "Is that a fire by {street}? Sirens everywhere #{tag}",
    "Bin fire outside the flats again. Third time this month",
    "Huge thanks to {city} Fire & Rescue tonight, true heroes",
];

/// Not about a fire, and no match for the default keywords, though a substring search for
/// `fire` would say otherwise.
const NEAR_MISS_EN: &[&str] = &[
    "Firefox keeps crashing on me, time to switch browsers",
    "Just got fired lol. New job hunt starts tomorrow",
    "Bonfire night this weekend, who's going? #bonfirenight",
    "Fireworks over {city} tonight were unreal #fireworks",
    "Ceasefire talks on the news again",
    "Sat by the campfire with a cuppa",
    "this new track is 🔥🔥🔥",
    "Fireman Sam marathon with the kids",
    "Spitfire flypast over {city}! #RemembranceSunday",
    "Absolutely fired up for the match tonight, come on you {team}",
    "Wildfires in California look terrifying",
    "Firestick not working again, no telly tonight",
    "Bonfire toffee season 🔥",
    "New #firefox update is actually good",
];

const CHATTER_EN: &[&str] = &[
    "Morning {city}! Grey skies again",
    "Can't believe the traffic on {street} today",
    "Anyone fancy a pint tonight?",
    "Match day! Come on you {team}",
    "Train delayed again. Classic.",
    "New blog post: ten things to do in {city} #travel",
    "Happy Friday everyone!",
    "Coffee number three and it's not even 10am",
    "Watching Strictly with a brew",
    "haha yes absolutely",
    "Rain rain go away #{tag}",
    "Best chippy in {city}? Asking for a friend",
    "Roadworks on {street} for the {n}th week running",
    "Lovely walk by the river this morning",
    "Why is everything so expensive",
    "Just finished a {n}k run, legs are done",
    "Christmas adverts already?! It's November",
    "Queue at the post office is out the door",
    "Not a bad view from the office today #{tag}",
    "Who else is still awake",
    "Fish & chips on {street} <3",
    "Tea > coffee, fight me",
];

const FIRE_FR: &[&str] = &[
    "Incendie près de la gare, les pompiers sont sur place #incendie",
    "Gros feu à {city} ce soir, beaucoup de fumée",
];
const CHATTER_FR: &[&str] = &[
    "Bonjour {city} ! Il fait beau aujourd'hui",
    "Encore des bouchons ce matin…",
    "Quelqu'un pour un café ?",
    "Vivement le week-end",
];
const FIRE_DE: &[&str] = &[
    "Feuerwehr im Einsatz in der Innenstadt #Feuer",
    "Großbrand in {city}, Fenster geschlossen halten",
];
const CHATTER_DE: &[&str] = &[
    "Guten Morgen {city}!",
    "Schon wieder Stau auf dem Ring",
    "Endlich Wochenende",
];
const FIRE_ES: &[&str] = &["Incendio en el centro, los bomberos ya están aquí #incendio"];
const CHATTER_ES: &[&str] = &[
    "¡Buenos días {city}!",
    "Qué calor hace hoy",
    "Por fin viernes",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tweets::calendar::parse_twitter_timestamp;
    use serde_json::Value;

    fn day(s: &str) -> Day {
        s.parse().unwrap()
    }

    #[test]
    fn same_options_same_bytes_other_seed_other_bytes() {
        let mut opts = GenOptions::new(day("2018-11-01"), day("2018-11-01"), 2_000);
        opts.per_part = 700;
        let a = render_part(&opts, opts.from, 1).unwrap();
        let b = render_part(&opts, opts.from, 1).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.key, "tweets/2018-11-01/part-00001.jsonl");
        opts.seed = 1;
        assert_ne!(render_part(&opts, opts.from, 1).unwrap().bytes, a.bytes);
        opts.gzip = true;
        let gz = render_part(&opts, opts.from, 1).unwrap();
        assert_eq!(gz.bytes, render_part(&opts, opts.from, 1).unwrap().bytes);
        assert!(gz.key.ends_with(".jsonl.gz"));
    }

    #[test]
    fn parts_hold_tweets_of_their_day_in_time_order() {
        let mut opts = GenOptions::new(day("2018-11-02"), day("2018-11-02"), 25_000);
        opts.per_part = 10_000;
        assert_eq!(opts.parts_per_day(), 3);
        let (lo, hi) = (opts.from.start_secs(), opts.from.plus(1).start_secs());
        let mut tweets = 0;
        let mut malformed = 0;
        let (mut notices, mut announced_notices) = (0u64, 0u64);
        let (mut retweets, mut extended, mut cut, mut non_city, mut escaped) = (0, 0, 0, 0, 0);
        let mut last_ms = 0i64;
        let mut late = 0;
        let mut ids = std::collections::HashSet::new();
        let (mut placed, mut gb, mut fire_tags) = (0, 0, 0);
        for part in 0..3 {
            let p = render_part(&opts, opts.from, part).unwrap();
            let text = String::from_utf8(p.bytes).unwrap();
            assert!(text.ends_with('\n'));
            let mut in_part = 0u64;
            announced_notices += p.notices;
            for line in text.lines() {
                if line.is_empty() {
                    notices += 1;
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    malformed += 1;
                    continue;
                };
                if v.get("created_at").is_none() {
                    let kinds = ["delete", "limit", "scrub_geo", "status_withheld"];
                    assert!(kinds.iter().any(|k| v.get(*k).is_some()), "{line}");
                    notices += 1;
                    continue;
                }
                let Some(secs) = v["created_at"].as_str().and_then(parse_twitter_timestamp) else {
                    malformed += 1;
                    continue;
                };
                if let Some(rt) = v.get("retweeted_status") {
                    retweets += 1;
                    assert!(v["text"].as_str().unwrap().starts_with("RT @"), "{line}");
                    let whole = rt["extended_tweet"]["full_text"]
                        .as_str()
                        .or(rt["text"].as_str())
                        .unwrap();
                    assert_eq!(rt["truncated"], rt["extended_tweet"].is_object());
                    assert!(
                        whole.chars().count() >= rt["text"].as_str().unwrap().chars().count() - 2
                    );
                }
                match (v["truncated"].as_bool(), v.get("extended_tweet")) {
                    (Some(true), Some(e)) => {
                        extended += 1;
                        assert!(e["full_text"].as_str().unwrap().chars().count() > 140);
                    }
                    (Some(true), None) => cut += 1,
                    _ => {}
                }
                escaped += usize::from(v["text"].as_str().unwrap().contains("&amp;"));
                in_part += 1;
                if secs < lo {
                    assert!(part == 0 && secs >= lo - 2, "{line}");
                    late += 1;
                } else {
                    assert!(secs < hi, "{line}");
                }
                let ms: i64 = v["timestamp_ms"].as_str().unwrap().parse().unwrap();
                assert_eq!(ms / 1000, secs);
                assert!(ms >= last_ms);
                last_ms = ms;
                assert!(ids.insert(v["id_str"].as_str().unwrap().to_owned()));
                assert_eq!(v["id"].as_u64().unwrap().to_string(), v["id_str"]);
                if v["place"].is_object() {
                    placed += 1;
                    gb += usize::from(v["place"]["country_code"] == "GB");
                    non_city += usize::from(v["place"]["place_type"] != "city");
                    assert!(v["place"]["full_name"]
                        .as_str()
                        .unwrap()
                        .starts_with(v["place"]["name"].as_str().unwrap()));
                }
                for h in v["entities"]["hashtags"].as_array().unwrap() {
                    let [a, b] = [0, 1].map(|i| h["indices"][i].as_u64().unwrap() as usize);
                    let text: Vec<char> = v["text"].as_str().unwrap().chars().collect();
                    let tag: String = text[a + 1..b].iter().collect();
                    assert_eq!(tag, h["text"].as_str().unwrap());
                    fire_tags += usize::from(tag.eq_ignore_ascii_case("fire"));
                }
            }
            assert_eq!(in_part, p.tweets);
            tweets += in_part;
        }
        assert_eq!(tweets, 25_000);
        assert!(late <= 3);
        // Roughly the rates the module promises.
        assert!((1..=30).contains(&malformed), "{malformed}");
        assert_eq!(notices, announced_notices);
        assert!((100..=260).contains(&notices), "{notices}");
        assert!((4_000..6_000).contains(&retweets), "{retweets}");
        assert!(extended > 20 && cut > 5, "{extended} {cut}");
        assert!((1_500..3_000).contains(&non_city), "{non_city} of {placed}");
        assert!(escaped > 10, "{escaped}");
        assert!((13_500..16_500).contains(&placed), "{placed}");
        assert!(gb * 100 / placed > 40, "{gb} of {placed}");
        assert!(fire_tags > 10, "{fire_tags}");
    }

    #[test]
    fn hashtags_are_extracted_like_twitter() {
        let tags = hashtags("#Fire at #5 a#b é #fire_2 (#x) #🔥");
        let names: Vec<_> = tags.iter().map(|(t, i)| (t.as_str(), *i)).collect();
        assert_eq!(
            names,
            [("Fire", [0, 5]), ("fire_2", [18, 25]), ("x", [27, 29])]
        );
    }

    #[test]
    fn options_are_checked() {
        let d = day("2018-11-01");
        assert!(GenOptions::new(d, d.plus(-1), 1).validate().is_err());
        assert!(GenOptions::new(d, d.plus(366), 1).validate().is_err());
        assert!(GenOptions::new(d, d.plus(365), 1).validate().is_ok());
        assert!(GenOptions::new(d, d, 0).validate().is_err());
        let mut o = GenOptions::new(d, d, 1);
        o.per_part = MAX_TWEETS_PER_PART + 1;
        assert!(o.validate().is_err());
        let mut o = GenOptions::new(d, d, MAX_TWEETS_PER_DAY);
        o.per_part = 1;
        assert!(o.validate().is_err());
        o.per_part = MAX_TWEETS_PER_PART;
        assert!(o.validate().is_ok());
    }
}
