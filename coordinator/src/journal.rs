//! The write-ahead log's front door: every change of coordinator state goes through
//! [`Journal::append`], which numbers its events and queues them with the records for
//! one atomic RocksDB batch.
//!
//! An append touches only memory on the caller's thread: callers append under the
//! registry's lock (so that checkpoints and sequence numbers follow one order), and no
//! store write may happen there, where one slow write would stall every reader. The
//! syncer (a thread of its own; a task in simulation) writes everything queued, in
//! order, as one batch just before each fsync, and the append's future resolves once
//! that fsync is done. [`Durable`] says how soon: [`Durable::Now`] (the COMMIT decision)
//! asks for an fsync at once; [`Durable::Soon`] becomes durable with the next sync,
//! asked for by someone else's decision or by itself after [`LINGER`]. Concurrent
//! transactions share writes and fsyncs: group commit.
//!
//! [`Journal::append_quietly`] is for steps nobody waits for and whose loss in a crash
//! is harmless (votes, acknowledgements): queued the same way, they ask for a sync only
//! within [`QUIET_LINGER`], so a release's three votes ride with its decision instead of
//! costing writes of their own (and a hundred votes, one).
//!
//! Under load, a transaction's steps may wait a little on purpose so that more of them
//! share one fsync ([`CommitDelay`], PostgreSQL's `commit_delay` and `commit_siblings`):
//! off by default, for disks where fsyncs, not CPU, are the scarce resource.
//!
//! A record reaches the store only just before the fsync that makes it durable, and the
//! coordinator never reports from the store what it has not heard is durable:
//! transactions in flight are read from memory, published once durable; the feed stops
//! at the newest durable event.
//!
//! Events reach watchers only once durable, so a watcher never sees an event that a
//! crash could take back. Sequence numbers are gap-free and in log order.
//!
//! A failed write is fatal (fail-stop, as PostgreSQL does on fsync failure): the journal
//! refuses every later append and reports the failure, and the binary exits so that
//! recovery starts from what is durable.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use lockstep::pb;
pub use lockstep_store::WriterMode;
use lockstep_store::{Batch, GroupCommit, Hooks, StoreError, SyncerWriter};

use crate::{
    durable::Waiters, error::CoordinatorError, feed::Feed, tables::Tables, timings::Timings,
};

/// How long a [`Durable::Soon`] write waits for someone else's sync before the syncer
/// syncs it (tokio's timer ticks in milliseconds, so this is the shortest wait that
/// means what it says).
pub const LINGER: Duration = Duration::from_millis(1);

/// How long a quiet append ([`Journal::append_quietly`]) may wait for someone else's
/// sync: long enough that the next step of its transaction (which comes with a sync of
/// its own) carries it, short enough that watchers see its events at once to a person.
pub const QUIET_LINGER: Duration = Duration::from_millis(5);

/// Queued bytes (keys and values) beyond this many ask for a sync at once. What is
/// queued meanwhile (a sync is running) is written in batches within the store's
/// `batch_limit` (RocksDB's: this much, half its write buffer
/// `lockstep_store::rocks::WAL_WRITE_BUFFER`), so each reaches the log in one
/// `write()`: a process crash cannot tear it.
const QUEUED_LIMIT: usize = 512 << 10;
const _: () = assert!(2 * QUEUED_LIMIT <= lockstep_store::rocks::WAL_WRITE_BUFFER as usize);

/// How soon an append must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// Forces an fsync now: a decision that must be durable before anyone acts on it.
    Now,
    /// Rides on the next fsync, or gets one after [`LINGER`]: a step someone waits for.
    Soon,
    /// Rides on the next fsync, or gets one after this long: a transaction's step under
    /// load, held back by [`CommitDelay`] so that others share its fsync.
    Within(Duration),
}

impl Durable {
    fn linger(self) -> Duration {
        match self {
            Durable::Now => Duration::ZERO,
            Durable::Soon => LINGER,
            Durable::Within(linger) => linger,
        }
    }
}

/// How long a transaction's durable step may wait for others' to share its fsync, and
/// from how many transactions in flight (PostgreSQL's `commit_delay` and
/// `commit_siblings`). With fewer in flight nothing waits, so a lone release is as fast
/// as without; with more, up to `delay` is added at each of a release's three synced
/// steps (admission, decision, end), which costs nothing while the clients outnumber
/// what the CPU can serve and throughput when they do not (see README "Performance").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitDelay {
    /// The longest wait; zero turns grouping off.
    pub delay: Duration,
    /// Steps wait only while more than this many transactions are in flight.
    pub siblings: usize,
}

impl CommitDelay {
    /// How soon a transaction's step asking for `asked` must be durable while `in_flight`
    /// transactions run: `asked`, or [`Durable::Within`] the delay under load.
    pub fn durability(&self, asked: Durable, in_flight: usize) -> Durable {
        if self.delay.is_zero() || in_flight <= self.siblings {
            return asked;
        }
        Durable::Within(self.delay.max(asked.linger()))
    }

    /// How long a quiet append may wait: never less than a delayed step, or it would
    /// force the sync that the delay holds back.
    fn quiet_linger(&self) -> Duration {
        QUIET_LINGER.max(self.delay)
    }
}

/// A clock in milliseconds since the epoch; simulation passes a deterministic one.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Handle to the journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    log: GroupCommit,
    clock: Clock,
    queue: Arc<Mutex<Queue>>,
    /// Who waits for which append to be durable (appends are numbered 1, 2, ... in log
    /// order), woken in that order.
    durable: Waiters,
    timings: Timings,
    delay: CommitDelay,
}

/// Sequence numbers and what waits to be written. Appends number their events and
/// queue them under this lock, so sequence numbers follow the log order.
#[derive(Default)]
struct Queue {
    next_seq: u64,
    /// Appends numbered so far: the newest one's number.
    appends: u64,
    /// What the appends queued and the syncer has not written yet, in log order: each
    /// append's batch (its events among its records).
    batches: Vec<Batch>,
    events: Vec<pb::Event>,
    /// What the syncer wrote for the sync it is about to make: the newest append it
    /// covers and the events that sync makes durable.
    in_sync: (u64, Vec<pb::Event>),
    /// When the sync in progress began (for its duration in the metrics).
    sync_started: Option<Instant>,
    /// The newest append the previous sync covered (for the appends per sync).
    synced_through: u64,
    /// Bytes of keys and values in `batch`.
    queued_bytes: usize,
}

impl Queue {
    fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
        // Every critical section completes its update before anything that can panic.
        queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers `events`, queues them with `batch` and returns the append's number and
    /// the first event's sequence number (or the last one's before, when there are
    /// none).
    fn push(&mut self, mut batch: Batch, mut events: Vec<pb::Event>, now: u64) -> (u64, u64) {
        let first = self.next_seq;
        for (i, event) in events.iter_mut().enumerate() {
            event.seq = first + i as u64;
            event.time = lockstep::wire::timestamp(now);
            Tables::put_event(&mut batch, event);
        }
        self.next_seq += events.len() as u64;
        self.appends += 1;
        self.queued_bytes += batch.bytes();
        self.batches.push(batch);
        self.events.extend(events);
        let seq = if self.next_seq == first {
            first - 1
        } else {
            first
        };
        (self.appends, seq)
    }

    /// The syncer's step just before a sync: writes everything queued, and notes what
    /// the sync will make durable. The queue's lock is held only to take what is
    /// queued and to note what was written, never across the writes: on etcd each is a
    /// round trip, and appends (made under the registry's lock) must not wait for it.
    /// Only the syncer writes, so the appends land in order.
    fn write(queue: &Mutex<Queue>, log: &SyncerWriter<'_>) {
        let (batches, events, through) = {
            let mut q = Queue::lock(queue);
            q.queued_bytes = 0;
            let taken = (
                std::mem::take(&mut q.batches),
                std::mem::take(&mut q.events),
            );
            (taken.0, taken.1, q.appends)
        };
        // A failure is recorded by the log (fail-stop) and reported by `failed`; the
        // sync then does not happen and these events are never published. The writes
        // before it landed whole: a prefix of the appends, as a crash leaves.
        let mut writes = lockstep_store::whole_batches(batches, log.batch_limit()).into_iter();
        let written = writes.all(|batch| log.write(batch, None).is_ok());
        let mut q = Queue::lock(queue);
        if written {
            q.in_sync = (through, events);
        }
        q.sync_started = Some(Instant::now());
    }

    /// The syncer's step once a sync is done: takes what it made durable (the newest
    /// append it covers and its events), and times it.
    fn synced(&mut self, timings: &Timings) -> (u64, Vec<pb::Event>) {
        let (through, events) = std::mem::take(&mut self.in_sync);
        if let Some(started) = self.sync_started.take() {
            let records = through.saturating_sub(self.synced_through);
            timings.synced(started.elapsed(), records);
        }
        self.synced_through = self.synced_through.max(through);
        (through, events)
    }
}

/// Counters for benchmarks: how well group commit works.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalStats {
    /// fsyncs of the log.
    pub syncs: u64,
    /// Appends made (each one queued, then written with the next sync).
    pub appends: u64,
}

impl Journal {
    /// Starts the journal and its syncer. `tables` must be the store the feed reads
    /// from.
    pub fn start(
        tables: Tables,
        feed: Feed,
        clock: Clock,
        mode: WriterMode,
        delay: CommitDelay,
    ) -> Result<Self, CoordinatorError> {
        let queue = Arc::new(Mutex::new(Queue {
            next_seq: tables.last_event_seq()? + 1,
            ..Queue::default()
        }));
        let (durable, advance) = Waiters::new();
        let before_sync = {
            let queue = queue.clone();
            move |log: &SyncerWriter<'_>| Queue::write(&queue, log)
        };
        let timings = Timings::default();
        let on_synced = {
            let (queue, timings) = (queue.clone(), timings.clone());
            move |_| {
                let (through, events) = Queue::lock(&queue).synced(&timings);
                // The syncer is the only caller, so events are published in log order,
                // and before anyone waiting for their append hears it is durable.
                feed.publish(events);
                advance.to(through);
            }
        };
        let hooks = Hooks {
            before_sync: Some(Box::new(before_sync)),
            on_synced: Some(Box::new(on_synced)),
        };
        let log = GroupCommit::start_with(tables.kv().clone(), mode, hooks)?;
        let inner = Inner {
            log,
            clock,
            queue,
            durable,
            timings,
            delay,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Queues `batch` and `events` (their `seq` and `time` are filled in) to be written
    /// atomically, without touching the store. Order is fixed when this returns; the
    /// future resolves once the write is durable, with the sequence number of its first
    /// event (or of the last event written before, when `events` is empty). `durable`
    /// says how soon it must be.
    ///
    /// Dropping the future does not cancel the write.
    pub fn append(
        &self,
        batch: Batch,
        events: Vec<pb::Event>,
        durable: Durable,
    ) -> impl Future<Output = Result<u64, CoordinatorError>> + Send + use<> {
        self.append_made(|_| batch, events, durable)
    }

    /// [`Journal::append`] of a batch that records its own first event's sequence number
    /// (a subscription that starts at its own announcement): `make` gets it, under the
    /// lock that numbers the events, so nothing can be numbered in between.
    pub fn append_made<F: FnOnce(u64) -> Batch>(
        &self,
        make: F,
        events: Vec<pb::Event>,
        durable: Durable,
    ) -> impl Future<Output = Result<u64, CoordinatorError>> + Send + use<F> {
        let (append, seq) = self.queue(make, events, durable.linger());
        let durable = self.durable_through(append);
        async move { durable.await.map(|_| seq) }
    }

    /// Resolves once every append made so far is durable, writing nothing: the answer
    /// to a repeated call that finds in memory what another call wrote an instant ago
    /// ("registered exactly so already", "not registered"), which must not be given
    /// before a crash would keep that write.
    pub fn settled(&self) -> impl Future<Output = Result<(), CoordinatorError>> + Send + use<> {
        let appends = Queue::lock(&self.inner.queue).appends;
        self.durable_through(appends)
    }

    /// Resolves once append number `append` is durable.
    fn durable_through(
        &self,
        append: u64,
    ) -> impl Future<Output = Result<(), CoordinatorError>> + Send + use<> {
        let (log, heard) = (self.inner.log.clone(), self.inner.durable.clone());
        async move {
            tokio::select! {
                biased;
                done = heard.durable(append) => done
                    .map_err(|()| StoreError::Stopped("the syncer stopped".into()).into()),
                e = log.failed() => Err(StoreError::Stopped(e).into()),
            }
        }
    }

    /// Appends `batch` and `events` (numbered now) for a step nobody waits for and whose
    /// loss in a crash is harmless: durable within [`QUIET_LINGER`] (or the commit
    /// delay, when longer), or with whichever sync comes sooner. Its events reach
    /// watchers once that sync is done. A failure shows in [`Journal::failed`].
    pub fn append_quietly(&self, batch: Batch, events: Vec<pb::Event>) {
        self.queue(|_| batch, events, self.inner.delay.quiet_linger());
    }

    /// How soon a transaction's step asking for `asked` must be durable while
    /// `in_flight` transactions run (see [`CommitDelay`]).
    pub fn under_load(&self, asked: Durable, in_flight: usize) -> Durable {
        self.inner.delay.durability(asked, in_flight)
    }

    /// Queues an append and asks for a sync within `linger` (at once when the queue has
    /// grown long); returns the append's number and its first sequence number.
    fn queue(
        &self,
        make: impl FnOnce(u64) -> Batch,
        events: Vec<pb::Event>,
        linger: Duration,
    ) -> (u64, u64) {
        let (numbered, long) = {
            let mut q = Queue::lock(&self.inner.queue);
            let batch = make(q.next_seq);
            let numbered = q.push(batch, events, (self.inner.clock)());
            (numbered, q.queued_bytes > QUEUED_LIMIT)
        };
        let linger = if long { Duration::ZERO } else { linger };
        self.inner.log.sync_within(linger);
        numbered
    }

    /// Fails the journal (the process must stop) for a write that could not be made.
    pub fn halt(&self, why: String) {
        self.inner.log.halt(why);
    }

    /// Resolves with the error message once a write has failed (the process must stop).
    pub async fn failed(&self) -> String {
        self.inner.log.failed().await
    }

    /// The histograms the journal and the transactions' writes move.
    pub fn timings(&self) -> &Timings {
        &self.inner.timings
    }

    /// Group-commit counters so far.
    pub fn stats(&self) -> JournalStats {
        JournalStats {
            syncs: self.inner.log.syncs(),
            appends: Queue::lock(&self.inner.queue).appends,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use lockstep_store::MemKv;

    use super::*;

    fn journal(kv: &MemKv) -> (Journal, Feed, Tables) {
        delayed_journal(kv, CommitDelay::default())
    }

    fn delayed_journal(kv: &MemKv, delay: CommitDelay) -> (Journal, Feed, Tables) {
        let tables = Tables::new(Arc::new(kv.clone()));
        let feed = Feed::new(tables.clone()).unwrap();
        let clock = Arc::new(|| 0);
        let journal =
            Journal::start(tables.clone(), feed.clone(), clock, WriterMode::Task, delay).unwrap();
        (journal, feed, tables)
    }

    fn event(message: &str) -> pb::Event {
        pb::Event {
            message: message.into(),
            ..Default::default()
        }
    }

    fn messages(events: &[pb::Event]) -> Vec<(u64, String)> {
        events.iter().map(|e| (e.seq, e.message.clone())).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_append_writes_nothing_to_the_store_on_the_callers_thread() {
        let kv = MemKv::new();
        let (journal, feed, tables) = journal(&kv);
        let written = journal.append(Batch::default(), vec![event("created")], Durable::Now);
        assert!(
            tables.events(1, 10).unwrap().is_empty(),
            "the caller (who holds the registry's lock) wrote nothing to the store"
        );
        assert_eq!(written.await.unwrap(), 1);
        let expected = vec![(1, "created".to_string())];
        assert_eq!(messages(&tables.events(1, 10).unwrap()), expected);
        assert_eq!(messages(&feed.read(1, 10).unwrap()), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_append_is_still_written_and_synced() {
        let kv = MemKv::new();
        let (journal, _feed, tables) = journal(&kv);
        drop(journal.append(Batch::default(), vec![event("clean-up")], Durable::Soon));
        tokio::time::sleep(LINGER * 2).await;
        kv.crash();
        kv.restart();
        assert_eq!(
            messages(&tables.events(1, 10).unwrap()),
            vec![(1, "clean-up".to_string())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_appends_ride_in_front_of_the_next_write() {
        let kv = MemKv::new();
        let (journal, feed, tables) = journal(&kv);
        journal.append_quietly(Batch::default(), vec![event("vote a")]);
        journal.append_quietly(Batch::default(), vec![event("vote b")]);
        assert!(
            tables.events(1, 10).unwrap().is_empty(),
            "held in memory, not yet written"
        );
        let seq = journal
            .append(Batch::default(), vec![event("decision")], Durable::Now)
            .await
            .unwrap();
        assert_eq!(seq, 3, "numbered after the held ones");
        let expected = vec![
            (1, "vote a".to_string()),
            (2, "vote b".to_string()),
            (3, "decision".to_string()),
        ];
        assert_eq!(messages(&feed.read(1, 10).unwrap()), expected);
        kv.crash();
        kv.restart();
        assert_eq!(
            messages(&tables.events(1, 10).unwrap()),
            expected,
            "durable with the decision's sync"
        );
        assert_eq!(journal.stats().syncs, 1);
    }

    /// Review finding of stop 56: the syncer merged every queued append into one
    /// batch, so on etcd a busy group commit could exceed what one etcd transaction
    /// takes; etcd refused it and the leader stopped. Given a store that takes at most
    /// three operations a batch, when five quiet appends of one event and a decision of
    /// two ride on one sync, then every append is durable, in order, with one sync.
    #[tokio::test(start_paused = true)]
    async fn a_group_commit_beyond_the_stores_batch_limit_is_written_as_whole_appends() {
        let limit = lockstep_store::BatchLimit {
            ops: 3,
            bytes: 1 << 20,
        };
        let kv = MemKv::with_batch_limit(limit);
        let (journal, feed, tables) = journal(&kv);
        let votes: Vec<String> = (1..=5).map(|n| format!("vote {n}")).collect();
        for vote in &votes {
            journal.append_quietly(Batch::default(), vec![event(vote)]);
        }
        let decision = vec![event("decision"), event("checkpoint")];
        let seq = journal.append(Batch::default(), decision, Durable::Now);
        assert_eq!(seq.await.unwrap(), 6, "numbered after the held ones");
        let mut expected: Vec<(u64, String)> =
            votes.into_iter().zip(1..).map(|(v, n)| (n, v)).collect();
        expected.extend([(6, "decision".to_string()), (7, "checkpoint".to_string())]);
        assert_eq!(messages(&feed.read(1, 10).unwrap()), expected);
        kv.crash();
        kv.restart();
        assert_eq!(
            messages(&tables.events(1, 10).unwrap()),
            expected,
            "durable"
        );
        assert_eq!(journal.stats().syncs, 1, "still one sync");
    }

    /// A store that calls `before` with every batch before writing it: to note it, or
    /// to hold the write back.
    struct Hooked<K> {
        kv: K,
        before: Box<dyn Fn(&Batch) + Send + Sync>,
    }

    impl<K: lockstep_store::Kv> lockstep_store::Kv for Hooked<K> {
        fn get(&self, t: &'static str, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.kv.get(t, k)
        }

        fn scan(
            &self,
            t: &'static str,
            from: &[u8],
            to: Option<&[u8]>,
            order: lockstep_store::Order,
            limit: usize,
        ) -> Result<Vec<lockstep_store::Entry>, StoreError> {
            self.kv.scan(t, from, to, order, limit)
        }

        fn write(&self, batch: Batch, d: lockstep_store::Durability) -> Result<(), StoreError> {
            (self.before)(&batch);
            self.kv.write(batch, d)
        }

        fn sync(&self) -> Result<(), StoreError> {
            self.kv.sync()
        }

        fn batch_limit(&self) -> Option<lockstep_store::BatchLimit> {
            self.kv.batch_limit()
        }
    }

    /// Review finding of stop 59: the syncer held the journal's queue lock, and the
    /// group commit its state lock, across each store write; on etcd a write is a round
    /// trip (up to 30 s with retries against a slow member), and every append (made
    /// under the registry's lock) waited for it, so every RPC stalled. Given a write
    /// of the syncer stuck in the store, when another append is made and the counters
    /// read, then both return at once, and the stuck append completes once the store
    /// answers.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_append_does_not_wait_for_a_store_write_in_flight() {
        let gate = Arc::new(Mutex::new(()));
        let (entered, write_waits) = std::sync::mpsc::sync_channel(16);
        let held_back = gate.clone();
        let stalling = Hooked {
            kv: MemKv::new(),
            // Says a write is waiting, then waits at the gate (an etcd member that does
            // not answer).
            before: Box::new(move |_: &Batch| {
                let _ = entered.try_send(());
                drop(held_back.lock().unwrap());
            }),
        };
        let tables = Tables::new(Arc::new(stalling));
        let feed = Feed::new(tables.clone()).unwrap();
        let journal = Journal::start(
            tables,
            feed,
            Arc::new(|| 0),
            WriterMode::Thread,
            Default::default(),
        )
        .unwrap();
        let held = gate.lock().unwrap();
        let stuck = journal.append(Batch::default(), vec![event("stuck")], Durable::Now);
        write_waits.recv().unwrap();
        let (done, answered) = std::sync::mpsc::channel();
        let other = journal.clone();
        std::thread::spawn(move || {
            other.append_quietly(Batch::default(), vec![event("meanwhile")]);
            let _ = done.send(other.stats().appends);
        });
        let appends = answered.recv_timeout(Duration::from_secs(10));
        assert_eq!(
            appends,
            Ok(2),
            "an append waited for the store's write in flight"
        );
        drop(held);
        stuck.await.unwrap();
    }

    /// Review finding of stop 56: the early-sync limit only asks for a sync, so
    /// appends queued meanwhile went to RocksDB as one batch larger than its log's
    /// write buffer, which reaches the file in several `write()`s: a process killed
    /// between them leaves a torn record that `--wal-recovery strict` refuses to start
    /// on. Given 3 MiB of appends queued before the syncer runs, when they are written
    /// to RocksDB, then no batch is larger than half the write buffer, and the last
    /// append is there.
    #[tokio::test(start_paused = true)]
    async fn appends_queued_past_the_early_sync_limit_reach_rocksdb_in_untearable_batches() {
        let dir = tempfile::tempdir().unwrap();
        let kv = lockstep_store::RocksKv::open(dir.path(), crate::tables::ALL).unwrap();
        let written = Arc::new(Mutex::new(Vec::new()));
        let notes = written.clone();
        let noting = Hooked {
            kv,
            before: Box::new(move |batch: &Batch| notes.lock().unwrap().push(batch.bytes())),
        };
        let tables = Tables::new(Arc::new(noting));
        let feed = Feed::new(tables.clone()).unwrap();
        let clock = Arc::new(|| 0);
        let journal = Journal::start(
            tables.clone(),
            feed,
            clock,
            WriterMode::Task,
            Default::default(),
        )
        .unwrap();
        let text = "x".repeat(1024);
        let appends: Vec<_> = (0..3072)
            .map(|_| journal.append(Batch::default(), vec![event(&text)], Durable::Soon))
            .collect();
        for append in appends {
            append.await.unwrap();
        }
        let limit = (lockstep_store::rocks::WAL_WRITE_BUFFER / 2) as usize;
        let sizes = written.lock().unwrap().clone();
        assert!(sizes.iter().all(|b| *b <= limit), "{sizes:?}");
        assert_eq!(
            tables.events(3072, 10).unwrap().len(),
            1,
            "the last one is there"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_quiet_append_is_durable_and_published_within_its_linger() {
        let kv = MemKv::new();
        let (journal, feed, tables) = journal(&kv);
        let started = tokio::time::Instant::now();
        let mut latest = feed.latest();
        journal.append_quietly(Batch::default(), vec![event("acknowledged")]);
        tokio::time::timeout(Duration::from_secs(1), latest.changed())
            .await
            .expect("published within the linger, without anyone else's sync")
            .unwrap();
        assert_eq!(*latest.borrow(), 1);
        assert_eq!(started.elapsed(), QUIET_LINGER);
        kv.crash();
        kv.restart();
        assert_eq!(
            messages(&tables.events(1, 10).unwrap()),
            vec![(1, "acknowledged".to_string())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn under_load_steps_wait_out_the_commit_delay_and_share_one_sync() {
        let kv = MemKv::new();
        let delay = Duration::from_millis(20);
        let (journal, _feed, tables) = delayed_journal(&kv, CommitDelay { delay, siblings: 2 });
        assert_eq!(
            journal.under_load(Durable::Now, 2),
            Durable::Now,
            "not under load"
        );
        let decision = journal.under_load(Durable::Now, 3);
        assert_eq!(decision, Durable::Within(delay));
        assert_eq!(journal.under_load(Durable::Soon, 3), Durable::Within(delay));
        let started = tokio::time::Instant::now();
        journal.append_quietly(Batch::default(), vec![event("vote")]);
        let a = journal.append(Batch::default(), vec![event("decision a")], decision);
        let b = journal.append(Batch::default(), vec![event("decision b")], decision);
        let (a, b) = tokio::join!(a, b);
        assert_eq!((a.unwrap(), b.unwrap()), (2, 3));
        assert_eq!(
            started.elapsed(),
            delay,
            "held back, but no longer than the delay"
        );
        assert_eq!(
            journal.stats().syncs,
            1,
            "the vote did not force a sync of its own"
        );
        kv.crash();
        kv.restart();
        assert_eq!(tables.last_event_seq().unwrap(), 3, "all three durable");
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_queue_is_synced_at_once_so_no_batch_outgrows_the_write_buffer() {
        let kv = MemKv::new();
        let (journal, _feed, _tables) = journal(&kv);
        let mut batch = Batch::default();
        batch.put(crate::tables::EVENTS, b"x".to_vec(), vec![0; QUEUED_LIMIT]);
        let started = tokio::time::Instant::now();
        journal
            .append(batch, Vec::new(), Durable::Soon)
            .await
            .unwrap();
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "did not wait for the linger"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_appends_are_lost_in_a_crash_without_a_gap_in_the_log() {
        let kv = MemKv::new();
        let (journal, feed, tables) = journal(&kv);
        journal
            .append(Batch::default(), vec![event("created")], Durable::Now)
            .await
            .unwrap();
        journal.append_quietly(Batch::default(), vec![event("vote a")]);
        kv.crash();
        kv.restart();
        assert_eq!(
            messages(&feed.read(1, 10).unwrap()),
            vec![(1, "created".to_string())],
            "watchers never saw the held event"
        );
        assert_eq!(
            tables.last_event_seq().unwrap(),
            1,
            "numbering resumes at 2"
        );
    }
}
