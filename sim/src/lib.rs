//! Deterministic simulation of a whole Lockstep cluster, driven by a seed.
//!
//! The production protocol code (coordinator, participant SDK, their gRPC servers) runs
//! on turmoil's simulated network and clock; only the edges are swapped: storage is the
//! in-memory twin with crash semantics, the network is turmoil's, and each participant
//! deploys onto an in-memory disk. Every project lives in two environments (`default`,
//! then `prod` after it in one pipeline with verify steps, a soak, auto-promotion and a
//! live check that reverts on failure). A run mixes concurrent releases, reverts,
//! rollbacks, promotions (some forced), aborts and duplicated protocol messages with
//! crashes, restarts, partitions, held links and latency, while a simulated person
//! reports external steps, approves or rejects, and resolves participants the
//! coordinator waits on; after the faults heal, [`checker`] judges what is left.
//!
//! # Layout
//! - [`run`]: one seeded run: the cluster, the workload, the fault schedule.
//! - [`checker`]: the invariants (also used on real processes by the end-to-end tests);
//!   [`ordering`]: the rules read from the event log's order.
//! - [`deployer`]: the participants' simulated disk and its log of live changes.
//! - [`net`]: tonic over turmoil's TCP; [`calls`]: the clients' bounded calls.
//! - [`stages`]: the pipeline and the seeded http probe of verify and live steps.
//! - [`people`]: the person who answers steps, approvals and resolutions.
//! - [`many`]: many seeds at once, one per core, each in a process of its own (the soak
//!   and the test suite).
//! - [`ha`] and [`lease`]: one seed in four runs two coordinators on a simulated etcd
//!   (a shared store, an election on a lease, every write fenced on the term) whose
//!   leaders crash, or pause past their lease and are deposed while still running.
//!
//! Replay: `cargo run -p lockstep-sim --bin lockstep-soak -- --seed N` runs seed N again,
//! exactly; `--seeds N` runs many and prints `seeds, violations, wall time`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod calls;
pub mod checker;
pub mod contents;
pub mod deployer;
pub mod ha;
pub mod lease;
pub mod many;
pub mod net;
pub mod ordering;
pub mod people;
pub mod run;
pub mod stages;

pub use many::{Summary, default_threads, run_alone, run_many};
pub use run::{Config, Outcome, run};

/// The command that replays `seed` exactly.
pub fn replay_command(seed: u64) -> String {
    format!("cargo run -p lockstep-sim --bin lockstep-soak -- --seed {seed}")
}
