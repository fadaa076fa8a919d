//! Runs many seeds on every core: each seed is a simulation of its own (its own turmoil
//! world and runtime on its own thread), so seeds are independent and a soak or the
//! test suite's few hundred seeds need not leave a core idle.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use crate::{Config, Outcome, run};

/// How many seeds to run at once by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs every seed of `seeds` on `threads` threads and hands each outcome to `each`
/// on the caller's thread as it finishes (not in seed order).
pub fn run_many(seeds: Range<u64>, threads: usize, mut each: impl FnMut(u64, Outcome)) {
    let next = AtomicU64::new(seeds.start);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            let (tx, next, end) = (tx.clone(), &next, seeds.end);
            s.spawn(move || work(next, end, &tx));
        }
        drop(tx);
        for (seed, outcome) in rx {
            each(seed, outcome);
        }
    });
}

/// One thread's share: takes the next seed until none is left.
fn work(next: &AtomicU64, end: u64, tx: &mpsc::Sender<(u64, Outcome)>) {
    loop {
        let seed = next.fetch_add(1, Ordering::Relaxed);
        if seed >= end || tx.send((seed, run(&Config::for_seed(seed)))).is_err() {
            return;
        }
    }
}
