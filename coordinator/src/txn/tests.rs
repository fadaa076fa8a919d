//! One test per protocol rule (PRODUCT.md, "Protocol rules"), each a story told to the
//! state machine alone: no network, no storage, no clock.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lockstep::{
    names::{Environment, ProjectName, TxId, Version},
    orders::{Decision, Staging, VoteAnswer},
    pb,
    retry::{Backoff, Failure},
};

use super::{Asker, Effect, Message, PRESUMED_ABORT, Show, Transaction, Turn, decision_for};
use crate::model::{Action, Participant, Request, TxKind, TxRecord, TxState, Vote};

pub(super) fn name(s: &str) -> ProjectName {
    ProjectName::parse("project", s).unwrap()
}

fn participant(project: &str, wave: u32) -> Participant {
    Participant {
        project: name(project),
        endpoint: format!("http://{project}"),
        from_version: None,
        to_version: Version::parse("version", &format!("T4{project}")).unwrap(),
        action: Action::Upgrade,
        artifact: String::new(),
        metadata: Default::default(),
        vote: Vote::None,
        vote_reason: String::new(),
        acknowledged: false,
        wave,
        from_schema: None,
        to_schema: None,
        migrations: Vec::new(),
        test_uri: String::new(),
        staged_artifact: String::new(),
        delivery_error: String::new(),
        needs_resolution: false,
        resolution: None,
        restore: false,
        target_schema: None,
    }
}

/// T4 over A (requires B and C), B and C: waves [[B, C], [A]].
pub(crate) fn t4(state: TxState) -> TxRecord {
    TxRecord {
        id: TxId::parse("id", "T4").unwrap(),
        ordinal: 4,
        environment: Environment::default(),
        kind: TxKind::Release,
        request: Request::Rollback {
            revision: 1,
            allow_quarantined: false,
        },
        state,
        participants: vec![
            participant("A", 1),
            participant("B", 0),
            participant("C", 0),
        ],
        waves: vec![vec![name("B"), name("C")], vec![name("A")]],
        reason: String::new(),
        reverts: Vec::new(),
        rollback_to: 0,
        forced: false,
        quarantined: false,
        checkpoint: 0,
        prepare_timeout_ms: 15_000,
        created_ms: 0,
        finished_ms: 0,
        prepare_sent: state != TxState::Pending,
        created_by: String::new(),
        authority: Default::default(),
        ticket: String::new(),
        steps: Vec::new(),
        promoted_from: None,
        live_check: Default::default(),
        trace_parent: String::new(),
        held_reads: Default::default(),
    }
}

pub(super) fn machine(state: TxState) -> Transaction {
    Transaction::new(t4(state), Backoff::default())
}

pub(super) fn prepared() -> Result<VoteAnswer, Failure> {
    Ok(VoteAnswer::Prepared(Staging::default()))
}

/// The projects orders go to, in effect order, with their kind.
pub(super) fn sends(effects: &[Effect]) -> Vec<(String, &'static str)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { order, .. } => Some((order.project.to_string(), kind(&order.message))),
            _ => None,
        })
        .collect()
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Prepare(_) => "prepare",
        Message::Commit(_) => "commit",
        Message::Abort(_) => "abort",
    }
}

pub(super) fn event_kinds(effects: &[Effect]) -> Vec<pb::EventKind> {
    let events = effects.iter().flat_map(|e| match e {
        Effect::Note { events, .. } | Effect::Write { events, .. } => events.clone(),
        Effect::DecideCommit { events, .. } | Effect::Finish { events, .. } => events.clone(),
        _ => Vec::new(),
    });
    events
        .map(|e| pb::EventKind::try_from(e.kind).unwrap())
        .collect()
}

pub(super) fn all_prepared(m: &mut Transaction) -> Vec<Effect> {
    let mut effects = m.vote(&name("A"), prepared());
    effects.extend(m.vote(&name("B"), prepared()));
    effects.extend(m.vote(&name("C"), prepared()));
    effects
}

fn ack(m: &mut Transaction, projects: &[&str]) -> Vec<Effect> {
    projects
        .iter()
        .flat_map(|p| m.acknowledged(&name(p)))
        .collect()
}

/// Review finding of stop 53: a queued transaction's turn wrote "Prepare may go out"
/// without waiting and sent Prepare, so a crash before that write was durable left a
/// PENDING record, which a restart aborts telling no one, while a participant held it
/// prepared. The write is durable before the first Prepare now.
#[test]
fn phase1_sends_prepare_to_every_participant_at_once_with_one_deadline() {
    let mut m = machine(TxState::Pending);
    let effects = m.start(Turn::Go(None));
    assert_eq!(m.record().state, TxState::Preparing);
    assert!(
        m.record().prepare_sent,
        "recovery must know Prepare may have gone out"
    );
    assert!(matches!(
        &effects[0],
        Effect::Write {
            show: Show::WhenDurable,
            ..
        }
    ));
    assert_eq!(effects[1], Effect::StartDeadline(Duration::from_secs(15)));
    let expected = ["A", "B", "C"].map(|p| (p.to_string(), "prepare"));
    assert_eq!(sends(&effects), expected);
}

/// Defect 3 of issue 25: a release queued as tested whose turn comes when its
/// combination has become untested (it was created with --force), or after a
/// `requires` edge was added, runs with the plan made at its turn, whole.
#[test]
fn the_turn_hands_over_the_whole_replanned_plan() {
    let mut m = machine(TxState::Pending);
    let record = m.record();
    let plan = crate::planner::Plan {
        participants: record.participants.clone(),
        waves: vec![vec![name("C")], vec![name("B")], vec![name("A")]],
        preconditions: Vec::new(),
        forced: true,
        reverts: vec![TxId::parse("id", "T3").unwrap()],
        rollback_to: 0,
        reads: Default::default(),
    };
    m.start(Turn::Go(Some(Box::new(plan.clone()))));
    let r = m.record();
    assert!(r.forced, "the turn found the combination untested: forced");
    assert_eq!(r.waves, plan.waves, "the waves of the new plan");
    assert_eq!(r.reverts, plan.reverts);
}

#[test]
fn commit_is_decided_only_when_every_participant_voted_prepared() {
    let mut m = machine(TxState::Preparing);
    assert!(
        !m.vote(&name("A"), prepared())
            .iter()
            .any(|e| matches!(e, Effect::DecideCommit { .. }))
    );
    assert!(
        !m.vote(&name("B"), prepared())
            .iter()
            .any(|e| matches!(e, Effect::DecideCommit { .. }))
    );
    let last = m.vote(&name("C"), prepared());
    assert!(
        last.iter()
            .any(|e| matches!(e, Effect::DecideCommit { .. }))
    );
    assert_eq!(m.record().state, TxState::Committing);
    assert_eq!(m.record().reason, "every participant prepared (3 votes)");
}

#[test]
fn no_commit_is_sent_before_the_decision_is_durable() {
    let mut m = machine(TxState::Preparing);
    let decided = all_prepared(&mut m);
    assert!(
        sends(&decided).is_empty(),
        "no order may leave with the decision itself"
    );
    let after = m.commit_durable(7);
    assert_eq!(m.record().checkpoint, 7);
    assert_eq!(
        sends(&after),
        [("B".into(), "commit"), ("C".into(), "commit")]
    );
}

#[test]
fn a_refusal_decides_abort_at_once_and_every_participant_hears_it_parents_first() {
    let mut m = machine(TxState::Preparing);
    m.vote(&name("B"), prepared());
    let effects = m.vote(
        &name("C"),
        Ok(VoteAnswer::Refused("migration 0004 has no down".into())),
    );
    assert_eq!(m.record().state, TxState::Aborting);
    assert_eq!(m.record().reason, "C refused: migration 0004 has no down");
    let write = effects.iter().position(|e| {
        matches!(
            e,
            Effect::Write {
                show: Show::WhenDurable,
                ..
            }
        )
    });
    let first_send = effects
        .iter()
        .position(|e| matches!(e, Effect::Send { .. }));
    assert!(
        write.unwrap() < first_send.unwrap(),
        "ABORT is written before any Abort"
    );
    assert_eq!(sends(&effects), [("A".into(), "abort")], "parents first");
    let next = m.acknowledged(&name("A"));
    assert_eq!(sends(&next), [("B".into(), "abort"), ("C".into(), "abort")]);
}

#[test]
fn silence_until_the_deadline_decides_abort_naming_the_silent() {
    let mut m = machine(TxState::Preparing);
    m.vote(&name("A"), prepared());
    m.deadline();
    let r = m.record();
    assert_eq!(r.state, TxState::Aborting);
    assert_eq!(
        r.reason,
        "no answer from B, C within the prepare timeout of 15s"
    );
    assert_eq!(r.participant(&name("B")).unwrap().vote, Vote::NoAnswer);
    assert_eq!(r.participant(&name("A")).unwrap().vote, Vote::Prepared);
}

#[test]
fn a_transient_prepare_failure_is_asked_again_and_a_final_one_is_a_refusal() {
    let mut m = machine(TxState::Preparing);
    let again = m.vote(
        &name("B"),
        Err(Failure::Transient("Unavailable: connection refused".into())),
    );
    assert_eq!(sends(&again), [("B".into(), "prepare")]);
    assert_eq!(m.record().state, TxState::Preparing);
    m.vote(
        &name("A"),
        Err(Failure::Final("InvalidArgument: version".into())),
    );
    assert_eq!(m.record().state, TxState::Aborting);
    let a = m.record().participant(&name("A")).unwrap();
    assert_eq!(a.vote_reason, "participant error InvalidArgument: version");
}

#[test]
fn commit_goes_in_waves_children_before_parents() {
    let mut m = machine(TxState::Preparing);
    all_prepared(&mut m);
    m.commit_durable(1);
    assert!(sends(&ack(&mut m, &["B"])).is_empty(), "A waits for C too");
    assert_eq!(sends(&ack(&mut m, &["C"])), [("A".into(), "commit")]);
    let end = ack(&mut m, &["A"]);
    assert!(matches!(end.last(), Some(Effect::Finish { .. })));
    assert_eq!(m.record().state, TxState::Committed);
    assert_eq!(m.record().reason, "live as checkpoint 1");
}

#[test]
fn a_failed_delivery_is_retried_with_capped_backoff_until_acknowledged() {
    let mut m = machine(TxState::Preparing);
    all_prepared(&mut m);
    m.commit_durable(1);
    let mut delays = Vec::new();
    for _ in 0..12 {
        let effects = m.delivery_failed(&name("B"), Failure::Transient("Unavailable: down".into()));
        let Some(Effect::Send { after, order }) = effects.last() else {
            panic!("a failed delivery is sent again: {effects:?}");
        };
        assert_eq!(order.project, name("B"));
        delays.push(*after);
    }
    assert!(
        delays.windows(2).take(5).all(|w| w[1] > w[0]),
        "grows: {delays:?}"
    );
    assert!(
        delays.iter().all(|d| *d <= Backoff::default().max),
        "capped: {delays:?}"
    );
    assert_eq!(m.record().state, TxState::Committing, "never gives up");
    assert!(sends(&ack(&mut m, &["B", "C"])).contains(&("A".into(), "commit")));
}

#[test]
fn a_delivery_error_is_noted_once_per_new_error_and_cleared_by_the_ack() {
    let mut m = machine(TxState::Preparing);
    all_prepared(&mut m);
    m.commit_durable(1);
    let down = || Failure::Transient("Unavailable: down".into());
    let first = m.delivery_failed(&name("B"), down());
    let second = m.delivery_failed(&name("B"), down());
    assert_eq!(event_kinds(&first), [pb::EventKind::DeliveryRetry]);
    assert!(
        event_kinds(&second).is_empty(),
        "the same error is not logged again"
    );
    assert_eq!(
        m.record().participant(&name("B")).unwrap().delivery_error,
        "Unavailable: down"
    );
    m.acknowledged(&name("B"));
    assert_eq!(
        m.record().participant(&name("B")).unwrap().delivery_error,
        ""
    );
}

#[test]
fn an_undecided_transaction_restarted_is_aborted_and_every_participant_told() {
    let mut m = machine(TxState::Preparing);
    let effects = m.restarted();
    assert_eq!(m.record().state, TxState::Aborting);
    assert_eq!(m.record().reason, PRESUMED_ABORT);
    assert_eq!(
        event_kinds(&effects),
        [pb::EventKind::Recovered, pb::EventKind::DecidedAbort]
    );
    assert_eq!(sends(&effects), [("A".into(), "abort")]);
}

#[test]
fn a_queued_transaction_restarted_aborts_without_telling_anyone() {
    let mut m = machine(TxState::Pending);
    let effects = m.restarted();
    assert!(sends(&effects).is_empty(), "Prepare never went out");
    assert!(matches!(effects.last(), Some(Effect::Finish { .. })));
    assert_eq!(m.record().state, TxState::Aborted);
}

#[test]
fn a_decided_transaction_restarted_resumes_phase2_and_is_never_decided_again() {
    let mut record = t4(TxState::Committing);
    record.checkpoint = 5;
    for p in &mut record.participants {
        p.vote = Vote::Prepared;
    }
    record.participants[1].acknowledged = true; // B
    let mut m = Transaction::new(record, Backoff::default());
    let effects = m.restarted();
    assert_eq!(m.record().state, TxState::Committing);
    assert_eq!(
        sends(&effects),
        [("C".into(), "commit")],
        "only who has not acknowledged"
    );
    assert!(m.abort_requested("too late".into(), "").is_empty());
    assert!(m.deadline().is_empty());
    assert!(
        m.vote(&name("A"), Ok(VoteAnswer::Refused("late".into())))
            .is_empty()
    );
    assert_eq!(m.record().state, TxState::Committing);
}

#[test]
fn a_queued_transaction_refused_at_its_turn_aborts_without_telling_anyone() {
    let mut m = machine(TxState::Pending);
    let effects = m.start(Turn::Refused(
        "while it was queued the state changed".into(),
    ));
    assert!(sends(&effects).is_empty());
    assert_eq!(m.record().state, TxState::Aborted);
    assert_eq!(
        event_kinds(&effects),
        [
            pb::EventKind::DecidedAbort,
            pb::EventKind::TransactionAborted
        ]
    );
}

#[test]
fn an_abort_request_aborts_only_an_undecided_transaction() {
    let mut m = machine(TxState::Preparing);
    let effects = m.abort_requested("release driver cancelled".into(), "alice");
    assert_eq!(
        m.record().reason,
        "aborted on request: release driver cancelled"
    );
    assert_eq!(sends(&effects), [("A".into(), "abort")]);
    let actors: Vec<&str> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Write { events, .. } => Some(events),
            _ => None,
        })
        .flatten()
        .map(|e| e.actor.as_str())
        .collect();
    assert_eq!(actors, ["alice"], "the decision names who asked");
    let mut decided = machine(TxState::Preparing);
    all_prepared(&mut decided);
    assert!(decided.abort_requested("too late".into(), "").is_empty());
    assert_eq!(decided.record().state, TxState::Committing);
}

#[test]
fn late_and_duplicate_answers_change_nothing() {
    let mut m = machine(TxState::Preparing);
    m.vote(&name("A"), prepared());
    assert!(
        m.vote(&name("A"), Ok(VoteAnswer::Refused("again".into())))
            .is_empty()
    );
    all_prepared(&mut m);
    m.commit_durable(1);
    assert!(m.commit_durable(2).is_empty(), "decided once");
    assert!(
        m.acknowledged(&name("A")).is_empty(),
        "A's wave has not been sent yet"
    );
    ack(&mut m, &["B"]);
    assert!(m.acknowledged(&name("B")).is_empty());
    assert_eq!(m.record().checkpoint, 1);
}

#[test]
fn a_parent_asking_hears_commit_only_after_its_children_acknowledged() {
    let mut m = machine(TxState::Preparing);
    all_prepared(&mut m);
    let asks = |m: &Transaction, p: &str| decision_for(m.record(), Asker::project(&name(p)));
    assert_eq!(asks(&m, "B"), Decision::Commit, "a child hears it at once");
    assert_eq!(
        asks(&m, "A"),
        Decision::Undecided,
        "B and C have not acknowledged"
    );
    m.commit_durable(1);
    ack(&mut m, &["B"]);
    assert_eq!(asks(&m, "A"), Decision::Undecided, "C has not acknowledged");
    ack(&mut m, &["C"]);
    assert_eq!(asks(&m, "A"), Decision::Commit);
    assert_eq!(decision_for(m.record(), Asker::default()), Decision::Commit);
}

#[test]
fn a_child_asking_hears_abort_only_after_its_parents_undid() {
    let mut m = machine(TxState::Preparing);
    m.vote(&name("C"), Ok(VoteAnswer::Refused("no".into())));
    let asks = |m: &Transaction, p: &str| decision_for(m.record(), Asker::project(&name(p)));
    assert_eq!(asks(&m, "A"), Decision::Abort, "the parent undoes first");
    assert_eq!(asks(&m, "B"), Decision::Undecided);
    ack(&mut m, &["A"]);
    assert_eq!(asks(&m, "B"), Decision::Abort);
}

#[test]
fn nothing_is_delivered_between_the_commit_decision_and_its_durability() {
    // Found by the property test: a delivery failure (or an acknowledgement) reported
    // before the decision is durable used to send a Commit at once.
    let mut m = machine(TxState::Preparing);
    all_prepared(&mut m);
    let early = m.delivery_failed(&name("B"), Failure::Transient("down".into()));
    assert!(sends(&early).is_empty(), "{early:?}");
    assert!(m.acknowledged(&name("B")).is_empty());
    assert_eq!(sends(&m.commit_durable(1)).len(), 2);
}

fn resolution(committed: bool) -> crate::model::Resolution {
    crate::model::Resolution {
        committed,
        actor: "alice".into(),
        reason: "host rebuilt".into(),
        status: "FailedPrecondition: never prepared here".into(),
    }
}

/// T4 committed and durable, B answered its Commit with something final.
fn b_needs_resolution() -> (Transaction, Vec<Effect>) {
    let mut m = machine(TxState::Preparing);
    all_prepared(&mut m);
    m.commit_durable(1);
    let never = Failure::Final("FailedPrecondition: never prepared here".into());
    let effects = m.delivery_failed(&name("B"), never);
    (m, effects)
}

#[test]
fn a_final_answer_in_phase_2_stops_the_retries_and_needs_resolution() {
    let (m, effects) = b_needs_resolution();
    assert_eq!(event_kinds(&effects), [pb::EventKind::NeedsResolution]);
    assert!(sends(&effects).is_empty(), "no blind retry");
    let b = m.record().participant(&name("B")).unwrap();
    assert!(b.needs_resolution && !b.acknowledged);
    assert_eq!(m.record().state, TxState::Committing);
}

#[test]
fn a_person_resolves_only_the_decided_outcome_for_a_participant_that_failed() {
    let (mut m, _) = b_needs_resolution();
    let wrong = m.resolve(&name("B"), resolution(false)).unwrap_err();
    assert!(
        wrong.contains("can only be resolved as committed"),
        "{wrong}"
    );
    let answers = m.resolve(&name("C"), resolution(true)).unwrap_err();
    assert!(answers.contains("answers normally"), "{answers}");
    let later = m.resolve(&name("A"), resolution(true)).unwrap_err();
    assert!(later.contains("not being delivered to yet"), "{later}");

    let effects = m.resolve(&name("B"), resolution(true)).unwrap();
    assert_eq!(event_kinds(&effects), [pb::EventKind::Resolved]);
    assert!(sends(&effects).is_empty(), "C has not acknowledged yet");
    let next = ack(&mut m, &["C"]);
    assert_eq!(sends(&next), [("A".into(), "commit")], "then the parents");
    let b = m.record().participant(&name("B")).unwrap();
    assert_eq!(b.resolution, Some(resolution(true)));
}

/// Since stop 58 the request is written durably before the driver goes on (and so
/// before RetryDelivery answers): the caller is told it was recorded, with who asked,
/// and a crash right after the answer must not lose that from the audit trail.
#[test]
fn a_retry_asked_for_sends_again_to_who_needs_resolution_and_ends_the_waits() {
    let (mut m, _) = b_needs_resolution();
    let effects = m.retry_now("bob");
    assert_eq!(event_kinds(&effects), [pb::EventKind::RetryRequested]);
    let Effect::Write { show, record, .. } = &effects[0] else {
        panic!("the request is written first: {effects:?}");
    };
    assert_eq!(*show, Show::WhenDurable, "durable before anything else");
    let b = record.participant(&name("B")).unwrap();
    assert!(
        !b.needs_resolution,
        "the record written is the one the retry left"
    );
    assert!(effects.contains(&Effect::Hurry));
    assert_eq!(sends(&effects), [("B".into(), "commit")]);
    assert!(!m.record().participant(&name("B")).unwrap().needs_resolution);
    let undecided = machine(TxState::Preparing).retry_now("bob");
    assert!(undecided.is_empty(), "nothing to retry before a decision");
}

#[test]
fn an_asker_that_is_not_in_the_transaction_under_its_id_hears_abort_whatever_was_decided() {
    let mut m = machine(TxState::Preparing);
    all_prepared(&mut m);
    m.commit_durable(1);
    ack(&mut m, &["A", "B", "C"]);
    let other = name("D");
    assert_eq!(
        decision_for(m.record(), Asker::project(&other)),
        Decision::Abort
    );
    let elsewhere = lockstep::names::Environment::parse("e", "elsewhere").unwrap();
    let asker = Asker {
        project: Some(&name("A")),
        environment: Some(&elsewhere),
    };
    assert_eq!(decision_for(m.record(), asker), Decision::Abort);
    let home = m.record().environment.clone();
    let asker = Asker {
        environment: Some(&home),
        ..asker
    };
    assert_eq!(decision_for(m.record(), asker), Decision::Commit);
}
