//! Fault injection for demonstrations and tests:
//! `duplicate=P,crash=P,daemon-crash=P,poison=ID;ID`.
//!
//! - `duplicate`: each message sent is delivered twice with probability P.
//! - `crash`: a stage invocation fails with probability P, half the time before its side
//!   effects and half after them (so its outputs exist and are then redelivered).
//! - `daemon-crash`: a daemon tick dies with probability P at a random point mid-tick.
//! - `poison`: partitions that every stage fails, so they end in the dead-letter queue.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use rand::Rng;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    pub duplicate: f64,
    pub crash: f64,
    pub daemon_crash: f64,
    pub poison: BTreeSet<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid fault spec `{spec}`: {reason}")]
pub struct FaultSpecError {
    spec: String,
    reason: String,
}

/// Where a simulated crash strikes relative to the invocation's side effects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    BeforeEffects,
    AfterEffects,
}

impl Faults {
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    fn roll(p: f64) -> bool {
        p > 0.0 && rand::rng().random_bool(p.min(1.0))
    }

    pub fn duplicate_message(&self) -> bool {
        Self::roll(self.duplicate)
    }

    /// Whether (and where) this stage invocation crashes.
    pub fn stage_crash(&self) -> Option<CrashPoint> {
        Self::roll(self.crash).then(|| {
            if rand::rng().random_bool(0.5) {
                CrashPoint::BeforeEffects
            } else {
                CrashPoint::AfterEffects
            }
        })
    }

    /// For a daemon tick with `checkpoints` places it could die: the one it dies at, if any.
    pub fn daemon_crash_at(&self, checkpoints: u32) -> Option<u32> {
        Self::roll(self.daemon_crash).then(|| rand::rng().random_range(0..checkpoints.max(1)))
    }

    pub fn is_poison(&self, partition: u64) -> bool {
        self.poison.contains(&partition)
    }
}

impl FromStr for Faults {
    type Err = FaultSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| FaultSpecError {
            spec: spec.to_owned(),
            reason,
        };
        let mut faults = Faults::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| err(format!("`{part}` is not name=value")))?;
            let probability = || -> Result<f64, FaultSpecError> {
                let p: f64 = value
                    .parse()
                    .map_err(|_| err(format!("{name}: `{value}` is not a number")))?;
                if (0.0..=1.0).contains(&p) {
                    Ok(p)
                } else {
                    Err(err(format!("{name}: {p} is not a probability in [0, 1]")))
                }
            };
            match name.trim() {
                "duplicate" => faults.duplicate = probability()?,
                "crash" => {
                    let p = probability()?;
                    if p >= 1.0 {
                        return Err(err("crash=1 would fail every invocation forever".into()));
                    }
                    faults.crash = p;
                }
                "daemon-crash" => {
                    let p = probability()?;
                    if p >= 1.0 {
                        return Err(err("daemon-crash=1 would fail every tick forever".into()));
                    }
                    faults.daemon_crash = p;
                }
                "poison" => {
                    for id in value.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                        let id = id.parse().map_err(|_| {
                            err(format!("poison: `{id}` is not a partition number"))
                        })?;
                        faults.poison.insert(id);
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown fault `{other}`; known: duplicate, crash, daemon-crash, poison"
                    )))
                }
            }
        }
        Ok(faults)
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let poison: Vec<String> = self.poison.iter().map(u64::to_string).collect();
        write!(
            f,
            "duplicate={},crash={},daemon-crash={},poison={}",
            self.duplicate,
            self.crash,
            self.daemon_crash,
            poison.join(";")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_spec() {
        let f: Faults = "duplicate=0.2,crash=0.1,daemon-crash=0.2,poison=3;17"
            .parse()
            .unwrap();
        assert_eq!(f.duplicate, 0.2);
        assert_eq!(f.crash, 0.1);
        assert_eq!(f.daemon_crash, 0.2);
        assert_eq!(f.poison, BTreeSet::from([3, 17]));
        assert_eq!(f.to_string().parse::<Faults>().unwrap(), f);
        assert!("".parse::<Faults>().unwrap().is_none());
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "duplicate",
            "duplicate=2",
            "crash=x",
            "crash=1",
            "poison=a",
            "melt=0.1",
        ] {
            assert!(bad.parse::<Faults>().is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_probability_never_fires() {
        let f = Faults::default();
        assert!((0..1000).all(|_| !f.duplicate_message() && f.stage_crash().is_none()));
        assert!(f.daemon_crash_at(5).is_none());
    }
}
