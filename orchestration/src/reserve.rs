//! Reserved concurrency across jobs. A stage function's reserved concurrency is global to
//! the account, but each job needs its own share: every job attempt records its need per
//! function in the store (`reserve#{function}` / `{job}#{attempt}`), and whoever changes a
//! need sets the function's reserved concurrency to the sum of all needs, capped by the
//! deployment's budget. The job's share of that (at least the ESM minimum of 2) is what its
//! mappings' `MaximumConcurrency` may use, so a mapping never runs above its function's
//! concurrency (throttled receives would burn receive counts and push messages to the DLQ).
//!
//! Concurrent daemons may interleave their writes of the function's setting; every tick
//! reconciles again from the stored needs, so the setting converges within a tick interval.

use crate::flow::Function;
use crate::ports::{limits, Attributes, Condition, Key, MappingError, StoreError};
use crate::services::Services;

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

pub fn needs_pk(function: &str) -> String {
    format!("reserve#{function}")
}

pub fn need_key(function: &str, job: &str, attempt: u32) -> Key {
    Key::new(needs_pk(function), format!("{job}#{attempt}"))
}

/// The most reserved concurrency one stage function may get, when the deployment has a
/// reservation budget: the budget split evenly over the stage functions.
pub fn cap(svc: &Services) -> Option<u32> {
    let budget = svc.settings.concurrency_budget?;
    Some((budget / Function::STAGE_FUNCTIONS.len() as u32).max(limits::MIN_MAX_CONCURRENCY))
}

/// Needs read per store query.
const PAGE: usize = 500;

/// Every recorded need of `function`: (job, attempt, need).
pub async fn needs(
    svc: &Services,
    function: &str,
) -> Result<Vec<(String, u32, u32)>, ReserveError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = svc
            .store
            .query(&needs_pk(function), "", after.as_deref(), PAGE)
            .await?;
        for item in &page.items {
            let Some((job, attempt)) = item.key.sk.rsplit_once('#') else {
                continue;
            };
            let need = item.attrs.get("need").and_then(|n| n.as_u64()).unwrap_or(0);
            out.push((job.to_owned(), attempt.parse().unwrap_or(0), need as u32));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

/// Records this job attempt's `need` of `function` (0 removes it), sets the function's
/// reserved concurrency to the sum of all needs capped at `cap` (removing it when nothing
/// is needed), and returns this job's share.
pub async fn reconcile(
    svc: &Services,
    function: &str,
    job: &str,
    attempt: u32,
    need: u32,
    cap: u32,
) -> Result<u32, ReserveError> {
    let key = need_key(function, job, attempt);
    if need == 0 {
        svc.store.delete(&key, Condition::Always).await?;
    } else {
        let mut attrs = Attributes::new();
        attrs.insert("need".into(), need.into());
        svc.store.put(&key, attrs, Condition::Always).await?;
    }
    let total = apply(svc, function, cap).await?;
    Ok(share(need, total, cap))
}

/// Sets `function`'s reserved concurrency from its recorded needs; returns their sum.
pub async fn apply(svc: &Services, function: &str, cap: u32) -> Result<u64, ReserveError> {
    let total: u64 = needs(svc, function)
        .await?
        .iter()
        .map(|(_, _, n)| u64::from(*n))
        .sum();
    let current = svc.mappings.get_reserved_concurrency(function).await?;
    if total == 0 {
        if current.is_some() {
            svc.mappings.delete_reserved_concurrency(function).await?;
        }
    } else {
        let target = total.min(u64::from(cap)) as u32;
        if current != Some(target) {
            svc.mappings
                .put_reserved_concurrency(function, target)
                .await?;
        }
    }
    Ok(total)
}

/// A job's share of a function's reserved concurrency: its need when all needs fit under
/// the cap, else its proportional part of the cap; never below the ESM minimum of 2.
pub fn share(need: u32, total: u64, cap: u32) -> u32 {
    if need == 0 {
        return 0;
    }
    let reserved = total.min(u64::from(cap));
    let part = if total <= reserved {
        u64::from(need)
    } else {
        reserved * u64::from(need) / total.max(1)
    };
    (part as u32).clamp(
        limits::MIN_MAX_CONCURRENCY,
        need.max(limits::MIN_MAX_CONCURRENCY),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_fit_the_cap() {
        assert_eq!(share(0, 10, 100), 0);
        assert_eq!(share(10, 30, 100), 10, "everything fits");
        assert_eq!(share(100, 400, 200), 50, "a quarter of the cap");
        assert_eq!(share(1, 1_000, 10), 2, "never below the ESM minimum");
        assert_eq!(share(2, 2, 225), 2);
    }
}
