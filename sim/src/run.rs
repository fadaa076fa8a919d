//! One seeded run: a coordinator and participants A (requires B and C), B, C and D on
//! turmoil's simulated network, clients issuing releases, reverts, rollbacks, aborts and
//! duplicate requests, a "duplicator" re-sending protocol messages out of order, and a
//! fault schedule (crashes, restarts, partitions, held links, latency) drawn from the
//! seed. After the faults heal, the run waits for every transaction to end, then hands
//! what is left to the checker.
//!
//! Stores are the in-memory twins with crash semantics: a crash drops what was not
//! synced. Each participant's deployer writes a "disk" that survives crashes.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use lockstep::pb::{
    self, coordinator_client::CoordinatorClient, participant_client::ParticipantClient,
};
use lockstep::retry::Backoff;
use lockstep_coordinator::{
    Config as CoordinatorConfig, Coordinator,
    journal::{CommitDelay, WriterMode},
    tables::Tables,
};
use lockstep_participant::{
    Participant,
    inquiry::GrpcDecisions,
    ledger::{Ledger, Phase},
    participant::Decisions,
};
use lockstep_store::{Kv, MemKv};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use tonic::transport::Channel;

use crate::{
    calls::{COORDINATOR, COORDINATOR_PORT, bounded, coordinator_client, unknown, url},
    checker::{self, ClientRecord, Observation, ParticipantView, Told, Violation, member},
    deployer::{Disk, SimDeployer},
    net,
    stages::{self, PROD},
};

/// The projects, in each environment: A requires B and C; D stands alone.
pub const PROJECTS: [&str; 4] = ["A", "B", "C", "D"];
/// The environments: `prod` comes after the default one (see [`crate::stages`]).
pub const ENVIRONMENTS: [&str; 2] = [lockstep::DEFAULT_ENVIRONMENT, PROD];
const PARTICIPANT_PORT: u16 = 7711;
/// Phase 1 deadline of every simulated transaction.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Config {
    /// Everything random in the run derives from it.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Calls per client.
    pub ops_per_client: usize,
    /// Faults happen in `[0, fault_window)`; everything is healed at its end.
    pub fault_window: Duration,
    /// After healing, every transaction must be terminal within this bound.
    pub settle_within: Duration,
    /// Inject faults at all.
    pub faults: bool,
    /// Break the participants on purpose (to show the checker catches it).
    pub sabotage: bool,
    /// Two coordinator instances on the simulated etcd (see [`crate::ha`]) instead of
    /// one on its own disk: leaders crash, pause past their lease and are deposed.
    pub ha: bool,
    /// With `ha`, let a deposed leader write (no fence), to show the checker catches
    /// two leaders.
    pub unfenced: bool,
}

impl Config {
    /// The shape `cargo test` and the soak command use.
    pub fn for_seed(seed: u64) -> Self {
        Self {
            seed,
            clients: 2,
            ops_per_client: 6,
            fault_window: Duration::from_secs(8),
            settle_within: Duration::from_secs(60),
            faults: true,
            sabotage: false,
            // One seed in four runs two coordinators on etcd.
            ha: seed % 4 == 0,
            unfenced: false,
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Broken rules (empty: the run is clean).
    pub violations: Vec<Violation>,
    /// Hash of the event log (same seed, same hash).
    pub event_log_hash: u64,
    /// Transactions created.
    pub transactions: usize,
    /// Of which committed.
    pub committed: usize,
    /// Faults injected.
    pub faults: usize,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// Everything the checker read (for `--verbose` replays).
    pub observation: Observation,
    /// Leaders elected on etcd (0 with one coordinator): more than one is a failover.
    pub terms: i64,
}

/// Every participant: (environment, project).
fn participants() -> impl Iterator<Item = (&'static str, &'static str)> {
    ENVIRONMENTS
        .iter()
        .flat_map(|e| PROJECTS.iter().map(move |p| (*e, *p)))
}

/// The host of a participant ([`member`] name).
fn host(member: &str) -> String {
    format!("p-{member}")
}

/// The coordinator's hosts: one, or both instances on etcd.
fn coordinators(ha: bool) -> Vec<String> {
    match ha {
        true => crate::ha::INSTANCES.map(String::from).to_vec(),
        false => vec![COORDINATOR.to_string()],
    }
}

/// Every host faults pick from: the coordinator's (first) and each participant's.
fn hosts(ha: bool) -> Vec<String> {
    let participants = participants().map(|(e, p)| host(&member(e, p)));
    coordinators(ha).into_iter().chain(participants).collect()
}

/// Every host a host has links with: on etcd, the front door and etcd too.
fn linked(ha: bool) -> Vec<String> {
    let mut all = hosts(ha);
    if ha {
        all.extend([COORDINATOR.to_string(), crate::lease::ETCD.to_string()]);
    }
    all
}

/// The participant living on `host`.
fn participant_on(h: &str) -> Option<(&'static str, &'static str)> {
    participants().find(|(e, p)| host(&member(e, p)) == h)
}

/// The simulated coordinators' clock at the start of a run (milliseconds since the
/// Unix epoch); it moves with simulated time.
const CLOCK_EPOCH_MS: u64 = 1_700_000_000_000;

/// How the simulation's coordinators run (an instance on etcd adds its term).
pub(crate) fn coordinator_config(seed: u64) -> CoordinatorConfig {
    CoordinatorConfig {
        default_prepare_timeout: PREPARE_TIMEOUT,
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(500),
        },
        delivery_timeout: Duration::from_secs(1),
        clock: Arc::new(|| {
            CLOCK_EPOCH_MS
                + turmoil::sim_elapsed()
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0)
        }),
        writer: WriterMode::Task,
        // Fixed, so a seed replays exactly; a restart keeps its data and so its id.
        new_incarnation: Arc::new(|| "sim-coordinator".to_string()),
        // No webhooks, no stall watch, no drift check: the simulation checks the
        // protocol.
        notify: Default::default(),
        drift_check: None,
        // One coordinator: term 0 (an instance on etcd sets its own).
        term: 0,
        etcd: None,
        stalled_after: None,
        probe: stages::SimProbe::shared(seed),
        // One seed in three holds steps back under load, so crashes land while steps
        // wait for a shared fsync too.
        commit_delay: commit_delay(seed),
    }
}

/// The group commit delay of `seed`'s run: off, or 20 ms from two transactions in flight.
fn commit_delay(seed: u64) -> CommitDelay {
    match seed % 3 {
        1 => CommitDelay {
            delay: Duration::from_millis(20),
            siblings: 1,
        },
        _ => CommitDelay::default(),
    }
}

/// Shared memory of the run (turmoil runs every host on one thread).
#[derive(Default)]
struct Shared {
    records: Vec<ClientRecord>,
    /// Releases seen committed, for reverts.
    committed: Vec<String>,
    /// Transactions created by clients, for aborts and the duplicator.
    created: Vec<String>,
    /// Registration done.
    ready: bool,
    /// What each release asked for: id -> project -> version.
    asked: BTreeMap<String, BTreeMap<String, String>>,
}

type SharedRef = Arc<Mutex<Shared>>;

/// Where each participant ([`member`] name) listens now (a move changes it), and the
/// participants (environment, project) that moved and are not registered at their new
/// address yet.
#[derive(Default)]
struct Moves {
    ports: BTreeMap<String, u16>,
    unregistered: Vec<(&'static str, &'static str)>,
}

type MovesRef = Arc<Mutex<Moves>>;

fn moves(m: &MovesRef) -> std::sync::MutexGuard<'_, Moves> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The port the agent of participant `member` listens on now.
fn port_of(m: &MovesRef, member: &str) -> u16 {
    moves(m)
        .ports
        .get(member)
        .copied()
        .unwrap_or(PARTICIPANT_PORT)
}

fn lock(s: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The one coordinator, on its own disk (`kv`, crashed with its host).
fn coordinator_host(sim: &mut turmoil::Sim<'_>, kv: &MemKv, seed: u64) {
    let kv = kv.clone();
    sim.host(COORDINATOR, move || {
        let kv = kv.clone();
        async move {
            kv.restart();
            let coordinator = Coordinator::open(
                Arc::new(kv),
                Arc::new(net::SimNet::default()),
                coordinator_config(seed),
            )
            .map_err(|e| e.to_string())?;
            lockstep_coordinator::server::serve_incoming(
                net::incoming(COORDINATOR_PORT),
                coordinator,
                lockstep_coordinator::access::Access::insecure(),
                std::future::pending(),
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(())
        }
    });
}

/// Runs one seed and checks it.
pub fn run(cfg: &Config) -> Outcome {
    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .simulation_duration(cfg.fault_window + cfg.settle_within + Duration::from_secs(60))
        .tick_duration(Duration::from_millis(2))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .tcp_capacity(4096)
        .build();

    // On etcd, the instances' shared store (never crashed: etcd's writes are durable).
    let coordinator_kv = MemKv::new();
    let election = crate::lease::Election::default();
    match cfg.ha {
        true => crate::ha::hosts(&mut sim, &coordinator_kv, &election, cfg),
        false => coordinator_host(&mut sim, &coordinator_kv, cfg.seed),
    }
    let mut participant_kvs = BTreeMap::new();
    let mut disks = BTreeMap::new();
    let moved: MovesRef = Arc::default();
    let clock = crate::deployer::EffectClock::default();
    for (environment, project) in participants() {
        let name = member(environment, project);
        let kv = MemKv::new();
        let disk = Disk::on(&clock);
        let moved = moved.clone();
        let sabotage = cfg.sabotage;
        participant_kvs.insert(name.clone(), kv.clone());
        disks.insert(name.clone(), disk.clone());
        sim.host(host(&name), move || {
            let kv = kv.clone();
            let disk = disk.clone();
            let port = port_of(&moved, &name);
            async move {
                kv.restart();
                let decisions = Decisions {
                    source: Arc::new(GrpcDecisions::new(net::channel(&url(
                        COORDINATOR,
                        COORDINATOR_PORT,
                    )))),
                    ask_after: Duration::from_secs(1),
                };
                let participant = Participant::new(
                    project.to_string(),
                    environment.to_string(),
                    SimDeployer::new(disk).sabotaged(sabotage),
                    None,
                    Ledger::open(Arc::new(kv), lockstep_store::WriterMode::Task)
                        .map_err(|e| e.to_string())?,
                    Some(decisions),
                );
                let prepared = participant
                    .recover_local()
                    .await
                    .map_err(|e| e.to_string())?;
                participant.resolve_prepared(prepared);
                lockstep_participant::server::serve_incoming(
                    net::incoming(port),
                    participant,
                    lockstep_participant::access::OnlyCoordinator::insecure(),
                    std::future::pending(),
                )
                .await
                .map_err(|e| e.to_string())?;
                Ok(())
            }
        });
    }

    let shared: SharedRef = Arc::default();
    let end = cfg.fault_window + cfg.settle_within;
    for id in 0..cfg.clients {
        let (shared, moved) = (shared.clone(), moved.clone());
        let cfg = cfg.clone();
        sim.client(format!("client-{id}"), async move {
            workload(id, cfg, shared, moved).await;
            Ok(())
        });
    }
    {
        let (moved, until) = (moved.clone(), cfg.fault_window);
        sim.client("operator", async move {
            operator(moved, until).await;
            Ok(())
        });
    }
    {
        let (seed, quiet_after, disks) = (cfg.seed, cfg.fault_window, disks.clone());
        sim.client("people", async move {
            crate::people::people(seed, quiet_after, disks).await;
            Ok(())
        });
    }
    {
        let shared = shared.clone();
        let cfg = cfg.clone();
        let election = election.clone();
        sim.client("duplicator", async move {
            duplicator(cfg, shared, election).await;
            Ok(())
        });
    }

    let faults = if cfg.faults {
        schedule(cfg)
    } else {
        Vec::new()
    };
    let fault_count = faults.len();
    // Who lost its data, and when (the clock's milliseconds, as events are stamped).
    let mut lost_data: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending = faults.into_iter().peekable();
    let mut kvs: BTreeMap<String, MemKv> = participant_kvs
        .iter()
        .map(|(p, kv)| (host(p), kv.clone()))
        .collect();
    if !cfg.ha {
        kvs.insert(COORDINATOR.to_string(), coordinator_kv.clone());
    }
    // Hosts a fault took down until its Restart; an instance on etcd that stopped by
    // itself (deposed) is started again at once, as a supervisor would.
    let mut down = BTreeSet::new();
    let mut healed = false;
    let readers: Vec<Ledger> = participant_kvs
        .values()
        .map(|kv| {
            Ledger::open(Arc::new(kv.clone()), lockstep_store::WriterMode::Thread)
                .expect("starting a reader")
        })
        .collect();
    let coordinator_tables = Tables::new(Arc::new(coordinator_kv.clone()) as Arc<dyn Kv>);
    loop {
        while let Some((at, _)) = pending.peek() {
            if *at > sim.elapsed() {
                break;
            }
            let (_, fault) = pending.next().expect("peeked");
            if let Fault::LoseData(h) = &fault {
                let member = h.strip_prefix("p-").unwrap_or(h).to_string();
                lost_data.insert(member, CLOCK_EPOCH_MS + sim.elapsed().as_millis() as u64);
            }
            track_down(&mut down, &fault);
            apply(&mut sim, &kvs, &moved, fault, cfg.ha);
        }
        if !healed && sim.elapsed() >= cfg.fault_window && pending.peek().is_none() {
            heal(&mut sim, cfg.ha);
            down.clear();
            healed = true;
        }
        if cfg.ha {
            supervise(&mut sim, &down);
        }
        match sim.step() {
            // Clients are done; the cluster may still be finishing (a participant holding
            // a stale PREPARED asks the coordinator after a while): run until quiet.
            Ok(true) if settled(&coordinator_tables, &readers) => break,
            Ok(_) => {}
            Err(e) => {
                return Outcome {
                    violations: vec![Violation {
                        rule: "run",
                        detail: format!("simulation failed: {e}"),
                    }],
                    event_log_hash: 0,
                    transactions: 0,
                    committed: 0,
                    faults: fault_count,
                    simulated: sim.elapsed(),
                    observation: Observation::default(),
                    terms: election.terms(),
                };
            }
        }
        if sim.elapsed() > end + Duration::from_secs(30) {
            break;
        }
    }
    // Quiet for a while: every write asked to be durable is synced by then, so the
    // crash `observe` begins with takes only what nobody asked to make durable.
    let quiet_until = sim.elapsed() + Duration::from_millis(200);
    while sim.elapsed() < quiet_until && sim.step().is_ok() {}
    let simulated = sim.elapsed();
    drop(sim);

    let mut observation = observe(&coordinator_kv, &participant_kvs, &disks, &shared);
    observation.lost_data = lost_data;
    let violations = checker::check(&observation);
    Outcome {
        event_log_hash: checker::event_log_hash(&observation.events),
        transactions: observation.transactions.len(),
        committed: observation.checkpoints.len(),
        violations,
        faults: fault_count,
        simulated,
        observation,
        terms: election.terms(),
    }
}

/// Nothing left to finish: no unfinished transaction at the coordinator, nothing
/// staging or prepared at any participant. (Checked between steps, from outside.)
fn settled(coordinator: &Tables, participants: &[Ledger]) -> bool {
    let coordinator_idle = coordinator
        .active_transactions()
        .is_ok_and(|a| a.is_empty());
    coordinator_idle
        && participants.iter().all(|l| {
            l.in_phase(&[Phase::Staging, Phase::Prepared])
                .is_ok_and(|open| open.is_empty())
        })
}

/// Gathers what the checker reads from the stores, disks and clients. The
/// coordinator's store crashes first, so the rules judge only what it made durable
/// (the run went quiet before, so whatever was asked to be durable is); an agent's
/// ledger is read as it stands (it writes COMMITTED without a sync by design, and a
/// lost one is asked again after a restart).
fn observe(
    coordinator: &MemKv,
    participants: &BTreeMap<String, MemKv>,
    disks: &BTreeMap<String, Disk>,
    shared: &SharedRef,
) -> Observation {
    coordinator.crash();
    coordinator.restart();
    let mut unreadable = Vec::new();
    let tables = Tables::new(Arc::new(coordinator.clone()) as Arc<dyn Kv>);
    let records: Vec<_> = read(
        &mut unreadable,
        "transactions",
        tables.recent_transactions(usize::MAX),
    );
    let mut transactions: Vec<_> = records
        .iter()
        .map(lockstep_coordinator::convert::transaction)
        .collect();
    transactions.reverse();
    let mut checkpoints = Vec::new();
    for e in ENVIRONMENTS {
        let env = lockstep::names::Environment::parse("environment", e).expect("a name");
        let found: Vec<_> = read(&mut unreadable, "checkpoints", tables.checkpoints(&env));
        checkpoints.extend(found.iter().map(lockstep_coordinator::convert::checkpoint));
    }
    let events = read(&mut unreadable, "events", tables.events(1, usize::MAX));
    let participants = participant_views(participants, disks, &mut unreadable);
    let requires = FAMILY.iter().filter(|(_, c)| !c.is_empty());
    let requires =
        requires.map(|(p, c)| (p.to_string(), c.iter().map(|c| c.to_string()).collect()));
    let s = lock(shared);
    Observation {
        transactions,
        checkpoints,
        events,
        participants,
        clients: s.records.clone(),
        lost_data: BTreeMap::new(),
        asked: s.asked.clone(),
        requires: requires.collect(),
        unreadable,
    }
}

/// `r`'s value, or nothing with the failure noted in `unreadable`.
fn read<T: Default, E: std::fmt::Display>(
    unreadable: &mut Vec<String>,
    what: &str,
    r: Result<T, E>,
) -> T {
    r.unwrap_or_else(|e| {
        unreadable.push(format!("{what}: {e}"));
        T::default()
    })
}

/// What each participant's ledger and disk show.
fn participant_views(
    participants: &BTreeMap<String, MemKv>,
    disks: &BTreeMap<String, Disk>,
    unreadable: &mut Vec<String>,
) -> BTreeMap<String, ParticipantView> {
    let mut views = BTreeMap::new();
    for (project, kv) in participants {
        kv.restart();
        let ledger = Ledger::open(Arc::new(kv.clone()), lockstep_store::WriterMode::Thread)
            .expect("starting a reader");
        let phases = match ledger.all() {
            Ok(all) => all.into_iter().map(|(tx, e)| (tx, e.phase)).collect(),
            Err(e) => {
                unreadable.push(format!("{project}'s ledger: {e}"));
                BTreeMap::new()
            }
        };
        let disk = disks[project].lock();
        let view = ParticipantView {
            live: disk.live.clone(),
            phases,
            effects: Some(disk.effects.clone()),
        };
        views.insert(project.clone(), view);
    }
    views
}

// ----- faults -----

/// A fault, applied at a simulated time.
#[derive(Debug, Clone)]
enum Fault {
    /// A crash keeping this share (in thousandths) of the writes not yet synced.
    Crash(String, u64),
    /// An agent's host crashes and its data directory (the ledger) is lost; its deploy
    /// disk survives.
    LoseData(String),
    /// An agent moves: it stops and comes back on another port, registered there again.
    Move(String),
    /// The host stops answering (as under SIGSTOP), every link held.
    Pause(String),
    Resume(String),
    Restart(String),
    Partition(String, String),
    Repair(String, String),
    Hold(String, String),
    Release(String, String),
    Latency(Duration),
}

/// The fault schedule of a seed: windows of trouble inside the fault window.
fn schedule(cfg: &Config) -> Vec<(Duration, Fault)> {
    let mut rng = SmallRng::seed_from_u64(cfg.seed ^ 0x5eed_fa17);
    let mut out = Vec::new();
    let mut t = Duration::from_millis(rng.random_range(200..1200));
    // At most one agent loses its data per run: it may leave a transaction waiting for
    // a person, which then holds its projects for the rest of the run.
    let mut lost_once = false;
    let hosts = hosts(cfg.ha);
    let instances = coordinators(cfg.ha);
    while t < cfg.fault_window {
        let lasting = Duration::from_millis(rng.random_range(100..2500));
        let until = (t + lasting).min(cfg.fault_window);
        let participant = hosts[rng.random_range(instances.len()..hosts.len())].clone();
        // On etcd, either instance (whichever leads then); else the coordinator.
        let coordinator = match cfg.ha {
            true => instances[rng.random_range(0..instances.len())].clone(),
            false => COORDINATOR.to_string(),
        };
        let kept = if rng.random_bool(0.5) {
            0
        } else {
            rng.random_range(0..1000)
        };
        match rng.random_range(0..9) {
            0 => {
                let victim = hosts[rng.random_range(0..hosts.len())].clone();
                out.push((t, Fault::Crash(victim.clone(), kept)));
                out.push((until, Fault::Restart(victim)));
            }
            1 => {
                out.push((t, Fault::Crash(coordinator.clone(), kept)));
                out.push((until, Fault::Restart(coordinator)));
            }
            8 => {
                out.push((t, Fault::Move(participant.clone())));
                out.push((until, Fault::Restart(participant)));
            }
            7 if !lost_once => {
                lost_once = true;
                out.push((t, Fault::LoseData(participant.clone())));
                out.push((until, Fault::Restart(participant)));
            }
            6 => {
                // Longer than the participants' ask-decision-after and the delivery
                // timeout (1 s each here).
                // On etcd, an instance half the time: a leader paused past its lease.
                let victim = match cfg.ha && rng.random_bool(0.5) {
                    true => coordinator.clone(),
                    false => hosts[rng.random_range(0..hosts.len())].clone(),
                };
                let resume = t + Duration::from_millis(rng.random_range(1500..4000));
                out.push((t, Fault::Pause(victim.clone())));
                out.push((resume.min(cfg.fault_window), Fault::Resume(victim)));
            }
            2 => {
                out.push((
                    t,
                    Fault::Partition(coordinator.clone(), participant.clone()),
                ));
                out.push((until, Fault::Repair(coordinator, participant)));
            }
            3 => {
                out.push((t, Fault::Hold(coordinator.clone(), participant.clone())));
                out.push((until, Fault::Release(coordinator, participant)));
            }
            4 => {
                let client = format!("client-{}", rng.random_range(0..cfg.clients));
                out.push((t, Fault::Partition(client.clone(), COORDINATOR.into())));
                out.push((until, Fault::Repair(client, COORDINATOR.into())));
            }
            _ => {
                out.push((
                    t,
                    Fault::Latency(Duration::from_millis(rng.random_range(20..200))),
                ));
                out.push((until, Fault::Latency(Duration::from_millis(5))));
            }
        }
        t += Duration::from_millis(rng.random_range(300..2000));
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

/// Keeps `down` up to date with the hosts faults took down.
fn track_down(down: &mut BTreeSet<String>, fault: &Fault) {
    match fault {
        Fault::Crash(h, _) | Fault::LoseData(h) | Fault::Move(h) => drop(down.insert(h.clone())),
        Fault::Restart(h) => drop(down.remove(h)),
        _ => {}
    }
}

/// Starts again every coordinator instance that stopped by itself (not taken down by
/// a fault).
fn supervise(sim: &mut turmoil::Sim<'_>, down: &BTreeSet<String>) {
    for h in crate::ha::INSTANCES {
        if !down.contains(h) && !sim.is_host_running(h) {
            sim.bounce(h);
        }
    }
}

fn apply(
    sim: &mut turmoil::Sim<'_>,
    kvs: &BTreeMap<String, MemKv>,
    moved: &MovesRef,
    fault: Fault,
    ha: bool,
) {
    match fault {
        Fault::Move(h) => {
            // The agent stops and comes back (at the Restart) on another port, with its
            // data; the operator registers it there.
            if sim.is_host_running(h.as_str()) {
                sim.crash(h.as_str());
            }
            let name = h.trim_start_matches("p-").to_string();
            let mut m = moves(moved);
            let next = if m.ports.get(&name) == Some(&(PARTICIPANT_PORT + 1)) {
                PARTICIPANT_PORT
            } else {
                PARTICIPANT_PORT + 1
            };
            m.ports.insert(name, next);
            m.unregistered.extend(participant_on(&h));
        }
        Fault::Crash(h, kept) => {
            if sim.is_host_running(h.as_str()) {
                sim.crash(h.as_str());
                // What was not synced is lost, as with a power cut; sometimes a prefix
                // of it made it to disk (an instance on etcd has no disk of its own).
                if let Some(kv) = kvs.get(&h) {
                    kv.crash_keeping(|n| n * kept as usize / 1000);
                }
            }
        }
        Fault::LoseData(h) => {
            if sim.is_host_running(h.as_str()) {
                sim.crash(h.as_str());
            }
            kvs[&h].wipe();
        }
        Fault::Pause(h) => each_link(&h, ha, |a, b| sim.hold(a, b)),
        Fault::Resume(h) => each_link(&h, ha, |a, b| sim.release(a, b)),
        Fault::Restart(h) => {
            if !sim.is_host_running(h.as_str()) {
                sim.bounce(h.as_str());
            }
        }
        Fault::Partition(a, b) => sim.partition(a.as_str(), b.as_str()),
        Fault::Repair(a, b) => sim.repair(a.as_str(), b.as_str()),
        Fault::Hold(a, b) => sim.hold(a.as_str(), b.as_str()),
        Fault::Release(a, b) => sim.release(a.as_str(), b.as_str()),
        Fault::Latency(d) => sim.set_max_message_latency(d),
    }
}

/// Calls `f` on both directions of every link between `host` and the others.
fn each_link(host: &str, ha: bool, mut f: impl FnMut(&str, &str)) {
    for other in linked(ha).iter().filter(|o| *o != host) {
        f(host, other);
        f(other, host);
    }
}

/// Ends every fault: hosts up, links repaired and released, latency back to normal.
fn heal(sim: &mut turmoil::Sim<'_>, ha: bool) {
    for h in &hosts(ha) {
        if !sim.is_host_running(h.as_str()) {
            sim.bounce(h.as_str());
        }
        each_link(h, ha, |a, b| sim.release(a, b));
    }
    sim.set_max_message_latency(Duration::from_millis(5));
}

// ----- clients -----

/// Each project and its children, in an order registration accepts.
const FAMILY: [(&str, &[&str]); 4] = [("B", &[]), ("C", &[]), ("D", &[]), ("A", &["B", "C"])];

/// Applies the pipeline, then registers every participant, each until it succeeds.
async fn register(client: &mut CoordinatorClient<Channel>, moved: &MovesRef) {
    let pipeline = pb::ApplyPipelineRequest {
        text: stages::pipeline("http://probe", "3s"),
        dry_run: false,
        unchecked: true,
    };
    while bounded(client.apply_pipeline(pipeline.clone()))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for environment in ENVIRONMENTS {
        for (project, _) in FAMILY {
            register_one(client, moved, (environment, project)).await;
        }
    }
}

/// Registers a participant at the port its agent listens on now, until the call
/// succeeds.
async fn register_one(
    client: &mut CoordinatorClient<Channel>,
    moved: &MovesRef,
    (environment, project): (&str, &str),
) {
    let requires = FAMILY
        .iter()
        .find(|(p, _)| *p == project)
        .map_or(&[][..], |f| f.1);
    let name = member(environment, project);
    loop {
        let endpoint = url(&host(&name), port_of(moved, &name));
        let r = pb::RegisterProjectRequest {
            name: project.into(),
            environment: environment.into(),
            endpoint: endpoint.clone(),
            requires: requires.iter().map(|r| r.to_string()).collect(),
            // The simulation's agents may be down or cut off when the operator moves
            // them; the protocol, not the reachability check, is under test here.
            unchecked: true,
        };
        let done = match bounded(client.register_project(r)).await {
            Ok(_) => true,
            // Registered already at its old address: move only its endpoint.
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                let change = pb::UpdateProjectRequest {
                    name: project.into(),
                    environment: environment.into(),
                    endpoint: Some(endpoint),
                    requires: None,
                    unchecked: true,
                };
                bounded(client.update_project(change)).await.is_ok()
            }
            Err(_) => false,
        };
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers every agent that moved at its new address, as an operator would, until
/// the fault window (when moves stop) is over and none is left.
async fn operator(moved: MovesRef, until: Duration) {
    let mut client = coordinator_client();
    loop {
        let next = moves(&moved).unregistered.pop();
        match next {
            Some(participant) => register_one(&mut client, &moved, participant).await,
            None if turmoil::sim_elapsed().unwrap_or_default() >= until => return,
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One client: a few random calls during the fault window, then it follows its
/// transactions to their end.
async fn workload(id: usize, cfg: Config, shared: SharedRef, moved: MovesRef) {
    let mut rng = SmallRng::seed_from_u64(cfg.seed.wrapping_mul(31).wrapping_add(id as u64));
    let mut client = coordinator_client();
    if id == 0 {
        register(&mut client, &moved).await;
        lock(&shared).ready = true;
    }
    while !lock(&shared).ready {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut mine: Vec<String> = Vec::new();
    let mut sent: Vec<pb::CreateReleaseRequest> = Vec::new();
    for i in 0..cfg.ops_per_client {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..900))).await;
        let roll = rng.random_range(0..100);
        // What a call with `wait` was told the outcome is, if it answered.
        let mut ended: Option<pb::Event> = None;
        let (op, tx, result) = if roll < 58 || sent.is_empty() {
            let (op, request) = if roll < 50 || sent.is_empty() {
                let request = release_request(&mut rng, id, i);
                let asked = request.components.iter();
                let asked = asked.map(|c| (c.project.clone(), c.version.clone()));
                lock(&shared)
                    .asked
                    .insert(request.id.clone(), asked.collect());
                sent.push(request.clone());
                ("release", request)
            } else {
                // An idempotent retry of an earlier request.
                ("retry", sent[rng.random_range(0..sent.len())].clone())
            };
            let tx = request.id.clone();
            let answer = bounded(client.create_release(request)).await;
            ended = answer.as_ref().ok().and_then(|a| a.ended.clone());
            (op, tx, answer.map(|_| ()))
        } else if roll < 70 {
            let target = {
                let s = lock(&shared);
                (!s.committed.is_empty())
                    .then(|| s.committed[rng.random_range(0..s.committed.len())].clone())
            };
            let Some(target) = target else { continue };
            let tx = format!("rv-{id}-{i}");
            let r = pb::RevertReleaseRequest {
                release_id: target,
                id: tx.clone(),
                cascade: rng.random_bool(0.5),
                prepare_timeout: Some(lockstep::wire::duration(PREPARE_TIMEOUT)),
                ..Default::default()
            };
            (
                "revert",
                tx,
                bounded(client.revert_release(r)).await.map(|_| ()),
            )
        } else if roll < 78 {
            let tx = format!("rb-{id}-{i}");
            let r = pb::RollbackRequest {
                revision: rng.random_range(0..4),
                environment: ENVIRONMENTS[rng.random_range(0..ENVIRONMENTS.len())].into(),
                id: tx.clone(),
                prepare_timeout: Some(lockstep::wire::duration(PREPARE_TIMEOUT)),
                ..Default::default()
            };
            (
                "rollback",
                tx,
                bounded(client.rollback(r)).await.map(|_| ()),
            )
        } else if roll < 88 {
            let tx = format!("pm-{id}-{i}");
            let r = promote_request(&tx, rng.random_bool(0.2));
            ("promote", tx, bounded(client.promote(r)).await.map(|_| ()))
        } else {
            let Some(tx) =
                (!mine.is_empty()).then(|| mine[rng.random_range(0..mine.len())].clone())
            else {
                continue;
            };
            let r = pb::AbortReleaseRequest {
                id: tx.clone(),
                reason: "simulated abort".into(),
            };
            let result = bounded(client.abort_release(r)).await;
            record(&shared, id, "abort", &tx, told_of_abort(&result));
            continue;
        };
        let told = match &result {
            Ok(()) => {
                if !mine.contains(&tx) {
                    mine.push(tx.clone());
                }
                lock(&shared).created.push(tx.clone());
                Told::Accepted
            }
            Err(s) if unknown(s.code()) => Told::Unknown(s.message().into()),
            Err(s) => Told::Refused(format!("{:?}: {}", s.code(), s.message())),
        };
        record(&shared, id, op, &tx, told);
        if let Some(e) = ended {
            record(&shared, id, "waited", &tx, Told::Outcome(outcome_of(&e)));
        }
    }
    // Follow every transaction of ours to its end (faults heal at the window's end).
    let deadline = cfg.fault_window + cfg.settle_within;
    for tx in mine {
        loop {
            if turmoil::sim_elapsed().unwrap_or_default() > deadline {
                break;
            }
            if let Ok(t) =
                bounded(client.get_release(pb::GetReleaseRequest { id: tx.clone() })).await
            {
                let s = pb::TransactionState::try_from(t.state)
                    .unwrap_or(pb::TransactionState::Unspecified);
                if matches!(
                    s,
                    pb::TransactionState::Committed | pb::TransactionState::Aborted
                ) {
                    if s == pb::TransactionState::Committed
                        && t.kind == pb::TransactionKind::Release as i32
                    {
                        lock(&shared).committed.push(tx.clone());
                    }
                    record(&shared, id, "observe", &tx, Told::Outcome(s));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What an AbortRelease answer tells: once the coordinator answers with the
/// transaction aborting, it must end ABORTED.
fn told_of_abort(result: &Result<pb::Transaction, tonic::Status>) -> Told {
    let aborting = [
        pb::TransactionState::Aborting,
        pb::TransactionState::Aborted,
    ];
    match result {
        Err(s) if unknown(s.code()) => Told::Unknown(s.message().into()),
        Err(s) => Told::Refused(format!("{:?}", s.code())),
        Ok(t) if aborting.iter().any(|a| *a as i32 == t.state) => {
            Told::Outcome(pb::TransactionState::Aborted)
        }
        Ok(t) => Told::Refused(format!("abort answered with state {}", t.state)),
    }
}

/// The state a terminal event tells (what a call with `wait` answered).
fn outcome_of(e: &pb::Event) -> pb::TransactionState {
    match e.kind == pb::EventKind::TransactionCommitted as i32 {
        true => pb::TransactionState::Committed,
        false => pb::TransactionState::Aborted,
    }
}

fn record(shared: &SharedRef, client: usize, op: &str, tx: &str, told: Told) {
    lock(shared).records.push(ClientRecord {
        client,
        op: op.into(),
        tx: tx.into(),
        told,
    });
}

/// A random release: a family release, or children and D alone; sometimes a version the
/// participant refuses, sometimes one it takes longer than the deadline to stage,
/// sometimes one whose going live or undoing fails a few times first.
fn release_request(rng: &mut SmallRng, client: usize, i: usize) -> pb::CreateReleaseRequest {
    let sets: [&[&str]; 6] = [
        &["A", "B", "C"],
        &["B"],
        &["C"],
        &["D"],
        &["B", "D"],
        &["A", "B", "C", "D"],
    ];
    let set = sets[rng.random_range(0..sets.len())];
    let components = set
        .iter()
        .map(|p| {
            let bad = rng.random_bool(0.08);
            let mut metadata = std::collections::HashMap::new();
            if rng.random_bool(0.08) {
                metadata.insert(
                    "delay_ms".to_string(),
                    rng.random_range(100..3000).to_string(),
                );
            }
            // Phase 2 failing a few times on this participant (stop 56: never before).
            for step in ["golive_fail", "undo_fail"] {
                if rng.random_bool(0.06) {
                    metadata.insert(step.to_string(), rng.random_range(1..4).to_string());
                }
            }
            pb::Component {
                project: p.to_string(),
                version: format!("{p}{}{}-{client}-{i}", if bad { "bad" } else { "v" }, i),
                artifact: String::new(),
                metadata,
            }
        })
        .collect();
    pb::CreateReleaseRequest {
        id: format!("r-{client}-{i}"),
        environment: String::new(),
        components,
        prepare_timeout: Some(lockstep::wire::duration(PREPARE_TIMEOUT)),
        dry_run: false,
        force: rng.random_bool(0.2),
        allow_quarantined: false,
        ticket: String::new(),
        // Some callers wait for the outcome in the call (often past `bounded`'s 3 s,
        // which they are then told nothing about).
        wait: rng.random_bool(0.3),
    }
}

/// A promotion of the newest verified checkpoint of the default environment to `prod`
/// (`force`: whatever it holds).
fn promote_request(id: &str, force: bool) -> pb::PromoteRequest {
    pb::PromoteRequest {
        from: lockstep::DEFAULT_ENVIRONMENT.into(),
        to: PROD.into(),
        id: id.into(),
        force,
        prepare_timeout: Some(lockstep::wire::duration(PREPARE_TIMEOUT)),
        ..Default::default()
    }
}

/// Re-sends protocol messages out of order: Prepare again at any time, and Commit or
/// Abort again once the coordinator has decided (only the coordinator's own decision,
/// duplicated late, as a reordering network would).
///
/// A Prepare carries the newest leader's term (0 without HA), as that leader's own
/// resend would. A Commit or Abort carries the term its GetDecision answer was given in
/// (since stop 60), as the instance that answered would send it: one a deposed leader
/// answered is refused at the agent's term check, which is then all it tests. Channels are kept per endpoint (a moved agent, and
/// the same project in two environments, each have their own).
async fn duplicator(cfg: Config, shared: SharedRef, election: crate::lease::Election) {
    let mut rng = SmallRng::seed_from_u64(cfg.seed ^ 0xd0_0b1e);
    let mut client = coordinator_client();
    let mut participants: BTreeMap<String, ParticipantClient<Channel>> = BTreeMap::new();
    while turmoil::sim_elapsed().unwrap_or_default() < cfg.fault_window {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        let tx = {
            let s = lock(&shared);
            (!s.created.is_empty()).then(|| s.created[rng.random_range(0..s.created.len())].clone())
        };
        let Some(tx) = tx else { continue };
        let Ok(t) = bounded(client.get_release(pb::GetReleaseRequest { id: tx.clone() })).await
        else {
            continue;
        };
        let Some(part) = t
            .participants
            .get(rng.random_range(0..t.participants.len().max(1)))
            .cloned()
        else {
            continue;
        };
        let term = u64::try_from(election.terms()).unwrap_or(0);
        let p = participants
            .entry(part.endpoint.clone())
            .or_insert_with(|| ParticipantClient::new(net::channel(&part.endpoint)));
        let decision = bounded(client.get_decision(pb::GetDecisionRequest {
            transaction_id: tx.clone(),
            project: part.project.clone(),
            coordinator_incarnation: String::new(),
            environment: t.environment.clone(),
        }))
        .await
        // A duplicate of what that instance would send: in the term it answered in (a
        // deposed leader's answer carries its old term, which the agent refuses).
        .map(|d| (d.decision, d.coordinator_term.unwrap_or(0)));
        let _ = match decision {
            Ok((d, answered)) if d == pb::Decision::Commit as i32 => {
                bounded(p.commit(pb::CommitRequest {
                    transaction_id: tx.clone(),
                    project: part.project.clone(),
                    coordinator_incarnation: String::new(),
                    coordinator_term: answered,
                }))
                .await
                .map(|_| ())
            }
            Ok((d, answered)) if d == pb::Decision::Abort as i32 && rng.random_bool(0.5) => {
                bounded(p.abort(pb::AbortRequest {
                    transaction_id: tx.clone(),
                    project: part.project.clone(),
                    reason: "duplicate".into(),
                    coordinator_incarnation: String::new(),
                    coordinator_term: answered,
                }))
                .await
                .map(|_| ())
            }
            _ => bounded(p.prepare(pb::PrepareRequest {
                transaction_id: tx.clone(),
                environment: t.environment.clone(),
                project: part.project.clone(),
                version: part.to_version.clone(),
                from_version: part.from_version.clone(),
                artifact: part.artifact.clone(),
                metadata: part.metadata.clone(),
                action: part.action,
                coordinator_incarnation: String::new(),
                restore: part.restore,
                target_schema: part.target_schema.clone(),
                coordinator_term: term,
            }))
            .await
            .map(|_| ()),
        };
    }
}
