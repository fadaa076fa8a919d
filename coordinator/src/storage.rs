//! Where the coordinator keeps its tables: RocksDB on this machine's disk (the default,
//! `--data-dir`), or etcd (`--store etcd://HOST:PORT[,...][/PREFIX]`), shared by
//! several instances of which one leads at a time. On etcd an instance waits until it
//! leads before it recovers anything, and every write it makes is fenced on its term
//! (see `lockstep_store::etcd_lead`): a deposed instance cannot write one record.

use std::{path::Path, sync::Arc, time::Duration};

use lockstep_store::{EtcdKv, EtcdTarget, Kv, RocksKv, StoreError, WalRecovery, etcd_lead::Lead};

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
    let kv = RocksKv::open_full(dir, tables::ALL, recovery, true)
        .map_err(|e| format!("opening the database in --data-dir {}: {e}", dir.display()))?;
    Ok(Arc::new(kv))
}

/// The etcd store, once this instance (`me`, its address as the others should show
/// it) leads; `waiting` hears who leads meanwhile. Blocks until then.
pub fn open_etcd(
    target: &EtcdTarget,
    me: &str,
    ttl: Duration,
    waiting: impl Fn(&str) + Send + Sync + 'static,
) -> Result<(Arc<EtcdKv>, Lead), StoreError> {
    let kv = EtcdKv::open(target, tables::ALL)?;
    let lead = kv.lead(me, ttl, waiting)?;
    Ok((Arc::new(kv), lead))
}
