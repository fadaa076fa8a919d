//! The write-ahead log's front door: every change of coordinator state goes through
//! [`Journal::append`], which numbers its events and writes them with the records in one
//! atomic RocksDB batch.
//!
//! An append is written at once, on the caller's thread (store group commit: no hand-off
//! to another thread), and its future resolves once it is durable. [`Durable`] says how
//! soon: [`Durable::Now`] (the COMMIT decision) asks the syncer for an fsync at once;
//! [`Durable::Soon`] becomes durable with the next sync, asked for by someone else's
//! decision or by itself after [`LINGER`]; [`Durable::Whenever`] (votes,
//! acknowledgements: steps whose loss a crash makes harmless) waits longer still,
//! [`QUIET_LINGER`], so that it never puts a sync in the way of a decision. A sync makes
//! every earlier write durable, so order is all that matters, and concurrent
//! transactions share fsyncs: group commit.
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
use lockstep_store::{Batch, GroupCommit, Ticket};

use crate::{error::CoordinatorError, feed::Feed, tables::Tables};

/// How long a [`Durable::Soon`] write waits for someone else's sync before the syncer
/// syncs it (tokio's timer ticks in milliseconds, so this is the shortest wait that
/// means what it says).
pub const LINGER: Duration = Duration::from_millis(1);

/// How long a [`Durable::Whenever`] write waits for someone else's sync: long enough
/// that the next step of its transaction (which comes with a sync of its own) carries
/// it, short enough that watchers see its events at once to a person.
pub const QUIET_LINGER: Duration = Duration::from_millis(5);

/// How soon an append must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// Forces an fsync now: a decision that must be durable before anyone acts on it.
    Now,
    /// Rides on the next fsync, or gets one after [`LINGER`]: a step someone waits for.
    Soon,
    /// Rides on the next fsync, or gets one after [`QUIET_LINGER`]: a step nobody waits
    /// for, whose loss in a crash is harmless.
    Whenever,
}

impl Durable {
    fn linger(self) -> Duration {
        match self {
            Durable::Now => Duration::ZERO,
            Durable::Soon => LINGER,
            Durable::Whenever => QUIET_LINGER,
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
    appends: u64,
}

impl Numbering {
    fn lock(numbering: &Mutex<Numbering>) -> MutexGuard<'_, Numbering> {
        // Every critical section completes its update before anything that can panic.
        numbering.lock().unwrap_or_else(|p| p.into_inner())
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
            appends: 0,
        }));
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
        let log = GroupCommit::start_with(tables.kv().clone(), mode, Some(Box::new(publish)))?;
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
    ) -> impl Future<Output = Result<u64, CoordinatorError>> + Send + 'static {
        let written = {
            let mut n = Numbering::lock(&self.inner.numbering);
            let now = (self.inner.clock)();
            let first = n.next_seq;
            for (i, event) in events.iter_mut().enumerate() {
                event.seq = first + i as u64;
                event.time = lockstep::wire::timestamp(now);
                Tables::put_event(&mut batch, event);
            }
            let seq = if events.is_empty() { first - 1 } else { first };
            self.inner
                .log
                .write(batch, Some(durable.linger()))
                .map(|ticket| {
                    n.next_seq += events.len() as u64;
                    n.appends += 1;
                    if !events.is_empty() {
                        n.unpublished.push_back((ticket, events));
                    }
                    (ticket, seq)
                })
        };
        let log = self.inner.log.clone();
        async move {
            let (ticket, seq) = written?;
            log.durable(ticket).await?;
            Ok(seq)
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
