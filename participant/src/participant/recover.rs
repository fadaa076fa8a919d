//! After a restart: staging that never voted is undone (nothing was promised);
//! prepared transactions stay staged until the coordinator's decision is known.

use lockstep::names::TxId;
use lockstep_store::Durability;

use super::{Participant, ParticipantError};
use crate::{
    deployer::{DeployError, Deployer},
    ledger::Phase,
};

impl<D: Deployer> Participant<D> {
    /// Undoes interrupted staging and returns the prepared transactions, for
    /// [`Participant::resolve_prepared`] to ask about.
    pub async fn recover_local(&self) -> Result<Vec<TxId>, ParticipantError> {
        let _guard = self.inner.lock.lock().await;
        for (tx, mut entry) in self.inner.ledger.in_phase(&[Phase::Staging])? {
            if let Some(change) = entry.change.clone() {
                self.undo_all(&change, entry.staged.as_ref(), true).await?;
            }
            entry.phase = Phase::Aborted;
            entry.reason = "agent restarted before voting".into();
            self.record(&tx, &entry, Durability::Buffered).await?;
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
}
