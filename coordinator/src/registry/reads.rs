//! What readers see: transactions (unfinished ones from memory, as their drivers last
//! showed them), the live state, history, decisions for participants.

use lockstep::{
    names::{Environment, TxId},
    orders::Decision,
};

use super::{Registry, projects};
use crate::{
    error::{CoordinatorError, Result},
    model::{CheckpointRecord, StepKind, TxKind, TxRecord},
    txn,
};

/// One page of a listing and where the next one starts.
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// The cursor of the next page (`None`: this is the last).
    pub next: Option<u64>,
}

impl<T> Page<T> {
    /// The first `size` of `items` (read one past the page, to know whether there is
    /// more), with the cursor of the last one kept when more follow.
    pub(super) fn of(mut items: Vec<T>, size: usize, cursor: impl Fn(&T) -> u64) -> Self {
        let more = items.len() > size;
        items.truncate(size);
        let next = if more { items.last().map(cursor) } else { None };
        Page { items, next }
    }
}

/// Live state of one environment.
pub struct Live {
    /// Newest durable checkpoint.
    pub checkpoint: Option<CheckpointRecord>,
    /// Unfinished transactions of the environment, oldest first.
    pub active: Vec<TxRecord>,
}

impl Registry {
    /// The kind and verify steps (name, kind) of transaction `id` (the metrics label
    /// by them): from memory while it is unfinished, without copying its record; from
    /// storage once it ended, since the metrics may read its creation only after its
    /// end (stop 58: such a transaction was counted as kind `unknown`).
    pub fn shape(&self, id: &TxId) -> Option<(TxKind, Vec<(String, StepKind)>)> {
        let shape_of = |t: &TxRecord| {
            let steps = t
                .steps
                .iter()
                .map(|r| (r.step.name.clone(), r.step.kind.clone()));
            (t.kind, steps.collect())
        };
        if let Some(active) = self.state().active.get(id) {
            return Some(shape_of(&active.record));
        }
        let stored = self.tables().transaction(id).ok().flatten();
        stored.as_ref().map(shape_of)
    }

    /// A transaction by id.
    pub fn get(&self, id: &TxId) -> Result<TxRecord> {
        let found = self.existing(self.state(), id)?;
        found.ok_or_else(|| not_found(id))
    }

    /// Whether `id` is a transaction that has not ended (cheap: nothing is copied or
    /// read from disk, so a watcher can ask on every wake-up).
    pub fn is_unfinished(&self, id: &TxId) -> bool {
        self.state().active.contains_key(id)
    }

    /// Every unfinished transaction as readers see it, oldest first.
    pub fn unfinished(&self) -> Vec<TxRecord> {
        let s = self.state();
        let mut active: Vec<TxRecord> = s.active.values().map(|a| a.record.clone()).collect();
        active.sort_by_key(|t| t.ordinal);
        active
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
        let projects = s.projects.get(env).map(|m| &**m);
        let live = s
            .live
            .get(env)
            .map(|c| projects::as_registered(c, projects));
        Live {
            checkpoint: live.map(|c| (*c).clone()),
            active,
        }
    }

    /// One page of the durable checkpoints of `env`, oldest first, after revision
    /// `after`. The table may already hold the checkpoint of a COMMIT whose write is not
    /// yet synced; it is left out until the decision is durable and live.
    pub fn history(
        &self,
        env: &Environment,
        after: u64,
        size: usize,
    ) -> Result<Page<CheckpointRecord>> {
        let live = self.state().live.get(env).map_or(0, |l| l.revision);
        let mut checkpoints = self.inner.tables.checkpoints_after(env, after, size + 1)?;
        checkpoints.retain(|c| c.revision <= live);
        Ok(Page::of(checkpoints, size, |c| c.revision))
    }

    /// The durable decision for the `asker`'s part (presumed abort for unknown ids and
    /// for a transaction that is not the asker's), given only in its wave's turn (see
    /// [`txn::decision_for`]).
    pub fn decision(&self, id: &TxId, asker: txn::Asker<'_>) -> Result<Decision> {
        // Read from the store without the registry's lock (on etcd a round trip): a
        // transaction no longer in memory has its end durable already.
        let active = self.state().active.get(id).map(|a| a.record.clone());
        let record = match active {
            Some(record) => Some(record),
            None => self.inner.tables.transaction(id)?,
        };
        Ok(match record {
            Some(record) => txn::decision_for(&record, asker),
            None => Decision::Abort,
        })
    }
}

pub(super) fn not_found(id: &TxId) -> CoordinatorError {
    CoordinatorError::NotFound(format!("id: transaction {id} does not exist"))
}
