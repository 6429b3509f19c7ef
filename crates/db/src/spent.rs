//! What one request spent in the database: how many calls it made and how long they
//! took, for the application's `Server-Timing` entry (`db;dur=1.2;desc="3 queries"`).
//!
//! The caller opens a scope around a request ([`measure`]); every [`crate::Db`] call
//! made inside it, on the same task, adds to it. Outside a scope (the live feed's
//! poller, the admin listener) calls are not counted and cost one failed task-local
//! lookup. A call is one method of [`crate::Db`]: some of them run more than one
//! statement (a session made also deletes expired ones; a replica read may first wait
//! for a position), so the count is of the application's questions, and the time is
//! all of theirs, waits for a pooled connection included. Calls running concurrently
//! inside one request would add up their overlapping time.

use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, Instant};

/// The database's share of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Calls made.
    pub queries: u64,
    /// Their total time.
    pub time: Duration,
}

tokio::task_local! {
    static SPENT: Cell<Spent>;
}

/// Runs `fut` with a fresh count; its output and what its database calls spent.
pub async fn measure<F: Future>(fut: F) -> (F::Output, Spent) {
    SPENT
        .scope(Cell::new(Spent::default()), async {
            let out = fut.await;
            (out, SPENT.with(Cell::get))
        })
        .await
}

/// Runs one database call, counting it in the request's scope if there is one.
pub(crate) async fn timed<F: Future>(call: F) -> F::Output {
    let started = Instant::now();
    let out = call.await;
    let took = started.elapsed();
    let _ = SPENT.try_with(|spent| {
        let mut s = spent.get();
        s.queries += 1;
        s.time += took;
        spent.set(s);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_in_a_scope_are_counted_and_timed_and_others_are_not() {
        // Outside any scope: nothing to count into, and no panic.
        timed(async {}).await;
        let ((), spent) = measure(async {
            timed(tokio::time::sleep(Duration::from_millis(5))).await;
            timed(async {}).await;
        })
        .await;
        assert_eq!(spent.queries, 2);
        assert!(spent.time >= Duration::from_millis(5), "{spent:?}");
        let ((), none) = measure(async {}).await;
        assert_eq!(none, Spent::default());
    }
}
