//! What readers see: transactions (unfinished ones from memory, as their drivers last
//! showed them), the live state, history, decisions for participants.

use lockstep::{
    names::{Environment, ProjectName, TxId},
    orders::Decision,
};

use super::Registry;
use crate::{
    error::{CoordinatorError, Result},
    model::{CheckpointRecord, TxRecord},
    txn,
};

/// Live state of one environment.
pub struct Live {
    /// Newest durable checkpoint.
    pub checkpoint: Option<CheckpointRecord>,
    /// Unfinished transactions of the environment, oldest first.
    pub active: Vec<TxRecord>,
}

impl Registry {
    /// A transaction by id.
    pub fn get(&self, id: &TxId) -> Result<TxRecord> {
        let s = self.state();
        let found = self.existing(&s, id)?;
        found.ok_or_else(|| not_found(id))
    }

    /// Recent transactions, newest first; unfinished ones as they are now.
    pub fn list(
        &self,
        env: Option<&Environment>,
        limit: usize,
        active_only: bool,
    ) -> Result<Vec<TxRecord>> {
        let s = self.state();
        let mut out: Vec<TxRecord> = if active_only {
            s.active.values().map(|a| a.record.clone()).collect()
        } else {
            // Scan wider than `limit` when filtering by environment.
            let scan = match env {
                Some(_) => limit.saturating_mul(8).max(1000),
                None => limit,
            };
            let stored = self.inner.tables.recent_transactions(scan)?.into_iter();
            let current = |t: TxRecord| s.active.get(&t.id).map(|a| a.record.clone()).unwrap_or(t);
            stored.map(current).collect()
        };
        out.retain(|t| env.is_none_or(|e| &t.environment == e));
        out.sort_by_key(|t| std::cmp::Reverse(t.ordinal));
        out.truncate(limit);
        Ok(out)
    }

    /// Whether `id` is a transaction that has not ended (cheap: nothing is copied or
    /// read from disk, so a watcher can ask on every wake-up).
    pub fn is_unfinished(&self, id: &TxId) -> bool {
        self.state().active.contains_key(id)
    }

    /// How many transactions are unfinished (cheap: no records are copied).
    pub fn active_count(&self) -> usize {
        self.state().active.len()
    }

    /// The live state of `env`.
    pub fn live(&self, env: &Environment) -> Live {
        let s = self.state();
        let mut active: Vec<TxRecord> = s
            .active
            .values()
            .filter(|a| &a.record.environment == env)
            .map(|a| a.record.clone())
            .collect();
        active.sort_by_key(|t| t.ordinal);
        Live {
            checkpoint: s.live.get(env).cloned(),
            active,
        }
    }

    /// Durable checkpoints of `env`, oldest first. The table may already hold the
    /// checkpoint of a COMMIT whose write is not yet synced; it is left out until the
    /// decision is durable and live.
    pub fn history(&self, env: &Environment) -> Result<Vec<CheckpointRecord>> {
        let live = self.state().live.get(env).map_or(0, |l| l.revision);
        let mut checkpoints = self.inner.tables.checkpoints(env)?;
        checkpoints.retain(|c| c.revision <= live);
        Ok(checkpoints)
    }

    /// The durable decision for a participant's part `project` (presumed abort for
    /// unknown ids), given only in its wave's turn (see [`txn::decision_for`]).
    pub fn decision(&self, id: &TxId, project: Option<&ProjectName>) -> Result<Decision> {
        let s = self.state();
        let record = match s.active.get(id) {
            Some(a) => Some(a.record.clone()),
            None => self.inner.tables.transaction(id)?,
        };
        Ok(match record {
            Some(record) => txn::decision_for(&record, project),
            None => Decision::Abort,
        })
    }
}

pub(super) fn not_found(id: &TxId) -> CoordinatorError {
    CoordinatorError::NotFound(format!("id: transaction {id} does not exist"))
}
