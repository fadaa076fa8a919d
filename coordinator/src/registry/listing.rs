//! A page of releases for one caller: read through the index of each environment and
//! project the caller may see (when they are few), so that its cost grows with what
//! it lists, not with everything in between that it may not see or did not ask for.

use std::collections::BTreeSet;

use lockstep::names::{Environment, ProjectName};

use super::{Registry, reads::Page};
use crate::{
    error::Result,
    model::TxRecord,
    tables::{IndexRange, Tables},
};

/// Above this many index ranges a listing reads the whole table instead (each page
/// reads a page from every range).
const MOST_RANGES: usize = 64;

/// Where the caller of a listing may find what it can see, from its grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readable {
    /// It may read everything (no need to look anywhere in particular).
    pub everything: bool,
    /// Environments it may read whole.
    pub environments: BTreeSet<Environment>,
    /// Projects it may read, in one environment or in every one (`None`).
    pub projects: BTreeSet<(Option<Environment>, ProjectName)>,
}

impl Readable {
    /// Everything (a caller whose reads are not checked, or a grant over everything).
    pub fn everything() -> Self {
        Self {
            everything: true,
            ..Self::default()
        }
    }
}

/// What a listing shows: of environment `env` (every one: `None`) and of `project`
/// (every one: `None`), the transactions `visible` keeps, which are all found where
/// `readable` says.
pub struct Filter<'a> {
    /// The environment asked for.
    pub env: Option<&'a Environment>,
    /// The project asked for.
    pub project: Option<&'a ProjectName>,
    /// Where what the caller may see can be found.
    pub readable: &'a Readable,
    /// Whether the caller may see a transaction (the exact rule, applied to each).
    pub visible: &'a dyn Fn(&TxRecord) -> bool,
}

impl Registry {
    /// One page of transactions, newest first, created before ordinal `before` (from
    /// the newest when `None`), of those `filter` keeps (the page is filled with those,
    /// not filtered after); unfinished ones as they are now. Storage is read without
    /// the state lock, which is taken only to swap in unfinished records.
    pub fn list(
        &self,
        filter: &Filter<'_>,
        size: usize,
        before: Option<u64>,
        active_only: bool,
    ) -> Result<Page<TxRecord>> {
        let keeps = |t: &TxRecord| {
            let mut projects = t.participants.iter().map(|p| &p.project);
            filter.env.is_none_or(|e| &t.environment == e)
                && filter.project.is_none_or(|p| projects.any(|q| q == p))
                && (filter.visible)(t)
        };
        if active_only {
            return Ok(self.list_unfinished(&keeps, size, before));
        }
        let ranges = self.ranges(filter)?;
        let page = read_page(&self.inner.tables, ranges.as_ref(), &keeps, size, before)?;
        Ok(self.with_unfinished(page))
    }

    /// The unfinished transactions `keeps` keeps, from memory.
    fn list_unfinished(
        &self,
        keeps: &dyn Fn(&TxRecord) -> bool,
        size: usize,
        before: Option<u64>,
    ) -> Page<TxRecord> {
        let s = self.state();
        let active = s.active.values().map(|a| &a.record);
        let earlier = |t: &&TxRecord| before.is_none_or(|b| t.ordinal < b);
        let mut out: Vec<TxRecord> = active
            .filter(earlier)
            .filter(|t| keeps(t))
            .cloned()
            .collect();
        drop(s);
        out.sort_by_key(|t| std::cmp::Reverse(t.ordinal));
        Page::of(out, size, |t| t.ordinal)
    }

    /// `page` with each unfinished transaction as its driver shows it now.
    fn with_unfinished(&self, mut page: Page<TxRecord>) -> Page<TxRecord> {
        let s = self.state();
        for t in &mut page.items {
            if let Some(a) = s.active.get(&t.id) {
                t.clone_from(&a.record);
            }
        }
        page
    }

    /// The index ranges holding everything `filter` may keep, or `None` to read the
    /// whole table: the indexes are not complete, or the caller may read everything
    /// and names neither an environment nor a project, or the ranges would be too many.
    fn ranges(&self, filter: &Filter<'_>) -> Result<Option<BTreeSet<IndexRange>>> {
        let readable = filter.readable;
        let tables = &self.inner.tables;
        let everything = filter.env.is_none() && filter.project.is_none() && readable.everything;
        if everything || !tables.indexes_complete()? {
            return Ok(None);
        }
        let whole = |e: &Environment| readable.everything || readable.environments.contains(e);
        match (filter.env, filter.project) {
            (Some(env), None) if whole(env) => {
                return Ok(Some(BTreeSet::from([IndexRange::environment(env)])));
            }
            _ => {}
        }
        let environments = match filter.env {
            Some(env) => vec![env.clone()],
            None => tables.indexed_environments()?,
        };
        let ranges = ranges_in(filter, &environments);
        Ok((ranges.len() <= MOST_RANGES).then_some(ranges))
    }
}

/// A page of the transactions `keeps` keeps, read through `ranges` (`None`: the whole
/// table) from before `before`, until the page is full or nothing is left.
fn read_page(
    tables: &Tables,
    ranges: Option<&BTreeSet<IndexRange>>,
    keeps: &dyn Fn(&TxRecord) -> bool,
    size: usize,
    before: Option<u64>,
) -> Result<Page<TxRecord>> {
    let mut out = Vec::new();
    let mut cursor = before;
    loop {
        let batch = match ranges {
            Some(ranges) => tables.indexed_transactions_before(ranges, cursor, size + 1)?,
            None => tables.transactions_before(cursor, size + 1)?,
        };
        let exhausted = batch.len() <= size;
        cursor = batch.last().map(|t| t.ordinal);
        out.extend(batch.into_iter().filter(|t| keeps(t)));
        if out.len() > size || exhausted {
            return Ok(Page::of(out, size, |t| t.ordinal));
        }
    }
}

/// The ranges within `environments` holding everything `filter` may keep: the project
/// asked for in each, or else where the caller's grants reach in each.
fn ranges_in(filter: &Filter<'_>, environments: &[Environment]) -> BTreeSet<IndexRange> {
    let readable = filter.readable;
    let mut ranges = BTreeSet::new();
    for env in environments {
        if let Some(project) = filter.project {
            ranges.insert(IndexRange::project(env, project));
        } else if readable.environments.contains(env) {
            ranges.insert(IndexRange::environment(env));
        } else {
            let in_env =
                |(e, _): &&(Option<Environment>, ProjectName)| e.as_ref().is_none_or(|e| e == env);
            let projects = readable.projects.iter().filter(in_env);
            ranges.extend(projects.map(|(_, p)| IndexRange::project(env, p)));
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use lockstep::names::TxId;
    use lockstep_store::{Batch, Durability, Kv, MemKv};

    use super::*;
    use crate::{model::TxState, txn::tests::t4};

    fn env(name: &str) -> Environment {
        Environment::parse("e", name).unwrap()
    }

    fn project(name: &str) -> ProjectName {
        ProjectName::parse("p", name).unwrap()
    }

    /// 3,000 transactions: one in 100 in `sparse`, the rest in `default`; of A, B and
    /// C, of A alone, or of B and C, in turn.
    fn history() -> Tables {
        let kv = Arc::new(MemKv::new());
        let mut batch = Batch::default();
        for ordinal in 1..=3_000u64 {
            let mut tx = t4(TxState::Committed);
            (tx.ordinal, tx.id) = (ordinal, TxId::parse("id", &format!("T{ordinal}")).unwrap());
            if ordinal % 100 == 0 {
                tx.environment = env("sparse");
            }
            let keep = |p: &str| match ordinal % 3 {
                1 => p == "A",
                2 => p != "A",
                _ => true,
            };
            tx.participants.retain(|p| keep(p.project.as_str()));
            Tables::put_transaction(&mut batch, &tx);
        }
        Tables::put_indexes_filled(&mut batch);
        kv.write(batch, Durability::Sync).unwrap();
        Tables::new(kv)
    }

    /// Which transactions a listing should show.
    type Keeps<'a> = &'a dyn Fn(&TxRecord) -> bool;

    /// Every page of a listing, following its cursor: the ordinals of each.
    fn pages(
        tables: &Tables,
        ranges: Option<&BTreeSet<IndexRange>>,
        keeps: &dyn Fn(&TxRecord) -> bool,
    ) -> Vec<Vec<u64>> {
        let (mut out, mut before) = (Vec::new(), None);
        loop {
            let page = read_page(tables, ranges, keeps, 50, before).unwrap();
            out.push(page.items.iter().map(|t| t.ordinal).collect());
            match page.next {
                Some(next) => before = Some(next),
                None => return out,
            }
        }
    }

    /// A reader of A in every environment, one of the whole of `sparse` and of B and C
    /// in `default`, and a reader of everything asking for B's: through the indexes
    /// they get the same pages, page for page, as the whole table read and filtered
    /// gives them.
    #[test]
    fn a_scoped_reader_gets_through_the_indexes_the_pages_the_whole_table_gives() {
        let tables = history();
        assert!(tables.indexes_complete().unwrap());
        let environments = tables.indexed_environments().unwrap();
        let of = |t: &TxRecord, allowed: &[&str]| {
            t.participants
                .iter()
                .all(|p| allowed.contains(&p.project.as_str()))
        };
        let a_anywhere = Readable {
            projects: BTreeSet::from([(None, project("A"))]),
            ..Readable::default()
        };
        let keeps_a = |t: &TxRecord| of(t, &["A"]);
        let sparse_and_bc = Readable {
            environments: BTreeSet::from([env("sparse")]),
            projects: BTreeSet::from([
                (Some(Environment::default()), project("B")),
                (Some(Environment::default()), project("C")),
            ]),
            ..Readable::default()
        };
        let keeps_bc = |t: &TxRecord| t.environment == env("sparse") || of(t, &["B", "C"]);
        let everything = Readable::everything();
        let keeps_b = |t: &TxRecord| t.participants.iter().any(|p| p.project == project("B"));
        let b = project("B");
        let cases: [(&Readable, Option<&ProjectName>, Keeps<'_>); 3] = [
            (&a_anywhere, None, &keeps_a),
            (&sparse_and_bc, None, &keeps_bc),
            (&everything, Some(&b), &keeps_b),
        ];
        for (readable, asked, keeps) in cases {
            let filter = Filter {
                env: None,
                project: asked,
                readable,
                visible: &|_| true,
            };
            let ranges = ranges_in(&filter, &environments);
            let indexed = pages(&tables, Some(&ranges), keeps);
            assert_eq!(indexed, pages(&tables, None, keeps));
            assert!(indexed.len() > 10, "{} pages", indexed.len());
        }
        let filter = Filter {
            env: None,
            project: None,
            readable: &a_anywhere,
            visible: &|_| true,
        };
        let ranges = ranges_in(&filter, &environments);
        assert_eq!(ranges.len(), 2, "A in default and in sparse");
    }
}
