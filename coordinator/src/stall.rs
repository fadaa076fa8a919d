//! The `stalled` trigger: a transaction still waiting in the queue, or still in phase
//! 2, longer than its environment's threshold gets one STALLED event in the log (once
//! per transaction, phase and coordinator start), which notifications then route like
//! any failure. It only looks and writes an event: it never changes a transaction.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use lockstep::{
    names::{Environment, ProjectName, TxId},
    pb,
};
use lockstep_store::Batch;

use crate::{
    journal::{Clock, Durable, Journal},
    model::{TxRecord, TxState},
    registry::Registry,
    txn::events,
};

/// How long a transaction may wait before it counts as stalled.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    /// Every environment's, unless it has its own.
    pub default: Duration,
    /// Environments with their own.
    pub environments: BTreeMap<Environment, Duration>,
}

impl Thresholds {
    fn of(&self, env: &Environment) -> Duration {
        self.environments.get(env).copied().unwrap_or(self.default)
    }

    /// How often to look: a quarter of the shortest threshold, within [100ms, 30s].
    fn period(&self) -> Duration {
        let shortest = self
            .environments
            .values()
            .copied()
            .fold(self.default, Duration::min);
        (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// Looks for stalled transactions for as long as the process runs. A queued one has
/// waited since its creation; one in phase 2 since this watch first saw it there (at
/// most a quarter of the threshold after its decision).
pub async fn watch(registry: Registry, journal: Journal, thresholds: Thresholds, clock: Clock) {
    let mut since: BTreeMap<(TxId, bool), u64> = BTreeMap::new();
    let mut reported: BTreeSet<(TxId, bool)> = BTreeSet::new();
    loop {
        tokio::time::sleep(thresholds.period()).await;
        let unfinished = registry.unfinished();
        let now = clock();
        let mut stalled = Vec::new();
        for tx in &unfinished {
            let Some(phase2) = waiting(tx.state) else {
                continue;
            };
            let key = (tx.id.clone(), phase2);
            let start =
                *since
                    .entry(key.clone())
                    .or_insert(if phase2 { now } else { tx.created_ms });
            let waited = Duration::from_millis(now.saturating_sub(start));
            let threshold = thresholds.of(&tx.environment);
            if waited > threshold && reported.insert(key) {
                stalled.push(event(tx, waited, threshold));
            }
        }
        let running = |id: &TxId| unfinished.iter().any(|t| &t.id == id);
        reported.retain(|(id, _)| running(id));
        since.retain(|(id, _), _| running(id));
        if !stalled.is_empty() {
            let written = journal.append(Batch::default(), stalled, Durable::Soon);
            if let Err(e) = written.await {
                tracing::warn!("stalled events not written: {e}");
            }
        }
    }
}

/// `Some(in phase 2)` for the states a transaction can stall in.
fn waiting(state: TxState) -> Option<bool> {
    match state {
        TxState::Pending => Some(false),
        TxState::Committing | TxState::Aborting => Some(true),
        _ => None,
    }
}

/// The STALLED event of `tx`, naming the first participant phase 2 waits for.
fn event(tx: &TxRecord, waited: Duration, threshold: Duration) -> pb::Event {
    let secs = |d: Duration| events::humanize(d.as_millis() as u64 / 1000 * 1000);
    let late = tx.participants.iter().find(|p| !p.acknowledged);
    let message = match (tx.state, late) {
        (TxState::Pending, _) => format!(
            "{} has waited in the queue for {}: {}",
            tx.id,
            secs(waited),
            tx.reason
        ),
        (state, Some(p)) => format!(
            "{} has been {state:?} for {}: {} has not acknowledged ({})",
            tx.id,
            secs(waited),
            p.project,
            if p.delivery_error.is_empty() {
                "no answer yet"
            } else {
                &p.delivery_error
            }
        ),
        (state, None) => format!("{} has been {state:?} for {}", tx.id, secs(waited)),
    };
    let project: Option<&ProjectName> = match tx.state {
        TxState::Pending => None,
        _ => late.map(|p| &p.project),
    };
    let message = format!("{message} (threshold {})", secs(threshold));
    events::event(tx, pb::EventKind::Stalled, project, message)
}
