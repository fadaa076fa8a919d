//! The Lockstep participant SDK and the reference agent.
//!
//! A deploy agent implements [`Deployer`] (stage, go live, undo, report); the SDK wraps it
//! into the `lockstep.v1.Participant` gRPC service and keeps the protocol for it:
//! PREPARED is voted only after the staged state is synced to the agent's own RocksDB;
//! Prepare, Commit and Abort are idempotent per transaction; after a restart, every
//! prepared transaction is resolved by asking the coordinator for its decision.
//!
//! # Layout
//! - [`deployer`]: the trait an agent author implements.
//! - [`participant`]: the protocol rules around it (prepare, decide, asking for
//!   decisions through a [`participant::DecisionSource`], recovery, reports).
//! - [`ledger`]: its durable per-transaction records.
//! - [`metrics`]: what an agent's `/metrics` shows.
//! - [`inquiry`]: the coordinator's GetDecision as a `DecisionSource`.
//! - [`schema`]: database migrations staged with a transaction.
//! - [`service`] / [`server`]: the gRPC edge with reflection and health.
//! - [`access`]: who may call an agent (orders from the coordinator only).
//! - [`agent`]: the reference agent's deployer (`lockstep-agent`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod access;
pub mod agent;
pub mod deployer;
pub mod inquiry;
pub mod ledger;
pub mod metrics;
pub mod participant;
pub mod schema;
pub mod server;
pub mod service;

pub use deployer::{Change, DeployError, Deployer, Refusal, Staged};
pub use participant::Participant;
