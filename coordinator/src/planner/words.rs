//! The small text helpers the planner's messages are made of.

use std::collections::BTreeMap;

use lockstep::names::{ProjectName, TxId, Version};

/// `A=T4A B=T4B` for a set of (project, version).
pub(super) fn describe(result: &BTreeMap<&ProjectName, Option<&Version>>) -> String {
    result
        .iter()
        .map(|(p, v)| format!("{p}={}", v.map(|v| v.as_str()).unwrap_or("(none)")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `T2, T4`.
pub(super) fn join(ids: &[TxId]) -> String {
    ids.iter()
        .map(|i| i.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `B`, `B and C`, `B, C and D`.
pub(super) fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}
