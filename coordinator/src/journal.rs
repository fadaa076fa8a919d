//! The write-ahead log's front door: every change of coordinator state goes through
//! [`Journal::append`], which numbers its events and writes them with the records in one
//! atomic RocksDB batch.
//!
//! An append is written at once, on the caller's thread (store group commit: no hand-off
//! to another thread), and its future resolves once it is durable. [`Durable`] says how
//! soon: [`Durable::Now`] (the COMMIT decision) asks the syncer for an fsync at once;
//! [`Durable::Soon`] becomes durable with the next sync, asked for by someone else's
//! decision or by itself after [`LINGER`]. A sync makes every earlier write durable, so
//! order is all that matters, and concurrent transactions share fsyncs: group commit.
//!
//! [`Journal::append_quietly`] is for steps nobody waits for and whose loss in a crash
//! is harmless (votes, acknowledgements): they are numbered at once but held in memory
//! and written in front of the next write, or just before the next sync, which comes
//! within [`QUIET_LINGER`]. A release's three votes then cost one store write with its
//! decision instead of three writes of their own (and a hundred votes, one).
//!
//! A record is readable in the store before it is durable, so the coordinator never
//! reports from the store what it has not heard is durable: transactions in flight are
//! read from memory, published once durable; the feed stops at the newest durable event.
//!
//! Events reach watchers only once durable, so a watcher never sees an event that a
//! crash could take back. Sequence numbers are gap-free and in log order.
//!
//! A failed write is fatal (fail-stop, as PostgreSQL does on fsync failure): the journal
//! refuses every later append and reports the failure, and the binary exits so that
//! recovery starts from what is durable.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use lockstep::pb;
pub use lockstep_store::WriterMode;
use lockstep_store::{Batch, GroupCommit, Hooks, SyncerWriter, Ticket};

use crate::{error::CoordinatorError, feed::Feed, tables::Tables};

/// How long a [`Durable::Soon`] write waits for someone else's sync before the syncer
/// syncs it (tokio's timer ticks in milliseconds, so this is the shortest wait that
/// means what it says).
pub const LINGER: Duration = Duration::from_millis(1);

/// How long a quiet append ([`Journal::append_quietly`]) may wait for someone else's
/// write or sync: long enough that the next step of its transaction (which comes with a
/// sync of its own) carries it, short enough that watchers see its events at once to a
/// person.
pub const QUIET_LINGER: Duration = Duration::from_millis(5);

/// Quiet appends held back beyond this many store operations are written at once, so a
/// held batch stays small (one `write()` of the log; see `lockstep_store::rocks`).
const HELD_LIMIT: usize = 512;

/// How soon an append must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// Forces an fsync now: a decision that must be durable before anyone acts on it.
    Now,
    /// Rides on the next fsync, or gets one after [`LINGER`]: a step someone waits for.
    Soon,
}

impl Durable {
    fn linger(self) -> Duration {
        match self {
            Durable::Now => Duration::ZERO,
            Durable::Soon => LINGER,
        }
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
    numbering: Arc<Mutex<Numbering>>,
}

/// Sequence numbers and the events waiting for their write to be durable. Appends hold
/// this lock while they write, so sequence numbers follow the log order.
struct Numbering {
    next_seq: u64,
    /// Events written but not yet durable, with the ticket of their write, in log order.
    unpublished: VecDeque<(Ticket, Vec<pb::Event>)>,
    /// Quiet appends numbered but not yet written, with their events, in log order.
    held: Batch,
    held_events: Vec<pb::Event>,
    appends: u64,
}

impl Numbering {
    fn lock(numbering: &Mutex<Numbering>) -> MutexGuard<'_, Numbering> {
        // Every critical section completes its update before anything that can panic.
        numbering.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers `events`, puts them in `batch` and returns the first one's sequence
    /// number (or the last one written before, when there are none).
    fn number(&mut self, batch: &mut Batch, events: &mut [pb::Event], now: u64) -> u64 {
        let first = self.next_seq;
        for (i, event) in events.iter_mut().enumerate() {
            event.seq = first + i as u64;
            event.time = lockstep::wire::timestamp(now);
            Tables::put_event(batch, event);
        }
        self.next_seq += events.len() as u64;
        self.appends += 1;
        if events.is_empty() { first - 1 } else { first }
    }

    /// Writes the held quiet appends in front of `batch` (which follows them in the
    /// log), and queues all their events for publishing once durable.
    fn write(
        &mut self,
        log: impl FnOnce(Batch) -> Result<Ticket, lockstep_store::StoreError>,
        batch: Batch,
        events: Vec<pb::Event>,
    ) -> Result<Ticket, CoordinatorError> {
        let (batch, events) = if self.held.is_empty() {
            (batch, events)
        } else {
            let mut held = std::mem::take(&mut self.held);
            held.extend(batch);
            let mut held_events = std::mem::take(&mut self.held_events);
            held_events.extend(events);
            (held, held_events)
        };
        let ticket = log(batch)?;
        if !events.is_empty() {
            self.unpublished.push_back((ticket, events));
        }
        Ok(ticket)
    }
}

/// Counters for benchmarks: how well group commit works.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalStats {
    /// fsyncs of the log.
    pub syncs: u64,
    /// Appends written.
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
    ) -> Result<Self, CoordinatorError> {
        let numbering = Arc::new(Mutex::new(Numbering {
            next_seq: tables.last_event_seq()? + 1,
            unpublished: VecDeque::new(),
            held: Batch::default(),
            held_events: Vec::new(),
            appends: 0,
        }));
        // Just before each sync, the syncer writes the held quiet appends.
        let before_sync = {
            let numbering = numbering.clone();
            move |log: &SyncerWriter<'_>| {
                let mut n = Numbering::lock(&numbering);
                if !n.held.is_empty() {
                    // A failure is recorded by the log (fail-stop) and reported by
                    // `failed`; the held events are then never published.
                    let _ = n.write(|b| log.write(b, None), Batch::default(), Vec::new());
                }
            }
        };
        let publish = {
            let numbering = numbering.clone();
            move |synced: Ticket| {
                let mut durable = Vec::new();
                {
                    let mut n = Numbering::lock(&numbering);
                    while n.unpublished.front().is_some_and(|(t, _)| *t <= synced) {
                        durable.extend(
                            n.unpublished
                                .pop_front()
                                .map(|(_, e)| e)
                                .unwrap_or_default(),
                        );
                    }
                }
                // The syncer is the only caller, so events are published in log order.
                feed.publish(durable);
            }
        };
        let log = GroupCommit::start_with(
            tables.kv().clone(),
            mode,
            Hooks {
                before_sync: Some(Box::new(before_sync)),
                on_synced: Some(Box::new(publish)),
            },
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                log,
                clock,
                numbering,
            }),
        })
    }

    /// Writes `batch` and `events` (their `seq` and `time` are filled in) atomically, now.
    /// Order is fixed when this returns; the future resolves once the write is durable,
    /// with the sequence number of its first event (or of the last event written before,
    /// when `events` is empty). `durable` says how soon it must be.
    ///
    /// Dropping the future does not cancel the write.
    pub fn append(
        &self,
        mut batch: Batch,
        mut events: Vec<pb::Event>,
        durable: Durable,
    ) -> impl Future<Output = Result<u64, CoordinatorError>> + Send + use<> {
        let written = {
            let mut n = Numbering::lock(&self.inner.numbering);
            let seq = n.number(&mut batch, &mut events, (self.inner.clock)());
            let log = &self.inner.log;
            n.write(|b| log.write(b, Some(durable.linger())), batch, events)
                .map(|ticket| (ticket, seq))
        };
        let log = self.inner.log.clone();
        async move {
            let (ticket, seq) = written?;
            log.durable(ticket).await?;
            Ok(seq)
        }
    }

    /// Appends `batch` and `events` (numbered now) for a step nobody waits for and whose
    /// loss in a crash is harmless: held in memory and written in front of the next
    /// write, or just before the next sync, which comes within [`QUIET_LINGER`]. Its
    /// events reach watchers once that sync is done. A failure shows in
    /// [`Journal::failed`].
    pub fn append_quietly(&self, mut batch: Batch, mut events: Vec<pb::Event>) {
        let mut n = Numbering::lock(&self.inner.numbering);
        n.number(&mut batch, &mut events, (self.inner.clock)());
        let first_held = n.held.is_empty();
        n.held.extend(batch);
        n.held_events.extend(events);
        if n.held.ops.len() > HELD_LIMIT {
            let log = &self.inner.log;
            let _ = n.write(
                |b| log.write(b, Some(QUIET_LINGER)),
                Batch::default(),
                Vec::new(),
            );
        } else if first_held {
            self.inner.log.sync_within(QUIET_LINGER);
        }
    }

    /// Resolves with the error message once a write has failed (the process must stop).
    pub async fn failed(&self) -> String {
        self.inner.log.failed().await
    }

    /// Group-commit counters so far.
    pub fn stats(&self) -> JournalStats {
        JournalStats {
            syncs: self.inner.log.syncs(),
            appends: Numbering::lock(&self.inner.numbering).appends,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use lockstep_store::MemKv;

    use super::*;

    fn journal(kv: &MemKv) -> (Journal, Feed, Tables) {
        let tables = Tables::new(Arc::new(kv.clone()));
        let feed = Feed::new(tables.clone()).unwrap();
        let journal = Journal::start(
            tables.clone(),
            feed.clone(),
            Arc::new(|| 0),
            WriterMode::Task,
        )
        .unwrap();
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
