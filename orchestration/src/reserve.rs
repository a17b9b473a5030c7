//! Reserved concurrency across jobs, under one budget.
//!
//! A stage function's reserved concurrency is global to the account, but jobs come and go:
//! each job attempt holds a **grant** per stage function, and a function's reserved
//! concurrency is the sum of its grants. Two items in the store keep this honest:
//!
//! - `reserve` / `state`: the sum of grants per function, and a ticket line
//!   (`next_ticket`, `serving`) that admits jobs first come, first served;
//! - `reserve` / `grant#{job}#{attempt}`: one attempt's ticket, need and grants.
//!
//! Every change writes the attempt's grant item and the state item in one transaction,
//! conditional on the versions read, so concurrent daemons never overwrite each other and
//! the grants never add up to more than the budget. The rules:
//!
//! - **Admission.** A new attempt takes a ticket. It is admitted when the budget has room
//!   for its least grant (2, the ESM minimum, per function it needs) *and* for the least
//!   grants of every ticket before it still waiting; until then its mappings stay
//!   disabled. So no job starves (running jobs finish and give their grants back, and
//!   room is kept for earlier tickets), and no job waits for an earlier one's tick while
//!   there is room for both.
//! - **Growth.** An admitted job grows towards its need only while no one is waiting, so a
//!   large job never keeps a later one out for longer than its own tail.
//! - **Shrinking** is the job's own: it lowers its mappings first, then its grants
//!   ([`release_to`]), never below what the previous levers or the messages in flight may
//!   still run, so a function never runs above its reservation (throttled receives would
//!   burn receive counts and push messages to the DLQ).
//! - **Applying.** A function's setting is written from the state item, then the state is
//!   read again; if it moved meanwhile the newer sum is written. Whoever changed the state
//!   last also writes last, so the settings converge to the state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::Function;
use crate::policy::Levers;
use crate::ports::{limits, Attributes, Condition, Key, MappingError, StoreError, TxOp};
use crate::services::Services;

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("reservation record is malformed: {0}")]
    Malformed(String),
}

pub const PK: &str = "reserve";
const STATE_SK: &str = "state";
const GRANT_PREFIX: &str = "grant#";
const TICKET_PREFIX: &str = "ticket#";
/// Optimistic retries of one reservation step before it gives up until the next tick.
const RETRIES: usize = 8;

/// Concurrency per function name.
pub type PerFunction = BTreeMap<String, u32>;

/// The budget's ledger: grants summed per function, and the admission line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub granted: PerFunction,
    pub next_ticket: u64,
    /// The lowest ticket not yet admitted (or skipped).
    pub serving: u64,
    /// Tickets above `serving` already admitted: a later ticket may go first when the
    /// budget has room for everyone before it as well.
    #[serde(default)]
    pub ahead: Vec<u64>,
}

impl State {
    pub fn total(&self) -> u64 {
        self.granted.values().map(|n| u64::from(*n)).sum()
    }

    /// Whether anyone holds a ticket that is not yet served.
    pub fn waiting(&self) -> bool {
        self.next_ticket - self.serving > self.ahead.len() as u64
    }

    /// Tickets before `ticket` still waiting.
    fn waiting_before(&self, ticket: u64) -> u64 {
        let admitted = self.ahead.iter().filter(|t| **t < ticket).count() as u64;
        ticket.saturating_sub(self.serving).saturating_sub(admitted)
    }

    /// `ticket` is admitted or leaves the line: the line moves past it, and past the
    /// tickets after it that went first.
    fn served(&mut self, ticket: u64) {
        if ticket == self.serving {
            self.serving += 1;
            while let Some(i) = self.ahead.iter().position(|t| *t == self.serving) {
                self.ahead.swap_remove(i);
                self.serving += 1;
            }
        } else if ticket > self.serving && !self.ahead.contains(&ticket) {
            self.ahead.push(ticket);
        }
    }
}

/// The most stages a flow has (the word count's four; a keyed flow's three and its merge).
const MAX_STAGES: u64 = 4;

/// The most any job's least grant can be (2, the ESM minimum, for each of its stages):
/// what the line keeps free for each ticket still waiting before a later one that goes
/// first.
const LEAST_PER_JOB: u64 = limits::MIN_MAX_CONCURRENCY as u64 * MAX_STAGES;

/// The least grant of each function a job's stages run in: the ESM minimum for each stage
/// (two transform stages on one function need 2 each).
pub fn least_for(functions: &[Function]) -> PerFunction {
    let mut out = PerFunction::new();
    for f in functions {
        *out.entry(f.as_str().to_owned()).or_default() += limits::MIN_MAX_CONCURRENCY;
    }
    out
}

/// One job attempt's place in the budget.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub ticket: u64,
    pub need: PerFunction,
    /// Empty until admitted.
    pub granted: PerFunction,
}

impl Grant {
    pub fn admitted(&self) -> bool {
        !self.granted.is_empty()
    }
}

fn state_key() -> Key {
    Key::new(PK, STATE_SK)
}

pub fn grant_key(job: &str, attempt: u32) -> Key {
    Key::new(PK, format!("{GRANT_PREFIX}{job}#{attempt}"))
}

fn ticket_key(ticket: u64) -> Key {
    Key::new(PK, format!("{TICKET_PREFIX}{ticket:020}"))
}

fn to_attrs<T: Serialize>(value: &T) -> Result<Attributes, ReserveError> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ReserveError::Malformed(other.to_string())),
        Err(e) => Err(ReserveError::Malformed(e.to_string())),
    }
}

fn from_attrs<T: for<'de> Deserialize<'de>>(attrs: Attributes) -> Result<T, ReserveError> {
    serde_json::from_value(Value::Object(attrs)).map_err(|e| ReserveError::Malformed(e.to_string()))
}

/// The state item and its version (0: not yet written).
pub async fn state(svc: &Services) -> Result<(State, u64), ReserveError> {
    match svc.store.get(&state_key()).await? {
        Some(item) => Ok((from_attrs(item.attrs)?, item.version)),
        None => Ok((State::default(), 0)),
    }
}

async fn grant(
    svc: &Services,
    job: &str,
    attempt: u32,
) -> Result<Option<(Grant, u64)>, ReserveError> {
    match svc.store.get(&grant_key(job, attempt)).await? {
        Some(item) => Ok(Some((from_attrs(item.attrs)?, item.version))),
        None => Ok(None),
    }
}

fn condition(version: u64) -> Condition {
    if version == 0 {
        Condition::NotExists
    } else {
        Condition::VersionIs(version)
    }
}

/// Writes the state and (optionally) one grant item in one transaction, conditional on the
/// versions read. `Ok(false)`: someone else wrote first; read again.
async fn commit(
    svc: &Services,
    state: (&State, u64),
    grant: Option<(&Key, Option<&Grant>, u64)>,
    extra: Vec<TxOp>,
) -> Result<bool, ReserveError> {
    let mut ops = vec![TxOp::Put {
        key: state_key(),
        attrs: to_attrs(state.0)?,
        condition: condition(state.1),
    }];
    if let Some((key, value, version)) = grant {
        ops.push(match value {
            Some(g) => TxOp::Put {
                key: key.clone(),
                attrs: to_attrs(g)?,
                condition: condition(version),
            },
            None => TxOp::Delete {
                key: key.clone(),
                condition: condition(version),
            },
        });
    }
    ops.extend(extra);
    match svc.store.transact(ops).await {
        Ok(()) => Ok(true),
        Err(StoreError::TransactionCanceled { .. } | StoreError::ConditionFailed(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Records this attempt's `need` and takes what the rules allow: a ticket if it has none,
/// admission when its ticket is served and the least grant fits, growth towards the need
/// while no one waits. Never lowers a grant (see [`release_to`]). Returns the grants now
/// held (empty: waiting), and whether they changed.
pub async fn acquire(
    svc: &Services,
    job: &str,
    attempt: u32,
    need: &PerFunction,
    budget: u32,
) -> Result<(PerFunction, bool), ReserveError> {
    acquire_at_least(svc, job, attempt, need, None, budget).await
}

/// [`acquire`], with the least grant of each function given (`None`: the ESM minimum for
/// each function of `need`, one stage each).
pub async fn acquire_at_least(
    svc: &Services,
    job: &str,
    attempt: u32,
    need: &PerFunction,
    least: Option<&PerFunction>,
    budget: u32,
) -> Result<(PerFunction, bool), ReserveError> {
    let key = grant_key(job, attempt);
    for _ in 0..RETRIES {
        let (mut st, st_version) = state(svc).await?;
        let Some((mut own, own_version)) = grant(svc, job, attempt).await? else {
            let own = Grant {
                ticket: st.next_ticket,
                need: need.clone(),
                granted: PerFunction::new(),
            };
            st.next_ticket += 1;
            commit(
                svc,
                (&st, st_version),
                Some((&key, Some(&own), 0)),
                Vec::new(),
            )
            .await?;
            continue;
        };
        let before = own.granted.clone();
        own.need = need.clone();
        if !own.admitted() {
            if own.ticket > st.serving {
                // Tickets before ours whose jobs ended while waiting are skipped.
                let skipped = ticket_key(st.serving);
                if svc.store.get(&skipped).await?.is_some() {
                    let serving = st.serving;
                    st.served(serving);
                    let delete = TxOp::Delete {
                        key: skipped,
                        condition: Condition::Exists,
                    };
                    commit(svc, (&st, st_version), None, vec![delete]).await?;
                    continue;
                }
            }
            // The least an admitted job holds of each function: the ESM minimum. It may
            // go before earlier tickets only if their least grants still fit after it.
            let least: PerFunction = need
                .keys()
                .map(|f| {
                    let n = least
                        .and_then(|l| l.get(f).copied())
                        .unwrap_or(limits::MIN_MAX_CONCURRENCY);
                    (f.clone(), n)
                })
                .collect();
            let least_total: u64 = least.values().map(|n| u64::from(*n)).sum();
            let earlier = st.waiting_before(own.ticket) * LEAST_PER_JOB;
            if st.total() + least_total + earlier > u64::from(budget) {
                return Ok((before, false));
            }
            for (f, n) in &least {
                *st.granted.entry(f.clone()).or_default() += n;
            }
            own.granted = least;
            st.served(own.ticket);
        }
        if !st.waiting() {
            let mut room = u64::from(budget).saturating_sub(st.total());
            for (f, n) in need {
                let held = own.granted.entry(f.clone()).or_default();
                let more = u64::from(n.saturating_sub(*held)).min(room) as u32;
                *held += more;
                *st.granted.entry(f.clone()).or_default() += more;
                room -= u64::from(more);
            }
        }
        if own.granted == before && own_version != 0 {
            return Ok((before, false));
        }
        if commit(
            svc,
            (&st, st_version),
            Some((&key, Some(&own), own_version)),
            Vec::new(),
        )
        .await?
        {
            return Ok((own.granted, true));
        }
    }
    // Contended: keep what is held until the next tick.
    Ok((
        grant(svc, job, attempt)
            .await?
            .map(|(g, _)| g.granted)
            .unwrap_or_default(),
        false,
    ))
}

/// Lowers this attempt's grants to `keep` where they are above it (call after lowering its
/// mappings), but not below `busy`: messages in flight on the function's stages, which
/// bound the invocations still running. Returns whether anything was released.
pub async fn release_to(
    svc: &Services,
    job: &str,
    attempt: u32,
    keep: &PerFunction,
    busy: &PerFunction,
) -> Result<bool, ReserveError> {
    let key = grant_key(job, attempt);
    for _ in 0..RETRIES {
        let (mut st, st_version) = state(svc).await?;
        let Some((mut own, own_version)) = grant(svc, job, attempt).await? else {
            return Ok(false);
        };
        let mut changed = false;
        for (f, held) in own.granted.iter_mut() {
            // Never below what may still be running: each running invocation holds at
            // least one message in flight, and none started above the grant.
            let running = busy.get(f).copied().unwrap_or(0).min(*held);
            let target = keep.get(f).copied().unwrap_or(0).max(running).min(*held);
            if target < *held {
                let sum = st.granted.entry(f.clone()).or_default();
                *sum = sum.saturating_sub(*held - target);
                *held = target;
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        own.granted.retain(|_, n| *n > 0);
        st.granted.retain(|_, n| *n > 0);
        // Nothing kept: the item goes, so the job is neither admitted nor in the line.
        let kept = (!own.granted.is_empty()).then_some(&own);
        if commit(
            svc,
            (&st, st_version),
            Some((&key, kept, own_version)),
            Vec::new(),
        )
        .await?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Gives back everything this attempt holds, and its place in the line (teardown, or the
/// sweeper for a dead daemon). A ticket not yet served is marked skipped, so the line
/// moves past it.
pub async fn release(svc: &Services, job: &str, attempt: u32) -> Result<bool, ReserveError> {
    let key = grant_key(job, attempt);
    for _ in 0..RETRIES {
        let (mut st, st_version) = state(svc).await?;
        let Some((own, own_version)) = grant(svc, job, attempt).await? else {
            return Ok(false);
        };
        for (f, held) in &own.granted {
            let sum = st.granted.entry(f.clone()).or_default();
            *sum = sum.saturating_sub(*held);
        }
        st.granted.retain(|_, n| *n > 0);
        let mut extra = Vec::new();
        if !own.admitted() {
            if own.ticket == st.serving {
                st.served(own.ticket);
            } else if own.ticket > st.serving {
                extra.push(TxOp::Put {
                    key: ticket_key(own.ticket),
                    attrs: Attributes::new(),
                    condition: Condition::Always,
                });
            }
        }
        if commit(
            svc,
            (&st, st_version),
            Some((&key, None, own_version)),
            extra,
        )
        .await?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Concurrency per stage function that these levers ask for (a disabled stage: none).
/// `functions[i]` is the function of stage `i`.
pub fn per_function(functions: &[Function], levers: &[Levers]) -> PerFunction {
    let mut out = PerFunction::new();
    for (function, l) in functions.iter().zip(levers) {
        if l.mapping_config().enabled {
            *out.entry(function.as_str().to_owned()).or_default() += l.max_concurrency;
        }
    }
    out
}

/// Fits each stage's MaximumConcurrency into its job's grant of the stage's function (in
/// proportion to what the stages asked, never below the ESM minimum of 2); a stage whose
/// function is not granted (the job waits for admission) is disabled.
pub fn fit(functions: &[Function], levers: &mut [Levers], granted: &PerFunction) {
    let need = per_function(functions, levers);
    for (function, l) in functions.iter().zip(levers.iter_mut()) {
        let function = function.as_str();
        let grant = granted.get(function).copied().unwrap_or(0);
        if grant == 0 {
            l.reserved_concurrency = Some(0);
            continue;
        }
        let asked = need.get(function).copied().unwrap_or(0).max(1);
        let part = (u64::from(grant) * u64::from(l.max_concurrency) / u64::from(asked)) as u32;
        l.max_concurrency = part.clamp(
            limits::MIN_MAX_CONCURRENCY,
            l.max_concurrency.max(limits::MIN_MAX_CONCURRENCY),
        );
        l.reserved_concurrency = Some(l.max_concurrency);
    }
}

/// One daemon step's reservation, before its mappings change: takes the grants the policy's
/// levers ask for, raises the functions' settings if they grew, and fits the levers into
/// the grants.
pub async fn steer(
    svc: &Services,
    job: &str,
    attempt: u32,
    functions: &[Function],
    levers: &mut [Levers],
    budget: u32,
) -> Result<(), ReserveError> {
    let need = per_function(functions, levers);
    let least = least_for(functions);
    let (granted, changed) =
        acquire_at_least(svc, job, attempt, &need, Some(&least), budget).await?;
    if changed {
        apply(svc, &distinct(functions)).await?;
    }
    fit(functions, levers, &granted);
    Ok(())
}

/// After the mappings changed from `previous` to `levers`: gives back grants above what
/// either uses and what may still run (`in_flight[i]`: messages in flight on stage `i`),
/// and lowers the functions' settings to match.
pub async fn settle(
    svc: &Services,
    job: &str,
    attempt: u32,
    functions: &[Function],
    previous: &[Option<Levers>],
    levers: &[Levers],
    in_flight: &[u64],
) -> Result<(), ReserveError> {
    // AWS applies mapping updates asynchronously: a grant drops only to what the previous
    // levers still use, and the rest goes back on the next tick.
    let keep: Vec<Levers> = levers
        .iter()
        .zip(previous.iter().chain(std::iter::repeat(&None)))
        .map(|(l, p)| p.map_or(*l, |p| wider(&p, l)))
        .collect();
    let mut busy = PerFunction::new();
    for (f, n) in functions.iter().zip(in_flight) {
        let sum = busy.entry(f.as_str().to_owned()).or_default();
        *sum = sum.saturating_add(u32::try_from(*n).unwrap_or(u32::MAX));
    }
    if release_to(svc, job, attempt, &per_function(functions, &keep), &busy).await? {
        apply(svc, &distinct(functions)).await?;
    }
    Ok(())
}

/// The levers that keep both `a` and `b` within their grant: a grant may drop only to what
/// the levers in force still use, so it is given back one tick after a mapping shrinks
/// (AWS applies mapping updates asynchronously).
fn wider(a: &Levers, b: &Levers) -> Levers {
    let enabled = |l: &Levers| l.mapping_config().enabled;
    match (enabled(a), enabled(b)) {
        (true, true) => Levers {
            max_concurrency: a.max_concurrency.max(b.max_concurrency),
            ..*b
        },
        (true, false) => *a,
        _ => *b,
    }
}

/// Each function once, in first-seen order.
pub fn distinct(functions: &[Function]) -> Vec<Function> {
    let mut out: Vec<Function> = Vec::new();
    for f in functions {
        if !out.contains(f) {
            out.push(*f);
        }
    }
    out
}

/// Every attempt with a grant item: (job, attempt).
pub async fn holders(svc: &Services) -> Result<Vec<(String, u32)>, ReserveError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = svc
            .store
            .query(PK, GRANT_PREFIX, after.as_deref(), 500)
            .await?;
        for item in &page.items {
            let rest = &item.key.sk[GRANT_PREFIX.len()..];
            if let Some((job, attempt)) = rest.rsplit_once('#') {
                if let Ok(attempt) = attempt.parse() {
                    out.push((job.to_owned(), attempt));
                }
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

/// Sets each function's reserved concurrency to its sum of grants, then reads the state
/// again and repeats if it moved meanwhile (bounded: a later writer also applies).
pub async fn apply(svc: &Services, functions: &[Function]) -> Result<(), ReserveError> {
    let mut seen = None;
    for _ in 0..RETRIES {
        let (st, version) = state(svc).await?;
        if seen == Some(version) {
            return Ok(());
        }
        for f in functions {
            let want = st.granted.get(f.as_str()).copied().unwrap_or(0);
            let current = svc.mappings.get_reserved_concurrency(f.as_str()).await?;
            match (want, current) {
                (0, None) => {}
                (0, Some(_)) => svc.mappings.delete_reserved_concurrency(f.as_str()).await?,
                (n, current) if current != Some(n) => {
                    svc.mappings.put_reserved_concurrency(f.as_str(), n).await?
                }
                _ => {}
            }
        }
        seen = Some(version);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::faults::Faults;
    use crate::flow::Registry;
    use crate::local::{FileBlobs, SqliteJobStore, SqliteMappings, SqliteQueues};
    use crate::ports::SystemClock;
    use crate::services::Settings;

    fn services(dir: &std::path::Path) -> Services {
        Services {
            store: Arc::new(SqliteJobStore::open(&dir.join("s.db")).unwrap()),
            queues: Arc::new(SqliteQueues::open(&dir.join("q.db")).unwrap()),
            blobs: Arc::new(FileBlobs::open(dir.join("blobs")).unwrap()),
            mappings: Arc::new(SqliteMappings::open(&dir.join("m.db")).unwrap()),
            telemetry: Arc::new(crate::status::NoTelemetry),
            clock: Arc::new(SystemClock),
            registry: Registry::default(),
            settings: Settings {
                tick_interval: Duration::from_millis(100),
                ..Settings::default()
            },
            faults: Faults::default(),
        }
    }

    fn need(pairs: &[(&str, u32)]) -> PerFunction {
        pairs.iter().map(|(f, n)| ((*f).to_owned(), *n)).collect()
    }

    #[tokio::test]
    async fn first_come_first_served_under_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let svc = services(dir.path());
        let big = need(&[("count", 8), ("reduce", 8)]);
        // Alone: admitted, and grows to its whole need.
        let (a, changed) = acquire(&svc, "a", 1, &big, 20).await.unwrap();
        assert!(changed);
        assert_eq!(a, big);
        // b is next in line: the least grant (2 + 2) fits in the 4 left.
        let (b, _) = acquire(&svc, "b", 1, &big, 20).await.unwrap();
        assert_eq!(b, need(&[("count", 2), ("reduce", 2)]));
        // c waits: nothing left.
        let (c, _) = acquire(&svc, "c", 1, &big, 20).await.unwrap();
        assert!(c.is_empty());
        // d queues behind c, even though it needs less.
        let (d, _) = acquire(&svc, "d", 1, &need(&[("count", 2)]), 20)
            .await
            .unwrap();
        assert!(d.is_empty());
        // b cannot grow while c and d wait, though a gives some back: down to 4, except
        // that 6 of its count messages are still in flight.
        release_to(
            &svc,
            "a",
            1,
            &need(&[("count", 4), ("reduce", 4)]),
            &need(&[("count", 6)]),
        )
        .await
        .unwrap();
        let (b, changed) = acquire(&svc, "b", 1, &big, 20).await.unwrap();
        assert!(!changed);
        assert_eq!(b, need(&[("count", 2), ("reduce", 2)]));
        // d must wait for c, c is admitted now.
        let (d, _) = acquire(&svc, "d", 1, &need(&[("count", 2)]), 20)
            .await
            .unwrap();
        assert!(d.is_empty());
        let (c, _) = acquire(&svc, "c", 1, &big, 20).await.unwrap();
        assert_eq!(c, need(&[("count", 2), ("reduce", 2)]));
        let (st, _) = state(&svc).await.unwrap();
        assert_eq!(st.total(), 18);
        // d fits in the last 2; nobody waits after it, and it needs no more.
        let (d, _) = acquire(&svc, "d", 1, &need(&[("count", 2)]), 20)
            .await
            .unwrap();
        assert_eq!(d, need(&[("count", 2)]));
        let (st, _) = state(&svc).await.unwrap();
        assert_eq!(st.granted, need(&[("count", 12), ("reduce", 8)]));
        assert_eq!(st.total(), 20);
        assert!(!st.waiting());
    }

    #[tokio::test]
    async fn a_later_ticket_goes_first_only_with_room_for_the_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let svc = services(dir.path());
        let n = need(&[("count", 2), ("reduce", 2)]);
        acquire(&svc, "a", 1, &need(&[("count", 22)]), 24)
            .await
            .unwrap();
        // b and c wait: a holds 22 of 24.
        assert!(acquire(&svc, "b", 1, &n, 24).await.unwrap().0.is_empty());
        assert!(acquire(&svc, "c", 1, &n, 24).await.unwrap().0.is_empty());
        release_to(&svc, "a", 1, &need(&[("count", 12)]), &PerFunction::new())
            .await
            .unwrap();
        // 12 free: c (4) may go before b, keeping 8 for b.
        assert_eq!(acquire(&svc, "c", 1, &n, 24).await.unwrap().0, n);
        let (st, _) = state(&svc).await.unwrap();
        assert_eq!((st.serving, st.ahead.clone()), (1, vec![2]));
        // A fourth ticket finds only 8 free, all kept for b.
        assert!(acquire(&svc, "d", 1, &n, 24).await.unwrap().0.is_empty());
        // b is admitted; the line moves past b and c.
        assert_eq!(acquire(&svc, "b", 1, &n, 24).await.unwrap().0, n);
        let (st, _) = state(&svc).await.unwrap();
        assert_eq!((st.serving, st.ahead.len(), st.total()), (3, 0, 20));
    }

    #[tokio::test]
    async fn a_job_that_ends_while_waiting_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let svc = services(dir.path());
        let n = need(&[("count", 4)]);
        acquire(&svc, "a", 1, &n, 4).await.unwrap();
        assert!(acquire(&svc, "b", 1, &n, 4).await.unwrap().0.is_empty());
        assert!(acquire(&svc, "c", 1, &n, 4).await.unwrap().0.is_empty());
        // b's job is cancelled while it waits; a finishes.
        assert!(release(&svc, "b", 1).await.unwrap());
        assert!(release(&svc, "a", 1).await.unwrap());
        // c is served: b's ticket is skipped.
        assert_eq!(acquire(&svc, "c", 1, &n, 4).await.unwrap().0, n);
        let (st, _) = state(&svc).await.unwrap();
        assert_eq!(st.serving, st.next_ticket);
        assert_eq!(st.total(), 4);
        assert_eq!(holders(&svc).await.unwrap(), vec![("c".to_owned(), 1)]);
    }

    #[tokio::test]
    async fn racing_daemons_never_exceed_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let svc = Arc::new(services(dir.path()));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let n = need(&[("count", 6), ("reduce", 3)]);
                let mut held = PerFunction::new();
                for _ in 0..20 {
                    held = acquire(&svc, &format!("job{i}"), 1, &n, 40)
                        .await
                        .unwrap()
                        .0;
                    if !held.is_empty() {
                        break;
                    }
                }
                held
            }));
        }
        let mut sum = 0u64;
        for t in tasks {
            sum += t
                .await
                .unwrap()
                .values()
                .map(|n| u64::from(*n))
                .sum::<u64>();
        }
        let (st, _) = state(&svc).await.unwrap();
        assert_eq!(st.total(), sum, "the state sums the grants");
        assert!(sum <= 40, "{sum} granted of 40");
        assert!(sum >= 36, "the budget is used: {sum}");
    }

    #[tokio::test]
    async fn settings_follow_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let svc = services(dir.path());
        acquire(
            &svc,
            "a",
            1,
            &need(&[("transform", 30), ("reduce", 5)]),
            100,
        )
        .await
        .unwrap();
        let functions = [Function::Transform, Function::Reduce, Function::Source];
        apply(&svc, &functions).await.unwrap();
        let m = &svc.mappings;
        assert_eq!(
            m.get_reserved_concurrency("transform").await.unwrap(),
            Some(30)
        );
        assert_eq!(m.get_reserved_concurrency("reduce").await.unwrap(), Some(5));
        assert_eq!(m.get_reserved_concurrency("source").await.unwrap(), None);
        release(&svc, "a", 1).await.unwrap();
        apply(&svc, &functions).await.unwrap();
        assert_eq!(m.get_reserved_concurrency("transform").await.unwrap(), None);
    }
}
