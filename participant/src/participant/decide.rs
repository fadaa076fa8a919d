//! Phase 2 on the participant: Commit makes the prepared change live, Abort undoes
//! whatever the transaction staged (or makes sure it never will). Both idempotent.

use lockstep::{
    names::TxId,
    orders::{AbortOrder, CommitOrder},
};
use lockstep_store::Durability;

use super::{Participant, ParticipantError};
use crate::{
    deployer::Deployer,
    ledger::{Entry, Phase},
};

impl<D: Deployer> Participant<D> {
    /// Makes the prepared change live; returns the version live now. Idempotent.
    pub async fn commit(&self, order: &CommitOrder) -> Result<String, ParticipantError> {
        self.check_project(order.project.as_ref())?;
        let tx = order.tx.as_str();
        let _guard = self.inner.lock.lock().await;
        let entry = self.inner.ledger.get(tx)?;
        match entry {
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
            schema.commit(&change.transaction_id).await?;
        }
        let staged = entry.staged.clone().unwrap_or_default();
        self.inner.deployer.go_live(change, &staged).await?;
        Ok(())
    }

    /// Undoes whatever this transaction staged here (or makes sure it never will);
    /// returns the version live now. Idempotent.
    pub async fn abort(&self, order: &AbortOrder) -> Result<String, ParticipantError> {
        self.check_project(order.project.as_ref())?;
        let tx = order.tx.as_str();
        self.cancel_staging(tx).await;
        let _guard = self.inner.lock.lock().await;
        match self.inner.ledger.get(tx)? {
            None => {
                // Abort before Prepare: remember it, so a late Prepare is refused.
                let entry = Entry {
                    change: None,
                    phase: Phase::Aborted,
                    staged: None,
                    schema: None,
                    reason: order.reason.clone(),
                };
                self.record(tx, &entry, Durability::Buffered).await?;
            }
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

    /// Stops a Prepare still staging `tx` and waits until it has voted.
    async fn cancel_staging(&self, tx: &str) {
        let running = self
            .in_flight()
            .get(tx)
            .map(|f| (f.cancel.clone(), f.vote.clone()));
        if let Some((cancel, mut vote)) = running {
            cancel.send_replace(true);
            let _ = vote.wait_for(|v| v.is_some()).await;
        }
    }

    async fn undo(&self, tx: &str, mut entry: Entry, reason: &str) -> Result<(), ParticipantError> {
        if let Some(change) = entry.change.clone() {
            let schema_touched = entry.phase != Phase::Refused;
            self.undo_all(&change, entry.staged.as_ref(), schema_touched)
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
            let order = CommitOrder {
                tx: tx.clone(),
                project,
            };
            return self.commit(&order).await.map(|_| "committed");
        }
        let reason = "the coordinator decided ABORT (asked with GetDecision)".to_string();
        let order = AbortOrder {
            tx: tx.clone(),
            project,
            reason,
        };
        self.abort(&order).await.map(|_| "aborted")
    }
}
