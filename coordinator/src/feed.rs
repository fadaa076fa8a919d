//! The event feed: what watchers read. It holds the most recent durable events in memory
//! and falls back to the `events` table for older ones, and it wakes watchers when new
//! events become durable. Events reach it only after their batch is synced, and reads of
//! the table stop at the newest durable event, so a watcher never sees an event that a
//! crash could take back.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use lockstep::pb;
use lockstep_store::StoreError;
use tokio::sync::watch;

use crate::tables::Tables;

/// Events kept in memory for live watchers.
const RECENT: usize = 8192;

/// Shared handle to the feed.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

struct Inner {
    tables: Tables,
    recent: Mutex<VecDeque<pb::Event>>,
    latest: watch::Sender<u64>,
}

impl Feed {
    /// A feed over the events in `tables`, whose newest durable event is `latest`.
    pub fn new(tables: Tables) -> Result<Self, StoreError> {
        let latest = tables.last_event_seq()?;
        Ok(Self {
            inner: Arc::new(Inner {
                tables,
                recent: Mutex::new(VecDeque::with_capacity(RECENT)),
                latest: watch::channel(latest).0,
            }),
        })
    }

    /// Makes durable events visible (called by the journal's syncer, in log order).
    pub fn publish(&self, events: Vec<pb::Event>) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        {
            let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
            for event in events {
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back(event);
            }
        }
        self.inner.latest.send_replace(last);
    }

    /// Up to `limit` durable events with `seq >= from`, in order.
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<pb::Event>, StoreError> {
        Ok(self.read_matching(from, limit, |_| true)?.0)
    }

    /// Durable events with `seq >= from` that `keep` accepts, looking at no more than
    /// `limit` events; returns them with the sequence number to continue from. Events
    /// not kept are skipped without being copied, so many watchers of single
    /// transactions stay cheap.
    pub fn read_matching(
        &self,
        from: u64,
        limit: usize,
        keep: impl Fn(&pb::Event) -> bool,
    ) -> Result<(Vec<pb::Event>, u64), StoreError> {
        {
            let recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(first) = recent.front().map(|e| e.seq)
                && from >= first
            {
                let window = recent.iter().skip((from - first) as usize).take(limit);
                let mut next = from;
                let mut out = Vec::new();
                for e in window {
                    next = e.seq + 1;
                    if keep(e) {
                        out.push(e.clone());
                    }
                }
                return Ok((out, next));
            }
        }
        // The table also holds events written but not yet durable: stop at the newest
        // durable one.
        let durable = *self.inner.latest.borrow();
        let mut events = self.inner.tables.events(from, limit)?;
        events.retain(|e| e.seq <= durable);
        let next = events.last().map(|e| e.seq + 1).unwrap_or(from);
        Ok((events.into_iter().filter(|e| keep(e)).collect(), next))
    }

    /// The newest durable sequence number, updated as events are published.
    pub fn latest(&self) -> watch::Receiver<u64> {
        self.inner.latest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use lockstep_store::{Batch, Durability, Kv, MemKv};

    use super::*;

    fn write_event(kv: &MemKv, seq: u64) -> pb::Event {
        let event = pb::Event {
            seq,
            ..Default::default()
        };
        let mut batch = Batch::default();
        Tables::put_event(&mut batch, &event);
        kv.write(batch, Durability::Buffered).unwrap();
        event
    }

    #[test]
    fn a_reader_never_sees_an_event_written_but_not_yet_durable() {
        let kv = MemKv::new();
        for seq in 1..=3 {
            write_event(&kv, seq);
        }
        // As after a restart: the table holds events, the in-memory window is empty.
        let feed = Feed::new(Tables::new(Arc::new(kv.clone()))).unwrap();
        let fourth = write_event(&kv, 4);
        let seqs = |f: &Feed| {
            f.read(1, 100)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&feed), vec![1, 2, 3], "event 4 is not durable yet");
        feed.publish(vec![fourth]);
        assert_eq!(
            feed.read(4, 100).unwrap().len(),
            1,
            "durable once published"
        );
    }
}
