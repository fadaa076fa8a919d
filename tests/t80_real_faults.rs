//! Beside the simulation: random SIGKILLs of the real binaries during streams of
//! releases (with artifacts and SQLite migrations), reverts and rollbacks, on agents
//! with commit hooks and their default `--ask-decision-after`; then the simulation's
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

use lockstep::pb;
use lockstep_participant::ledger::{self, Ledger};
use lockstep_sim::checker::{self, ClientRecord, Observation, ParticipantView, Told};
use lockstep_store::RocksKv;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use support::{Cluster, wait_for};

const PROJECTS: [&str; 4] = ["A", "B", "C", "D"];

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

/// What one command of a stream asks for.
fn command(
    rng: &mut SmallRng,
    root: &std::path::Path,
    stream: usize,
    i: usize,
) -> (String, Vec<String>) {
    let sets: [&[&str]; 5] = [&["A", "B", "C"], &["B"], &["C"], &["D"], &["B", "D"]];
    let id = format!("s{stream}-{i}");
    match rng.random_range(0..10) {
        0 if i > 0 => {
            let earlier = format!("s{stream}-{}", rng.random_range(0..i));
            let args = ["revert", earlier.as_str(), "--id", &format!("{id}-revert")];
            ("revert".into(), args.map(String::from).to_vec())
        }
        1 => {
            let args = ["rollback", "--id", &format!("{id}-rollback")];
            ("rollback".into(), args.map(String::from).to_vec())
        }
        _ => {
            let set = sets[rng.random_range(0..sets.len())];
            let mut args: Vec<String> = vec!["release".into(), "create".into(), id.clone()];
            for p in set {
                let version = format!("{p}{stream}.{i}");
                args.push(format!("{p}={version}"));
                args.push("--artifact".into());
                args.push(build(root, p, &version, rng.random_range(0..=3)));
            }
            ("release".into(), args)
        }
    }
}

/// One stream of releases, reverts and rollbacks through the real CLI, until `done`,
/// recording what it was told.
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
        args.extend(["--wait", "--timeout", "2s", "-o", "json"].map(String::from));
        let out = tokio::process::Command::new(support::bin("lockstep"))
            .args(&args)
            .env("LOCKSTEP_COORDINATOR", url)
            .output()
            .await
            .unwrap();
        let json: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        let field = |k: &str| {
            json.as_ref()
                .and_then(|j| j[k].as_str())
                .unwrap_or_default()
                .to_string()
        };
        let (state, tx) = (field("state"), field("id"));
        let result = match (out.status.code(), state.as_str()) {
            (Some(0), "TRANSACTION_STATE_COMMITTED") => {
                Told::Outcome(pb::TransactionState::Committed)
            }
            (Some(1), "TRANSACTION_STATE_ABORTED") => Told::Outcome(pb::TransactionState::Aborted),
            (Some(3), _) => Told::Unknown(String::from_utf8_lossy(&out.stderr).into_owned()),
            (code, _) => Told::Refused(format!(
                "exit {code:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )),
        };
        if !tx.is_empty() {
            told.lock().unwrap().push(ClientRecord {
                client: stream,
                op,
                tx,
                told: result,
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_sigkills_of_the_real_binaries_keep_every_invariant() {
    let seed: u64 = std::env::var("LOCKSTEP_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut c = Cluster::new().await;
    for p in ["B", "C", "D", "A"] {
        // The agent's default --ask-decision-after; a SQLite database; a commit hook
        // that logs each transaction it makes live.
        let extra = [
            "--database".to_string(),
            format!(
                "sqlite://{}",
                c.dir.path().join(format!("{p}.db")).display()
            ),
            "--commit-hook".to_string(),
            format!(
                "echo \"$LOCKSTEP_TX $LOCKSTEP_VERSION\" >> '{}'",
                commits(&c, p).display()
            ),
        ];
        c.add_agent_with(p, &extra).await;
        c.register(p, if p == "A" { &["B", "C"] } else { &[] })
            .await;
    }

    let told: Arc<Mutex<Vec<ClientRecord>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let (url, root) = (c.coordinator.url(), c.dir.path().to_path_buf());
    let streams = futures::future::join_all(
        (0..3).map(|s| stream(&url, &root, s, done.clone(), seed, told.clone())),
    );
    let chaos = async {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0xc4a05);
        let mut kills = 0;
        while kills < KILLS {
            tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
            let victim = rng.random_range(0..=PROJECTS.len());
            let server = match victim {
                0 => &mut c.coordinator,
                n => &mut c.agents.get_mut(PROJECTS[n - 1]).unwrap().server,
            };
            server.kill9().await;
            kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..400))).await;
            server.restart().await;
        }
        done.store(true, Ordering::SeqCst);
        kills
    };
    let (_, kills) = tokio::join!(streams, chaos);

    // Faults over: every transaction must end.
    let active = wait_for("every transaction to end", || async {
        let list = c
            .client()
            .await
            .list_releases(pb::ListReleasesRequest {
                active_only: true,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        list.transactions.is_empty().then_some(())
    });
    active.await;

    let mut co = c.client().await;
    let transactions = co
        .list_releases(pb::ListReleasesRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .transactions
        .into_iter()
        .rev()
        .collect();
    let checkpoints = co
        .get_history(pb::GetHistoryRequest::default())
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    let events = c.events().await;
    let mut participants = std::collections::BTreeMap::new();
    for p in PROJECTS {
        let live = c.agent(p).live();
        c.agent_mut(p).server.kill9().await;
        let kv = RocksKv::open(&c.dir.path().join(format!("agent-{p}")), ledger::ALL).unwrap();
        let phases = Ledger::open(Arc::new(kv), lockstep_store::WriterMode::Thread)
            .unwrap()
            .all()
            .unwrap()
            .into_iter()
            .map(|(tx, e)| (tx, e.phase))
            .collect();
        participants.insert(
            p.to_string(),
            ParticipantView {
                live,
                phases,
                effects: None,
            },
        );
    }
    let observation = Observation {
        transactions,
        checkpoints,
        events,
        participants,
        clients: told.lock().unwrap().clone(),
        lost_data: Default::default(),
    };

    let violations = checker::check(&observation);

    assert!(
        violations.is_empty(),
        "seed {seed}, {kills} kills:\n{}",
        violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    check_effects(&c, &observation).await;
    let restored = observation
        .transactions
        .iter()
        .filter(|t| {
            t.state == pb::TransactionState::Committed as i32
                && t.kind != pb::TransactionKind::Release as i32
        })
        .count();
    assert!(
        restored > 0,
        "some reverts and rollbacks commit under the chaos too"
    );
    let committed = observation.checkpoints.len();
    let aborted = observation.transactions.len() - committed;
    assert!(
        committed > 0 && aborted > 0,
        "the chaos must hit some releases and spare others: {committed} committed, {aborted} aborted"
    );
}

/// Where `project`'s commit hook logs what it made live.
fn commits(c: &Cluster, project: &str) -> std::path::PathBuf {
    c.dir.path().join(format!("{project}.commits"))
}

/// What the participants did, beyond their records: each one's `current/` holds the
/// build of the version the newest checkpoint names (reverts and rollbacks included),
/// its schema is at the checkpoint's version, and its commit hook ran for every
/// committed transaction that changed it.
async fn check_effects(c: &Cluster, o: &Observation) {
    let newest = o.checkpoints.last().unwrap();
    for p in PROJECTS {
        let Some(live) = newest.versions.iter().find(|v| v.project == p) else {
            continue;
        };
        let app = c.agent(p).deploy_root.join("current/app.txt");
        let shown = std::fs::read_to_string(&app).unwrap_or_default();
        assert_eq!(
            shown, live.version,
            "{p}: current/ holds the live version's build"
        );
        let schema = lockstep_participant::schema::Schema::open(
            &format!(
                "sqlite://{}",
                c.dir.path().join(format!("{p}.db")).display()
            ),
            lockstep_participant::schema::Mode::Reversible,
            p,
        )
        .await
        .unwrap();
        let at = schema.live().await.unwrap().version;
        let recorded = live.schema.as_ref().map_or(0, |s| s.version);
        assert_eq!(at, recorded, "{p}: the schema is where the checkpoint says");
        let hooked = std::fs::read_to_string(commits(c, p)).unwrap_or_default();
        for t in o
            .transactions
            .iter()
            .filter(|t| t.state == pb::TransactionState::Committed as i32)
        {
            for part in t.participants.iter().filter(|x| x.project == p) {
                if part.action == pb::Action::Unchanged as i32 {
                    continue;
                }
                let line = format!("{} {}", t.id, part.to_version);
                assert!(
                    hooked.lines().any(|l| l == line),
                    "{p}: commit hook never ran for {line}"
                );
            }
        }
    }
}
