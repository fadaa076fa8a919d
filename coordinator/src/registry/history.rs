//! The planner's view of what is on disk ([`History`] over the tables), and the one-time
//! fill of `seen_versions` for data directories written before that table existed.

use std::{cell::RefCell, collections::BTreeMap};

use lockstep::names::{Environment, ProjectName, TxId, Version};
use lockstep_store::Batch;

use crate::{
    error::Result,
    model::{BuildRecord, CheckpointRecord, TxRecord},
    planner::{History, StartFinder},
    tables::Tables,
};

/// [`History`] over the tables, for one environment.
pub(super) struct StoredHistory<'a> {
    pub(super) tables: &'a Tables,
    pub(super) environment: &'a Environment,
    /// The environment's newest checkpoint as the plan sees it: the last revision of
    /// the versions live in it, which the tables do not rewrite at each checkpoint.
    pub(super) head: Option<&'a CheckpointRecord>,
    /// What [`History::was_live`] answered in this plan: the plan's waves and its
    /// compatibility rule ask it of each target, and a version never live (every
    /// upgrade) is a store read that misses, the dearest kind.
    was_live: RefCell<BTreeMap<(ProjectName, Version), bool>>,
}

impl<'a> StoredHistory<'a> {
    /// The history of `environment` whose newest checkpoint is `head`, for one plan.
    pub(super) fn new(
        tables: &'a Tables,
        environment: &'a Environment,
        head: Option<&'a CheckpointRecord>,
    ) -> Self {
        let was_live = RefCell::default();
        Self {
            tables,
            environment,
            head,
            was_live,
        }
    }
}

impl History for StoredHistory<'_> {
    fn newest_checkpoint_where(
        &self,
        having: &[(&ProjectName, &Version)],
        matches: &mut dyn FnMut(&CheckpointRecord) -> bool,
    ) -> Result<Option<CheckpointRecord>> {
        let Some(bounds) = self.bounds(having)? else {
            return Ok(None);
        };
        Ok(self
            .tables
            .newest_checkpoint_where(self.environment, bounds, matches)?)
    }

    fn was_live(&self, project: &ProjectName, version: &Version) -> Result<bool> {
        let key = (project.clone(), version.clone());
        if let Some(known) = self.was_live.borrow().get(&key) {
            return Ok(*known);
        }
        let live = self.tables.was_live(self.environment, project, version)?;
        self.was_live.borrow_mut().insert(key, live);
        Ok(live)
    }

    fn checkpoint(&self, revision: u64) -> Result<Option<CheckpointRecord>> {
        Ok(self.tables.checkpoint(self.environment, revision)?)
    }

    fn transaction(&self, id: &TxId) -> Result<Option<TxRecord>> {
        Ok(self.tables.transaction(id)?)
    }

    fn made_live_after(
        &self,
        project: &ProjectName,
        version: &Version,
        after: u64,
    ) -> Result<Option<TxRecord>> {
        let made = match self.tables.starts_complete(self.environment)? {
            true => self.start_after(project, version, after)?,
            false => self.start_after_scanning(project, version, after)?,
        };
        let Some(made) = made else { return Ok(None) };
        Ok(self.tables.transaction(&made)?)
    }

    fn build(&self, project: &ProjectName, version: &Version) -> Result<Option<BuildRecord>> {
        Ok(self.tables.build(self.environment, project, version)?)
    }
}

impl StoredHistory<'_> {
    /// The revisions between which every version of `having` could have been live
    /// together: from the latest first start of any of them to the earliest last
    /// revision (the lower bound only while `version_starts` is complete); none when one
    /// of them was never live or the range is empty.
    fn bounds(
        &self,
        having: &[(&ProjectName, &Version)],
    ) -> Result<Option<(Option<u64>, Option<u64>)>> {
        let (tables, env) = (self.tables, self.environment);
        let filled = !having.is_empty() && tables.starts_complete(env)?;
        let (mut low, mut high): (Option<u64>, Option<u64>) = (None, None);
        for (project, version) in having {
            let Some(last) = self.last_live(project, version)? else {
                return Ok(None);
            };
            high = Some(high.map_or(last, |h| h.min(last)));
            if filled {
                let first = tables.first_live(env, project, version)?.unwrap_or(0);
                low = Some(low.map_or(first, |l| l.max(first)));
            }
        }
        Ok(match (low, high) {
            (Some(l), Some(h)) if l > h => None,
            bounds => Some(bounds),
        })
    }
}

impl StoredHistory<'_> {
    /// The transaction of `version`'s newest start after `after`, from `version_starts`.
    fn start_after(
        &self,
        project: &ProjectName,
        version: &Version,
        after: u64,
    ) -> Result<Option<TxId>> {
        let newest = self.tables.last_start(self.environment, project, version)?;
        let Some(revision) = newest.filter(|r| *r > after) else {
            return Ok(None);
        };
        let cp = self.tables.checkpoint(self.environment, revision)?;
        Ok(cp.map(|cp| cp.transaction))
    }

    /// The same, reading every checkpoint from `after` on (a data directory whose
    /// `version_starts` is not complete: a standby's before its leader caught it up).
    fn start_after_scanning(
        &self,
        project: &ProjectName,
        version: &Version,
        after: u64,
    ) -> Result<Option<TxId>> {
        const PAGE: usize = 256;
        let mut finder = StartFinder::new(project, version, after);
        let mut from = after.saturating_sub(1);
        loop {
            let page = self
                .tables
                .checkpoints_after(self.environment, from, PAGE)?;
            page.iter().for_each(|cp| finder.see(cp));
            match page.last() {
                Some(last) if page.len() == PAGE => from = last.revision,
                _ => return Ok(finder.newest),
            }
        }
    }

    /// The newest revision at which `version` was live on `project`: the head's, when
    /// it is live there.
    fn last_live(&self, project: &ProjectName, version: &Version) -> Result<Option<u64>> {
        let at_head = self.head.filter(|h| {
            let live = h.versions.get(project).map(|e| &e.version);
            live == Some(version)
        });
        match at_head {
            Some(head) => Ok(Some(head.revision)),
            None => Ok(self.tables.last_live(self.environment, project, version)?),
        }
    }
}

/// Catches `version_starts` up in every environment, before the leader serves: from
/// each environment's mark (none in a data directory from before the table, or from a
/// version that kept no mark) to its newest checkpoint, so that what an older leader
/// decided without it is in it. A standby (which cannot write) leaves it to the
/// leader; the planner reads the checkpoints until then.
pub(super) fn fill_starts(tables: &Tables) -> Result<()> {
    for env in tables.checkpoint_environments()? {
        if !catch_up_starts(tables, &env)? {
            return Ok(());
        }
    }
    Ok(())
}

/// [`fill_starts`] for one environment, a page at a time, each page's starts written
/// with the mark moved to its last checkpoint (a crash part-way resumes there); false
/// on a read-only store.
fn catch_up_starts(tables: &Tables, env: &Environment) -> Result<bool> {
    const PAGE: usize = 1024;
    let mut through = tables.starts_through(env)?;
    let mut previous = match through {
        0 => None,
        revision => tables.checkpoint(env, revision)?,
    };
    loop {
        let mut page = tables.checkpoints_after(env, through, PAGE)?;
        let full = page.len() == PAGE;
        let mut batch = Batch::default();
        for (i, cp) in page.iter().enumerate() {
            let before = match i {
                0 => previous.as_ref(),
                _ => page.get(i - 1),
            };
            Tables::put_start_rows(&mut batch, before, cp);
        }
        let Some(last) = page.pop() else {
            return Ok(true);
        };
        Tables::put_starts_through(&mut batch, env, last.revision);
        (through, previous) = (last.revision, Some(last));
        if !written(tables, batch)? {
            return Ok(false);
        }
        if !full {
            return Ok(true);
        }
    }
}

/// Writes `batch` synced; false on a read-only store (a standby).
pub(super) fn written(tables: &Tables, batch: Batch) -> Result<bool> {
    match tables.kv().write(batch, lockstep_store::Durability::Sync) {
        Ok(()) => Ok(true),
        Err(lockstep_store::StoreError::ReadOnly) => Ok(false),
        Err(e) => Err(e.into()),
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
    let (mut batch, mut previous) = (Batch::default(), None);
    for cp in tables.checkpoints(&newest.environment)? {
        Tables::put_seen(&mut batch, previous.as_ref(), &cp);
        previous = Some(cp);
    }
    tables.kv().write(batch, lockstep_store::Durability::Sync)?;
    tracing::info!(
        environment = %newest.environment,
        "filled the seen_versions table from the checkpoints (data written before it existed)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use lockstep_store::{Durability, MemKv};

    use super::*;
    use crate::model::{LiveEntry, TxKind};

    fn cp(env: &str, revision: u64, web: &str) -> CheckpointRecord {
        let entry = LiveEntry {
            version: Version::parse("v", web).unwrap(),
            schema: None,
        };
        CheckpointRecord {
            revision,
            environment: Environment::parse("e", env).unwrap(),
            versions: [(ProjectName::parse("p", "web").unwrap(), entry)].into(),
            transaction: TxId::parse("id", &format!("T{revision}")).unwrap(),
            kind: TxKind::Release,
            description: String::new(),
            untested: false,
            committed_ms: revision,
        }
    }

    /// Which release made a version live after a revision (what a revert's
    /// `no-later-dependents` asks) is the same from the `version_starts` index as from
    /// reading the checkpoints, over pages, with the version live twice: the newest
    /// start counts, and none after the revision is none.
    #[test]
    fn the_release_that_made_a_version_live_is_found_without_the_history() {
        let tables = Tables::new(Arc::new(MemKv::new()));
        let (mut batch, mut previous) = (Batch::default(), None);
        for revision in 1..=800u64 {
            let web = match revision {
                ..=300 | 601..=700 => "v1",
                301..=600 => "v2",
                _ => "v3",
            };
            let checkpoint = cp("prod", revision, web);
            Tables::put_checkpoint(&mut batch, &checkpoint);
            previous = Some(checkpoint);
        }
        tables.kv().write(batch, Durability::Sync).unwrap();
        let prod = Environment::parse("e", "prod").unwrap();
        let history = StoredHistory::new(&tables, &prod, previous.as_ref());
        let web = ProjectName::parse("p", "web").unwrap();
        let v = |s: &str| Version::parse("v", s).unwrap();
        let t = |n: u64| Some(TxId::parse("id", &format!("T{n}")).unwrap());
        let asked = [
            ("v1", 1, t(601)),
            ("v1", 600, t(601)),
            ("v1", 601, None),
            ("v2", 0, t(301)),
            ("v2", 300, t(301)),
            ("v3", 700, t(701)),
            ("v3", 701, None),
            ("v4", 0, None),
        ];
        let scanned: Vec<_> = asked
            .iter()
            .map(|(version, after, _)| history.start_after_scanning(&web, &v(version), *after))
            .collect();
        fill_starts(&tables).unwrap();
        for ((version, after, made), scanned) in asked.iter().zip(scanned) {
            let indexed = history.start_after(&web, &v(version), *after).unwrap();
            assert_eq!(&indexed, made, "{version} after {after}, from the index");
            assert_eq!(&scanned.unwrap(), made, "{version} after {after}, scanning");
        }
    }

    /// A directory written before `version_starts` existed is filled once from every
    /// environment's checkpoints, over pages, each environment on its own; until then
    /// the search has no lower bound, after it the bound is the first start.
    #[test]
    fn starts_are_filled_once_from_every_environment() {
        let tables = Tables::new(Arc::new(MemKv::new()));
        let (mut batch, mut previous) = (Batch::default(), None);
        for revision in 1..=2_100u64 {
            let web = if revision < 2_000 { "v1" } else { "v2" };
            let checkpoint = cp("prod", revision, web);
            Tables::put_checkpoint(&mut batch, &checkpoint);
            Tables::put_seen(&mut batch, previous.as_ref(), &checkpoint);
            previous = Some(checkpoint);
        }
        Tables::put_checkpoint(&mut batch, &cp("dev", 1, "v2"));
        tables.kv().write(batch, Durability::Sync).unwrap();
        let (prod, dev) = (
            Environment::parse("e", "prod").unwrap(),
            Environment::parse("e", "dev").unwrap(),
        );
        let (web, v2) = (
            ProjectName::parse("p", "web").unwrap(),
            Version::parse("v", "v2").unwrap(),
        );
        let history = StoredHistory::new(&tables, &prod, previous.as_ref());
        assert_eq!(
            history.bounds(&[(&web, &v2)]).unwrap(),
            Some((None, Some(2_100))),
            "v2 is live at the head: last live there, though written once, at 2,000"
        );
        let v1 = Version::parse("v", "v1").unwrap();
        assert_eq!(
            history.bounds(&[(&web, &v1)]).unwrap(),
            Some((None, Some(1_999))),
            "v1 was written when it stopped being live"
        );

        assert!(!tables.starts_complete(&prod).unwrap());
        fill_starts(&tables).unwrap();
        assert!(tables.starts_complete(&prod).unwrap() && tables.starts_complete(&dev).unwrap());
        assert_eq!(tables.first_live(&prod, &web, &v2).unwrap(), Some(2_000));
        assert_eq!(tables.first_live(&dev, &web, &v2).unwrap(), Some(1));
        assert_eq!(tables.first_live(&prod, &web, &v1).unwrap(), Some(1));
        assert_eq!(
            history.bounds(&[(&web, &v2)]).unwrap(),
            Some((Some(2_000), Some(2_100)))
        );
        // v1 last live at 1,999, v2 first live at 2,000: never together.
        assert_eq!(history.bounds(&[(&web, &v1), (&web, &v2)]).unwrap(), None);
    }

    /// A rolling upgrade on etcd: a leader of this version kept `version_starts`
    /// through revision 10 (and marked it filled, as stops 40-41 did), then an older
    /// leader decided 11..=20 without it, making v2 live at 15. The next leader of this
    /// version catches up before it serves, so a revert's `no-later-dependents` finds
    /// the release of revision 15, and a move back to v2 is bounded below by 15.
    #[test]
    fn starts_an_older_leader_left_out_are_caught_up() {
        let tables = Tables::new(Arc::new(MemKv::new()));
        let (mut batch, mut previous) = (Batch::default(), None::<CheckpointRecord>);
        for revision in 1..=20u64 {
            let checkpoint = cp("prod", revision, if revision < 15 { "v1" } else { "v2" });
            Tables::put_checkpoint(&mut batch, &checkpoint);
            Tables::put_seen(&mut batch, previous.as_ref(), &checkpoint);
            if revision <= 10 {
                Tables::put_starts(&mut batch, previous.as_ref(), &checkpoint);
            }
            previous = Some(checkpoint);
        }
        batch.put(
            crate::tables::META,
            b"version-starts-filled-v1".to_vec(),
            Vec::new(),
        );
        tables.kv().write(batch, Durability::Sync).unwrap();
        let prod = Environment::parse("e", "prod").unwrap();
        let history = StoredHistory::new(&tables, &prod, previous.as_ref());
        let (web, v2) = (
            ProjectName::parse("p", "web").unwrap(),
            Version::parse("v", "v2").unwrap(),
        );
        assert!(!tables.starts_complete(&prod).unwrap());
        assert_eq!(
            history.bounds(&[(&web, &v2)]).unwrap(),
            Some((None, Some(20))),
            "until the catch-up the planner takes no lower bound from the table"
        );
        fill_starts(&tables).unwrap();
        assert_eq!(tables.starts_through(&prod).unwrap(), 20);
        let t15 = TxId::parse("id", "T15").unwrap();
        assert_eq!(history.start_after(&web, &v2, 10).unwrap(), Some(t15));
        assert_eq!(tables.first_live(&prod, &web, &v2).unwrap(), Some(15));
        assert_eq!(
            history.bounds(&[(&web, &v2)]).unwrap(),
            Some((Some(15), Some(20)))
        );
    }
}
