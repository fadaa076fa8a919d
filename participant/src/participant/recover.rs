//! After a restart: staging that never voted is undone (nothing was promised);
//! prepared transactions stay staged until the coordinator's decision is known.

use lockstep::names::TxId;
use lockstep_store::Durability;

use super::{Participant, ParticipantError};
use crate::{
    deployer::{DeployError, Deployer},
    ledger::{Entry, Phase},
};

impl<D: Deployer> Participant<D> {
    /// Undoes interrupted staging and returns the prepared transactions, for
    /// [`Participant::resolve_prepared`] to ask about.
    pub async fn recover_local(&self) -> Result<Vec<TxId>, ParticipantError> {
        let _guard = self.inner.lock.lock().await;
        for (tx, entry) in self.inner.ledger.in_phase(&[Phase::Staging])? {
            if let Err(e) = self.undo_interrupted(&tx, entry.clone(), RESTARTED).await {
                tracing::warn!(%tx, "undoing staging a restart interrupted failed ({e}); starting all the same: other Prepares are refused until it is undone (tried again every {UNDO_AGAIN_EVERY:?}, and by the coordinator's Abort)");
                self.inner.ledger.keep_open([(tx.clone(), entry)]);
                self.undo_later(tx, RESTARTED.into());
            }
        }
        let records = self.inner.ledger.in_phase(&[Phase::Prepared])?;
        let prepared: Vec<String> = records.iter().map(|(tx, _)| tx.clone()).collect();
        if let Some(schema) = &self.inner.schema {
            let recovered = schema.recover(&prepared).await;
            recovered.map_err(|e| DeployError(format!("database recovery: {e}")))?;
        }
        self.inner.ledger.keep_open(records);
        Ok(prepared
            .iter()
            .filter_map(|tx| TxId::parse("transaction_id", tx).ok())
            .collect())
    }

    /// Undoes the staging `entry` of `tx` (never voted on yes: nothing was promised) and
    /// records it aborted, for `reason`.
    async fn undo_interrupted(
        &self,
        tx: &str,
        mut entry: Entry,
        reason: &str,
    ) -> Result<(), ParticipantError> {
        if let Some(change) = entry.change.clone() {
            self.undo_all(&change, entry.staged.as_ref(), Some(None))
                .await?;
        }
        entry.phase = Phase::Aborted;
        entry.reason = reason.into();
        self.record(tx, &entry, Durability::Buffered).await
    }

    /// Tries the undo of `tx`'s staging again until it is done (here, or by an Abort
    /// meanwhile), recording it aborted for `reason`: the coordinator may never send an
    /// Abort (it may not know the transaction, under presumed abort), and the agent
    /// refuses other Prepares while the record is open. After a restart, and after a
    /// refused vote whose undo failed.
    pub(super) fn undo_later(&self, tx: String, reason: String) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(UNDO_AGAIN_EVERY).await;
                let _guard = this.inner.lock.lock().await;
                let staging = this.inner.ledger.get(&tx).ok().flatten();
                let Some(entry) = staging.filter(|e| e.phase == Phase::Staging) else {
                    return;
                };
                match this.undo_interrupted(&tx, entry, &reason).await {
                    Ok(()) => return tracing::info!(%tx, "interrupted staging undone"),
                    Err(e) => tracing::warn!(%tx, "undoing interrupted staging failed again: {e}"),
                }
            }
        });
    }
}

/// Why a staging a restart interrupted ended.
const RESTARTED: &str = "agent restarted before voting";

/// How often a staging whose undo failed is tried again.
const UNDO_AGAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
