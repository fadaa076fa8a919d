//! Runs many seeds on every core, **each seed in a process of its own**: the process
//! `lockstep-soak --seed N` is, so a seed a soak or the test suite finds failing fails
//! the same way when its replay command runs it again.
//!
//! Threads of one process do not replay so (stop 62): tokio numbers its tasks from one
//! counter per process, and a crashed host's runtime drops its tasks in an order set by
//! those numbers (its task list is sharded by id). Each socket a dropped task held
//! sends its FIN then, and turmoil draws every message's latency from the seed's random
//! stream in the order they are sent. So a seed's run depended on how many tasks the
//! process had made before it, and, with seeds on several threads, on how their
//! spawns interleaved: seed 24 ended with one event log as a process's first seed and
//! another after other seeds.

use std::{
    ops::Range,
    path::Path,
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use serde::{Deserialize, Serialize};

use crate::Outcome;

/// How many seeds to run at once by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What a seed's run showed, as its process reports it: every figure of an
/// [`Outcome`] but the observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The broken rules, each as `rule: detail` (empty: the run is clean).
    pub violations: Vec<String>,
    /// Hash of the event log (same seed, same hash).
    pub event_log_hash: u64,
    /// Transactions created.
    pub transactions: usize,
    /// Of which committed.
    pub committed: usize,
    /// Faults injected.
    pub faults: usize,
    /// Simulated time the run took, in microseconds.
    pub simulated_us: u64,
    /// Leaders elected on etcd (0 with one coordinator).
    pub terms: i64,
}

impl From<&Outcome> for Summary {
    fn from(o: &Outcome) -> Self {
        Self {
            violations: o.violations.iter().map(ToString::to_string).collect(),
            event_log_hash: o.event_log_hash,
            transactions: o.transactions,
            committed: o.committed,
            faults: o.faults,
            simulated_us: u64::try_from(o.simulated.as_micros()).unwrap_or(u64::MAX),
            terms: o.terms,
        }
    }
}

/// Runs `seed` in a process of its own, `soak --seed SEED --summary` (`soak`: the
/// `lockstep-soak` binary), and reads what it reports. `Err` says why there is no
/// summary: the run panicked, or the process could not start.
pub fn run_alone(soak: &Path, seed: u64) -> Result<Summary, String> {
    let ran = Command::new(soak)
        .args(["--seed", &seed.to_string(), "--summary"])
        .output()
        .map_err(|e| format!("seed {seed}: {} did not start: {e}", soak.display()))?;
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix(SUMMARY));
    match (ran.status.success(), line) {
        (true, Some(line)) => serde_json::from_str(line)
            .map_err(|e| format!("seed {seed}: its summary {line:?} did not parse: {e}")),
        (true, None) => Err(format!("seed {seed}: the run printed no summary line")),
        (false, _) => Err(format!(
            "seed {seed}: the run ended with {}: {}",
            ran.status,
            String::from_utf8_lossy(&ran.stderr).trim()
        )),
    }
}

/// The prefix of the line that carries a [`Summary`] (as JSON) in `--summary` mode.
pub const SUMMARY: &str = "summary ";

/// Runs every seed of `seeds` (each with [`run_alone`]), `threads` at once, and hands
/// each summary to `each` on the caller's thread as it finishes (not in seed order). A
/// seed with no summary (its run panicked, or its process did not start) stops the
/// others from starting new seeds; then this panics naming every such seed, with why
/// the first had none and the command that replays it.
pub fn run_many(
    soak: &Path,
    seeds: Range<u64>,
    threads: usize,
    mut each: impl FnMut(u64, Summary),
) {
    let next = AtomicU64::new(seeds.start);
    let failed = Mutex::new(Vec::new());
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            let (tx, next, failed, end) = (tx.clone(), &next, &failed, seeds.end);
            s.spawn(move || work(soak, next, end, &tx, failed));
        }
        drop(tx);
        for (seed, summary) in rx {
            each(seed, summary);
        }
    });
    let mut seeds = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    seeds.sort_unstable();
    if let Some((first, why)) = seeds.first() {
        let seeds: Vec<u64> = seeds.iter().map(|(s, _)| *s).collect();
        panic!(
            "seeds {seeds:?} ended with no summary; the first: {why}\nreplay: {}",
            crate::replay_command(*first)
        );
    }
}

/// One thread's share: takes the next seed until none is left (or one had no summary).
fn work(
    soak: &Path,
    next: &AtomicU64,
    end: u64,
    tx: &mpsc::Sender<(u64, Summary)>,
    failed: &Mutex<Vec<(u64, String)>>,
) {
    loop {
        let seed = next.fetch_add(1, Ordering::Relaxed);
        if seed >= end {
            return;
        }
        let summary = match run_alone(soak, seed) {
            Ok(summary) => summary,
            Err(why) => {
                next.store(end, Ordering::Relaxed);
                let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.push((seed, why));
                return;
            }
        };
        if tx.send((seed, summary)).is_err() {
            return;
        }
    }
}
