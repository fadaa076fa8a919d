//! The write-ahead log's front door: every change of coordinator state goes through
//! [`Journal::append`], which numbers its events and writes them with the records in one
//! atomic RocksDB batch.
//!
//! Every append's future resolves once the append is durable. [`Durable`] says how soon:
//! [`Durable::Now`] (the COMMIT decision) forces an fsync at once; [`Durable::Soon`] is
//! written without one and becomes durable with the next sync, forced by someone else's
//! decision or by the writer itself after [`LINGER`]; [`Durable::Whenever`] (votes,
//! acknowledgements: steps whose loss a crash makes harmless) waits longer still,
//! [`QUIET_LINGER`], so that it never puts a sync in the way of a decision. A sync makes
//! every earlier write durable, so order is all that matters, and concurrent
//! transactions share fsyncs: group commit.
//!
//! Events reach watchers only once durable, so a watcher never sees an event that a
//! crash could take back. Sequence numbers are gap-free and in log order.
//!
//! A failed write is fatal (fail-stop, as PostgreSQL does on fsync failure): the journal
//! refuses every later append and reports the failure, and the binary exits so that
//! recovery starts from what is durable.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lockstep::pb;
pub use lockstep_store::WriterMode;
use lockstep_store::{Batch, Durability, spawn_writer};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

use crate::{error::CoordinatorError, feed::Feed, tables::Tables};

/// Most appends merged into one batch.
const MAX_GROUP: usize = 1024;

/// Largest batch, in bytes of keys and values: well below RocksDB's 1 MiB write buffer,
/// so a batch reaches the log file in one `write()` and a process crash cannot tear it.
const MAX_GROUP_BYTES: usize = 256 * 1024;

/// How long a [`Durable::Soon`] write waits for someone else's sync before the writer
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

struct Append {
    batch: Batch,
    events: Vec<pb::Event>,
    durable: Durable,
    done: oneshot::Sender<Result<u64, String>>,
}

impl Append {
    /// Approximate bytes this append adds to a batch.
    fn size(&self) -> usize {
        let ops: usize = self
            .batch
            .ops
            .iter()
            .map(|op| match op {
                lockstep_store::Op::Put { key, value, .. } => key.len() + value.len(),
                lockstep_store::Op::Delete { key, .. } => key.len(),
            })
            .sum();
        ops + self
            .events
            .iter()
            .map(|e| 64 + e.message.len())
            .sum::<usize>()
    }
}

/// Handle to the single writer. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    sender: mpsc::UnboundedSender<Append>,
    failure: watch::Receiver<Option<String>>,
    stats: Arc<Mutex<JournalStats>>,
}

/// Counters for benchmarks: how well group commit works.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalStats {
    /// fsyncs of the log.
    pub syncs: u64,
    /// Appends written.
    pub appends: u64,
}

struct Writer {
    tables: Tables,
    feed: Feed,
    clock: Clock,
    next_seq: u64,
    /// Events written but not yet synced, in log order.
    unpublished: Vec<pb::Event>,
    /// Appends written but not yet synced, waiting to hear they are durable.
    unsynced: Vec<(oneshot::Sender<Result<u64, String>>, u64)>,
    /// When the writer syncs what is written but not synced, if nobody else does first:
    /// the earliest of their deadlines, fixed when each was written, so a steady stream
    /// of appends cannot put the sync off for ever.
    sync_by: Option<Instant>,
    failed: watch::Sender<Option<String>>,
    stats: Arc<Mutex<JournalStats>>,
}

impl Journal {
    /// Starts the writer. `tables` must be the store the feed reads from.
    pub fn start(
        tables: Tables,
        feed: Feed,
        clock: Clock,
        mode: WriterMode,
    ) -> Result<Self, CoordinatorError> {
        let next_seq = tables.last_event_seq()? + 1;
        let (sender, receiver) = mpsc::unbounded_channel::<Append>();
        let (failed, failure) = watch::channel(None);
        let stats = Arc::new(Mutex::new(JournalStats::default()));
        let writer = Writer {
            tables,
            feed,
            clock,
            next_seq,
            unpublished: Vec::new(),
            unsynced: Vec::new(),
            sync_by: None,
            failed,
            stats: stats.clone(),
        };
        spawn_writer("lockstep-journal", mode, writer.run(receiver))?;
        Ok(Self {
            sender,
            failure,
            stats,
        })
    }

    /// Queues `batch` and `events` (their `seq` and `time` are filled in) to be written
    /// atomically. Order is fixed when this returns; the future resolves once the write
    /// is durable, with the sequence number of its first event (or of the last event
    /// written before, when `events` is empty). `durability` says whether it forces an
    /// fsync now or rides on a later one.
    ///
    /// Dropping the future does not cancel the write.
    pub fn append(
        &self,
        batch: Batch,
        events: Vec<pb::Event>,
        durable: Durable,
    ) -> impl Future<Output = Result<u64, CoordinatorError>> + Send + 'static {
        let (done, result) = oneshot::channel();
        let queued = self
            .sender
            .send(Append {
                batch,
                events,
                durable,
                done,
            })
            .is_ok();
        async move {
            if !queued {
                return Err(CoordinatorError::ShuttingDown);
            }
            match result.await {
                Ok(Ok(seq)) => Ok(seq),
                Ok(Err(e)) => Err(CoordinatorError::Store(
                    lockstep_store::StoreError::Corrupt(e),
                )),
                Err(_) => Err(CoordinatorError::ShuttingDown),
            }
        }
    }

    /// Resolves with the error message once a write has failed (the process must stop).
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.clone();
        loop {
            if let Some(e) = failure.borrow_and_update().clone() {
                return e;
            }
            if failure.changed().await.is_err() {
                return "journal writer stopped".into();
            }
        }
    }

    /// Group-commit counters so far.
    pub fn stats(&self) -> JournalStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Append>) {
        loop {
            let next = match self.sync_by {
                None => receiver.recv().await,
                // Wait for another append to ride along, until the earliest deadline.
                Some(deadline) => match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.sync_lingering();
                        continue;
                    }
                },
            };
            let Some(first) = next else { return };
            self.write_group(first, &mut receiver);
        }
    }

    fn write_group(&mut self, first: Append, receiver: &mut mpsc::UnboundedReceiver<Append>) {
        let mut bytes = first.size();
        let mut group = vec![first];
        while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            match receiver.try_recv() {
                Ok(next) => {
                    bytes += next.size();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        if let Some(e) = self.failed.borrow().clone() {
            for append in group {
                let _ = append.done.send(Err(e.clone()));
            }
            return;
        }
        let now = (self.clock)();
        let sync = group.iter().any(|a| a.durable == Durable::Now);
        let sync_by = group
            .iter()
            .map(|a| a.durable.linger())
            .min()
            .map(|linger| Instant::now() + linger);
        let mut batch = Batch::default();
        let mut events = Vec::new();
        let mut replies = Vec::with_capacity(group.len());
        for mut append in group {
            let first = self.next_seq;
            for event in &mut append.events {
                event.seq = self.next_seq;
                event.time = lockstep::wire::timestamp(now);
                self.next_seq += 1;
                Tables::put_event(&mut batch, event);
            }
            let seq = if append.events.is_empty() {
                self.next_seq - 1
            } else {
                first
            };
            batch.extend(append.batch);
            events.extend(append.events);
            replies.push((append.done, seq));
        }
        // The durability point when `sync`: one fsync covers the whole group and every
        // buffered group before it.
        let written = self.tables.kv().write(
            batch,
            if sync {
                Durability::Sync
            } else {
                Durability::Buffered
            },
        );
        match written {
            Ok(()) => {
                self.count(sync, replies.len());
                self.unpublished.extend(events);
                self.unsynced.extend(replies);
                self.sync_by = match (self.sync_by, sync_by) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if sync {
                    self.synced();
                }
            }
            Err(e) => {
                let message = self.fail(format!("write-ahead log write failed: {e}"));
                for (done, _) in replies {
                    let _ = done.send(Err(message.clone()));
                }
            }
        }
    }

    /// Nobody synced the buffered writes within [`LINGER`]: sync them now.
    fn sync_lingering(&mut self) {
        match self.tables.kv().sync() {
            Ok(()) => {
                self.count(true, 0);
                self.synced();
            }
            Err(e) => {
                let message = self.fail(format!("write-ahead log sync failed: {e}"));
                // Never published: a crash may have taken these events back.
                self.unpublished.clear();
                self.sync_by = None;
                for (done, _) in self.unsynced.drain(..) {
                    let _ = done.send(Err(message.clone()));
                }
            }
        }
    }

    /// Everything written so far is durable: publish its events, tell its appenders.
    fn synced(&mut self) {
        self.sync_by = None;
        self.feed.publish(std::mem::take(&mut self.unpublished));
        for (done, seq) in self.unsynced.drain(..) {
            let _ = done.send(Ok(seq));
        }
    }

    fn count(&self, synced: bool, appends: usize) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.syncs += u64::from(synced);
        stats.appends += appends as u64;
    }

    fn fail(&self, message: String) -> String {
        tracing::error!("{message}; refusing further writes");
        let _ = self.failed.send(Some(message.clone()));
        message
    }
}
