//! The participants' deploy logic in the simulation: an in-memory "disk" per project that
//! survives host crashes (what `stage` and `go_live` write is durable at once, as the
//! reference agent's synced files are), and a log of every real change of the live
//! version, which is what the checker's exactly-once rule reads.
//!
//! Failure injection comes from the change itself, so schedules control it
//! deterministically: a version containing `bad` is refused, metadata `delay_ms=N`
//! makes staging take N ms of simulated time, and `golive_fail=N` / `undo_fail=N`
//! make the first N attempts of going live / of undoing that change fail (phase 2's
//! failures: the coordinator must retry until they succeed, never decide again nor
//! undo what its siblings made live). The attempts are counted on the disk, so a
//! crash does not reset them.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use lockstep_participant::{Change, DeployError, Deployer, Refusal, Staged};

/// One change of what is live on a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// The transaction that made it.
    pub tx: String,
    /// Live before.
    pub from: Option<String>,
    /// Live after.
    pub to: String,
    /// Its place among every change of the run, on every participant (see
    /// [`EffectClock`]): which of two participants went live first.
    pub at: u64,
    /// Made live by the agent without having staged this version for this
    /// transaction (a person deploying by hand is not the agent): what goes live must
    /// be what was prepared, never another transaction's staging or nothing.
    pub unstaged: bool,
}

/// Numbers the changes of what is live across all participants of a run, so the
/// checker can tell from the participants themselves (not from the coordinator's
/// account) that a parent went live only after its children.
#[derive(Clone, Default)]
pub struct EffectClock(Arc<AtomicU64>);

/// What survives a crash of the participant's host.
#[derive(Debug, Default)]
pub struct DiskState {
    /// Version live now.
    pub live: Option<String>,
    /// Versions staged, by transaction.
    pub staged: BTreeMap<String, String>,
    /// Every change of `live`, in order.
    pub effects: Vec<Effect>,
    /// Failed attempts so far, by transaction and step (`golive_fail`, `undo_fail`).
    pub failed: BTreeMap<(String, &'static str), u32>,
}

/// Shared handle to a participant's disk.
#[derive(Clone, Default)]
pub struct Disk {
    state: Arc<Mutex<DiskState>>,
    clock: EffectClock,
}

impl Disk {
    /// A disk whose changes are numbered on `clock`, shared with the run's others.
    pub fn on(clock: &EffectClock) -> Self {
        let clock = clock.clone();
        let state = Arc::default();
        Self { state, clock }
    }

    /// Reads or changes the disk.
    pub fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `version` live for `tx` unless it already is, logging the effect (`by_hand`:
    /// a person did it, with nothing staged).
    pub fn make_live(&self, tx: &str, version: &str, by_hand: bool) {
        let mut disk = self.lock();
        let staged = disk.staged.remove(tx);
        if disk.live.as_deref() != Some(version) {
            let from = disk.live.replace(version.to_string());
            disk.effects.push(Effect {
                tx: tx.to_string(),
                from,
                to: version.to_string(),
                at: self.clock.0.fetch_add(1, Ordering::SeqCst),
                unstaged: !by_hand && staged.as_deref() != Some(version),
            });
        }
    }
}

/// The simulated [`Deployer`].
pub struct SimDeployer {
    disk: Disk,
    sabotaged: bool,
}

impl SimDeployer {
    /// A deployer over `disk`.
    pub fn new(disk: Disk) -> Self {
        Self {
            disk,
            sabotaged: false,
        }
    }

    /// Makes `change` live, logging the effect when something changes.
    fn switch(&self, change: &Change) {
        self.disk
            .make_live(&change.transaction_id, &change.version, false);
    }

    /// Fails while `change`'s metadata `step=N` asks for more failures of `step` than
    /// it had.
    fn fails(&self, step: &'static str, change: &Change) -> Result<(), DeployError> {
        let wanted = change
            .metadata
            .get(step)
            .and_then(|v| v.parse::<u32>().ok());
        let mut disk = self.disk.lock();
        let failed = disk
            .failed
            .entry((change.transaction_id.clone(), step))
            .or_default();
        if *failed >= wanted.unwrap_or(0) {
            return Ok(());
        }
        *failed += 1;
        Err(DeployError(format!(
            "{step} {} of {} for {}",
            failed, change.project, change.transaction_id
        )))
    }

    /// A broken deployer that goes live as soon as it stages, deciding alone: the
    /// checker must catch it.
    pub fn sabotaged(mut self, on: bool) -> Self {
        self.sabotaged = on;
        self
    }
}

impl Deployer for SimDeployer {
    async fn stage(&self, change: &Change) -> Result<Staged, Refusal> {
        if let Some(ms) = change
            .metadata
            .get("delay_ms")
            .and_then(|v| v.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if change.version.contains("bad") {
            return Err(Refusal(format!(
                "{} cannot stage {}",
                change.project, change.version
            )));
        }
        self.disk
            .lock()
            .staged
            .insert(change.transaction_id.clone(), change.version.clone());
        if self.sabotaged {
            self.switch(change);
        }
        Ok(Staged::default())
    }

    async fn go_live(&self, change: &Change, _staged: &Staged) -> Result<(), DeployError> {
        self.fails("golive_fail", change)?;
        self.switch(change);
        Ok(())
    }

    async fn undo(&self, change: &Change, _staged: Option<&Staged>) -> Result<(), DeployError> {
        self.fails("undo_fail", change)?;
        self.disk.lock().staged.remove(&change.transaction_id);
        Ok(())
    }

    async fn live_version(&self) -> Result<Option<String>, DeployError> {
        Ok(self.disk.lock().live.clone())
    }
}
