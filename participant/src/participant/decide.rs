//! Phase 2 on the participant: Commit makes the prepared change live, Abort undoes
//! whatever the transaction staged (or makes sure it never will). Both idempotent.

use lockstep::{
    names::TxId,
    orders::{AbortOrder, CommitOrder, VoteAnswer},
};
use lockstep_store::Durability;

use super::{Participant, ParticipantError, other_incarnation};
use crate::{
    deployer::{DeployError, Deployer},
    ledger::{Entry, Phase},
};

impl<D: Deployer> Participant<D> {
    /// Makes the prepared change live; returns the version live now. Idempotent.
    /// Runs in a task of its own, so a caller that gives up (an RPC cut by its
    /// deadline) does not cut a commit hook in half; a repeated Commit waits for the
    /// running one under the lock and answers from its record.
    pub async fn commit(&self, order: &CommitOrder) -> Result<String, ParticipantError> {
        let (this, order) = (self.clone(), order.clone());
        detached(async move { this.commit_here(&order).await }).await
    }

    /// Undoes whatever this transaction staged here (or makes sure it never will);
    /// returns the version live now. Idempotent, and detached like [`Self::commit`].
    pub async fn abort(&self, order: &AbortOrder) -> Result<String, ParticipantError> {
        let (this, order) = (self.clone(), order.clone());
        detached(async move { this.abort_here(&order).await }).await
    }

    async fn commit_here(&self, order: &CommitOrder) -> Result<String, ParticipantError> {
        self.check_project(order.project.as_ref())?;
        let tx = order.tx.as_str();
        let _guard = self.inner.lock.lock().await;
        let entry = self.inner.ledger.get(tx)?;
        match entry {
            Some(entry) if other_incarnation(&entry.incarnation, &order.incarnation) => {
                return Err(ParticipantError::Conflict(format!(
                    "transaction {tx} here was prepared by another coordinator (incarnation {}, this Commit comes from {}); it cannot be committed by this one",
                    entry.incarnation, order.incarnation
                )));
            }
            Some(entry) if entry.phase == Phase::Committed => {}
            Some(mut entry) if entry.phase == Phase::Prepared => {
                self.go_live(&entry).await?;
                entry.phase = Phase::Committed;
                // Neither synced nor awaited: if a crash loses it, the participant
                // restarts PREPARED, asks GetDecision, hears COMMIT (the coordinator keeps
                // every decision) and goes live again, idempotently; a duplicate Commit
                // that arrives first does the same.
                drop(self.record(tx, &entry, Durability::Buffered));
            }
            Some(entry) => {
                return Err(ParticipantError::Conflict(format!(
                    "transaction {tx} is {:?} here, it cannot be committed",
                    entry.phase
                )));
            }
            None => {
                return Err(ParticipantError::Conflict(format!(
                    "transaction {tx} was never prepared here, it cannot be committed"
                )));
            }
        }
        self.live().await
    }

    async fn go_live(&self, entry: &Entry) -> Result<(), ParticipantError> {
        let change = entry.change.as_ref().ok_or_else(|| {
            ParticipantError::Conflict("prepared record without its change".into())
        })?;
        if let Some(schema) = &self.inner.schema {
            schema
                .commit(&change.transaction_id, entry.schema.as_ref())
                .await?;
        }
        let staged = entry.staged.clone().unwrap_or_default();
        self.inner.deployer.go_live(change, &staged).await?;
        Ok(())
    }

    async fn abort_here(&self, order: &AbortOrder) -> Result<String, ParticipantError> {
        self.check_project(order.project.as_ref())?;
        let tx = order.tx.as_str();
        if self.recorded_by_another(tx, &order.incarnation)? {
            // Another transaction reused the id; it staged nothing here (its Prepare
            // was refused), so there is nothing of it to undo, and the recorded one
            // is not this coordinator's to abort.
            tracing::warn!(%tx, "Abort from another coordinator incarnation: acknowledged, the recorded transaction is left as it is");
            return self.live().await;
        }
        let _guard = self.settled(tx).await;
        match self.inner.ledger.get(tx)? {
            // Recorded by another coordinator's Prepare while this Abort waited for the
            // lock: the same case as above, now seen under the lock (stop 64).
            Some(entry) if other_incarnation(&entry.incarnation, &order.incarnation) => {
                tracing::warn!(%tx, "Abort from another coordinator incarnation, after a Prepare of its own recorded: acknowledged, the recorded transaction is left as it is");
            }
            None => self.abort_unrecorded(tx, &order.reason).await?,
            Some(entry) if entry.phase == Phase::Aborted => {}
            Some(entry) if entry.phase == Phase::Committed => {
                return Err(ParticipantError::Conflict(format!(
                    "transaction {tx} is committed here, it cannot be aborted"
                )));
            }
            Some(entry) => self.undo(tx, entry, &order.reason).await?,
        }
        self.live().await
    }

    fn recorded_by_another(&self, tx: &str, incarnation: &str) -> Result<bool, ParticipantError> {
        let entry = self.inner.ledger.get(tx)?;
        Ok(entry.is_some_and(|e| other_incarnation(&e.incarnation, incarnation)))
    }

    /// The participant's lock, taken once no Prepare of `tx` is staging. A Prepare
    /// still staging is told to stop and waited for (it records its own outcome, under
    /// this lock), so an Abort never undoes beside a staging that is still running.
    async fn settled(&self, tx: &str) -> tokio::sync::MutexGuard<'_, ()> {
        loop {
            let guard = self.inner.lock.lock().await;
            let running = self
                .in_flight()
                .get(tx)
                .map(|f| (f.cancel.clone(), f.vote.clone()));
            let Some((cancel, mut vote)) = running else {
                return guard;
            };
            // Told before the lock is let go: a staging task that takes it next must
            // see that it is to stop, not vote.
            cancel.send_replace(true);
            drop(guard);
            if vote.wait_for(Option::is_some).await.is_err() {
                self.forget_unvoted(tx, &vote);
            }
        }
    }

    /// Takes `tx` out of the in-flight map when its staging task ended without a vote
    /// (it panicked): nothing stages any more, and waiting for its vote would never end
    /// (stop 55: an Abort after such a panic looped for ever).
    fn forget_unvoted(&self, tx: &str, vote: &tokio::sync::watch::Receiver<Option<VoteAnswer>>) {
        let mut in_flight = self.in_flight();
        if in_flight.get(tx).is_some_and(|f| f.vote.same_channel(vote)) {
            in_flight.remove(tx);
        }
    }

    /// Abort before Prepare, or after a crash lost the Staging record: undo what the
    /// deployer and the database still hold for `tx`, and remember the abort so a late
    /// Prepare is refused.
    async fn abort_unrecorded(&self, tx: &str, reason: &str) -> Result<(), ParticipantError> {
        self.inner.deployer.discard_unrecorded(tx).await?;
        if let Some(schema) = &self.inner.schema {
            schema.abort(tx, None).await?;
        }
        let entry = Entry {
            change: None,
            phase: Phase::Aborted,
            staged: None,
            schema: None,
            reason: reason.to_string(),
            incarnation: String::new(),
        };
        self.record(tx, &entry, Durability::Buffered).await
    }

    /// A REFUSED record has nothing to undo: refused before staging, or undone before
    /// the refusal was recorded. Undoing it again would run the deployer's hooks for a
    /// version this transaction does not hold (the stop hook could take down the test
    /// instance of the transaction that holds it).
    async fn undo(&self, tx: &str, mut entry: Entry, reason: &str) -> Result<(), ParticipantError> {
        let change = entry.change.clone();
        if let Some(change) = change.filter(|_| entry.phase != Phase::Refused) {
            let schema = Some(entry.schema.as_ref());
            self.undo_all(&change, entry.staged.as_ref(), schema)
                .await?;
        }
        entry.phase = Phase::Aborted;
        if entry.reason.is_empty() {
            entry.reason = reason.to_string();
        }
        self.record(tx, &entry, Durability::Buffered).await
    }

    /// Carries out a decision the coordinator gave when asked (GetDecision).
    pub(super) async fn apply_decision(
        &self,
        tx: &TxId,
        commit: bool,
    ) -> Result<&'static str, ParticipantError> {
        let project = None;
        if commit {
            // No incarnation: the coordinator asked was checked against the recorded one.
            let order = CommitOrder {
                tx: tx.clone(),
                project,
                incarnation: String::new(),
            };
            return self.commit(&order).await.map(|_| "committed");
        }
        let reason = "the coordinator decided ABORT (asked with GetDecision)".to_string();
        let order = AbortOrder {
            tx: tx.clone(),
            project,
            reason,
            incarnation: String::new(),
        };
        self.abort(&order).await.map(|_| "aborted")
    }
}

/// Runs `work` in a task of its own and waits for it: dropping the wait leaves the work
/// running to its end.
async fn detached(
    work: impl Future<Output = Result<String, ParticipantError>> + Send + 'static,
) -> Result<String, ParticipantError> {
    tokio::spawn(tracing::Instrument::in_current_span(work))
        .await
        .unwrap_or_else(|e| Err(DeployError(format!("phase 2 task failed: {e}")).into()))
}
