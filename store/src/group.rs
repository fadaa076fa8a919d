//! Group commit for callers that write small batches often and need some of them
//! synced: one writer (a thread, or a task in simulation) drains every batch queued
//! while it was busy into one atomic write with at most one fsync, so concurrent
//! writers share fsyncs and no async worker ever blocks on a disk.
//!
//! Order is kept: batches are written in the order [`GroupCommit::write`] was called.
//! A group is synced when any of its batches asks for [`Durability::Sync`].

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{Batch, Durability, Kv, StoreError};

/// How a writer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterMode {
    /// A dedicated OS thread (production: an fsync blocks only it).
    Thread,
    /// A task on the current tokio runtime (deterministic simulation, where every host
    /// runs on one thread).
    Task,
}

/// Runs a writer loop: on a dedicated thread with a current-thread runtime of its own
/// (so its blocking writes and fsyncs stall nothing else), or as a task of the current
/// runtime in simulation.
pub fn spawn_writer(
    name: &str,
    mode: WriterMode,
    writer: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StoreError> {
    match mode {
        WriterMode::Thread => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| {
                    StoreError::Corrupt(format!("cannot start the {name} runtime: {e}"))
                })?;
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || runtime.block_on(writer))
                .map_err(|e| StoreError::Corrupt(format!("cannot start the {name} thread: {e}")))?;
        }
        WriterMode::Task => {
            tokio::spawn(writer);
        }
    }
    Ok(())
}

struct Pending {
    batch: Batch,
    durability: Durability,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to a group-commit writer. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    sender: mpsc::UnboundedSender<Pending>,
}

/// Most batches merged into one write.
const MAX_GROUP: usize = 512;

impl GroupCommit {
    /// Starts the writer over `kv`. In [`WriterMode::Task`] this must run inside a tokio
    /// runtime.
    pub fn start(kv: Arc<dyn Kv>, mode: WriterMode) -> Result<Self, StoreError> {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Pending>();
        spawn_writer("lockstep-group-commit", mode, async move {
            while let Some(first) = receiver.recv().await {
                write_group(kv.as_ref(), first, &mut receiver);
            }
        })?;
        Ok(Self { sender })
    }

    /// Queues `batch` behind every batch queued before it (the order is fixed when this
    /// returns) and resolves once it is written, and synced for [`Durability::Sync`].
    /// Dropping the future does not cancel the write.
    pub fn write(
        &self,
        batch: Batch,
        durability: Durability,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (done, result) = oneshot::channel();
        let queued = self
            .sender
            .send(Pending {
                batch,
                durability,
                done,
            })
            .is_ok();
        async move {
            if !queued {
                return Err(StoreError::Corrupt("the writer stopped".into()));
            }
            match result.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(StoreError::Corrupt(e)),
                Err(_) => Err(StoreError::Corrupt("the writer stopped".into())),
            }
        }
    }
}

fn write_group(kv: &dyn Kv, first: Pending, receiver: &mut mpsc::UnboundedReceiver<Pending>) {
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match receiver.try_recv() {
            Ok(next) => group.push(next),
            Err(_) => break,
        }
    }
    let sync = group.iter().any(|p| p.durability == Durability::Sync);
    let mut batch = Batch::default();
    let mut waiting = Vec::with_capacity(group.len());
    for p in group {
        batch.extend(p.batch);
        waiting.push(p.done);
    }
    let result = kv
        .write(
            batch,
            if sync {
                Durability::Sync
            } else {
                Durability::Buffered
            },
        )
        .map_err(|e| e.to_string());
    for done in waiting {
        let _ = done.send(result.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemKv;

    #[tokio::test]
    async fn concurrent_writes_land_in_order_and_survive_a_crash_when_synced() {
        let kv = MemKv::new();
        let writer = GroupCommit::start(Arc::new(kv.clone()), WriterMode::Task).unwrap();
        let writes: Vec<_> = (0..20u8)
            .map(|i| {
                let mut b = Batch::default();
                b.put("t", b"k".to_vec(), vec![i]);
                writer.write(
                    b,
                    if i == 19 {
                        Durability::Sync
                    } else {
                        Durability::Buffered
                    },
                )
            })
            .collect();
        for w in futures_join(writes).await {
            w.unwrap();
        }
        kv.crash();
        kv.restart();
        assert_eq!(
            kv.get("t", b"k").unwrap(),
            Some(vec![19]),
            "the last write wins and was synced"
        );
    }

    async fn futures_join<F: Future>(fs: Vec<F>) -> Vec<F::Output> {
        let mut out = Vec::new();
        for f in fs {
            out.push(f.await);
        }
        out
    }
}
