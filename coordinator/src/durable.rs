//! Who waits for which append to be durable, woken in append order.
//!
//! A `tokio::sync::watch` would do the waiting too, but it parks its waiters in queues
//! chosen at random and wakes them queue by queue: when one sync makes several appends
//! durable, the steps behind them resumed in a different order on every run, so a
//! simulation seed did not replay (stop 61). Here the waiters are kept by append
//! number and woken in that order, and each waits on a oneshot of its own.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::oneshot;

/// The newest durable append, and who waits for a later one.
#[derive(Default)]
struct State {
    through: u64,
    waiting: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
    closed: bool,
}

/// The waiting side, cloned by every step that waits (made only with its
/// [`Advance`], by [`Waiters::new`]).
#[derive(Clone)]
pub struct Waiters {
    state: Arc<Mutex<State>>,
}

/// The syncer's side: advances the durable append. It lives in the group commit's
/// hooks, so it is dropped only with the log's last handle (a waiter's own handle
/// keeps it): a store failure reaches waiters through `GroupCommit::failed`, not
/// through this drop (a syncer that panics fails the log too).
pub struct Advance {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Waiters {
    /// The two sides, with nothing durable yet.
    pub fn new() -> (Self, Advance) {
        let waiters = Self {
            state: Arc::default(),
        };
        let advance = Advance {
            state: waiters.state.clone(),
        };
        (waiters, advance)
    }

    /// Resolves `Ok` once append `append` is durable, `Err` if the syncer stopped
    /// first.
    pub async fn durable(&self, append: u64) -> Result<(), ()> {
        let heard = {
            let mut s = lock(&self.state);
            if s.through >= append {
                return Ok(());
            }
            if s.closed {
                return Err(());
            }
            let (tx, rx) = oneshot::channel();
            s.waiting.entry(append).or_default().push(tx);
            rx
        };
        heard.await.map_err(|_| ())
    }
}

impl Advance {
    /// Appends through `through` are durable: their waiters are woken, oldest first.
    pub fn to(&self, through: u64) {
        let due = {
            let mut s = lock(&self.state);
            if through <= s.through {
                return;
            }
            s.through = through;
            let later = s.waiting.split_off(&(through + 1));
            std::mem::replace(&mut s.waiting, later)
        };
        for tx in due.into_values().flatten() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Advance {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        s.closed = true;
        s.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Given waiters for appends 3, 1 and 2 (asked in that order), when one sync makes
    /// all three durable, then they are woken in append order.
    #[tokio::test(flavor = "current_thread")]
    async fn waiters_wake_in_append_order() {
        let (waiters, advance) = Waiters::new();
        let (order, mut heard) = tokio::sync::mpsc::unbounded_channel();
        for append in [3, 1, 2] {
            let (w, order) = (waiters.clone(), order.clone());
            tokio::spawn(async move {
                w.durable(append).await.unwrap();
                order.send(append).unwrap();
            });
        }
        tokio::task::yield_now().await;
        advance.to(3);
        let mut woken = Vec::new();
        for _ in 0..3 {
            woken.push(heard.recv().await.unwrap());
        }
        assert_eq!(woken, vec![1, 2, 3]);
        assert_eq!(waiters.durable(2).await, Ok(()), "already durable");
    }

    /// Given a waiter for an append never synced, when the advancing side is dropped
    /// (the journal's log dropped), then the waiter hears it, and so does a later one.
    #[tokio::test]
    async fn a_stopped_syncer_ends_every_wait() {
        let (waiters, advance) = Waiters::new();
        let w = waiters.clone();
        let waiting = tokio::spawn(async move { w.durable(5).await });
        tokio::task::yield_now().await;
        drop(advance);
        assert_eq!(waiting.await.unwrap(), Err(()));
        assert_eq!(waiters.durable(6).await, Err(()));
    }
}
