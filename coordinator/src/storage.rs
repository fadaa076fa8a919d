//! Where the coordinator keeps its tables: RocksDB on this machine's disk (the default,
//! `--data-dir`), or etcd (`--store etcd://HOST:PORT[,...][/PREFIX]`), shared by
//! several instances of which one leads at a time. On etcd an instance waits until it
//! leads before it recovers anything, and every write it makes is fenced on its term
//! (see `lockstep_store::etcd_lead`): a deposed instance cannot write one record.

use std::{path::Path, sync::Arc, time::Duration};

use lockstep_store::{
    EtcdKv, EtcdTarget, Kv, Opening, RocksKv, StoreError, WalRecovery, etcd_lead::Lead,
};

use crate::tables;

/// The `--store` flag.
#[derive(Debug, Clone)]
pub enum StoreFlag {
    /// RocksDB in `--data-dir`.
    Rocks,
    /// etcd at these members and prefix.
    Etcd(EtcdTarget),
}

/// Parses `rocksdb` or `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
pub fn parse_store(value: &str) -> Result<StoreFlag, String> {
    match value {
        "rocksdb" => Ok(StoreFlag::Rocks),
        etcd => EtcdTarget::parse(etcd).map(StoreFlag::Etcd),
    }
}

/// The RocksDB store in `dir` (created), with statistics for the benchmarks.
pub fn open_rocks(dir: &Path, recovery: WalRecovery) -> Result<Arc<dyn Kv>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("creating --data-dir {}: {e}", dir.display()))?;
    let kv = rocks_store(dir, recovery)
        .map_err(|e| format!("opening the database in --data-dir {}: {e}", dir.display()))?;
    Ok(Arc::new(kv))
}

/// The coordinator's RocksDB database in `dir`, opened as the binary opens it (the
/// benchmarks open theirs with this too): with statistics, and every buffered write
/// reaching the log file at once (the journal writes its batches just before each
/// sync, so it has nothing to gain from holding them).
pub fn rocks_store(dir: &Path, recovery: WalRecovery) -> Result<RocksKv, StoreError> {
    let opening = Opening {
        recovery,
        statistics: true,
        buffered_until_sync: false,
    };
    RocksKv::open_full(dir, tables::ALL, opening)
}

/// The etcd store, once this instance (`me`, its address as the others should show
/// it) leads; `waiting` hears who leads meanwhile. Blocks until then.
pub fn open_etcd(
    target: &EtcdTarget,
    me: &str,
    ttl: Duration,
    waiting: impl Fn(&str) + Send + 'static,
) -> Result<(Arc<EtcdKv>, Lead), StoreError> {
    let kv = EtcdKv::open(target, tables::ALL)?;
    let lead = kv.lead(me, ttl, waiting)?;
    Ok((Arc::new(kv), lead))
}
