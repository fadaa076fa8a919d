//! VERIFYING told to the state machine alone: steps run one at a time, every failure
//! kind decides ABORT, the last pass decides COMMIT, a restart resumes the steps, and
//! nothing is ever sent to a participant while verifying.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lockstep::{
    orders::{Decision, Staging, VoteAnswer},
    pb,
};

use super::{
    Asker, Effect, Show, Transaction, decision_for,
    tests::{all_prepared, event_kinds, machine, name, sends},
    verify::{Outcome, Report, render},
};
use crate::model::{Step, StepKind, StepRun, StepStatus, TxState};

fn step(name: &str, kind: StepKind) -> StepRun {
    StepRun::waiting(Step {
        name: name.into(),
        kind,
        deadline_ms: 60_000,
    })
}

/// T4 with an http smoke test, an external performance test and an approval.
fn verifying() -> (Transaction, Vec<Effect>) {
    let mut m = machine(TxState::Preparing);
    let http = StepKind::Http {
        url: "{test_uri:A}/health?v={version:A}".into(),
        expect_status: 200,
    };
    let record = &mut m.record;
    record.steps = vec![
        step("smoke", http),
        step("performance", StepKind::External),
        step("approval", StepKind::Approval),
    ];
    record.created_by = "tim".into();
    let staged = VoteAnswer::Prepared(Staging {
        test_uri: "http://green-a".into(),
        ..Staging::default()
    });
    let mut effects = m.vote(&name("A"), Ok(staged));
    effects.extend(m.vote(&name("B"), super::tests::prepared()));
    effects.extend(m.vote(&name("C"), super::tests::prepared()));
    (m, effects)
}

fn by(actor: &str, reason: &str) -> Report {
    Report {
        actor: actor.into(),
        reason: reason.into(),
        link: String::new(),
    }
}

fn statuses(m: &Transaction) -> Vec<StepStatus> {
    m.record().steps.iter().map(|s| s.status).collect()
}

fn probes(effects: &[Effect]) -> Vec<String> {
    let urls = effects.iter().filter_map(|e| match e {
        Effect::Probe { url, .. } => Some(url.clone()),
        _ => None,
    });
    urls.collect()
}

/// Passes the smoke test and the performance test: the approval is next.
fn to_approval(m: &mut Transaction) {
    m.probed("smoke", Ok(200));
    m.report("performance", Outcome::Passed, by("ci", "p95 80ms"))
        .unwrap();
}

#[test]
fn every_vote_prepared_starts_the_first_step_against_the_staged_test_uri() {
    let (m, effects) = verifying();
    assert_eq!(m.record().state, TxState::Verifying);
    assert_eq!(probes(&effects), ["http://green-a/health?v=T4A"]);
    assert!(effects.contains(&Effect::StartDeadline(Duration::from_secs(60))));
    let kinds = event_kinds(&effects);
    assert!(kinds.contains(&pb::EventKind::VerifyStarted));
    assert!(kinds.contains(&pb::EventKind::VerifyStepTriggered));
    assert!(!kinds.contains(&pb::EventKind::DecidedCommit));
    use StepStatus::*;
    assert_eq!(statuses(&m), [Triggered, Waiting, Waiting]);
    assert_eq!(
        decision_for(m.record(), Asker::project(&name("B"))),
        Decision::Undecided
    );
}

#[test]
fn steps_run_in_order_and_the_last_pass_decides_commit() {
    let (mut m, _) = verifying();
    let early = m.report("performance", Outcome::Started, by("ci", ""));
    assert!(early.unwrap_err().contains("on step smoke"));
    m.probed("smoke", Ok(200));
    let started = m
        .report("performance", Outcome::Started, by("ci", ""))
        .unwrap();
    assert!(sends(&started).is_empty());
    to_approval(&mut m);
    let own = m.approve(by("tim", "looks good"));
    assert!(own.unwrap_err().contains("someone else's approval"));
    let effects = m.approve(by("tom", "numbers fine")).unwrap();
    assert!(matches!(effects.last(), Some(Effect::DecideCommit { .. })));
    assert_eq!(m.record().state, TxState::Committing);
    assert!(m.record().reason.contains("3 verify steps passed"));
}

#[test]
fn each_kind_of_failure_decides_abort_and_undoes_every_staged_part() {
    let fail: [fn(&mut Transaction) -> Vec<Effect>; 4] = [
        |m| m.probed("smoke", Ok(503)),
        |m| {
            m.probed("smoke", Ok(200));
            m.report("performance", Outcome::Failed, by("ci", "p95 900ms"))
                .unwrap()
        },
        |m| m.reject(by("tom", "not today")).unwrap(),
        |m| m.deadline(),
    ];
    for (i, fail) in fail.into_iter().enumerate() {
        let (mut m, _) = verifying();
        let effects = fail(&mut m);
        assert_eq!(m.record().state, TxState::Aborting, "failure {i}");
        assert!(
            m.record().reason.starts_with("verify step"),
            "{}",
            m.record().reason
        );
        let mut aborts: Vec<_> = sends(&effects).into_iter().map(|(p, _)| p).collect();
        aborts.sort();
        assert_eq!(aborts, ["A"], "failure {i}: parents first, A's wave");
        assert!(statuses(&m).contains(&StepStatus::Failed));
        let shown_early = effects.iter().any(|e| {
            matches!(
                e,
                Effect::Write {
                    show: Show::AtOnce,
                    ..
                }
            )
        });
        assert!(
            !shown_early,
            "failure {i}: ABORT is shown only once durable"
        );
    }
}

#[test]
fn a_report_for_a_step_that_is_not_external_or_unknown_is_refused_naming_it() {
    let (mut m, _) = verifying();
    to_approval(&mut m);
    let approval = m.report("approval", Outcome::Passed, by("ci", ""));
    assert!(approval.unwrap_err().contains("not an external step"));
    let unknown = m.report("load", Outcome::Passed, by("ci", ""));
    assert!(unknown.unwrap_err().contains("no verify step \"load\""));
    let mut done = machine(TxState::Committed);
    let late = done.approve(by("tom", ""));
    assert!(
        late.unwrap_err()
            .contains("only a transaction in VERIFYING")
    );
}

#[test]
fn a_restart_resumes_the_recorded_steps_and_sends_nothing() {
    let (mut m, _) = verifying();
    m.probed("smoke", Ok(200));
    let mut again = Transaction::new(m.record().clone(), Default::default());
    let effects = again.restarted();
    assert_eq!(again.record().state, TxState::Verifying);
    assert!(
        sends(&effects).is_empty(),
        "no participant is told anything"
    );
    assert!(event_kinds(&effects).contains(&pb::EventKind::Recovered));
    assert!(effects.contains(&Effect::StartDeadline(Duration::from_secs(60))));
    use StepStatus::*;
    assert_eq!(statuses(&again), [Passed, Triggered, Waiting]);
    again
        .report("performance", Outcome::Passed, by("ci", ""))
        .unwrap();
    assert_eq!(statuses(&again), [Passed, Passed, Triggered]);
}

#[test]
fn without_steps_every_vote_prepared_decides_commit_at_once() {
    let mut m = machine(TxState::Preparing);
    let effects = all_prepared(&mut m);
    assert!(matches!(effects.last(), Some(Effect::DecideCommit { .. })));
}

#[test]
fn urls_name_what_cannot_be_filled() {
    let (m, _) = verifying();
    let parts = &m.record().participants;
    assert!(
        render("{test_uri:B}/x", parts)
            .unwrap_err()
            .contains("B reported no test URI")
    );
    assert!(
        render("{test_uri:Z}", parts)
            .unwrap_err()
            .contains("names no project")
    );
    assert!(
        render("{colour:A}", parts)
            .unwrap_err()
            .contains("no placeholder")
    );
    assert_eq!(
        render("http://x/{version:C}", parts).unwrap(),
        "http://x/T4C"
    );
}

/// Issue 26, defect 3: four eyes are two people. The creator's certificate said
/// `user/tim`; tim's operator token (subject tim) may not approve either.
#[test]
fn the_creator_cannot_approve_with_another_credential() {
    let (mut m, _) = verifying();
    m.record.created_by = "user/tim".into();
    to_approval(&mut m);
    for actor in [
        "tim (token tok-1)",
        "user/tim (token tok-2)",
        "user/tim",
        "tim",
    ] {
        let refused = m.approve(by(actor, "mine"));
        assert!(refused.is_err(), "{actor} approved tim's own transaction");
    }
    assert!(
        m.approve(by("user/tom", "fine")).is_ok(),
        "someone else may"
    );
}
