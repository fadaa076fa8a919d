//! Two-phase commit of one transaction, top to bottom. Each unfinished transaction has
//! one driver task running [`run`]; it alone changes its transaction's protocol state.
//!
//! The rules it keeps (PRODUCT.md, "Protocol rules"):
//! 1. Phase 1 sends Prepare to every participant in parallel with one deadline; any
//!    refusal, error or missing answer by the deadline decides ABORT.
//! 2. COMMIT is decided only when every participant voted PREPARED, and is written with
//!    fsync (together with the checkpoint it produces) before any Commit is sent.
//! 3. Presumed abort: a transaction with no durable decision at a restart is aborted
//!    (see `recovery.rs`).
//! 4. Phase 2 delivers the decision in dependency waves, children first for COMMIT and in
//!    reverse for ABORT, retrying each delivery with capped exponential backoff until it
//!    is acknowledged. Deliveries are idempotent on the participant side, so retries and
//!    restarts may repeat them.
//! 5. Every state change is an event in the one ordered log (the journal).

use std::time::Duration;

use futures::{StreamExt, stream::FuturesUnordered};
use lockstep::{
    names::ProjectName,
    pb::{self, participant_client::ParticipantClient},
};
use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};
use tonic::{Code, transport::Channel};

use crate::{
    convert,
    coordinator::Coordinator,
    crash,
    model::{Participant, Schema, TxRecord, TxState, Vote},
};

/// What the queue tells a waiting driver when its turn comes.
pub enum Start {
    /// Go, with participants re-planned against the live state (empty: keep the plan).
    Go(Vec<Participant>),
    /// The transaction can no longer run as planned (the reason is recorded).
    Refuse(String),
}

/// The signals a driver listens to besides the network.
pub struct Signals {
    /// Fired when the queue gives the transaction its projects.
    pub start: oneshot::Receiver<Start>,
    /// Set when AbortRelease asks to abort an undecided transaction.
    pub abort: watch::Receiver<Option<String>>,
}

/// The outcome of phase 1.
enum Outcome {
    Commit,
    Abort(String),
}

/// Drives `tx` from wherever it is to COMMITTED or ABORTED.
pub async fn run(c: Coordinator, mut tx: TxRecord, mut signals: Signals) {
    if let Err(e) = drive(&c, &mut tx, &mut signals).await {
        // Only a journal failure ends a driver early; the process then stops and
        // recovery resumes the transaction from what is durable.
        tracing::error!(tx = %tx.id, "driver stopped: {e}");
    }
}

async fn drive(
    c: &Coordinator,
    tx: &mut TxRecord,
    signals: &mut Signals,
) -> crate::error::Result<()> {
    if tx.state == TxState::Pending {
        match wait_for_turn(signals).await {
            Start::Go(participants) => {
                if !participants.is_empty() {
                    tx.participants = participants;
                }
            }
            Start::Refuse(reason) => return abort_unprepared(c, tx, reason).await,
        }
        // Phase 1 starts. Written (so that recovery sends Abort to every participant)
        // but not awaited: presumed abort covers a crash before it is durable.
        let started = start_preparing(tx);
        append_quietly(c, tx, vec![started], Shown::Record);
    }
    if tx.state == TxState::Preparing {
        tracing::debug!(tx = %tx.id, "phase 1: Prepare sent");
        let outcome = prepare_all(c, tx, signals).await;
        tracing::debug!(tx = %tx.id, "phase 1: votes in");
        crash::point(crash::BEFORE_DECISION);
        match outcome {
            Outcome::Commit => {
                c.decide_commit(tx, Vec::new()).await?;
                tracing::debug!(tx = %tx.id, "COMMIT durable");
                crash::point(crash::AFTER_COMMIT_DECISION);
            }
            Outcome::Abort(reason) => decide_abort(c, tx, reason).await?,
        }
    }
    deliver_decision(c, tx).await?;
    tracing::debug!(tx = %tx.id, "phase 2: every participant acknowledged");
    finish(c, tx).await?;
    tracing::debug!(tx = %tx.id, "terminal state durable");
    Ok(())
}

/// Moves `tx` into phase 1 and returns the event saying so.
pub fn start_preparing(tx: &mut TxRecord) -> pb::Event {
    tx.state = TxState::Preparing;
    tx.prepare_sent = true;
    tx.reason = format!("waiting for {}", plural(tx.participants.len(), "vote"));
    event(tx, pb::EventKind::PrepareStarted, None, tx.reason.clone())
}

/// Waits until the queue lets the transaction run, or until it is aborted while queued.
async fn wait_for_turn(signals: &mut Signals) -> Start {
    let abort = &mut signals.abort;
    tokio::select! {
        start = &mut signals.start => start.unwrap_or(Start::Refuse("coordinator shutting down".into())),
        reason = aborted(abort) => Start::Refuse(reason),
    }
}

/// Resolves with the reason once an abort is requested.
async fn aborted(abort: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(reason) = abort.borrow_and_update().clone() {
            return reason;
        }
        if abort.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Aborts a transaction that never sent Prepare: no participant to tell.
async fn abort_unprepared(
    c: &Coordinator,
    tx: &mut TxRecord,
    reason: String,
) -> crate::error::Result<()> {
    tx.state = TxState::Aborting;
    tx.reason = reason;
    let decided = event(tx, pb::EventKind::DecidedAbort, None, tx.reason.clone());
    persist(c, tx, vec![decided]).await?;
    finish(c, tx).await
}

// ----- phase 1 -----

/// Sends Prepare to every participant at once and collects votes until all said
/// PREPARED, one refused, the deadline passed, or an abort was requested.
async fn prepare_all(c: &Coordinator, tx: &mut TxRecord, signals: &mut Signals) -> Outcome {
    let deadline = Instant::now() + Duration::from_millis(tx.prepare_timeout_ms);
    let mut votes: FuturesUnordered<_> = tx
        .participants
        .iter()
        .map(|p| {
            let call = Call::new(tx, p);
            let request = convert::prepare_request(tx, p);
            prepare_one(c, call, request)
        })
        .collect();
    let abort = &mut signals.abort;
    loop {
        tokio::select! {
            next = votes.next() => {
                let Some((project, answer)) = next else {
                    return Outcome::Commit;
                };
                if let Some(reason) = record_vote(c, tx, &project, answer) {
                    return Outcome::Abort(reason);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Outcome::Abort(no_answer(c, tx));
            }
            reason = aborted(abort) => {
                return Outcome::Abort(format!("aborted on request: {reason}"));
            }
        }
    }
}

/// A participant's answer to Prepare.
type Answer = Result<pb::PrepareResponse, String>;

/// Calls Prepare on one participant, retrying transport failures (Prepare is
/// idempotent) until it answers. The phase 1 deadline in [`prepare_all`] cuts it short.
async fn prepare_one(
    c: &Coordinator,
    to: Call,
    request: pb::PrepareRequest,
) -> (ProjectName, Answer) {
    let mut attempt = 0;
    let answer = loop {
        let call = async {
            let _permit = c.call_permit().await;
            let mut client = client(c, &to.endpoint)?;
            client
                .prepare(request.clone())
                .await
                .map_err(|s| (s.code(), s.message().to_string()))
        };
        match call.await {
            Ok(response) => break Ok(response.into_inner()),
            Err((code, message)) if retryable(code) => {
                tracing::debug!(tx = %to.tx, project = %to.project, "prepare failed, retrying: {message}");
                tokio::time::sleep(c.config().backoff.delay(attempt, to.tx.as_str())).await;
                attempt += 1;
            }
            Err((code, message)) => break Err(format!("participant error {code:?}: {message}")),
        }
    };
    (to.project, answer)
}

/// Records a vote (visible at once, durable with the decision that follows). Returns
/// the abort reason when the vote is not PREPARED.
fn record_vote(
    c: &Coordinator,
    tx: &mut TxRecord,
    project: &ProjectName,
    answer: Answer,
) -> Option<String> {
    let (vote, reason, response) = match answer {
        Ok(r) if r.vote == pb::Vote::Prepared as i32 => (Vote::Prepared, String::new(), Some(r)),
        Ok(r) => (
            Vote::Refused,
            non_empty(&r.reason, "refused without a reason"),
            Some(r),
        ),
        Err(e) => (Vote::Refused, e, None),
    };
    let p = tx
        .participant_mut(project)
        .expect("votes come only from participants");
    p.vote = vote;
    p.vote_reason = reason.clone();
    if let Some(r) = response {
        p.from_schema = r.from_schema.map(|s| Schema {
            version: s.version,
            name: s.name,
        });
        p.to_schema = r.to_schema.map(|s| Schema {
            version: s.version,
            name: s.name,
        });
        p.migrations = r.migrations;
    }
    let message = match vote {
        Vote::Prepared => format!("{project} prepared {}", p.to_version),
        _ => format!("{project} refused {}: {reason}", p.to_version),
    };
    let mut voted = event(tx, pb::EventKind::VoteReceived, Some(project), message);
    voted.vote = convert::vote(vote) as i32;
    append_quietly(c, tx, vec![voted], Shown::Participants(&[project]));
    (vote != Vote::Prepared).then(|| format!("{project} refused: {reason}"))
}

/// Marks every participant without a vote as NO_ANSWER; returns the abort reason.
fn no_answer(c: &Coordinator, tx: &mut TxRecord) -> String {
    let mut silent: Vec<ProjectName> = Vec::new();
    for p in tx.participants.iter_mut().filter(|p| p.vote == Vote::None) {
        p.vote = Vote::NoAnswer;
        p.vote_reason = format!("no answer within {}", humanize(tx.prepare_timeout_ms));
        silent.push(p.project.clone());
    }
    let names: Vec<&str> = silent.iter().map(|p| p.as_str()).collect();
    let reason = format!(
        "no answer from {} within the prepare timeout of {}",
        names.join(", "),
        humanize(tx.prepare_timeout_ms)
    );
    let events = silent
        .iter()
        .map(|project| {
            let mut e = event(
                tx,
                pb::EventKind::VoteReceived,
                Some(project),
                format!("{project}: no answer before the deadline"),
            );
            e.vote = pb::Vote::NoAnswer as i32;
            e
        })
        .collect();
    let silent: Vec<&ProjectName> = silent.iter().collect();
    append_quietly(c, tx, events, Shown::Participants(&silent));
    reason
}

/// Decides ABORT. Under presumed abort this need not be durable before the Aborts go
/// out; it is awaited anyway so that readers only ever see durable state.
async fn decide_abort(
    c: &Coordinator,
    tx: &mut TxRecord,
    reason: String,
) -> crate::error::Result<()> {
    tx.state = TxState::Aborting;
    tx.reason = reason;
    let decided = event(tx, pb::EventKind::DecidedAbort, None, tx.reason.clone());
    persist(c, tx, vec![decided]).await
}

// ----- phase 2 -----

/// Delivers the decision wave by wave until every participant acknowledged it.
async fn deliver_decision(c: &Coordinator, tx: &mut TxRecord) -> crate::error::Result<()> {
    let commit = tx.state == TxState::Committing;
    if !commit && !tx.prepare_sent {
        return Ok(());
    }
    let mut waves = tx.waves.clone();
    if !commit {
        // Undo goes in reverse order: parents first.
        waves.reverse();
    }
    for wave in waves {
        let mut pending: FuturesUnordered<_> = tx
            .participants
            .iter()
            .filter(|p| wave.contains(&p.project) && !p.acknowledged)
            .map(|p| {
                let decision = if commit {
                    Decision::Commit(convert::commit_request(tx, p))
                } else {
                    Decision::Abort(convert::abort_request(tx, p))
                };
                deliver_one(c, Call::new(tx, p), decision)
            })
            .collect();
        while let Some(project) = pending.next().await {
            acknowledge(c, tx, &project, commit).await?;
        }
    }
    Ok(())
}

/// The decision message for one participant.
enum Decision {
    Commit(pb::CommitRequest),
    Abort(pb::AbortRequest),
}

/// Whom a call goes to (owned, so calls run while the driver updates its record).
struct Call {
    tx: lockstep::names::TxId,
    project: ProjectName,
    endpoint: String,
}

impl Call {
    fn new(tx: &TxRecord, p: &Participant) -> Self {
        Self {
            tx: tx.id.clone(),
            project: p.project.clone(),
            endpoint: p.endpoint.clone(),
        }
    }
}

/// Sends Commit or Abort to one participant until it acknowledges.
async fn deliver_one(c: &Coordinator, to: Call, decision: Decision) -> ProjectName {
    let mut attempt = 0u32;
    let mut last_error = String::new();
    loop {
        let permit = c.call_permit().await;
        let call = async {
            let _permit = permit;
            let mut client = client(c, &to.endpoint)?;
            let result = match &decision {
                Decision::Commit(r) => client.commit(r.clone()).await.map(|_| ()),
                Decision::Abort(r) => client.abort(r.clone()).await.map(|_| ()),
            };
            result.map_err(|s| (s.code(), s.message().to_string()))
        };
        let error = match tokio::time::timeout(c.config().delivery_timeout, call).await {
            Ok(Ok(())) => return to.project,
            Ok(Err((code, message))) => format!("{code:?}: {message}"),
            Err(_) => format!("no answer within {:?}", c.config().delivery_timeout),
        };
        if error != last_error {
            // Logged when the error changes, not on every retry, so a participant that is
            // down for a day does not flood the log.
            let kind = if matches!(decision, Decision::Commit(_)) {
                "Commit"
            } else {
                "Abort"
            };
            let message = format!(
                "{kind} to {} failed, retrying with backoff: {error}",
                to.project
            );
            tracing::warn!(tx = %to.tx, "{message}");
            c.delivery_failed(&to.tx, &to.project, &error, message);
            last_error = error;
        }
        tokio::time::sleep(c.config().backoff.delay(attempt, to.tx.as_str())).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Records an acknowledgement durably.
async fn acknowledge(
    c: &Coordinator,
    tx: &mut TxRecord,
    project: &ProjectName,
    commit: bool,
) -> crate::error::Result<()> {
    let first = !tx.participants.iter().any(|p| p.acknowledged);
    let p = tx
        .participant_mut(project)
        .expect("acks come only from participants");
    p.acknowledged = true;
    p.delivery_error.clear();
    let message = if commit {
        format!("{project} is live at {}", p.to_version)
    } else {
        format!(
            "{project} restored {}",
            p.from_version
                .as_ref()
                .map(|v| v.as_str())
                .unwrap_or("(nothing live)")
        )
    };
    let acked = event(tx, pb::EventKind::Acknowledged, Some(project), message);
    // Not awaited: the terminal record written (and awaited) after the last wave covers
    // every acknowledgement, and an acknowledgement lost in a crash only means the
    // decision is delivered again, which participants answer idempotently.
    append_quietly(c, tx, vec![acked], Shown::Participants(&[project]));
    if commit && first {
        crash::point(crash::AFTER_FIRST_COMMIT_ACK);
    }
    Ok(())
}

/// Writes the terminal state and hands the projects to the next transactions.
async fn finish(c: &Coordinator, tx: &mut TxRecord) -> crate::error::Result<()> {
    let committed = tx.state == TxState::Committing;
    tx.state = if committed {
        TxState::Committed
    } else {
        TxState::Aborted
    };
    tx.finished_ms = c.now();
    let mut done = if committed {
        let mut e = event(
            tx,
            pb::EventKind::TransactionCommitted,
            None,
            format!("checkpoint {} is live", tx.checkpoint),
        );
        e.revision = tx.checkpoint;
        e
    } else {
        event(
            tx,
            pb::EventKind::TransactionAborted,
            None,
            tx.reason.clone(),
        )
    };
    if committed {
        tx.reason = format!("live as checkpoint {}", tx.checkpoint);
        done.message = tx.reason.clone();
    }
    c.finish(tx, vec![done]).await
}

// ----- helpers -----

/// Writes the transaction and `events` durably, then shows them to readers.
async fn persist(
    c: &Coordinator,
    tx: &TxRecord,
    events: Vec<pb::Event>,
) -> crate::error::Result<()> {
    let mut batch = lockstep_store::Batch::default();
    crate::tables::Tables::put_transaction(&mut batch, tx);
    // ABORT and other steps need no fsync of their own (presumed abort): durable with
    // the next sync, awaited so that readers only ever see durable state.
    c.journal()
        .append(batch, events, crate::journal::Durable::Soon)
        .await?;
    c.publish(tx);
    Ok(())
}

/// What an [`append_quietly`] changed in the transaction.
enum Shown<'a> {
    /// The record itself (written with the events at once, and shown whole): a step
    /// recovery should know of (phase 1 started, so Aborts go to every participant).
    Record,
    /// Only these participants (votes, acknowledgements): the events are held until
    /// the next write of the journal (see `Journal::append_quietly`), which carries the
    /// record, and only these participants are copied to what readers see.
    Participants(&'a [&'a ProjectName]),
}

/// Appends without waiting for durability: progress that a later awaited write of the
/// same transaction covers (the journal writes in order) and that a crash may lose
/// harmlessly (votes, the start of phase 1, acknowledgements). Never a decision.
/// Shown to readers at once.
fn append_quietly(c: &Coordinator, tx: &TxRecord, events: Vec<pb::Event>, shown: Shown<'_>) {
    match shown {
        Shown::Record => {
            let mut batch = lockstep_store::Batch::default();
            crate::tables::Tables::put_transaction(&mut batch, tx);
            drop(
                c.journal()
                    .append(batch, events, crate::journal::Durable::Soon),
            );
            c.publish(tx);
        }
        Shown::Participants(projects) => {
            c.journal()
                .append_quietly(lockstep_store::Batch::default(), events);
            c.publish_participants(tx, projects);
        }
    }
}

fn client(c: &Coordinator, endpoint: &str) -> Result<ParticipantClient<Channel>, (Code, String)> {
    c.net()
        .client(endpoint)
        .map_err(|e| (Code::InvalidArgument, e))
}

/// Transport-level failures worth retrying; anything else is the participant's answer.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::ResourceExhausted
    )
}

fn non_empty(s: &str, default: &str) -> String {
    if s.is_empty() {
        default.to_string()
    } else {
        s.to_string()
    }
}

/// `1 vote`, `3 votes`.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn humanize(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// An event about `tx` (its `seq` and `time` are set by the journal).
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
        ..Default::default()
    }
}
