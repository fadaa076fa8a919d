//! The planner against an in-memory history: seed 000's four situations and the rules'
//! edge cases, played as stories in milliseconds.
//!
//! - `story`: the in-memory [`History`](super::History) and the builder that commits.
//! - `checks`: requests to plan and assertions on plans.
//! - `seed_000`: the seed's four situations; `rules`: each rule's own cases.

#![allow(clippy::unwrap_used)]

mod checks;
mod rules;
mod seed_000;
mod story;
