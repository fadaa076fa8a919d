//! The façade the gRPC edge calls: it opens the store, the journal and the feed, wires
//! the state owner ([`Registry`]) to the participant network, recovers, and offers one
//! method per operation. Nothing below it imports it.

use std::{sync::Arc, time::Duration};

use lockstep::{
    names::{Environment, ProjectName, TxId},
    orders::Decision,
    pb,
    retry::Backoff,
};
use lockstep_store::Kv;

use crate::{
    driver::Resolved,
    error::{CoordinatorError, Result},
    feed::{Feed, Watch, WatchFilter},
    incarnation::{self, MakeIncarnation},
    journal::{Clock, CommitDelay, Journal, JournalStats, WriterMode},
    model::{
        CheckpointRecord, CreateSpec, DriftRecord, ProjectRecord, Resolution, TokenRecord, TxRecord,
    },
    network::{GrpcParticipants, ParticipantNet},
    notify::{self, Notifier},
    observe::{self, Observation},
    ports::{Observed, Participants, Probe},
    registry::{
        Registry, Settings,
        admit::{Authorize, Created},
        apply::{Applied, Runs},
        audit::AuditPage,
        listing::Filter,
        projects::ProjectChange,
        reads::{Live, Page},
    },
    stall::{self, Thresholds},
    tables::Tables,
};

/// Tunables of a coordinator; defaults suit production.
#[derive(Clone)]
pub struct Config {
    /// Phase 1 deadline when a request gives none.
    pub default_prepare_timeout: Duration,
    /// Retry schedule of every call to a participant.
    pub backoff: Backoff,
    /// Timeout of one Commit or Abort call.
    pub delivery_timeout: Duration,
    /// Time source for records and events.
    pub clock: Clock,
    /// How the journal's syncer runs (a thread; a task in simulation).
    pub writer: WriterMode,
    /// Makes the incarnation id of a new data directory.
    pub new_incarnation: MakeIncarnation,
    /// Webhook delivery tunables.
    pub notify: notify::Settings,
    /// When a waiting transaction counts as stalled (`None`: never looked for).
    pub stalled_after: Option<Thresholds>,
    /// Who answers the http verify steps' requests (the simulation answers them itself).
    pub probe: Arc<dyn Probe>,
    /// How often to ask every agent what it runs (`None`: never; see [`crate::drift`]).
    pub drift_check: Option<Duration>,
    /// The term every order carries: the leader's on etcd, 0 for a single coordinator.
    pub term: u64,
    /// The etcd store, when the tables live there (for `cluster status`).
    pub etcd: Option<Arc<lockstep_store::EtcdKv>>,
    /// How long a transaction's steps may wait under load to share fsyncs (off: zero).
    pub commit_delay: CommitDelay,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            default_prepare_timeout: Duration::from_secs(60),
            backoff: Backoff::default(),
            delivery_timeout: Duration::from_secs(30),
            clock: Arc::new(lockstep::wire::now_millis),
            writer: WriterMode::Thread,
            new_incarnation: Arc::new(incarnation::random),
            notify: notify::Settings::default(),
            stalled_after: None,
            probe: crate::probe::HttpProbe::shared(),
            drift_check: None,
            term: 0,
            etcd: None,
            commit_delay: CommitDelay::default(),
        }
    }
}

/// Handle to the coordinator. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    registry: Registry,
    journal: Journal,
    feed: Feed,
    notifier: Notifier,
    incarnation: String,
    /// The term its orders and decisions carry (see [`Config::term`]).
    term: u64,
    clock: Clock,
    etcd: Option<Arc<lockstep_store::EtcdKv>>,
}

/// What the registry needs of `config`.
fn settings(config: &Config) -> Settings {
    Settings {
        default_prepare_timeout: config.default_prepare_timeout,
        backoff: config.backoff,
        clock: config.clock.clone(),
        probe: config.probe.clone(),
    }
}

impl Coordinator {
    /// Opens the coordinator on `kv` (opened with [`crate::tables::ALL`]), reaching
    /// participants through `net`, recovers every unfinished transaction and starts
    /// their drivers. Must run inside a tokio runtime.
    pub fn open(kv: Arc<dyn Kv>, net: Arc<dyn ParticipantNet>, config: Config) -> Result<Self> {
        let tables = Tables::new(kv.clone());
        let incarnation = incarnation::load_or_create(&tables, &config.new_incarnation)?;
        let stamp = (incarnation, config.term);
        let net = GrpcParticipants::new(net, config.delivery_timeout, stamp);
        Self::open_with(kv, Arc::new(net), config)
    }

    /// [`Coordinator::open`] with any participant network.
    pub fn open_with(kv: Arc<dyn Kv>, net: Arc<dyn Participants>, config: Config) -> Result<Self> {
        let tables = Tables::new(kv);
        let incarnation = incarnation::load_or_create(&tables, &config.new_incarnation)?;
        let feed = Feed::new(tables.clone())?;
        let journal = Journal::start(
            tables.clone(),
            feed.clone(),
            config.clock.clone(),
            config.writer,
            config.commit_delay,
        )?;
        let (j, f) = (journal.clone(), feed.clone());
        let registry = Registry::new(tables.clone(), j.clone(), f.clone(), net, settings(&config));
        crate::recovery::recover(&registry, config.backoff)?;
        registry.resume_after_commit()?;
        let notifier = Notifier::start(tables, j.clone(), f, &incarnation, config.notify)?;
        if let Some(every) = config.drift_check {
            let (r, c) = (registry.clone(), config.clock.clone());
            tokio::spawn(crate::drift::watch(r, j.clone(), every, c));
        }
        if let Some(thresholds) = config.stalled_after {
            let c = config.clock.clone();
            tokio::spawn(stall::watch(registry.clone(), j, thresholds, c));
        }
        Ok(Self {
            registry,
            journal,
            feed,
            notifier,
            incarnation,
            term: config.term,
            clock: config.clock,
            etcd: config.etcd,
        })
    }

    /// A coordinator that only reads `kv` as it is now: a standby's view of the tables
    /// the leader writes. Nothing is recovered and nothing runs (no driver, no webhook
    /// delivery, no watch); every write is refused ([`lockstep_store::ReadOnlyKv`]),
    /// so a view can never act for the leader. Build one per read: it is not kept up
    /// to date.
    pub fn read_only(
        kv: Arc<dyn Kv>,
        net: Arc<dyn ParticipantNet>,
        config: Config,
    ) -> Result<Self> {
        let tables = Tables::new(Arc::new(lockstep_store::ReadOnlyKv::new(kv)));
        let incarnation = tables.incarnation()?.ok_or_else(|| {
            CoordinatorError::Refused("no coordinator has led on this store yet".into())
        })?;
        let feed = Feed::new(tables.clone())?;
        let (clock, writer) = (config.clock.clone(), WriterMode::Task);
        let delay = CommitDelay::default();
        let journal = Journal::start(tables.clone(), feed.clone(), clock, writer, delay)?;
        let net = GrpcParticipants::new(net, config.delivery_timeout, (incarnation.clone(), 0));
        let registry = Registry::new(
            tables.clone(),
            journal.clone(),
            feed.clone(),
            Arc::new(net),
            settings(&config),
        );
        registry.load()?;
        tables
            .active_transactions()?
            .into_iter()
            .for_each(|t| registry.show_unfinished(t));
        let notify = notify::Settings {
            deliver: false,
            ..config.notify
        };
        let notifier =
            Notifier::start(tables, journal.clone(), feed.clone(), &incarnation, notify)?;
        let etcd = config.etcd;
        let clock = config.clock;
        Ok(Self {
            registry,
            journal,
            feed,
            notifier,
            incarnation,
            term: config.term,
            clock,
            etcd,
        })
    }

    /// This data directory's incarnation id (what participants record with Prepare).
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// The term every order and decision answer carries: the leader's on etcd, 0 for a
    /// single coordinator.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Resolves once every append made so far is durable: a planned stop waits for it,
    /// so that nothing it already showed is lost to its successor.
    pub fn settled(&self) -> impl Future<Output = Result<()>> + Send + use<> {
        self.journal.settled()
    }

    /// Resolves when the journal has failed: the process must exit and recover.
    pub async fn failed(&self) -> String {
        self.journal.failed().await
    }

    /// Group-commit counters.
    pub fn journal_stats(&self) -> JournalStats {
        self.journal.stats()
    }

    /// The histograms the journal and the transactions' writes move (for `/metrics`).
    pub fn journal_timings(&self) -> &crate::timings::Timings {
        self.journal.timings()
    }

    /// The state owner, for calls that need nothing else (environments).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The webhook subscriptions and their delivery.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// The event feed watchers read.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Events for a watcher, from `from` on (see [`Feed::watch`]).
    pub fn watch(&self, filter: WatchFilter, from: u64) -> Watch {
        let registry = self.registry.clone();
        let unfinished = Box::new(move |id: &TxId| registry.is_unfinished(id));
        self.feed.watch(filter, from, unfinished)
    }

    /// Registers a project (see [`Registry::register_project`]). `actor` is named on
    /// the event. When `checked`, a new project's endpoint must answer as it first (a
    /// registered one is refused or unchanged without asking).
    pub async fn register_project(
        &self,
        project: ProjectRecord,
        actor: &str,
        checked: bool,
    ) -> Result<(ProjectRecord, bool)> {
        let (env, name) = (&project.environment, &project.name);
        let mut runs = None;
        if checked && self.registry.registered(env, name).is_none() {
            runs = Some(self.check_endpoint(env, name, &project.endpoint).await?);
        }
        let runs = runs.as_ref().map(|seen| seen.live_version.as_str());
        self.registry.register_project(project, actor, runs).await
    }

    /// Changes only what `change` gives of a registered project (see
    /// [`Registry::update_project`]). When `checked`, a new endpoint must answer as
    /// the project first.
    pub async fn update_project(
        &self,
        change: ProjectChange,
        actor: &str,
        checked: bool,
    ) -> Result<(ProjectRecord, bool)> {
        if let Some(endpoint) = change.endpoint.as_ref().filter(|_| checked) {
            let (env, name) = (&change.environment, &change.name);
            let now = self.registry.registered(env, name);
            if now.is_some_and(|p| &p.endpoint != endpoint) {
                self.check_endpoint(env, name, endpoint).await?;
            }
        }
        self.registry.update_project(change, actor).await
    }

    /// Removes a project (see [`Registry::remove_project`]).
    pub async fn remove_project(
        &self,
        env: &Environment,
        name: &ProjectName,
        actor: &str,
    ) -> Result<ProjectRecord> {
        self.registry.remove_project(env, name, actor).await
    }

    /// Applies a pipeline file `(text, dry_run, checked)` (see
    /// [`Registry::apply_pipeline`]); when `checked` (and not a dry run), every
    /// endpoint it registers or moves is asked first, and one that does not answer as
    /// its project refuses the file.
    pub async fn apply_pipeline(
        &self,
        (text, dry_run, checked): (&str, bool, bool),
        actor: &str,
    ) -> Result<Applied> {
        let mut runs = Runs::new();
        if checked && !dry_run {
            let asked = self.registry.pipeline_endpoints(text)?;
            let net = self.registry.net().as_ref();
            let checks = asked
                .iter()
                .map(|p| observe::check_endpoint(net, &p.environment, &p.name, &p.endpoint));
            let answers = futures::future::join_all(checks).await;
            for (p, seen) in asked.into_iter().zip(answers) {
                runs.insert((p.environment, p.name), seen?.live_version);
            }
        }
        self.registry
            .apply_pipeline((text, dry_run), &runs, actor)
            .await
    }

    /// The etcd cluster (`None`: the tables are in RocksDB, one instance).
    pub fn cluster(&self) -> Result<Option<lockstep_store::etcd_lead::ClusterView>> {
        match &self.etcd {
            Some(kv) => Ok(Some(kv.cluster()?)),
            None => Ok(None),
        }
    }

    /// Refuses `endpoint` unless its agent answers as `name` in `env`.
    async fn check_endpoint(
        &self,
        env: &Environment,
        name: &ProjectName,
        endpoint: &str,
    ) -> Result<Observed> {
        observe::check_endpoint(self.registry.net().as_ref(), env, name, endpoint).await
    }

    /// What every agent of `env` that `shown` keeps runs now, beside the checkpoint.
    pub async fn observe(
        &self,
        env: &Environment,
        shown: &(dyn Fn(&ProjectName) -> bool + Sync),
    ) -> Vec<Observation> {
        let now = (self.clock)();
        observe::observe(&self.registry, env, shown, now).await
    }

    /// The drift of `env` the drift check found and has not seen clear.
    pub fn drifts(&self, env: &Environment) -> Result<Vec<DriftRecord>> {
        let mut all = self.registry.tables().drifts()?;
        all.retain(|d| &d.environment == env);
        Ok(all)
    }

    /// Projects of `env`, sorted by name.
    pub fn projects(&self, env: &Environment) -> Vec<ProjectRecord> {
        self.registry.projects(env)
    }

    /// Plans a transaction and, unless it is a dry run, accepts it durably and queues
    /// it. A dry run writes nothing and asks each participant's read-only Preview what
    /// it would run, or why it would refuse.
    /// `authorize` may refuse the final plan (see [`Registry::admit`]).
    pub async fn create(&self, spec: CreateSpec, authorize: Authorize<'_>) -> Result<Created> {
        if !spec.dry_run {
            return self.registry.admit(spec, authorize).await;
        }
        let (mut plan, waits_for) = self.registry.plan_only(&spec, authorize)?;
        let dry_run = TxId::parse("id", "dry-run").expect("a valid name");
        let id = spec.id.as_ref().unwrap_or(&dry_run);
        let net = self.registry.net().as_ref();
        crate::preview::ask_participants(net, id, &spec.environment, &waits_for, &mut plan).await;
        Ok(Created {
            transaction: None,
            plan,
            waits_for,
            created: false,
            first_event_seq: 0,
        })
    }

    /// A transaction by id (memory for unfinished ones, storage otherwise).
    pub fn get(&self, id: &TxId) -> Result<TxRecord> {
        self.registry.get(id)
    }

    /// One page of transactions, newest first, created before ordinal `before`, of
    /// those `filter` keeps (what the caller asked for and may read); unfinished ones as
    /// they are now.
    pub fn list(
        &self,
        filter: &Filter<'_>,
        size: usize,
        before: Option<u64>,
        active_only: bool,
    ) -> Result<Page<TxRecord>> {
        self.registry.list(filter, size, before, active_only)
    }

    /// Whether `id` is a transaction that has not ended.
    pub fn is_unfinished(&self, id: &TxId) -> bool {
        self.registry.is_unfinished(id)
    }

    /// How many transactions are unfinished.
    pub fn active_count(&self) -> usize {
        self.registry.active_count()
    }

    /// Aborts a transaction that has not decided yet, on `actor`'s request.
    pub async fn abort(&self, id: &TxId, reason: String, actor: String) -> Result<TxRecord> {
        self.registry.abort(id, reason, actor).await
    }

    /// Records by hand what a participant in phase 2 did (after sending it the decision
    /// once more); refused unless it needs resolution or cannot be reached.
    pub async fn resolve(
        &self,
        id: &TxId,
        project: ProjectName,
        resolution: Resolution,
        dry_run: bool,
    ) -> Result<(TxRecord, Resolved)> {
        self.registry
            .resolve(id, project, resolution, dry_run)
            .await
    }

    /// A test runner's report, or a person's approval or rejection, for a transaction
    /// in VERIFYING; answered once durable.
    pub async fn verify(&self, id: &TxId, call: crate::driver::VerifyCall) -> Result<TxRecord> {
        self.registry.verify(id, call).await
    }

    /// Ends every backoff wait of a transaction in phase 2 now.
    pub async fn retry(&self, id: &TxId, actor: String) -> Result<TxRecord> {
        self.registry.retry(id, actor).await
    }

    /// The live state of `env`.
    pub fn live(&self, env: &Environment) -> Live {
        self.registry.live(env)
    }

    /// One page of the durable checkpoints of `env`, oldest first, after `after`.
    pub fn history(
        &self,
        env: &Environment,
        after: u64,
        size: usize,
    ) -> Result<Page<CheckpointRecord>> {
        self.registry.history(env, after, size)
    }

    /// The durable decision for a participant's part (presumed abort for unknown ids and
    /// for a transaction that is not the asker's), in its wave's turn.
    pub fn decision(&self, id: &TxId, asker: crate::txn::Asker<'_>) -> Result<Decision> {
        self.registry.decision(id, asker)
    }

    /// Records a refused call (its only write).
    pub async fn deny(&self, event: pb::Event) -> Result<()> {
        self.registry.deny(event).await
    }

    /// Records a token made (see [`Registry::record_token`]).
    pub async fn record_token(&self, token: &TokenRecord, event: pb::Event) -> Result<()> {
        self.registry.record_token(token, event).await
    }

    /// Revokes a token by id; `false` when it was revoked already.
    pub async fn revoke_token(&self, id: &str, event: pb::Event) -> Result<bool> {
        self.registry.revoke_token(id, event).await
    }

    /// When token `id` expires (ms since the epoch), if it was made here.
    pub fn token_expires_ms(&self, id: &str) -> Result<Option<u64>> {
        let record = self.registry.tables().token(id)?;
        Ok(record.map(|t| t.expires_ms))
    }

    /// Ids of revoked tokens.
    pub fn revoked_tokens(&self) -> Result<Vec<String>> {
        self.registry.revoked_tokens()
    }

    /// A page of the audit log from `since` on.
    pub fn audit(&self, since: u64, size: usize) -> Result<AuditPage> {
        self.registry.audit(since, size)
    }

    /// The secret tokens are signed with (made and synced on first use).
    pub fn token_secret(&self, make: impl FnOnce() -> Result<Vec<u8>, String>) -> Result<Vec<u8>> {
        Ok(crate::keys::token_secret(self.registry.tables(), make)?)
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

    /// A store whose reads of transaction ids fail once `failing` is set.
    #[derive(Clone, Default)]
    struct ReadsFail {
        kv: MemKv,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Kv for ReadsFail {
        fn get(
            &self,
            table: &'static str,
            key: &[u8],
        ) -> Result<Option<Vec<u8>>, lockstep_store::StoreError> {
            let failing = self.failing.load(std::sync::atomic::Ordering::SeqCst);
            if failing && table == crate::tables::TX_IDS {
                return Err(lockstep_store::StoreError::Down);
            }
            self.kv.get(table, key)
        }

        fn scan(
            &self,
            table: &'static str,
            from: &[u8],
            to: Option<&[u8]>,
            order: lockstep_store::Order,
            limit: usize,
        ) -> Result<Vec<lockstep_store::Entry>, lockstep_store::StoreError> {
            self.kv.scan(table, from, to, order, limit)
        }

        fn write(&self, batch: Batch, d: Durability) -> Result<(), lockstep_store::StoreError> {
            self.kv.write(batch, d)
        }

        fn sync(&self) -> Result<(), lockstep_store::StoreError> {
            self.kv.sync()
        }
    }

    /// Left from stop 56: a store read that failed while a revert's COMMIT decision was
    /// made (it reads the releases it quarantines) ended the transaction's driver, and
    /// the process ran on with the revert undecided and no driver until a restart. A
    /// decision that cannot be written stops the process, as a failed write does.
    #[tokio::test]
    async fn a_read_failing_while_a_revert_is_decided_stops_the_process() {
        use crate::{model::TxState, ports::TxJournal};
        let kv = ReadsFail::default();
        let net = Arc::new(TcpNet::default());
        let c = Coordinator::open(Arc::new(kv.clone()), net, Config::default()).unwrap();
        let mut revert = crate::txn::tests::t4(TxState::Preparing);
        revert.kind = TxKind::Revert;
        revert.reverts = vec![TxId::parse("id", "R1").unwrap()];
        kv.failing.store(true, std::sync::atomic::Ordering::SeqCst);
        let decided = TxJournal::decide_commit(&c.registry, &revert, Vec::new()).await;
        assert!(decided.is_err(), "decided over a failed read");
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), c.failed()).await;
        assert!(
            stopped.is_ok(),
            "the process runs on after a decision it could not make"
        );
    }

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
                live_from: 0,
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
