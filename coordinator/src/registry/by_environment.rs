//! The one-time fill of `tx_by_environment` for data directories written before that
//! index existed, so that a list of one environment's releases reads only its own.

use lockstep_store::Batch;

use super::history::written;
use crate::{error::Result, tables::Tables};

/// Fills `tx_by_environment` from every transaction, newest first, a page at a time,
/// once per data directory. A standby (which cannot write) leaves it to the leader;
/// lists read the whole table until it is filled.
pub(super) fn fill(tables: &Tables) -> Result<()> {
    const PAGE: usize = 1024;
    if tables.by_environment_filled()? {
        return Ok(());
    }
    let mut before = None;
    loop {
        let page = tables.transactions_before(before, PAGE)?;
        let mut batch = Batch::default();
        page.iter()
            .for_each(|tx| Tables::put_by_environment(&mut batch, tx));
        let last = page.len() < PAGE;
        if last {
            Tables::put_by_environment_filled(&mut batch);
        }
        if !written(tables, batch)? || last {
            return Ok(());
        }
        before = page.last().map(|tx| tx.ordinal);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use lockstep::names::{Environment, TxId};
    use lockstep_store::{Durability, Kv, MemKv, Order};

    use super::*;
    use crate::{model::TxState, tables::TX_BY_ENVIRONMENT, txn::tests::t4};

    /// One environment's transactions, newest first, through the index: their ordinals.
    fn listed(tables: &Tables, env: &Environment) -> Vec<u64> {
        let page = tables.environment_transactions_before(env, None, usize::MAX);
        page.unwrap().iter().map(|tx| tx.ordinal).collect()
    }

    /// A directory whose transactions were written before the index existed: the fill
    /// indexes every one of them, over pages, each under its own environment (a list of
    /// one reads none of the other's), and marks the directory filled.
    #[test]
    fn every_transaction_is_indexed_under_its_environment() {
        let kv = Arc::new(MemKv::new());
        let tables = Tables::new(kv.clone());
        let sparse = Environment::parse("e", "sparse").unwrap();
        let mut batch = Batch::default();
        for ordinal in 1..=2_500u64 {
            let mut tx = t4(TxState::Committed);
            (tx.ordinal, tx.id) = (ordinal, TxId::parse("id", &format!("T{ordinal}")).unwrap());
            if ordinal % 1_000 == 0 {
                tx.environment = sparse.clone();
            }
            Tables::put_transaction(&mut batch, &tx);
        }
        kv.write(batch, Durability::Sync).unwrap();
        let mut older = Batch::default();
        for (key, _) in kv
            .scan(TX_BY_ENVIRONMENT, b"", None, Order::Ascending, usize::MAX)
            .unwrap()
        {
            older.delete(TX_BY_ENVIRONMENT, key);
        }
        kv.write(older, Durability::Sync).unwrap();
        assert!(
            listed(&tables, &sparse).is_empty(),
            "as an older version left it"
        );
        assert!(!tables.by_environment_filled().unwrap());

        fill(&tables).unwrap();
        assert!(tables.by_environment_filled().unwrap());
        assert_eq!(listed(&tables, &sparse), vec![2_000, 1_000]);
        let default = listed(&tables, &Environment::default());
        assert_eq!(default.len(), 2_498);
        assert_eq!((default[0], default[2_497]), (2_500, 1));
        let before = tables.environment_transactions_before(&sparse, Some(2_000), 10);
        let before: Vec<u64> = before.unwrap().iter().map(|tx| tx.ordinal).collect();
        assert_eq!(before, vec![1_000], "a page before 2,000");
    }
}
