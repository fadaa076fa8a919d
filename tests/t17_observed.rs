//! What runs, beside what should (defect 8 of issue 27): `live` printed the
//! coordinator's checkpoint, never what each agent reports running, and a host changed
//! by hand was never noticed.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use lockstep::pb::{self, TransactionState};
use support::{Cluster, wait_for};

/// Points `root/current` at `releases/<version>` (created), as a person on the host
/// would.
fn change_by_hand(root: &Path, version: &str) {
    std::fs::create_dir_all(root.join("releases").join(version)).unwrap();
    let link = root.join("current.by-hand");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(Path::new("releases").join(version), &link).unwrap();
    std::fs::rename(&link, root.join("current")).unwrap();
}

fn observed<'a>(live: &'a serde_json::Value, project: &str) -> &'a serde_json::Value {
    live["observed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["project"] == project)
        .unwrap()
}

/// Given the family at T1, `live --observed` shows what each agent runs beside what
/// should run, with no drift; while T2 holds B in phase 1, B's row says the
/// transaction is at work (not drift); when a person points C at another build by
/// hand, C is marked as drift; and an agent that is down is shown as not answering.
#[tokio::test(flavor = "multi_thread")]
async fn live_observed_shows_what_each_agent_runs_and_marks_drift() {
    let mut c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    let live = c.cli(&["live", "--observed", "-o", "json"]).await.json();
    for p in ["A", "B", "C"] {
        let o = observed(&live, p);
        assert_eq!(o["runningVersion"], format!("T1{p}"), "{o}");
        assert_eq!(o["expectedVersion"], format!("T1{p}"), "{o}");
        assert!(o["drift"].is_null() || o["drift"] == false, "{o}");
    }

    c.block("B");
    assert_eq!(c.cli(&["release", "create", "T2", "B=T2B"]).await.code, 0);
    c.wait_state("T2", TransactionState::Preparing).await;
    change_by_hand(&c.agent("C").deploy_root, "hotfix-7");
    let table = c.cli(&["live", "--observed"]).await;
    assert_eq!(table.code, 0, "{table:?}");
    let (_, agents) = table.stdout.split_once("as the agents report it:").unwrap();
    let row = |p: &str| {
        agents
            .lines()
            .find(|l| l.starts_with(p) && l.contains("T1"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("B").contains("T2"), "B is held by T2: {table:?}");
    assert!(!row("B").contains("DRIFT"), "{table:?}");
    assert!(
        row("C").contains("hotfix-7") && row("C").contains("DRIFT"),
        "{table:?}"
    );
    c.heal("B");
    c.wait_state("T2", TransactionState::Committed).await;

    c.agent_mut("A").server.kill9().await;
    let live = c.cli(&["live", "--observed", "-o", "json"]).await.json();
    let a = observed(&live, "A");
    assert!(!a["error"].as_str().unwrap_or_default().is_empty(), "{a}");
    assert!(a["drift"].is_null() || a["drift"] == false, "{a}");
}

/// Given a coordinator with `--drift-check 200ms` and the family at T1, when a person
/// points B at another build by hand, then one DRIFT_DETECTED event names B and what
/// it runs, `live` shows the drift, and it is not written again while nothing changes;
/// when B is put back, one DRIFT_CLEARED follows and `live` no longer shows it.
#[tokio::test(flavor = "multi_thread")]
async fn the_drift_check_writes_one_event_per_change_and_live_shows_it() {
    let mut c = Cluster::new().await;
    c.coordinator
        .restart_with_args(vec!["--drift-check".into(), "200ms".into()])
        .await;
    c.add_family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    let kinds = |events: &[pb::Event], kind: pb::EventKind| {
        events.iter().filter(|e| e.kind == kind as i32).count()
    };

    change_by_hand(&c.agent("B").deploy_root, "by-hand");
    let found = wait_for("DRIFT_DETECTED for B", || async {
        let events = c.events().await;
        let drift: Vec<pb::Event> = events
            .into_iter()
            .filter(|e| e.kind == pb::EventKind::DriftDetected as i32)
            .collect();
        (!drift.is_empty()).then_some(drift)
    })
    .await;
    assert_eq!(found[0].project, "B");
    assert!(found[0].message.contains("runs by-hand"), "{:?}", found[0]);
    let live = c.cli(&["live"]).await.stdout;
    assert!(
        live.contains("DRIFT: B runs by-hand, the checkpoint says T1B"),
        "{live}"
    );

    change_by_hand(&c.agent("B").deploy_root, "T1B");
    wait_for("DRIFT_CLEARED for B", || async {
        let events = c.events().await;
        (kinds(&events, pb::EventKind::DriftCleared) == 1).then_some(events)
    })
    .await;
    let events = c.events().await;
    assert_eq!(
        kinds(&events, pb::EventKind::DriftDetected),
        1,
        "written once per change"
    );
    assert!(!c.cli(&["live"]).await.stdout.contains("DRIFT"));
}
