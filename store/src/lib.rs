//! Durable key-value tables for Lockstep.
//!
//! The coordinator and the participant SDK keep their protocol state in a few named
//! tables (RocksDB column families). They reach storage only through the narrow [`Kv`]
//! trait, so the same protocol code runs on RocksDB in production and on [`MemKv`] in
//! deterministic simulation.
//!
//! # Layout
//! - [`Kv`], [`Batch`], [`Durability`]: the trait and what it writes.
//! - [`rocks`]: the RocksDB implementation (one column family per table, names checked at
//!   open, synced WAL writes where the protocol needs durability).
//! - [`mem`]: the in-memory twin with crash semantics (unsynced writes may vanish).
//! - [`group`]: group commit, so concurrent writers share fsyncs off the async runtime.
//! - [`keys`]: order-preserving key encoding.
//! - [`read_only`]: a view that refuses writes (a standby's reads).
//! - [`conformance`]: the test suite every implementation passes.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod conformance;
pub mod etcd;
pub mod etcd_lead;
pub mod etcd_limits;
pub mod etcd_member;
mod etcd_route;
pub mod group;
pub mod keys;
pub mod mem;
pub mod read_only;
pub mod rocks;

pub use etcd::{EtcdKv, EtcdTarget, Fence};
pub use group::{
    BeforeSync, GroupCommit, Hooks, OnSynced, SyncerWriter, Ticket, WriterMode, spawn_writer,
};
pub use mem::MemKv;
pub use read_only::ReadOnlyKv;
pub use rocks::{RocksKv, WalRecovery};

/// Why a storage operation failed. Storage errors are never retried blindly by the
/// protocol: a failed durable write means the decision it carried was not made.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB reported an error (I/O, corruption, options).
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// The data directory holds tables this program does not know: it belongs to
    /// something else, or to a newer version.
    #[error(
        "data directory {path} has unexpected tables {found:?} (expected {expected:?}); is it another program's directory?"
    )]
    UnexpectedTables {
        /// The directory.
        path: String,
        /// Tables found on disk.
        found: Vec<String>,
        /// Tables this program uses.
        expected: Vec<String>,
    },
    /// A table name that was not declared when the store was opened.
    #[error("unknown table {0:?}")]
    UnknownTable(String),
    /// The write-ahead log is damaged (a torn or corrupted record).
    #[error(
        "the write-ahead log in {path} is damaged ({detail}); refusing to start so that no acknowledged decision is silently lost. If the machine lost power during a write, the damaged last record was never acknowledged: start again with --wal-recovery tolerate-torn-tail to drop it"
    )]
    DamagedLog {
        /// The data directory.
        path: String,
        /// RocksDB's description.
        detail: String,
    },
    /// A stored value could not be decoded: the data directory is damaged.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// An earlier write or sync failed (a full or failing disk): the store refuses
    /// every later write and read of unsynced state, and its owner must stop and
    /// recover what is durable. Not damage: the data directory is as it was.
    #[error("the store stopped after a failed write or sync: {0}")]
    Stopped(String),
    /// The in-memory store was crashed (simulation) and not yet restarted.
    #[error("store is down (simulated crash)")]
    Down,
    /// etcd did not answer, or refused the call.
    #[error("etcd: {0}")]
    Etcd(String),
    /// etcd refused a write because the writer no longer leads: the leadership key
    /// is gone or belongs to a newer term. Nothing of the write was applied.
    #[error(
        "fenced: this coordinator's term {0} has ended (another instance leads now); nothing was written"
    )]
    Fenced(i64),
    /// A write through a [`ReadOnlyKv`]: this coordinator is a standby and only reads.
    #[error("this coordinator is a standby: it reads the tables but never writes them")]
    ReadOnly,
    /// A batch beyond the store's [`BatchLimit`], refused whole (the in-memory store
    /// when given a limit, as etcd refuses one).
    #[error(
        "a batch of {ops} operations and {bytes} bytes is beyond the store's limit of {limit:?}"
    )]
    TooLarge {
        /// Its operations.
        ops: usize,
        /// Its keys' and values' bytes.
        bytes: usize,
        /// The store's limit.
        limit: BatchLimit,
    },
}

/// The largest batch one [`Kv::write`] takes, for a store that has such a limit (etcd
/// limits one transaction's operations and size): the coordinator's group commit
/// then writes what it merged as several batches, each of whole appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimit {
    /// Operations (puts and deletes) in one batch.
    pub ops: usize,
    /// Bytes of keys and values in one batch ([`Batch::bytes`]).
    pub bytes: usize,
}

impl BatchLimit {
    /// Whether a batch of `ops` operations and `bytes` bytes is within the limit.
    pub fn fits(&self, ops: usize, bytes: usize) -> bool {
        ops <= self.ops && bytes <= self.bytes
    }
}

/// Whether a write must survive a machine crash before the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the write-ahead log before returning. Used at the protocol's durability
    /// points: a transaction accepted, a COMMIT decision, a participant's PREPARED record.
    Sync,
    /// Written to the log without waiting for fsync: survives a process crash (the OS
    /// has it) but not a power loss. Everything written before a later `Sync` write
    /// becomes durable with it.
    Buffered,
}

/// One mutation in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value` in `table`.
    Put {
        /// Table name.
        table: &'static str,
        /// Key bytes.
        key: Vec<u8>,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// Remove `key` from `table`.
    Delete {
        /// Table name.
        table: &'static str,
        /// Key bytes.
        key: Vec<u8>,
    },
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
        }
    }
}

/// Mutations applied atomically: after a crash either all of them are there or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The mutations, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// Adds a put.
    pub fn put(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put { table, key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: &'static str, key: Vec<u8>) {
        self.ops.push(Op::Delete { table, key });
    }

    /// Appends another batch's mutations (group commit merges batches this way).
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of its keys and values: what it adds to a log record, give or take framing.
    pub fn bytes(&self) -> usize {
        self.ops.iter().map(Op::bytes).sum()
    }
}

/// Consecutive `batches` merged into as few writes as the store's `limit` allows (all
/// in one without a limit), in order, never one batch split across two: each batch's
/// mutations land together or not at all, and a crash part-way leaves a prefix. A batch
/// beyond the limit alone is a write alone, which the store refuses.
pub fn whole_batches(batches: Vec<Batch>, limit: Option<BatchLimit>) -> Vec<Batch> {
    let mut writes = Vec::new();
    let (mut current, mut bytes) = (Batch::default(), 0);
    for batch in batches.into_iter().filter(|b| !b.is_empty()) {
        let size = batch.bytes();
        let fits = |l: BatchLimit| l.fits(current.ops.len() + batch.ops.len(), bytes + size);
        if !current.is_empty() && !limit.is_none_or(fits) {
            writes.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.extend(batch);
        bytes += size;
    }
    if !current.is_empty() {
        writes.push(current);
    }
    writes
}

/// Direction of a [`Kv::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Ascending keys, from `from` (inclusive) up to `to` (exclusive).
    Ascending,
    /// Descending keys, from just below `to` (exclusive) down to `from` (inclusive).
    Descending,
}

/// A key-value pair returned by a scan.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The storage the protocol needs: point reads, ordered range scans, atomic batches.
///
/// # To ensure correctness
/// - `write` is atomic: after a crash, all or none of a batch is visible.
/// - `write` with [`Durability::Sync`] returns only once the batch, and every batch
///   written before it, survives a crash.
/// - Batches become visible in the order `write` was called; a read after `write`
///   returned sees it.
/// - `scan` returns keys in byte order within `[from, to)`.
pub trait Kv: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Reads at most `limit` entries with `from <= key < to` (`to = None`: no upper bound)
    /// in the given order.
    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        to: Option<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Applies `batch` atomically with the given durability.
    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError>;

    /// Makes every write so far durable (fsync of the log), as a `Sync` write would.
    fn sync(&self) -> Result<(), StoreError>;

    /// The largest batch one `write` takes (`None`: any). A batch beyond it is refused
    /// whole, as any failed write is.
    fn batch_limit(&self) -> Option<BatchLimit> {
        None
    }
}
