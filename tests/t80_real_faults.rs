//! Beside the simulation: random SIGKILLs of the real binaries during streams of
//! releases (with artifacts and SQLite migrations; some forced), reverts, rollbacks,
//! promotions (some forced) and aborts of transactions in flight, on agents with commit
//! hooks and their default `--ask-decision-after`, in two environments: `default`, and
//! `prod` after it with auto-promotion, an http smoke step, an external test run and an
//! approval before COMMIT (answered by a test runner and a release manager polling the
//! coordinator), a soak and a live http check that reverts on failure after it (the
//! http server breaks and heals at random); then the simulation's
//! invariant checker judges what the servers report
//! (transactions, checkpoints and the event log over gRPC; each agent's own ledger from
//! its RocksDB once stopped; what is live from the deploy roots; what the CLI told), and
//! the effects are checked: each `current/` holds the live version's build, each schema
//! is at its checkpoint's version, each commit hook ran for every change it went live
//! with.
//! `LOCKSTEP_FAULT_SEED` picks the schedule (default 1); the kill times are real, so a
//! run is varied, not replayable, which is what the simulation is for.

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lockstep::pb::{self, StepStatus, TransactionState, coordinator_client::CoordinatorClient};
use lockstep_participant::ledger::{self, Ledger};
use lockstep_sim::checker::{self, ClientRecord, Observation, ParticipantView, Told};
use lockstep_store::RocksKv;
use lockstep_store::etcd_member::EtcdCluster;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use support::{Cluster, Server, wait_for, wait_within};
use tonic::transport::Channel;

const PROJECTS: [&str; 4] = ["A", "B", "C", "D"];

/// `default`, and `prod` after it.
const ENVIRONMENTS: [&str; 2] = ["default", "prod"];

/// How many processes the chaos kills during the stream.
const KILLS: usize = 25;

/// Migration `n` (1..=3) of `project`: the same files in every build that ships it.
fn migration(project: &str, n: u32) -> [(String, String); 2] {
    let p = project.to_lowercase();
    [
        (
            format!("{n:04}_step{n}.up.sql"),
            format!("CREATE TABLE {p}_t{n} (id INTEGER PRIMARY KEY);"),
        ),
        (
            format!("{n:04}_step{n}.down.sql"),
            format!("DROP TABLE {p}_t{n};"),
        ),
    ]
}

/// A build of `project` at `version`: `app.txt` says the version, and `migrations/`
/// ships migrations 1..=`upto` (none at all for 0). Returns `--artifact P=DIR`.
fn build(root: &std::path::Path, project: &str, version: &str, upto: u32) -> String {
    let dir = root.join("builds").join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.txt"), version).unwrap();
    if upto > 0 {
        std::fs::create_dir_all(dir.join("migrations")).unwrap();
    }
    for (name, text) in (1..=upto).flat_map(|n| migration(project, n)) {
        std::fs::write(dir.join("migrations").join(name), text).unwrap();
    }
    format!("{project}={}", dir.display())
}

/// What one command of a stream asks for: a release (one in seven forced), a revert, a
/// rollback in either environment, a promotion (one in four forced), or an abort of a
/// transaction in flight.
fn command(
    rng: &mut SmallRng,
    root: &std::path::Path,
    stream: usize,
    i: usize,
) -> (String, Vec<String>) {
    let sets: [&[&str]; 5] = [&["A", "B", "C"], &["B"], &["C"], &["D"], &["B", "D"]];
    let id = format!("s{stream}-{i}");
    let strings = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    match rng.random_range(0..14) {
        0 if i > 0 => {
            let earlier = format!("s{stream}-{}", rng.random_range(0..i));
            let args = ["revert", earlier.as_str(), "--id", &format!("{id}-revert")];
            ("revert".into(), strings(&args))
        }
        1 | 2 => {
            let env = ENVIRONMENTS[rng.random_range(0..2)];
            let args = ["-e", env, "rollback", "--id", &format!("{id}-rollback")];
            ("rollback".into(), strings(&args))
        }
        3 | 4 => {
            let pid = format!("{id}-promote");
            let mut args = strings(&["promote", "--from", "default", "--to", "prod", "--id", &pid]);
            if rng.random_range(0..4) == 0 {
                args.push("--force".into());
            }
            ("promote".into(), args)
        }
        5 => ("abort".into(), Vec::new()),
        _ => {
            let set = sets[rng.random_range(0..sets.len())];
            let mut args = strings(&["release", "create", &id]);
            for p in set {
                let version = format!("{p}{stream}.{i}");
                args.push(format!("{p}={version}"));
                args.push("--artifact".into());
                args.push(build(root, p, &version, rng.random_range(0..=3)));
            }
            if rng.random_range(0..7) == 0 {
                args.push("--force".into());
            }
            ("release".into(), args)
        }
    }
}

/// `release abort` of one transaction in flight (of any environment), if there is one.
async fn abort_one(url: &str, rng: &mut SmallRng) {
    let Ok(mut co) = CoordinatorClient::connect(any(url, rng)).await else {
        return;
    };
    let Ok(active) = co.list_releases(in_progress()).await else {
        return;
    };
    let active = active.into_inner().transactions;
    if active.is_empty() {
        return;
    }
    let victim = &active[rng.random_range(0..active.len())];
    let _ = tokio::process::Command::new(support::bin("lockstep"))
        .args(["release", "abort", &victim.id, "--reason", "chaos"])
        .env("LOCKSTEP_COORDINATOR", url)
        .output()
        .await;
}

/// One of the comma-separated coordinator URLs in `urls`, at random (reads are answered
/// by a standby too; a write to one is refused and made again later).
fn any(urls: &str, rng: &mut SmallRng) -> String {
    let all: Vec<&str> = urls.split(',').collect();
    all[rng.random_range(0..all.len())].to_string()
}

/// Whether every release whose live check failed (and whose automatic revert was not
/// refused) is reverted, or its automatic revert ended.
fn reverts_made(all: &[pb::Transaction]) -> bool {
    let is = |t: &pb::Transaction, s: TransactionState| t.state == s as i32;
    let settles = |r: &pb::Transaction, release: &str| {
        let automatic = r.id.starts_with(&format!("auto-revert-{release}"));
        let ended = is(r, TransactionState::Committed) || is(r, TransactionState::Aborted);
        r.reverts.iter().any(|id| id == release)
            && (is(r, TransactionState::Committed) || (automatic && ended))
    };
    let due = all.iter().filter(|t| {
        t.live_check.starts_with("failed:") && !t.live_check.contains("automatic revert of")
    });
    due.into_iter()
        .all(|t| all.iter().any(|r| settles(r, &t.id)))
}

fn in_progress() -> pb::ListReleasesRequest {
    pb::ListReleasesRequest {
        active_only: true,
        page_size: 1000,
        ..Default::default()
    }
}

/// One stream of commands through the real CLI, until `done`, recording what it was
/// told.
async fn stream(
    url: &str,
    root: &std::path::Path,
    stream: usize,
    done: Arc<AtomicBool>,
    seed: u64,
    told: Arc<Mutex<Vec<ClientRecord>>>,
) {
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_add(stream as u64));
    for i in 0.. {
        if done.load(Ordering::SeqCst) {
            break;
        }
        let (op, mut args) = command(&mut rng, root, stream, i);
        if op == "abort" {
            abort_one(url, &mut rng).await;
            continue;
        }
        args.extend(["--wait", "--timeout", "2s", "-o", "json"].map(String::from));
        let out = tokio::process::Command::new(support::bin("lockstep"))
            .args(&args)
            .env("LOCKSTEP_COORDINATOR", url)
            .output()
            .await
            .unwrap();
        if let Some(record) = told_by(stream, op, &out) {
            told.lock().unwrap().push(record);
        }
    }
}

/// What the CLI told the person who ran it, if it named a transaction.
fn told_by(client: usize, op: String, out: &std::process::Output) -> Option<ClientRecord> {
    let json: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    let field = |k: &str| {
        json.as_ref()
            .and_then(|j| j[k].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (state, tx) = (field("state"), field("id"));
    let told = match (out.status.code(), state.as_str()) {
        (Some(0), "TRANSACTION_STATE_COMMITTED") => Told::Outcome(pb::TransactionState::Committed),
        (Some(1), "TRANSACTION_STATE_ABORTED") => Told::Outcome(pb::TransactionState::Aborted),
        (Some(3), _) => Told::Unknown(String::from_utf8_lossy(&out.stderr).into_owned()),
        (code, _) => Told::Refused(format!(
            "exit {code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    };
    (!tx.is_empty()).then_some(ClientRecord {
        client,
        op,
        tx,
        told,
    })
}

/// A test runner and a release manager: they answer the running step of every
/// VERIFYING transaction (a runner passes seven test runs in eight, a manager approves
/// seven in eight), until `done` and nothing is in flight.
async fn people(url: String, seed: u64, done: Arc<AtomicBool>) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x009e_091e);
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
        let Ok(mut co) = CoordinatorClient::connect(any(&url, &mut rng)).await else {
            continue;
        };
        let Ok(active) = co.list_releases(in_progress()).await else {
            continue;
        };
        let active = active.into_inner().transactions;
        if active.is_empty() && done.load(Ordering::SeqCst) {
            return;
        }
        for t in &active {
            answer(&mut co, &mut rng, t).await;
        }
    }
}

/// Answers `t`'s running step, if it is one a person answers.
async fn answer(co: &mut CoordinatorClient<Channel>, rng: &mut SmallRng, t: &pb::Transaction) {
    let running = |s: &&pb::VerifyStep| {
        s.status == StepStatus::Triggered as i32 || s.status == StepStatus::Started as i32
    };
    let Some(step) = t.steps.iter().find(running) else {
        return;
    };
    let pass = rng.random_range(0..8) != 0;
    let approval = pb::ApprovalRequest {
        transaction_id: t.id.clone(),
        reason: "reviewed".into(),
        actor: "release-manager".into(),
    };
    let _ = match (step.kind.as_str(), pass) {
        ("approval", true) => co.approve(approval).await.map(|_| ()),
        ("approval", false) => co.reject(approval).await.map(|_| ()),
        ("external", _) => {
            let outcome = match pass {
                true => pb::VerifyOutcome::Passed,
                false => pb::VerifyOutcome::Failed,
            };
            let report = pb::ReportVerifyRequest {
                transaction_id: t.id.clone(),
                step: step.name.clone(),
                outcome: outcome as i32,
                reason: "test run".into(),
                link: String::new(),
                actor: "test-runner".into(),
            };
            co.report_verify(report).await.map(|_| ())
        }
        _ => Ok(()),
    };
}

/// The live site the http steps ask: 200, or 503 while `broken` is set.
async fn site(broken: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let broken = broken.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let status = match broken.load(Ordering::SeqCst) {
                    true => "503 Service Unavailable",
                    false => "200 OK",
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

/// The agent of `project` in `env` as [`Cluster::agent`] knows it.
fn key(env: &str, project: &str) -> String {
    match env {
        "default" => project.to_string(),
        _ => format!("{env}/{project}"),
    }
}

/// Applies the pipeline, then starts and registers every project's agent in both
/// environments (A requires B and C), each with a SQLite database and a commit hook
/// that logs each transaction it makes live.
async fn setup(c: &mut Cluster, site: &str) {
    let file = c.dir.path().join("pipeline.toml");
    std::fs::write(&file, lockstep_sim::stages::pipeline(site, "5s")).unwrap();
    let out = c.cli(&["env", "apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for env in ENVIRONMENTS {
        for p in ["B", "C", "D", "A"] {
            let k = key(env, p);
            let extra = [
                "--database".to_string(),
                format!("sqlite://{}", database(c, &k).display()),
                "--commit-hook".to_string(),
                format!(
                    "echo \"$LOCKSTEP_TX $LOCKSTEP_VERSION\" >> '{}'",
                    commits(c, &k).display()
                ),
            ];
            match env {
                "default" => c.add_agent_with(p, &extra).await,
                _ => c.add_env_agent_with(env, p, &extra).await,
            }
            let url = c.agent(&k).server.url();
            let mut args = vec!["-e", env, "project", "add", p, "--endpoint", &url];
            if p == "A" {
                args.extend(["--requires", "B,C"]);
            }
            let out = c.cli(&args).await;
            assert_eq!(out.code, 0, "{out:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_sigkills_of_the_real_binaries_keep_every_invariant() {
    faults(Cluster::new().await, None).await;
}

/// Issue 31: the same workload and checker with every synced step of every transaction
/// held back for others' fsync (`--commit-delay`, from one transaction in flight), so
/// the SIGKILLs land while admissions, decisions and ends wait to be durable.
#[tokio::test(flavor = "multi_thread")]
async fn random_sigkills_with_a_commit_delay_keep_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator").display().to_string();
    let delay = ["--commit-delay", "20ms", "--commit-siblings", "0"].map(String::from);
    let args = [vec!["--data-dir".into(), data], delay.to_vec()].concat();
    let c = Cluster::with_coordinator(dir, args, Vec::new()).await;
    faults(c, None).await;
}

/// Issue 28: the same workload and checker with the coordinator on a 3-member etcd
/// cluster, two instances of it, and the chaos killing the leader (a standby takes
/// over once the 1 s lease runs out) or the standby among the agents; every client and
/// agent is given both instances.
#[tokio::test(flavor = "multi_thread")]
async fn random_sigkills_of_leaders_on_etcd_keep_every_invariant() {
    let etcd_dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::start(etcd_dir.path(), 3).unwrap();
    let args = vec![
        "--store".to_string(),
        etcd.url("t80"),
        "--etcd-lease-ttl".into(),
        "1s".into(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::with_coordinator(dir, args.clone(), Vec::new()).await;
    let standby = c.add_standby(args);
    let c = faults(c, Some(standby)).await;
    let logs = ["coordinator.log", "standby.log"].map(|l| c.dir.path().join(l));
    let led = logs.iter().map(std::fs::read_to_string).map(Result::unwrap);
    let terms = led
        .map(|l| l.matches("leading with term").count())
        .sum::<usize>();
    assert!(
        terms >= 3,
        "leaders were killed and replaced ({terms} terms)"
    );
}

/// Kills one of the coordinators: the one that leads, two times in three (it comes
/// back as a standby), else the other.
async fn kill_a_coordinator(pair: [&mut Server; 2], rng: &mut SmallRng) {
    let leader = usize::from(!pair[0].leads().await && pair[1].leads().await);
    let victim = if rng.random_range(0..3) < 2 {
        leader
    } else {
        1 - leader
    };
    let [a, b] = pair;
    let server = if victim == 0 { a } else { b };
    server.restart_standby().await;
}

/// Makes `c.coordinator` the instance that leads once `second` is back (waiting for a
/// leader), with `second` the other.
async fn leader_first(c: &mut Cluster, second: &mut Server) {
    let swap = wait_for("a coordinator to lead", || {
        let (first, other) = (&c.coordinator, &*second);
        async move {
            match (first.leads().await, other.leads().await) {
                (true, _) => Some(false),
                (_, true) => Some(true),
                _ => None,
            }
        }
    })
    .await;
    if swap {
        std::mem::swap(&mut c.coordinator, second);
        c.others = vec![second.url()];
    }
}

/// Streams of commands, people answering verify steps and random SIGKILLs (of agents,
/// and of the coordinator: with `second`, of either instance on etcd), then the
/// checker and the effects.
async fn faults(mut c: Cluster, mut second: Option<Server>) -> Cluster {
    let seed: u64 = std::env::var("LOCKSTEP_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let broken = Arc::new(AtomicBool::new(false));
    let url = site(broken.clone()).await;
    setup(&mut c, &url).await;

    let told: Arc<Mutex<Vec<ClientRecord>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let (url, root) = (c.coordinators(), c.dir.path().to_path_buf());
    let streams = futures::future::join_all(
        (0..3).map(|s| stream(&url, &root, s, done.clone(), seed, told.clone())),
    );
    let people = tokio::spawn(people(url.clone(), seed, done.clone()));
    let keys: Vec<String> = c.agents.keys().cloned().collect();
    // With two instances, a coordinator is the victim three times in eleven.
    let coordinators = if second.is_some() { 3 } else { 1 };
    let chaos = async {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0xc4a05);
        let mut kills = 0;
        while kills < KILLS {
            tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
            if rng.random_range(0..5) == 0 {
                broken.fetch_xor(true, Ordering::SeqCst);
            }
            let victim = rng.random_range(0..keys.len() + coordinators);
            kills += 1;
            if let (true, Some(second)) = (victim < coordinators, second.as_mut()) {
                kill_a_coordinator([&mut c.coordinator, second], &mut rng).await;
                continue;
            }
            let server = match victim.checked_sub(coordinators) {
                None => &mut c.coordinator,
                Some(n) => &mut c.agents.get_mut(&keys[n]).unwrap().server,
            };
            server.kill9().await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..400))).await;
            server.restart().await;
        }
        broken.store(false, Ordering::SeqCst);
        done.store(true, Ordering::SeqCst);
        kills
    };
    let (_, kills) = tokio::join!(streams, chaos);
    if let Some(second) = second.as_mut() {
        leader_first(&mut c, second).await;
    }

    // Faults over: every transaction must end, the automatic reverts a new leader
    // makes of releases whose live check failed included. A leader makes those in the
    // background after its start (retrying while their projects are busy), so the
    // list of unfinished ones can be empty a moment before one is created (stop 56: the
    // observation then missed a revert the agents went on to commit).
    let active = wait_for("every transaction to end", || async {
        let mut co = c.client().await;
        let list = co.list_releases(in_progress()).await.ok()?.into_inner();
        let all = pb::ListReleasesRequest {
            page_size: 1000,
            ..Default::default()
        };
        let all = co.list_releases(all).await.ok()?.into_inner().transactions;
        (list.transactions.is_empty() && reverts_made(&all)).then_some(())
    });
    active.await;
    people.await.unwrap();
    // And every participant must resolve: one that voted PREPARED on a Prepare whose
    // record a killed coordinator never made durable is aborted by recovery without
    // being told (presumed abort); it asks for the decision after its
    // --ask-decision-after (10 s) and hears ABORT.
    for env in ENVIRONMENTS {
        for p in PROJECTS {
            let k = key(env, p);
            let what = format!("{k} to hold nothing prepared");
            let agent = c.agent(&k);
            let resolved = || async { agent.status().await.staged.is_empty().then_some(()) };
            wait_within(
                &what,
                Duration::from_secs(60),
                Duration::from_millis(200),
                resolved,
            )
            .await;
        }
    }

    let clients = told.lock().unwrap().clone();
    let observation = observe(&mut c, clients).await;
    let violations = checker::check(&observation);
    if !violations.is_empty() {
        let log: Vec<String> = observation
            .events
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        let _ = std::fs::write(format!("/tmp/t80-events-{seed}.txt"), log.join("\n"));
    }
    assert!(
        violations.is_empty(),
        "seed {seed}, {kills} kills (event log in /tmp/t80-events-{seed}.txt):\n{}",
        violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for env in ENVIRONMENTS {
        check_effects(&c, &observation, env).await;
    }
    assert_workload_ran(&observation);
    c
}

/// What the servers report (every environment's transactions and checkpoints, the
/// event log) and each agent's own ledger, read from its RocksDB once it is stopped.
async fn observe(c: &mut Cluster, clients: Vec<ClientRecord>) -> Observation {
    let mut co = c.client().await;
    let all = pb::ListReleasesRequest {
        page_size: 1000,
        ..Default::default()
    };
    let transactions = co
        .list_releases(all)
        .await
        .unwrap()
        .into_inner()
        .transactions;
    let mut checkpoints = Vec::new();
    for env in ENVIRONMENTS {
        let history = pb::GetHistoryRequest {
            environment: env.into(),
            ..Default::default()
        };
        checkpoints.extend(
            co.get_history(history)
                .await
                .unwrap()
                .into_inner()
                .checkpoints,
        );
    }
    let events = c.events().await;
    let mut participants = std::collections::BTreeMap::new();
    for env in ENVIRONMENTS {
        for p in PROJECTS {
            let k = key(env, p);
            participants.insert(checker::member(env, p), participant(c, &k).await);
        }
    }
    Observation {
        transactions: transactions.into_iter().rev().collect(),
        checkpoints,
        events,
        participants,
        clients,
        ..Default::default()
    }
}

/// What the agent `key` made live and its ledger's phases, once it is stopped.
async fn participant(c: &mut Cluster, key: &str) -> ParticipantView {
    let live = c.agent(key).live();
    c.agent_mut(key).server.kill9().await;
    let dir = c
        .dir
        .path()
        .join(format!("agent-{}", key.replace('/', "-")));
    let kv = RocksKv::open(&dir, ledger::ALL).unwrap();
    let phases = Ledger::open(Arc::new(kv), lockstep_store::WriterMode::Thread)
        .unwrap()
        .all()
        .unwrap()
        .into_iter()
        .map(|(tx, e)| (tx, e.phase))
        .collect();
    ParticipantView {
        live,
        phases,
        effects: None,
    }
}

/// The chaos must hit some transactions and spare others, and every kind of work must
/// have committed somewhere: reverts or rollbacks, promotions, verified prod releases.
fn assert_workload_ran(o: &Observation) {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for e in &o.events {
        let kind =
            pb::EventKind::try_from(e.kind).map_or("?".into(), |k| k.as_str_name().to_string());
        *kinds.entry(kind).or_default() += 1;
    }
    eprintln!(
        "{} transactions; events by kind: {kinds:?}",
        o.transactions.len()
    );
    let committed = |t: &&pb::Transaction| t.state == pb::TransactionState::Committed as i32;
    let restored = o
        .transactions
        .iter()
        .filter(committed)
        .filter(|t| {
            t.kind == pb::TransactionKind::Revert as i32
                || t.kind == pb::TransactionKind::Rollback as i32
        })
        .count();
    assert!(
        restored > 0,
        "some reverts and rollbacks commit under the chaos too"
    );
    let prod = o
        .transactions
        .iter()
        .filter(committed)
        .filter(|t| t.environment == "prod")
        .count();
    assert!(prod > 0, "some promotions pass prod's steps and commit");
    let aborted = o
        .transactions
        .iter()
        .filter(|t| t.state == pb::TransactionState::Aborted as i32)
        .count();
    assert!(
        o.checkpoints.len() > 1 && aborted > 0,
        "the chaos must hit some transactions and spare others: {} checkpoints, {aborted} aborted",
        o.checkpoints.len()
    );
}

/// Copies the cluster's directory (every agent's deploy root, ledger and log, the
/// coordinators' logs) to `/tmp` before a failed effect check drops it, and prints
/// where, with what the agent `key`'s deploy root holds.
fn keep_for_inspection(c: &Cluster, key: &str) {
    let kept = std::env::temp_dir().join(format!("t80-kept-{}", std::process::id()));
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(c.dir.path())
        .arg(&kept)
        .status();
    let root = &c.agent(key).deploy_root;
    let current = std::fs::read_link(root.join("current"));
    let releases: Vec<_> = std::fs::read_dir(root.join("releases"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    eprintln!(
        "{key}: current -> {current:?}, releases/ {releases:?}; cluster kept in {} ({copied:?})",
        kept.display()
    );
}

/// Where the agent `key` logs what its commit hook made live.
fn commits(c: &Cluster, key: &str) -> std::path::PathBuf {
    c.dir
        .path()
        .join(format!("{}.commits", key.replace('/', "-")))
}

/// The agent `key`'s SQLite database.
fn database(c: &Cluster, key: &str) -> std::path::PathBuf {
    c.dir.path().join(format!("{}.db", key.replace('/', "-")))
}

/// What the participants of `env` did, beyond their records: each one's `current/`
/// holds the build of the version the newest checkpoint names (reverts, rollbacks and
/// promotions included), its schema is at the checkpoint's version, and its commit
/// hook ran for every committed transaction that changed it.
async fn check_effects(c: &Cluster, o: &Observation, env: &str) {
    let Some(newest) = o.checkpoints.iter().rfind(|k| k.environment == env) else {
        return;
    };
    for p in PROJECTS {
        let Some(live) = newest.versions.iter().find(|v| v.project == p) else {
            continue;
        };
        let k = key(env, p);
        let app = c.agent(&k).deploy_root.join("current/app.txt");
        let shown = std::fs::read_to_string(&app).unwrap_or_default();
        if shown != live.version {
            keep_for_inspection(c, &k);
        }
        assert_eq!(
            shown, live.version,
            "{k}: current/ holds the live version's build"
        );
        let schema = lockstep_participant::schema::Schema::open(
            &format!("sqlite://{}", database(c, &k).display()),
            lockstep_participant::schema::Mode::Reversible,
            p,
        )
        .await
        .unwrap();
        let at = schema.live().await.unwrap().version;
        let recorded = live.schema.as_ref().map_or(0, |s| s.version);
        assert_eq!(at, recorded, "{k}: the schema is where the checkpoint says");
        let hooked = std::fs::read_to_string(commits(c, &k)).unwrap_or_default();
        let in_env = |t: &&pb::Transaction| {
            t.state == pb::TransactionState::Committed as i32 && t.environment == env
        };
        for t in o.transactions.iter().filter(in_env) {
            for part in t.participants.iter().filter(|x| x.project == p) {
                if part.action == pb::Action::Unchanged as i32 {
                    continue;
                }
                let line = format!("{} {}", t.id, part.to_version);
                assert!(
                    hooked.lines().any(|l| l == line),
                    "{k}: commit hook never ran for {line}"
                );
            }
        }
    }
}
