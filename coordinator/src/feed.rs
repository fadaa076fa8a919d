//! The event feed: what watchers read. It holds the most recent durable events in memory
//! and falls back to the `events` table for older ones, and it wakes watchers when new
//! events become durable. Events reach it only after their batch is synced, and reads of
//! the table stop at the newest durable event, so a watcher never sees an event that a
//! crash could take back.
//!
//! A watcher of one transaction subscribes to that transaction alone
//! ([`Feed::latest_of`]), so a publish wakes only the watchers whose transactions it
//! carries: with a thousand `--wait`ing clients, each event wakes one of them, not all.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
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
    /// Per watched transaction: the newest published sequence number among its events,
    /// and how many subscriptions share the entry.
    watched: Mutex<HashMap<String, (watch::Sender<u64>, usize)>>,
}

impl Inner {
    fn watched(&self) -> MutexGuard<'_, HashMap<String, (watch::Sender<u64>, usize)>> {
        // Every critical section completes its update before anything that can panic.
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A subscription to one transaction's events; unsubscribes when dropped.
pub struct TxSubscription {
    inner: Arc<Inner>,
    tx: String,
    /// Changes when an event of the transaction is published (to its sequence number).
    pub latest: watch::Receiver<u64>,
}

impl Drop for TxSubscription {
    fn drop(&mut self) {
        let mut watched = self.inner.watched();
        if let Some((_, count)) = watched.get_mut(&self.tx) {
            *count -= 1;
            if *count == 0 {
                watched.remove(&self.tx);
            }
        }
    }
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
                watched: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Makes durable events visible (called by the journal's syncer, in log order).
    pub fn publish(&self, events: Vec<pb::Event>) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        let published = events.len();
        for event in events {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(event);
        }
        // After the events are in the window: a watcher subscribes before it reads the
        // window, so it either finds them there or hears of them here. (Lock order:
        // `recent`, then `watched`.)
        let watched = self.inner.watched();
        if !watched.is_empty() {
            for event in recent.iter().rev().take(published) {
                if let Some((sender, _)) = watched.get(&event.transaction_id) {
                    sender.send_if_modified(|newest| {
                        let newer = event.seq > *newest;
                        *newest = (*newest).max(event.seq);
                        newer
                    });
                }
            }
        }
        drop(watched);
        drop(recent);
        self.inner.latest.send_replace(last);
    }

    /// Subscribes to the events of transaction `tx`: `latest` changes whenever one of
    /// them is published, and no other publish wakes it.
    pub fn latest_of(&self, tx: &str) -> TxSubscription {
        let mut watched = self.inner.watched();
        let (sender, count) = watched
            .entry(tx.to_string())
            .or_insert_with(|| (watch::channel(0).0, 0));
        *count += 1;
        let latest = sender.subscribe();
        drop(watched);
        TxSubscription {
            inner: self.inner.clone(),
            tx: tx.to_string(),
            latest,
        }
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

    #[test]
    fn a_transaction_watcher_wakes_only_for_its_own_events() {
        let kv = MemKv::new();
        let feed = Feed::new(Tables::new(Arc::new(kv.clone()))).unwrap();
        let event = |seq, tx: &str| pb::Event {
            seq,
            transaction_id: tx.into(),
            ..Default::default()
        };
        let mut a = feed.latest_of("a");
        let also_a = feed.latest_of("a");
        feed.publish(vec![event(1, "b"), event(2, "b")]);
        assert!(!a.latest.has_changed().unwrap(), "b's events do not wake a");
        feed.publish(vec![event(3, "a"), event(4, "b")]);
        assert!(a.latest.has_changed().unwrap());
        assert_eq!(*a.latest.borrow_and_update(), 3);
        drop(also_a);
        feed.publish(vec![event(5, "a")]);
        assert_eq!(
            *a.latest.borrow_and_update(),
            5,
            "still subscribed after another watcher of a left"
        );
        drop(a);
        assert!(
            feed.inner.watched().is_empty(),
            "the last watcher unsubscribes"
        );
    }
}
