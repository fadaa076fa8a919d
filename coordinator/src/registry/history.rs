//! The planner's view of what is on disk ([`History`] over the tables), and the one-time
//! fill of `seen_versions` for data directories written before that table existed.

use std::{cell::RefCell, collections::BTreeMap};

use lockstep::names::{Environment, ProjectName, TxId, Version};
use lockstep_store::Batch;

use crate::{
    error::Result,
    model::{BuildRecord, CheckpointRecord, TxRecord},
    planner::History,
    tables::{IndexRange, Tables},
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

    fn took_part_after(
        &self,
        project: &ProjectName,
        after: &TxRecord,
        limit: usize,
    ) -> Result<Vec<TxRecord>> {
        let indexed = self.tables.indexes_complete()?;
        let (mut found, mut before) = (Vec::new(), None);
        // The first page holds what is asked (usually the newest is it), the next ones
        // a whole page each.
        let mut size = limit.clamp(1, PAGE);
        loop {
            let page = self.created_before(project, before, size, indexed)?;
            let full = page.len() == size;
            size = PAGE;
            for tx in page {
                if tx.ordinal <= after.ordinal {
                    return Ok(found);
                }
                before = Some(tx.ordinal);
                if self.took_part(&tx, project) && tx.checkpoint > after.checkpoint {
                    found.push(tx);
                }
                if found.len() == limit {
                    return Ok(found);
                }
            }
            if !full {
                return Ok(found);
            }
        }
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

/// Transactions read at a time, newest first, looking for those that took part in a
/// project after another.
const PAGE: usize = 64;

impl StoredHistory<'_> {
    /// Up to `limit` transactions created before ordinal `before` (or the newest),
    /// newest first: `project`'s from its index, or every one while the indexes are not
    /// complete (a standby's before its leader caught them up).
    fn created_before(
        &self,
        project: &ProjectName,
        before: Option<u64>,
        limit: usize,
        indexed: bool,
    ) -> Result<Vec<TxRecord>> {
        if !indexed {
            return Ok(self.tables.transactions_before(before, limit)?);
        }
        let range = [IndexRange::project(self.environment, project)].into();
        Ok(self
            .tables
            .indexed_transactions_before(&range, before, limit)?)
    }

    /// Whether `tx`, in this environment, made its checkpoint with `project` taking part.
    fn took_part(&self, tx: &TxRecord, project: &ProjectName) -> bool {
        tx.made_its_checkpoint()
            && &tx.environment == self.environment
            && tx.projects().any(|p| p == project)
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
        let mut parts: Vec<Batch> = (page.iter().enumerate())
            .map(|(i, cp)| {
                let before = match i {
                    0 => previous.as_ref(),
                    _ => page.get(i - 1),
                };
                part(|b| Tables::put_start_rows(b, before, cp))
            })
            .collect();
        let Some(last) = page.pop() else {
            return Ok(true);
        };
        parts.push(part(|b| Tables::put_starts_through(b, env, last.revision)));
        (through, previous) = (last.revision, Some(last));
        if !written(tables, parts)? {
            return Ok(false);
        }
        if !full {
            return Ok(true);
        }
    }
}

/// Writes `parts` synced, in order, in as few writes as the store takes (etcd limits a
/// transaction's operations), never one part split; false on a read-only store (a
/// standby). A crash part-way leaves a prefix of the parts written, so each fill puts
/// the mark that says it is done in its last part.
pub(super) fn written(tables: &Tables, parts: Vec<Batch>) -> Result<bool> {
    let kv = tables.kv();
    for batch in lockstep_store::whole_batches(parts, kv.batch_limit()) {
        match kv.write(batch, lockstep_store::Durability::Sync) {
            Ok(()) => {}
            Err(lockstep_store::StoreError::ReadOnly) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// One batch made by `put`: a part of a fill that lands whole.
pub(super) fn part(put: impl FnOnce(&mut Batch)) -> Batch {
    let mut batch = Batch::default();
    put(&mut batch);
    batch
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
    // The part with the row that is the sign of a filled table (`project` at `version`
    // from the checkpoint that last made it live) goes last: a crash part-way leaves
    // the sign absent, and the next start fills again (puts of rows there change
    // nothing).
    let (mut parts, mut previous, mut sign) = (Vec::new(), None::<CheckpointRecord>, 0);
    for cp in tables.checkpoints(&newest.environment)? {
        let had = previous.as_ref().and_then(|p| p.versions.get(project));
        if cp.versions.get(project) == Some(entry) && had != Some(entry) {
            sign = parts.len();
        }
        parts.push(part(|b| Tables::put_seen(b, previous.as_ref(), &cp)));
        previous = Some(cp);
    }
    if sign < parts.len() {
        let last = parts.remove(sign);
        parts.push(last);
    }
    if !written(tables, parts)? {
        return Ok(());
    }
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
    use crate::model::{LiveEntry, TxKind, TxState};

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

    /// Transaction `n` (checkpoint `n` when committed) over `projects` in `env`.
    fn over(n: u64, env: &str, projects: &[&str], state: TxState) -> TxRecord {
        let mut tx = crate::txn::tests::t4(state);
        (tx.id, tx.ordinal, tx.checkpoint) = (TxId::parse("id", &format!("T{n}")).unwrap(), n, n);
        tx.environment = Environment::parse("e", env).unwrap();
        let mut part = tx.participants[0].clone();
        tx.participants = projects
            .iter()
            .map(|p| {
                part.project = ProjectName::parse("p", p).unwrap();
                part.clone()
            })
            .collect();
        tx
    }

    /// What a revert of a transaction would undo on a project (its
    /// `no-later-dependents`) is the same read through the project's index as read from
    /// every transaction, over pages: those of the environment created after it that
    /// took part in the project and made their checkpoint (committed, or decided and
    /// still committing), newest first, and no more than asked.
    #[test]
    fn the_releases_after_one_on_a_project_are_found_with_and_without_the_index() {
        let tables = Tables::new(Arc::new(MemKv::new()));
        let mut batch = Batch::default();
        for n in 1..=300u64 {
            let (env, state) = match n % 10 {
                4 => ("staging", TxState::Committed),
                6 => ("prod", TxState::Committing),
                8 => ("prod", TxState::Aborted),
                _ => ("prod", TxState::Committed),
            };
            let projects: &[&str] = if n % 2 == 0 {
                &["web", "api"]
            } else {
                &["api"]
            };
            Tables::put_transaction(&mut batch, &over(n, env, projects, state));
        }
        tables.kv().write(batch, Durability::Sync).unwrap();
        let prod = Environment::parse("e", "prod").unwrap();
        let history = StoredHistory::new(&tables, &prod, None);
        let web = ProjectName::parse("p", "web").unwrap();
        let ids = |txs: Vec<TxRecord>| -> Vec<u64> { txs.iter().map(|t| t.ordinal).collect() };
        let asked = [(100, usize::MAX), (100, 1), (296, usize::MAX), (300, 5)];
        let mut scanned = Vec::new();
        for (after, limit) in asked {
            let after = over(after, "prod", &["web"], TxState::Committed);
            scanned.push(ids(history.took_part_after(&web, &after, limit).unwrap()));
        }
        let mut fill = Batch::default();
        Tables::put_indexes_filled(&mut fill);
        tables.kv().write(fill, Durability::Sync).unwrap();
        let expected = |after: u64, limit: usize| -> Vec<u64> {
            let web_in_prod = (after + 1..=300)
                .rev()
                .filter(|n| n % 2 == 0 && n % 10 != 4);
            web_in_prod.filter(|n| n % 10 != 8).take(limit).collect()
        };
        for ((after, limit), scanned) in asked.into_iter().zip(scanned) {
            let at = over(after, "prod", &["web"], TxState::Committed);
            let indexed = ids(history.took_part_after(&web, &at, limit).unwrap());
            assert_eq!(
                indexed,
                expected(after, limit),
                "after {after}, from the index"
            );
            assert_eq!(scanned, expected(after, limit), "after {after}, scanning");
        }
        assert_eq!(expected(100, usize::MAX).len(), 60, "the test spans pages");
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

    /// On etcd a write takes at most so many operations: the fills of `version_starts`
    /// and of `seen_versions` from 2,100 checkpoints (a version live at each) write in
    /// parts within the store's limit, and still fill every row.
    #[test]
    fn starts_and_seen_versions_are_filled_within_the_store_s_batch_limit() {
        let kv = MemKv::new();
        let (mut batch, mut previous) = (Batch::default(), None);
        for revision in 1..=2_100u64 {
            let checkpoint = cp("prod", revision, &format!("v{revision}"));
            Tables::put_checkpoint(&mut batch, &checkpoint);
            previous = Some(checkpoint);
        }
        lockstep_store::Kv::write(&kv, batch, Durability::Sync).unwrap();
        let limit = lockstep_store::BatchLimit {
            ops: 100,
            bytes: 1 << 20,
        };
        let tables = Tables::new(Arc::new(kv.limited_to(limit)));
        let prod = Environment::parse("e", "prod").unwrap();
        fill_starts(&tables).unwrap();
        backfill_seen(&tables, previous.as_ref().unwrap()).unwrap();
        assert!(tables.starts_complete(&prod).unwrap());
        let web = ProjectName::parse("p", "web").unwrap();
        for n in [1, 1_024, 1_025, 2_100] {
            let version = Version::parse("v", &format!("v{n}")).unwrap();
            assert_eq!(tables.first_live(&prod, &web, &version).unwrap(), Some(n));
            assert!(tables.was_live(&prod, &web, &version).unwrap(), "v{n} seen");
        }
    }

    /// A rolling upgrade on etcd: a leader of this version kept `version_starts`
    /// through revision 10 (and marked it filled, as stops 40-41 did), then an older
    /// leader decided 11..=20 without it, making v2 live at 15. The next leader of this
    /// version catches up before it serves, so the table has v2's start at 15, and a
    /// move back to v2 is bounded below by 15.
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
        assert_eq!(tables.last_start(&prod, &web, &v2).unwrap(), Some(15));
        assert_eq!(tables.first_live(&prod, &web, &v2).unwrap(), Some(15));
        assert_eq!(
            history.bounds(&[(&web, &v2)]).unwrap(),
            Some((Some(15), Some(20)))
        );
    }
}
