//! The in-memory twin of [`crate::RocksKv`], for deterministic simulation.
//!
//! It keeps the crash semantics the protocol relies on: a [`Durability::Sync`] write and
//! everything before it survives [`MemKv::crash`]; [`Durability::Buffered`] writes made
//! after the last sync vanish on crash, as a power loss would drop them from the OS
//! cache.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use crate::{Batch, BatchLimit, Durability, Entry, Kv, Op, Order, StoreError};

type Tables = BTreeMap<&'static str, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Default)]
struct State {
    durable: Tables,
    /// Buffered batches since the last sync, in write order.
    unsynced: Vec<Batch>,
    /// `durable` with `unsynced` applied: what reads see.
    visible: Tables,
    down: bool,
}

/// Shared handle: clones see the same data, as the same disk would.
#[derive(Clone, Default)]
pub struct MemKv {
    state: Arc<Mutex<State>>,
    /// Batches beyond it are refused, as etcd refuses them (tests of the journal).
    limit: Option<BatchLimit>,
}

impl MemKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that refuses a batch beyond `limit`, as etcd does.
    pub fn with_batch_limit(limit: BatchLimit) -> Self {
        Self {
            limit: Some(limit),
            ..Self::default()
        }
    }

    /// The same data (a clone sees what this store sees) through a handle that refuses a
    /// batch beyond `limit`: a test writes its setup whole, then hands the code under
    /// test a store with etcd's limits.
    pub fn limited_to(&self, limit: BatchLimit) -> Self {
        Self {
            limit: Some(limit),
            ..self.clone()
        }
    }

    /// Simulates a crash: buffered writes since the last sync are lost and every call
    /// fails with [`StoreError::Down`] until [`MemKv::restart`].
    pub fn crash(&self) {
        self.crash_keeping(|_| 0);
    }

    /// A crash that keeps the first `keep(n)` of the `n` batches buffered since the
    /// last sync, as a power loss may leave a prefix of an unsynced write-ahead log on
    /// disk; the rest are lost.
    pub fn crash_keeping(&self, keep: impl FnOnce(usize) -> usize) {
        let mut s = self.lock();
        let n = s.unsynced.len();
        s.unsynced.truncate(keep(n).min(n));
        make_durable(&mut s);
        s.visible = s.durable.clone();
        s.down = true;
    }

    /// Simulates the loss of the whole store (a data directory deleted or a disk
    /// replaced) at a crash: nothing survives. Down until [`MemKv::restart`].
    pub fn wipe(&self) {
        let mut s = self.lock();
        *s = State::default();
        s.down = true;
    }

    /// Brings the store back after [`MemKv::crash`], holding what was durable.
    pub fn restart(&self) {
        self.lock().down = false;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps (every mutation is a
        // whole-batch apply), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Everything buffered so far becomes durable.
fn make_durable(s: &mut State) {
    let pending = std::mem::take(&mut s.unsynced);
    for b in &pending {
        apply(&mut s.durable, b);
    }
}

fn apply(tables: &mut Tables, batch: &Batch) {
    for op in &batch.ops {
        match op {
            Op::Put { table, key, value } => {
                tables
                    .entry(table)
                    .or_default()
                    .insert(key.clone(), value.clone());
            }
            Op::Delete { table, key } => {
                tables.entry(table).or_default().remove(key);
            }
        }
    }
}

impl Kv for MemKv {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let s = self.lock();
        if s.down {
            return Err(StoreError::Down);
        }
        Ok(s.visible.get(table).and_then(|t| t.get(key)).cloned())
    }

    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        to: Option<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let s = self.lock();
        if s.down {
            return Err(StoreError::Down);
        }
        let Some(t) = s.visible.get(table) else {
            return Ok(Vec::new());
        };
        let range = t
            .range(from.to_vec()..)
            .filter(|(k, _)| to.is_none_or(|to| k.as_slice() < to))
            .map(|(k, v)| (k.clone(), v.clone()));
        Ok(match order {
            Order::Ascending => range.take(limit).collect(),
            Order::Descending => {
                let mut all: Vec<_> = range.collect();
                all.reverse();
                all.truncate(limit);
                all
            }
        })
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        let (ops, bytes) = (batch.ops.len(), batch.bytes());
        if let Some(limit) = self.limit.filter(|l| !l.fits(ops, bytes)) {
            return Err(StoreError::TooLarge { ops, bytes, limit });
        }
        let mut s = self.lock();
        if s.down {
            return Err(StoreError::Down);
        }
        apply(&mut s.visible, &batch);
        s.unsynced.push(batch);
        if durability == Durability::Sync {
            make_durable(&mut s);
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.down {
            return Err(StoreError::Down);
        }
        make_durable(&mut s);
        Ok(())
    }

    fn batch_limit(&self) -> Option<BatchLimit> {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{self, Subject, TABLES};

    /// The suite's view of a [`MemKv`]: a crash is [`MemKv::crash`] then
    /// [`MemKv::restart`] on the same handle.
    struct MemSubject(Arc<MemKv>);

    impl Subject for MemSubject {
        fn store(&self) -> Arc<dyn Kv> {
            self.0.clone()
        }

        fn crash_and_reopen(&mut self) -> Arc<dyn Kv> {
            self.0.crash();
            self.0.restart();
            self.store()
        }
    }

    fn put(kv: &dyn Kv, table: &'static str, key: &str, d: Durability) {
        let mut b = Batch::default();
        b.put(table, key.as_bytes().to_vec(), b"v".to_vec());
        kv.write(b, d).unwrap();
    }

    #[test]
    fn memory_store_passes_the_conformance_suite() {
        conformance::run_all(&mut MemSubject(Arc::new(MemKv::new())));
    }

    #[test]
    fn a_crash_keeps_synced_writes_and_drops_later_buffered_ones() {
        let kv = MemKv::new();
        put(&kv, "t", "buffered-before-sync", Durability::Buffered);
        put(&kv, "t", "synced", Durability::Sync);
        put(&kv, "t", "buffered-after-sync", Durability::Buffered);
        kv.crash();
        assert!(matches!(kv.get("t", b"synced"), Err(StoreError::Down)));
        kv.restart();
        assert!(kv.get("t", b"buffered-before-sync").unwrap().is_some());
        assert!(kv.get("t", b"synced").unwrap().is_some());
        assert!(kv.get("t", b"buffered-after-sync").unwrap().is_none());
    }

    /// A power loss drops every buffered write after the last sync, whole batches across
    /// tables included, and deletes come undone: what is left is the synced state.
    #[test]
    fn buffered_writes_after_the_last_sync_vanish_on_crash() {
        let mut subject = MemSubject(Arc::new(MemKv::new()));
        let kv = subject.store();
        let [t1, t2] = TABLES;
        put(&*kv, t1, "kept", Durability::Buffered);
        kv.sync().unwrap();
        let mut b = Batch::default();
        b.put(t1, b"lost".to_vec(), b"v".to_vec());
        b.put(t2, b"lost".to_vec(), b"v".to_vec());
        b.delete(t1, b"kept".to_vec());
        kv.write(b, Durability::Buffered).unwrap();
        put(&*kv, t2, "also-lost", Durability::Buffered);
        drop(kv);
        let kv = subject.crash_and_reopen();
        assert!(
            kv.get(t1, b"kept").unwrap().is_some(),
            "a buffered delete is undone"
        );
        assert_eq!(kv.get(t1, b"lost").unwrap(), None);
        assert_eq!(kv.get(t2, b"lost").unwrap(), None);
        assert_eq!(kv.get(t2, b"also-lost").unwrap(), None);
    }

    #[test]
    fn a_partial_crash_keeps_a_prefix_of_the_buffered_writes() {
        let kv = MemKv::new();
        for key in ["a", "b", "c"] {
            put(&kv, "t", key, Durability::Buffered);
        }
        kv.crash_keeping(|n| n - 1);
        kv.restart();
        let keys: Vec<Vec<u8>> = kv
            .scan("t", b"", None, Order::Ascending, 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn every_call_fails_while_down() {
        let kv = MemKv::new();
        kv.crash();
        assert!(matches!(kv.get("t", b"k"), Err(StoreError::Down)));
        let scan = kv.scan("t", b"", None, Order::Ascending, 1);
        assert!(matches!(scan, Err(StoreError::Down)));
        let write = kv.write(Batch::default(), Durability::Sync);
        assert!(matches!(write, Err(StoreError::Down)));
        assert!(matches!(kv.sync(), Err(StoreError::Down)));
    }
}
