//! Runs many seeds on every core: each seed is a simulation of its own (its own turmoil
//! world and runtime on its own thread), so seeds are independent and a soak or the
//! test suite's few hundred seeds need not leave a core idle.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};

use crate::{Config, Outcome, run};

/// How many seeds to run at once by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs every seed of `seeds` on `threads` threads and hands each outcome to `each`
/// on the caller's thread as it finishes (not in seed order). A seed whose run panics
/// stops the others from starting new seeds; then this panics naming every seed that
/// did, with the command that replays the first.
pub fn run_many(seeds: Range<u64>, threads: usize, mut each: impl FnMut(u64, Outcome)) {
    let next = AtomicU64::new(seeds.start);
    let panicked = Mutex::new(Vec::new());
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            let (tx, next, panicked, end) = (tx.clone(), &next, &panicked, seeds.end);
            s.spawn(move || work(next, end, &tx, panicked));
        }
        drop(tx);
        for (seed, outcome) in rx {
            each(seed, outcome);
        }
    });
    let mut seeds = panicked.into_inner().unwrap_or_else(|p| p.into_inner());
    seeds.sort_unstable();
    if let Some(first) = seeds.first() {
        panic!(
            "seeds {seeds:?} panicked; replay: {}",
            crate::replay_command(*first)
        );
    }
}

/// One thread's share: takes the next seed until none is left (or one panicked).
fn work(next: &AtomicU64, end: u64, tx: &mpsc::Sender<(u64, Outcome)>, panicked: &Mutex<Vec<u64>>) {
    loop {
        let seed = next.fetch_add(1, Ordering::Relaxed);
        if seed >= end {
            return;
        }
        let ran = std::panic::catch_unwind(|| run(&Config::for_seed(seed)));
        let Ok(outcome) = ran else {
            next.store(end, Ordering::Relaxed);
            panicked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(seed);
            return;
        };
        if tx.send((seed, outcome)).is_err() {
            return;
        }
    }
}
