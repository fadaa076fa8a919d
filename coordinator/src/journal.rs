//! The write-ahead log's front door: every durable change of coordinator state goes
//! through [`Journal::append`], which numbers its events, writes them with the records
//! in one atomic, fsynced RocksDB batch, and only then publishes the events to watchers.
//!
//! Group commit: appends that arrive while a batch is being synced are merged into the
//! next batch, so N concurrent transactions share one fsync. Because batches are written
//! in the order they were appended, a change appended after another is never durable
//! before it, and event sequence numbers are gap-free and in log order.
//!
//! A failed write is fatal (fail-stop, as PostgreSQL does on fsync failure): the
//! journal refuses every later append and reports the failure, and the binary exits so
//! that recovery starts from what is durable.

use std::sync::{Arc, Mutex};

use lockstep::pb;
use lockstep_store::{Batch, Durability};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{error::CoordinatorError, feed::Feed, tables::Tables};

/// Most appends merged into one batch.
const MAX_GROUP: usize = 1024;

/// Largest batch, in bytes of keys and values: well below RocksDB's 1 MiB write buffer,
/// so a batch reaches the log file in one `write()` and a process crash cannot tear it.
const MAX_GROUP_BYTES: usize = 256 * 1024;

/// A clock in milliseconds since the epoch; simulation passes a deterministic one.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

struct Append {
    batch: Batch,
    events: Vec<pb::Event>,
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
    /// Synced batches written.
    pub syncs: u64,
    /// Appends written (each would have been its own fsync without grouping).
    pub appends: u64,
}

/// How the writer runs: on its own OS thread (production: fsync blocks only it), or as a
/// task on the current tokio runtime (deterministic simulation, where every host runs
/// on one thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterMode {
    /// A dedicated thread.
    Thread,
    /// A tokio task.
    Task,
}

struct Writer {
    tables: Tables,
    feed: Feed,
    clock: Clock,
    next_seq: u64,
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
        let (sender, mut receiver) = mpsc::unbounded_channel::<Append>();
        let (failed, failure) = watch::channel(None);
        let stats = Arc::new(Mutex::new(JournalStats::default()));
        let mut writer = Writer {
            tables,
            feed,
            clock,
            next_seq,
            failed,
            stats: stats.clone(),
        };
        match mode {
            WriterMode::Thread => {
                std::thread::Builder::new()
                    .name("lockstep-journal".into())
                    .spawn(move || {
                        while let Some(first) = receiver.blocking_recv() {
                            writer.write_group(first, &mut receiver);
                        }
                    })
                    .map_err(|e| {
                        CoordinatorError::Store(lockstep_store::StoreError::Corrupt(format!(
                            "cannot start journal thread: {e}"
                        )))
                    })?;
            }
            WriterMode::Task => {
                tokio::spawn(async move {
                    while let Some(first) = receiver.recv().await {
                        writer.write_group(first, &mut receiver);
                    }
                });
            }
        }
        Ok(Self {
            sender,
            failure,
            stats,
        })
    }

    /// Queues `batch` and `events` (their `seq` and `time` are filled in) to be written
    /// atomically and synced. Order is fixed when this returns; the future resolves once
    /// the write is durable, with the sequence number of its first event (or of the last
    /// event written before, when `events` is empty).
    ///
    /// Dropping the future does not cancel the write.
    pub fn append(
        &self,
        batch: Batch,
        events: Vec<pb::Event>,
    ) -> impl Future<Output = Result<u64, CoordinatorError>> + Send + 'static {
        let (done, result) = oneshot::channel();
        let queued = self
            .sender
            .send(Append {
                batch,
                events,
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
        let mut batch = Batch::default();
        let mut published = Vec::new();
        let mut first_seqs = Vec::with_capacity(group.len());
        for append in &mut group {
            let first = self.next_seq;
            for event in &mut append.events {
                event.seq = self.next_seq;
                event.time = lockstep::wire::timestamp(now);
                self.next_seq += 1;
                Tables::put_event(&mut batch, event);
            }
            batch.extend(std::mem::take(&mut append.batch));
            first_seqs.push(if append.events.is_empty() {
                self.next_seq - 1
            } else {
                first
            });
            published.extend(std::mem::take(&mut append.events));
        }
        // Durability point: one fsync covers the whole group.
        match self.tables.kv().write(batch, Durability::Sync) {
            Ok(()) => {
                {
                    let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                    stats.syncs += 1;
                    stats.appends += group.len() as u64;
                }
                self.feed.publish(published);
                for (append, seq) in group.into_iter().zip(first_seqs) {
                    let _ = append.done.send(Ok(seq));
                }
            }
            Err(e) => {
                let message = format!("write-ahead log write failed: {e}");
                tracing::error!("{message}; refusing further writes");
                let _ = self.failed.send(Some(message.clone()));
                for append in group {
                    let _ = append.done.send(Err(message.clone()));
                }
            }
        }
    }
}
