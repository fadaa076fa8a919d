//! Deterministic simulation of a whole Lockstep cluster, driven by a seed.
//!
//! The production protocol code (coordinator, participant SDK, their gRPC servers) runs
//! on turmoil's simulated network and clock; only the edges are swapped: storage is the
//! in-memory twin with crash semantics, the network is turmoil's, and each participant
//! deploys onto an in-memory disk. A run mixes concurrent releases, reverts, rollbacks,
//! aborts and duplicated protocol messages with crashes, restarts, partitions, held
//! links and latency; after the faults heal, [`checker`] judges what is left.
//!
//! # Layout
//! - [`run`]: one seeded run: the cluster, the workload, the fault schedule.
//! - [`checker`]: the invariants (also used on real processes by the end-to-end tests);
//!   [`ordering`]: the rules read from the event log's order.
//! - [`deployer`]: the participants' simulated disk and its log of live changes.
//! - [`net`]: tonic over turmoil's TCP.
//!
//! Replay: `cargo run -p lockstep-sim --bin lockstep-soak -- --seed N` runs seed N again,
//! exactly; `--seeds N` runs many and prints `seeds, violations, wall time`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod checker;
pub mod deployer;
pub mod net;
pub mod ordering;
pub mod run;

pub use run::{Config, Outcome, run};

/// The command that replays `seed` exactly.
pub fn replay_command(seed: u64) -> String {
    format!("cargo run -p lockstep-sim --bin lockstep-soak -- --seed {seed}")
}
