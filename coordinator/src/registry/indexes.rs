//! Keeps the transactions' indexes (by environment, by project) whole at each leader's
//! start, before it serves: filled once for a data directory from an older version,
//! and caught up over the newest transactions an older coordinator wrote without
//! their keys (a rolling upgrade on etcd), so that a listing through them misses
//! nothing.

use lockstep_store::Batch;

use super::history::{part, written};
use crate::{error::Result, tables::Tables};

/// Transactions read per page, and indexed per batch.
const PAGE: usize = 1024;

/// Fills the indexes from every transaction once per data directory, then indexes the
/// newest transactions written without their keys. A standby (which cannot write)
/// leaves both to the leader; listings read the whole table until they are complete.
pub(super) fn fill(tables: &Tables) -> Result<()> {
    if !tables.indexes_filled()? {
        return fill_all(tables);
    }
    catch_up(tables)
}

/// Indexes every transaction, newest first, a page per batch, and marks the indexes
/// filled with the last page (a crash before that fills again from the top: puts of
/// keys already there change nothing).
fn fill_all(tables: &Tables) -> Result<()> {
    let mut before = None;
    loop {
        let page = tables.transactions_before(before, PAGE)?;
        let mut parts: Vec<Batch> = page
            .iter()
            .map(|tx| part(|b| Tables::put_indexes(b, tx)))
            .collect();
        let last = page.len() < PAGE;
        if last {
            parts.push(part(Tables::put_indexes_filled));
        }
        if !written(tables, parts)? || last {
            return Ok(());
        }
        before = page.last().map(|tx| tx.ordinal);
    }
}

/// Finds the newest transactions without their keys, down to the first one indexed,
/// and indexes them oldest page first: a crash mid-way leaves the newest unindexed, so
/// listings stay off the indexes and the next start finds the rest.
fn catch_up(tables: &Tables) -> Result<()> {
    let mut pages = Vec::new();
    let mut before = None;
    let indexed = 'down: loop {
        let size = if before.is_none() { 1 } else { PAGE };
        let page = tables.transactions_before(before, size)?;
        pages.push((before, size));
        for tx in &page {
            if tables.is_indexed(tx)? {
                break 'down Some(tx.ordinal);
            }
        }
        let Some(oldest) = page.last() else {
            break None;
        };
        before = Some(oldest.ordinal);
    };
    for (before, size) in pages.into_iter().rev() {
        let page = tables.transactions_before(before, size)?;
        // Oldest first, so that a crash part-way leaves the newest unindexed.
        let missing = (page.iter().rev()).filter(|tx| indexed.is_none_or(|i| tx.ordinal > i));
        let parts: Vec<Batch> = missing
            .map(|tx| part(|b| Tables::put_indexes(b, tx)))
            .collect();
        if !parts.is_empty() && !written(tables, parts)? {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{collections::BTreeSet, sync::Arc};

    use lockstep::names::{Environment, ProjectName, TxId};
    use lockstep_store::{Durability, Kv, MemKv, Order};

    use super::*;
    use crate::{
        model::TxState,
        tables::{IndexRange, TX_BY_ENVIRONMENT, TX_BY_PROJECT},
        txn::tests::t4,
    };

    /// The ordinals `ranges` list, newest first.
    fn listed(tables: &Tables, ranges: &[IndexRange], before: Option<u64>) -> Vec<u64> {
        let ranges: BTreeSet<IndexRange> = ranges.iter().cloned().collect();
        let page = tables.indexed_transactions_before(&ranges, before, usize::MAX);
        page.unwrap().iter().map(|tx| tx.ordinal).collect()
    }

    fn sparse() -> Environment {
        Environment::parse("e", "sparse").unwrap()
    }

    fn project(name: &str) -> ProjectName {
        ProjectName::parse("p", name).unwrap()
    }

    /// Writes transactions `ordinals` as an older version did: records without their
    /// index keys. Every 1,000th is in environment `sparse`.
    fn write_unindexed(kv: &Arc<MemKv>, ordinals: std::ops::RangeInclusive<u64>) {
        let mut batch = Batch::default();
        for ordinal in ordinals.clone() {
            let mut tx = t4(TxState::Committed);
            (tx.ordinal, tx.id) = (ordinal, TxId::parse("id", &format!("T{ordinal}")).unwrap());
            if ordinal % 1_000 == 0 {
                tx.environment = sparse();
            }
            Tables::put_transaction(&mut batch, &tx);
        }
        kv.write(batch, Durability::Sync).unwrap();
        let mut older = Batch::default();
        for table in [TX_BY_ENVIRONMENT, TX_BY_PROJECT] {
            let keys = kv.scan(table, b"", None, Order::Ascending, usize::MAX);
            for (key, _) in keys.unwrap() {
                let ordinal = lockstep_store::keys::u64_of(&key[key.len() - 8..]).unwrap();
                if ordinals.contains(&ordinal) {
                    older.delete(table, key);
                }
            }
        }
        kv.write(older, Durability::Sync).unwrap();
    }

    /// A directory whose transactions were written before the indexes existed: the
    /// fill indexes every one of them, over pages, each under its own environment and
    /// projects (a list of one reads none of the other's), and marks them filled.
    #[test]
    fn every_transaction_is_indexed_under_its_environment_and_projects() {
        let kv = Arc::new(MemKv::new());
        let tables = Tables::new(kv.clone());
        write_unindexed(&kv, 1..=2_500);
        let sparse_range = [IndexRange::environment(&sparse())];
        assert!(
            listed(&tables, &sparse_range, None).is_empty(),
            "as an older version left it"
        );
        assert!(!tables.indexes_complete().unwrap());

        fill(&tables).unwrap();
        assert!(tables.indexes_complete().unwrap());
        assert_eq!(listed(&tables, &sparse_range, None), vec![2_000, 1_000]);
        let default = listed(
            &tables,
            &[IndexRange::environment(&Environment::default())],
            None,
        );
        assert_eq!(default.len(), 2_498);
        assert_eq!((default[0], default[2_497]), (2_500, 1));
        assert_eq!(
            listed(&tables, &sparse_range, Some(2_000)),
            vec![1_000],
            "a page before"
        );
        let a_of_sparse = [IndexRange::project(&sparse(), &project("A"))];
        assert_eq!(listed(&tables, &a_of_sparse, None), vec![2_000, 1_000]);
        let both = [a_of_sparse[0].clone(), IndexRange::environment(&sparse())];
        assert_eq!(
            listed(&tables, &both, None),
            vec![2_000, 1_000],
            "each once"
        );
        let nobody = [IndexRange::project(&sparse(), &project("Z"))];
        assert!(listed(&tables, &nobody, None).is_empty());
    }

    /// On etcd a write takes at most so many operations: the fill and its catch-up
    /// write their pages in parts within the store's limit (a page of 1,024
    /// transactions has ~5,000 index keys), each transaction's keys whole, and still
    /// index every transaction.
    #[test]
    fn the_fill_and_its_catch_up_write_within_the_store_s_batch_limit() {
        let kv = Arc::new(MemKv::new());
        let limit = lockstep_store::BatchLimit {
            ops: 100,
            bytes: 1 << 20,
        };
        let tables = Tables::new(Arc::new(kv.limited_to(limit)));
        write_unindexed(&kv, 1..=2_500);
        fill(&tables).unwrap();
        assert!(tables.indexes_complete().unwrap());
        write_unindexed(&kv, 2_501..=4_200);
        fill(&tables).unwrap();
        assert!(tables.indexes_complete().unwrap());
        let sparse_range = [IndexRange::environment(&sparse())];
        assert_eq!(
            listed(&tables, &sparse_range, None),
            vec![4_000, 3_000, 2_000, 1_000]
        );
        let default = [IndexRange::environment(&Environment::default())];
        assert_eq!(listed(&tables, &default, None).len(), 4_196);
    }

    /// An older coordinator led after this version had filled the indexes (a rolling
    /// upgrade) and wrote transactions without their keys: listings stay off the
    /// indexes, and the next start indexes exactly those, over pages.
    #[test]
    fn transactions_an_older_leader_wrote_are_indexed_at_the_next_start() {
        let kv = Arc::new(MemKv::new());
        let tables = Tables::new(kv.clone());
        write_unindexed(&kv, 1..=1_500);
        fill(&tables).unwrap();
        write_unindexed(&kv, 1_501..=4_200);
        assert!(tables.indexes_filled().unwrap());
        assert!(
            !tables.indexes_complete().unwrap(),
            "the newest is not indexed"
        );
        let sparse_range = [IndexRange::environment(&sparse())];
        assert_eq!(listed(&tables, &sparse_range, None), vec![1_000]);

        fill(&tables).unwrap();
        assert!(tables.indexes_complete().unwrap());
        assert_eq!(
            listed(&tables, &sparse_range, None),
            vec![4_000, 3_000, 2_000, 1_000]
        );
        let a = listed(
            &tables,
            &[IndexRange::project(&Environment::default(), &project("A"))],
            None,
        );
        assert_eq!((a.len(), a[0], a[a.len() - 1]), (4_196, 4_200, 1));
    }

    /// Every environment a transaction was created in, each once, in name order.
    #[test]
    fn the_environments_of_the_history_are_read_from_the_index() {
        let kv = Arc::new(MemKv::new());
        let tables = Tables::new(kv.clone());
        write_unindexed(&kv, 1..=2_000);
        fill(&tables).unwrap();
        let names: Vec<String> = tables
            .indexed_environments()
            .unwrap()
            .iter()
            .map(|e| e.as_str().to_string())
            .collect();
        assert_eq!(
            names,
            vec![Environment::default().as_str().to_string(), "sparse".into()]
        );
    }
}
