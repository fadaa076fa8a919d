//! The thin driver of one transaction: it feeds inputs to the state machine
//! ([`crate::txn::Transaction`]) and carries out the effects it returns, in order,
//! through the two ports ([`crate::ports`]). It decides nothing: every protocol rule is
//! in the machine. Each unfinished transaction has one driver task.
//!
//! Inputs come from the queue (its turn), from people (abort, resolve, retry: a
//! [`Command`]), from a timer (the phase 1 deadline) and from the network (votes,
//! acknowledgements, failures). Effects are carried out one after the other; a write the machine wants
//! durable before the next step is awaited.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use futures::{StreamExt, stream::FuturesUnordered};
use lockstep::{names::ProjectName, orders::VoteAnswer, pb, retry::Failure};
use tokio::{
    sync::{Notify, mpsc, oneshot},
    time::Instant,
};

use crate::{
    crash,
    error::Result,
    model::{Resolution, StepKind, StepRun, TxState},
    ports::{Participants, Pending, Probe, TxJournal},
    txn::{
        Effect, Message, Order, Show, Transaction, Turn,
        verify::{Outcome, Report},
    },
};

/// The signals a driver listens to besides the network.
pub struct Signals {
    /// Fired when the queue gives the transaction its projects.
    pub start: Option<oneshot::Receiver<Turn>>,
    /// What people ask of the transaction (abort, resolve, retry).
    pub commands: mpsc::UnboundedReceiver<Command>,
}

/// What a person asks of a transaction, through the registry.
pub enum Command {
    /// AbortRelease: abort if still undecided.
    Abort {
        /// Why.
        reason: String,
        /// Who asked.
        actor: String,
    },
    /// ResolveParticipant: send `project` its decision once more, then record
    /// `resolution` (its `status` filled in with the answer) unless refused.
    Resolve {
        /// The participant.
        project: ProjectName,
        /// What to record.
        resolution: Resolution,
        /// Only check.
        dry_run: bool,
        /// The outcome, sent once what was recorded is durable.
        reply: oneshot::Sender<std::result::Result<Resolved, String>>,
    },
    /// RetryDelivery: every delivery now.
    Retry {
        /// Who asked.
        actor: String,
        /// Answered once the request is in the log.
        reply: oneshot::Sender<()>,
    },
    /// ReportVerify, Approve, Reject: an outcome for the running verify step.
    Verify {
        /// What was said.
        call: VerifyCall,
        /// Answered once what it changed is durable (`Err`: refused, and why).
        reply: oneshot::Sender<std::result::Result<(), String>>,
    },
}

/// What a runner or a person says about a transaction in VERIFYING.
pub enum VerifyCall {
    /// A test runner on an external step.
    Report {
        /// The step.
        step: String,
        /// Started, passed or failed.
        outcome: Outcome,
        /// Who, why, where.
        report: Report,
    },
    /// A person approves the current approval step.
    Approve(Report),
    /// A person rejects the transaction.
    Reject(Report),
}

/// What a resolution found and did.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The participant's answer to the decision sent just before.
    pub status: String,
    /// Whether it was recorded (not for a dry run).
    pub applied: bool,
}

/// What a driver works through.
#[derive(Clone)]
pub struct Ports {
    /// The journal.
    pub journal: Arc<dyn TxJournal>,
    /// The participant network.
    pub net: Arc<dyn Participants>,
    /// The http verify steps' requests.
    pub probe: Arc<dyn Probe>,
    /// The metrics the driver moves itself (failed deliveries).
    pub timings: crate::timings::Timings,
}

/// A participant's answer to an order.
enum Reply {
    Vote(ProjectName, Result<VoteAnswer, Failure>),
    Ack(ProjectName, Result<(), Failure>),
}

/// One input to the machine.
enum Input {
    Turn(Turn),
    Command(Command),
    Deadline,
    Reply(Reply),
    /// An http verify step's answer.
    Probed(String, std::result::Result<u16, String>),
}

/// An answer to a person, sent once the effects before it are carried out.
type Answer = Box<dyn FnOnce() + Send>;

/// Drives a transaction from wherever it is to COMMITTED or ABORTED, starting with
/// `first` (the effects of how it was accepted or recovered).
pub async fn run(machine: Transaction, first: Vec<Effect>, signals: Signals, ports: Ports) {
    let id = machine.record().id.clone();
    // A queued transaction's wait, as a span that ends when its turn comes.
    let queued = signals
        .start
        .is_some()
        .then(|| tracing::info_span!("queue", otel.name = "queue wait"));
    let mut driver = Driver {
        queued,
        machine,
        ports,
        signals,
        prepares: FuturesUnordered::new(),
        deliveries: FuturesUnordered::new(),
        probes: FuturesUnordered::new(),
        deadline: None,
        hurry: Arc::new(Notify::new()),
        answers: Vec::new(),
        awaited: Vec::new(),
    };
    if let Err(e) = driver.run(first).await {
        // Only a journal failure ends a driver early; the process then stops and
        // recovery resumes the transaction from what is durable.
        tracing::error!(tx = %id, "driver stopped: {e}");
    }
}

struct Driver {
    /// The queue wait's span while the transaction waits for its turn.
    queued: Option<tracing::Span>,
    machine: Transaction,
    ports: Ports,
    signals: Signals,
    prepares: FuturesUnordered<Pending<Reply>>,
    deliveries: FuturesUnordered<Pending<Reply>>,
    probes: FuturesUnordered<Pending<(String, std::result::Result<u16, String>)>>,
    deadline: Option<Instant>,
    /// Ends every backoff wait at once (a `Notify` wakes its waiters in the order they
    /// began to wait; a `watch` would wake them in a random order, and the calls would
    /// go out in another order on every run).
    hurry: Arc<Notify>,
    answers: Vec<Answer>,
    /// A span per external or approval step the transaction waits on, from its trigger
    /// to its outcome (an http step's span is its request's).
    awaited: Vec<(String, tracing::Span)>,
}

impl Driver {
    async fn run(&mut self, first: Vec<Effect>) -> Result<()> {
        let mut effects = VecDeque::from(first);
        loop {
            while let Some(effect) = effects.pop_front() {
                match self.carry_out(effect).await? {
                    // What follows an effect comes before the effects after it.
                    Next::Go(more) => more.into_iter().rev().for_each(|e| effects.push_front(e)),
                    Next::Done => {
                        self.answer();
                        return Ok(());
                    }
                }
            }
            self.answer();
            let input = self.next_input().await;
            effects.extend(self.feed(input).await);
            self.trace_awaited_steps();
        }
    }

    /// Opens a span for each external or approval step now running, and ends the span
    /// of each one that has its outcome. A step is waited on only while the transaction
    /// is VERIFYING: once it is decided (an abort while a person was asked) the step's
    /// span ends with outcome `abandoned`, and a transaction resumed after a restart
    /// opens none.
    fn trace_awaited_steps(&mut self) {
        let record = self.machine.record();
        let verifying = record.state == TxState::Verifying;
        let waited_on =
            |run: &&StepRun| matches!(run.step.kind, StepKind::External | StepKind::Approval);
        for run in record.steps.iter().filter(waited_on) {
            let known = self
                .awaited
                .iter()
                .position(|(name, _)| *name == run.step.name);
            match (run.status.is_running() && verifying, known) {
                (true, None) => {
                    let name = format!("verify {}", run.step.name);
                    let span = tracing::info_span!("verify", otel.name = %name, outcome = tracing::field::Empty);
                    self.awaited.push((run.step.name.clone(), span));
                }
                (false, Some(i)) => {
                    let (_, span) = self.awaited.swap_remove(i);
                    let outcome = match run.status.is_running() {
                        true => "abandoned".to_string(),
                        false => format!("{:?}", run.status).to_lowercase(),
                    };
                    span.record("outcome", outcome);
                }
                _ => {}
            }
        }
    }

    fn answer(&mut self) {
        self.answers.drain(..).for_each(|answer| answer());
    }

    /// Hands one input to the machine.
    async fn feed(&mut self, input: Input) -> Vec<Effect> {
        match input {
            Input::Turn(turn) => {
                self.queued = None;
                self.machine.start(turn)
            }
            Input::Command(command) => self.command(command).await,
            Input::Deadline => {
                self.deadline = None;
                self.machine.deadline()
            }
            Input::Reply(reply) => self.reply(reply),
            Input::Probed(step, status) => self.machine.probed(&step, status),
        }
    }

    fn reply(&mut self, reply: Reply) -> Vec<Effect> {
        match reply {
            Reply::Vote(project, answer) => self.machine.vote(&project, answer),
            Reply::Ack(project, Ok(())) => self.acknowledged(&project),
            Reply::Ack(project, Err(failure)) => {
                let effects = self.machine.delivery_failed(&project, failure);
                // A retry is a call the machine makes again (not an answer it ignores,
                // nor a final one left for a person).
                if effects.iter().any(|e| matches!(e, Effect::Send { .. })) {
                    let environment = self.machine.record().environment.as_str();
                    self.ports
                        .timings
                        .delivery_failed(environment, project.as_str());
                }
                effects
            }
        }
    }

    async fn command(&mut self, command: Command) -> Vec<Effect> {
        match command {
            Command::Abort { reason, actor } => self.machine.abort_requested(reason, &actor),
            Command::Retry { actor, reply } => {
                self.answers.push(Box::new(move || {
                    let _ = reply.send(());
                }));
                self.machine.retry_now(&actor)
            }
            Command::Resolve {
                project,
                resolution,
                dry_run,
                reply,
            } => self.resolve(project, resolution, dry_run, reply).await,
            Command::Verify { call, reply } => {
                let (effects, answer) = match self.verify(call) {
                    Ok(effects) => (effects, Ok(())),
                    Err(refusal) => (Vec::new(), Err(refusal)),
                };
                self.answers.push(Box::new(move || {
                    let _ = reply.send(answer);
                }));
                effects
            }
        }
    }

    fn verify(&mut self, call: VerifyCall) -> std::result::Result<Vec<Effect>, String> {
        match call {
            VerifyCall::Report {
                step,
                outcome,
                report,
            } => self.machine.report(&step, outcome, report),
            VerifyCall::Approve(report) => self.machine.approve(report),
            VerifyCall::Reject(report) => self.machine.reject(report),
        }
    }

    /// Sends `project` its decision once more (its answer is fed in as any reply),
    /// then asks the machine to record the resolution, or only whether it would.
    async fn resolve(
        &mut self,
        project: ProjectName,
        mut resolution: Resolution,
        dry_run: bool,
        reply: oneshot::Sender<std::result::Result<Resolved, String>>,
    ) -> Vec<Effect> {
        let (mut effects, status) = match self.machine.pending_order(&project) {
            Some(order) => {
                let answer = self.call(order, Duration::ZERO).await;
                let status = match &answer {
                    Reply::Ack(_, Err(failure)) => failure.message().to_string(),
                    _ => "acknowledged".to_string(),
                };
                (self.reply(answer), status)
            }
            None => (
                Vec::new(),
                "not asked (it is not being delivered to)".into(),
            ),
        };
        resolution.status = status.clone();
        let outcome = if dry_run {
            let mut trial = self.machine.clone();
            trial.resolve(&project, resolution).map(|_| Vec::new())
        } else {
            self.machine.resolve(&project, resolution)
        };
        let answer = outcome.map(|more| {
            effects.extend(more);
            Resolved {
                status,
                applied: !dry_run,
            }
        });
        self.answers.push(Box::new(move || {
            let _ = reply.send(answer);
        }));
        effects
    }

    fn acknowledged(&mut self, project: &ProjectName) -> Vec<Effect> {
        let effects = self.machine.acknowledged(project);
        let record = self.machine.record();
        let acked = record
            .participants
            .iter()
            .filter(|p| p.acknowledged)
            .count();
        if record.state == TxState::Committing && acked == 1 && !effects.is_empty() {
            crash::point(crash::AFTER_FIRST_COMMIT_ACK);
        }
        effects
    }

    /// Waits for the next input: the turn, a reply, a probe, the deadline or a person's
    /// command. Biased, in that order, so that of inputs ready together the same one is
    /// taken on every run (tokio's default picks at random). Replies and probes are few
    /// (one per participant or step, retried only after a backoff) and the deadline
    /// fires once, so none of them can hold the others back for long; commands come
    /// last, since callers could send them without end and put the deadline off.
    async fn next_input(&mut self) -> Input {
        let deadline = self.deadline;
        tokio::select! {
            biased;
            turn = wait_turn(&mut self.signals.start) => Input::Turn(turn),
            Some(reply) = self.prepares.next() => Input::Reply(reply),
            Some(reply) = self.deliveries.next() => Input::Reply(reply),
            Some((step, status)) = self.probes.next() => Input::Probed(step, status),
            _ = sleep_until(deadline) => Input::Deadline,
            Some(command) = self.signals.commands.recv() => Input::Command(command),
        }
    }

    /// Carries out one effect; returns what the machine says next (after a durable
    /// COMMIT), or that the transaction ended.
    async fn carry_out(&mut self, effect: Effect) -> Result<Next> {
        match effect {
            Effect::Send { order, after } => self.send(*order, after),
            Effect::StartDeadline(after) => self.deadline = Some(Instant::now() + after),
            Effect::Hurry => self.hurry.notify_waiters(),
            Effect::StopPreparing => {
                crash::point(crash::BEFORE_DECISION);
                self.prepares.clear();
                self.probes.clear();
                self.deadline = None;
            }
            Effect::Probe { step, url } => {
                let span = tracing::info_span!("verify", otel.name = %format!("verify {step}"));
                let request = span.in_scope(|| self.ports.probe.get(&url));
                let probe = async move { (step, request.await) };
                self.probes
                    .push(Box::pin(tracing::Instrument::instrument(probe, span)));
            }
            // Every write stores the record its effect carries, as the machine made it
            // then, never the machine's state now (docs/architecture.md, "Effects
            // carry their state").
            Effect::DecideCommit { record, events } => {
                let decided = self.journal().decide_commit(&record, events);
                let span = tracing::info_span!("decision", otel.name = "COMMIT decision (durable)");
                let revision = tracing::Instrument::instrument(decided, span).await?;
                tracing::debug!(tx = %record.id, "COMMIT durable");
                crash::point(crash::AFTER_COMMIT_DECISION);
                return Ok(Next::Go(self.machine.commit_durable(revision)));
            }
            Effect::Finish { record, events } => {
                self.journal().finish(&record, events).await?;
                return Ok(Next::Done);
            }
            Effect::Note { events, shown } => {
                log_retries(&self.machine.record().id, &events);
                self.journal()
                    .note(&self.machine.record().id, &shown, events);
            }
            Effect::Write {
                record,
                events,
                show,
            } => {
                let written = self.journal().write(&record, events, show == Show::AtOnce);
                if show == Show::WhenDurable {
                    written.await?;
                }
            }
        }
        Ok(Next::Go(Vec::new()))
    }

    fn journal(&self) -> Arc<dyn TxJournal> {
        self.ports.journal.clone()
    }

    /// Starts a call; its reply becomes an input.
    fn send(&mut self, order: Order, after: Duration) {
        let prepare = matches!(order.message, Message::Prepare(_));
        let call = self.call(order, after);
        if prepare {
            self.prepares.push(call);
        } else {
            self.deliveries.push(call);
        }
    }

    /// The call of `order` after `after` (or as soon as [`Effect::Hurry`] comes). The
    /// endpoint is read when the call is made, not when the transaction was planned:
    /// an agent that moved and was registered again gets its Commit or Abort at its new
    /// address.
    fn call(&self, order: Order, after: Duration) -> Pending<Reply> {
        let (net, journal) = (self.ports.net.clone(), self.journal());
        let environment = self.machine.record().environment.clone();
        // Made now, so a Hurry from here on ends the wait even before it is polled.
        let hurry = self.hurry.clone().notified_owned();
        let Order {
            project,
            endpoint,
            message,
        } = order;
        Box::pin(async move {
            // No timer for a call due now: tokio rounds a deadline up to its next
            // millisecond tick, so even a zero sleep would hold the call up to 1 ms.
            if !after.is_zero() {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep(after) => {}
                    () = hurry => {}
                }
            }
            let endpoint = journal.endpoint(&environment, &project).unwrap_or(endpoint);
            match message {
                Message::Prepare(o) => Reply::Vote(project, net.prepare(&endpoint, o).await),
                Message::Commit(o) => Reply::Ack(project, net.commit(&endpoint, o).await),
                Message::Abort(o) => Reply::Ack(project, net.abort(&endpoint, o).await),
            }
        })
    }
}

/// What follows an effect.
enum Next {
    Go(Vec<Effect>),
    Done,
}

/// Resolves when the queue gives the turn (once), never otherwise.
async fn wait_turn(start: &mut Option<oneshot::Receiver<Turn>>) -> Turn {
    let Some(receiver) = start.as_mut() else {
        return std::future::pending().await;
    };
    let turn = receiver
        .await
        .unwrap_or(Turn::Refused("coordinator shutting down".into()));
    *start = None;
    turn
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Delivery failures go to the process log too (once per new error: the machine notes
/// a retry only when its error changes).
fn log_retries(tx: &lockstep::names::TxId, events: &[pb::Event]) {
    for e in events {
        if e.kind == pb::EventKind::DeliveryRetry as i32 {
            tracing::warn!(%tx, "{}", e.message);
        }
    }
}
