//! The participant side of two-phase commit, around a [`Deployer`]. This is what makes
//! an agent safe to put in a composite release:
//!
//! - It votes PREPARED only after the staged state is recorded with fsync.
//! - After voting PREPARED it never decides alone: it waits for Commit or Abort, and
//!   after a restart asks the coordinator (GetDecision) until it gets an answer.
//! - Prepare, Commit and Abort are idempotent per transaction id: a repeated call gets
//!   the same answer and does the work at most once.
//! - An Abort that arrives before (or during) the Prepare it cancels wins: the
//!   transaction is recorded as aborted and a late Prepare is refused.
//! - One transaction at a time: a Prepare while another transaction is prepared here is
//!   refused, and so is one whose expected live version is not what is live here.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use lockstep::pb;
use lockstep_store::{Durability, StoreError};
use tokio::sync::watch;

use crate::{
    deployer::{Change, DeployError, Deployer, Refusal, Staged},
    inquiry::{self, DecisionSource},
    ledger::{Entry, Ledger, Phase},
    schema::{Schema, SchemaStaged, files},
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
        }
    }
}

/// A Prepare running now: its cancel switch and where its vote will appear.
struct InFlight {
    cancel: watch::Sender<bool>,
    vote: watch::Receiver<Option<pb::PrepareResponse>>,
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
    decisions: Option<DecisionSource>,
    /// Serializes every change of protocol state on this participant.
    lock: tokio::sync::Mutex<()>,
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// Transactions staging or prepared here (kept in memory so a Prepare does not scan
    /// the whole ledger).
    open: Mutex<BTreeSet<String>>,
}

impl<D: Deployer> Participant<D> {
    /// A participant for `project` in `environment`, recording into `ledger`, with
    /// optional schema migrations staged alongside the deployer's changes.
    pub fn new(
        project: String,
        environment: String,
        deployer: D,
        schema: Option<Schema>,
        ledger: Ledger,
        decisions: Option<DecisionSource>,
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
                open: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    /// The project served.
    pub fn project(&self) -> &str {
        &self.inner.project
    }

    /// Where this participant asks for decisions, if anywhere.
    pub fn decision_source(&self) -> Option<&DecisionSource> {
        self.inner.decisions.as_ref()
    }

    /// Whether `tx` is prepared here and waits for its decision.
    pub fn is_prepared(&self, tx: &str) -> bool {
        matches!(self.inner.ledger.get(tx), Ok(Some(e)) if e.phase == Phase::Prepared)
    }

    /// Queues a record (its order among records is fixed now) and keeps the set of open
    /// transactions in step with it; the future resolves once it is written.
    fn record(
        &self,
        tx: &str,
        entry: &Entry,
        durability: Durability,
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send + 'static {
        let written = self.inner.ledger.put(tx, entry, durability);
        let mut open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(entry.phase, Phase::Staging | Phase::Prepared) {
            open.insert(tx.to_string());
        } else {
            open.remove(tx);
        }
        async move { Ok(written.await?) }
    }

    fn open(&self) -> Vec<String> {
        self.inner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    // ----- Prepare -----

    /// Stages the change and votes. Idempotent per transaction id.
    pub async fn prepare(
        &self,
        request: pb::PrepareRequest,
    ) -> Result<pb::PrepareResponse, ParticipantError> {
        let tx = request.transaction_id.clone();
        tracing::debug!(%tx, "Prepare received");
        if let Some(refusal) = self.misaddressed(&request.project, &request.environment) {
            return Ok(refused(refusal));
        }
        let mut vote = {
            let _guard = self.inner.lock.lock().await;
            // A repeated Prepare while staging runs waits for the same vote (the ledger
            // already says Staging, which after a restart means "interrupted").
            let in_flight = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&tx)
                .map(|f| f.vote.clone());
            match in_flight {
                Some(vote) => vote,
                None => {
                    if let Some(entry) = self.inner.ledger.get(&tx)? {
                        return Ok(answer_again(&entry));
                    }
                    if let Some(refusal) = self.precondition_refusal(&request).await? {
                        let entry = Entry {
                            change: Some(change_of(&request)),
                            phase: Phase::Refused,
                            staged: None,
                            schema: None,
                            reason: refusal.clone(),
                        };
                        self.record(&tx, &entry, Durability::Buffered).await?;
                        return Ok(refused(refusal));
                    }
                    self.start_staging(&request)?
                }
            }
        };
        loop {
            if let Some(answer) = vote.borrow_and_update().clone() {
                return Ok(answer);
            }
            if vote.changed().await.is_err() {
                return Ok(refused("prepare was interrupted; ask again".into()));
            }
        }
    }

    /// A Prepare meant for another project or environment is refused, never staged.
    fn misaddressed(&self, project: &str, environment: &str) -> Option<String> {
        if project != self.inner.project {
            return Some(format!(
                "this agent serves project {}, not {project}",
                self.inner.project
            ));
        }
        if !environment.is_empty() && environment != self.inner.environment {
            return Some(format!(
                "this agent serves environment {}, not {environment}",
                self.inner.environment
            ));
        }
        None
    }

    /// The rules checked before staging anything: one transaction at a time, and the
    /// live version the coordinator expects.
    async fn precondition_refusal(
        &self,
        request: &pb::PrepareRequest,
    ) -> Result<Option<String>, ParticipantError> {
        if let Some(other) = self.open().first() {
            return Ok(Some(format!(
                "busy: transaction {other} is prepared here and awaits its decision"
            )));
        }
        self.drift_refusal(request).await
    }

    /// Refuses when what is live here is not what the coordinator believes.
    async fn drift_refusal(
        &self,
        request: &pb::PrepareRequest,
    ) -> Result<Option<String>, ParticipantError> {
        let live = self.live().await?;
        if live != request.from_version {
            return Ok(Some(format!(
                "the live version here is {} but the coordinator expects {}; refusing rather than guess",
                shown(&live),
                shown(&request.from_version)
            )));
        }
        Ok(None)
    }

    /// Records the intent, then stages in a task of its own: a cancelled RPC does not
    /// cut staging in half, and an Abort can stop it.
    fn start_staging(
        &self,
        request: &pb::PrepareRequest,
    ) -> Result<watch::Receiver<Option<pb::PrepareResponse>>, ParticipantError> {
        let tx = request.transaction_id.clone();
        let change = change_of(request);
        let entry = Entry {
            change: Some(change.clone()),
            phase: Phase::Staging,
            staged: None,
            schema: None,
            reason: String::new(),
        };
        // Not awaited: an intent that a crash may lose (staging is then never voted on,
        // and nothing was promised); its order before the PREPARED record is fixed.
        drop(self.record(&tx, &entry, Durability::Buffered));
        let (cancel, cancelled) = watch::channel(false);
        let (answer, vote) = watch::channel(None);
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                tx.clone(),
                InFlight {
                    cancel,
                    vote: vote.clone(),
                },
            );
        let this = self.clone();
        tokio::spawn(async move {
            let response = this.stage_and_vote(change, cancelled).await;
            let response =
                response.unwrap_or_else(|e| refused(format!("could not record the vote: {e}")));
            this.inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&tx);
            answer.send_replace(Some(response));
        });
        Ok(vote)
    }

    async fn stage_and_vote(
        &self,
        change: Change,
        mut cancelled: watch::Receiver<bool>,
    ) -> Result<pb::PrepareResponse, ParticipantError> {
        let tx = change.transaction_id.clone();
        let staging = self.stage_all(&change);
        let outcome = tokio::select! {
            outcome = staging => outcome,
            _ = cancelled.wait_for(|c| *c) => Err((Refusal("aborted while preparing".into()), None)),
        };
        // Crash test: everything is staged (the database committed its part) and the
        // PREPARED record is not yet written.
        lockstep::crash::point(CRASH_BEFORE_PREPARED_RECORD);
        let _guard = self.inner.lock.lock().await;
        match outcome {
            Ok((staged, schema)) => {
                let entry = Entry {
                    change: Some(change),
                    phase: Phase::Prepared,
                    staged: Some(staged),
                    schema: schema.clone(),
                    reason: String::new(),
                };
                // Durability point: the PREPARED record is synced before the vote leaves.
                tracing::debug!(%tx, "staged; syncing the PREPARED record");
                self.record(&tx, &entry, Durability::Sync).await?;
                tracing::debug!(%tx, "PREPARED record durable: voting");
                if let Some(source) = &self.inner.decisions {
                    inquiry::watch(self, tx.clone(), source.ask_after);
                }
                Ok(prepared(schema.as_ref()))
            }
            Err((refusal, staged)) => {
                // Never voted yes: undo on our own, then remember the refusal. A schema
                // stage that refused left nothing in the database; one cut short by an
                // Abort may have, so only then is the database asked.
                let aborted = *cancelled.borrow();
                self.undo_all(&change, staged.as_ref(), aborted).await?;
                let entry = Entry {
                    change: Some(change),
                    phase: if aborted {
                        Phase::Aborted
                    } else {
                        Phase::Refused
                    },
                    staged: None,
                    schema: None,
                    reason: refusal.0.clone(),
                };
                self.record(&tx, &entry, Durability::Buffered).await?;
                Ok(refused(refusal.0))
            }
        }
    }

    /// Deployer first, then migrations; a failure of either undoes the other.
    async fn stage_all(
        &self,
        change: &Change,
    ) -> Result<(Staged, Option<SchemaStaged>), (Refusal, Option<Staged>)> {
        let staged = self
            .inner
            .deployer
            .stage(change)
            .await
            .map_err(|r| (r, None))?;
        let Some(schema) = &self.inner.schema else {
            return Ok((staged, None));
        };
        match schema
            .stage(&change.transaction_id, staged.migrations.as_deref())
            .await
        {
            Ok(s) => Ok((staged, Some(s))),
            Err(refusal) => Err((refusal, Some(staged))),
        }
    }

    // ----- Commit -----

    /// Makes the prepared change live. Idempotent.
    pub async fn commit(
        &self,
        tx: &str,
        project: &str,
    ) -> Result<pb::CommitResponse, ParticipantError> {
        self.check_project(project)?;
        let _guard = self.inner.lock.lock().await;
        let entry = self.inner.ledger.get(tx)?;
        match entry.as_ref().map(|e| e.phase) {
            Some(Phase::Committed) => {}
            Some(Phase::Prepared) => {
                let mut entry = entry.expect("matched Some");
                self.go_live(&entry).await?;
                entry.phase = Phase::Committed;
                // Neither synced nor awaited: if a crash loses it, the participant
                // restarts PREPARED, asks GetDecision, hears COMMIT (the coordinator keeps
                // every decision) and goes live again, idempotently; a duplicate Commit
                // that arrives first does the same.
                drop(self.record(tx, &entry, Durability::Buffered));
            }
            Some(phase) => {
                return Err(ParticipantError::Conflict(format!(
                    "transaction {tx} is {phase:?} here, it cannot be committed"
                )));
            }
            None => {
                return Err(ParticipantError::Conflict(format!(
                    "transaction {tx} was never prepared here, it cannot be committed"
                )));
            }
        }
        let live = self.live().await?;
        Ok(pb::CommitResponse { live_version: live })
    }

    /// The version live here as the wire shows it (empty when nothing is live).
    async fn live(&self) -> Result<String, ParticipantError> {
        Ok(self
            .inner
            .deployer
            .live_version()
            .await?
            .unwrap_or_default())
    }

    async fn go_live(&self, entry: &Entry) -> Result<(), ParticipantError> {
        let change = entry.change.as_ref().ok_or_else(|| {
            ParticipantError::Conflict("prepared record without its change".into())
        })?;
        if let Some(schema) = &self.inner.schema {
            schema.commit(&change.transaction_id).await?;
        }
        let staged = entry.staged.clone().unwrap_or_default();
        self.inner.deployer.go_live(change, &staged).await?;
        Ok(())
    }

    // ----- Abort -----

    /// Undoes whatever this transaction staged here (or makes sure it never will).
    /// Idempotent.
    pub async fn abort(
        &self,
        tx: &str,
        project: &str,
        reason: &str,
    ) -> Result<pb::AbortResponse, ParticipantError> {
        self.check_project(project)?;
        let running = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tx)
            .map(|f| (f.cancel.clone(), f.vote.clone()));
        if let Some((cancel, mut vote)) = running {
            cancel.send_replace(true);
            let _ = vote.wait_for(|v| v.is_some()).await;
        }
        let _guard = self.inner.lock.lock().await;
        match self.inner.ledger.get(tx)? {
            None => {
                // Abort before Prepare: remember it, so a late Prepare is refused.
                let entry = Entry {
                    change: None,
                    phase: Phase::Aborted,
                    staged: None,
                    schema: None,
                    reason: reason.to_string(),
                };
                self.record(tx, &entry, Durability::Buffered).await?;
            }
            Some(entry) if entry.phase == Phase::Aborted => {}
            Some(entry) if entry.phase == Phase::Committed => {
                return Err(ParticipantError::Conflict(format!(
                    "transaction {tx} is committed here, it cannot be aborted"
                )));
            }
            Some(mut entry) => {
                if let Some(change) = entry.change.clone() {
                    let schema_touched = entry.phase != Phase::Refused;
                    self.undo_all(&change, entry.staged.as_ref(), schema_touched)
                        .await?;
                }
                entry.phase = Phase::Aborted;
                if entry.reason.is_empty() {
                    entry.reason = reason.to_string();
                }
                self.record(tx, &entry, Durability::Buffered).await?;
            }
        }
        let live = self.live().await?;
        Ok(pb::AbortResponse { live_version: live })
    }

    /// Reverse order of staging: the deployer's change, then (when `schema_touched`) the
    /// schema, undone from what the database itself recorded, so this also works when
    /// the agent crashed before it could note what it staged.
    async fn undo_all(
        &self,
        change: &Change,
        staged: Option<&Staged>,
        schema_touched: bool,
    ) -> Result<(), ParticipantError> {
        self.inner.deployer.undo(change, staged).await?;
        if let (Some(schema), true) = (&self.inner.schema, schema_touched) {
            schema.abort(&change.transaction_id).await?;
        }
        Ok(())
    }

    fn check_project(&self, project: &str) -> Result<(), ParticipantError> {
        if project.is_empty() || project == self.inner.project {
            Ok(())
        } else {
            Err(ParticipantError::Invalid(format!(
                "project: this agent serves project {}, not {project}",
                self.inner.project
            )))
        }
    }

    // ----- Status -----

    /// What is live and staged here.
    pub async fn status(&self) -> Result<pb::ParticipantStatus, ParticipantError> {
        let live = self.live().await?;
        let mut prepared = Vec::new();
        for id in self.open() {
            if let Some(e) = self
                .inner
                .ledger
                .get(&id)?
                .filter(|e| e.phase == Phase::Prepared)
            {
                prepared.push((id, e));
            }
        }
        let staged = prepared
            .into_iter()
            .map(|(id, e)| pb::StagedTransaction {
                transaction_id: id,
                version: e
                    .change
                    .as_ref()
                    .map(|c| c.version.clone())
                    .unwrap_or_default(),
                from_version: e
                    .change
                    .as_ref()
                    .map(|c| c.from_version.clone())
                    .unwrap_or_default(),
                schema: e.schema.as_ref().map(|s| s.to.message()),
            })
            .collect();
        let schema = match &self.inner.schema {
            Some(s) => Some(s.live().await?.message()),
            None => None,
        };
        Ok(pb::ParticipantStatus {
            project: self.inner.project.clone(),
            environment: self.inner.environment.clone(),
            live_version: live,
            staged,
            schema,
        })
    }

    // ----- Preview -----

    /// What Prepare would do, without staging anything: the migration files it would
    /// run, or why it would certainly refuse (for dry runs).
    pub async fn preview(
        &self,
        request: pb::PrepareRequest,
    ) -> Result<pb::PreviewResponse, ParticipantError> {
        let refuse = |reason: String| pb::PreviewResponse {
            would_prepare: false,
            reason,
            ..Default::default()
        };
        if let Some(refusal) = self.misaddressed(&request.project, &request.environment) {
            return Ok(refuse(refusal));
        }
        if let Some(entry) = self.inner.ledger.get(&request.transaction_id)? {
            let again = answer_again(&entry);
            return Ok(pb::PreviewResponse {
                would_prepare: again.vote == pb::Vote::Prepared as i32,
                reason: again.reason,
                from_schema: again.from_schema,
                to_schema: again.to_schema,
                migrations: again.migrations,
            });
        }
        // Not the "busy" rule: a real run would queue behind the other transaction.
        if let Some(refusal) = self.drift_refusal(&request).await? {
            return Ok(refuse(refusal));
        }
        let Some(schema) = &self.inner.schema else {
            return Ok(pb::PreviewResponse {
                would_prepare: true,
                ..Default::default()
            });
        };
        let change = change_of(&request);
        let shipped = match self.inner.deployer.shipped_migrations(&change).await {
            Ok(Some(files)) => match files::parse(files) {
                Ok(m) => Some(m),
                Err(e) => return Ok(refuse(e)),
            },
            Ok(None) => None,
            Err(refusal) => return Ok(refuse(refusal.0)),
        };
        Ok(match schema.plan(shipped).await {
            Ok(Some(plan)) => pb::PreviewResponse {
                would_prepare: true,
                reason: String::new(),
                from_schema: Some(plan.from.message()),
                to_schema: Some(plan.to.message()),
                migrations: plan.files(),
            },
            Ok(None) => {
                let live = schema.live().await?.message();
                pb::PreviewResponse {
                    would_prepare: true,
                    from_schema: Some(live.clone()),
                    to_schema: Some(live),
                    ..Default::default()
                }
            }
            Err(refusal) => refuse(refusal.0),
        })
    }

    // ----- Recovery -----

    /// After a restart: staging that never voted is undone (nothing was promised);
    /// prepared transactions stay staged until the coordinator's decision is known.
    /// Returns the prepared ones, for [`crate::recovery`] to resolve.
    pub async fn recover_local(&self) -> Result<Vec<String>, ParticipantError> {
        let _guard = self.inner.lock.lock().await;
        for (tx, mut entry) in self.inner.ledger.in_phase(&[Phase::Staging])? {
            if let Some(change) = entry.change.clone() {
                self.undo_all(&change, entry.staged.as_ref(), true).await?;
            }
            entry.phase = Phase::Aborted;
            entry.reason = "agent restarted before voting".into();
            self.record(&tx, &entry, Durability::Buffered).await?;
        }
        let prepared: Vec<String> = self
            .inner
            .ledger
            .in_phase(&[Phase::Prepared])?
            .into_iter()
            .map(|(tx, _)| tx)
            .collect();
        if let Some(schema) = &self.inner.schema {
            schema.recover(&prepared).await.map_err(|e| {
                ParticipantError::Deploy(DeployError(format!("database recovery: {e}")))
            })?;
        }
        self.inner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(prepared.iter().cloned());
        Ok(prepared)
    }
}

fn change_of(r: &pb::PrepareRequest) -> Change {
    Change {
        transaction_id: r.transaction_id.clone(),
        environment: r.environment.clone(),
        project: r.project.clone(),
        version: r.version.clone(),
        from_version: r.from_version.clone(),
        artifact: r.artifact.clone(),
        metadata: r.metadata.clone().into_iter().collect(),
    }
}

/// The same answer as the first time.
fn answer_again(entry: &Entry) -> pb::PrepareResponse {
    match entry.phase {
        Phase::Prepared | Phase::Committed => prepared(entry.schema.as_ref()),
        Phase::Refused => refused(entry.reason.clone()),
        Phase::Aborted => refused(format!("already aborted here: {}", entry.reason)),
        Phase::Staging => refused("staging was interrupted by a restart and undone".into()),
    }
}

fn prepared(schema: Option<&SchemaStaged>) -> pb::PrepareResponse {
    pb::PrepareResponse {
        vote: pb::Vote::Prepared as i32,
        reason: String::new(),
        from_schema: schema.map(|s| s.from.message()),
        to_schema: schema.map(|s| s.to.message()),
        migrations: schema.map(|s| s.files.clone()).unwrap_or_default(),
    }
}

fn refused(reason: String) -> pb::PrepareResponse {
    pb::PrepareResponse {
        vote: pb::Vote::Refused as i32,
        reason,
        ..Default::default()
    }
}

fn shown(version: &str) -> &str {
    if version.is_empty() {
        "(nothing)"
    } else {
        version
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{sync::Arc, time::Duration};

    use lockstep_store::{MemKv, WriterMode};
    use tokio::sync::Notify;

    use super::*;

    /// Stages only when the test lets it.
    #[derive(Default)]
    struct Gated {
        open: Notify,
    }

    impl Deployer for Gated {
        async fn stage(&self, _change: &Change) -> Result<Staged, Refusal> {
            self.open.notified().await;
            Ok(Staged::default())
        }

        async fn go_live(&self, _change: &Change, _staged: &Staged) -> Result<(), DeployError> {
            Ok(())
        }

        async fn undo(
            &self,
            _change: &Change,
            _staged: Option<&Staged>,
        ) -> Result<(), DeployError> {
            Ok(())
        }

        async fn live_version(&self) -> Result<Option<String>, DeployError> {
            Ok(None)
        }
    }

    #[tokio::test]
    async fn a_prepare_repeated_while_staging_gets_the_same_vote() {
        let ledger = Ledger::open(Arc::new(MemKv::new()), WriterMode::Task).unwrap();
        let p = Participant::new(
            "api".into(),
            "production".into(),
            Gated::default(),
            None,
            ledger,
            None,
        );
        let request = pb::PrepareRequest {
            transaction_id: "T4".into(),
            project: "api".into(),
            version: "v2".into(),
            ..Default::default()
        };
        let first = tokio::spawn({
            let (p, r) = (p.clone(), request.clone());
            async move { p.prepare(r).await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !matches!(p.inner.ledger.get("T4"), Ok(Some(e)) if e.phase == Phase::Staging) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "staging never started"
            );
            tokio::task::yield_now().await;
        }
        let again = tokio::spawn({
            let (p, r) = (p.clone(), request.clone());
            async move { p.prepare(r).await }
        });
        // Single-threaded test runtime: let the repeat run until it waits.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!again.is_finished(), "the repeat must wait for the vote");
        p.inner.deployer.open.notify_one();
        for answer in [first.await.unwrap().unwrap(), again.await.unwrap().unwrap()] {
            assert_eq!(answer.vote, pb::Vote::Prepared as i32, "{}", answer.reason);
        }
    }
}
