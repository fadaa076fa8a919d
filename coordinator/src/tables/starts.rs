//! `version_starts`: each revision at which a version became live on a project, so that
//! a move back reads only the checkpoints where its versions overlapped, and a revert
//! finds the release that made a version live without reading the history after it.
//! Written with each checkpoint ([`Tables::put_starts`]), in the same batch, together
//! with the environment's mark of how far the table is kept.
//!
//! # To ensure correctness
//! The planner reads the table for an environment only while it is complete
//! ([`Tables::starts_complete`]): its mark reaches the environment's newest checkpoint.
//! A coordinator of an older version (in a rolling upgrade on etcd) writes checkpoints
//! without their starts and without moving the mark; the next leader of this version
//! catches the table up before it serves, and until then the planner reads the
//! checkpoints themselves.

use lockstep::names::{Environment, ProjectName, Version};
use lockstep_store::{Batch, Order, StoreError, keys};

use super::{
    CHECKPOINTS, META, Tables, VERSION_STARTS, checkpoint_range, corrupt, version_changes,
};
use crate::model::CheckpointRecord;

/// Prefix of each environment's mark in [`META`]: the newest checkpoint revision whose
/// starts the table holds, with every one before it.
const STARTS_THROUGH_PREFIX: &[u8] = b"version-starts-through/";

fn through_key(environment: &Environment) -> Vec<u8> {
    [STARTS_THROUGH_PREFIX, environment.as_str().as_bytes()].concat()
}

impl Tables {
    /// The first checkpoint revision at which `version` became live on `project` in
    /// `environment`, while the table is complete ([`Tables::starts_complete`]); none:
    /// never.
    pub fn first_live(
        &self,
        environment: &Environment,
        project: &ProjectName,
        version: &Version,
    ) -> Result<Option<u64>, StoreError> {
        self.start((environment, project, version), Order::Ascending)
    }

    /// The newest checkpoint revision at which `version` became live on `project` in
    /// `environment`, while the table is complete ([`Tables::starts_complete`]): which
    /// release made a live version live, read without the history after it.
    pub fn last_start(
        &self,
        environment: &Environment,
        project: &ProjectName,
        version: &Version,
    ) -> Result<Option<u64>, StoreError> {
        self.start((environment, project, version), Order::Descending)
    }

    /// The first start of a version in `order` (oldest or newest).
    fn start(
        &self,
        (environment, project, version): (&Environment, &ProjectName, &Version),
        order: Order,
    ) -> Result<Option<u64>, StoreError> {
        let start = keys::prefix(&[environment.as_str(), project.as_str(), version.as_str()]);
        let end = keys::prefix_end(&start);
        let found = self.kv.scan(VERSION_STARTS, &start, Some(&end), order, 1)?;
        let revision = |key: &[u8]| {
            let number = key
                .get(key.len().saturating_sub(8)..)
                .and_then(keys::u64_of);
            number.ok_or_else(|| corrupt(VERSION_STARTS, format!("bad key {key:?}")))
        };
        found.first().map(|(key, _)| revision(key)).transpose()
    }

    /// Whether the table holds the starts of every checkpoint of `environment`: its
    /// mark reaches the newest one.
    pub fn starts_complete(&self, environment: &Environment) -> Result<bool, StoreError> {
        Ok(self.starts_through(environment)? >= self.newest_revision(environment)?)
    }

    /// The newest checkpoint revision of `environment` whose starts the table holds
    /// (0: none).
    pub fn starts_through(&self, environment: &Environment) -> Result<u64, StoreError> {
        let Some(value) = self.kv.get(META, &through_key(environment))? else {
            return Ok(0);
        };
        let bad = || corrupt(META, format!("bad starts mark {value:?}"));
        keys::u64_of(&value).ok_or_else(bad)
    }

    /// The revision of the newest checkpoint of `environment` (0: none), from its key.
    pub fn newest_revision(&self, environment: &Environment) -> Result<u64, StoreError> {
        let (start, end) = checkpoint_range(environment);
        let newest = self
            .kv
            .scan(CHECKPOINTS, &start, Some(&end), Order::Descending, 1)?;
        let Some((key, _)) = newest.first() else {
            return Ok(0);
        };
        let (_, revision) = super::decode_checkpoint_key(key)?;
        Ok(revision)
    }

    /// Adds to `batch` the start of each version `cp` has live that `previous` (the
    /// environment's checkpoint before it) did not, and moves the environment's mark to
    /// `cp`: what a decision writes with its checkpoint.
    pub fn put_starts(
        batch: &mut Batch,
        previous: Option<&CheckpointRecord>,
        cp: &CheckpointRecord,
    ) {
        Self::put_start_rows(batch, previous, cp);
        Self::put_starts_through(batch, &cp.environment, cp.revision);
    }

    /// The rows of [`Tables::put_starts`] without the mark: a catch-up moves the mark
    /// once per page (a mark per checkpoint would leave a version of the key per
    /// checkpoint in the memtable: 6 MiB more at the first start on 100,000).
    pub fn put_start_rows(
        batch: &mut Batch,
        previous: Option<&CheckpointRecord>,
        cp: &CheckpointRecord,
    ) {
        let became_live = version_changes(previous, cp).filter_map(|(p, _, now)| Some((p, now?)));
        for (project, version) in became_live {
            let parts = [cp.environment.as_str(), project.as_str(), version.as_str()];
            batch.put(
                VERSION_STARTS,
                keys::parts_u64_key(&parts, cp.revision),
                Vec::new(),
            );
        }
    }

    /// Records that the table holds the starts of `environment`'s checkpoints through
    /// `revision`.
    pub fn put_starts_through(batch: &mut Batch, environment: &Environment, revision: u64) {
        batch.put(META, through_key(environment), keys::u64_key(revision));
    }

    /// Every environment with a checkpoint, one seek each.
    pub fn checkpoint_environments(&self) -> Result<Vec<Environment>, StoreError> {
        self.leading_environments(CHECKPOINTS)
    }
}
