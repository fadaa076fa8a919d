//! The invariant checker, run over what a finished run left behind (after faults
//! healed): the coordinator's durable records, each participant's ledger and live
//! version (and, in simulation, every change it made to what is live), and what the
//! clients were told. It works on wire types, so the same rules judge a simulated
//! cluster and real processes.
//!
//! Rules (each violation names one):
//! - `tc-consistent`: no transaction committed at one participant and aborted at another.
//! - `agreement`: participants' outcomes match the coordinator's durable decision.
//! - `validity`: COMMITTED only if every participant voted PREPARED.
//! - `exactly-once`: a committed change is applied once where it changes something, an
//!   aborted one never.
//! - `live-as-staged` (simulation only): what an agent makes live is the version it
//!   staged for that transaction (since stop 58).
//! - `durability`: what a client was told (accepted, committed, aborted) is what stayed.
//! - `no-regression`: each participant's live version moves exactly along the committed
//!   checkpoints, in order (a state left is re-entered only by a checkpoint doing so:
//!   revert, rollback, forced release).
//! - `termination`: every transaction is terminal, nothing is left staging or prepared.
//! - `live-is-a-checkpoint`: what is live everywhere equals the newest checkpoint.
//! - `event-log`: sequence numbers are 1..N without gaps; per transaction the events
//!   start with its creation, decide at most once, and end with one terminal event that
//!   matches the decision.
//! - `checkpoints`: revisions are 1..N, one per committed transaction.
//! - `wave-order` and `mutual-exclusion` (in `crate::ordering`): children acknowledge
//!   before parents (parents first on ABORT); no project is held by two transactions
//!   at once.
//! - `checkpoint-contents`, `asked-versions`, `revert-target`, `rollback-target` and
//!   `family` (in [`crate::contents`]): what each checkpoint holds, judged from the
//!   requests and the checkpoints before it, and parents live after their children on
//!   the participants' own clock, so a coordinator that records a wrong state and has
//!   every agent agree with it is caught too.
//!
//! The simulation reads the coordinator's store after a crash (once the run has been
//! quiet long enough for every write asked to be durable to be so): the rules judge
//! what survives, not what happened to be written.
//!
//! A participant is one project in one environment (its [`member`] name): rules about
//! what a participant holds, applies or lets go of are per member; checkpoint revisions
//! count per environment.
//! - `resolution-after-data-loss`: a participant needs resolution only if its agent lost
//!   its data directory. Such a transaction may stay in phase 2 until a person resolves
//!   it (exempt, while unfinished, from `termination` and the terminal-event rules, and
//!   its participants from `no-regression` and `live-is-a-checkpoint`), and a project
//!   that lost its ledger may miss records (`agreement`); never may it be split
//!   (`tc-consistent` still holds).

use std::collections::{BTreeMap, BTreeSet};

use lockstep::pb::{self, EventKind, TransactionState as State};
use lockstep_participant::ledger::Phase;

use crate::deployer::Effect;

/// What one participant shows after the run.
#[derive(Debug, Clone, Default)]
pub struct ParticipantView {
    /// Version live now.
    pub live: Option<String>,
    /// The participant's own record of each transaction it saw.
    pub phases: BTreeMap<String, Phase>,
    /// Every change it made to what is live (simulation only; real agents do not log).
    pub effects: Option<Vec<Effect>>,
}

/// What a client was told about one of its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    /// The create call returned the transaction: it must exist.
    Accepted,
    /// The client saw the transaction COMMITTED or ABORTED.
    Outcome(State),
    /// Refused outright (a status); nothing to hold the system to.
    Refused(String),
    /// No answer (timeout, unreachable): either outcome is acceptable, but one.
    Unknown(String),
}

/// One client call and what it was told.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    /// Which client.
    pub client: usize,
    /// `release`, `revert`, `rollback`, `abort`.
    pub op: String,
    /// The transaction id concerned.
    pub tx: String,
    /// What the client was told.
    pub told: Told,
}

/// Everything the checker reads.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Every transaction, as the coordinator recorded it durably.
    pub transactions: Vec<pb::Transaction>,
    /// Every checkpoint, oldest first.
    pub checkpoints: Vec<pb::Checkpoint>,
    /// The whole event log.
    pub events: Vec<pb::Event>,
    /// Each participant by its [`member`] name.
    pub participants: BTreeMap<String, ParticipantView>,
    /// What clients were told.
    pub clients: Vec<ClientRecord>,
    /// Participants ([`member`] names) whose agent lost its data directory (its ledger)
    /// during the run, with when (the clock's milliseconds, as events are stamped):
    /// the records of transactions prepared before then may be missing, and a
    /// transaction they were part of may rightly wait for a person (`needs
    /// resolution`) instead of ending. A transaction whose Prepare started after the
    /// loss must be recorded there as anywhere else.
    pub lost_data: BTreeMap<String, u64>,
    /// What each release asked for, where known: transaction id -> project -> version.
    pub asked: BTreeMap<String, BTreeMap<String, String>>,
    /// Each parent project's children (`requires`), where known.
    pub requires: BTreeMap<String, Vec<String>>,
    /// What could not be read back after the run (each a `run` violation: a rule
    /// judged over a list that failed to read would pass for nothing).
    pub unreadable: Vec<String>,
}

/// A broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule's name.
    pub rule: &'static str,
    /// What broke it.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// The name of `project`'s participant in `environment`: the project's own name in the
/// default environment, `PROJECT-ENVIRONMENT` elsewhere.
pub fn member(environment: &str, project: &str) -> String {
    if environment.is_empty() || environment == lockstep::DEFAULT_ENVIRONMENT {
        project.to_string()
    } else {
        format!("{project}-{environment}")
    }
}

/// The member names of `t`'s participants.
fn members(t: &pb::Transaction) -> impl Iterator<Item = String> + '_ {
    t.participants
        .iter()
        .map(|p| member(&t.environment, &p.project))
}

fn state(t: &pb::Transaction) -> State {
    State::try_from(t.state).unwrap_or(State::Unspecified)
}

/// Checks every rule; an empty result means the run kept them all.
pub fn check(o: &Observation) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut say = |rule: &'static str, detail: String| v.push(Violation { rule, detail });
    let txs: BTreeMap<&str, &pb::Transaction> =
        o.transactions.iter().map(|t| (t.id.as_str(), t)).collect();
    // Whether `who` lost its ledger after `t`'s Prepare started (or may have: a
    // PREPARE_STARTED event lost in a crash leaves only the benefit of the doubt).
    let lost = |who: &str, t: &pb::Transaction| {
        o.lost_data
            .get(who)
            .is_some_and(|wiped| prepare_started(o, &t.id).is_none_or(|at| at <= *wiped))
    };
    let waiting = waiting_for_a_person(o, &mut say);
    // A transaction waiting for a person in phase 2 counts as its decision.
    let state = |t: &pb::Transaction| match (state(t), waiting.contains(t.id.as_str())) {
        (State::Committing, true) => State::Committed,
        (State::Aborting, true) => State::Aborted,
        (s, _) => s,
    };

    // tc-consistent
    let mut outcomes: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
    for (project, p) in &o.participants {
        for (tx, phase) in &p.phases {
            let entry = outcomes.entry(tx.as_str()).or_default();
            match phase {
                Phase::Committed => {
                    entry.0.insert(project.as_str());
                }
                Phase::Aborted => {
                    entry.1.insert(project.as_str());
                }
                _ => {}
            }
        }
    }
    for (tx, (committed, aborted)) in &outcomes {
        if !committed.is_empty() && !aborted.is_empty() {
            say(
                "tc-consistent",
                format!("{tx} committed at {committed:?} and aborted at {aborted:?}"),
            );
        }
    }

    // agreement, validity, termination (coordinator side)
    for t in &o.transactions {
        let s = state(t);
        if !matches!(s, State::Committed | State::Aborted) && !waiting.contains(t.id.as_str()) {
            say("termination", format!("{} is still {s:?}", t.id));
        }
        for part in &t.participants {
            let who = member(&t.environment, &part.project);
            let phase = o.participants.get(&who).and_then(|p| p.phases.get(&t.id));
            match (s, phase) {
                (State::Committed, Some(Phase::Committed)) => {}
                // A project that lost its ledger may miss the record, or hold only what it
                // wrote after the loss: its refusal of a late, duplicated Prepare.
                (State::Committed, None | Some(Phase::Refused)) if lost(&who, t) => {}
                // Waiting for a person: who has not acknowledged may still be prepared.
                (State::Committed, Some(Phase::Prepared))
                    if waiting.contains(t.id.as_str()) && !part.acknowledged => {}
                (State::Committed, other) => say(
                    "agreement",
                    format!("{} is COMMITTED but {who} has {other:?}", t.id),
                ),
                (State::Aborted, Some(Phase::Committed)) => say(
                    "agreement",
                    format!("{} is ABORTED but {who} committed it", t.id),
                ),
                _ => {}
            }
            if s == State::Committed && part.vote != pb::Vote::Prepared as i32 {
                say(
                    "validity",
                    format!(
                        "{} is COMMITTED but {} voted {:?}",
                        t.id, part.project, part.vote
                    ),
                );
            }
        }
    }
    for (project, p) in &o.participants {
        for (tx, phase) in &p.phases {
            if matches!(phase, Phase::Staging | Phase::Prepared) && !waiting.contains(tx.as_str()) {
                say(
                    "termination",
                    format!("{project} still holds {tx} {phase:?}"),
                );
            }
            if *phase == Phase::Committed
                && txs.get(tx.as_str()).map(|t| state(t)) != Some(State::Committed)
            {
                say(
                    "agreement",
                    format!("{project} committed {tx}, which the coordinator did not commit"),
                );
            }
        }
    }

    // live-as-staged: what an agent makes live is what it prepared for that
    // transaction, never another transaction's staging, or nothing.
    for (project, p) in &o.participants {
        let unstaged = p.effects.iter().flatten().filter(|e| e.unstaged);
        for e in unstaged {
            let detail = format!(
                "{project} made {} live for {} without staging it",
                e.to, e.tx
            );
            say("live-as-staged", detail);
        }
    }

    // exactly-once
    for (project, p) in &o.participants {
        let Some(effects) = &p.effects else { continue };
        let mut per_tx: BTreeMap<&str, usize> = BTreeMap::new();
        for e in effects {
            *per_tx.entry(e.tx.as_str()).or_default() += 1;
        }
        for (tx, n) in &per_tx {
            match txs.get(tx).map(|t| state(t)) {
                Some(State::Committed) if *n == 1 => {}
                Some(State::Committed) => {
                    say("exactly-once", format!("{project} applied {tx} {n} times"))
                }
                other => say(
                    "exactly-once",
                    format!("{project} applied {tx}, which is {other:?}"),
                ),
            }
        }
        for t in o
            .transactions
            .iter()
            .filter(|t| state(t) == State::Committed)
        {
            // A transaction waiting for a person may not have reached everyone yet.
            let pending = waiting.contains(t.id.as_str());
            if let Some(part) = t
                .participants
                .iter()
                .find(|x| &member(&t.environment, &x.project) == project)
                && part.from_version != part.to_version
                && (!pending || part.acknowledged)
                && !per_tx.contains_key(t.id.as_str())
            {
                say(
                    "exactly-once",
                    format!(
                        "{project} never applied committed {} ({} -> {})",
                        t.id, part.from_version, part.to_version
                    ),
                );
            }
        }
    }

    // durability
    for c in &o.clients {
        let stayed = txs.get(c.tx.as_str()).map(|t| state(t));
        match &c.told {
            Told::Accepted if stayed.is_none() => say(
                "durability",
                format!(
                    "client {} was told {} was accepted; it is gone",
                    c.client, c.tx
                ),
            ),
            Told::Outcome(s) if stayed != Some(*s) => say(
                "durability",
                format!(
                    "client {} was told {} is {s:?}; it is {stayed:?}",
                    c.client, c.tx
                ),
            ),
            _ => {}
        }
    }

    // checkpoints
    let mut per_environment: BTreeMap<&str, u64> = BTreeMap::new();
    for cp in &o.checkpoints {
        let n = per_environment.entry(cp.environment.as_str()).or_default();
        *n += 1;
        if cp.revision != *n {
            say(
                "checkpoints",
                format!(
                    "revision {} at position {n} of {}",
                    cp.revision, cp.environment
                ),
            );
        }
        match txs.get(cp.transaction_id.as_str()).map(|t| state(t)) {
            Some(State::Committed) => {}
            other => say(
                "checkpoints",
                format!(
                    "checkpoint {} comes from {} which is {other:?}",
                    cp.revision, cp.transaction_id
                ),
            ),
        }
    }
    let committed = o
        .transactions
        .iter()
        .filter(|t| state(t) == State::Committed)
        .count();
    if committed != o.checkpoints.len() {
        say(
            "checkpoints",
            format!(
                "{committed} committed transactions but {} checkpoints",
                o.checkpoints.len()
            ),
        );
    }

    // no-regression and live-is-a-checkpoint
    // A participant that lost its data lags its checkpoints only while a transaction
    // of its waits for a person.
    let stalled = projects_of(o, &waiting);
    for (project, p) in o
        .participants
        .iter()
        .filter(|(p, _)| !stalled.contains(p.as_str()))
    {
        let mut path: Vec<(&str, &str)> = Vec::new();
        for cp in &o.checkpoints {
            if let Some(v) = cp
                .versions
                .iter()
                .find(|v| &member(&cp.environment, &v.project) == project)
                && path.last().map(|(_, last)| *last) != Some(v.version.as_str())
            {
                path.push((cp.transaction_id.as_str(), v.version.as_str()));
            }
        }
        if let Some(effects) = &p.effects {
            let walked: Vec<(&str, &str)> = effects
                .iter()
                .map(|e| (e.tx.as_str(), e.to.as_str()))
                .collect();
            if walked != path {
                say(
                    "no-regression",
                    format!("{project} went {walked:?}; the checkpoints say {path:?}"),
                );
            }
        }
        let expected = path.last().map(|(_, v)| v.to_string());
        if p.live != expected {
            say(
                "live-is-a-checkpoint",
                format!(
                    "{project} has {:?} live; the newest checkpoint says {expected:?}",
                    p.live
                ),
            );
        }
    }

    // event-log
    for (i, e) in o.events.iter().enumerate() {
        if e.seq != i as u64 + 1 {
            say(
                "event-log",
                format!("event at position {} has seq {}", i + 1, e.seq),
            );
            break;
        }
    }
    let mut per_tx: BTreeMap<&str, Vec<&pb::Event>> = BTreeMap::new();
    for e in o.events.iter().filter(|e| !e.transaction_id.is_empty()) {
        per_tx.entry(e.transaction_id.as_str()).or_default().push(e);
    }
    for (tx, events) in per_tx.iter_mut() {
        after_commit(tx, events, &mut say);
    }
    let terminal = |e: &pb::Event| {
        e.kind == EventKind::TransactionCommitted as i32
            || e.kind == EventKind::TransactionAborted as i32
    };
    for (tx, events) in per_tx.iter().filter(|(tx, _)| !waiting.contains(**tx)) {
        if events.first().map(|e| e.kind) != Some(EventKind::TransactionCreated as i32) {
            say(
                "event-log",
                format!("{tx}'s first event is not its creation"),
            );
        }
        let ends: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| terminal(e))
            .map(|(i, _)| i)
            .collect();
        match ends.as_slice() {
            [] => say("event-log", format!("{tx} has no terminal event")),
            [i] if *i + 1 != events.len() => say(
                "event-log",
                format!("{tx} has events after its terminal one"),
            ),
            [_] => {}
            _ => say(
                "event-log",
                format!("{tx} has {} terminal events", ends.len()),
            ),
        }
        let commit = events
            .iter()
            .any(|e| e.kind == EventKind::DecidedCommit as i32);
        let abort = events
            .iter()
            .any(|e| e.kind == EventKind::DecidedAbort as i32);
        if commit && abort {
            say("event-log", format!("{tx} decided both COMMIT and ABORT"));
        }
        let committed_end = events
            .last()
            .is_some_and(|e| e.kind == EventKind::TransactionCommitted as i32);
        if committed_end != commit {
            say(
                "event-log",
                format!(
                    "{tx} ends {} but decided {}",
                    if committed_end {
                        "committed"
                    } else {
                        "aborted"
                    },
                    if commit { "COMMIT" } else { "ABORT" }
                ),
            );
        }
        let recorded = txs.get(tx).map(|t| state(t));
        let logged = if committed_end {
            State::Committed
        } else {
            State::Aborted
        };
        if recorded.is_some_and(|s| s != logged) {
            say(
                "event-log",
                format!("{tx} is {recorded:?} but its log ends {logged:?}"),
            );
        }
    }
    let silent = o
        .transactions
        .iter()
        .filter(|t| !per_tx.contains_key(t.id.as_str()));
    for t in silent {
        say("event-log", format!("{} has no events", t.id));
    }
    for what in &o.unreadable {
        say("run", format!("could not read {what}"));
    }
    v.extend(crate::ordering::check(&o.transactions, &o.events));
    v.extend(crate::contents::check(o));
    v
}

/// What happens to a committed release after its end: its verification after commit
/// (`LIVE_VERIFY_*`) and the refusal of its auto-promotion (`PROMOTION_REFUSED`) come
/// only after TRANSACTION_COMMITTED, and a live check never both passes and fails (a
/// failure may be followed by the refusal of its automatic revert, of the same kind).
/// Takes those events out of `events`, which the protocol rules then read, and
/// `ACCESS_DENIED` too: a refused call names the transaction it was about, at any time.
fn after_commit(
    tx: &str,
    events: &mut Vec<&pb::Event>,
    say: &mut impl FnMut(&'static str, String),
) {
    let is = |e: &pb::Event, k: EventKind| e.kind == k as i32;
    events.retain(|e| !is(e, EventKind::AccessDenied));
    let later = |e: &&pb::Event| {
        [
            EventKind::LiveVerifyPassed,
            EventKind::LiveVerifyFailed,
            EventKind::PromotionRefused,
        ]
        .iter()
        .any(|k| is(e, *k))
    };
    let Some(first) = events.iter().position(later) else {
        return;
    };
    if !events[..first]
        .iter()
        .any(|e| is(e, EventKind::TransactionCommitted))
    {
        say(
            "event-log",
            format!("{tx} has a live check or promotion refusal before its commit"),
        );
    }
    let passed = events.iter().any(|e| is(e, EventKind::LiveVerifyPassed));
    if passed && events.iter().any(|e| is(e, EventKind::LiveVerifyFailed)) {
        say(
            "event-log",
            format!("{tx} both passed and failed its live check"),
        );
    }
    events.retain(|e| !later(e));
}

/// When `tx`'s first Prepare started (its PREPARE_STARTED event's time, in the clock's
/// milliseconds), if the log kept that event.
fn prepare_started(o: &Observation, tx: &str) -> Option<u64> {
    let started = o
        .events
        .iter()
        .find(|e| e.kind == EventKind::PrepareStarted as i32 && e.transaction_id == tx)?;
    let time = started.time.as_ref()?;
    Some(time.seconds as u64 * 1000 + time.nanos as u64 / 1_000_000)
}

/// The transactions that wait in phase 2 for a person because a participant that lost
/// its data answered what no retry can fix; a `needs resolution` anywhere else is a
/// violation.
fn waiting_for_a_person<'a>(
    o: &'a Observation,
    say: &mut impl FnMut(&'static str, String),
) -> BTreeSet<&'a str> {
    let mut waiting = BTreeSet::new();
    let needs = o
        .events
        .iter()
        .filter(|e| e.kind == EventKind::NeedsResolution as i32);
    let unfinished = |id: &str| {
        let found = o.transactions.iter().find(|t| t.id == id);
        found.is_some_and(|t| !matches!(state(t), State::Committed | State::Aborted))
    };
    for e in needs {
        if o.lost_data
            .contains_key(&member(&e.environment, &e.project))
        {
            // Once a person has resolved it and it ended, every rule holds it again.
            if unfinished(&e.transaction_id) {
                waiting.insert(e.transaction_id.as_str());
            }
        } else {
            say(
                "resolution-after-data-loss",
                format!(
                    "{} needs resolution at {}, which lost nothing",
                    e.transaction_id, e.project
                ),
            );
        }
    }
    // What is queued behind a waiting transaction waits with it, and so does what is
    // queued behind that (the queue is first-come-first-served per project: a queued
    // transaction blocks later ones that want any of its projects), to a fixpoint.
    loop {
        let held = projects_of(o, &waiting);
        let before = waiting.len();
        for t in &o.transactions {
            let queued = state(t) == State::Pending;
            if queued && members(t).any(|m| held.contains(&m)) {
                waiting.insert(t.id.as_str());
            }
        }
        if waiting.len() == before {
            return waiting;
        }
    }
}

/// The participants ([`member`] names) taking part in the transactions `ids`.
fn projects_of(o: &Observation, ids: &BTreeSet<&str>) -> BTreeSet<String> {
    o.transactions
        .iter()
        .filter(|t| ids.contains(t.id.as_str()))
        .flat_map(members)
        .collect()
}

/// A hash of the event log without timestamps: two runs of the same seed must agree.
pub fn event_log_hash(events: &[pb::Event]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
        }
    };
    for e in events {
        feed(&e.seq.to_le_bytes());
        feed(&e.kind.to_le_bytes());
        feed(e.transaction_id.as_bytes());
        feed(e.project.as_bytes());
        feed(&e.state.to_le_bytes());
        feed(&e.vote.to_le_bytes());
        feed(e.message.as_bytes());
        feed(&e.revision.to_le_bytes());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T1 committed A=1, with its checkpoint; participants still to be added.
    fn t1_committed_a_at_1() -> Observation {
        Observation {
            transactions: vec![pb::Transaction {
                checkpoint: 1,
                ..tx("T1", State::Committed, &[("A", "", "1")])
            }],
            checkpoints: vec![pb::Checkpoint {
                revision: 1,
                transaction_id: "T1".into(),
                versions: vec![pb::LiveVersion {
                    project: "A".into(),
                    version: "1".into(),
                    schema: None,
                }],
                ..Default::default()
            }],
            events: [
                EventKind::TransactionCreated,
                EventKind::DecidedCommit,
                EventKind::TransactionCommitted,
            ]
            .iter()
            .enumerate()
            .map(|(i, kind)| pb::Event {
                seq: i as u64 + 1,
                kind: *kind as i32,
                transaction_id: "T1".into(),
                ..Default::default()
            })
            .collect(),
            ..Default::default()
        }
    }

    fn tx(id: &str, s: State, parts: &[(&str, &str, &str)]) -> pb::Transaction {
        pb::Transaction {
            id: id.into(),
            state: s as i32,
            participants: parts
                .iter()
                .map(|(p, from, to)| pb::Participation {
                    project: p.to_string(),
                    from_version: from.to_string(),
                    to_version: to.to_string(),
                    vote: pb::Vote::Prepared as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Seen in `t80_real_faults` seed 2: a refused auto-promotion is written on the
    /// upstream release after its end; that is its place, anywhere before it is not.
    #[test]
    fn a_promotion_refusal_belongs_after_the_commit() {
        let event = |kind: EventKind| pb::Event {
            kind: kind as i32,
            ..Default::default()
        };
        let (created, committed, refused) = (
            event(EventKind::TransactionCreated),
            event(EventKind::TransactionCommitted),
            event(EventKind::PromotionRefused),
        );
        let mut said = Vec::new();
        let mut after = vec![&created, &committed, &refused];
        after_commit("T1", &mut after, &mut |_, m| said.push(m));
        assert!(said.is_empty(), "{said:?}");
        assert_eq!(
            after.len(),
            2,
            "the refusal is taken out of the protocol's sequence"
        );
        let mut before = vec![&created, &refused, &committed];
        after_commit("T1", &mut before, &mut |_, m| said.push(m));
        assert_eq!(said.len(), 1, "{said:?}");
    }

    #[test]
    fn a_split_outcome_is_caught_by_three_rules() {
        let mut o = Observation {
            transactions: vec![tx(
                "T1",
                State::Committed,
                &[("A", "", "1"), ("B", "", "1")],
            )],
            ..Default::default()
        };
        o.participants.insert(
            "A".into(),
            ParticipantView {
                phases: [("T1".into(), Phase::Committed)].into(),
                ..Default::default()
            },
        );
        o.participants.insert(
            "B".into(),
            ParticipantView {
                phases: [("T1".into(), Phase::Aborted)].into(),
                ..Default::default()
            },
        );
        let rules: BTreeSet<&str> = check(&o).iter().map(|v| v.rule).collect();
        assert!(
            rules.contains("tc-consistent")
                && rules.contains("agreement")
                && rules.contains("checkpoints"),
            "{rules:?}"
        );
    }

    #[test]
    fn applying_a_change_twice_or_going_back_is_caught() {
        let mut o = t1_committed_a_at_1();
        let e = Effect {
            tx: "T1".into(),
            from: None,
            to: "1".into(),
            at: 0,
            unstaged: false,
        };
        o.participants.insert(
            "A".into(),
            ParticipantView {
                live: Some("1".into()),
                phases: [("T1".into(), Phase::Committed)].into(),
                effects: Some(vec![e.clone(), e]),
            },
        );
        let rules: BTreeSet<&str> = check(&o).iter().map(|v| v.rule).collect();
        assert!(
            rules.contains("exactly-once") && rules.contains("no-regression"),
            "{rules:?}"
        );
    }

    /// Since stop 58: a go-live of a version the agent did not stage for that
    /// transaction is caught, whatever the coordinator recorded.
    #[test]
    fn going_live_with_what_was_not_staged_is_caught() {
        let mut o = t1_committed_a_at_1();
        let effect = Effect {
            tx: "T1".into(),
            from: None,
            to: "1".into(),
            at: 0,
            unstaged: true,
        };
        o.participants.insert(
            "A".into(),
            ParticipantView {
                live: Some("1".into()),
                phases: [("T1".into(), Phase::Committed)].into(),
                effects: Some(vec![effect]),
            },
        );
        let rules: Vec<&str> = check(&o).iter().map(|v| v.rule).collect();
        assert_eq!(rules, ["live-as-staged"]);
    }

    #[test]
    fn a_clean_history_passes() {
        let mut o = t1_committed_a_at_1();
        o.participants.insert(
            "A".into(),
            ParticipantView {
                live: Some("1".into()),
                phases: [("T1".into(), Phase::Committed)].into(),
                effects: Some(vec![Effect {
                    tx: "T1".into(),
                    from: None,
                    to: "1".into(),
                    at: 0,
                    unstaged: false,
                }]),
            },
        );
        assert_eq!(check(&o), vec![]);
    }

    #[test]
    fn needing_resolution_is_caught_unless_that_agent_lost_its_data() {
        let mut o = t1_committed_a_at_1();
        o.transactions[0].state = State::Committing as i32;
        o.events = vec![pb::Event {
            seq: 1,
            kind: EventKind::NeedsResolution as i32,
            transaction_id: "T1".into(),
            project: "A".into(),
            ..Default::default()
        }];
        let rules: Vec<&str> = check(&o).iter().map(|v| v.rule).collect();
        assert!(rules.contains(&"resolution-after-data-loss"), "{rules:?}");
        assert!(rules.contains(&"termination"), "{rules:?}");
        o.lost_data.insert("A".into(), 0);
        let rules: Vec<&str> = check(&o).iter().map(|v| v.rule).collect();
        assert!(!rules.contains(&"resolution-after-data-loss"), "{rules:?}");
        assert!(!rules.contains(&"termination"), "{rules:?}");
    }

    /// Sim review of stop 56: an agent that lost its data was excused a missing record
    /// for every transaction of the run, so one that voted PREPARED without a durable
    /// record after the loss passed. Given T1 committed and A's ledger without it, A's
    /// data lost at 5,000 ms: a Prepare started at 4,000 ms is excused, one started
    /// at 6,000 ms is an `agreement` violation.
    #[test]
    fn a_missing_record_is_excused_only_for_a_prepare_before_the_loss() {
        let mut o = t1_committed_a_at_1();
        o.participants
            .insert("A".into(), ParticipantView::default());
        o.lost_data.insert("A".into(), 5_000);
        let started = |ms: i64| pb::Event {
            seq: 1,
            kind: EventKind::PrepareStarted as i32,
            transaction_id: "T1".into(),
            time: Some(lockstep::wkt::Timestamp {
                seconds: ms / 1000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let agreement = |o: &Observation| {
            let found = check(o).into_iter().filter(|v| v.rule == "agreement");
            found.map(|v| v.detail).collect::<Vec<_>>()
        };
        o.events = vec![started(4_000)];
        assert_eq!(agreement(&o), Vec::<String>::new());
        o.events = vec![started(6_000)];
        assert_eq!(agreement(&o).len(), 1, "{:?}", agreement(&o));
    }
}
