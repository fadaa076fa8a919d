//! Never two transactions on one project, also across a coordinator restart: the
//! projects a decided transaction holds stay held until its last acknowledgement,
//! whatever recovery does to the transactions queued behind it.

#![allow(clippy::unwrap_used)]

mod support;

use lockstep::pb::TransactionState;
use support::{Cluster, wait_for};

/// A cluster with one agent X whose commit hook waits while the returned file exists,
/// and T1 (X=1) COMMITTING there, its Commit not acknowledged.
async fn committing_t1_on_x() -> (Cluster, std::path::PathBuf) {
    let mut c = Cluster::new().await;
    let held = c.control("X.commit-held");
    std::fs::write(&held, "").unwrap();
    let hook = format!("while [ -e '{}' ]; do sleep 0.02; done", held.display());
    c.add_agent_with("X", &["--commit-hook".into(), hook]).await;
    c.register("X", &[]).await;
    assert_eq!(c.cli(&["release", "create", "T1", "X=1"]).await.code, 0);
    c.wait_state("T1", TransactionState::Committing).await;
    (c, held)
}

/// Given T1 COMMITTING on X (X's commit hook still running) and T2 queued behind it,
/// when the coordinator restarts (T2 is aborted: it had no decision), then a new T3 on
/// X still waits for T1, and runs once T1 is committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_transaction_aborted_by_a_restart_does_not_free_what_another_holds() {
    let (mut c, held) = committing_t1_on_x().await;
    assert_eq!(c.cli(&["release", "create", "T2", "X=2"]).await.code, 0);
    c.wait_state("T2", TransactionState::Pending).await;

    c.coordinator.kill9().await;
    c.coordinator.restart().await;
    c.wait_state("T2", TransactionState::Aborted).await;

    assert_eq!(c.cli(&["release", "create", "T3", "X=3"]).await.code, 0);
    let t3 = c.transaction("T3").await;
    assert_eq!(
        (t3.state, t3.reason.as_str()),
        (
            TransactionState::Pending as i32,
            "waiting for T1, which holds project X"
        ),
        "T3 must queue behind T1, which still holds X"
    );

    std::fs::remove_file(&held).unwrap();
    c.wait_state("T1", TransactionState::Committed).await;
    c.wait_state("T3", TransactionState::Committed).await;
    wait_for("X to run version 3", || async {
        (c.agent("X").live().as_deref() == Some("3")).then_some(())
    })
    .await;
}

/// Given T1 COMMITTING and X's Commit not yet acknowledged, when X's agent moves to
/// another address and is registered there again, then the Commit is delivered at the
/// new address and T1 ends COMMITTED (before, every retry went to the old address).
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_moved_and_was_registered_again_receives_its_commit() {
    let (mut c, held) = committing_t1_on_x().await;

    let old = c.agent("X").server.url();
    std::fs::remove_file(&held).unwrap();
    c.agent_mut("X").server.restart_elsewhere().await;
    let new = c.agent("X").server.url();
    assert_ne!(old, new, "the agent moved");
    let moved = c.cli(&["project", "set", "X", "--endpoint", &new]).await;
    assert_eq!(moved.code, 0, "{moved:?}");

    c.wait_state("T1", TransactionState::Committed).await;
    assert_eq!(c.agent("X").live().as_deref(), Some("1"));
}
