//! The two indexes of the transactions table, by environment and by (environment,
//! project), so that a listing reads only what its caller asked for and may see, not
//! every transaction in between. Both are written with each transaction record
//! ([`Tables::put_transaction`]), in the same batch, so a crash leaves a record with
//! its keys or neither.
//!
//! # To ensure correctness
//! A listing reads through the indexes only while they are complete
//! ([`Tables::indexes_complete`]): filled once for a data directory from an older
//! version, and holding the newest transaction (a coordinator of an older version, as
//! in a rolling upgrade on etcd, writes records without their keys; the next leader of
//! this version catches up before it serves). An index key never decides what a caller
//! sees: every record read through one is filtered as the whole table would be.

use std::collections::BTreeSet;

use lockstep::names::{Environment, ProjectName};
use lockstep_store::{Batch, Order, StoreError, keys};

use super::{META, TRANSACTIONS, TX_BY_ENVIRONMENT, TX_BY_PROJECT, Tables, corrupt};
use crate::model::TxRecord;

/// Set once both indexes hold every transaction written before them (filled from the
/// table in a data directory from an older version).
const INDEXES_FILLED_KEY: &[u8] = b"tx-indexes-filled-v2";

/// One run of index keys, `prefix ‖ ordinal`: one environment's transactions, or one
/// project's in one environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexRange {
    table: &'static str,
    prefix: Vec<u8>,
}

impl IndexRange {
    /// Every transaction of `env`.
    pub fn environment(env: &Environment) -> Self {
        Self {
            table: TX_BY_ENVIRONMENT,
            prefix: keys::prefix(&[env.as_str()]),
        }
    }

    /// Every transaction of `env` that `project` takes part in.
    pub fn project(env: &Environment, project: &ProjectName) -> Self {
        Self {
            table: TX_BY_PROJECT,
            prefix: keys::prefix(&[env.as_str(), project.as_str()]),
        }
    }

    /// This range's key for `ordinal`.
    fn key(&self, ordinal: u64) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(&ordinal.to_be_bytes());
        key
    }

    /// Up to `limit` ordinals of this range below `before` (all when `None`), newest
    /// first.
    fn ordinals_before(
        &self,
        tables: &Tables,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let end = before.map_or_else(|| keys::prefix_end(&self.prefix), |b| self.key(b));
        let found = tables.kv.scan(
            self.table,
            &self.prefix,
            Some(&end),
            Order::Descending,
            limit,
        )?;
        let ordinal = |key: &Vec<u8>| {
            let tail = key.get(self.prefix.len()..).and_then(keys::u64_of);
            tail.ok_or_else(|| corrupt(self.table, format!("bad key {key:?}")))
        };
        found.iter().map(|(key, _)| ordinal(key)).collect()
    }
}

/// The ranges holding `tx`'s keys: its environment's, and each participant's.
fn ranges_of(tx: &TxRecord) -> impl Iterator<Item = IndexRange> + '_ {
    let projects = tx.participants.iter().map(|p| &p.project);
    let projects = projects.map(|p| IndexRange::project(&tx.environment, p));
    std::iter::once(IndexRange::environment(&tx.environment)).chain(projects)
}

impl Tables {
    /// Adds `tx`'s index keys to `batch` (with its record, or in a fill).
    pub fn put_indexes(batch: &mut Batch, tx: &TxRecord) {
        ranges_of(tx).for_each(|r| batch.put(r.table, r.key(tx.ordinal), Vec::new()));
    }

    /// Whether every index key of `tx` is written.
    pub fn is_indexed(&self, tx: &TxRecord) -> Result<bool, StoreError> {
        for range in ranges_of(tx) {
            if self.kv.get(range.table, &range.key(tx.ordinal))?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the indexes were filled for what an older version wrote.
    pub fn indexes_filled(&self) -> Result<bool, StoreError> {
        Ok(self.kv.get(META, INDEXES_FILLED_KEY)?.is_some())
    }

    /// Records that the indexes are filled.
    pub fn put_indexes_filled(batch: &mut Batch) {
        batch.put(META, INDEXES_FILLED_KEY.to_vec(), Vec::new());
    }

    /// Forgets that the indexes are filled, so that the next leader fills them again as
    /// for a directory from an older version (the bench times that one-time fill).
    pub fn delete_indexes_filled(batch: &mut Batch) {
        batch.delete(META, INDEXES_FILLED_KEY.to_vec());
    }

    /// Whether a listing may read through the indexes: filled, and holding the newest
    /// transaction (see the module's note).
    pub fn indexes_complete(&self) -> Result<bool, StoreError> {
        if !self.indexes_filled()? {
            return Ok(false);
        }
        match self.transactions_before(None, 1)?.first() {
            Some(newest) => self.is_indexed(newest),
            None => Ok(true),
        }
    }

    /// Up to `limit` transactions in any of `ranges` created before ordinal `before`
    /// (or the newest), newest first, each once.
    pub fn indexed_transactions_before(
        &self,
        ranges: &BTreeSet<IndexRange>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TxRecord>, StoreError> {
        let mut ordinals = BTreeSet::new();
        for range in ranges {
            ordinals.extend(range.ordinals_before(self, before, limit)?);
        }
        let newest = ordinals.into_iter().rev().take(limit);
        newest.map(|o| self.indexed_transaction(o)).collect()
    }

    fn indexed_transaction(&self, ordinal: u64) -> Result<TxRecord, StoreError> {
        let missing = || {
            corrupt(
                TRANSACTIONS,
                format!("indexed, but no transaction {ordinal}"),
            )
        };
        self.transaction_at(ordinal)?.ok_or_else(missing)
    }

    /// Every environment a transaction was ever created in, from the index (one seek
    /// each): where a grant over some projects of every environment may find them.
    pub fn indexed_environments(&self) -> Result<Vec<Environment>, StoreError> {
        self.leading_environments(TX_BY_ENVIRONMENT)
    }
}
