//! The planner's view of what is on disk ([`History`] over the tables), and the one-time
//! fill of `seen_versions` for data directories written before that table existed.

use lockstep::names::{Environment, ProjectName, TxId, Version};
use lockstep_store::Batch;

use crate::{
    error::Result,
    model::{BuildRecord, CheckpointRecord, TxRecord, TxState},
    planner::History,
    tables::Tables,
};

/// [`History`] over the tables, for one environment.
pub(super) struct StoredHistory<'a> {
    pub(super) tables: &'a Tables,
    pub(super) environment: &'a Environment,
}

impl History for StoredHistory<'_> {
    fn newest_checkpoint_where(
        &self,
        having: &[(&ProjectName, &Version)],
        matches: &mut dyn FnMut(&CheckpointRecord) -> bool,
    ) -> Result<Option<CheckpointRecord>> {
        let mut at_most = None;
        for (project, version) in having {
            match self.tables.last_live(self.environment, project, version)? {
                None => return Ok(None),
                Some(last) => at_most = Some(at_most.map_or(last, |m: u64| m.min(last))),
            }
        }
        Ok(self
            .tables
            .newest_checkpoint_where(self.environment, at_most, matches)?)
    }

    fn was_live(&self, project: &ProjectName, version: &Version) -> Result<bool> {
        Ok(self.tables.was_live(self.environment, project, version)?)
    }

    fn checkpoint(&self, revision: u64) -> Result<Option<CheckpointRecord>> {
        Ok(self.tables.checkpoint(self.environment, revision)?)
    }

    fn transaction(&self, id: &TxId) -> Result<Option<TxRecord>> {
        Ok(self.tables.transaction(id)?)
    }

    fn committed_after(&self, ordinal: u64) -> Result<Vec<TxRecord>> {
        let later = self.tables.transactions_after(ordinal)?.into_iter();
        let committed =
            |t: &TxRecord| &t.environment == self.environment && t.state == TxState::Committed;
        Ok(later.filter(committed).collect())
    }

    fn build(&self, project: &ProjectName, version: &Version) -> Result<Option<BuildRecord>> {
        Ok(self.tables.build(self.environment, project, version)?)
    }
}

/// A data directory written before the `seen_versions` table existed has it empty:
/// fills it from the environment's checkpoints once, so that a move back to a version
/// live before the upgrade is still seen as one. (The newest checkpoint's versions are
/// always in the table once it is filled, so their absence is the sign.)
pub(super) fn backfill_seen(tables: &Tables, newest: &CheckpointRecord) -> Result<()> {
    let Some((project, entry)) = newest.versions.iter().next() else {
        return Ok(());
    };
    if tables.was_live(&newest.environment, project, &entry.version)? {
        return Ok(());
    }
    let mut batch = Batch::default();
    for cp in tables.checkpoints(&newest.environment)? {
        Tables::put_seen(&mut batch, &cp);
    }
    tables.kv().write(batch, lockstep_store::Durability::Sync)?;
    tracing::info!(
        environment = %newest.environment,
        "filled the seen_versions table from the checkpoints (data written before it existed)"
    );
    Ok(())
}
