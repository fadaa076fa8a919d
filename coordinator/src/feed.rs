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
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::{Stream, StreamExt};
use lockstep::{names::TxId, pb};
use lockstep_store::StoreError;
use tokio::sync::watch;

use crate::tables::Tables;

/// Events kept in memory for live watchers.
const RECENT: usize = 8192;

/// How long a follower of the whole log (a console tab, `WatchEvents` without a
/// transaction) lets events gather after the one that woke it: a hundred followers
/// each woken at every publish cost the coordinator more than the releases they
/// watch (`lockstep-bench --only watchers`), and 10 ms is less than one frame of a
/// 60 Hz screen. A watcher of one transaction (a waiting CreateRelease, `--wait`) is
/// never held, and one catching up on history is not held while it has events to read.
const FOLLOWER_BATCH: std::time::Duration = std::time::Duration::from_millis(10);

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
    /// Watchers running now (for the metrics).
    watchers: std::sync::atomic::AtomicUsize,
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
                watchers: std::sync::atomic::AtomicUsize::new(0),
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

    /// Tells the watchers of transaction `tx` that it has ended (it left the active
    /// set), so that a watcher waiting past its terminal event stops: its terminal
    /// event is published before the transaction leaves, so a watcher that began
    /// after that event saw it unfinished, and no event of it will wake it again.
    pub fn ended(&self, tx: &str) {
        if let Some((sender, _)) = self.inner.watched().get(tx) {
            sender.send_modify(|_| {});
        }
    }

    /// How many watchers are running.
    pub fn watchers(&self) -> usize {
        self.inner
            .watchers
            .load(std::sync::atomic::Ordering::Relaxed)
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

/// What a watcher wants to see.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    /// Only this transaction's events.
    pub transaction: Option<TxId>,
    /// End the stream after the transaction's terminal event.
    pub until_terminal: bool,
    /// Only terminal events.
    pub only_terminal: bool,
}

impl WatchFilter {
    fn keeps(&self, e: &pb::Event) -> bool {
        let ours = self.transaction.as_ref();
        ours.is_none_or(|id| e.transaction_id == id.as_str())
            && (!self.only_terminal || is_terminal(e))
    }
}

/// Events are terminal for a transaction when it reached COMMITTED or ABORTED.
pub fn is_terminal(e: &pb::Event) -> bool {
    e.kind == pb::EventKind::TransactionCommitted as i32
        || e.kind == pb::EventKind::TransactionAborted as i32
}

/// A stream of events for one watcher. It is read by the task that serves the call
/// (no task of its own): a publish wakes that task alone, which reads the feed and
/// encodes in one go, and dropping the stream is the end of the watch.
pub type Watch = Pin<Box<dyn Stream<Item = Result<pb::Event, StoreError>> + Send>>;

/// Whether a transaction has not ended yet (asked by watchers on each wake-up).
pub type Unfinished = Box<dyn Fn(&TxId) -> bool + Send + Sync>;

impl Feed {
    /// Durable events with `seq >= from` that `filter` keeps, in order, then new ones as
    /// they become durable. A watcher of one transaction subscribes to it before its
    /// first read, so nothing published in between is missed, and wakes only for its
    /// events. The stream ends when the client goes away, or after the terminal event
    /// when `until_terminal` (at once when the transaction ended before `from`:
    /// `unfinished` says whether it still runs).
    pub fn watch(&self, filter: WatchFilter, from: u64, unfinished: Unfinished) -> Watch {
        let watcher = Watcher {
            feed: self.clone(),
            subscription: filter
                .transaction
                .as_ref()
                .map(|id| self.latest_of(id.as_str())),
            everything: self.latest(),
            filter,
            next: from.max(1),
            unfinished,
            _counted: Counted::new(self.inner.clone()),
        };
        let batches = futures::stream::unfold(Some(watcher), Watcher::step);
        Box::pin(batches.flat_map(futures::stream::iter))
    }
}

/// A watcher counted while it runs.
struct Counted(Arc<Inner>);

impl Counted {
    fn new(inner: Arc<Inner>) -> Self {
        inner
            .watchers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(inner)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0
            .watchers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Events handed out at once, and whether the watch goes on after them.
type Handout = (Vec<Result<pb::Event, StoreError>>, bool);

/// One watcher's state between reads of its stream.
struct Watcher {
    feed: Feed,
    filter: WatchFilter,
    next: u64,
    subscription: Option<TxSubscription>,
    everything: watch::Receiver<u64>,
    unfinished: Unfinished,
    _counted: Counted,
}

impl Watcher {
    /// One step of the stream: the next events, and the watcher to go on with (`None`
    /// after the last of them); `None` at once when the watch has ended.
    async fn step(
        watcher: Option<Self>,
    ) -> Option<(Vec<Result<pb::Event, StoreError>>, Option<Self>)> {
        let mut watcher = watcher?;
        let (events, more) = watcher.next_batch().await;
        if events.is_empty() {
            return None;
        }
        Some((events, more.then_some(watcher)))
    }

    /// Reads until there is something to hand out (waiting for publishes when caught
    /// up); an empty batch means the watch has ended.
    async fn next_batch(&mut self) -> Handout {
        loop {
            // Checked before the read: a terminal record means its events are all
            // published, so a read after it that finds nothing more means there is
            // nothing more. (It existed when the watch began, so not unfinished means
            // ended.)
            let ended = match (&self.filter.transaction, self.filter.until_terminal) {
                (Some(id), true) => !(self.unfinished)(id),
                _ => false,
            };
            let filter = &self.filter;
            let (events, scanned_to) =
                match self.feed.read_matching(self.next, 512, |e| filter.keeps(e)) {
                    Ok(read) => read,
                    Err(e) => return (vec![Err(e)], false),
                };
            if scanned_to == self.next {
                if ended || !self.wait_for_more().await {
                    return (Vec::new(), false);
                }
                continue;
            }
            self.next = scanned_to;
            if !events.is_empty() {
                return self.up_to_the_end(events);
            }
        }
    }

    /// `events`, cut after the terminal one when the watch ends there.
    fn up_to_the_end(&self, mut events: Vec<pb::Event>) -> Handout {
        let terminal = events.iter().position(is_terminal);
        match terminal.filter(|_| self.filter.until_terminal) {
            Some(last) => {
                events.truncate(last + 1);
                (events.into_iter().map(Ok).collect(), false)
            }
            None => (events.into_iter().map(Ok).collect(), true),
        }
    }

    /// Waits until something new may be there; false when the feed is gone.
    async fn wait_for_more(&mut self) -> bool {
        let latest = match &mut self.subscription {
            Some(s) => &mut s.latest,
            None => &mut self.everything,
        };
        if *latest.borrow_and_update() >= self.next {
            return true;
        }
        if latest.changed().await.is_err() {
            return false;
        }
        if self.subscription.is_none() {
            tokio::time::sleep(FOLLOWER_BATCH).await;
        }
        true
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

    /// Review of stop 44: a watcher that waits for a transaction's end from past its
    /// terminal event (a retry's `wait`, or WatchEvents from a later sequence number)
    /// checked "unfinished" before the transaction left the active set and then slept
    /// on a subscription nothing would wake again. Given the terminal event published
    /// and the transaction still active, when it leaves the active set, then the
    /// watcher's stream ends.
    #[tokio::test]
    async fn a_watcher_past_the_end_stops_once_the_transaction_leaves() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let kv = MemKv::new();
        let feed = Feed::new(Tables::new(Arc::new(kv.clone()))).unwrap();
        let mut end = write_event(&kv, 1);
        end.transaction_id = "a".into();
        end.kind = pb::EventKind::TransactionCommitted as i32;
        feed.publish(vec![end]);
        let active = Arc::new(AtomicBool::new(true));
        let still = active.clone();
        let filter = WatchFilter {
            transaction: Some(TxId::parse("id", "a").unwrap()),
            until_terminal: true,
            only_terminal: true,
        };
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = asked.clone();
        let unfinished = Box::new(move |_: &TxId| {
            counted.fetch_add(1, Ordering::SeqCst);
            still.load(Ordering::SeqCst)
        });
        let mut stream = feed.watch(filter, 2, unfinished);
        // The stream is read by its caller: one poll runs the watcher up to its wait on
        // the subscription, having asked whether the transaction is unfinished.
        assert!(futures::FutureExt::now_or_never(stream.next()).is_none());
        assert_eq!(asked.load(Ordering::SeqCst), 1, "the watcher asked");
        active.store(false, Ordering::SeqCst);
        feed.ended("a");
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await;
        assert!(matches!(next, Ok(None)), "the stream ends: {next:?}");
    }

    /// Stop 46: a follower of the whole log lets a burst of publishes gather for
    /// [`FOLLOWER_BATCH`] and reads it in one wake-up, and loses none of it; a watcher
    /// of one transaction is woken at once.
    #[tokio::test(start_paused = true)]
    async fn a_follower_of_the_whole_log_reads_a_burst_in_one_batch() {
        let kv = MemKv::new();
        let feed = Feed::new(Tables::new(Arc::new(kv.clone()))).unwrap();
        let all = Box::new(|_: &TxId| true);
        let mut follower = Watcher {
            feed: feed.clone(),
            filter: WatchFilter::default(),
            next: 1,
            subscription: None,
            everything: feed.latest(),
            unfinished: all,
            _counted: Counted::new(feed.inner.clone()),
        };
        let publisher = feed.clone();
        let (first, second) = (write_event(&kv, 1), write_event(&kv, 2));
        tokio::spawn(async move {
            publisher.publish(vec![first]);
            tokio::time::sleep(FOLLOWER_BATCH / 2).await;
            publisher.publish(vec![second]);
        });
        let started = tokio::time::Instant::now();
        let (batch, more) = follower.next_batch().await;
        let seqs: Vec<u64> = batch.into_iter().map(|e| e.unwrap().seq).collect();
        assert_eq!(seqs, vec![1, 2], "both publishes in one batch");
        assert!(more);
        assert_eq!(
            started.elapsed(),
            FOLLOWER_BATCH,
            "held for the window, no longer"
        );
        let mut one = feed.watch(
            WatchFilter {
                transaction: Some(TxId::parse("id", "a").unwrap()),
                ..Default::default()
            },
            3,
            Box::new(|_: &TxId| true),
        );
        let mut third = write_event(&kv, 3);
        third.transaction_id = "a".into();
        let publisher = feed.clone();
        tokio::spawn(async move { publisher.publish(vec![third]) });
        let started = tokio::time::Instant::now();
        assert_eq!(one.next().await.unwrap().unwrap().seq, 3);
        assert_eq!(started.elapsed(), std::time::Duration::ZERO, "not held");
    }
}
