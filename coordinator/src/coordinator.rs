//! The coordinator's state and the operations on it: the one component that owns
//! projects, unfinished transactions, the queue and the live checkpoints. gRPC handlers
//! call it; each transaction's protocol driver ([`crate::protocol`]) reports to it.
//!
//! Visibility rule: what readers see (GetRelease, GetLiveState, GetDecision) is what is
//! durable. A driver changes its transaction on a private copy, appends it to the
//! journal, and publishes it here only once the write is synced; so a COMMIT is never
//! reported, to a client or a participant, before a crash would keep it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use lockstep::{
    names::{Environment, ProjectName, TxId, Version},
    pb,
};
use lockstep_store::{Batch, Kv};
use tokio::sync::{oneshot, watch};

use crate::{
    error::{CoordinatorError, Result},
    feed::Feed,
    journal::{Clock, Durable, Journal, WriterMode},
    model::{
        CheckpointRecord, LiveEntry, ProjectRecord, QuarantineRecord, Request, TxKind, TxRecord,
        TxState,
    },
    network::ParticipantNet,
    planner::{self, History, Plan, View},
    protocol::{self, Signals, Start},
    queue::Queue,
    retry::Backoff,
    tables::Tables,
};

/// Tunables of a coordinator; defaults suit production.
#[derive(Clone)]
pub struct Config {
    /// Phase 1 deadline when a request gives none.
    pub default_prepare_timeout: Duration,
    /// Phase 2 retry schedule.
    pub backoff: Backoff,
    /// Timeout of one Commit or Abort call.
    pub delivery_timeout: Duration,
    /// Time source for records and events.
    pub clock: Clock,
    /// How the journal's syncer runs (a thread; a task in simulation).
    pub writer: WriterMode,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_prepare_timeout: Duration::from_secs(60),
            backoff: Backoff::default(),
            delivery_timeout: Duration::from_secs(10),
            clock: Arc::new(lockstep::wire::now_millis),
            writer: WriterMode::Thread,
        }
    }
}

/// Handle to the coordinator. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    tables: Tables,
    journal: Journal,
    feed: Feed,
    net: Arc<dyn ParticipantNet>,
    config: Config,
    state: Mutex<State>,
    /// Bounds calls to participants in flight: after a restart thousands of drivers
    /// resume at once, and unbounded they would allocate buffers for all their calls.
    calls: Arc<tokio::sync::Semaphore>,
}

/// Most calls to participants in flight at once.
const MAX_CALLS_IN_FLIGHT: usize = 256;

/// An unfinished transaction: its durable record and the driver's signals.
struct Active {
    record: TxRecord,
    start: Option<oneshot::Sender<Start>>,
    abort: watch::Sender<Option<String>>,
}

#[derive(Default)]
struct State {
    projects: BTreeMap<Environment, BTreeMap<ProjectName, ProjectRecord>>,
    active: BTreeMap<TxId, Active>,
    queue: Queue,
    /// Newest checkpoint per environment, including a decided one still being written.
    head: BTreeMap<Environment, CheckpointRecord>,
    /// Newest durable checkpoint per environment: what readers see.
    live: BTreeMap<Environment, CheckpointRecord>,
    quarantine: BTreeMap<Environment, BTreeMap<(ProjectName, Version), QuarantineRecord>>,
    next_ordinal: u64,
}

/// Answer to a create call.
pub struct Created {
    /// The transaction (None for a dry run).
    pub transaction: Option<TxRecord>,
    /// Its plan.
    pub plan: Plan,
    /// Waiting behind these transactions.
    pub waits_for: Vec<TxId>,
    /// False for an idempotent retry.
    pub created: bool,
    /// Sequence number of its first event (0 when not known).
    pub first_event_seq: u64,
}

/// What a create call asks for, validated.
pub struct CreateSpec {
    /// Client-chosen id (idempotency key), if any.
    pub id: Option<TxId>,
    /// Id to derive a fresh one from when `id` is None (e.g. `revert-T4`).
    pub id_hint: Option<String>,
    /// Environment.
    pub environment: Environment,
    /// What to do.
    pub request: Request,
    /// Phase 1 deadline (None: default).
    pub prepare_timeout: Option<Duration>,
    /// Plan only.
    pub dry_run: bool,
}

/// Live state of one environment.
pub struct Live {
    /// Newest durable checkpoint.
    pub checkpoint: Option<CheckpointRecord>,
    /// Unfinished transactions of the environment, oldest first.
    pub active: Vec<TxRecord>,
}

impl Coordinator {
    /// Opens the coordinator on `kv` (opened with [`crate::tables::ALL`]), recovers every
    /// unfinished transaction and starts their drivers. Must run inside a tokio runtime.
    pub fn open(kv: Arc<dyn Kv>, net: Arc<dyn ParticipantNet>, config: Config) -> Result<Self> {
        let tables = Tables::new(kv);
        let feed = Feed::new(tables.clone())?;
        let journal = Journal::start(
            tables.clone(),
            feed.clone(),
            config.clock.clone(),
            config.writer,
        )?;
        let coordinator = Self {
            inner: Arc::new(Inner {
                tables,
                journal,
                feed,
                net,
                config,
                state: Mutex::new(State::default()),
                calls: Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT)),
            }),
        };
        crate::recovery::recover(&coordinator)?;
        Ok(coordinator)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves State consistent before any call that could
        // panic, so a poisoned lock is safe to keep using.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    pub(crate) fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// The event feed watchers read.
    pub fn feed(&self) -> &Feed {
        &self.inner.feed
    }

    pub(crate) fn net(&self) -> &Arc<dyn ParticipantNet> {
        &self.inner.net
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A permit for one call to a participant (see [`MAX_CALLS_IN_FLIGHT`]).
    pub(crate) async fn call_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.inner
            .calls
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    pub(crate) fn now(&self) -> u64 {
        (self.inner.config.clock)()
    }

    /// Resolves when the journal has failed: the process must exit and recover.
    pub async fn failed(&self) -> String {
        self.inner.journal.failed().await
    }

    /// Group-commit counters.
    pub fn journal_stats(&self) -> crate::journal::JournalStats {
        self.inner.journal.stats()
    }

    // ----- loading (recovery) -----

    /// Loads everything but transactions from storage (recovery's first step).
    pub(crate) fn load(&self) -> Result<()> {
        let tables = &self.inner.tables;
        let mut s = self.state();
        for p in tables.projects()? {
            s.projects
                .entry(p.environment.clone())
                .or_default()
                .insert(p.name.clone(), p);
        }
        let environments: BTreeSet<Environment> = s.projects.keys().cloned().collect();
        for env in environments {
            if let Some(cp) = tables.latest_checkpoint(&env)? {
                backfill_seen(tables, &cp)?;
                s.head.insert(env.clone(), cp.clone());
                s.live.insert(env, cp);
            }
        }
        for ((env, project, version), record) in tables.quarantine()? {
            s.quarantine
                .entry(env)
                .or_default()
                .insert((project, version), record);
        }
        s.next_ordinal = tables.last_ordinal()? + 1;
        Ok(())
    }

    /// Registers a recovered transaction and starts its driver.
    pub(crate) fn resume(&self, record: TxRecord) {
        let (abort, abort_rx) = watch::channel(None);
        let (start, start_rx) = oneshot::channel();
        let _ = start.send(Start::Go(Vec::new()));
        {
            let mut s = self.state();
            s.queue
                .hold(&record.id, &record.environment, record.projects().cloned());
            s.active.insert(
                record.id.clone(),
                Active {
                    record: record.clone(),
                    start: None,
                    abort,
                },
            );
        }
        let signals = Signals {
            start: start_rx,
            abort: abort_rx,
        };
        tokio::spawn(protocol::run(self.clone(), record, signals));
    }

    // ----- projects -----

    /// Registers or updates a project. Children must exist; cycles are refused.
    pub async fn register_project(&self, project: ProjectRecord) -> Result<(ProjectRecord, bool)> {
        let pending = {
            let mut s = self.state();
            let env_projects = s.projects.get(&project.environment);
            for (i, child) in project.requires.iter().enumerate() {
                if child == &project.name {
                    return Err(lockstep::names::FieldError::new(
                        format!("requires[{i}]"),
                        format!("project {} cannot require itself", project.name),
                    )
                    .into());
                }
                if !env_projects.is_some_and(|m| m.contains_key(child)) {
                    return Err(CoordinatorError::NotFound(format!(
                        "requires[{i}]: project {child} is not registered in environment {}; register children first",
                        project.environment
                    )));
                }
            }
            if let Some(path) = env_projects.and_then(|m| cycle_through(m, &project)) {
                return Err(lockstep::names::FieldError::new(
                    "requires",
                    format!("would create a cycle: {path}"),
                )
                .into());
            }
            if env_projects.and_then(|m| m.get(&project.name)) == Some(&project) {
                return Ok((project, false));
            }
            let mut batch = Batch::default();
            Tables::put_project(&mut batch, &project);
            let event = pb::Event {
                kind: pb::EventKind::ProjectRegistered as i32,
                environment: project.environment.to_string(),
                project: project.name.to_string(),
                message: format!(
                    "project {} at {}{}",
                    project.name,
                    project.endpoint,
                    if project.requires.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", requires {}",
                            project
                                .requires
                                .iter()
                                .map(|r| r.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ),
                ..Default::default()
            };
            s.projects
                .entry(project.environment.clone())
                .or_default()
                .insert(project.name.clone(), project.clone());
            self.inner.journal.append(batch, vec![event], Durable::Now)
        };
        pending.await?;
        Ok((project, true))
    }

    /// Projects of `env`, sorted by name.
    pub fn projects(&self, env: &Environment) -> Vec<ProjectRecord> {
        self.state()
            .projects
            .get(env)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    // ----- transactions -----

    /// Plans a transaction and, unless it is a dry run, accepts it durably and queues it.
    pub async fn create(&self, spec: CreateSpec) -> Result<Created> {
        if spec.dry_run {
            return self.dry_run(&spec).await;
        }
        let (record, plan, waits_for, pending) = {
            let mut s = self.state();
            if let Some(id) = &spec.id
                && let Some(existing) = self.existing(&s, id)?
            {
                return self.replay(&s, existing, &spec);
            }
            let plan = self.plan_locked(&s, &spec.environment, &spec.request)?;
            let waits_for = s.queue.holders_of(&spec.environment, &plan.projects());
            if !plan.allowed() {
                return Err(CoordinatorError::Refused(plan.refusal()));
            }
            let id = match &spec.id {
                Some(id) => id.clone(),
                None => self.fresh_id(&s, spec.id_hint.as_deref().unwrap_or("tx"))?,
            };
            let ordinal = s.next_ordinal;
            s.next_ordinal += 1;
            let mut record = TxRecord {
                id: id.clone(),
                ordinal,
                environment: spec.environment.clone(),
                kind: match spec.request {
                    Request::Release { .. } => TxKind::Release,
                    Request::Revert { .. } => TxKind::Revert,
                    Request::Rollback { .. } => TxKind::Rollback,
                },
                request: spec.request.clone(),
                state: TxState::Pending,
                participants: plan.participants.clone(),
                waves: plan.waves.clone(),
                reason: String::new(),
                reverts: plan.reverts.clone(),
                rollback_to: plan.rollback_to,
                forced: plan.forced,
                quarantined: false,
                checkpoint: 0,
                prepare_timeout_ms: spec
                    .prepare_timeout
                    .unwrap_or(self.inner.config.default_prepare_timeout)
                    .as_millis() as u64,
                created_ms: self.now(),
                finished_ms: 0,
                prepare_sent: false,
            };
            let blocked =
                s.queue
                    .enqueue(ordinal, id.clone(), &record.environment, plan.projects());
            let mut events = vec![protocol::event(
                &record,
                pb::EventKind::TransactionCreated,
                None,
                describe_request(&record),
            )];
            match &blocked {
                Some(b) => {
                    record.reason = b.explain();
                    events.push(protocol::event(
                        &record,
                        pb::EventKind::TransactionQueued,
                        Some(&b.project),
                        b.explain(),
                    ));
                }
                // Nothing in the way: phase 1 starts in the same write as the creation,
                // and the driver sends Prepare while it is being synced. Safe under
                // presumed abort: if this write is lost in a crash, the coordinator
                // answers ABORT to a participant asking about it, and prepared
                // participants do ask when no decision comes.
                None => events.push(protocol::start_preparing(&mut record)),
            }
            let mut batch = Batch::default();
            Tables::put_transaction(&mut batch, &record);
            // Durable before the client hears "accepted", but it forces no fsync of its
            // own: the COMMIT decision written moments later (or the syncer's linger)
            // syncs it.
            let pending = self.inner.journal.append(batch, events, Durable::Soon);
            // Registered under the same lock as the queue entry, so a transaction that
            // finishes right now finds this one when it hands over its projects.
            let (abort, abort_rx) = watch::channel(None);
            let (start, start_rx) = oneshot::channel();
            let start = match blocked {
                None => {
                    let _ = start.send(Start::Go(Vec::new()));
                    None
                }
                Some(_) => Some(start),
            };
            s.active.insert(
                id,
                Active {
                    record: record.clone(),
                    start,
                    abort,
                },
            );
            let signals = Signals {
                start: start_rx,
                abort: abort_rx,
            };
            tokio::spawn(protocol::run(self.clone(), record.clone(), signals));
            (record, plan, waits_for, pending)
        };
        // The answer waits until the transaction is durable ("nothing valid is lost");
        // a failed write stops the coordinator (fail-stop), and recovery then aborts it.
        let first_event_seq = pending.await?;
        Ok(Created {
            transaction: Some(record),
            plan,
            waits_for,
            created: true,
            first_event_seq,
        })
    }

    /// Plans without writing anything or touching a participant's state, and asks each
    /// participant's read-only Preview what it would run (its migration files) or why
    /// it would refuse.
    async fn dry_run(&self, spec: &CreateSpec) -> Result<Created> {
        let (mut plan, waits_for) = {
            let s = self.state();
            let plan = self.plan_locked(&s, &spec.environment, &spec.request)?;
            let waits_for = s.queue.holders_of(&spec.environment, &plan.projects());
            (plan, waits_for)
        };
        let id = spec.id.as_ref().map(|i| i.as_str()).unwrap_or("dry-run");
        crate::preview::ask_participants(self, id, &spec.environment, &waits_for, &mut plan).await;
        Ok(Created {
            transaction: None,
            plan,
            waits_for,
            created: false,
            first_event_seq: 0,
        })
    }

    fn existing(&self, s: &State, id: &TxId) -> Result<Option<TxRecord>> {
        match s.active.get(id) {
            Some(a) => Ok(Some(a.record.clone())),
            None => Ok(self.inner.tables.transaction(id)?),
        }
    }

    /// An idempotent retry: the same id with the same request returns the transaction.
    fn replay(&self, s: &State, existing: TxRecord, spec: &CreateSpec) -> Result<Created> {
        if existing.request != spec.request || existing.environment != spec.environment {
            return Err(CoordinatorError::AlreadyExists(format!(
                "id: transaction {} already exists with different content; choose another id",
                existing.id
            )));
        }
        let plan = Plan {
            participants: existing.participants.clone(),
            waves: existing.waves.clone(),
            preconditions: Vec::new(),
            forced: existing.forced,
            reverts: existing.reverts.clone(),
            rollback_to: existing.rollback_to,
        };
        let waits_for = match s.active.get(&existing.id) {
            Some(_) => s
                .queue
                .blocked(existing.ordinal)
                .map(|b| vec![b.by])
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(Created {
            transaction: Some(existing),
            plan,
            waits_for,
            created: false,
            first_event_seq: 0,
        })
    }

    fn fresh_id(&self, s: &State, hint: &str) -> Result<TxId> {
        let hint = if hint == "tx" {
            format!("tx-{}", s.next_ordinal)
        } else {
            hint.to_string()
        };
        for n in 1.. {
            let candidate = if n == 1 {
                hint.clone()
            } else {
                format!("{hint}-{n}")
            };
            let id = TxId::parse("id", &candidate)?;
            if self.existing(s, &id)?.is_none() {
                return Ok(id);
            }
        }
        unreachable!("1.. is unbounded")
    }

    fn plan_locked(&self, s: &State, env: &Environment, request: &Request) -> Result<Plan> {
        let empty_projects = BTreeMap::new();
        let empty_quarantine = BTreeMap::new();
        let history = StoredHistory {
            tables: &self.inner.tables,
            environment: env,
        };
        let view = View {
            environment: env,
            projects: s.projects.get(env).unwrap_or(&empty_projects),
            head: s.head.get(env),
            quarantine: s.quarantine.get(env).unwrap_or(&empty_quarantine),
            history: &history,
        };
        planner::plan(&view, request)
    }

    /// A transaction by id (memory for unfinished ones, storage otherwise).
    pub fn get(&self, id: &TxId) -> Result<TxRecord> {
        let s = self.state();
        self.existing(&s, id)?.ok_or_else(|| {
            CoordinatorError::NotFound(format!("id: transaction {id} does not exist"))
        })
    }

    /// Recent transactions, newest first; unfinished ones as they are now.
    pub fn list(
        &self,
        env: Option<&Environment>,
        limit: usize,
        active_only: bool,
    ) -> Result<Vec<TxRecord>> {
        let s = self.state();
        let mut out: Vec<TxRecord> = if active_only {
            s.active.values().map(|a| a.record.clone()).collect()
        } else {
            // Scan wider than `limit` when filtering by environment.
            let scan = if env.is_some() {
                limit.saturating_mul(8).max(1000)
            } else {
                limit
            };
            self.inner
                .tables
                .recent_transactions(scan)?
                .into_iter()
                .map(|t| s.active.get(&t.id).map(|a| a.record.clone()).unwrap_or(t))
                .collect()
        };
        out.retain(|t| env.is_none_or(|e| &t.environment == e));
        out.sort_by_key(|t| std::cmp::Reverse(t.ordinal));
        out.truncate(limit);
        Ok(out)
    }

    /// Whether `id` is a transaction that has not ended (cheap: nothing is copied or read
    /// from disk, so a watcher can ask on every wake-up).
    pub fn is_unfinished(&self, id: &TxId) -> bool {
        self.state().active.contains_key(id)
    }

    /// How many transactions are unfinished (cheap: no records are copied).
    pub fn active_count(&self) -> usize {
        self.state().active.len()
    }

    /// Aborts a transaction that has not decided yet, and waits (briefly) until the
    /// driver has recorded the ABORT decision.
    pub async fn abort(&self, id: &TxId, reason: String) -> Result<TxRecord> {
        let mut latest = self.inner.feed.latest();
        {
            let s = self.state();
            let Some(active) = s.active.get(id) else {
                let record = self.existing(&s, id)?.ok_or_else(|| {
                    CoordinatorError::NotFound(format!("id: transaction {id} does not exist"))
                })?;
                return Err(CoordinatorError::Refused(format!(
                    "id: transaction {id} is already {:?}; only an undecided transaction can be aborted",
                    record.state
                )));
            };
            match active.record.state {
                TxState::Pending | TxState::Preparing => {
                    active.abort.send_replace(Some(reason));
                }
                TxState::Aborting => return Ok(active.record.clone()),
                state => {
                    return Err(CoordinatorError::Refused(format!(
                        "id: transaction {id} is {state:?}: COMMIT is decided and durable, it can no longer be aborted; revert it once committed"
                    )));
                }
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let record = self.get(id)?;
            if !matches!(record.state, TxState::Pending | TxState::Preparing) {
                return match record.state {
                    TxState::Committing | TxState::Committed => Err(CoordinatorError::Refused(
                        format!("id: transaction {id} decided COMMIT before the abort arrived"),
                    )),
                    _ => Ok(record),
                };
            }
            if tokio::time::timeout_at(deadline, latest.changed())
                .await
                .is_err()
            {
                return Ok(record);
            }
        }
    }

    /// The live state of `env`.
    pub fn live(&self, env: &Environment) -> Live {
        let s = self.state();
        Live {
            checkpoint: s.live.get(env).cloned(),
            active: {
                let mut v: Vec<TxRecord> = s
                    .active
                    .values()
                    .filter(|a| &a.record.environment == env)
                    .map(|a| a.record.clone())
                    .collect();
                v.sort_by_key(|t| t.ordinal);
                v
            },
        }
    }

    /// Durable checkpoints of `env`, oldest first. The table may already hold the
    /// checkpoint of a COMMIT whose write is not yet synced; it is left out until the
    /// decision is durable and live.
    pub fn history(&self, env: &Environment) -> Result<Vec<CheckpointRecord>> {
        let live = self.state().live.get(env).map_or(0, |l| l.revision);
        let mut checkpoints = self.inner.tables.checkpoints(env)?;
        checkpoints.retain(|c| c.revision <= live);
        Ok(checkpoints)
    }

    /// The durable decision for a participant (presumed abort for unknown ids).
    pub fn decision(&self, id: &TxId) -> Result<pb::Decision> {
        let s = self.state();
        let state = match s.active.get(id) {
            Some(a) => Some(a.record.state),
            None => self.inner.tables.transaction(id)?.map(|t| t.state),
        };
        Ok(match state {
            Some(TxState::Pending | TxState::Preparing) => pb::Decision::Undecided,
            Some(TxState::Committing | TxState::Committed) => pb::Decision::Commit,
            Some(TxState::Aborting | TxState::Aborted) | None => pb::Decision::Abort,
        })
    }

    // ----- called by protocol drivers -----

    /// Makes a durable record visible to readers.
    pub(crate) fn publish(&self, record: &TxRecord) {
        if let Some(active) = self.state().active.get_mut(&record.id) {
            let old = std::mem::replace(&mut active.record, record.clone());
            // Delivery errors live only in memory: keep them for participants still
            // being retried.
            for (new, old) in active.record.participants.iter_mut().zip(old.participants) {
                if !new.acknowledged && new.delivery_error.is_empty() {
                    new.delivery_error = old.delivery_error;
                }
            }
        }
    }

    /// Shows readers the new state of some participants of `record` (a vote, an
    /// acknowledgement): copies only those, so a transaction with a hundred participants
    /// does not copy its whole record for each of its hundred votes.
    pub(crate) fn publish_participants(&self, record: &TxRecord, projects: &[&ProjectName]) {
        let mut s = self.state();
        let Some(active) = s.active.get_mut(&record.id) else {
            return;
        };
        for project in projects {
            let (Some(new), Some(shown)) = (
                record.participant(project),
                active.record.participant_mut(project),
            ) else {
                continue;
            };
            // Delivery errors live only in memory: keep them for participants still
            // being retried.
            let delivery_error = std::mem::take(&mut shown.delivery_error);
            shown.clone_from(new);
            if !shown.acknowledged && shown.delivery_error.is_empty() {
                shown.delivery_error = delivery_error;
            }
        }
    }

    /// Notes a failed phase 2 delivery: shown on the participant and logged as an event
    /// (not awaited: the retry loop goes on regardless).
    pub(crate) fn delivery_failed(
        &self,
        id: &TxId,
        project: &ProjectName,
        error: &str,
        message: String,
    ) {
        let mut s = self.state();
        let Some(active) = s.active.get_mut(id) else {
            return;
        };
        if let Some(p) = active.record.participant_mut(project) {
            p.delivery_error = error.to_string();
        }
        let event = protocol::event(
            &active.record,
            pb::EventKind::DeliveryRetry,
            Some(project),
            message,
        );
        self.inner
            .journal
            .append_quietly(Batch::default(), vec![event]);
    }

    /// Durably writes the COMMIT decision for `tx` together with the checkpoint it
    /// produces (and, for a revert, the quarantine of what it pulls). Returns once
    /// durable (PRODUCT.md: COMMIT is written with fsync before any Commit is sent).
    pub(crate) async fn decide_commit(
        &self,
        tx: &mut TxRecord,
        events: Vec<pb::Event>,
    ) -> Result<()> {
        let (pending, checkpoint) = {
            let mut s = self.state();
            let previous = s.head.get(&tx.environment);
            let mut versions = previous.map(|p| p.versions.clone()).unwrap_or_default();
            for p in &tx.participants {
                let schema = p
                    .to_schema
                    .clone()
                    .or_else(|| versions.get(&p.project).and_then(|e| e.schema.clone()));
                versions.insert(
                    p.project.clone(),
                    LiveEntry {
                        version: p.to_version.clone(),
                        schema,
                    },
                );
            }
            tx.state = TxState::Committing;
            tx.checkpoint = previous.map(|p| p.revision).unwrap_or(0) + 1;
            tx.reason = format!(
                "every participant prepared ({})",
                protocol::plural(tx.participants.len(), "vote")
            );
            let checkpoint = CheckpointRecord {
                revision: tx.checkpoint,
                environment: tx.environment.clone(),
                versions,
                transaction: tx.id.clone(),
                kind: tx.kind,
                description: planner::checkpoint_description(tx),
                untested: tx.forced,
                committed_ms: self.now(),
            };
            let mut batch = Batch::default();
            Tables::put_transaction(&mut batch, tx);
            Tables::put_checkpoint(&mut batch, &checkpoint);
            Tables::put_seen(&mut batch, &checkpoint);
            self.quarantine_reverted(&mut s, tx, &mut batch)?;
            let mut events = events;
            events.push(protocol::event(
                tx,
                pb::EventKind::DecidedCommit,
                None,
                tx.reason.clone(),
            ));
            let mut recorded = protocol::event(
                tx,
                pb::EventKind::CheckpointRecorded,
                None,
                format!(
                    "checkpoint {}: {}",
                    checkpoint.revision, checkpoint.description
                ),
            );
            recorded.revision = checkpoint.revision;
            events.push(recorded);
            s.head.insert(tx.environment.clone(), checkpoint.clone());
            // Durability point: COMMIT forces an fsync before any Commit is sent.
            (
                self.inner.journal.append(batch, events, Durable::Now),
                checkpoint,
            )
        };
        pending.await?;
        let mut s = self.state();
        let newer = s
            .live
            .get(&tx.environment)
            .is_some_and(|l| l.revision > checkpoint.revision);
        if !newer {
            s.live.insert(tx.environment.clone(), checkpoint);
        }
        if let Some(active) = s.active.get_mut(&tx.id) {
            active.record = tx.clone();
        }
        Ok(())
    }

    /// Marks the releases a committing revert pulls as quarantined (same batch as the
    /// decision, so they are quarantined exactly when the revert is decided).
    fn quarantine_reverted(&self, s: &mut State, tx: &TxRecord, batch: &mut Batch) -> Result<()> {
        if tx.kind != TxKind::Revert {
            return Ok(());
        }
        for release_id in &tx.reverts {
            let Some(mut release) = self.inner.tables.transaction(release_id)? else {
                continue;
            };
            release.quarantined = true;
            Tables::put_transaction(batch, &release);
            for p in release
                .participants
                .iter()
                .filter(|p| p.action != crate::model::Action::Unchanged)
            {
                let record = QuarantineRecord {
                    release: release.id.clone(),
                    revert: tx.id.clone(),
                };
                Tables::put_quarantine(batch, &tx.environment, &p.project, &p.to_version, &record);
                s.quarantine
                    .entry(tx.environment.clone())
                    .or_default()
                    .insert((p.project.clone(), p.to_version.clone()), record);
            }
        }
        Ok(())
    }

    /// Records the end of `tx` (durably), frees its projects and starts the transactions
    /// that were waiting for them.
    pub(crate) async fn finish(&self, tx: &TxRecord, events: Vec<pb::Event>) -> Result<()> {
        let mut batch = Batch::default();
        Tables::put_transaction(&mut batch, tx);
        // Durable before readers see the end. With other transactions in flight it rides
        // on their next fsync; alone, nobody would share one, so it forces its own.
        let durability = if self.active_count() > 1 {
            Durable::Soon
        } else {
            Durable::Now
        };
        let pending = self.inner.journal.append(batch, events, durability);
        pending.await?;
        let mut s = self.state();
        s.active.remove(&tx.id);
        let started = s.queue.finish(&tx.id);
        for id in started {
            let go = self.replan_for_start(&s, &id);
            let Some(active) = s.active.get_mut(&id) else {
                continue;
            };
            if let Some(start) = active.start.take() {
                let _ = start.send(go);
            }
        }
        // Still-waiting transactions may now wait for someone else: refresh their
        // reasons (only the queue's, not every active transaction's).
        for (ordinal, id, blocked) in s.queue.waiting() {
            let reason = blocked.map(|b| b.explain()).unwrap_or_default();
            if let Some(a) = s.active.get_mut(&id)
                && a.record.ordinal == ordinal
            {
                a.record.reason = reason;
            }
        }
        Ok(())
    }

    /// Re-plans a queued transaction when its turn comes: the live state may have moved
    /// while it waited, so from-versions are refreshed and the rules checked again.
    fn replan_for_start(&self, s: &State, id: &TxId) -> Start {
        let Some(active) = s.active.get(id) else {
            return Start::Refuse("transaction vanished from memory".into());
        };
        let record = &active.record;
        match self.plan_locked(s, &record.environment, &record.request) {
            Err(e) => Start::Refuse(format!("while it was queued the state changed: {e}")),
            Ok(plan) if !plan.allowed() => Start::Refuse(format!("while it was queued the state changed; {}", plan.refusal())),
            Ok(plan) if plan.projects() != record.projects().cloned().collect() => Start::Refuse(
                "while it was queued the state changed so that it would need other projects than the ones it queued for; create it again".into(),
            ),
            Ok(plan) => Start::Go(plan.participants),
        }
    }
}

/// A data directory written before the `seen_versions` table existed has it empty:
/// fills it from the environment's checkpoints once, so that a move back to a version
/// live before the upgrade is still seen as one. (The newest checkpoint's versions are
/// always in the table once it is filled, so their absence is the sign.)
fn backfill_seen(tables: &Tables, newest: &CheckpointRecord) -> Result<()> {
    let Some((project, entry)) = newest.versions.iter().next() else {
        return Ok(());
    };
    if tables.was_live(&newest.environment, project, &entry.version)? {
        return Ok(());
    }
    let mut batch = Batch::default();
    for cp in tables.checkpoints(&newest.environment)? {
        Tables::put_seen(&mut batch, &cp);
    }
    tables.kv().write(batch, lockstep_store::Durability::Sync)?;
    tracing::info!(
        environment = %newest.environment,
        "filled the seen_versions table from the checkpoints (data written before it existed)"
    );
    Ok(())
}

/// If registering `project` would close a cycle, the cycle as `A -> B -> A`.
fn cycle_through(
    projects: &BTreeMap<ProjectName, ProjectRecord>,
    project: &ProjectRecord,
) -> Option<String> {
    fn reaches(
        projects: &BTreeMap<ProjectName, ProjectRecord>,
        from: &ProjectName,
        target: &ProjectName,
        path: &mut Vec<ProjectName>,
    ) -> bool {
        if path.len() > projects.len() + 1 {
            return false;
        }
        path.push(from.clone());
        if from == target {
            return true;
        }
        for child in projects
            .get(from)
            .map(|p| p.requires.as_slice())
            .unwrap_or(&[])
        {
            if reaches(projects, child, target, path) {
                return true;
            }
        }
        path.pop();
        false
    }
    for child in &project.requires {
        let mut path = vec![project.name.clone()];
        if reaches(projects, child, &project.name, &mut path) {
            return Some(
                path.iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" -> "),
            );
        }
    }
    None
}

fn describe_request(tx: &TxRecord) -> String {
    let changes: Vec<String> = tx
        .participants
        .iter()
        .map(|p| format!("{}={}", p.project, p.to_version))
        .collect();
    format!(
        "{}: {}",
        planner::checkpoint_description(tx),
        changes.join(" ")
    )
}

/// [`History`] over the tables, for one environment.
struct StoredHistory<'a> {
    tables: &'a Tables,
    environment: &'a Environment,
}

impl History for StoredHistory<'_> {
    fn newest_checkpoint_where(
        &self,
        matches: &mut dyn FnMut(&CheckpointRecord) -> bool,
    ) -> Result<Option<CheckpointRecord>> {
        Ok(self
            .tables
            .newest_checkpoint_where(self.environment, matches)?)
    }

    fn was_live(&self, project: &ProjectName, version: &Version) -> Result<bool> {
        Ok(self.tables.was_live(self.environment, project, version)?)
    }

    fn checkpoint(&self, revision: u64) -> Result<Option<CheckpointRecord>> {
        Ok(self.tables.checkpoint(self.environment, revision)?)
    }

    fn transaction(&self, id: &TxId) -> Result<Option<TxRecord>> {
        Ok(self.tables.transaction(id)?)
    }

    fn committed_after(&self, ordinal: u64) -> Result<Vec<TxRecord>> {
        Ok(self
            .tables
            .transactions_after(ordinal)?
            .into_iter()
            .filter(|t| &t.environment == self.environment && t.state == TxState::Committed)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lockstep::names::{Environment, ProjectName, TxId, Version};
    use lockstep_store::{Batch, Durability, Kv, MemKv};

    use super::{Config, Coordinator};
    use crate::{
        model::{CheckpointRecord, LiveEntry, ProjectRecord, TxKind},
        network::TcpNet,
        tables::Tables,
    };

    fn checkpoint(revision: u64, version: &str) -> CheckpointRecord {
        CheckpointRecord {
            revision,
            environment: Environment::default(),
            versions: [(
                ProjectName::parse("project", "A").unwrap(),
                LiveEntry {
                    version: Version::parse("version", version).unwrap(),
                    schema: None,
                },
            )]
            .into(),
            transaction: TxId::parse("id", &format!("T{revision}")).unwrap(),
            kind: TxKind::Release,
            description: format!("release T{revision}"),
            untested: false,
            committed_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_store_written_before_seen_versions_existed_is_filled_at_start() {
        let kv = MemKv::new();
        let mut batch = Batch::default();
        Tables::put_project(
            &mut batch,
            &ProjectRecord {
                name: ProjectName::parse("name", "A").unwrap(),
                environment: Environment::default(),
                endpoint: "http://127.0.0.1:1".into(),
                requires: Vec::new(),
            },
        );
        // Two checkpoints, as an older coordinator wrote them: no seen_versions rows.
        Tables::put_checkpoint(&mut batch, &checkpoint(1, "T1A"));
        Tables::put_checkpoint(&mut batch, &checkpoint(2, "T2A"));
        kv.write(batch, Durability::Sync).unwrap();

        let _c = Coordinator::open(
            Arc::new(kv.clone()),
            Arc::new(TcpNet::default()),
            Config::default(),
        )
        .unwrap();
        let tables = Tables::new(Arc::new(kv) as Arc<dyn Kv>);
        let a = ProjectName::parse("project", "A").unwrap();
        for v in ["T1A", "T2A"] {
            assert!(
                tables
                    .was_live(
                        &Environment::default(),
                        &a,
                        &Version::parse("version", v).unwrap()
                    )
                    .unwrap(),
                "{v} was live before the upgrade and must count as seen"
            );
        }
    }
}
