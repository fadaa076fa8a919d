//! The behaviour every [`Kv`] implementation must show, as one suite that the RocksDB
//! store and the in-memory store both run (from their own tests), so the simulation
//! exercises the same contract as production.

use crate::{Batch, Durability, Kv, Order};

/// Runs every check against `kv`, using two empty tables.
pub fn run_all(kv: &dyn Kv, t1: &'static str, t2: &'static str) {
    reads_see_completed_writes(kv, t1);
    kv.sync().expect("sync");
    batches_are_atomic_across_tables(kv, t1, t2);
    scans_respect_bounds_order_and_limit(kv, t2);
}

fn put(kv: &dyn Kv, table: &'static str, key: &[u8], value: &[u8]) {
    let mut b = Batch::default();
    b.put(table, key.to_vec(), value.to_vec());
    kv.write(b, Durability::Buffered).expect("write");
}

fn reads_see_completed_writes(kv: &dyn Kv, t: &'static str) {
    assert_eq!(kv.get(t, b"k").expect("get"), None);
    put(kv, t, b"k", b"1");
    assert_eq!(kv.get(t, b"k").expect("get"), Some(b"1".to_vec()));
    let mut b = Batch::default();
    b.delete(t, b"k".to_vec());
    kv.write(b, Durability::Sync).expect("delete");
    assert_eq!(kv.get(t, b"k").expect("get"), None);
}

fn batches_are_atomic_across_tables(kv: &dyn Kv, t1: &'static str, t2: &'static str) {
    let mut b = Batch::default();
    b.put(t1, b"x".to_vec(), b"1".to_vec());
    b.put(t2, b"x".to_vec(), b"2".to_vec());
    b.put(t1, b"x".to_vec(), b"3".to_vec());
    kv.write(b, Durability::Sync).expect("batch");
    assert_eq!(
        kv.get(t1, b"x").expect("get"),
        Some(b"3".to_vec()),
        "later op wins"
    );
    assert_eq!(kv.get(t2, b"x").expect("get"), Some(b"2".to_vec()));
    let mut b = Batch::default();
    b.delete(t1, b"x".to_vec());
    b.delete(t2, b"x".to_vec());
    kv.write(b, Durability::Sync).expect("cleanup");
}

fn scans_respect_bounds_order_and_limit(kv: &dyn Kv, t: &'static str) {
    for k in [b"a1", b"a2", b"a3", b"b1"] {
        put(kv, t, k, k);
    }
    let keys = |entries: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<Vec<u8>> {
        entries.into_iter().map(|(k, _)| k).collect()
    };
    let asc = kv
        .scan(t, b"a", Some(b"b"), Order::Ascending, 10)
        .expect("scan");
    assert_eq!(
        keys(asc),
        vec![b"a1".to_vec(), b"a2".to_vec(), b"a3".to_vec()]
    );
    let desc = kv
        .scan(t, b"a", Some(b"a3"), Order::Descending, 10)
        .expect("scan");
    assert_eq!(
        keys(desc),
        vec![b"a2".to_vec(), b"a1".to_vec()],
        "upper bound exclusive"
    );
    let last = kv.scan(t, b"", None, Order::Descending, 1).expect("scan");
    assert_eq!(keys(last), vec![b"b1".to_vec()]);
    let first_two = kv.scan(t, b"a2", None, Order::Ascending, 2).expect("scan");
    assert_eq!(keys(first_two), vec![b"a2".to_vec(), b"a3".to_vec()]);
}
