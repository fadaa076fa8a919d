//! The participant side of two-phase commit, around a [`Deployer`]. This is what makes
//! an agent safe to put in a composite release:
//!
//! - It votes PREPARED only after the staged state is recorded with fsync.
//! - After voting PREPARED it never decides alone: it waits for Commit or Abort, and
//!   asks the coordinator ([`DecisionSource`]) when they do not come, and after a
//!   restart, until it gets an answer.
//! - Prepare, Commit and Abort are idempotent per transaction id: a repeated call gets
//!   the same answer and does the work at most once.
//! - An Abort that arrives before (or during) the Prepare it cancels wins: the
//!   transaction is recorded as aborted and a late Prepare is refused.
//! - One transaction at a time: a Prepare while another transaction is prepared here is
//!   refused, and so is one whose expected live version is not what is live here.
//!
//! # Layout
//! - [`prepare`]: phase 1 (staging in a task of its own, the durable vote).
//! - [`decide`]: Commit and Abort.
//! - [`decisions`]: asking for the decision of a PREPARED vote that waits too long.
//! - [`recover`]: what a restart does to what the ledger holds.
//! - [`report`]: GetStatus and the read-only Preview of dry runs.

mod decide;
mod decisions;
mod prepare;
mod recover;
mod report;
mod term;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use lockstep::{
    names::{ProjectName, TxId},
    orders::{PrepareOrder, Staging, VoteAnswer},
};
use lockstep_store::{Durability, StoreError};
use tokio::sync::watch;

pub use decisions::{Answer, DecisionSource, Decisions, Pending, Question};

use crate::{
    deployer::{Change, DeployError, Deployer, Staged},
    ledger::{Entry, Ledger, Phase},
    schema::{Schema, SchemaStaged},
};

/// Crash point: staging finished (migrations committed in reversible mode) and the
/// PREPARED record is not written yet.
pub const CRASH_BEFORE_PREPARED_RECORD: &str = "agent-before-prepared-record";

/// Why a Commit or Abort could not be carried out (the coordinator retries).
#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    /// The participant's own store failed.
    #[error("participant storage: {0}")]
    Store(#[from] StoreError),
    /// Going live or undoing failed; it will be retried.
    #[error("{0}")]
    Deploy(#[from] DeployError),
    /// The call contradicts what this participant recorded (e.g. Commit of a transaction
    /// it aborted): the coordinator and participant disagree, which needs a human.
    #[error("{0}")]
    Conflict(String),
    /// The call is malformed or meant for another project.
    #[error("{0}")]
    Invalid(String),
    /// The order comes from a coordinator whose term is older than one seen here: it
    /// no longer leads, and its orders are not carried out.
    #[error(
        "this order comes with coordinator term {term}, older than term {seen} already seen here: its sender no longer leads; refused"
    )]
    StaleTerm {
        /// The order's term.
        term: u64,
        /// The highest seen.
        seen: u64,
    },
}

impl From<ParticipantError> for tonic::Status {
    fn from(e: ParticipantError) -> Self {
        match e {
            ParticipantError::Store(e) => {
                tonic::Status::unavailable(format!("participant storage: {e}"))
            }
            ParticipantError::Deploy(e) => tonic::Status::unavailable(e.0),
            ParticipantError::Conflict(m) => tonic::Status::failed_precondition(m),
            ParticipantError::Invalid(m) => tonic::Status::invalid_argument(m),
            e @ ParticipantError::StaleTerm { .. } => {
                tonic::Status::failed_precondition(e.to_string())
            }
        }
    }
}

/// A Prepare running now: its cancel switch and where its vote will appear.
struct InFlight {
    cancel: watch::Sender<bool>,
    vote: watch::Receiver<Option<VoteAnswer>>,
}

/// The protocol side of one project's agent. Cheap to clone.
pub struct Participant<D> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for Participant<D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<D> {
    project: String,
    environment: String,
    deployer: D,
    schema: Option<Schema>,
    ledger: Ledger,
    decisions: Option<Decisions>,
    /// Serializes every change of protocol state on this participant.
    lock: tokio::sync::Mutex<()>,
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// The highest coordinator term seen (`None`: not read from the ledger yet).
    term: tokio::sync::Mutex<Option<u64>>,
    /// PREPARED votes that wait for their decision.
    waiting: decisions::Waiting,
}

impl<D: Deployer> Participant<D> {
    /// Its ledger (the metrics count what it holds staged).
    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// A participant for `project` in `environment`, recording into `ledger`, with
    /// optional schema migrations staged alongside the deployer's changes, asking
    /// `decisions` (when given) for the decision of a PREPARED vote that waits.
    pub fn new(
        project: String,
        environment: String,
        deployer: D,
        schema: Option<Schema>,
        ledger: Ledger,
        decisions: Option<Decisions>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                project,
                environment,
                deployer,
                schema,
                ledger,
                decisions,
                lock: tokio::sync::Mutex::new(()),
                in_flight: Mutex::new(HashMap::new()),
                term: tokio::sync::Mutex::new(None),
                waiting: decisions::Waiting::default(),
            }),
        }
    }

    /// The project served.
    pub fn project(&self) -> &str {
        &self.inner.project
    }

    /// Whether `tx` is prepared here and waits for its decision (from the ledger's open
    /// records, in memory: every prepared transaction asks this once its wait for the
    /// decision is over, nearly always after the decision came).
    pub fn is_prepared(&self, tx: &TxId) -> bool {
        self.inner.ledger.open_phase(tx.as_str()) == Some(Phase::Prepared)
    }

    /// Queues a record (its order among records, and among the open transactions, is
    /// fixed now); the future resolves once it is written.
    fn record(
        &self,
        tx: &str,
        entry: &Entry,
        durability: Durability,
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send + 'static {
        let written = self.inner.ledger.put(tx, entry, durability);
        async move { Ok(written.await?) }
    }

    fn open(&self) -> Vec<String> {
        self.inner.ledger.open_ids()
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, InFlight>> {
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The version live here as the wire shows it (empty when nothing is live).
    async fn live(&self) -> Result<String, ParticipantError> {
        let live = self.inner.deployer.live_version().await?;
        Ok(live.unwrap_or_default())
    }

    fn check_project(&self, project: Option<&ProjectName>) -> Result<(), ParticipantError> {
        match project {
            Some(p) if p.as_str() != self.inner.project => Err(ParticipantError::Invalid(format!(
                "project: this agent serves project {}, not {p}",
                self.inner.project
            ))),
            _ => Ok(()),
        }
    }

    /// Reverse order of staging, every part tried even when one fails (the first
    /// failure is returned; each part is idempotent, and the whole is retried). When
    /// `schema` is `Some` (the database may hold something): first a `postgres-2pc`
    /// prepared transaction is rolled back, since it holds its locks until then and
    /// ending it waits for nothing, so no failing hook keeps the tables locked; then
    /// the deployer's change (a green instance stops before a `reversible` inverse
    /// takes its locks); then the schema, undone from what the database itself
    /// recorded, so this also works when the agent crashed before it could note what
    /// it staged (what it noted, `Some(Some(_))` with its PREPARED vote, is held
    /// against the database).
    async fn undo_all(
        &self,
        change: &Change,
        staged: Option<&Staged>,
        schema: Option<Option<&SchemaStaged>>,
    ) -> Result<(), ParticipantError> {
        let tx = &change.transaction_id;
        let db = self.inner.schema.as_ref().zip(schema);
        let ended = match &db {
            Some((db, _)) => db.rollback_prepared(tx).await,
            None => Ok(false),
        };
        let deployer = self.inner.deployer.undo(change, staged).await;
        let undone = match (&db, &ended) {
            (Some((db, noted)), Ok(false)) => db.abort(tx, *noted).await,
            _ => Ok(()),
        };
        ended?;
        deployer?;
        undone?;
        Ok(())
    }
}

/// The change a Prepare order asks for, as the deployer and the ledger see it.
fn change_of(o: &PrepareOrder) -> Change {
    Change {
        transaction_id: o.tx.to_string(),
        environment: o.environment.to_string(),
        project: o.project.to_string(),
        version: o.version.to_string(),
        from_version: o
            .from_version
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default(),
        artifact: o.artifact.clone(),
        metadata: o.metadata.clone(),
        restore: o.restore,
        moving_back: o.restore || o.action == Some(lockstep::orders::Action::Downgrade),
        target_schema: o.target_schema.as_ref().map(|s| s.version),
    }
}

/// The same answer as the first time.
fn answer_again(entry: &Entry) -> VoteAnswer {
    match entry.phase {
        Phase::Prepared | Phase::Committed => {
            prepared(entry.schema.as_ref(), entry.staged.as_ref())
        }
        Phase::Refused => VoteAnswer::Refused(entry.reason.clone()),
        Phase::Aborted => VoteAnswer::Refused(format!("already aborted here: {}", entry.reason)),
        Phase::Staging => VoteAnswer::Refused(
            "staging was interrupted by a restart (undone, or to be undone: never voted on)".into(),
        ),
    }
}

fn prepared(schema: Option<&SchemaStaged>, staged: Option<&Staged>) -> VoteAnswer {
    VoteAnswer::Prepared(Staging {
        from_schema: schema.map(|s| s.from.domain()),
        to_schema: schema.map(|s| s.to.domain()),
        migrations: schema.map(|s| s.files.clone()).unwrap_or_default(),
        test_uri: staged.map(|s| s.test_uri.clone()).unwrap_or_default(),
        artifact: staged.map(|s| s.artifact.clone()).unwrap_or_default(),
    })
}

/// Whether two coordinator incarnations are both known and differ: then the orders
/// come from a coordinator that did not make the recorded transaction.
fn other_incarnation(recorded: &str, asked: &str) -> bool {
    !recorded.is_empty() && !asked.is_empty() && recorded != asked
}

fn shown(version: &str) -> &str {
    if version.is_empty() {
        "(nothing)"
    } else {
        version
    }
}

#[cfg(test)]
mod tests;
