//! The behaviour every [`Kv`] implementation must show, as one suite that the RocksDB
//! store and the in-memory store both run (from their own tests), so the simulation
//! exercises the same contract as production.
//!
//! Each promise of the [`Kv`] and [`Durability`] docs has one named check. An
//! implementation hands the suite a [`Subject`]: its store, and a way to crash that
//! store and open it again on the same data. The suite asserts only what holds for
//! every crash an implementation may simulate: [`MemKv`](crate::MemKv) loses buffered
//! writes after the last sync (a power loss), RocksDB reopened in-process keeps them
//! (the OS still has the log). What a crash drops beyond the promises is each
//! implementation's own test.

use std::sync::Arc;

use crate::{Batch, Durability, Entry, Kv, Order};

/// The tables a [`Subject`]'s store must declare at open, and hold nothing in, before
/// [`run_all`].
pub const TABLES: [&str; 2] = ["t1", "t2"];

/// What a store implementation gives the suite: a store, and the same store after a
/// crash.
pub trait Subject {
    /// A handle on the store as it is now.
    fn store(&self) -> Arc<dyn Kv>;

    /// Crashes the store and opens it again on the same data. The suite has dropped
    /// every handle it got from [`Subject::store`] before calling this, so an
    /// implementation that allows one open per directory can close and reopen it.
    fn crash_and_reopen(&mut self) -> Arc<dyn Kv>;
}

/// A check of one promise, run on a store whose [`TABLES`] are empty.
type Check = fn(&mut dyn Subject);

/// Every check, by name, in the order [`run_all`] runs them.
const CHECKS: &[(&str, Check)] = &[
    (
        "tables_declared_at_open_start_empty",
        tables_declared_at_open_start_empty,
    ),
    ("reads_see_completed_writes", reads_see_completed_writes),
    (
        "batches_become_visible_in_write_order",
        batches_become_visible_in_write_order,
    ),
    (
        "a_sync_write_survives_a_crash",
        a_sync_write_survives_a_crash,
    ),
    (
        "buffered_writes_before_a_sync_write_survive_with_it",
        buffered_writes_before_a_sync_write_survive_with_it,
    ),
    (
        "sync_makes_earlier_buffered_writes_durable",
        sync_makes_earlier_buffered_writes_durable,
    ),
    (
        "batches_are_atomic_across_tables",
        batches_are_atomic_across_tables,
    ),
    (
        "a_batch_is_atomic_across_tables_after_a_crash",
        a_batch_is_atomic_across_tables_after_a_crash,
    ),
    (
        "scans_respect_bounds_order_and_limit",
        scans_respect_bounds_order_and_limit,
    ),
    (
        "scans_keep_byte_order_after_reopen",
        scans_keep_byte_order_after_reopen,
    ),
    (
        "a_batch_at_the_declared_limit_is_written_whole",
        a_batch_at_the_declared_limit_is_written_whole,
    ),
];

/// Runs every check against `subject`, whose store must be freshly opened with
/// [`TABLES`]. Each check starts on empty tables and the suite empties them after it, so
/// the checks do not depend on each other. Panics, naming the check, on the first
/// broken promise.
pub fn run_all(subject: &mut dyn Subject) {
    for (name, check) in CHECKS {
        eprintln!("conformance: {name}");
        check(subject);
        clear(&*subject.store());
    }
}

/// Drops `kv`, the caller's only handle, then crashes and reopens the store.
fn reopen(subject: &mut dyn Subject, kv: Arc<dyn Kv>) -> Arc<dyn Kv> {
    drop(kv);
    subject.crash_and_reopen()
}

fn put(kv: &dyn Kv, table: &'static str, key: &[u8], value: &[u8], d: Durability) {
    let mut b = Batch::default();
    b.put(table, key.to_vec(), value.to_vec());
    kv.write(b, d).expect("write");
}

fn delete(kv: &dyn Kv, table: &'static str, key: &[u8], d: Durability) {
    let mut b = Batch::default();
    b.delete(table, key.to_vec());
    kv.write(b, d).expect("delete");
}

fn get(kv: &dyn Kv, table: &'static str, key: &[u8]) -> Option<Vec<u8>> {
    kv.get(table, key).expect("get")
}

/// Every entry of `table`, in key order.
fn all(kv: &dyn Kv, table: &'static str) -> Vec<Entry> {
    kv.scan(table, b"", None, Order::Ascending, usize::MAX)
        .expect("scan")
}

/// Every entry of every table, in table then key order.
fn snapshot(kv: &dyn Kv) -> Vec<(&'static str, Entry)> {
    TABLES
        .iter()
        .flat_map(|t| all(kv, t).into_iter().map(move |e| (*t, e)))
        .collect()
}

/// Deletes everything the check left, durably.
fn clear(kv: &dyn Kv) {
    let mut b = Batch::default();
    for (table, (key, _)) in snapshot(kv) {
        b.delete(table, key);
    }
    kv.write(b, Durability::Sync).expect("clear");
    assert_eq!(snapshot(kv), Vec::new(), "cleared tables are empty");
}

fn keys(entries: Vec<Entry>) -> Vec<Vec<u8>> {
    entries.into_iter().map(|(k, _)| k).collect()
}

/// A table declared at open holds nothing at first, and is still there, empty, after a
/// reopen.
fn tables_declared_at_open_start_empty(subject: &mut dyn Subject) {
    let kv = subject.store();
    for t in TABLES {
        assert_eq!(all(&*kv, t), Vec::new(), "{t} is empty at first");
        assert_eq!(get(&*kv, t, b""), None);
    }
    let kv = reopen(subject, kv);
    for t in TABLES {
        assert_eq!(all(&*kv, t), Vec::new(), "{t} is empty after a reopen");
    }
}

/// A read after `write` returned sees it, whatever the durability.
fn reads_see_completed_writes(subject: &mut dyn Subject) {
    let kv = subject.store();
    let [t, _] = TABLES;
    assert_eq!(get(&*kv, t, b"k"), None);
    put(&*kv, t, b"k", b"1", Durability::Buffered);
    assert_eq!(get(&*kv, t, b"k"), Some(b"1".to_vec()));
    delete(&*kv, t, b"k", Durability::Sync);
    assert_eq!(get(&*kv, t, b"k"), None);
}

/// Batches become visible in the order `write` was called: within a batch and across
/// batches the later mutation of a key wins, and after a crash the last synced one does.
fn batches_become_visible_in_write_order(subject: &mut dyn Subject) {
    let kv = subject.store();
    let [t, _] = TABLES;
    let mut b = Batch::default();
    b.put(t, b"w".to_vec(), b"1".to_vec());
    b.put(t, b"w".to_vec(), b"2".to_vec());
    kv.write(b, Durability::Buffered).expect("write");
    assert_eq!(get(&*kv, t, b"w"), Some(b"2".to_vec()), "later op wins");
    put(&*kv, t, b"w", b"3", Durability::Buffered);
    assert_eq!(get(&*kv, t, b"w"), Some(b"3".to_vec()), "later batch wins");
    delete(&*kv, t, b"w", Durability::Buffered);
    assert_eq!(get(&*kv, t, b"w"), None, "a later delete wins");
    put(&*kv, t, b"w", b"4", Durability::Buffered);
    put(&*kv, t, b"w", b"5", Durability::Sync);
    put(&*kv, t, b"gone", b"1", Durability::Buffered);
    delete(&*kv, t, b"gone", Durability::Sync);
    let kv = reopen(subject, kv);
    assert_eq!(
        get(&*kv, t, b"w"),
        Some(b"5".to_vec()),
        "last synced put wins"
    );
    assert_eq!(get(&*kv, t, b"gone"), None, "a synced delete stays deleted");
}

/// A [`Durability::Sync`] write survives a crash, in every table it wrote.
fn a_sync_write_survives_a_crash(subject: &mut dyn Subject) {
    let kv = subject.store();
    let [t1, t2] = TABLES;
    let mut b = Batch::default();
    b.put(t1, b"decision".to_vec(), b"commit".to_vec());
    b.put(t2, b"prepared".to_vec(), b"yes".to_vec());
    kv.write(b, Durability::Sync).expect("write");
    let kv = reopen(subject, kv);
    assert_eq!(get(&*kv, t1, b"decision"), Some(b"commit".to_vec()));
    assert_eq!(get(&*kv, t2, b"prepared"), Some(b"yes".to_vec()));
}

/// Every [`Durability::Buffered`] write made before a later `Sync` write becomes
/// durable with it.
fn buffered_writes_before_a_sync_write_survive_with_it(subject: &mut dyn Subject) {
    let kv = subject.store();
    let [t1, t2] = TABLES;
    put(&*kv, t1, b"b1", b"1", Durability::Buffered);
    put(&*kv, t2, b"b2", b"2", Durability::Buffered);
    delete(&*kv, t1, b"b1", Durability::Buffered);
    put(&*kv, t1, b"b3", b"3", Durability::Buffered);
    put(&*kv, t2, b"s", b"sync", Durability::Sync);
    let kv = reopen(subject, kv);
    assert_eq!(
        get(&*kv, t1, b"b1"),
        None,
        "a buffered delete is durable too"
    );
    assert_eq!(get(&*kv, t2, b"b2"), Some(b"2".to_vec()));
    assert_eq!(get(&*kv, t1, b"b3"), Some(b"3".to_vec()));
    assert_eq!(get(&*kv, t2, b"s"), Some(b"sync".to_vec()));
}

/// [`Kv::sync`] makes every earlier write durable, as a `Sync` write would.
fn sync_makes_earlier_buffered_writes_durable(subject: &mut dyn Subject) {
    let kv = subject.store();
    let [t1, t2] = TABLES;
    put(&*kv, t1, b"x", b"1", Durability::Buffered);
    put(&*kv, t2, b"y", b"2", Durability::Buffered);
    put(&*kv, t1, b"z", b"3", Durability::Sync);
    delete(&*kv, t1, b"z", Durability::Buffered);
    kv.sync().expect("sync");
    let kv = reopen(subject, kv);
    assert_eq!(get(&*kv, t1, b"x"), Some(b"1".to_vec()));
    assert_eq!(get(&*kv, t2, b"y"), Some(b"2".to_vec()));
    assert_eq!(get(&*kv, t1, b"z"), None, "a synced delete is durable");
}

/// A batch is visible all at once, across tables, with its later op winning.
fn batches_are_atomic_across_tables(subject: &mut dyn Subject) {
    let kv = subject.store();
    let [t1, t2] = TABLES;
    let mut b = Batch::default();
    b.put(t1, b"x".to_vec(), b"1".to_vec());
    b.put(t2, b"x".to_vec(), b"2".to_vec());
    b.put(t1, b"x".to_vec(), b"3".to_vec());
    kv.write(b, Durability::Sync).expect("batch");
    assert_eq!(get(&*kv, t1, b"x"), Some(b"3".to_vec()), "later op wins");
    assert_eq!(get(&*kv, t2, b"x"), Some(b"2".to_vec()));
}

/// The durable state before [`a_batch_is_atomic_across_tables_after_a_crash`]'s batch.
fn atomic_before(kv: &dyn Kv) -> Vec<(&'static str, Entry)> {
    let [t1, t2] = TABLES;
    let mut b = Batch::default();
    b.put(t1, b"a".to_vec(), b"old".to_vec());
    b.put(t2, b"b".to_vec(), b"old".to_vec());
    kv.write(b, Durability::Sync).expect("write");
    snapshot(kv)
}

/// A batch of 200 mutations over both tables that overwrites, deletes and adds.
fn atomic_batch() -> Batch {
    let [t1, t2] = TABLES;
    let mut b = Batch::default();
    b.put(t1, b"a".to_vec(), b"new".to_vec());
    b.delete(t2, b"b".to_vec());
    for i in 0..99u8 {
        b.put(t1, vec![b'n', i], vec![i]);
        b.put(t2, vec![b'n', i], vec![i]);
    }
    b
}

/// After a crash a batch is there whole or not at all, across tables: a synced one
/// whole, a buffered one either way.
fn a_batch_is_atomic_across_tables_after_a_crash(subject: &mut dyn Subject) {
    for durability in [Durability::Sync, Durability::Buffered] {
        let kv = subject.store();
        let before = atomic_before(&*kv);
        kv.write(atomic_batch(), durability).expect("write");
        let after = snapshot(&*kv);
        let kv = reopen(subject, kv);
        let seen = snapshot(&*kv);
        match durability {
            Durability::Sync => assert!(seen == after, "a synced batch survives whole"),
            Durability::Buffered => assert!(
                seen == before || seen == after,
                "a buffered batch is all or nothing after a crash: {} entries",
                seen.len()
            ),
        }
        clear(&*kv);
    }
}

fn scans_respect_bounds_order_and_limit(subject: &mut dyn Subject) {
    let kv = subject.store();
    let [_, t] = TABLES;
    for k in [b"a1", b"a2", b"a3", b"b1"] {
        put(&*kv, t, k, k, Durability::Buffered);
    }
    let scan = |from: &[u8], to: Option<&[u8]>, order, limit| {
        keys(kv.scan(t, from, to, order, limit).expect("scan"))
    };
    let asc = scan(b"a", Some(b"b"), Order::Ascending, 10);
    assert_eq!(asc, vec![b"a1".to_vec(), b"a2".to_vec(), b"a3".to_vec()]);
    let desc = scan(b"a", Some(b"a3"), Order::Descending, 10);
    assert_eq!(
        desc,
        vec![b"a2".to_vec(), b"a1".to_vec()],
        "upper bound exclusive"
    );
    let last = scan(b"", None, Order::Descending, 1);
    assert_eq!(last, vec![b"b1".to_vec()]);
    let first_two = scan(b"a2", None, Order::Ascending, 2);
    assert_eq!(first_two, vec![b"a2".to_vec(), b"a3".to_vec()]);
}

/// Keys whose byte order differs from naive orders: prefixes, 0 and 0xFF bytes, the
/// empty key.
const AWKWARD_KEYS: &[&[u8]] = &[
    b"",
    b"\x00",
    b"\x01",
    b"a",
    b"a\x00",
    b"a\x00\x01",
    b"a\x7f",
    b"a\x80",
    b"a\xff",
    b"ab",
    b"b",
    b"\xff",
    b"\xff\xff",
];

/// Scan bounds around and between [`AWKWARD_KEYS`].
const BOUNDS: &[&[u8]] = &[
    b"",
    b"\x00",
    b"\x00\x00",
    b"a",
    b"a\x00",
    b"a\x00\x00",
    b"a\x80",
    b"a\xff",
    b"ab",
    b"b",
    b"\xff",
    b"\xff\xff\xff",
];

/// What a scan must return, computed from the sorted keys.
fn expected(
    sorted: &[Vec<u8>],
    from: &[u8],
    to: Option<&[u8]>,
    order: Order,
    limit: usize,
) -> Vec<Vec<u8>> {
    let mut within: Vec<Vec<u8>> = sorted
        .iter()
        .filter(|k| k.as_slice() >= from && to.is_none_or(|to| k.as_slice() < to))
        .cloned()
        .collect();
    if order == Order::Descending {
        within.reverse();
    }
    within.truncate(limit);
    within
}

/// Every bound pair, both orders and several limits against the model.
fn assert_scans_match(kv: &dyn Kv, t: &'static str, sorted: &[Vec<u8>], when: &str) {
    let tos = BOUNDS.iter().map(|b| Some(*b)).chain([None]);
    for to in tos {
        for from in BOUNDS {
            for order in [Order::Ascending, Order::Descending] {
                for limit in [0, 1, 2, 5, usize::MAX] {
                    let got = keys(kv.scan(t, from, to, order, limit).expect("scan"));
                    let want = expected(sorted, from, to, order, limit);
                    assert_eq!(
                        got, want,
                        "{when}: scan {from:?}..{to:?} {order:?} limit {limit}"
                    );
                }
            }
        }
    }
}

/// Scans keep byte order, bounds and limit on data read back after a reopen.
fn scans_keep_byte_order_after_reopen(subject: &mut dyn Subject) {
    let kv = subject.store();
    let [t, _] = TABLES;
    // Written out of order, over several batches.
    for chunk in AWKWARD_KEYS.iter().rev().collect::<Vec<_>>().chunks(4) {
        let mut b = Batch::default();
        for k in chunk {
            b.put(t, k.to_vec(), k.to_vec());
        }
        kv.write(b, Durability::Buffered).expect("write");
    }
    kv.sync().expect("sync");
    let mut sorted: Vec<Vec<u8>> = AWKWARD_KEYS.iter().map(|k| k.to_vec()).collect();
    sorted.sort();
    assert_scans_match(&*kv, t, &sorted, "before reopen");
    let kv = reopen(subject, kv);
    assert_eq!(
        all(&*kv, t),
        sorted
            .iter()
            .map(|k| (k.clone(), k.clone()))
            .collect::<Vec<_>>()
    );
    assert_scans_match(&*kv, t, &sorted, "after reopen");
}

/// A store that declares a [`crate::BatchLimit`] takes a batch right at it, whole: the
/// coordinator's journal packs its appends up to it and a refusal stops the coordinator.
fn a_batch_at_the_declared_limit_is_written_whole(subject: &mut dyn Subject) {
    let kv = subject.store();
    let Some(limit) = kv.batch_limit() else {
        return;
    };
    let [t, _] = TABLES;
    let mut batch = Batch::default();
    // At most 10,000 keys (a store may declare no limit on keys), as large as fits.
    let ops = limit.ops.min(10_000);
    let value = vec![b'v'; limit.bytes / ops - 8];
    for n in 0..ops {
        batch.put(t, format!("{n:08}").into_bytes(), value.clone());
    }
    assert!(limit.fits(batch.ops.len(), batch.bytes()), "{limit:?}");
    kv.write(batch, Durability::Sync)
        .expect("a batch at the declared limit is taken");
    assert_eq!(all(&*kv, t).len(), ops, "every key written");
}
