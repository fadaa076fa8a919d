//! The coordinator's tables on top of [`Kv`]: names, key layouts and value encodings in
//! one place. Values are JSON (readable with any RocksDB tool, tolerant of added fields);
//! events are stored as their protobuf wire form, since that is what watchers receive.
//!
//! Key layouts (never reuse a retired one):
//! - `projects`:     (environment, project)            → ProjectRecord
//! - `transactions`: ordinal (u64 BE)                  → TxRecord
//! - `tx_ids`:       id                                → ordinal
//! - `active`:       ordinal                           → "" (unfinished transactions)
//! - `events`:       seq (u64 BE)                      → lockstep.v1.Event
//! - `checkpoints`:  (environment, revision u64 BE)    → CheckpointRecord
//! - `quarantine`:   (environment, project, version)   → QuarantineRecord
//! - `seen_versions`: (environment, project, version)  → revision (u64 BE) it was last
//!   made live by: "was this version ever live here", without history in memory

use std::sync::Arc;

use lockstep::{
    names::{Environment, ProjectName, TxId, Version},
    pb,
};
use lockstep_store::{Batch, Kv, Order, StoreError, keys};
use prost::Message;
use serde::{Serialize, de::DeserializeOwned};

use crate::model::{CheckpointRecord, ProjectRecord, QuarantineRecord, TxRecord};

/// Projects by (environment, name).
pub const PROJECTS: &str = "projects";
/// Transactions by ordinal.
pub const TRANSACTIONS: &str = "transactions";
/// Transaction id → ordinal.
pub const TX_IDS: &str = "tx_ids";
/// Ordinals of unfinished transactions.
pub const ACTIVE: &str = "active";
/// The event log by sequence number.
pub const EVENTS: &str = "events";
/// Checkpoints by (environment, revision).
pub const CHECKPOINTS: &str = "checkpoints";
/// Quarantined (environment, project, version).
pub const QUARANTINE: &str = "quarantine";
/// Versions ever live, by (environment, project, version).
pub const SEEN_VERSIONS: &str = "seen_versions";

/// Every table the coordinator opens (checked against what is on disk).
pub const ALL: &[&str] = &[
    PROJECTS,
    TRANSACTIONS,
    TX_IDS,
    ACTIVE,
    EVENTS,
    CHECKPOINTS,
    QUARANTINE,
    SEEN_VERSIONS,
];

/// A quarantined (environment, project, version).
pub type QuarantineKey = (Environment, ProjectName, Version);

/// Typed reads and batch builders over the coordinator's tables.
#[derive(Clone)]
pub struct Tables {
    kv: Arc<dyn Kv>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize: no maps with non-string keys")
}

fn decode<T: DeserializeOwned>(table: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(table, e))
}

fn corrupt(table: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("table {table}: {e}"))
}

impl Tables {
    /// Wraps a store that was opened with [`ALL`].
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self { kv }
    }

    /// The underlying store (for the journal's writes).
    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }

    /// Every project of every environment.
    pub fn projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        self.kv
            .scan(PROJECTS, b"", None, Order::Ascending, usize::MAX)?
            .iter()
            .map(|(_, v)| decode(PROJECTS, v))
            .collect()
    }

    /// Adds a project put to `batch`.
    pub fn put_project(batch: &mut Batch, p: &ProjectRecord) {
        let key = keys::parts_key(&[p.environment.as_str(), p.name.as_str()]);
        batch.put(PROJECTS, key, encode(p));
    }

    /// A transaction by id.
    pub fn transaction(&self, id: &TxId) -> Result<Option<TxRecord>, StoreError> {
        let Some(ordinal) = self.kv.get(TX_IDS, id.as_str().as_bytes())? else {
            return Ok(None);
        };
        let ordinal = keys::u64_of(&ordinal).ok_or_else(|| corrupt(TX_IDS, "short ordinal"))?;
        self.transaction_at(ordinal)
    }

    fn transaction_at(&self, ordinal: u64) -> Result<Option<TxRecord>, StoreError> {
        self.kv
            .get(TRANSACTIONS, &keys::u64_key(ordinal))?
            .map(|v| decode(TRANSACTIONS, &v))
            .transpose()
    }

    /// Up to `limit` transactions, newest first.
    pub fn recent_transactions(&self, limit: usize) -> Result<Vec<TxRecord>, StoreError> {
        self.kv
            .scan(TRANSACTIONS, b"", None, Order::Descending, limit)?
            .iter()
            .map(|(_, v)| decode(TRANSACTIONS, v))
            .collect()
    }

    /// Transactions created after `ordinal`, oldest first (for revert planning).
    pub fn transactions_after(&self, ordinal: u64) -> Result<Vec<TxRecord>, StoreError> {
        self.kv
            .scan(
                TRANSACTIONS,
                &keys::u64_key(ordinal + 1),
                None,
                Order::Ascending,
                usize::MAX,
            )?
            .iter()
            .map(|(_, v)| decode(TRANSACTIONS, v))
            .collect()
    }

    /// Unfinished transactions in creation order (for recovery).
    pub fn active_transactions(&self) -> Result<Vec<TxRecord>, StoreError> {
        let mut out = Vec::new();
        for (key, _) in self
            .kv
            .scan(ACTIVE, b"", None, Order::Ascending, usize::MAX)?
        {
            let ordinal = keys::u64_of(&key).ok_or_else(|| corrupt(ACTIVE, "short key"))?;
            let tx = self.transaction_at(ordinal)?.ok_or_else(|| {
                corrupt(ACTIVE, format!("active ordinal {ordinal} has no record"))
            })?;
            out.push(tx);
        }
        Ok(out)
    }

    /// The highest ordinal ever used (0 when none).
    pub fn last_ordinal(&self) -> Result<u64, StoreError> {
        let last = self
            .kv
            .scan(TRANSACTIONS, b"", None, Order::Descending, 1)?;
        Ok(last.first().and_then(|(k, _)| keys::u64_of(k)).unwrap_or(0))
    }

    /// Adds a transaction put (and its id and active-index entries) to `batch`.
    pub fn put_transaction(batch: &mut Batch, tx: &TxRecord) {
        let key = keys::u64_key(tx.ordinal);
        batch.put(TRANSACTIONS, key.clone(), encode(tx));
        batch.put(TX_IDS, tx.id.as_str().as_bytes().to_vec(), key.clone());
        if tx.state.is_terminal() {
            batch.delete(ACTIVE, key);
        } else {
            batch.put(ACTIVE, key, Vec::new());
        }
    }

    /// Events with `seq >= from`, at most `limit`, in order.
    pub fn events(&self, from: u64, limit: usize) -> Result<Vec<pb::Event>, StoreError> {
        self.kv
            .scan(EVENTS, &keys::u64_key(from), None, Order::Ascending, limit)?
            .iter()
            .map(|(_, v)| pb::Event::decode(v.as_slice()).map_err(|e| corrupt(EVENTS, e)))
            .collect()
    }

    /// The highest event sequence number written (0 when none).
    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        let last = self.kv.scan(EVENTS, b"", None, Order::Descending, 1)?;
        Ok(last.first().and_then(|(k, _)| keys::u64_of(k)).unwrap_or(0))
    }

    /// Adds an event put to `batch` (its `seq` must be set).
    pub fn put_event(batch: &mut Batch, event: &pb::Event) {
        batch.put(EVENTS, keys::u64_key(event.seq), event.encode_to_vec());
    }

    /// Checkpoints of `environment`, oldest first.
    pub fn checkpoints(
        &self,
        environment: &Environment,
    ) -> Result<Vec<CheckpointRecord>, StoreError> {
        let prefix = keys::prefix(&[environment.as_str()]);
        let end = keys::prefix_end(&prefix);
        self.kv
            .scan(
                CHECKPOINTS,
                &prefix,
                Some(&end),
                Order::Ascending,
                usize::MAX,
            )?
            .iter()
            .map(|(_, v)| decode(CHECKPOINTS, v))
            .collect()
    }

    /// One checkpoint.
    pub fn checkpoint(
        &self,
        environment: &Environment,
        revision: u64,
    ) -> Result<Option<CheckpointRecord>, StoreError> {
        self.kv
            .get(
                CHECKPOINTS,
                &keys::parts_u64_key(&[environment.as_str()], revision),
            )?
            .map(|v| decode(CHECKPOINTS, &v))
            .transpose()
    }

    /// The newest checkpoint of `environment`.
    pub fn latest_checkpoint(
        &self,
        environment: &Environment,
    ) -> Result<Option<CheckpointRecord>, StoreError> {
        let prefix = keys::prefix(&[environment.as_str()]);
        let end = keys::prefix_end(&prefix);
        self.kv
            .scan(CHECKPOINTS, &prefix, Some(&end), Order::Descending, 1)?
            .first()
            .map(|(_, v)| decode(CHECKPOINTS, v))
            .transpose()
    }

    /// The newest checkpoint of `environment` for which `matches` holds, reading newest
    /// first a page at a time and stopping at the first match.
    pub fn newest_checkpoint_where(
        &self,
        environment: &Environment,
        matches: &mut dyn FnMut(&CheckpointRecord) -> bool,
    ) -> Result<Option<CheckpointRecord>, StoreError> {
        const PAGE: usize = 256;
        let prefix = keys::prefix(&[environment.as_str()]);
        let mut end = keys::prefix_end(&prefix);
        loop {
            let page = self
                .kv
                .scan(CHECKPOINTS, &prefix, Some(&end), Order::Descending, PAGE)?;
            for (key, value) in &page {
                let cp: CheckpointRecord = decode(CHECKPOINTS, value)?;
                if matches(&cp) {
                    return Ok(Some(cp));
                }
                end = key.clone();
            }
            if page.len() < PAGE {
                return Ok(None);
            }
        }
    }

    /// Whether `version` was ever live on `project` in `environment`.
    pub fn was_live(
        &self,
        environment: &Environment,
        project: &ProjectName,
        version: &Version,
    ) -> Result<bool, StoreError> {
        let key = keys::parts_key(&[environment.as_str(), project.as_str(), version.as_str()]);
        Ok(self.kv.get(SEEN_VERSIONS, &key)?.is_some())
    }

    /// Records in `batch` that every version of `cp` is live as of its revision.
    pub fn put_seen(batch: &mut Batch, cp: &CheckpointRecord) {
        for (project, entry) in &cp.versions {
            let key = keys::parts_key(&[
                cp.environment.as_str(),
                project.as_str(),
                entry.version.as_str(),
            ]);
            batch.put(SEEN_VERSIONS, key, keys::u64_key(cp.revision));
        }
    }

    /// Adds a checkpoint put to `batch`.
    pub fn put_checkpoint(batch: &mut Batch, cp: &CheckpointRecord) {
        let key = keys::parts_u64_key(&[cp.environment.as_str()], cp.revision);
        batch.put(CHECKPOINTS, key, encode(cp));
    }

    /// Every quarantine entry: (environment, project, version) → record.
    pub fn quarantine(&self) -> Result<Vec<(QuarantineKey, QuarantineRecord)>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self
            .kv
            .scan(QUARANTINE, b"", None, Order::Ascending, usize::MAX)?
        {
            let text = String::from_utf8(k).map_err(|e| corrupt(QUARANTINE, e))?;
            let parts: Vec<&str> = text.split('\0').collect();
            let [env, project, version] = parts.as_slice() else {
                return Err(corrupt(QUARANTINE, format!("bad key {text:?}")));
            };
            let key = (
                Environment::parse("env", env).map_err(|e| corrupt(QUARANTINE, e))?,
                ProjectName::parse("project", project).map_err(|e| corrupt(QUARANTINE, e))?,
                Version::parse("version", version).map_err(|e| corrupt(QUARANTINE, e))?,
            );
            out.push((key, decode(QUARANTINE, &v)?));
        }
        Ok(out)
    }

    /// Adds a quarantine entry to `batch`.
    pub fn put_quarantine(
        batch: &mut Batch,
        env: &Environment,
        project: &ProjectName,
        version: &Version,
        record: &QuarantineRecord,
    ) {
        let key = keys::parts_key(&[env.as_str(), project.as_str(), version.as_str()]);
        batch.put(QUARANTINE, key, encode(record));
    }
}
