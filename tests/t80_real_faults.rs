//! Beside the simulation: random SIGKILLs of the real binaries during a stream of
//! releases, then the simulation's invariant checker judges what the servers report
//! (transactions, checkpoints and the event log over gRPC; each agent's own ledger from
//! its RocksDB once stopped; what is live from the deploy roots; what the CLI told).
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

/// One stream of releases through the real CLI, until `done`, recording what it was told.
async fn stream(
    url: String,
    stream: usize,
    done: Arc<AtomicBool>,
    seed: u64,
    told: Arc<Mutex<Vec<ClientRecord>>>,
) {
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_add(stream as u64));
    let sets: [&[&str]; 5] = [&["A", "B", "C"], &["B"], &["C"], &["D"], &["B", "D"]];
    for i in 0.. {
        if done.load(Ordering::SeqCst) {
            break;
        }
        let id = format!("s{stream}-{i}");
        let set = sets[rng.random_range(0..sets.len())];
        let mut args: Vec<String> = vec!["release".into(), "create".into(), id.clone()];
        args.extend(set.iter().map(|p| format!("{p}={p}{stream}.{i}")));
        args.extend(["--wait", "--timeout", "2s", "-o", "json"].map(String::from));
        let out = tokio::process::Command::new(support::bin("lockstep"))
            .args(&args)
            .env("LOCKSTEP_COORDINATOR", &url)
            .output()
            .await
            .unwrap();
        let json: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        let state = json
            .as_ref()
            .and_then(|j| j["state"].as_str())
            .unwrap_or_default()
            .to_string();
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
        told.lock().unwrap().push(ClientRecord {
            client: stream,
            op: "release".into(),
            tx: id,
            told: result,
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_sigkills_of_the_real_binaries_keep_every_invariant() {
    let seed: u64 = std::env::var("LOCKSTEP_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut c = Cluster::new().await;
    let quick = ["--ask-decision-after".to_string(), "300ms".to_string()];
    for p in ["B", "C", "D"] {
        c.add_agent_with(p, &quick).await;
        c.register(p, &[]).await;
    }
    c.add_agent_with("A", &quick).await;
    c.register("A", &["B", "C"]).await;

    let url = c.coordinator.url();
    let told: Arc<Mutex<Vec<ClientRecord>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let streams = futures::future::join_all(
        (0..3).map(|s| stream(url.clone(), s, done.clone(), seed, told.clone())),
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
    let committed = observation.checkpoints.len();
    let aborted = observation.transactions.len() - committed;
    assert!(
        committed > 0 && aborted > 0,
        "the chaos must hit some releases and spare others: {committed} committed, {aborted} aborted"
    );
}
