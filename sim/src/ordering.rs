//! The ordering rules of the checker, read from the event log:
//! - `wave-order`: in phase 2 a project acknowledges only after every project of an
//!   earlier wave did (children first for COMMIT, parents first for ABORT).
//! - `mutual-exclusion`: two transactions sharing a project never run at once: from
//!   the start of phase 1 to the terminal event, a project belongs to one transaction.

use std::collections::BTreeMap;

use lockstep::pb::{self, EventKind};

use crate::checker::Violation;

/// Checks both rules over `transactions` and the whole event log `events`.
pub fn check(transactions: &[pb::Transaction], events: &[pb::Event]) -> Vec<Violation> {
    let mut out = Vec::new();
    for t in transactions {
        out.extend(wave_order(t, events));
    }
    out.extend(mutual_exclusion(transactions, events));
    out
}

fn kind(e: &pb::Event) -> Option<EventKind> {
    EventKind::try_from(e.kind).ok()
}

/// Every acknowledgement of `t` comes after those of the waves delivered before it.
fn wave_order(t: &pb::Transaction, events: &[pb::Event]) -> Vec<Violation> {
    let wave: BTreeMap<&str, u32> = t
        .participants
        .iter()
        .map(|p| (p.project.as_str(), p.wave))
        .collect();
    let mut decided_commit = None;
    let mut highest: Option<(u32, &str)> = None;
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.transaction_id == t.id) {
        match kind(e) {
            Some(EventKind::DecidedCommit) => decided_commit = Some(true),
            Some(EventKind::DecidedAbort) => decided_commit = Some(false),
            // A restart resumes phase 2 from the durable record, which may not hold
            // acknowledgements whose events were written: delivery starts over.
            Some(EventKind::Recovered) => highest = None,
            Some(EventKind::Acknowledged | EventKind::Resolved) => {
                let (Some(commit), Some(&w)) = (decided_commit, wave.get(e.project.as_str()))
                else {
                    continue;
                };
                // Delivery order: waves ascending for COMMIT, descending for ABORT.
                let rank = if commit { w } else { u32::MAX - w };
                if let Some((seen, who)) = highest
                    && rank < seen
                {
                    out.push(Violation {
                        rule: "wave-order",
                        detail: format!(
                            "{}: {} acknowledged after {who} of a later wave",
                            t.id, e.project
                        ),
                    });
                }
                if highest.is_none_or(|(seen, _)| rank > seen) {
                    highest = Some((rank, e.project.as_str()));
                }
            }
            _ => {}
        }
    }
    out
}

/// For each participant (a project in one environment), the (start, end) sequence numbers of the transactions holding it
/// never overlap.
fn mutual_exclusion(transactions: &[pb::Transaction], events: &[pb::Event]) -> Vec<Violation> {
    let mut spans: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for e in events {
        match kind(e) {
            Some(EventKind::PrepareStarted) => {
                spans
                    .entry(e.transaction_id.as_str())
                    .or_insert((e.seq, u64::MAX));
            }
            Some(EventKind::TransactionCommitted | EventKind::TransactionAborted) => {
                if let Some(span) = spans.get_mut(e.transaction_id.as_str()) {
                    span.1 = e.seq;
                }
            }
            _ => {}
        }
    }
    let mut holders: BTreeMap<String, Vec<(u64, u64, &str)>> = BTreeMap::new();
    for t in transactions {
        let Some(&(start, end)) = spans.get(t.id.as_str()) else {
            continue;
        };
        for p in &t.participants {
            holders
                .entry(crate::checker::member(&t.environment, &p.project))
                .or_default()
                .push((start, end, t.id.as_str()));
        }
    }
    let mut out = Vec::new();
    for (project, mut held) in holders {
        held.sort();
        for pair in held.windows(2) {
            let ((_, end, first), (start, _, second)) = (pair[0], pair[1]);
            if start < end {
                out.push(Violation {
                    rule: "mutual-exclusion",
                    detail: format!("{project} was held by {first} and {second} at once"),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, tx: &str, kind: EventKind, project: &str) -> pb::Event {
        pb::Event {
            seq,
            kind: kind as i32,
            transaction_id: tx.into(),
            project: project.into(),
            ..Default::default()
        }
    }

    fn tx(id: &str, parts: &[(&str, u32)]) -> pb::Transaction {
        pb::Transaction {
            id: id.into(),
            participants: parts
                .iter()
                .map(|(p, w)| pb::Participation {
                    project: p.to_string(),
                    wave: *w,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_parent_acknowledging_before_its_child_is_caught() {
        let t = tx("T1", &[("A", 1), ("B", 0)]);
        let events = [
            event(1, "T1", EventKind::PrepareStarted, ""),
            event(2, "T1", EventKind::DecidedCommit, ""),
            event(3, "T1", EventKind::Acknowledged, "A"),
            event(4, "T1", EventKind::Acknowledged, "B"),
            event(5, "T1", EventKind::TransactionCommitted, ""),
        ];
        let found = check(std::slice::from_ref(&t), &events);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rule, "wave-order");
        let mut right = events.clone();
        right.swap(2, 3);
        assert!(wave_order(&t, &right).is_empty(), "children first is right");
        let resumed = [
            event(1, "T1", EventKind::DecidedCommit, ""),
            event(2, "T1", EventKind::Acknowledged, "B"),
            event(3, "T1", EventKind::Acknowledged, "A"),
            event(4, "T1", EventKind::Recovered, ""),
            event(5, "T1", EventKind::Acknowledged, "B"),
            event(6, "T1", EventKind::Acknowledged, "A"),
        ];
        assert!(
            wave_order(&t, &resumed).is_empty(),
            "a restart starts the delivery over"
        );
    }

    #[test]
    fn two_transactions_holding_one_project_at_once_are_caught() {
        let t1 = tx("T1", &[("A", 0)]);
        let t2 = tx("T2", &[("A", 0)]);
        let events = [
            event(1, "T1", EventKind::PrepareStarted, ""),
            event(2, "T2", EventKind::PrepareStarted, ""),
            event(3, "T1", EventKind::TransactionAborted, ""),
            event(4, "T2", EventKind::TransactionAborted, ""),
        ];
        let found = mutual_exclusion(&[t1.clone(), t2.clone()], &events);
        assert_eq!(found[0].rule, "mutual-exclusion", "{found:?}");
        let apart = [
            event(1, "T1", EventKind::PrepareStarted, ""),
            event(2, "T1", EventKind::TransactionAborted, ""),
            event(3, "T2", EventKind::PrepareStarted, ""),
            event(4, "T2", EventKind::TransactionAborted, ""),
        ];
        assert!(mutual_exclusion(&[t1, t2], &apart).is_empty());
    }
}
