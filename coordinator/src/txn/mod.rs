//! Two-phase commit of one transaction, as a pure state machine. This is the one place
//! where a transaction's protocol state changes; read it top to bottom.
//!
//! [`Transaction`] holds the record and takes one input at a time (the queue's turn, a
//! vote, the phase 1 deadline, an abort request, the COMMIT decision made durable, an
//! acknowledgement, a failed delivery, a restart). Each method changes the record and
//! returns the [`Effect`]s to carry out, in order: events to write with the durability
//! each needs, orders to send, a deadline to arm, the end. It does no I/O: the driver
//! (the `driver` module) carries the effects out through two narrow ports, the journal and
//! the participant network (the `ports` module), and feeds their answers back in. That is
//! what lets one protocol run in production and in the simulation, and every rule below
//! be a unit test (`tests.rs`) and a property test (`props.rs`).
//!
//! The rules it keeps (PRODUCT.md, "Protocol rules"):
//! 1. Phase 1 sends Prepare to every participant at once with one deadline; any
//!    refusal, error or missing answer by the deadline decides ABORT.
//! 2. COMMIT is decided only when every participant voted PREPARED, and no Commit is
//!    sent before the decision is durable ([`Effect::DecideCommit`], then
//!    [`Transaction::commit_durable`]).
//! 3. Presumed abort: a transaction without a durable decision at a restart is aborted
//!    ([`Transaction::restarted`]); a decided one is never decided again. The one
//!    exception is VERIFYING (the `verify` module): every participant is durably
//!    prepared and the steps are recorded, so its verification resumes, still
//!    undecided.
//! 4. Phase 2 goes in dependency waves, children first for COMMIT and parents first for
//!    ABORT; each delivery is retried with capped exponential backoff until it is
//!    acknowledged.
//! 5. Every state change is an event in the one ordered log.
//! 6. With verify steps, "every participant voted PREPARED" leads to VERIFYING, and
//!    COMMIT is decided only once every step passed; any failure decides ABORT.

#[cfg(test)]
mod crash_props;
pub mod events;
#[cfg(test)]
mod props;
#[cfg(test)]
pub(crate) mod tests;
pub mod verify;
#[cfg(test)]
mod verify_tests;

use std::{collections::BTreeMap, time::Duration};

use lockstep::{
    names::{Environment, ProjectName},
    orders::{AbortOrder, CommitOrder, Decision, PrepareOrder, VoteAnswer},
    pb,
    retry::{Backoff, Failure},
};

use crate::{
    model::{Participant, Resolution, TxRecord, TxState, Vote},
    planner::Plan,
};

/// What the queue says when a waiting transaction's turn comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Go, re-planned against the live state (`None`: keep the plan). The whole plan
    /// is handed over: participants, waves, whether it is forced into an untested
    /// combination, what a revert undoes and what a rollback restores.
    Go(Option<Box<Plan>>),
    /// It can no longer run as planned; the reason is recorded.
    Refused(String),
}

/// An order for one participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Phase 1.
    Prepare(PrepareOrder),
    /// Phase 2 after COMMIT.
    Commit(CommitOrder),
    /// Phase 2 after ABORT.
    Abort(AbortOrder),
}

/// An order and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The participant's project.
    pub project: ProjectName,
    /// Its endpoint.
    pub endpoint: String,
    /// What to tell it.
    pub message: Message,
}

/// How soon readers see a written record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// At once: an undecided step that a crash may lose harmlessly (presumed abort).
    AtOnce,
    /// Once durable: the driver waits for it before the next effect.
    WhenDurable,
}

/// Something the driver must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Hold `events` for the journal's next write (a crash may lose them harmlessly:
    /// votes, acknowledgements, retries) and show readers the new state of `shown`.
    Note {
        /// Events to hold.
        events: Vec<pb::Event>,
        /// The participants whose state changed, as they were when the note was made.
        shown: Vec<Participant>,
    },
    /// Write `record` with `events` (durable with the next sync).
    Write {
        /// The record as the machine made it with this effect: never a later state,
        /// so a crash after this write leaves a prefix recovery can finish.
        record: Box<TxRecord>,
        /// Events written with it.
        events: Vec<pb::Event>,
        /// When readers see it.
        show: Show,
    },
    /// Write the COMMIT decision with fsync, together with the checkpoint it produces,
    /// then report the checkpoint's revision to [`Transaction::commit_durable`].
    DecideCommit {
        /// The record deciding COMMIT (its checkpoint is numbered by the journal).
        record: Box<TxRecord>,
        /// Events written with it.
        events: Vec<pb::Event>,
    },
    /// Send an order after a delay (zero: now).
    Send {
        /// The order (boxed: it is the largest effect by far).
        order: Box<Order>,
        /// Wait this long first (backoff).
        after: Duration,
    },
    /// End the wait of every Send still in its backoff delay: send them now.
    Hurry,
    /// Call [`Transaction::deadline`] when this much time has passed (replacing the
    /// deadline armed before, if any).
    StartDeadline(Duration),
    /// Phase 1 or a verify step is over: outstanding Prepare calls and http requests
    /// are no longer wanted, and the deadline is off.
    StopPreparing,
    /// GET `url` for http verify step `step` and report the status to
    /// [`Transaction::probed`].
    Probe {
        /// The step.
        step: String,
        /// The URL, its placeholders filled in.
        url: String,
    },
    /// Write the terminal record with `events` and hand its projects to the next
    /// transactions. The driver is done.
    Finish {
        /// The terminal record; it and its terminal event are one batch.
        record: Box<TxRecord>,
        /// Events written with it.
        events: Vec<pb::Event>,
    },
}

/// One transaction's protocol state.
#[derive(Debug, Clone)]
pub struct Transaction {
    record: TxRecord,
    backoff: Backoff,
    /// Calls made to each participant in this phase, for its backoff.
    attempts: BTreeMap<ProjectName, u32>,
}

impl Transaction {
    /// A transaction as accepted (or loaded), retrying with `backoff`.
    pub fn new(record: TxRecord, backoff: Backoff) -> Self {
        Self {
            record,
            backoff,
            attempts: BTreeMap::new(),
        }
    }

    /// The record as it stands.
    pub fn record(&self) -> &TxRecord {
        &self.record
    }

    /// What to do first with a transaction just accepted: nothing while it waits for
    /// its turn; phase 1 when it was accepted already preparing.
    pub fn begin(&mut self) -> Vec<Effect> {
        match self.record.state {
            TxState::Preparing => self.send_prepares(),
            _ => Vec::new(),
        }
    }

    // ----- queued -----

    /// The queue gave the transaction its projects, or refused it.
    pub fn start(&mut self, turn: Turn) -> Vec<Effect> {
        if self.record.state != TxState::Pending {
            return Vec::new();
        }
        match turn {
            Turn::Go(plan) => {
                if let Some(plan) = plan {
                    self.replanned(*plan);
                }
                // Durable before any Prepare: the coordinator knows this transaction
                // (its PENDING record is), so a restart must find that Prepare may
                // have gone out, and send Abort to every participant rather than
                // leave one prepared until it asks. (A transaction starting at its
                // admission needs no such wait: until that write is durable nobody
                // knows it, and an unknown transaction's decision is ABORT.)
                let started = self.start_preparing();
                let mut effects = vec![self.write(vec![started], Show::WhenDurable)];
                effects.extend(self.send_prepares());
                effects
            }
            Turn::Refused(reason) => self.abort_unprepared(reason),
        }
    }

    /// Takes the plan made when the turn came, whole: a release queued as tested that
    /// has become untested is recorded as forced (its checkpoint says untested), and a
    /// `requires` edge added meanwhile splits its waves.
    fn replanned(&mut self, plan: Plan) {
        let r = &mut self.record;
        r.participants = plan.participants;
        r.waves = plan.waves;
        r.forced = plan.forced;
        r.reverts = plan.reverts;
        r.rollback_to = plan.rollback_to;
        r.held_reads = plan.reads;
    }

    /// Moves into phase 1 and returns the event saying so (also used when a
    /// transaction is accepted with nothing in its way: phase 1 then starts in the
    /// creation write).
    pub fn start_preparing(&mut self) -> pb::Event {
        self.record.state = TxState::Preparing;
        self.record.prepare_sent = true;
        let votes = events::plural(self.record.participants.len(), "vote");
        self.record.reason = format!("waiting for {votes}");
        events::prepare_started(&self.record)
    }

    /// Aborts a transaction that never sent Prepare: there is no participant to tell.
    fn abort_unprepared(&mut self, reason: String) -> Vec<Effect> {
        self.record.state = TxState::Aborting;
        self.record.reason = reason;
        let decided = events::decided(&self.record, false);
        let mut effects = vec![self.write(vec![decided], Show::WhenDurable)];
        effects.push(self.finish());
        effects
    }

    // ----- phase 1 -----

    fn send_prepares(&mut self) -> Vec<Effect> {
        let timeout = Duration::from_millis(self.record.prepare_timeout_ms);
        let mut effects = vec![Effect::StartDeadline(timeout)];
        for p in &self.record.participants {
            effects.push(Effect::Send {
                order: Box::new(self.prepare_order(p)),
                after: Duration::ZERO,
            });
        }
        effects
    }

    fn prepare_order(&self, p: &Participant) -> Order {
        let record = &self.record;
        let message = Message::Prepare(p.prepare_order(&record.id, &record.environment));
        order(p, message)
    }

    /// A participant answered Prepare (or the call failed).
    pub fn vote(
        &mut self,
        project: &ProjectName,
        answer: Result<VoteAnswer, Failure>,
    ) -> Vec<Effect> {
        let waiting = self
            .participant(project)
            .is_some_and(|p| p.vote == Vote::None);
        if self.record.state != TxState::Preparing || !waiting {
            return Vec::new();
        }
        let answer = match answer {
            Ok(answer) => answer,
            // Prepare is idempotent: a call that may not have arrived is made again,
            // until the phase 1 deadline cuts it short.
            Err(Failure::Transient(_)) => return self.retry(project),
            Err(Failure::Final(error)) => VoteAnswer::Refused(format!("participant error {error}")),
        };
        let mut effects = vec![self.record_vote(project, answer)];
        effects.extend(self.decide_when_all_voted(project));
        effects
    }

    /// Records a vote: shown at once, durable with the decision that follows.
    fn record_vote(&mut self, project: &ProjectName, answer: VoteAnswer) -> Effect {
        let p = self.participant_mut(project);
        let (vote, reason) = match answer {
            VoteAnswer::Prepared(staging) => {
                p.from_schema = staging.from_schema;
                p.to_schema = staging.to_schema;
                p.migrations = staging.migrations;
                p.test_uri = staging.test_uri;
                p.staged_artifact = staging.artifact;
                (Vote::Prepared, String::new())
            }
            VoteAnswer::Refused(reason) => (Vote::Refused, reason),
        };
        p.vote = vote;
        p.vote_reason = reason.clone();
        let event = events::vote_received(&self.record, project, vote, &reason);
        self.note(event, project)
    }

    /// COMMIT once every participant voted PREPARED; ABORT at the first that did not.
    fn decide_when_all_voted(&mut self, project: &ProjectName) -> Vec<Effect> {
        let p = self.participant(project).expect("a participant just voted");
        if p.vote != Vote::Prepared {
            let reason = format!("{project} refused: {}", p.vote_reason);
            return self.decide_abort(reason);
        }
        let participants = &self.record.participants;
        if !participants.iter().all(|p| p.vote == Vote::Prepared) {
            return Vec::new();
        }
        if self.record.steps.is_empty() {
            let votes = events::plural(self.record.participants.len(), "vote");
            self.decide_commit(format!("every participant prepared ({votes})"))
        } else {
            self.start_verifying()
        }
    }

    /// The deadline passed: phase 1's, or the running verify step's.
    pub fn deadline(&mut self) -> Vec<Effect> {
        if self.record.state == TxState::Verifying {
            return self.step_deadline();
        }
        if self.record.state != TxState::Preparing {
            return Vec::new();
        }
        let timeout = events::humanize(self.record.prepare_timeout_ms);
        let silent: Vec<ProjectName> = self.silent().collect();
        let mut noted = Vec::new();
        for project in &silent {
            let p = self.participant_mut(project);
            p.vote = Vote::NoAnswer;
            p.vote_reason = format!("no answer within {timeout}");
            noted.push(events::no_answer(&self.record, project));
        }
        let names: Vec<&str> = silent.iter().map(|p| p.as_str()).collect();
        let reason = format!(
            "no answer from {} within the prepare timeout of {timeout}",
            names.join(", ")
        );
        let shown = silent.iter().filter_map(|p| self.participant(p)).cloned();
        let mut effects = vec![Effect::Note {
            events: noted,
            shown: shown.collect(),
        }];
        effects.extend(self.decide_abort(reason));
        effects
    }

    fn silent(&self) -> impl Iterator<Item = ProjectName> + '_ {
        let participants = self.record.participants.iter();
        participants
            .filter(|p| p.vote == Vote::None)
            .map(|p| p.project.clone())
    }

    /// AbortRelease asked to abort, by `actor` (named on the decision's event). Only an
    /// undecided transaction can be aborted.
    pub fn abort_requested(&mut self, reason: String, actor: &str) -> Vec<Effect> {
        let mut effects = match self.record.state {
            TxState::Pending => self.abort_unprepared(reason),
            TxState::Preparing | TxState::Verifying => {
                self.decide_abort(format!("aborted on request: {reason}"))
            }
            _ => Vec::new(),
        };
        for effect in &mut effects {
            if let Effect::Write { events, .. } = effect {
                events.iter_mut().for_each(|e| e.actor = actor.to_string());
            }
        }
        effects
    }

    // ----- the decision -----

    /// Every participant voted PREPARED (and every verify step passed): COMMIT,
    /// written with fsync before any Commit, `reason` saying why.
    fn decide_commit(&mut self, reason: String) -> Vec<Effect> {
        self.record.state = TxState::Committing;
        self.record.reason = reason;
        let decided = events::decided(&self.record, true);
        vec![
            Effect::StopPreparing,
            Effect::DecideCommit {
                record: Box::new(self.record.clone()),
                events: vec![decided],
            },
        ]
    }

    /// The COMMIT decision is durable, as checkpoint `revision`: phase 2 may begin.
    pub fn commit_durable(&mut self, revision: u64) -> Vec<Effect> {
        if self.record.state != TxState::Committing || self.record.checkpoint != 0 {
            return Vec::new();
        }
        self.record.checkpoint = revision;
        self.attempts.clear();
        self.deliver_next_wave()
    }

    /// ABORT. Under presumed abort it needs no fsync of its own; it is written (and
    /// waited for, so readers only see durable state) before any Abort is sent.
    fn decide_abort(&mut self, reason: String) -> Vec<Effect> {
        self.record.state = TxState::Aborting;
        self.record.reason = reason;
        let decided = events::decided(&self.record, false);
        let mut effects = vec![
            Effect::StopPreparing,
            self.write(vec![decided], Show::WhenDurable),
        ];
        self.attempts.clear();
        effects.extend(self.deliver_next_wave());
        effects
    }

    // ----- phase 2 -----

    /// Sends the decision to the first wave with participants that have not
    /// acknowledged; when there is none, the transaction ends.
    fn deliver_next_wave(&mut self) -> Vec<Effect> {
        let commit = self.record.state == TxState::Committing;
        if !commit && !self.record.prepare_sent {
            return vec![self.finish()];
        }
        let Some(wave) = self.current_wave() else {
            return vec![self.finish()];
        };
        let orders: Vec<Order> = self
            .unacknowledged(wave)
            .map(|p| self.decision_order(p))
            .collect();
        let sends = orders.into_iter().map(|order| Effect::Send {
            order: Box::new(order),
            after: Duration::ZERO,
        });
        sends.collect()
    }

    /// The first wave, in delivery order, with someone yet to acknowledge: children
    /// first for COMMIT, parents first (the reverse) for ABORT.
    /// Borrowed, and each participant's flag read before its project is looked up in
    /// the wave: it runs at every acknowledgement, so with 100 participants a copy of
    /// the waves and a lookup per participant made phase 2 quadratic.
    fn current_wave(&self) -> Option<&[ProjectName]> {
        let waves = &self.record.waves;
        let pending = |w: &&Vec<ProjectName>| self.unacknowledged(w).next().is_some();
        let wave = match self.record.state {
            TxState::Aborting => waves.iter().rev().find(pending),
            _ => waves.iter().find(pending),
        };
        wave.map(Vec::as_slice)
    }

    fn unacknowledged<'a>(
        &'a self,
        wave: &'a [ProjectName],
    ) -> impl Iterator<Item = &'a Participant> {
        let participants = self.record.participants.iter();
        participants.filter(move |p| !p.acknowledged && wave.contains(&p.project))
    }

    /// The decision order `project` waits for now (`None`: it waits for none), for the
    /// driver to send once more before a person resolves it.
    pub fn pending_order(&self, project: &ProjectName) -> Option<Order> {
        let p = self.participant(project)?;
        let waiting = self.delivering() && !p.acknowledged && self.in_current_wave(project);
        waiting.then(|| self.decision_order(p))
    }

    fn decision_order(&self, p: &Participant) -> Order {
        let (tx, project) = (self.record.id.clone(), Some(p.project.clone()));
        let message = if self.record.state == TxState::Committing {
            Message::Commit(CommitOrder {
                tx,
                project,
                incarnation: String::new(),
            })
        } else {
            let reason = self.record.reason.clone();
            Message::Abort(AbortOrder {
                tx,
                project,
                reason,
                incarnation: String::new(),
            })
        };
        order(p, message)
    }

    /// A participant acknowledged the decision.
    pub fn acknowledged(&mut self, project: &ProjectName) -> Vec<Effect> {
        let deciding = self.delivering();
        let waiting = self.participant(project).is_some_and(|p| !p.acknowledged);
        if !deciding || !waiting || !self.in_current_wave(project) {
            return Vec::new();
        }
        let p = self.participant_mut(project);
        p.acknowledged = true;
        p.needs_resolution = false;
        p.delivery_error.clear();
        let commit = self.record.state == TxState::Committing;
        let event = events::acknowledged(&self.record, project, commit);
        let mut effects = vec![self.note(event, project)];
        if self.current_wave().is_none_or(|w| !w.contains(project)) {
            effects.extend(self.deliver_next_wave());
        }
        effects
    }

    /// Phase 2 has begun: ABORT is decided, or COMMIT is durable (its checkpoint known).
    fn delivering(&self) -> bool {
        match self.record.state {
            TxState::Aborting => true,
            TxState::Committing => self.record.checkpoint != 0,
            _ => false,
        }
    }

    fn in_current_wave(&self, project: &ProjectName) -> bool {
        self.current_wave().is_some_and(|w| w.contains(project))
    }

    /// A delivery (or a Prepare) failed: try again with backoff. A delivery failure is
    /// logged when its error changes, not on every retry.
    pub fn delivery_failed(&mut self, project: &ProjectName, failure: Failure) -> Vec<Effect> {
        let deciding = self.delivering();
        let waiting = self.participant(project).is_some_and(|p| !p.acknowledged);
        if !deciding || !waiting || !self.in_current_wave(project) {
            return Vec::new();
        }
        let error = failure.message().to_string();
        if let Failure::Final(_) = failure {
            return self.needs_resolution(project, error);
        }
        let mut effects = Vec::new();
        if self
            .participant(project)
            .is_some_and(|p| p.delivery_error != error)
        {
            self.participant_mut(project).delivery_error = error.clone();
            let retry = events::delivery_retry(&self.record, project, &error);
            effects.push(self.note(retry, project));
        }
        effects.extend(self.retry(project));
        effects
    }

    /// The participant's answer is final ("never prepared here", "aborted here"):
    /// sending it again cannot help, so phase 2 stops retrying it and waits for a
    /// person ([`Transaction::resolve`]) or a retry they ask for.
    fn needs_resolution(&mut self, project: &ProjectName, answer: String) -> Vec<Effect> {
        let p = self.participant_mut(project);
        if p.needs_resolution && p.delivery_error == answer {
            return Vec::new();
        }
        p.needs_resolution = true;
        p.delivery_error = answer.clone();
        let event = events::needs_resolution(&self.record, project, &answer);
        vec![self.write(vec![event], Show::AtOnce)]
    }

    // ----- a person steps in -----

    /// A person recorded, by hand, what `project` did; phase 2 counts it as
    /// acknowledged and goes on. `Err` says why it is refused: only a participant
    /// phase 2 is delivering to now whose last delivery failed can be resolved, and
    /// only as the decided outcome.
    pub fn resolve(
        &mut self,
        project: &ProjectName,
        resolution: Resolution,
    ) -> Result<Vec<Effect>, String> {
        self.resolvable(project, resolution.committed)?;
        let event = events::resolved(&self.record, project, &resolution);
        let p = self.participant_mut(project);
        p.acknowledged = true;
        p.needs_resolution = false;
        p.delivery_error.clear();
        p.resolution = Some(resolution);
        let mut effects = vec![self.write(vec![event], Show::WhenDurable)];
        if !self.in_current_wave(project) {
            effects.extend(self.deliver_next_wave());
        }
        Ok(effects)
    }

    fn resolvable(&self, project: &ProjectName, committed: bool) -> Result<(), String> {
        let id = &self.record.id;
        if !self.delivering() {
            let state = self.record.state;
            return Err(format!(
                "{id} is {state:?}: only a transaction in phase 2 has participants to resolve"
            ));
        }
        let decision = self.record.state == TxState::Committing;
        if committed != decision {
            let (decided, only) = if decision {
                ("COMMIT", "committed")
            } else {
                ("ABORT", "aborted")
            };
            return Err(format!(
                "as: {id} decided {decided}, so {project} can only be resolved as {only}; the outcome is settled (revert {id} once it has finished to undo it)"
            ));
        }
        let p = self
            .participant(project)
            .ok_or_else(|| format!("participant: {project} takes no part in {id}"))?;
        if p.acknowledged {
            return Err(format!(
                "participant: {project} has acknowledged; nothing to resolve"
            ));
        }
        if !self.in_current_wave(project) {
            return Err(format!(
                "participant: {project} is not being delivered to yet (an earlier wave has not acknowledged)"
            ));
        }
        if p.delivery_error.is_empty() {
            return Err(format!(
                "participant: {project} answers normally (its delivery has not failed); wait for it"
            ));
        }
        Ok(())
    }

    /// A person asked to retry phase 2 now (an outage is over, a project was registered
    /// again): backoff starts over, waiting sends go now, and participants that need
    /// resolution are asked again. The request, with who asked, is durable before the
    /// caller is answered: an audited act a crash must not lose once it was confirmed.
    pub fn retry_now(&mut self, actor: &str) -> Vec<Effect> {
        if !self.delivering() {
            return Vec::new();
        }
        self.attempts.clear();
        let wave = self.current_wave().unwrap_or_default();
        let stuck: Vec<ProjectName> = self
            .unacknowledged(wave)
            .filter(|p| p.needs_resolution)
            .map(|p| p.project.clone())
            .collect();
        let mut sends = Vec::new();
        for project in stuck {
            self.participant_mut(&project).needs_resolution = false;
            let order = self.decision_order(self.participant(&project).expect("listed"));
            sends.push(Effect::Send {
                order: Box::new(order),
                after: Duration::ZERO,
            });
        }
        // Written once the participants asked again no longer need resolution: the
        // record made durable (and answered) is the one the retry left.
        let event = events::retry_requested(&self.record, actor);
        let mut effects = vec![self.write(vec![event], Show::WhenDurable), Effect::Hurry];
        effects.extend(sends);
        effects
    }

    /// The same order to the same participant again, after its next backoff delay.
    fn retry(&mut self, project: &ProjectName) -> Vec<Effect> {
        let attempt = self.attempts.entry(project.clone()).or_default();
        let after = self.backoff.delay(*attempt, self.record.id.as_str());
        *attempt = attempt.saturating_add(1);
        let p = self
            .participant(project)
            .expect("retries go to participants");
        let order = match self.record.state {
            TxState::Preparing => self.prepare_order(p),
            _ => self.decision_order(p),
        };
        vec![Effect::Send {
            order: Box::new(order),
            after,
        }]
    }

    // ----- the end -----

    /// Every participant acknowledged (or none was ever asked): COMMITTED or ABORTED,
    /// the terminal record and its terminal event in one write. (Also the end of a
    /// record found terminal without that write, from before this rule: its state is
    /// kept.)
    fn finish(&mut self) -> Effect {
        match self.record.state {
            TxState::Committing => {
                self.record.state = TxState::Committed;
                self.record.reason = format!("live as checkpoint {}", self.record.checkpoint);
            }
            TxState::Committed => {}
            _ => self.record.state = TxState::Aborted,
        }
        Effect::Finish {
            record: Box::new(self.record.clone()),
            events: vec![events::ended(&self.record)],
        }
    }

    // ----- restart -----

    /// The coordinator restarted and found this transaction unfinished. Undecided:
    /// ABORT (presumed abort), with an Abort to every participant Prepare may have
    /// reached. Decided: phase 2 resumes for everyone who has not acknowledged
    /// (deliveries are idempotent, so one that acknowledged just before the crash may be
    /// told again, harmlessly).
    ///
    /// Two states no write of this machine leaves, but data directories written before
    /// every effect carried its own record may hold: COMMITTING without a checkpoint
    /// (the decision's write never happened: it is made now, idempotently, before any
    /// Commit) and a terminal record without its end (its terminal event is written).
    pub fn restarted(&mut self) -> Vec<Effect> {
        match self.record.state {
            TxState::Pending | TxState::Preparing => self.presume_abort(),
            TxState::Verifying => self.resume_verifying(),
            TxState::Committing if self.record.checkpoint == 0 => self.decide_again(),
            TxState::Committing | TxState::Aborting => self.resume_phase2(),
            TxState::Committed | TxState::Aborted if self.record.finished_ms == 0 => {
                vec![self.finish()]
            }
            TxState::Committed | TxState::Aborted => Vec::new(),
        }
    }

    /// COMMITTING without its decision written: every vote was PREPARED (and every
    /// step passed) when it was set, so COMMIT is decided now, durably, before any
    /// Commit.
    fn decide_again(&mut self) -> Vec<Effect> {
        let found = events::recovered(
            &self.record,
            "found COMMITTING without its decision after a restart; deciding it now".into(),
        );
        let mut effects = self.decide_commit(self.record.reason.clone());
        if let Some(Effect::DecideCommit { events, .. }) = effects.last_mut() {
            events.insert(0, found);
        }
        effects
    }

    fn presume_abort(&mut self) -> Vec<Effect> {
        let was = self.record.state;
        self.record.state = TxState::Aborting;
        self.record.reason = PRESUMED_ABORT.to_string();
        let found = events::recovered(&self.record, format!("found {was:?} after a restart"));
        let decided = events::decided(&self.record, false);
        let mut effects = vec![self.write(vec![found, decided], Show::AtOnce)];
        effects.extend(self.deliver_next_wave());
        effects
    }

    fn resume_phase2(&mut self) -> Vec<Effect> {
        let acked = self
            .record
            .participants
            .iter()
            .filter(|p| p.acknowledged)
            .count();
        let total = self.record.participants.len();
        let message = format!("resuming phase 2 after a restart: {acked} of {total} acknowledged");
        let recovered = events::recovered(&self.record, message);
        let mut effects = vec![self.write(vec![recovered], Show::AtOnce)];
        effects.extend(self.deliver_next_wave());
        effects
    }

    // ----- helpers -----

    /// Writes the record as it is now with `events`: the effect carries its own copy,
    /// so what is written is this step's state, whatever later steps change.
    fn write(&self, events: Vec<pb::Event>, show: Show) -> Effect {
        Effect::Write {
            record: Box::new(self.record.clone()),
            events,
            show,
        }
    }

    /// Holds `event` for the next write and shows `project` as it is now.
    fn note(&self, event: pb::Event, project: &ProjectName) -> Effect {
        Effect::Note {
            events: vec![event],
            shown: self.participant(project).into_iter().cloned().collect(),
        }
    }

    fn participant(&self, project: &ProjectName) -> Option<&Participant> {
        self.record.participant(project)
    }

    fn participant_mut(&mut self, project: &ProjectName) -> &mut Participant {
        self.record
            .participant_mut(project)
            .expect("inputs name only participants of the transaction")
    }
}

/// The abort reason recorded for a transaction undecided at a restart.
pub const PRESUMED_ABORT: &str = "coordinator restarted before a decision (presumed abort)";

fn order(p: &Participant, message: Message) -> Order {
    Order {
        project: p.project.clone(),
        endpoint: p.endpoint.clone(),
        message,
    }
}

/// What a participant asking GetDecision hears about its part `project`: the durable
/// decision, but only in its turn (PRODUCT.md: phase 2 goes in dependency waves). A
/// parent asking before every child acknowledged COMMIT hears "undecided, ask again",
/// so it can never go live before its children by asking instead of waiting; the same
/// for ABORT, parents first. A caller that names no project hears the decision as it
/// is; one that takes no part, or asks from another environment, hears ABORT (see
/// [`Asker`]).
pub fn decision_for(record: &TxRecord, asker: Asker<'_>) -> Decision {
    if !asker.may_hold(record) {
        return Decision::Abort;
    }
    let decided = match record.state {
        TxState::Pending | TxState::Preparing | TxState::Verifying => {
            return Decision::Undecided;
        }
        TxState::Committed => return Decision::Commit,
        TxState::Aborted => return Decision::Abort,
        TxState::Committing => Decision::Commit,
        TxState::Aborting => Decision::Abort,
    };
    let Some(project) = asker.project else {
        return decided;
    };
    if in_turn(record, project) {
        decided
    } else {
        Decision::Undecided
    }
}

/// Who asks GetDecision: the asking participant's project and environment, as far as
/// the request names them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asker<'a> {
    /// The asking participant's project.
    pub project: Option<&'a ProjectName>,
    /// Its environment.
    pub environment: Option<&'a Environment>,
}

impl<'a> Asker<'a> {
    /// A participant of `project` (in whatever environment).
    pub fn project(project: &'a ProjectName) -> Self {
        Self {
            project: Some(project),
            environment: None,
        }
    }

    /// Whether `record` can be the transaction the asker prepared under its id: it is
    /// of the asker's environment and the asker takes part in it. Another one holds an
    /// id given again after a crash lost the admission the asker prepared, which was
    /// never recorded, so its answer is ABORT (presumed abort), never this one's.
    fn may_hold(&self, record: &TxRecord) -> bool {
        let environment = self.environment.is_none_or(|e| *e == record.environment);
        let project = self.project.is_none_or(|p| record.participant(p).is_some());
        environment && project
    }
}

/// Whether every wave delivered before `project`'s has acknowledged.
fn in_turn(record: &TxRecord, project: &ProjectName) -> bool {
    let mut waves = record.waves.clone();
    if record.state == TxState::Aborting {
        waves.reverse();
    }
    let earlier = waves.iter().take_while(|w| !w.contains(project)).flatten();
    let acknowledged = |p: &ProjectName| record.participant(p).is_none_or(|p| p.acknowledged);
    earlier.into_iter().all(acknowledged)
}
