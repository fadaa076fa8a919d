//! The Lockstep coordinator: it makes a composite release go live all-or-nothing by
//! running two-phase commit across one participant per project, with a RocksDB
//! write-ahead log so that every transaction is finished or undone after a crash.
//!
//! # Layout
//! - [`protocol`]: two-phase commit of one transaction, top to bottom (the state machine).
//! - [`coordinator`]: the state owner: projects, unfinished transactions, checkpoints;
//!   what handlers and drivers call.
//! - [`planner`]: requests → plans (targets, actions, waves, release rules); pure.
//!   [`preview`]: what each participant says it would do, for dry runs.
//! - [`queue`]: per-project FIFO so transactions sharing a project never interleave.
//! - [`journal`]: the write-ahead log's single writer with group commit;
//!   [`feed`]: durable events for watchers.
//! - [`tables`]: table names, key layouts, encodings over [`lockstep_store::Kv`].
//! - [`recovery`]: presumed abort and phase 2 resumption at start-up.
//! - [`network`]: how participants are reached (TCP, or a simulated network).
//! - [`service`] / [`convert`]: the gRPC edge and wire conversions; [`server`] assembles
//!   it with reflection and health.
//! - [`model`], [`error`], [`retry`], [`crash`]: records, errors, backoff, crash points.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod convert;
pub mod coordinator;
pub mod crash;
pub mod error;
pub mod feed;
pub mod journal;
pub mod model;
pub mod network;
pub mod planner;
pub mod preview;
pub mod protocol;
pub mod queue;
pub mod recovery;
pub mod retry;
pub mod server;
pub mod service;
pub mod tables;

pub use coordinator::{Config, Coordinator};
