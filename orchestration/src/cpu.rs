//! CPU-bound work (counting a range of text, sorting a shuffle, merging a partition) off
//! the async threads, and at most one such task per core at a time.
//!
//! Off the async threads, because those must stay free for what keeps a batch alive: the
//! local runtime's visibility heartbeats and the other invocations' I/O. Starved, a batch
//! outlived its visibility timeout and ran again (a 1 GiB per-word job counted 40 of its 78
//! ranges twice). One per core, because the local runtime runs many invocations in one
//! process: unbounded, 14 concurrent counts of 16 MiB each thrashed the caches with their
//! hash maps and took a third more CPU than 2 at a time. On Lambda an instance runs one
//! invocation, so the bound is its vCPUs.

use std::sync::LazyLock;

use tokio::sync::Semaphore;

static SLOTS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())));

/// Runs `f` on the blocking pool once a core is free; `Err` if it panicked.
pub async fn run<F, R>(f: F) -> Result<R, String>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    // The semaphore is never closed, so a permit always comes.
    let _permit = SLOTS.acquire().await.map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_tasks_run_at_once_than_there_are_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..cores * 4).map(|_| {
            let (running, peak) = (running.clone(), peak.clone());
            run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for outcome in futures::future::join_all(tasks).await {
            outcome.unwrap();
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(
            (1..=cores).contains(&peak),
            "{peak} at once on {cores} cores"
        );
    }

    #[tokio::test]
    async fn a_panic_is_an_error_not_a_crash() {
        let outcome = run(|| -> u32 { panic!("boom") }).await;
        assert!(outcome.is_err());
    }
}
