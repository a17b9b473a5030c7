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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, LazyLock, Mutex};

type Task = Box<dyn FnOnce() + Send>;

/// One thread per core, taking tasks from one queue in order. Not `spawn_blocking` behind
/// a semaphore (the first version): there a finished task handed its core on through the
/// async threads (wake the awaiting task, release the permit, wake the next waiter, hand
/// its closure to a blocking thread), and on a loaded 2-core machine the cores idled
/// through 0.4 ms of that per task, 7 % of a fire-tweets run. Here the thread that
/// finishes a task takes the next one at once.
static POOL: LazyLock<Option<Sender<Task>>> = LazyLock::new(|| {
    let (tx, rx) = channel::<Task>();
    let rx = Arc::new(Mutex::new(rx));
    for n in 0..slots() {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("sluice-cpu-{n}"))
            // Room for a pipeline's expressions, which evaluate recursively (their depth is
            // bounded when they compile).
            .stack_size(32 << 20)
            .spawn(move || loop {
                // A poisoned lock still holds a working receiver: tasks never panic while
                // holding it (they run after it is released, behind `catch_unwind`).
                let task = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                    Ok(task) => task,
                    Err(_) => return, // the sender is gone: the process is ending
                };
                task();
            });
        if spawned.is_err() && n == 0 {
            return None;
        }
    }
    Some(tx)
});

/// How many CPU tasks run at once: the cores this process may use.
pub fn slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `f` on a CPU thread once one is free (tasks start in the order given); `Err` if
/// it panicked.
pub async fn run<F, R>(f: F) -> Result<R, String>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task: Task = Box::new(move || {
        let outcome = catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a CPU task panicked".to_owned())
        });
        let _ = tx.send(outcome);
    });
    let sent = match POOL.as_ref() {
        Some(pool) => pool.send(task).map_err(|e| e.0),
        None => Err(task),
    };
    if let Err(task) = sent {
        // No thread could be started: the blocking pool runs it instead.
        drop(tokio::task::spawn_blocking(task));
    }
    rx.await
        .map_err(|_| "a CPU task ended without an answer".to_owned())?
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
