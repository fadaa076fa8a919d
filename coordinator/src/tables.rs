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
//! - `builds`:       (environment, project, version)   → BuildRecord (what a committed
//!   version was staged from: artifact, metadata, schema), sent again by reverts
//! - `meta`:         "incarnation"                     → this data directory's id;
//!   "token-key" → the secret tokens are signed with
//! - `tokens`:       id                                → TokenRecord (never the token)
//! - `subscriptions`: name                             → SubscriptionRecord (with its
//!   delivery cursor)
//! - `environments`: name                              → EnvironmentRecord
//! - `pipelines`:    version (u64 BE)                  → the pipeline file's text
//! - `tx_marks`:     (ordinal u64 BE, mark byte)       → what is learnt about a
//!   transaction after it ended, each fact under a key of its own so no writer reads
//!   and rewrites another's: `q` → "" (a revert pulled it), `l` → LiveCheck (its
//!   verification after commit). Reads lay them over the record.
//!
//! Each layout is written in one place: an encoder ([`project_key`], [`ordinal_key`],
//! [`tx_id_key`], [`event_key`], [`checkpoint_key`], [`quarantine_key`], [`seen_key`])
//! and its decoder (`decode_…`), which every read and batch builder here uses.

use std::sync::Arc;

use itertools::{EitherOrBoth, Itertools};
use lockstep::{
    names::{Environment, FieldError, ProjectName, TxId, Version},
    pb,
};
use lockstep_store::{Batch, Kv, Order, StoreError, keys};
use prost::Message;
use serde::{Serialize, de::DeserializeOwned};

use crate::model::{
    BuildRecord, CheckpointRecord, DriftRecord, EnvironmentRecord, LiveCheck, ProjectRecord,
    QuarantineRecord, SubscriptionRecord, TokenRecord, TxRecord,
};

mod indexes;
mod starts;
pub use indexes::IndexRange;

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
/// Each (environment, project, version) with every checkpoint revision at which it
/// became live: the first of them bounds from below the search for a checkpoint that
/// had it live (as `seen_versions`' last revision bounds it from above).
pub const VERSION_STARTS: &str = "version_starts";
/// Each transaction's ordinal under its environment (`env \0 ordinal` u64 BE, no
/// value): a list of one environment's releases reads its own, not every other
/// environment's in between.
pub const TX_BY_ENVIRONMENT: &str = "tx_by_environment";
/// Each transaction's ordinal under each project taking part, in its environment (`env
/// \0 project \0 ordinal` u64 BE, no value): a caller who may read a few projects lists
/// their releases, not every other project's in between.
pub const TX_BY_PROJECT: &str = "tx_by_project";
/// Facts about this data directory (its incarnation).
pub const META: &str = "meta";
/// What each committed (environment, project, version) was staged from.
pub const BUILDS: &str = "builds";
/// Tokens made by CreateToken, by id.
pub const TOKENS: &str = "tokens";

/// Webhook subscriptions by name.
pub const SUBSCRIPTIONS: &str = "subscriptions";
/// Declared environments by name.
pub const ENVIRONMENTS: &str = "environments";
/// Every pipeline file applied, by version.
pub const PIPELINES: &str = "pipelines";

const INCARNATION_KEY: &[u8] = b"incarnation";
const TOKEN_KEY: &[u8] = b"token-key";
/// Prefix of the drift records in [`META`]: `drift/<environment>/<project>`.
const DRIFT_PREFIX: &[u8] = b"drift/";
/// Prefix of the automatic reverts owed in [`META`]: `revert-due/<ordinal>` holds the
/// id of a release whose live check failed, until its revert is created or refused.
const REVERT_DUE_PREFIX: &[u8] = b"revert-due/";
/// Set once the data directory was scanned for transactions ended without their end.
const ENDS_CHECKED_KEY: &[u8] = b"ends-checked-v1";

/// Facts learnt about a transaction after it ended (quarantined, live check).
pub const TX_MARKS: &str = "tx_marks";

/// Every table the coordinator opens (checked against what is on disk).
pub const ALL: &[&str] = &[
    TX_MARKS,
    PROJECTS,
    TRANSACTIONS,
    TX_IDS,
    ACTIVE,
    EVENTS,
    CHECKPOINTS,
    QUARANTINE,
    SEEN_VERSIONS,
    VERSION_STARTS,
    TX_BY_ENVIRONMENT,
    TX_BY_PROJECT,
    META,
    BUILDS,
    TOKENS,
    SUBSCRIPTIONS,
    ENVIRONMENTS,
    PIPELINES,
];

/// A quarantined (environment, project, version).
pub type QuarantineKey = (Environment, ProjectName, Version);

/// A project whose live version differs between two checkpoints of one environment:
/// the project, its version before (none: not live) and after (none: no longer live).
pub type VersionChange<'a> = (&'a ProjectName, Option<&'a Version>, Option<&'a Version>);

/// The projects whose live version differs from `previous` to `cp`, in project order,
/// found in one pass over both (their maps are sorted alike): a release that changes 3
/// of 100 live projects compares 100 entries instead of looking each up in the other.
pub fn version_changes<'a>(
    previous: Option<&'a CheckpointRecord>,
    cp: &'a CheckpointRecord,
) -> impl Iterator<Item = VersionChange<'a>> {
    let before = previous.map(|p| &p.versions).into_iter().flatten();
    before
        .merge_join_by(&cp.versions, |(a, _), (b, _)| a.cmp(b))
        .filter_map(|pair| match pair {
            EitherOrBoth::Both((project, was), (_, now)) => (was.version != now.version)
                .then_some((project, Some(&was.version), Some(&now.version))),
            EitherOrBoth::Left((project, was)) => Some((project, Some(&was.version), None)),
            EitherOrBoth::Right((project, now)) => Some((project, None, Some(&now.version))),
        })
}

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

/// The `projects` key of `name` in `env`: `env \0 name`.
pub fn project_key(env: &Environment, name: &ProjectName) -> Vec<u8> {
    keys::parts_key(&[env.as_str(), name.as_str()])
}

/// The [`META`] key of a drift record.
fn drift_key(env: &Environment, project: &ProjectName) -> Vec<u8> {
    let mut key = DRIFT_PREFIX.to_vec();
    key.extend_from_slice(&project_key(env, project));
    key
}

/// The [`META`] key of a release owed its automatic revert.
fn revert_due_key(ordinal: u64) -> Vec<u8> {
    let mut key = REVERT_DUE_PREFIX.to_vec();
    key.extend_from_slice(&ordinal_key(ordinal));
    key
}

/// Decodes a [`project_key`], for readers of the raw table (tools, checks).
pub fn decode_project_key(key: &[u8]) -> Result<(Environment, ProjectName), StoreError> {
    let [env, name] = names_of(PROJECTS, key)?;
    Ok((
        field(PROJECTS, Environment::parse("env", env))?,
        field(PROJECTS, ProjectName::parse("project", name))?,
    ))
}

/// The key of a transaction's ordinal (u64 BE): in `transactions` and `active`, and the
/// value `tx_ids` maps an id to. Byte order is ordinal order, so scans run in creation
/// order.
pub fn ordinal_key(ordinal: u64) -> Vec<u8> {
    keys::u64_key(ordinal)
}

/// Decodes an [`ordinal_key`] from its first 8 bytes (as the tables always have); `None`
/// when it is shorter.
pub fn decode_ordinal_key(key: &[u8]) -> Option<u64> {
    keys::u64_of(key)
}

/// The `tx_marks` mark of a quarantined transaction.
const QUARANTINED_MARK: u8 = b'q';
/// The `tx_marks` mark of a live check's outcome.
const LIVE_CHECK_MARK: u8 = b'l';

/// The `tx_marks` key of `mark` on the transaction at `ordinal`.
fn mark_key(ordinal: u64, mark: u8) -> Vec<u8> {
    let mut key = ordinal_key(ordinal);
    key.push(mark);
    key
}

/// The `tx_ids` key of a transaction id: its bytes.
pub fn tx_id_key(id: &TxId) -> Vec<u8> {
    id.as_str().as_bytes().to_vec()
}

/// Decodes a [`tx_id_key`], for readers of the raw table.
pub fn decode_tx_id_key(key: &[u8]) -> Result<TxId, StoreError> {
    let text = std::str::from_utf8(key).map_err(|e| corrupt(TX_IDS, e))?;
    field(TX_IDS, TxId::parse("id", text))
}

/// The `events` key of sequence number `seq` (u64 BE, so the log scans in order).
pub fn event_key(seq: u64) -> Vec<u8> {
    keys::u64_key(seq)
}

/// Decodes an [`event_key`] from its first 8 bytes; `None` when it is shorter.
pub fn decode_event_key(key: &[u8]) -> Option<u64> {
    keys::u64_of(key)
}

/// The `checkpoints` key of `revision` in `env`: `env \0 revision` (u64 BE), so one
/// environment's checkpoints sort by revision, inside [`checkpoint_range`].
pub fn checkpoint_key(env: &Environment, revision: u64) -> Vec<u8> {
    keys::parts_u64_key(&[env.as_str()], revision)
}

/// Decodes a [`checkpoint_key`], for readers of the raw table.
pub fn decode_checkpoint_key(key: &[u8]) -> Result<(Environment, u64), StoreError> {
    let bad = || corrupt(CHECKPOINTS, format!("bad key {key:?}"));
    let (parts, revision) = keys::parts_u64_of(key).ok_or_else(bad)?;
    let [env] = parts.as_slice() else {
        return Err(bad());
    };
    Ok((
        field(CHECKPOINTS, Environment::parse("env", env))?,
        revision,
    ))
}

/// `[start, end)` holding exactly `env`'s checkpoint keys (never a neighbour's such as
/// `production` for `prod`): the bounds of every checkpoint scan.
pub fn checkpoint_range(env: &Environment) -> (Vec<u8>, Vec<u8>) {
    let start = keys::prefix(&[env.as_str()]);
    let end = keys::prefix_end(&start);
    (start, end)
}

/// The `quarantine` key of `version` of `project` in `env`: `env \0 project \0 version`.
pub fn quarantine_key(env: &Environment, project: &ProjectName, version: &Version) -> Vec<u8> {
    keys::parts_key(&[env.as_str(), project.as_str(), version.as_str()])
}

/// Decodes a [`quarantine_key`] (what [`Tables::quarantine`] lists).
pub fn decode_quarantine_key(key: &[u8]) -> Result<QuarantineKey, StoreError> {
    decode_version_key(QUARANTINE, key)
}

/// The `seen_versions` key of `version` of `project` in `env`: the same layout as
/// [`quarantine_key`], in its own table.
pub fn seen_key(env: &Environment, project: &ProjectName, version: &Version) -> Vec<u8> {
    keys::parts_key(&[env.as_str(), project.as_str(), version.as_str()])
}

/// Decodes a [`seen_key`], for readers of the raw table.
pub fn decode_seen_key(key: &[u8]) -> Result<QuarantineKey, StoreError> {
    decode_version_key(SEEN_VERSIONS, key)
}

/// Decodes an `(environment, project, version)` key of `table`.
fn decode_version_key(table: &str, key: &[u8]) -> Result<QuarantineKey, StoreError> {
    let [env, project, version] = names_of(table, key)?;
    Ok((
        field(table, Environment::parse("env", env))?,
        field(table, ProjectName::parse("project", project))?,
        field(table, Version::parse("version", version))?,
    ))
}

/// Splits a key of `table` into exactly `N` names.
fn names_of<'k, const N: usize>(table: &str, key: &'k [u8]) -> Result<[&'k str; N], StoreError> {
    let parts = keys::parts_of(key).map_err(|e| corrupt(table, e))?;
    <[&str; N]>::try_from(parts)
        .map_err(|parts| corrupt(table, format!("bad key {:?}", parts.join("\0"))))
}

/// A name read from a key of `table`, or why it is not valid.
fn field<T>(table: &str, parsed: Result<T, FieldError>) -> Result<T, StoreError> {
    parsed.map_err(|e| corrupt(table, e))
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

    /// The incarnation id of this data directory, once made.
    pub fn incarnation(&self) -> Result<Option<String>, StoreError> {
        let value = self.kv.get(META, INCARNATION_KEY)?;
        value
            .map(|v| String::from_utf8(v).map_err(|e| corrupt(META, e)))
            .transpose()
    }

    /// Stores the incarnation id.
    pub fn put_incarnation(batch: &mut Batch, id: &str) {
        batch.put(META, INCARNATION_KEY.to_vec(), id.as_bytes().to_vec());
    }

    /// Every drift the drift check found and has not seen clear.
    pub fn drifts(&self) -> Result<Vec<DriftRecord>, StoreError> {
        let mut end = DRIFT_PREFIX.to_vec();
        *end.last_mut().expect("a prefix") += 1;
        self.kv
            .scan(META, DRIFT_PREFIX, Some(&end), Order::Ascending, usize::MAX)?
            .iter()
            .map(|(_, v)| decode(META, v))
            .collect()
    }

    /// The releases owed an automatic revert (their live check failed, and neither the
    /// revert nor its refusal is written yet), oldest first.
    pub fn reverts_due(&self) -> Result<Vec<TxId>, StoreError> {
        let mut end = REVERT_DUE_PREFIX.to_vec();
        *end.last_mut().expect("a prefix") += 1;
        let due = self.kv.scan(
            META,
            REVERT_DUE_PREFIX,
            Some(&end),
            Order::Ascending,
            usize::MAX,
        )?;
        due.iter()
            .map(|(_, v)| {
                let id = String::from_utf8_lossy(v);
                field(META, TxId::parse("revert-due", &id))
            })
            .collect()
    }

    /// Adds to `batch` that `tx` is owed its automatic revert.
    pub fn put_revert_due(batch: &mut Batch, tx: &TxRecord) {
        batch.put(
            META,
            revert_due_key(tx.ordinal),
            tx.id.as_str().as_bytes().to_vec(),
        );
    }

    /// Adds to `batch` that `tx`'s automatic revert is created or refused.
    pub fn delete_revert_due(batch: &mut Batch, tx: &TxRecord) {
        batch.delete(META, revert_due_key(tx.ordinal));
    }

    /// Adds a drift record's put to `batch`.
    pub fn put_drift(batch: &mut Batch, d: &DriftRecord) {
        batch.put(META, drift_key(&d.environment, &d.project), encode(d));
    }

    /// Adds a drift record's removal to `batch`.
    pub fn delete_drift(batch: &mut Batch, env: &Environment, project: &ProjectName) {
        batch.delete(META, drift_key(env, project));
    }

    /// The secret tokens are signed with, once made.
    pub fn token_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(META, TOKEN_KEY)
    }

    /// Stores the token secret.
    pub fn put_token_secret(batch: &mut Batch, secret: &[u8]) {
        batch.put(META, TOKEN_KEY.to_vec(), secret.to_vec());
    }

    /// A token's record by id.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let value = self.kv.get(TOKENS, id.as_bytes())?;
        value.map(|v| decode(TOKENS, &v)).transpose()
    }

    /// The revoked token among those `actor` acted through (its own, or one that made
    /// it), if any: a revoked credential acts no more, not even through what it set
    /// going (an auto-promotion of its release, a webhook subscription it added).
    pub fn revoked_token_of(&self, actor: &str) -> Result<Option<String>, StoreError> {
        for token in crate::access::tokens_in(actor) {
            if self.token(token)?.is_some_and(|t| t.revoked) {
                return Ok(Some(token.to_string()));
            }
        }
        Ok(None)
    }

    /// Every token ever made.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.kv
            .scan(TOKENS, b"", None, Order::Ascending, usize::MAX)?
            .iter()
            .map(|(_, v)| decode(TOKENS, v))
            .collect()
    }

    /// Adds a token record put to `batch`.
    pub fn put_token(batch: &mut Batch, token: &TokenRecord) {
        batch.put(TOKENS, token.id.as_bytes().to_vec(), encode(token));
    }

    /// Every webhook subscription, by name.
    pub fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        self.kv
            .scan(SUBSCRIPTIONS, b"", None, Order::Ascending, usize::MAX)?
            .iter()
            .map(|(_, v)| decode(SUBSCRIPTIONS, v))
            .collect()
    }

    /// Adds a subscription put to `batch`.
    pub fn put_subscription(batch: &mut Batch, s: &SubscriptionRecord) {
        batch.put(SUBSCRIPTIONS, s.name.as_bytes().to_vec(), encode(s));
    }

    /// Adds a subscription's removal to `batch`.
    pub fn delete_subscription(batch: &mut Batch, name: &str) {
        batch.delete(SUBSCRIPTIONS, name.as_bytes().to_vec());
    }

    /// Every declared environment, by name.
    pub fn environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        self.kv
            .scan(ENVIRONMENTS, b"", None, Order::Ascending, usize::MAX)?
            .iter()
            .map(|(_, v)| decode(ENVIRONMENTS, v))
            .collect()
    }

    /// Adds an environment put to `batch`.
    pub fn put_environment(batch: &mut Batch, e: &EnvironmentRecord) {
        batch.put(ENVIRONMENTS, e.name.as_str().as_bytes().to_vec(), encode(e));
    }

    /// Stores pipeline file `text` as `version`.
    pub fn put_pipeline(batch: &mut Batch, version: u64, text: &str) {
        batch.put(PIPELINES, keys::u64_key(version), text.as_bytes().to_vec());
    }

    /// The newest pipeline version stored (0: none).
    pub fn last_pipeline_version(&self) -> Result<u64, StoreError> {
        let newest = self.kv.scan(PIPELINES, b"", None, Order::Descending, 1)?;
        Ok(newest
            .first()
            .and_then(|(k, _)| keys::u64_of(k))
            .unwrap_or(0))
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
        batch.put(PROJECTS, project_key(&p.environment, &p.name), encode(p));
    }

    /// Adds a project's removal to `batch`.
    pub fn delete_project(batch: &mut Batch, env: &Environment, name: &ProjectName) {
        batch.delete(PROJECTS, project_key(env, name));
    }

    /// A transaction by id.
    pub fn transaction(&self, id: &TxId) -> Result<Option<TxRecord>, StoreError> {
        let Some(ordinal) = self.kv.get(TX_IDS, &tx_id_key(id))? else {
            return Ok(None);
        };
        let ordinal =
            decode_ordinal_key(&ordinal).ok_or_else(|| corrupt(TX_IDS, "short ordinal"))?;
        self.transaction_at(ordinal)
    }

    fn transaction_at(&self, ordinal: u64) -> Result<Option<TxRecord>, StoreError> {
        self.kv
            .get(TRANSACTIONS, &ordinal_key(ordinal))?
            .map(|v| self.decode_transaction(&v))
            .transpose()
    }

    /// Up to `limit` transactions, newest first.
    pub fn recent_transactions(&self, limit: usize) -> Result<Vec<TxRecord>, StoreError> {
        self.transactions_before(None, limit)
    }

    /// Up to `limit` transactions created before ordinal `before` (all when `None`),
    /// newest first: one page of a listing.
    pub fn transactions_before(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TxRecord>, StoreError> {
        let end = before.map(ordinal_key);
        self.kv
            .scan(TRANSACTIONS, b"", end.as_deref(), Order::Descending, limit)?
            .iter()
            .map(|(_, v)| self.decode_transaction(v))
            .collect()
    }

    /// Unfinished transactions in creation order (for recovery).
    pub fn active_transactions(&self) -> Result<Vec<TxRecord>, StoreError> {
        let mut out = Vec::new();
        for (key, _) in self
            .kv
            .scan(ACTIVE, b"", None, Order::Ascending, usize::MAX)?
        {
            let ordinal = decode_ordinal_key(&key).ok_or_else(|| corrupt(ACTIVE, "short key"))?;
            let tx = self.transaction_at(ordinal)?.ok_or_else(|| {
                corrupt(ACTIVE, format!("active ordinal {ordinal} has no record"))
            })?;
            out.push(tx);
        }
        Ok(out)
    }

    /// Transactions stored terminal without their end (no finish time, so no terminal
    /// event), which versions before "effects carry their state" could leave outside
    /// the active index. Scanned once per data directory ([`Tables::ends_checked`]).
    pub fn ended_without_end(&self) -> Result<Vec<TxRecord>, StoreError> {
        // Page by page: a history of a million transactions is never in memory at once.
        const PAGE: usize = 1024;
        let (mut from, mut out) = (Vec::new(), Vec::new());
        loop {
            let page = self
                .kv
                .scan(TRANSACTIONS, &from, None, Order::Ascending, PAGE)?;
            for (_, value) in &page {
                let tx: TxRecord = decode(TRANSACTIONS, value)?;
                if tx.state.is_terminal() && tx.finished_ms == 0 {
                    out.push(tx);
                }
            }
            match page.last() {
                Some((key, _)) if page.len() == PAGE => from = [key.as_slice(), &[0]].concat(),
                _ => return Ok(out),
            }
        }
    }

    /// Whether [`Tables::ended_without_end`] was scanned in this data directory.
    pub fn ends_checked(&self) -> Result<bool, StoreError> {
        Ok(self.kv.get(META, ENDS_CHECKED_KEY)?.is_some())
    }

    /// Records that the scan was done.
    pub fn put_ends_checked(batch: &mut Batch) {
        batch.put(META, ENDS_CHECKED_KEY.to_vec(), Vec::new());
    }

    /// The highest ordinal ever used (0 when none).
    pub fn last_ordinal(&self) -> Result<u64, StoreError> {
        let last = self
            .kv
            .scan(TRANSACTIONS, b"", None, Order::Descending, 1)?;
        Ok(last
            .first()
            .and_then(|(k, _)| decode_ordinal_key(k))
            .unwrap_or(0))
    }

    /// A stored transaction with the marks learnt after it ended laid over it. Only a
    /// committed transaction can have any (a revert pulls a committed release; a live
    /// check follows a commit), so other reads cost no lookup.
    fn decode_transaction(&self, bytes: &[u8]) -> Result<TxRecord, StoreError> {
        let mut tx: TxRecord = decode(TRANSACTIONS, bytes)?;
        if tx.state != crate::model::TxState::Committed {
            return Ok(tx);
        }
        let key = |mark| mark_key(tx.ordinal, mark);
        if self.kv.get(TX_MARKS, &key(QUARANTINED_MARK))?.is_some() {
            tx.quarantined = true;
        }
        if let Some(check) = self.kv.get(TX_MARKS, &key(LIVE_CHECK_MARK))? {
            tx.live_check = decode(TX_MARKS, &check)?;
        }
        Ok(tx)
    }

    /// Marks the transaction at `ordinal` as pulled by a revert (its record is not
    /// rewritten).
    pub fn put_quarantined(batch: &mut Batch, ordinal: u64) {
        batch.put(TX_MARKS, mark_key(ordinal, QUARANTINED_MARK), Vec::new());
    }

    /// Records the outcome of the verification after commit of the transaction at
    /// `ordinal` (its record is not rewritten).
    pub fn put_live_check(batch: &mut Batch, ordinal: u64, check: &LiveCheck) {
        batch.put(TX_MARKS, mark_key(ordinal, LIVE_CHECK_MARK), encode(check));
    }

    /// Adds a transaction put (and its id and active-index entries) to `batch`. A
    /// transaction leaves the active index only with its end written (terminal and
    /// stamped finished, in the batch of its terminal event), so recovery finds every
    /// transaction whose end is not in the log.
    pub fn put_transaction(batch: &mut Batch, tx: &TxRecord) {
        let key = ordinal_key(tx.ordinal);
        batch.put(TX_IDS, tx_id_key(&tx.id), key.clone());
        Self::put_indexes(batch, tx);
        if !Self::put_progress(batch, tx) {
            batch.put(ACTIVE, key, Vec::new());
        }
    }

    /// Adds a put of a transaction already written with its keys by
    /// [`Tables::put_transaction`] (earlier in the log, with the same participants): the
    /// record alone, and its leaving the active index once its end is written. Returns
    /// whether it left. Keys never change for a transaction, so writing them again at
    /// each step would only cost memtable work (11 of a release's 43 keys).
    pub fn put_progress(batch: &mut Batch, tx: &TxRecord) -> bool {
        let key = ordinal_key(tx.ordinal);
        batch.put(TRANSACTIONS, key.clone(), encode(tx));
        let ended = tx.state.is_terminal() && tx.finished_ms != 0;
        if ended {
            batch.delete(ACTIVE, key);
        }
        ended
    }

    /// Events with `seq >= from`, at most `limit`, in order.
    pub fn events(&self, from: u64, limit: usize) -> Result<Vec<pb::Event>, StoreError> {
        self.kv
            .scan(EVENTS, &event_key(from), None, Order::Ascending, limit)?
            .iter()
            .map(|(_, v)| pb::Event::decode(v.as_slice()).map_err(|e| corrupt(EVENTS, e)))
            .collect()
    }

    /// The highest event sequence number written (0 when none).
    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        let last = self.kv.scan(EVENTS, b"", None, Order::Descending, 1)?;
        Ok(last
            .first()
            .and_then(|(k, _)| decode_event_key(k))
            .unwrap_or(0))
    }

    /// Adds an event put to `batch` (its `seq` must be set).
    pub fn put_event(batch: &mut Batch, event: &pb::Event) {
        batch.put(EVENTS, event_key(event.seq), event.encode_to_vec());
    }

    /// Checkpoints of `environment`, oldest first.
    pub fn checkpoints(
        &self,
        environment: &Environment,
    ) -> Result<Vec<CheckpointRecord>, StoreError> {
        let (start, end) = checkpoint_range(environment);
        self.kv
            .scan(
                CHECKPOINTS,
                &start,
                Some(&end),
                Order::Ascending,
                usize::MAX,
            )?
            .iter()
            .map(|(_, v)| decode(CHECKPOINTS, v))
            .collect()
    }

    /// Up to `limit` checkpoints of `environment` after revision `after`, oldest first:
    /// one page of the history.
    pub fn checkpoints_after(
        &self,
        environment: &Environment,
        after: u64,
        limit: usize,
    ) -> Result<Vec<CheckpointRecord>, StoreError> {
        let (_, end) = checkpoint_range(environment);
        let start = checkpoint_key(environment, after.saturating_add(1));
        self.kv
            .scan(CHECKPOINTS, &start, Some(&end), Order::Ascending, limit)?
            .iter()
            .map(|(_, v)| decode(CHECKPOINTS, v))
            .collect()
    }

    /// The environments that lead the keys of `table` (keys `environment \0 ...`), one
    /// seek each: the next seek starts past every key of the one found.
    fn leading_environments(&self, table: &'static str) -> Result<Vec<Environment>, StoreError> {
        let mut out = Vec::new();
        let mut from = Vec::new();
        while let Some((key, _)) = self.kv.scan(table, &from, None, Order::Ascending, 1)?.pop() {
            let bad = || corrupt(table, format!("bad key {key:?}"));
            let first = key.split(|b| *b == 0).next().ok_or_else(bad)?;
            let env = std::str::from_utf8(first).map_err(|_| bad())?;
            let env = Environment::parse("environment", env).map_err(|e| corrupt(table, e))?;
            from = keys::prefix_end(&keys::prefix(&[env.as_str()]));
            out.push(env);
        }
        Ok(out)
    }

    /// One checkpoint.
    pub fn checkpoint(
        &self,
        environment: &Environment,
        revision: u64,
    ) -> Result<Option<CheckpointRecord>, StoreError> {
        self.kv
            .get(CHECKPOINTS, &checkpoint_key(environment, revision))?
            .map(|v| decode(CHECKPOINTS, &v))
            .transpose()
    }

    /// The newest checkpoint of `environment`.
    pub fn latest_checkpoint(
        &self,
        environment: &Environment,
    ) -> Result<Option<CheckpointRecord>, StoreError> {
        let (start, end) = checkpoint_range(environment);
        self.kv
            .scan(CHECKPOINTS, &start, Some(&end), Order::Descending, 1)?
            .first()
            .map(|(_, v)| decode(CHECKPOINTS, v))
            .transpose()
    }

    /// The newest checkpoint of `environment` for which `matches` holds, reading newest
    /// first a page at a time and stopping at the first match.
    pub fn newest_checkpoint_where(
        &self,
        environment: &Environment,
        (at_least, at_most): (Option<u64>, Option<u64>),
        matches: &mut dyn FnMut(&CheckpointRecord) -> bool,
    ) -> Result<Option<CheckpointRecord>, StoreError> {
        const PAGE: usize = 256;
        let (oldest, newest) = checkpoint_range(environment);
        let start = match at_least {
            Some(revision) => checkpoint_key(environment, revision),
            None => oldest,
        };
        let mut end = match at_most {
            Some(revision) => checkpoint_key(environment, revision.saturating_add(1)),
            None => newest,
        };
        loop {
            let page = self
                .kv
                .scan(CHECKPOINTS, &start, Some(&end), Order::Descending, PAGE)?;
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

    /// The newest checkpoint revision at which `version` was live on `project` in
    /// `environment` (none: never), as last written ([`Tables::put_seen`]): exact for a
    /// version no longer live; for one live in the environment's newest checkpoint, the
    /// revision it became live at (or a later one, in a directory an older version
    /// wrote), so a reader takes the newest checkpoint's revision for those.
    pub fn last_live(
        &self,
        environment: &Environment,
        project: &ProjectName,
        version: &Version,
    ) -> Result<Option<u64>, StoreError> {
        let key = seen_key(environment, project, version);
        let Some(value) = self.kv.get(SEEN_VERSIONS, &key)? else {
            return Ok(None);
        };
        let bad = || corrupt(SEEN_VERSIONS, format!("bad revision {value:?}"));
        keys::u64_of(&value).map(Some).ok_or_else(bad)
    }

    /// Whether `version` was ever live on `project` in `environment`.
    pub fn was_live(
        &self,
        environment: &Environment,
        project: &ProjectName,
        version: &Version,
    ) -> Result<bool, StoreError> {
        let key = seen_key(environment, project, version);
        Ok(self.kv.get(SEEN_VERSIONS, &key)?.is_some())
    }

    /// What `version` of `project` was staged from when committed.
    pub fn build(
        &self,
        environment: &Environment,
        project: &ProjectName,
        version: &Version,
    ) -> Result<Option<BuildRecord>, StoreError> {
        let key = seen_key(environment, project, version);
        let value = self.kv.get(BUILDS, &key)?;
        value.map(|v| decode(BUILDS, &v)).transpose()
    }

    /// Adds the build record of `version` of `project` to `batch` (the same key layout
    /// as `seen_versions`).
    pub fn put_build(
        batch: &mut Batch,
        key: (&Environment, &ProjectName, &Version),
        record: &BuildRecord,
    ) {
        let (environment, project, version) = key;
        let key = seen_key(environment, project, version);
        batch.put(BUILDS, key, encode(record));
    }

    /// Records in `batch` what changed from `previous` (the environment's checkpoint
    /// before `cp`) to `cp`: each version that became live, live as of `cp`, and each
    /// that stopped being live, last live at `previous`. A version live in both is not
    /// written (a release writes what it changed, not the whole environment): its last
    /// revision is the newest checkpoint's, which readers take from that checkpoint
    /// (see [`Tables::last_live`]).
    pub fn put_seen(batch: &mut Batch, previous: Option<&CheckpointRecord>, cp: &CheckpointRecord) {
        let env = &cp.environment;
        let before = previous.map_or(0, |p| p.revision);
        for (project, was, now) in version_changes(previous, cp) {
            let mut put = |version, revision| {
                let key = seen_key(env, project, version);
                batch.put(SEEN_VERSIONS, key, keys::u64_key(revision));
            };
            if let Some(version) = now {
                put(version, cp.revision);
            }
            if let Some(version) = was {
                put(version, before);
            }
        }
    }

    /// Adds a checkpoint put to `batch`.
    pub fn put_checkpoint(batch: &mut Batch, cp: &CheckpointRecord) {
        let key = checkpoint_key(&cp.environment, cp.revision);
        batch.put(CHECKPOINTS, key, encode(cp));
    }

    /// Every quarantine entry: (environment, project, version) → record.
    pub fn quarantine(&self) -> Result<Vec<(QuarantineKey, QuarantineRecord)>, StoreError> {
        let mut out = Vec::new();
        for (k, v) in self
            .kv
            .scan(QUARANTINE, b"", None, Order::Ascending, usize::MAX)?
        {
            out.push((decode_quarantine_key(&k)?, decode(QUARANTINE, &v)?));
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
        batch.put(
            QUARANTINE,
            quarantine_key(env, project, version),
            encode(record),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LiveEntry, TxKind};
    use lockstep_store::{Durability, MemKv};

    fn env(s: &str) -> Environment {
        Environment::parse("env", s).unwrap()
    }

    fn project(s: &str) -> ProjectName {
        ProjectName::parse("project", s).unwrap()
    }

    fn version(s: &str) -> Version {
        Version::parse("version", s).unwrap()
    }

    /// Deterministic xorshift64 generator of valid names and numbers.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// A valid name of 1 to 12 characters from `extra` and the common alphabet.
        fn name(&mut self, extra: &str) -> String {
            let chars: Vec<char> = "abpz09AZ-_.".chars().chain(extra.chars()).collect();
            let mut name: String = (0..1 + self.below(12))
                .map(|_| chars[self.below(chars.len())])
                .collect();
            if name.starts_with('.') {
                name.replace_range(..1, "p");
            }
            name
        }

        fn number(&mut self) -> u64 {
            match self.below(3) {
                0 => [0, 1, 255, 256, 65_535, u64::MAX][self.below(6)],
                _ => self.next() >> self.below(64),
            }
        }
    }

    const ROUNDS: usize = 1000;

    /// The on-disk layouts, byte for byte: these must never change.
    #[test]
    fn key_layouts_are_the_ones_on_disk() {
        let (prod, web, v1) = (env("prod"), project("web"), version("v1+b.2"));
        assert_eq!(project_key(&prod, &web), b"prod\0web");
        assert_eq!(ordinal_key(258), [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(tx_id_key(&TxId::parse("id", "T4").unwrap()), b"T4");
        assert_eq!(event_key(3), [0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(checkpoint_key(&prod, 2), b"prod\0\0\0\0\0\0\0\0\x02");
        assert_eq!(quarantine_key(&prod, &web, &v1), b"prod\0web\0v1+b.2");
        assert_eq!(seen_key(&prod, &web, &v1), b"prod\0web\0v1+b.2");
        assert_eq!(
            checkpoint_range(&prod),
            (b"prod\0".to_vec(), b"prod\x01".to_vec())
        );
    }

    #[test]
    fn name_keys_round_trip_for_many_names() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..ROUNDS {
            let (e, p) = (env(&rng.name("")), project(&rng.name("")));
            let v = version(&rng.name("+"));
            let id = TxId::parse("id", &rng.name("")).unwrap();
            let triple = (e.clone(), p.clone(), v.clone());
            assert_eq!(
                decode_project_key(&project_key(&e, &p)).unwrap(),
                (e.clone(), p.clone())
            );
            assert_eq!(
                decode_quarantine_key(&quarantine_key(&e, &p, &v)).unwrap(),
                triple
            );
            assert_eq!(decode_seen_key(&seen_key(&e, &p, &v)).unwrap(), triple);
            assert_eq!(decode_tx_id_key(&tx_id_key(&id)).unwrap(), id);
        }
    }

    #[test]
    fn number_keys_round_trip_for_many_numbers() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..ROUNDS {
            let (e, n) = (env(&rng.name("")), rng.number());
            assert_eq!(decode_ordinal_key(&ordinal_key(n)), Some(n));
            assert_eq!(decode_event_key(&event_key(n)), Some(n));
            assert_eq!(
                decode_checkpoint_key(&checkpoint_key(&e, n)).unwrap(),
                (e, n)
            );
        }
    }

    /// Scans rely on it: ordinals, events and one environment's checkpoints sort by
    /// number, and each checkpoint lies inside its environment's range.
    #[test]
    fn number_keys_sort_by_number() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..ROUNDS {
            let (e, a, b) = (env(&rng.name("")), rng.number(), rng.number());
            assert_eq!(ordinal_key(a).cmp(&ordinal_key(b)), a.cmp(&b));
            assert_eq!(event_key(a).cmp(&event_key(b)), a.cmp(&b));
            let (ka, kb) = (checkpoint_key(&e, a), checkpoint_key(&e, b));
            assert_eq!(ka.cmp(&kb), a.cmp(&b), "{e} {a} vs {b}");
            let (start, end) = checkpoint_range(&e);
            assert!(start <= ka && ka < end, "{e} {a} in its range");
        }
    }

    /// `prod`'s checkpoints never fall in `production`'s range, nor the other way round,
    /// and so for any two environments where one name starts the other.
    #[test]
    fn an_environment_range_never_holds_a_neighbours_checkpoints() {
        let inside = |of: &Environment, key: &Vec<u8>| {
            let (start, end) = checkpoint_range(of);
            &start <= key && key < &end
        };
        let mut rng = Rng(0x5eed_0000_0000_0001);
        for _ in 0..ROUNDS {
            let short = rng.name("");
            let long = format!("{short}{}", rng.name(""));
            let pairs = [("prod", "production"), (short.as_str(), long.as_str())];
            for (a, b) in pairs.map(|(a, b)| (env(a), env(b))) {
                let n = rng.number();
                assert!(
                    !inside(&a, &checkpoint_key(&b, n)),
                    "{b} {n} in {a}'s range"
                );
                assert!(
                    !inside(&b, &checkpoint_key(&a, n)),
                    "{a} {n} in {b}'s range"
                );
            }
        }
    }

    #[test]
    fn decoders_refuse_damaged_keys_naming_the_table() {
        let corrupt_in = |r: Result<_, StoreError>, table: &str| match r {
            Err(StoreError::Corrupt(m)) => {
                assert!(m.starts_with(&format!("table {table}:")), "{m}")
            }
            other => panic!("{table}: {other:?}"),
        };
        corrupt_in(decode_quarantine_key(b"prod\0web").map(|_| ()), QUARANTINE);
        corrupt_in(
            decode_quarantine_key(b"prod\0web\0\xff").map(|_| ()),
            QUARANTINE,
        );
        corrupt_in(
            decode_seen_key(b"prod\0web\0../v1").map(|_| ()),
            SEEN_VERSIONS,
        );
        corrupt_in(decode_project_key(b"prod\0web\0x").map(|_| ()), PROJECTS);
        corrupt_in(decode_project_key(b"\0web").map(|_| ()), PROJECTS);
        corrupt_in(decode_checkpoint_key(b"prod").map(|_| ()), CHECKPOINTS);
        corrupt_in(
            decode_checkpoint_key(b"a\0b\0\0\0\0\0\0\0\0\x01").map(|_| ()),
            CHECKPOINTS,
        );
        corrupt_in(decode_tx_id_key(b"T 4").map(|_| ()), TX_IDS);
        assert_eq!(decode_ordinal_key(&[0, 1]), None);
        assert_eq!(decode_event_key(b""), None);
    }

    fn checkpoint(env_name: &str, revision: u64, live: &[(&str, &str)]) -> CheckpointRecord {
        CheckpointRecord {
            revision,
            environment: env(env_name),
            versions: live
                .iter()
                .map(|(p, v)| {
                    (
                        project(p),
                        LiveEntry {
                            version: version(v),
                            schema: None,
                        },
                    )
                })
                .collect(),
            transaction: TxId::parse("id", &format!("T{revision}")).unwrap(),
            kind: TxKind::Release,
            description: format!("release T{revision}"),
            untested: false,
            committed_ms: revision,
        }
    }

    /// Checkpoint reads find what [`Tables::put_checkpoint`] wrote, through the same key
    /// functions: `production`'s checkpoints stay out of `prod`'s, in revision order
    /// past 255.
    #[test]
    fn checkpoint_reads_find_what_the_builder_wrote() {
        let tables = Tables::new(Arc::new(MemKv::new()));
        let mut batch = Batch::default();
        for revision in [256, 2, 1, 255] {
            Tables::put_checkpoint(&mut batch, &checkpoint("prod", revision, &[]));
        }
        Tables::put_checkpoint(&mut batch, &checkpoint("production", 300, &[]));
        tables.kv().write(batch, Durability::Sync).unwrap();
        let prod = env("prod");
        let all = tables.checkpoints(&prod).unwrap();
        let revisions: Vec<u64> = all.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [1, 2, 255, 256]);
        let latest = tables.latest_checkpoint(&prod).unwrap();
        assert_eq!(latest.map(|c| c.revision), Some(256));
        assert!(tables.checkpoint(&prod, 255).unwrap().is_some());
        assert!(tables.checkpoint(&env("production"), 2).unwrap().is_none());
        let older = tables.newest_checkpoint_where(&prod, (None, None), &mut |c| c.revision < 200);
        assert_eq!(older.unwrap().map(|c| c.revision), Some(2));
        // Bounded: the scan starts at the revision given, the bound included.
        let at =
            |low, high| tables.newest_checkpoint_where(&prod, (low, Some(high)), &mut |_| true);
        assert_eq!(at(None, 255).unwrap().map(|c| c.revision), Some(255));
        assert_eq!(at(None, 254).unwrap().map(|c| c.revision), Some(2));
        assert_eq!(at(None, 0).unwrap().map(|c| c.revision), None);
        assert_eq!(at(Some(3), 254).unwrap().map(|c| c.revision), None);
        assert_eq!(at(Some(2), 254).unwrap().map(|c| c.revision), Some(2));
    }

    /// The once-per-directory scan for records stored terminal without their end reads
    /// the whole table page by page and finds each of them, on every page.
    #[test]
    fn records_ended_without_their_end_are_found_on_every_page() {
        let tables = Tables::new(Arc::new(MemKv::new()));
        let mut batch = Batch::default();
        for ordinal in 1..=2_500u64 {
            let mut tx = crate::txn::tests::t4(crate::model::TxState::Committed);
            tx.id = TxId::parse("id", &format!("T{ordinal}")).unwrap();
            tx.ordinal = ordinal;
            tx.finished_ms = if ordinal % 1000 == 7 { 0 } else { 1 };
            Tables::put_transaction(&mut batch, &tx);
        }
        tables.kv().write(batch, Durability::Sync).unwrap();
        let found = tables.ended_without_end().unwrap();
        let ordinals: Vec<u64> = found.iter().map(|t| t.ordinal).collect();
        assert_eq!(ordinals, [7, 1007, 2007]);
    }

    /// A version's starts are the revisions at which it became live: not while it stays,
    /// again when it comes back; the first is what `first_live` answers, per version.
    #[test]
    fn starts_record_each_time_a_version_becomes_live() {
        let tables = Tables::new(Arc::new(MemKv::new()));
        let history = [
            checkpoint("prod", 1, &[("web", "v1"), ("api", "a1")]),
            checkpoint("prod", 2, &[("web", "v1"), ("api", "a2")]),
            checkpoint("prod", 3, &[("web", "v2"), ("api", "a2")]),
            checkpoint("prod", 4, &[("web", "v1"), ("api", "a2")]),
        ];
        let mut batch = Batch::default();
        let mut previous = None;
        for cp in &history {
            Tables::put_starts(&mut batch, previous, cp);
            previous = Some(cp);
        }
        tables.kv().write(batch, Durability::Sync).unwrap();
        let (prod, web, api) = (env("prod"), project("web"), project("api"));
        let first = |p: &ProjectName, v: &str| tables.first_live(&prod, p, &version(v)).unwrap();
        assert_eq!(first(&web, "v1"), Some(1));
        assert_eq!(first(&web, "v2"), Some(3));
        assert_eq!(first(&api, "a2"), Some(2));
        assert_eq!(first(&api, "a3"), None);
        assert_eq!(first(&project("we"), "v1"), None, "no prefix match");
        let starts = tables
            .kv()
            .scan(VERSION_STARTS, b"", None, Order::Ascending, 100);
        assert_eq!(starts.unwrap().len(), 5, "web v1 twice, v2, api a1, a2");
    }

    /// A release writes the versions it changed, not its whole environment: the one
    /// that became live, at its revision, and the one it replaced, at the revision
    /// before; the project it left alone is not written.
    #[test]
    fn a_checkpoint_records_only_the_versions_it_changed() {
        let tables = Tables::new(Arc::new(MemKv::new()));
        let before = checkpoint("prod", 1, &[("web", "v1"), ("api", "a1")]);
        let after = checkpoint("prod", 2, &[("web", "v2"), ("api", "a1")]);
        let (mut first, mut second) = (Batch::default(), Batch::default());
        Tables::put_seen(&mut first, None, &before);
        Tables::put_seen(&mut second, Some(&before), &after);
        assert_eq!(first.ops.len(), 2, "the first checkpoint: both versions");
        assert_eq!(second.ops.len(), 2, "web v2 and web v1, not api a1");
        for batch in [first, second] {
            tables.kv().write(batch, Durability::Sync).unwrap();
        }
        let (prod, web) = (env("prod"), project("web"));
        let last = |p: &ProjectName, v: &str| tables.last_live(&prod, p, &version(v)).unwrap();
        assert_eq!(
            last(&web, "v1"),
            Some(1),
            "last live before it was replaced"
        );
        assert_eq!(last(&web, "v2"), Some(2));
        assert_eq!(
            last(&project("api"), "a1"),
            Some(1),
            "live since 1: not rewritten"
        );
    }

    /// The changes between two checkpoints are exactly the projects added, removed or
    /// moved, in project order, however the two interleave.
    #[test]
    fn version_changes_are_the_projects_added_removed_or_moved() {
        let before = checkpoint("prod", 1, &[("api", "a1"), ("db", "d1"), ("web", "w1")]);
        let after = checkpoint("prod", 2, &[("cache", "c1"), ("db", "d2"), ("web", "w1")]);
        let shown = |v: Option<&Version>| v.map(|v| v.as_str().to_string());
        let changes: Vec<_> = version_changes(Some(&before), &after)
            .map(|(p, was, now)| (p.as_str().to_string(), shown(was), shown(now)))
            .collect();
        let expected = [
            ("api", Some("a1"), None),
            ("cache", None, Some("c1")),
            ("db", Some("d1"), Some("d2")),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(p, was, now)| (p.to_string(), was.map(String::from), now.map(String::from)))
            .collect();
        assert_eq!(changes, expected, "web w1 is live in both: not a change");
        let first: Vec<_> = version_changes(None, &before)
            .map(|(p, ..)| p.as_str())
            .collect();
        assert_eq!(
            first,
            ["api", "db", "web"],
            "the first checkpoint: everything"
        );
    }

    /// [`Tables::was_live`] and [`Tables::quarantine`] find what their builders wrote.
    #[test]
    fn version_reads_find_what_the_builders_wrote() {
        let tables = Tables::new(Arc::new(MemKv::new()));
        let (prod, web, v1) = (env("prod"), project("web"), version("v1"));
        let id = |s: &str| TxId::parse("id", s).unwrap();
        let record = QuarantineRecord {
            release: id("T1"),
            revert: id("T2"),
        };
        let mut batch = Batch::default();
        Tables::put_seen(&mut batch, None, &checkpoint("prod", 2, &[("web", "v1")]));
        Tables::put_quarantine(&mut batch, &prod, &web, &v1, &record);
        tables.kv().write(batch, Durability::Sync).unwrap();
        assert!(tables.was_live(&prod, &web, &v1).unwrap());
        assert!(!tables.was_live(&env("production"), &web, &v1).unwrap());
        assert_eq!(tables.last_live(&prod, &web, &v1).unwrap(), Some(2));
        let never = tables.last_live(&prod, &web, &version("v9")).unwrap();
        assert_eq!(never, None);
        let quarantined = tables.quarantine().unwrap();
        assert_eq!(quarantined, [((prod, web, v1), record)]);
    }

    /// Issue 25, defect 4: a revert's quarantine and a live check's outcome are each
    /// written beside the record, never by rewriting it, so whichever order they
    /// reach the log in (and whatever the record's writer does), both are kept.
    #[test]
    fn quarantine_and_live_check_never_overwrite_each_other() {
        let tables = Tables::new(Arc::new(MemKv::new()));
        let mut ended = crate::txn::tests::t4(crate::model::TxState::Committed);
        ended.finished_ms = 1;
        ended.live_check = LiveCheck::Soaking;
        let failed = LiveCheck::Failed("smoke: 503".into());
        let mut batch = Batch::default();
        Tables::put_quarantined(&mut batch, ended.ordinal);
        Tables::put_transaction(&mut batch, &ended);
        Tables::put_live_check(&mut batch, ended.ordinal, &failed);
        Tables::put_transaction(&mut batch, &ended);
        tables.kv().write(batch, Durability::Sync).unwrap();
        let read = tables.transaction(&ended.id).unwrap().unwrap();
        assert!(read.quarantined, "the revert's mark is kept");
        assert_eq!(read.live_check, failed, "the live check's outcome is kept");
    }
}
