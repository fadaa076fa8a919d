//! Property tests: random sequences of inputs (turns, votes, failures, deadlines, abort
//! requests, durable decisions, acknowledgements, final answers, resolutions by hand,
//! retries asked for, restarts) in any order and with any
//! repetition, and after every step the protocol's safety rules still hold.

#![allow(clippy::unwrap_used)]

use lockstep::{
    orders::VoteAnswer,
    retry::{Backoff, Failure},
};
use proptest::prelude::*;

use super::{
    Effect, Message, Transaction, Turn,
    tests::{machine, name, prepared},
};
use crate::model::{TxState, Vote};

#[derive(Debug, Clone)]
enum Input {
    Go,
    Refused,
    Vote(usize, u8),
    Deadline,
    Abort,
    CommitDurable,
    Ack(usize),
    DeliveryFailed(usize),
    FinalAnswer(usize),
    Resolve(usize, bool),
    RetryNow,
    Restart,
}

const PROJECTS: [&str; 3] = ["A", "B", "C"];

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        Just(Input::Go),
        Just(Input::Refused),
        (0..3usize, 0..4u8).prop_map(|(p, v)| Input::Vote(p, v)),
        Just(Input::Deadline),
        Just(Input::Abort),
        Just(Input::CommitDurable),
        (0..3usize).prop_map(Input::Ack),
        (0..3usize).prop_map(Input::DeliveryFailed),
        (0..3usize).prop_map(Input::FinalAnswer),
        (0..3usize, any::<bool>()).prop_map(|(p, c)| Input::Resolve(p, c)),
        Just(Input::RetryNow),
        Just(Input::Restart),
    ]
}

/// What the checks remember across steps.
#[derive(Default)]
struct Seen {
    /// A DecideCommit effect was emitted.
    commit_written: bool,
    /// The driver reported it durable (or a restart found it decided).
    commit_durable: bool,
    /// The first decision taken: true for COMMIT.
    decided: Option<bool>,
}

fn answer(kind: u8) -> Result<VoteAnswer, Failure> {
    match kind {
        0 | 1 => prepared(),
        2 => Ok(VoteAnswer::Refused("no".into())),
        _ => Err(Failure::Transient("Unavailable".into())),
    }
}

fn step(m: &mut Transaction, input: &Input, seen: &mut Seen) -> Vec<Effect> {
    match input {
        Input::Go => m.start(Turn::Go(Vec::new())),
        Input::Refused => m.start(Turn::Refused("changed".into())),
        Input::Vote(p, kind) => m.vote(&name(PROJECTS[*p]), answer(*kind)),
        Input::Deadline => m.deadline(),
        Input::Abort => m.abort_requested("asked".into(), ""),
        // The driver reports durability only after carrying out a DecideCommit.
        Input::CommitDurable if seen.commit_written && !seen.commit_durable => {
            seen.commit_durable = true;
            m.commit_durable(1)
        }
        Input::CommitDurable => Vec::new(),
        Input::Ack(p) => m.acknowledged(&name(PROJECTS[*p])),
        Input::DeliveryFailed(p) => {
            m.delivery_failed(&name(PROJECTS[*p]), Failure::Transient("down".into()))
        }
        Input::FinalAnswer(p) => {
            let never = Failure::Final("never prepared here".into());
            m.delivery_failed(&name(PROJECTS[*p]), never)
        }
        Input::Resolve(p, committed) => {
            let resolution = crate::model::Resolution {
                committed: *committed,
                actor: "alice".into(),
                reason: "checked".into(),
                status: "down".into(),
            };
            let resolved = m.resolve(&name(PROJECTS[*p]), resolution);
            resolved.unwrap_or_default()
        }
        Input::RetryNow => m.retry_now("bob"),
        Input::Restart => restart(m, seen),
    }
}

/// A restart rebuilds the machine from its record, as recovery does. A COMMIT that
/// was written is durable by then in this model.
fn restart(m: &mut Transaction, seen: &mut Seen) -> Vec<Effect> {
    let was = m.record().state;
    if was == TxState::Committing && !seen.commit_durable {
        // The record says COMMITTING only once the decision was handed to the journal.
        seen.commit_durable = true;
        let mut record = m.record().clone();
        record.checkpoint = 1;
        *m = Transaction::new(record, Backoff::default());
    } else {
        *m = Transaction::new(m.record().clone(), Backoff::default());
    }
    let effects = m.restarted();
    if matches!(was, TxState::Pending | TxState::Preparing) {
        assert!(
            matches!(m.record().state, TxState::Aborting | TxState::Aborted),
            "an undecided transaction restarted is aborted"
        );
    }
    effects
}

fn check(m: &Transaction, before: &[Vote], effects: &[Effect], seen: &mut Seen) {
    for e in effects {
        if let Effect::DecideCommit { .. } = e {
            assert!(
                m.record()
                    .participants
                    .iter()
                    .all(|p| p.vote == Vote::Prepared),
                "COMMIT without every vote PREPARED (votes before: {before:?})"
            );
            seen.commit_written = true;
        }
        if let Effect::Send { order, .. } = e
            && let Message::Commit(_) = order.message
        {
            assert!(
                seen.commit_durable,
                "a Commit before its decision is durable"
            );
            children_acknowledged(m, &order.project);
        }
    }
    let now = match m.record().state {
        TxState::Committing | TxState::Committed => Some(true),
        TxState::Aborting | TxState::Aborted => Some(false),
        _ => None,
    };
    if let (Some(first), Some(now)) = (seen.decided, now) {
        assert_eq!(first, now, "a decided transaction was decided again");
    }
    seen.decided = seen.decided.or(now);
}

/// A parent hears COMMIT only when its children acknowledged.
fn children_acknowledged(m: &Transaction, project: &lockstep::names::ProjectName) {
    if project.as_str() == "A" {
        let r = m.record();
        for child in ["B", "C"] {
            assert!(
                r.participant(&name(child)).unwrap().acknowledged,
                "A before {child}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn safety_holds_for_any_sequence_of_inputs(
        start in prop_oneof![Just(TxState::Pending), Just(TxState::Preparing)],
        inputs in prop::collection::vec(input(), 0..40),
    ) {
        let mut m = machine(start);
        let mut seen = Seen::default();
        let first = m.begin();
        check(&m, &[], &first, &mut seen);
        for input in &inputs {
            let before: Vec<Vote> = m.record().participants.iter().map(|p| p.vote).collect();
            let effects = step(&mut m, input, &mut seen);
            check(&m, &before, &effects, &mut seen);
        }
    }
}
