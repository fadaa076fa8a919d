//! The proto3 JSON of recent events, encoded once for every SSE stream that sends them.
//! With a hundred console tabs following the log, each event was encoded a hundred
//! times, the largest cost of following it of our own (`lockstep-bench --only
//! watchers`, profiled). An event never changes once it has its sequence number (the
//! feed publishes only durable events), so the sequence number is the key.

use std::sync::{Arc, Mutex};

use lockstep::pb;

/// Events remembered: live followers read each event within a few publishes of one
/// another, so a small window serves them all (a stream reading old history encodes
/// what it reads, as before).
const SLOTS: u64 = 1024;

/// One slot: the sequence number it holds and that event's JSON.
type Slot = Mutex<Option<(u64, Arc<str>)>>;

/// Shared encodings, one slot per sequence number modulo [`SLOTS`]. Cheap to clone.
#[derive(Clone)]
pub struct EncodedEvents {
    slots: Arc<[Slot]>,
}

impl Default for EncodedEvents {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl EncodedEvents {
    /// `event` as proto3 JSON, encoded by the first stream that sends it.
    pub fn json(&self, event: &pb::Event) -> Arc<str> {
        let slot = &self.slots[(event.seq % SLOTS) as usize];
        let cached = lock(slot)
            .as_ref()
            .filter(|(seq, _)| *seq == event.seq)
            .map(|(_, json)| json.clone());
        if let Some(json) = cached {
            return json;
        }
        let json: Arc<str> = serde_json::to_string(event).unwrap_or_default().into();
        // Sequence number 0 is no log event's: never shared.
        if event.seq != 0 {
            *lock(slot) = Some((event.seq, json.clone()));
        }
        json
    }
}

/// The slot's lock; a poisoned one still holds a whole entry (it is replaced in one
/// assignment).
fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<(u64, Arc<str>)>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(seq: u64, tx: &str) -> pb::Event {
        pb::Event {
            seq,
            transaction_id: tx.into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_event_reads_as_its_own_json_even_when_it_shares_a_slot() {
        let cache = EncodedEvents::default();
        let first = event(7, "T1");
        let same_slot = event(7 + SLOTS, "T2");
        for e in [&first, &same_slot, &first, &first, &same_slot] {
            assert_eq!(&*cache.json(e), serde_json::to_string(e).unwrap());
        }
    }

    #[test]
    fn an_event_encoded_once_is_shared_by_the_next_stream() {
        let cache = EncodedEvents::default();
        let e = event(42, "T1");
        assert!(Arc::ptr_eq(&cache.json(&e), &cache.json(&e)));
    }
}
