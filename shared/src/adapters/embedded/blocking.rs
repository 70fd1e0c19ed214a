//! Where the embedded adapters' blocking work (files, locks, syncs) runs: never on an
//! async worker. The dispatcher runs each delivery on a thread of tokio's blocking pool
//! of its own ([`on_own_thread`]); there the store's and the bus's file work runs inline,
//! as a Lambda function's would. Everywhere else (HTTP handlers, CLI commands) it is
//! handed to the blocking pool, one task per call.
//!
//! A delivery makes dozens of store and bus calls; handing each to another thread cost
//! two thread wake-ups per call, which was most of the dispatcher's CPU.

use std::cell::Cell;
use std::future::Future;

use crate::error::{Error, Result};

thread_local! {
    /// Set while this thread runs a delivery for [`on_own_thread`].
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Clears the mark when the delivery ends, a panic included (the pool reuses threads).
struct Marked;

impl Marked {
    fn enter() -> Marked {
        MAY_BLOCK.with(|m| m.set(true));
        Marked
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        MAY_BLOCK.with(|m| m.set(false));
    }
}

/// Runs `fut` to its end on a thread of the blocking pool where blocking work runs
/// inline ([`run`]). Timers and sockets keep working: the runtime's other threads drive
/// them (or, on a current-thread runtime, the thread in its `block_on`).
pub fn on_own_thread<F>(fut: F) -> impl FnOnce() -> F::Output + Send + 'static
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    move || {
        let _marked = Marked::enter();
        handle.block_on(fut)
    }
}

/// Runs blocking `f`: inline on a delivery's own thread, else on the blocking pool.
/// `what` names the adapter in the error of a task that ended without an answer.
pub async fn run<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    if MAY_BLOCK.with(Cell::get) {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::permanent(what, format!("a file task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread() -> std::thread::ThreadId {
        std::thread::current().id()
    }

    /// On a delivery's thread blocking work runs on that thread; elsewhere on another
    /// one; and the mark does not outlive the delivery on a reused thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_work_runs_inline_only_on_a_deliverys_thread() {
        let outside = run("test", || Ok(thread())).await.unwrap();
        assert_ne!(outside, thread(), "handed to the blocking pool");
        let (own, inner) = tokio::task::spawn_blocking(on_own_thread(async {
            (thread(), run("test", || Ok(thread())).await.unwrap())
        }))
        .await
        .unwrap();
        assert_eq!(own, inner, "inline on the delivery's own thread");
        // The thread that ran a delivery is not left marked, also after a panic in it.
        let (ok, panicked) = (
            on_own_thread(async { MAY_BLOCK.with(Cell::get) }),
            on_own_thread(async { panic!("a delivery panics") }),
        );
        let after = std::thread::spawn(move || {
            let during = ok();
            let after_ok = MAY_BLOCK.with(Cell::get);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(panicked));
            (during, after_ok, caught.is_err(), MAY_BLOCK.with(Cell::get))
        })
        .join()
        .unwrap();
        assert_eq!(after, (true, false, true, false));
        // A timer inside a delivery fires (the workers drive it).
        tokio::task::spawn_blocking(on_own_thread(tokio::time::sleep(
            std::time::Duration::from_millis(5),
        )))
        .await
        .unwrap();
    }
}
