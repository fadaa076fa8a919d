//! Lockstep's wire contract, shared by every crate and by every deploy agent written in
//! Rust.
//!
//! Lockstep makes a composite release go live all-or-nothing: a coordinator runs
//! two-phase commit across one participant per project. The `.proto` files under
//! `proto/lockstep/v1/` are the contract for agents in any language; this crate is their
//! Rust face.
//!
//! # Layout
//! - [`pb`]: the code generated from `proto/lockstep/v1/*.proto` (package `lockstep.v1`).
//! - [`FILE_DESCRIPTOR_SET`]: the compiled descriptors with comments, for reflection.
//! - [`names`]: validated names (project, version, transaction id, environment) with the
//!   errors that name the offending field.
//! - [`crash`]: crash points the crash tests use to stop a server between two steps.
//! - [`limits`]: the sizes every server enforces.
//! - [`logging`]: how every process logs (`--log-format text|json`) and exports
//!   traces (`--otlp-endpoint`); [`trace`]: W3C trace context between processes.
//! - [`metrics`]: the `/metrics` endpoint of `--metrics-listen` (OpenMetrics text).
//! - [`edge`]: reflection, health and size limits every Lockstep server shares.
//! - [`orders`]: the participant protocol's messages as domain types (Prepare, Commit,
//!   Abort orders, votes, decisions) with their wire conversions both ways.
//! - [`reference`]: the grammar of an artifact reference (path, or URL with digest).
//! - [`retry`]: which failures are worth retrying, and the one backoff schedule.
//! - [`standby`]: what a coordinator that does not lead answers, and how a client finds
//!   the one that does.
//! - [`shutdown`]: a clean stop on SIGTERM/SIGINT for every server.
//! - [`wire`]: small conversions between protobuf well-known types and std types.
//! - [`tls`]: TLS for every server and client from PEM files, reloaded on SIGHUP.
//! - [`identity`]: who a certificate says its holder is (SPIFFE URI SANs).
//! - [`caller`]: what a call brings to prove who makes it (certificate, token).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod caller;
pub mod crash;
pub mod edge;
pub mod identity;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod orders;
pub mod reference;
pub mod retry;
pub mod shutdown;
pub mod standby;
pub mod status;
pub mod tls;
pub mod trace;
pub mod wire;

/// Generated `lockstep.v1` messages, clients and servers.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("lockstep.v1");
    include!(concat!(env!("OUT_DIR"), "/lockstep.v1.serde.rs"));
}

/// Protobuf well-known types (Timestamp, Duration) as the generated code uses them, with
/// proto3 JSON serde impls.
pub use pbjson_types as wkt;

/// Encoded `FileDescriptorSet` of `lockstep.v1` (comments included), served by the
/// coordinator's and the agents' reflection service so grpcurl can `list`/`describe`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lockstep_descriptor.bin"));

/// The environment used when a request leaves it empty. Every key and message carries an
/// environment from the start so that promotion across environments fits later.
pub const DEFAULT_ENVIRONMENT: &str = "default";
