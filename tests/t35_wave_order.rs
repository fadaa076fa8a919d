//! Phase 2 goes in dependency waves on every path: children go live before parents
//! also when a parent's agent does not wait for its Commit but asks the coordinator
//! (GetDecision, after `--ask-decision-after`).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use lockstep::pb::TransactionState;
use support::{Cluster, wait_for};

/// Given A requires B and B's commit hook still runs, when A's agent asks for T1's
/// decision, then A hears "undecided" and keeps its old version until B acknowledged;
/// then A goes live.
#[tokio::test(flavor = "multi_thread")]
async fn a_parent_that_asks_for_the_decision_goes_live_only_after_its_child() {
    let mut c = Cluster::new().await;
    let running = c.control("B.commit-running");
    let held = c.control("B.commit-held");
    std::fs::write(&held, "").unwrap();
    let hook = format!(
        "touch '{}'; while [ -e '{}' ]; do sleep 0.02; done",
        running.display(),
        held.display()
    );
    c.add_agent_with("B", &["--commit-hook".into(), hook]).await;
    c.register("B", &[]).await;
    let ask = ["--ask-decision-after".to_string(), "100ms".to_string()];
    c.add_agent_with("A", &ask).await;
    c.register("A", &["B"]).await;

    let created = c.cli(&["release", "create", "T1", "A=T1A", "B=T1B"]).await;
    assert_eq!(created.code, 0, "{created:?}");
    wait_for("B's commit hook to start", || async {
        running.exists().then_some(())
    })
    .await;
    // A voted PREPARED before B heard COMMIT, so it asks 100 ms later and again with
    // backoff (100 ms, 200 ms, 400 ms, 800 ms): over two seconds it asks five times, and
    // every answer must keep it where it is.
    let watched_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < watched_until {
        assert_eq!(
            c.agent("A").live(),
            None,
            "A went live while its child B was still going live"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t1 = c.transaction("T1").await;
    assert!(
        t1.participants.iter().all(|p| !p.acknowledged),
        "nobody has acknowledged yet: {t1:?}"
    );

    std::fs::remove_file(&held).unwrap();
    c.wait_state("T1", TransactionState::Committed).await;
    assert_eq!(c.agent("B").live().as_deref(), Some("T1B"));
    assert_eq!(c.agent("A").live().as_deref(), Some("T1A"));
}
