//! The events a transaction's steps write to the one ordered log, with their words.
//! The log's record is the wire `Event` (what watchers receive, stored as is); the
//! journal fills in its sequence number and time. Kept apart from the state machine so
//! that [`super::Transaction`] reads as protocol steps, not message formatting.

use lockstep::{names::ProjectName, pb};

use crate::{
    convert,
    model::{Resolution, TxRecord, Vote},
};

/// An event about `tx` in its current state.
pub fn event(
    tx: &TxRecord,
    kind: pb::EventKind,
    project: Option<&ProjectName>,
    message: String,
) -> pb::Event {
    pb::Event {
        kind: kind as i32,
        transaction_id: tx.id.to_string(),
        environment: tx.environment.to_string(),
        project: project.map(|p| p.to_string()).unwrap_or_default(),
        state: convert::state(tx.state) as i32,
        message,
        revision: 0,
        ticket: tx.ticket.clone(),
        trace_parent: tx.trace_parent.clone(),
        ..Default::default()
    }
}

/// The project whose refusal (or silence) aborted `tx`, if one did: the "repo where the
/// issue appeared" that failure notifications are routed to.
fn culprit(tx: &TxRecord) -> Option<&ProjectName> {
    let failed = |p: &&crate::model::Participant| matches!(p.vote, Vote::Refused | Vote::NoAnswer);
    tx.participants.iter().find(failed).map(|p| &p.project)
}

/// Phase 1 started: Prepare goes to every participant.
pub fn prepare_started(tx: &TxRecord) -> pb::Event {
    event(tx, pb::EventKind::PrepareStarted, None, tx.reason.clone())
}

/// A participant's vote (PREPARED or REFUSED, with its reason).
pub fn vote_received(tx: &TxRecord, project: &ProjectName, vote: Vote, reason: &str) -> pb::Event {
    let to = tx.participant(project).map(|p| p.to_version.as_str());
    let to = to.unwrap_or_default();
    let message = match vote {
        Vote::Prepared => format!("{project} prepared {to}"),
        _ => format!("{project} refused {to}: {reason}"),
    };
    with_vote(
        event(tx, pb::EventKind::VoteReceived, Some(project), message),
        vote,
    )
}

/// A participant that did not answer before the phase 1 deadline.
pub fn no_answer(tx: &TxRecord, project: &ProjectName) -> pb::Event {
    let message = format!("{project}: no answer before the deadline");
    with_vote(
        event(tx, pb::EventKind::VoteReceived, Some(project), message),
        Vote::NoAnswer,
    )
}

fn with_vote(mut e: pb::Event, vote: Vote) -> pb::Event {
    e.vote = convert::vote(vote) as i32;
    e
}

/// The decision, with the reason the record carries.
pub fn decided(tx: &TxRecord, commit: bool) -> pb::Event {
    let kind = if commit {
        pb::EventKind::DecidedCommit
    } else {
        pb::EventKind::DecidedAbort
    };
    let project = if commit { None } else { culprit(tx) };
    event(tx, kind, project, tx.reason.clone())
}

/// A participant acknowledged the decision.
pub fn acknowledged(tx: &TxRecord, project: &ProjectName, commit: bool) -> pb::Event {
    let p = tx.participant(project);
    let message = if commit {
        let to = p.map(|p| p.to_version.as_str()).unwrap_or_default();
        format!("{project} is live at {to}")
    } else {
        let from = p.and_then(|p| p.from_version.as_ref());
        let from = from.map(|v| v.as_str()).unwrap_or("(nothing live)");
        format!("{project} restored {from}")
    };
    event(tx, pb::EventKind::Acknowledged, Some(project), message)
}

/// A phase 2 delivery failed and is being retried.
pub fn delivery_retry(tx: &TxRecord, project: &ProjectName, error: &str) -> pb::Event {
    let kind = if tx.state == crate::model::TxState::Committing {
        "Commit"
    } else {
        "Abort"
    };
    let message = format!("{kind} to {project} failed, retrying with backoff: {error}");
    event(tx, pb::EventKind::DeliveryRetry, Some(project), message)
}

/// A participant answered the decision with something retrying cannot fix.
pub fn needs_resolution(tx: &TxRecord, project: &ProjectName, answer: &str) -> pb::Event {
    let message = format!(
        "{project} needs resolution: it answered {answer}; `lockstep resolve {} --participant {project}` once you know what it did",
        tx.id
    );
    event(tx, pb::EventKind::NeedsResolution, Some(project), message)
}

/// A person resolved a participant by hand.
pub fn resolved(tx: &TxRecord, project: &ProjectName, resolution: &Resolution) -> pb::Event {
    let message = format!("{project} {}", resolution.describe());
    let mut e = event(tx, pb::EventKind::Resolved, Some(project), message);
    e.actor = resolution.actor.clone();
    e
}

/// A person asked for every phase 2 delivery to be retried now.
pub fn retry_requested(tx: &TxRecord, actor: &str) -> pb::Event {
    let message = format!("{actor} asked to retry every delivery now");
    let mut e = event(tx, pb::EventKind::RetryRequested, None, message);
    e.actor = actor.to_string();
    e
}

/// A restart found the transaction unfinished.
pub fn recovered(tx: &TxRecord, message: String) -> pb::Event {
    event(tx, pb::EventKind::Recovered, None, message)
}

/// The terminal event: COMMITTED (with its checkpoint) or ABORTED (with the reason).
pub fn ended(tx: &TxRecord) -> pb::Event {
    if tx.state == crate::model::TxState::Committed {
        let mut e = event(
            tx,
            pb::EventKind::TransactionCommitted,
            None,
            tx.reason.clone(),
        );
        e.revision = tx.checkpoint;
        e
    } else {
        let kind = pb::EventKind::TransactionAborted;
        event(tx, kind, culprit(tx), tx.reason.clone())
    }
}

/// Every participant prepared: verification starts, against what each one staged.
pub fn verify_started(tx: &TxRecord) -> pb::Event {
    let steps: Vec<String> = tx.steps.iter().map(|s| s.step.describe()).collect();
    let message = format!(
        "verifying the staged set ({}) with steps {}",
        staged_set(tx),
        steps.join(", ")
    );
    event(tx, pb::EventKind::VerifyStarted, None, message)
}

/// `B 2.0 at http://127.0.0.1:9301, C 1.1` (the staged versions and test URIs).
fn staged_set(tx: &TxRecord) -> String {
    let part = |p: &crate::model::Participant| match p.test_uri.as_str() {
        "" => format!("{} {}", p.project, p.to_version),
        uri => format!("{} {} at {uri}", p.project, p.to_version),
    };
    let parts: Vec<String> = tx.participants.iter().map(part).collect();
    parts.join(", ")
}

/// Verify step `index` was triggered: its runner or a person is expected now.
pub fn step_triggered(tx: &TxRecord, index: usize) -> pb::Event {
    let step = &tx.steps[index].step;
    let expects = match step.kind {
        crate::model::StepKind::Http { .. } => "the coordinator requests it".to_string(),
        crate::model::StepKind::External => format!(
            "report with `lockstep verify report {} {} --started|--passed|--failed`",
            tx.id, step.name
        ),
        crate::model::StepKind::Approval => {
            format!("`lockstep approve {0}` or `lockstep reject {0}`", tx.id)
        }
    };
    let message = format!(
        "{} triggered against {}: {expects}",
        step.describe(),
        staged_set(tx)
    );
    step_event(tx, index, pb::EventKind::VerifyStepTriggered, message)
}

/// A runner reported verify step `index` started.
pub fn step_started(tx: &TxRecord, index: usize) -> pb::Event {
    let run = &tx.steps[index];
    let mut message = format!("{} started", run.step.name);
    if !run.link.is_empty() {
        message.push_str(&format!(" ({})", run.link));
    }
    step_event(tx, index, pb::EventKind::VerifyStepStarted, message)
}

/// Verify step `index` passed or failed: `NAME passed` or `NAME failed[: reason][
/// (link)]` (the metrics read the outcome from this message: keep its start).
pub fn step_finished(tx: &TxRecord, index: usize) -> pb::Event {
    let run = &tx.steps[index];
    let outcome = match run.status {
        crate::model::StepStatus::Passed => "passed",
        _ => "failed",
    };
    let mut message = format!("{} {outcome}", run.step.name);
    if !run.reason.is_empty() {
        message.push_str(&format!(": {}", run.reason));
    }
    if !run.link.is_empty() {
        message.push_str(&format!(" ({})", run.link));
    }
    step_event(tx, index, pb::EventKind::VerifyStepFinished, message)
}

fn step_event(tx: &TxRecord, index: usize, kind: pb::EventKind, message: String) -> pb::Event {
    let run = &tx.steps[index];
    let mut e = event(tx, kind, None, message);
    e.step = run.step.name.clone();
    e.actor = run.actor.clone();
    e
}

/// `1 vote`, `3 votes`.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `15s` or `1500ms`.
pub fn humanize(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
