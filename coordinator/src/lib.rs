//! The Lockstep coordinator: it makes a composite release go live all-or-nothing by
//! running two-phase commit across one participant per project, with a RocksDB
//! write-ahead log so that every transaction is finished or undone after a crash.
//!
//! # Layout
//! - [`txn`]: two-phase commit of one transaction as a pure state machine: inputs in,
//!   effects out. Every protocol transition is there.
//! - [`driver`]: the thin task per transaction that feeds the machine and carries out
//!   its effects through [`ports`]: the participant network and the journal.
//! - [`coordinator`]: the façade the gRPC edge calls.
//! - [`registry`]: the state owner (projects, unfinished transactions, checkpoints,
//!   quarantine): admission, the journal port, reads.
//! - [`planner`]: requests → plans (targets, actions, waves, release rules); pure.
//!   [`preview`]: what each participant says it would do, for dry runs.
//! - [`queue`]: per-project FIFO so transactions sharing a project never interleave.
//! - [`journal`]: the write-ahead log's front door with group commit ([`durable`]: who
//!   waits for which append, woken in append order);
//!   [`feed`]: durable events for watchers.
//! - [`tables`]: table names, key layouts, encodings over [`lockstep_store::Kv`].
//! - [`recovery`]: what a restart does to every unfinished transaction.
//! - [`network`]: the participant network over gRPC (TCP, or a simulated network),
//!   stamping every order with this data directory's [`incarnation`].
//! - [`service`] / [`convert`]: the gRPC edge and wire conversions; [`server`] assembles
//!   it with reflection and health.
//! - [`access`]: who is calling and what they may do (certificates, tokens, roles, and
//!   the one permission table every call is checked against, and the one question
//!   that filters what a read shows: may this caller read project P in environment E);
//!   [`keys`]: the token signing secret.
//! - [`notify`]: CloudEvents webhooks delivered from the log, each subscription from
//!   its durable cursor; [`stall`]: the STALLED trigger.
//! - [`observe`]: what agents run beside what the checkpoint says (registration
//!   checks, `live --observed`); [`drift`]: the periodic drift check.
//! - [`probe`]: the http verify steps' requests (a third port, [`ports::Probe`]).
//! - [`pipeline`]: the pipeline file (environments and their stages), parsed and
//!   checked; pure. [`reach`]: paths and cycles along `after` and `requires` edges.
//! - [`storage`]: RocksDB on this machine, or etcd shared by instances of which one
//!   leads (fenced writes); [`standby`]: what an instance that does not lead answers
//!   (reads from etcd as it is now; the rest names the leader).
//! - [`metrics`]: what `/metrics` shows, read off the event log and the state.
//! - [`model`], [`error`], [`crash`]: records, errors, crash points.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod access;
pub mod convert;
pub mod coordinator;
pub mod crash;
pub mod drift;
pub mod driver;
pub mod durable;
pub mod error;
pub mod feed;
pub mod http;
pub mod incarnation;
pub mod journal;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod network;
pub mod notify;
pub mod observe;
pub mod pipeline;
pub mod planner;
pub mod ports;
pub mod preview;
pub mod probe;
pub mod queue;
pub mod reach;
pub mod recovery;
pub mod registry;
pub mod server;
pub mod service;
pub mod stall;
pub mod standby;
pub mod storage;
pub mod tables;
pub mod timings;
pub mod txn;

pub use coordinator::{Config, Coordinator};
