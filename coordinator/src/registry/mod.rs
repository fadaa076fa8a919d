//! The coordinator's state and its one owner: projects, unfinished transactions, the
//! per-project queue, checkpoints and quarantine, over the journal and the tables. It
//! admits transactions (starting a driver for each), is the journal port every driver
//! writes through ([`crate::ports::TxJournal`]), and answers every read.
//!
//! Visibility rule: what readers see (GetRelease, GetLiveState, GetDecision) is what is
//! durable, except undecided progress whose loss a crash makes harmless (votes, the
//! start of phase 1). A driver changes its transaction on its own copy and hands it
//! here; decisions are shown only once the write is synced, so a COMMIT is never
//! reported, to a client or a participant, before a crash would keep it.
//!
//! # Layout
//! - [`admit`]: accepting a request (plan, id, record, queue, driver).
//! - [`writes`]: the journal port: progress, decisions with their checkpoints, the end
//!   and the hand-over of projects to queued transactions.
//! - [`reads`]: what readers see.
//! - `operator`: what people ask of a transaction in flight (abort, resolve, retry).
//! - [`projects`]: registration, with the `requires` graph checked.
//! - [`history`]: the planner's view of what is on disk.
//! - [`audit`]: refusals, tokens and the audit log.
//! - [`environments`]: declared environments and the promotion path between them;
//!   [`apply`]: a pipeline file (environments and projects) put in force whole.
//! - [`promote`]: promotions, a source checkpoint or bracket as a release downstream,
//!   and auto-promotion; `live_check`: the verification after commit that comes
//!   before them; [`verified`]: whether every version a state holds was verified.

pub mod admit;
pub mod apply;
pub mod audit;
pub mod environments;
mod history;
mod indexes;
pub mod listing;
mod live_check;
#[cfg(test)]
mod lookup_tests;
mod operator;
mod planning;
pub mod projects;
pub mod promote;
pub mod reads;
#[cfg(test)]
mod repeat_tests;
pub mod verified;
mod writes;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures::future::OptionFuture;
use lockstep::{
    names::{Environment, ProjectName, TxId, Version},
    retry::Backoff,
};
use lockstep_store::Batch;
use tokio::sync::{mpsc, oneshot};

use crate::{
    driver::{self, Command, Ports, Signals},
    error::Result,
    feed::Feed,
    journal::{Clock, Journal},
    model::{CheckpointRecord, EnvironmentRecord, ProjectRecord, QuarantineRecord, TxRecord},
    ports::{Participants, Pending, Probe},
    queue::Queue,
    tables::Tables,
    txn::{Effect, Transaction, Turn},
};

/// What the registry needs to know of the coordinator's configuration.
#[derive(Clone)]
pub struct Settings {
    /// Phase 1 deadline when a request gives none.
    pub default_prepare_timeout: Duration,
    /// Retry schedule of every call to a participant.
    pub backoff: Backoff,
    /// Time source for records.
    pub clock: Clock,
    /// Where http verify steps send their requests.
    pub probe: Arc<dyn Probe>,
}

/// Handle to the state. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    tables: Tables,
    journal: Journal,
    feed: Feed,
    net: Arc<dyn Participants>,
    settings: Settings,
    state: Mutex<State>,
}

/// An unfinished transaction: its record as readers see it and its driver's signals.
struct Active {
    record: TxRecord,
    start: Option<oneshot::Sender<Turn>>,
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Default)]
struct State {
    /// Shared with plans' snapshots, and copied only when changed while one is out:
    /// a release's plan takes its environment's projects and head without a copy.
    projects: BTreeMap<Environment, Arc<BTreeMap<ProjectName, ProjectRecord>>>,
    /// Declared environments.
    environments: BTreeMap<Environment, EnvironmentRecord>,
    /// The newest pipeline file version applied (0: none).
    pipeline_version: u64,
    active: BTreeMap<TxId, Active>,
    /// How many transactions have left `active`, and the ids of the latest
    /// [`DEPARTURES_KEPT`] (see `admit::Stored`): a record read from the store outside
    /// this lock is still the truth unless its transaction left since.
    departed: u64,
    departures: std::collections::VecDeque<TxId>,
    queue: Queue,
    /// Newest checkpoint per environment, including a decided one still being written.
    head: BTreeMap<Environment, Arc<CheckpointRecord>>,
    /// Newest durable checkpoint per environment: what readers see.
    live: BTreeMap<Environment, Arc<CheckpointRecord>>,
    quarantine: BTreeMap<Environment, BTreeMap<(ProjectName, Version), QuarantineRecord>>,
    next_ordinal: u64,
    /// Per environment, how often what plans read changed (see [`planning`]).
    generations: BTreeMap<Environment, u64>,
}

/// Departed ids a state keeps: a read older than the last this many departures is
/// read again.
const DEPARTURES_KEPT: usize = 4096;

impl State {
    /// Notes that `id` left `active`.
    fn departs(&mut self, id: &TxId) {
        self.departed += 1;
        self.departures.push_back(id.clone());
        if self.departures.len() > DEPARTURES_KEPT {
            self.departures.pop_front();
        }
    }

    /// Whether `id` may have left `active` since the departure count was `departed`
    /// (also when the departures kept no longer reach back that far).
    fn departed_since(&self, departed: u64, id: &TxId) -> bool {
        let since = usize::try_from(self.departed.saturating_sub(departed)).unwrap_or(usize::MAX);
        since > self.departures.len() || self.departures.iter().rev().take(since).any(|d| d == id)
    }
}

impl Registry {
    /// A registry over `tables`, writing through `journal`; call [`Registry::load`]
    /// before anything else.
    pub fn new(
        tables: Tables,
        journal: Journal,
        feed: Feed,
        net: Arc<dyn Participants>,
        settings: Settings,
    ) -> Self {
        let state = Mutex::new(State::default());
        let inner = Inner {
            tables,
            journal,
            feed,
            net,
            settings,
            state,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves State consistent before any call that could
        // panic, so a poisoned lock is safe to keep using.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `answer` once every write made so far is durable: the answer of a call that
    /// found in memory what another call wrote an instant ago (see
    /// [`crate::journal::Journal::settled`]).
    async fn once_settled<T>(&self, answer: Result<T>) -> Result<T> {
        self.inner.journal.settled().await?;
        answer
    }

    fn now(&self) -> u64 {
        (self.inner.settings.clock)()
    }

    /// The participant network (dry runs ask it too).
    pub fn net(&self) -> &Arc<dyn Participants> {
        &self.inner.net
    }

    /// The tables (recovery reads the unfinished transactions).
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    /// Fills the table of the revisions at which versions became live, and the indexes
    /// of transactions by environment and by project, once per data directory written
    /// before they existed, and catches the indexes up over what an older leader wrote
    /// since. Recovery's job, on the instance that leads, before it serves: a standby's
    /// read-only view, built for each read, leaves them alone.
    pub fn fill_indexes(&self) -> Result<()> {
        history::fill_starts(&self.inner.tables)?;
        indexes::fill(&self.inner.tables)
    }

    /// Loads everything but transactions from storage (recovery's first step).
    pub fn load(&self) -> Result<()> {
        let tables = &self.inner.tables;
        let mut s = self.state();
        for p in tables.projects()? {
            let env = s.projects.entry(p.environment.clone()).or_default();
            Arc::make_mut(env).insert(p.name.clone(), p);
        }
        s.pipeline_version = tables.last_pipeline_version()?;
        for e in tables.environments()? {
            s.environments.insert(e.name.clone(), e);
        }
        let mut environments: BTreeSet<Environment> = s.projects.keys().cloned().collect();
        environments.extend(tables.checkpoint_environments()?);
        for env in environments {
            if let Some(cp) = tables.latest_checkpoint(&env)? {
                history::backfill_seen(tables, &cp)?;
                let cp = Arc::new(cp);
                s.head.insert(env.clone(), cp.clone());
                s.live.insert(env, cp);
            }
        }
        for ((env, project, version), record) in tables.quarantine()? {
            let env = s.quarantine.entry(env).or_default();
            env.insert((project, version), record);
        }
        s.next_ordinal = tables.last_ordinal()? + 1;
        Ok(())
    }

    /// Registers a recovered transaction and starts its driver with what the machine
    /// said about the restart. Only a transaction that sent Prepare (or decided) held
    /// its projects before the restart, so only such a one holds them again (with the
    /// family a move back holds until its decision); one that was still queued is
    /// aborted without ever holding anything.
    pub fn resume(&self, machine: Transaction, effects: Vec<Effect>) {
        let record = machine.record().clone();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        {
            let mut s = self.state();
            if record.prepare_sent {
                let projects = record.projects().chain(&record.held_reads).cloned();
                s.queue.hold(&record.id, &record.environment, projects);
            }
            let active = Active {
                record,
                start: None,
                commands,
            };
            s.active.insert(machine.record().id.clone(), active);
        }
        self.spawn_driver(machine, effects, None, commands_rx, None);
    }

    /// Shows an unfinished transaction as its record says, with no driver: a standby's
    /// read-only view, where the leader's drivers are the ones running it.
    pub fn show_unfinished(&self, record: TxRecord) {
        let (commands, _) = mpsc::unbounded_channel();
        let id = record.id.clone();
        let active = Active {
            record,
            start: None,
            commands,
        };
        self.state().active.insert(id, active);
    }

    fn spawn_driver(
        &self,
        machine: Transaction,
        first: Vec<Effect>,
        start: Option<oneshot::Receiver<Turn>>,
        commands: mpsc::UnboundedReceiver<Command>,
        taken: Option<Pending<Result<()>>>,
    ) {
        let ports = Ports {
            journal: Arc::new(self.clone()),
            net: self.inner.net.clone(),
            probe: self.inner.settings.probe.clone(),
            timings: self.inner.journal.timings().clone(),
        };
        let signals = Signals { start, commands };
        // The transaction's span: a child of the call that created it (its trace runs
        // from the CLI through every Prepare and Commit), and the parent of each call
        // the driver makes. A transaction resumed by recovery has no such call: its
        // span continues the trace its record stored.
        let r = machine.record();
        let resumed = tracing::Span::current().is_none();
        let span = tracing::info_span!(
            "transaction",
            otel.name = %format!("{:?} {}", r.kind, r.id),
            transaction_id = %r.id,
            environment = %r.environment,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        if resumed {
            lockstep::trace::continue_from(&span, &r.trace_parent);
        }
        lockstep::trace::record_ids(&span);
        let id = r.id.clone();
        let run = driver::run(machine, first, signals, ports);
        let run = async move {
            // Its first effects wait until its id is durably taken (see `start`).
            if let Some(Err(e)) = OptionFuture::from(taken).await {
                tracing::error!(tx = %id, "not started: {e}");
                return;
            }
            run.await
        };
        tokio::spawn(tracing::Instrument::instrument(run, span));
    }

    /// A quiet write of records nobody waits for (recovery's clean-up).
    pub fn write_quietly(&self, batch: Batch) {
        let soon = crate::journal::Durable::Soon;
        drop(self.inner.journal.append(batch, Vec::new(), soon));
    }
}
