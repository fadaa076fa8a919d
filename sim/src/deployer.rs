//! The participants' deploy logic in the simulation: an in-memory "disk" per project that
//! survives host crashes (what `stage` and `go_live` write is durable at once, as the
//! reference agent's synced files are), and a log of every real change of the live
//! version, which is what the checker's exactly-once rule reads.
//!
//! Failure injection comes from the change itself, so schedules control it
//! deterministically: a version containing `bad` is refused, and metadata
//! `delay_ms=N` makes staging take N ms of simulated time.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
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
}

/// What survives a crash of the participant's host.
#[derive(Debug, Default)]
pub struct DiskState {
    /// Version live now.
    pub live: Option<String>,
    /// Versions staged, by transaction.
    pub staged: BTreeMap<String, String>,
    /// Every change of `live`, in order.
    pub effects: Vec<Effect>,
}

/// Shared handle to a participant's disk.
#[derive(Clone, Default)]
pub struct Disk(Arc<Mutex<DiskState>>);

impl Disk {
    /// Reads or changes the disk.
    pub fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut disk = self.disk.lock();
        disk.staged.remove(&change.transaction_id);
        if disk.live.as_deref() != Some(change.version.as_str()) {
            let from = disk.live.replace(change.version.clone());
            disk.effects.push(Effect {
                tx: change.transaction_id.clone(),
                from,
                to: change.version.clone(),
            });
        }
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
        self.switch(change);
        Ok(())
    }

    async fn undo(&self, change: &Change, _staged: Option<&Staged>) -> Result<(), DeployError> {
        self.disk.lock().staged.remove(&change.transaction_id);
        Ok(())
    }

    async fn live_version(&self) -> Result<Option<String>, DeployError> {
        Ok(self.disk.lock().live.clone())
    }
}
