//! RocksDB behind [`Kv`]: one column family per table, names checked at open, synced WAL
//! writes where the caller asks for durability.
//!
//! WAL recovery is [`WalRecovery::Strict`] by default (RocksDB's `AbsoluteConsistency`):
//! a damaged log, even only its last record, makes open fail. A truncated last record
//! could be an acknowledged decision, and nothing on disk tells an acknowledged record
//! from one cut off by a power loss, so the safe default is to stop and tell the
//! operator. An ordinary process crash never tears a record: the journal keeps each
//! batch below RocksDB's write buffer, so it reaches the file in one `write()`.
//! [`WalRecovery::TolerateTornTail`] (`TolerateCorruptedTailRecords`) is the explicit
//! choice after a power loss: it drops a damaged last record and still refuses
//! corruption anywhere before it.

use std::{path::Path, sync::Arc};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBRecoveryMode, Direction, IteratorMode,
    Options, WriteBatch, WriteOptions,
};

/// The buffer through which a write reaches the log file: a batch smaller than this
/// reaches it in one `write()`, so a process crash never tears it.
pub const WAL_WRITE_BUFFER: u64 = 1 << 20;

/// Block cache shared by every table of a database (RocksDB otherwise gives each column
/// family a cache of its own, so memory would grow with the number of tables).
const BLOCK_CACHE_BYTES: usize = 8 << 20;

use crate::{Batch, BatchLimit, Durability, Entry, Kv, Op, Order, StoreError};

/// How to treat a damaged write-ahead log at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalRecovery {
    /// Refuse to open if any record is damaged, the last one included.
    #[default]
    Strict,
    /// Drop a damaged last record (a write cut off by a power loss); refuse corruption
    /// anywhere else.
    TolerateTornTail,
}

impl std::str::FromStr for WalRecovery {
    type Err = String;

    /// `strict` or `tolerate-torn-tail` (the servers' `--wal-recovery` values).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" => Ok(WalRecovery::Strict),
            "tolerate-torn-tail" => Ok(WalRecovery::TolerateTornTail),
            _ => Err(format!("{s:?}: expected strict or tolerate-torn-tail")),
        }
    }
}

/// The column family RocksDB always has; it stays empty.
const DEFAULT_CF: &str = "default";

/// A RocksDB database holding the tables named at open.
#[derive(Clone)]
pub struct RocksKv {
    db: Arc<DB>,
    statistics: Arc<Options>,
}

impl RocksKv {
    /// Opens (or creates) the database at `path` with exactly `tables` as column
    /// families. A directory holding other tables is refused: it belongs to another
    /// program, and writing into it would corrupt both.
    pub fn open(path: &Path, tables: &[&'static str]) -> Result<Self, StoreError> {
        Self::open_with(path, tables, WalRecovery::default())
    }

    /// [`RocksKv::open`] with an explicit WAL recovery mode.
    pub fn open_with(
        path: &Path,
        tables: &[&'static str],
        recovery: WalRecovery,
    ) -> Result<Self, StoreError> {
        Self::open_full(path, tables, recovery, false)
    }

    /// [`RocksKv::open_with`], optionally keeping RocksDB statistics (tickers such as
    /// `rocksdb.wal.synced`, read by [`RocksKv::statistics`]); they cost CPU on every
    /// write, so only the coordinator, whose group commit the benchmarks measure, keeps
    /// them.
    pub fn open_full(
        path: &Path,
        tables: &[&'static str],
        recovery: WalRecovery,
        statistics: bool,
    ) -> Result<Self, StoreError> {
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut opts = options(recovery, &cache);
        if statistics {
            opts.enable_statistics();
        }
        let existing = DB::list_cf(&opts, path).unwrap_or_default();
        let unexpected: Vec<String> = existing
            .iter()
            .filter(|cf| cf.as_str() != DEFAULT_CF && !tables.contains(&cf.as_str()))
            .cloned()
            .collect();
        if !unexpected.is_empty() {
            return Err(StoreError::UnexpectedTables {
                path: path.display().to_string(),
                found: unexpected,
                expected: tables.iter().map(|t| t.to_string()).collect(),
            });
        }
        let cfs = tables
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, table_options(&cache)));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| match e.kind() {
            rocksdb::ErrorKind::Corruption => StoreError::DamagedLog {
                path: path.display().to_string(),
                detail: e.to_string(),
            },
            _ => StoreError::Rocks(e),
        })?;
        Ok(Self {
            db: Arc::new(db),
            statistics: Arc::new(opts),
        })
    }

    /// RocksDB's statistics dump, when opened with statistics on.
    pub fn statistics(&self) -> Option<String> {
        self.statistics.get_statistics()
    }

    fn cf(&self, table: &'static str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(table)
            .ok_or_else(|| StoreError::UnknownTable(table.to_string()))
    }
}

fn options(recovery: WalRecovery, cache: &Cache) -> Options {
    let mut opts = table_options(cache);
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_wal_recovery_mode(match recovery {
        WalRecovery::Strict => DBRecoveryMode::AbsoluteConsistency,
        WalRecovery::TolerateTornTail => DBRecoveryMode::TolerateCorruptedTailRecords,
    });
    opts.set_paranoid_checks(true);
    // RocksDB's default, set here because the journal's batch limit is derived from it.
    opts.set_writable_file_max_buffer_size(WAL_WRITE_BUFFER);
    // Bound memory: Lockstep's records are small and a coordinator must stay well under
    // 100 MB with a long history.
    opts.set_db_write_buffer_size(32 << 20);
    opts.set_max_total_wal_size(64 << 20);
    opts.set_keep_log_file_num(4);
    opts
}

fn table_options(cache: &Cache) -> Options {
    let mut opts = Options::default();
    opts.set_write_buffer_size(8 << 20);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Point reads that miss are the common case on the hot path (is this id taken,
    // was this version ever live, has this agent seen this transaction): a bloom
    // filter per table file answers most of them without reading a block, however
    // long the history on disk grows (~1.25 bytes per key).
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    opts
}

impl Kv for RocksKv {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(table)?, key)?)
    }

    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        to: Option<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let cf = self.cf(table)?;
        let mode = match (order, to) {
            (Order::Ascending, _) => IteratorMode::From(from, Direction::Forward),
            (Order::Descending, Some(to)) => IteratorMode::From(to, Direction::Reverse),
            (Order::Descending, None) => IteratorMode::End,
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, mode) {
            let (key, value) = item?;
            let below_end = to.is_none_or(|to| &*key < to);
            let above_start = &*key >= from;
            match order {
                Order::Ascending if !below_end => break,
                Order::Descending if !above_start => break,
                // Reverse seek lands on `to` itself when it exists: skip it.
                Order::Descending if !below_end => continue,
                _ => {}
            }
            if out.len() == limit {
                break;
            }
            out.push((key.into_vec(), value.into_vec()));
        }
        Ok(out)
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put { table, key, value } => wb.put_cf(self.cf(table)?, key, value),
                Op::Delete { table, key } => wb.delete_cf(self.cf(table)?, key),
            }
        }
        let mut wo = WriteOptions::default();
        // The durability point: with sync the WAL is fsynced before this returns.
        wo.set_sync(durability == Durability::Sync);
        self.db.write_opt(wb, &wo)?;
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        // The durability point for buffered writes: fsync of the WAL.
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Half the log's write buffer, so that a batch with RocksDB's framing still
    /// reaches the file in one `write()`: a process killed between two `write()`s of
    /// one batch leaves a torn record, which `--wal-recovery strict` then refuses to
    /// start on although nothing of it was acknowledged (stop 56 review: appends queued
    /// during a slow sync made one batch larger than the buffer).
    fn batch_limit(&self) -> Option<BatchLimit> {
        Some(BatchLimit {
            ops: usize::MAX,
            bytes: (WAL_WRITE_BUFFER / 2) as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, Subject};

    const TABLES: &[&str] = &conformance::TABLES;

    /// The suite's view of RocksDB: a crash drops the only handle, closing the database,
    /// and opens the same directory again.
    struct RocksSubject {
        dir: tempfile::TempDir,
        kv: Option<Arc<RocksKv>>,
    }

    impl RocksSubject {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let kv = RocksKv::open(dir.path(), TABLES).unwrap();
            Self {
                dir,
                kv: Some(Arc::new(kv)),
            }
        }
    }

    impl Subject for RocksSubject {
        fn store(&self) -> Arc<dyn Kv> {
            self.kv.clone().expect("the store is open")
        }

        fn crash_and_reopen(&mut self) -> Arc<dyn Kv> {
            let kv = self.kv.take().expect("the store is open");
            // RocksDB allows one open per directory: the old handle must be the last.
            let Ok(kv) = Arc::try_unwrap(kv) else {
                panic!("the suite still holds a handle on the store it crashes");
            };
            assert_eq!(
                Arc::strong_count(&kv.db),
                1,
                "a clone of the store is alive"
            );
            drop(kv);
            let kv = RocksKv::open(self.dir.path(), TABLES).unwrap();
            self.kv = Some(Arc::new(kv));
            self.store()
        }
    }

    #[test]
    fn rocksdb_passes_the_conformance_suite() {
        conformance::run_all(&mut RocksSubject::new());
    }

    #[test]
    fn synced_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = RocksKv::open(dir.path(), TABLES).unwrap();
            let mut b = Batch::default();
            b.put("t1", b"decision".to_vec(), b"commit".to_vec());
            kv.write(b, Durability::Sync).unwrap();
        }
        let kv = RocksKv::open(dir.path(), TABLES).unwrap();
        assert_eq!(kv.get("t1", b"decision").unwrap(), Some(b"commit".to_vec()));
    }

    /// Where [`a_buffered_write_survives_a_process_crash`]'s child writes.
    const CHILD_DIR: &str = "LOCKSTEP_STORE_CRASH_CHILD_DIR";

    /// The signal `std::process::abort` ends a process with (Linux and macOS alike; the
    /// store crate does not depend on libc for one number).
    #[cfg(unix)]
    const SIGABRT: i32 = 6;

    /// The child process: one buffered write, then an abort (no destructors, no close).
    #[test]
    #[ignore = "run as a child process by a_buffered_write_survives_a_process_crash"]
    fn buffered_write_then_abort() {
        let dir = std::env::var_os(CHILD_DIR).expect("run by the parent test");
        let kv = RocksKv::open(Path::new(&dir), TABLES).unwrap();
        let mut b = Batch::default();
        b.put("t1", b"buffered".to_vec(), b"v".to_vec());
        kv.write(b, Durability::Buffered).unwrap();
        std::process::abort();
    }

    /// `Buffered` promises to survive a process crash (the OS has the log): a real one,
    /// not a drop, since a drop closes the database cleanly.
    #[cfg(unix)]
    #[test]
    fn a_buffered_write_survives_a_process_crash() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "rocks::tests::buffered_write_then_abort",
                "--ignored",
            ])
            .args(["--test-threads=1", "--quiet"])
            .env(CHILD_DIR, dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(SIGABRT), "child {status}");
        let kv = RocksKv::open(dir.path(), TABLES).unwrap();
        assert_eq!(kv.get("t1", b"buffered").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn another_programs_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(RocksKv::open(dir.path(), &["prepared"]).unwrap());
        let err = RocksKv::open(dir.path(), TABLES)
            .err()
            .expect("must refuse");
        assert!(err.to_string().contains("prepared"), "{err}");
    }
}
