//! Civil dates (UTC days) and Twitter's timestamp format, without a date crate: all sluice
//! needs is `YYYY-MM-DD`, day arithmetic and `"Thu Nov 01 12:34:56 +0000 2018"`.
//!
//! Conversions use Howard Hinnant's `days_from_civil` / `civil_from_days` algorithms
//! (proleptic Gregorian calendar), exact for every year this module accepts.

use std::fmt;
use std::str::FromStr;

pub const SECONDS_PER_DAY: i64 = 86_400;

/// Years accepted in dates: Twitter did not exist before 2006, and four digits is the format.
pub const MIN_YEAR: i64 = 1970;
pub const MAX_YEAR: i64 = 9999;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
/// Day 0 (1970-01-01) was a Thursday.
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// A UTC calendar day, as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(i64);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("must be a date YYYY-MM-DD, got `{0}`")]
    Format(String),
    #[error("`{0}` is not a day of the calendar")]
    NoSuchDay(String),
    #[error("year must be from {MIN_YEAR} to {MAX_YEAR}, got `{0}`")]
    Year(String),
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Day {
    pub fn from_ymd(y: i64, m: i64, d: i64) -> Option<Self> {
        let valid = (MIN_YEAR..=MAX_YEAR).contains(&y)
            && (1..=12).contains(&m)
            && (1..=days_in_month(y, m)).contains(&d);
        valid.then(|| Self(days_from_civil(y, m, d)))
    }

    /// Days since 1970-01-01.
    pub fn number(self) -> i64 {
        self.0
    }

    pub fn ymd(self) -> (i64, i64, i64) {
        civil_from_days(self.0)
    }

    /// The day `n` days later (earlier when negative).
    pub fn plus(self, n: i64) -> Self {
        Self(self.0 + n)
    }

    /// Days from `self` to `other` (negative when `other` is earlier).
    pub fn days_until(self, other: Day) -> i64 {
        other.0 - self.0
    }

    /// Unix seconds at 00:00:00 UTC.
    pub fn start_secs(self) -> i64 {
        self.0 * SECONDS_PER_DAY
    }

    /// `from..=to`, in order.
    pub fn range(from: Day, to: Day) -> impl Iterator<Item = Day> {
        (from.0..=to.0).map(Day)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl FromStr for Day {
    type Err = DateError;

    /// Exactly `YYYY-MM-DD`: a date is part of a job's identity, so one spelling per day.
    fn from_str(s: &str) -> Result<Self, DateError> {
        let b = s.as_bytes();
        let shape = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if !shape {
            return Err(DateError::Format(s.to_owned()));
        }
        let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap_or(-1);
        let (y, m, d) = (num(0..4), num(5..7), num(8..10));
        if !(MIN_YEAR..=MAX_YEAR).contains(&y) {
            return Err(DateError::Year(s.to_owned()));
        }
        Self::from_ymd(y, m, d).ok_or_else(|| DateError::NoSuchDay(s.to_owned()))
    }
}

/// Formats unix seconds as Twitter's `created_at`: `"Thu Nov 01 12:34:56 +0000 2018"`.
pub fn twitter_timestamp(secs: i64) -> String {
    let day = Day(secs.div_euclid(SECONDS_PER_DAY));
    let of_day = secs.rem_euclid(SECONDS_PER_DAY);
    let (y, m, d) = day.ymd();
    format!(
        "{} {} {d:02} {:02}:{:02}:{:02} +0000 {y:04}",
        WEEKDAYS[day.0.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
    )
}

/// Parses Twitter's `created_at` into unix seconds. The weekday is not checked against the
/// date (it is redundant); the offset is applied, although Twitter always writes `+0000`.
pub fn parse_twitter_timestamp(s: &str) -> Option<i64> {
    let mut parts = s.split(' ');
    let (weekday, month, day, time, offset, year) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() || weekday.len() != 3 || day.len() != 2 || year.len() != 4 {
        return None;
    }
    let digits = |t: &str| -> Option<i64> {
        if t.bytes().all(|c| c.is_ascii_digit()) && !t.is_empty() {
            t.parse().ok()
        } else {
            None
        }
    };
    let m = MONTHS.iter().position(|&name| name == month)? as i64 + 1;
    let date = Day::from_ymd(digits(year)?, m, digits(day)?)?;
    // Byte checks before slicing: a slice inside a multi-byte character would panic.
    let t = time.as_bytes();
    if t.len() != 8 || t[2] != b':' || t[5] != b':' || !time.is_ascii() {
        return None;
    }
    let (hh, mm, ss) = (
        digits(&time[0..2])?,
        digits(&time[3..5])?,
        digits(&time[6..8])?,
    );
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let o = offset.as_bytes();
    if o.len() != 5 || !(o[0] == b'+' || o[0] == b'-') || !offset.is_ascii() {
        return None;
    }
    let (oh, om) = (digits(&offset[1..3])?, digits(&offset[3..5])?);
    if om > 59 {
        return None;
    }
    let sign = if o[0] == b'-' { -1 } else { 1 };
    Some(date.start_secs() + hh * 3600 + mm * 60 + ss - sign * (oh * 3600 + om * 60))
}

/// Which records of one folder count, when a range of days is read folder by folder: the
/// folder of day F (`{prefix}F/`) holds the records created on F and, filed late, some of
/// the day before's (fire-tweets' layout, and any date-partitioned pipeline source's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FolderWindow {
    /// Unix seconds `[lo, hi)` a record here must be created in to count.
    pub window: (i64, i64),
    /// Unix seconds of the days a record here may be filed for (its own and the one
    /// before): one created outside them is misfiled. `None` when the folder is not known.
    pub filed_for: Option<(i64, i64)>,
    /// The folder after the range: only its late records (created on the range's last
    /// day) are read, and nothing else about it is counted (it is that day's).
    pub late_only: bool,
}

impl FolderWindow {
    /// The window of the folder of day `folder` when reading `from..=to` (`None`, or a day
    /// that is not one of the range's folders: the whole range, nothing misfiled).
    pub fn new(from: Day, to: Day, folder: Option<Day>) -> FolderWindow {
        let Some(f) = folder.filter(|f| (from..=to.plus(1)).contains(f)) else {
            return FolderWindow {
                window: (from.start_secs(), to.plus(1).start_secs()),
                filed_for: None,
                late_only: false,
            };
        };
        // Created on F or F-1, within the range.
        let window = (
            f.plus(-1).max(from).start_secs(),
            f.min(to).plus(1).start_secs(),
        );
        FolderWindow {
            window,
            filed_for: (f <= to).then(|| (f.plus(-1).start_secs(), f.plus(1).start_secs())),
            late_only: f > to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_counts_its_day_and_the_late_records_of_the_day_before() {
        let d = |s: &str| s.parse::<Day>().unwrap();
        let (from, to) = (d("2018-11-01"), d("2018-11-03"));
        let secs = |s: &str| d(s).start_secs();
        let first = FolderWindow::new(from, to, Some(from));
        assert_eq!(first.window, (secs("2018-11-01"), secs("2018-11-02")));
        assert_eq!(
            first.filed_for,
            Some((secs("2018-10-31"), secs("2018-11-02")))
        );
        assert!(!first.late_only);
        let second = FolderWindow::new(from, to, Some(d("2018-11-02")));
        assert_eq!(second.window, (secs("2018-11-01"), secs("2018-11-03")));
        let after = FolderWindow::new(from, to, Some(d("2018-11-04")));
        assert_eq!(after.window, (secs("2018-11-03"), secs("2018-11-04")));
        assert_eq!((after.filed_for, after.late_only), (None, true));
        let whole = FolderWindow {
            window: (secs("2018-11-01"), secs("2018-11-04")),
            filed_for: None,
            late_only: false,
        };
        assert_eq!(FolderWindow::new(from, to, None), whole);
        assert_eq!(FolderWindow::new(from, to, Some(d("2018-11-05"))), whole);
        assert_eq!(FolderWindow::new(from, to, Some(d("2018-10-31"))), whole);
    }

    #[test]
    fn days_round_trip_through_the_calendar() {
        for n in Day::from_ymd(1970, 1, 1).unwrap().number()
            ..=Day::from_ymd(2101, 1, 1).unwrap().number()
        {
            let day = Day(n);
            let (y, m, d) = day.ymd();
            assert_eq!(Day::from_ymd(y, m, d), Some(day));
            assert_eq!(day.to_string().parse::<Day>(), Ok(day));
        }
        assert_eq!(Day::from_ymd(2018, 11, 1).unwrap().number(), 17_836);
        assert_eq!(
            Day::from_ymd(2020, 2, 29).unwrap().to_string(),
            "2020-02-29"
        );
        assert_eq!(Day::from_ymd(2019, 2, 29), None);
        assert_eq!(Day::from_ymd(1900, 1, 1), None);
        let nov1 = "2018-11-01".parse::<Day>().unwrap();
        assert_eq!(nov1.plus(30).to_string(), "2018-12-01");
        assert_eq!(nov1.days_until(nov1.plus(-1)), -1);
        assert_eq!(
            Day::range(nov1, nov1.plus(2))
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            ["2018-11-01", "2018-11-02", "2018-11-03"]
        );
    }

    #[test]
    fn dates_have_one_spelling() {
        for bad in [
            "2018-11-1",
            "2018/11/01",
            "18-11-01",
            "2018-11-01 ",
            "+018-11-01",
            "2018-1a-01",
            "",
        ] {
            assert!(
                matches!(bad.parse::<Day>(), Err(DateError::Format(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "2018-02-30".parse::<Day>(),
            Err(DateError::NoSuchDay(_))
        ));
        assert!(matches!(
            "2018-13-01".parse::<Day>(),
            Err(DateError::NoSuchDay(_))
        ));
        assert!(matches!(
            "0999-01-01".parse::<Day>(),
            Err(DateError::Year(_))
        ));
    }

    #[test]
    fn twitter_timestamps_round_trip() {
        let secs = Day::from_ymd(2018, 11, 1).unwrap().start_secs() + 12 * 3600 + 34 * 60 + 56;
        assert_eq!(twitter_timestamp(secs), "Thu Nov 01 12:34:56 +0000 2018");
        assert_eq!(
            parse_twitter_timestamp("Thu Nov 01 12:34:56 +0000 2018"),
            Some(secs)
        );
        assert_eq!(
            twitter_timestamp(Day::from_ymd(2020, 2, 29).unwrap().start_secs() + 86_399),
            "Sat Feb 29 23:59:59 +0000 2020"
        );
        assert_eq!(
            parse_twitter_timestamp("Thu Nov 01 13:34:56 +0100 2018"),
            Some(secs)
        );
        for n in (0..20_000).map(|i| 1_500_000_000 + i * 7_919) {
            assert_eq!(parse_twitter_timestamp(&twitter_timestamp(n)), Some(n));
        }
        for bad in [
            "",
            "Thu Nov 01 12:34:56 +0000",
            "Thu Nov 1 12:34:56 +0000 2018",
            "Thu Nvm 01 12:34:56 +0000 2018",
            "Thu Nov 31 12:34:56 +0000 2018",
            "Thu Nov 01 24:00:00 +0000 2018",
            "Thu Nov 01 12:34 +0000 2018",
            "Thu Nov 01 12:34:56 0000 2018",
            "Thu Nov 01 12:34:56 +0000 2018 x",
            "2018-11-01T12:34:56Z",
            "Thu Nov 01 12:34:56 +0é0 2018",
            "Thu Nov 01 1é:34:5 +0000 2018",
        ] {
            assert_eq!(parse_twitter_timestamp(bad), None, "{bad}");
        }
    }
}
