//! Asking for a decision. A participant that voted PREPARED never decides alone; it
//! asks its [`DecisionSource`] (the coordinator's GetDecision, in `crate::inquiry`):
//! - after its own restart, at once, for every transaction it holds PREPARED;
//! - while a PREPARED vote waits longer than [`Decisions::ask_after`] for Commit or
//!   Abort, because the coordinator may have lost an undecided transaction in a crash
//!   (presumed abort: it then answers ABORT) and will never send anything for it.
//!
//! It keeps asking with capped backoff until the answer is COMMIT or ABORT, and stops as
//! soon as the transaction is decided here by any path: Commit and Abort are idempotent.
//!
//! Votes that wait are noted with the time they were cast ([`Waiting`]); one task per
//! participant sweeps them every quarter of `ask_after` while any wait, so a vote is
//! asked about after `ask_after` to 1.25 × `ask_after`. A task and a timer per vote did
//! the same at a cost on every vote (and, at a thousand votes a second with the
//! default 10 s, held ten thousand sleeping tasks), though nearly every vote is decided
//! long before.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lockstep::{
    names::{Environment, ProjectName, TxId},
    orders::Decision,
    retry::Backoff,
};

use tokio::{sync::Notify, time::Instant};

use super::Participant;
use crate::{deployer::Deployer, ledger::Phase};

/// A boxed future a [`DecisionSource`] returns.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a participant asks about one transaction it holds PREPARED.
pub struct Question {
    /// The transaction.
    pub tx: TxId,
    /// This participant's project: the decision for its part.
    pub project: ProjectName,
    /// This participant's environment.
    pub environment: Environment,
    /// The coordinator incarnation recorded with the Prepare ("" when unknown).
    pub incarnation: String,
    /// The highest coordinator term seen here: an answer given in a lower one comes
    /// from a deposed leader, which may not know a transaction its successor admitted.
    pub term: u64,
}

/// A coordinator's answer, with the term it was given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// COMMIT, ABORT or UNDECIDED.
    pub decision: Decision,
    /// The answering coordinator's term (0 for a single coordinator; `None` from a
    /// coordinator older than stop 60, which does not say).
    pub term: Option<u64>,
}

/// Where a participant learns the coordinator's decision.
///
/// # To ensure correctness
/// - `Decision::Undecided` and errors mean "ask again later", never "abort".
/// - An answer whose term is lower than `Question::term` is not one to act on: the
///   participant refuses it as it refuses a stale order. A source asking several
///   instances should pass over such an answer and ask the next.
pub trait DecisionSource: Send + Sync + 'static {
    /// The durable decision for the `question`'s transaction.
    fn decision(&self, question: &Question) -> Pending<Result<Answer, String>>;
}

/// Where and when to ask for decisions.
#[derive(Clone)]
pub struct Decisions {
    /// Who to ask.
    pub source: Arc<dyn DecisionSource>,
    /// How long a PREPARED vote waits for Commit or Abort before asking.
    pub ask_after: Duration,
}

/// The asking schedule: from 100 ms, doubling to 5 s.
const ASKING: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// The shortest sweep period, for tests that wait only milliseconds.
const MIN_SWEEP: Duration = Duration::from_millis(10);

/// The PREPARED votes that wait for their decision, with when each was cast (ordered,
/// so overdue votes are asked about in the same order on every run).
#[derive(Default)]
pub(super) struct Waiting {
    since: Mutex<BTreeMap<String, Instant>>,
    /// Whether the sweeping task runs (started at the first vote).
    sweeping: AtomicBool,
    /// Wakes the sweeper when a vote is noted.
    noted: Notify,
}

impl Waiting {
    fn since(&self) -> MutexGuard<'_, BTreeMap<String, Instant>> {
        self.since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<D: Deployer> Participant<D> {
    /// After a restart: resolves every prepared transaction in the background, asking
    /// at once. Returns immediately.
    pub fn resolve_prepared(&self, prepared: Vec<TxId>) {
        for tx in prepared {
            self.ask(tx, Duration::ZERO);
        }
    }

    /// A PREPARED vote just left: ask for its decision if none comes in time.
    pub(super) fn ask_later(&self, tx: &str) {
        let Some(ask_after) = self.inner.decisions.as_ref().map(|d| d.ask_after) else {
            return;
        };
        let waiting = &self.inner.waiting;
        waiting.since().insert(tx.to_string(), Instant::now());
        waiting.noted.notify_one();
        if !waiting.sweeping.swap(true, Ordering::Relaxed) {
            let this = self.clone();
            tokio::spawn(async move { this.sweep(ask_after).await });
        }
    }

    /// While votes wait, every quarter of `ask_after`: asks about each that has waited
    /// `ask_after`, and forgets those decided meanwhile.
    async fn sweep(&self, ask_after: Duration) {
        let period = (ask_after / 4).max(MIN_SWEEP);
        loop {
            if self.inner.waiting.since().is_empty() {
                self.inner.waiting.noted.notified().await;
            }
            tokio::time::sleep(period).await;
            for tx in self.overdue(ask_after) {
                self.ask(tx, Duration::ZERO);
            }
        }
    }

    /// The votes that have waited `ask_after` and still wait, taken from those noted;
    /// the decided ones are dropped.
    fn overdue(&self, ask_after: Duration) -> Vec<TxId> {
        let ledger = &self.inner.ledger;
        let mut since = self.inner.waiting.since();
        since.retain(|tx, _| ledger.open_phase(tx) == Some(Phase::Prepared));
        let due: Vec<String> = since
            .iter()
            .filter(|(_, cast)| cast.elapsed() >= ask_after)
            .map(|(tx, _)| tx.clone())
            .collect();
        for tx in &due {
            since.remove(tx);
        }
        let ids = due.iter().map(|tx| TxId::parse("transaction_id", tx));
        ids.filter_map(Result::ok).collect()
    }

    /// Asks for `tx`'s decision after `first_delay`, and again until it is decided here.
    fn ask(&self, tx: TxId, first_delay: Duration) {
        let Some(decisions) = self.inner.decisions.clone() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(first_delay).await;
            this.ask_until_decided(decisions.source.as_ref(), tx).await;
        });
    }

    async fn ask_until_decided(&self, source: &dyn DecisionSource, tx: TxId) {
        let Ok(project) = ProjectName::parse("project", self.project()) else {
            return;
        };
        let Ok(environment) = Environment::parse("environment", &self.inner.environment) else {
            return;
        };
        let mut attempt = 0;
        // Read only while it waits: a transaction decided meanwhile (nearly all of
        // them) costs no read.
        while self.is_prepared(&tx) {
            let incarnation = self.inner.ledger.open_incarnation(tx.as_str());
            let question = Question {
                tx: tx.clone(),
                project: project.clone(),
                environment: environment.clone(),
                incarnation: incarnation.unwrap_or_default(),
                term: self.highest_term().await.unwrap_or(0),
            };
            match source.decision(&question).await {
                Ok(answer) => self.act_on(&tx, answer).await,
                Err(e) => tracing::warn!(%tx, "asking the coordinator for the decision: {e}"),
            }
            tokio::time::sleep(ASKING.delay(attempt, tx.as_str())).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// Applies a decided `answer`, unless it comes from an older term than one seen
    /// here (as an order from a deposed leader would be refused).
    async fn act_on(&self, tx: &TxId, answer: Answer) {
        let admitted = match answer.term {
            Some(term) => self.admit_term(term).await,
            None => Ok(()),
        };
        if let Err(e) = admitted {
            tracing::warn!(%tx, ?answer.decision, "a decision answer passed over: {e}");
            return;
        }
        match answer.decision {
            Decision::Commit => self.apply_asked(tx, true).await,
            Decision::Abort => self.apply_asked(tx, false).await,
            Decision::Undecided => {}
        }
    }

    async fn apply_asked(&self, tx: &TxId, commit: bool) {
        match self.apply_decision(tx, commit).await {
            Ok(what) => {
                tracing::info!(%tx, "{what} by the coordinator's decision (asked with GetDecision)")
            }
            Err(e) => tracing::warn!(%tx, "applying the decision failed, retrying: {e}"),
        }
    }
}
