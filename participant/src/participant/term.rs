//! Coordinator terms. A highly available coordinator stamps every Prepare, Commit and
//! Abort with its term (its leadership key's create revision in etcd; 0 for a single
//! coordinator). The participant remembers the highest term it has seen, durably
//! before it acts on an order that raised it, and refuses orders from a lower one: so a
//! deposed leader's in-flight orders never change anything here, whatever the fence on
//! its own writes has not stopped yet.

use super::{Participant, ParticipantError};
use crate::deployer::Deployer;

impl<D: Deployer> Participant<D> {
    /// The highest coordinator term seen here (read once from the ledger).
    pub async fn highest_term(&self) -> Result<u64, ParticipantError> {
        let mut highest = self.inner.term.lock().await;
        self.seen(&mut highest)
    }

    /// Refuses `term` when it is older than the highest seen; records a higher one
    /// (synced) before returning, so a restart never forgets it.
    pub async fn admit_term(&self, term: u64) -> Result<(), ParticipantError> {
        let mut highest = self.inner.term.lock().await;
        let seen = self.seen(&mut highest)?;
        if term < seen {
            tracing::warn!(term, seen, "order from an older coordinator term refused");
            return Err(ParticipantError::StaleTerm { term, seen });
        }
        if term > seen {
            self.inner.ledger.put_term(term).await?;
            *highest = Some(term);
        }
        Ok(())
    }

    /// The highest term, from memory or, the first time, from the ledger.
    fn seen(&self, highest: &mut Option<u64>) -> Result<u64, ParticipantError> {
        let seen = match *highest {
            Some(seen) => seen,
            None => self.inner.ledger.term()?,
        };
        *highest = Some(seen);
        Ok(seen)
    }
}
