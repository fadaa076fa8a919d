//! Property tests: random sequences of inputs (turns, votes, failures, deadlines, abort
//! requests, durable decisions, acknowledgements, final answers, resolutions by hand,
//! retries asked for, restarts; with verify steps also http answers, runner reports,
//! approvals and rejections) in any order and with any repetition, and after every step
//! the protocol's safety rules still hold.

#![allow(clippy::unwrap_used)]

use lockstep::{
    orders::VoteAnswer,
    retry::{Backoff, Failure},
};
use proptest::prelude::*;

use super::{
    Effect, Message, Transaction, Turn,
    tests::{machine, name, prepared},
    verify::{Outcome, Report},
};
use crate::model::{Step, StepKind, StepRun, StepStatus, TxState, Vote};

#[derive(Debug, Clone)]
pub(super) enum Input {
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
    Probed(bool),
    Report(u8),
    Approve,
    Reject,
}

const PROJECTS: [&str; 3] = ["A", "B", "C"];

pub(super) fn input() -> impl Strategy<Value = Input> {
    // Votes, verify outcomes and acknowledgements weigh more: runs then reach
    // VERIFYING and phase 2 often, not only the early aborts.
    prop_oneof![
        1 => Just(Input::Go),
        1 => Just(Input::Refused),
        12 => (0..3usize, 0..4u8).prop_map(|(p, v)| Input::Vote(p, v)),
        1 => Just(Input::Deadline),
        1 => Just(Input::Abort),
        2 => Just(Input::CommitDurable),
        3 => (0..3usize).prop_map(Input::Ack),
        1 => (0..3usize).prop_map(Input::DeliveryFailed),
        1 => (0..3usize).prop_map(Input::FinalAnswer),
        1 => (0..3usize, any::<bool>()).prop_map(|(p, c)| Input::Resolve(p, c)),
        1 => Just(Input::RetryNow),
        1 => Just(Input::Restart),
        2 => any::<bool>().prop_map(Input::Probed),
        3 => (0..3u8).prop_map(Input::Report),
        2 => Just(Input::Approve),
        1 => Just(Input::Reject),
    ]
}

/// What the checks remember across steps.
#[derive(Default)]
pub(super) struct Seen {
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

pub(super) fn step(m: &mut Transaction, input: &Input, seen: &mut Seen) -> Vec<Effect> {
    match input {
        Input::Go => m.start(Turn::Go(None)),
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
        Input::Probed(ok) => m.probed("smoke", if *ok { Ok(200) } else { Ok(503) }),
        Input::Report(kind) => {
            let outcome = [Outcome::Started, Outcome::Passed, Outcome::Failed][*kind as usize];
            m.report("performance", outcome, carol())
                .unwrap_or_default()
        }
        Input::Approve => m.approve(carol()).unwrap_or_default(),
        Input::Reject => m.reject(carol()).unwrap_or_default(),
    }
}

pub(super) fn carol() -> Report {
    Report {
        actor: "carol".into(),
        reason: "checked".into(),
        link: String::new(),
    }
}

/// The three kinds of verify step, in the order a pipeline file might list them.
pub(super) fn steps() -> Vec<StepRun> {
    let step = |name: &str, kind| {
        StepRun::waiting(Step {
            name: name.into(),
            kind,
            deadline_ms: 1_000,
        })
    };
    let http = StepKind::Http {
        url: "http://smoke/{version:A}".into(),
        expect_status: 200,
    };
    vec![
        step("smoke", http),
        step("performance", StepKind::External),
        step("approval", StepKind::Approval),
    ]
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
            let steps = &m.record().steps;
            assert!(
                steps.iter().all(|s| s.status == StepStatus::Passed),
                "COMMIT before every verify step passed: {steps:?}"
            );
            seen.commit_written = true;
        }
        if m.record().state == TxState::Verifying {
            assert!(
                !effects.iter().any(|e| matches!(e, Effect::Send { .. })),
                "nothing is sent to a participant while verifying"
            );
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
        verify in any::<bool>(),
        inputs in prop::collection::vec(input(), 0..40),
    ) {
        let mut record = machine(start).record().clone();
        if verify {
            record.steps = steps();
        }
        let mut m = Transaction::new(record, Backoff::default());
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
