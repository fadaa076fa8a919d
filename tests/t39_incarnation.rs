//! A coordinator's incarnation (made with its data directory, carried in every order):
//! after the data directory was replaced, a new `T1` is never reported as the old `T1`
//! the agent still runs, and an agent holding a PREPARED vote of the old coordinator
//! keeps it staged instead of hearing a presumed ABORT from the new one.

#![allow(clippy::unwrap_used)]

mod support;

use lockstep::pb::{self, TransactionState};
use support::{Cluster, wait_for};

/// The coordinator loses its data directory and starts empty at the same address.
async fn replace_coordinator_data(c: &mut Cluster) {
    c.coordinator.kill9().await;
    std::fs::remove_dir_all(c.dir.path().join("coordinator")).unwrap();
    c.coordinator.restart().await;
}

/// Given B runs T1B from release T1, when the coordinator's data directory is
/// replaced and someone releases a new T1 with B at T9B, then B refuses it naming the
/// other coordinator, the new T1 aborts (it is not reported COMMITTED), and T1B stays
/// live.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_coordinator_cannot_pass_a_new_t1_off_as_the_old_one() {
    let mut c = Cluster::new().await;
    c.add_agent("B").await;
    c.register("B", &[]).await;
    c.release("T1", &["B=T1B"], 0).await;
    replace_coordinator_data(&mut c).await;
    c.register("B", &[]).await;

    let out = c.cli(&["release", "create", "T1", "B=T9B", "--wait"]).await;

    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("prepared by another coordinator"),
        "{out:?}"
    );
    c.wait_state("T1", TransactionState::Aborted).await;
    assert_eq!(c.agent("B").live().as_deref(), Some("T1B"));
}

/// Given B voted PREPARED on T2 and the coordinator's data directory is then replaced,
/// when B restarts and asks for T2's decision, then the new coordinator says it did not
/// make T2 (instead of presuming ABORT), and B keeps T2 staged for a person.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_prepared_under_a_replaced_coordinator_keeps_its_change_staged() {
    let mut c = Cluster::new().await;
    c.add_agent("B").await;
    c.register("B", &[]).await;
    c.add_agent("A").await;
    c.register("A", &["B"]).await;
    c.release("T1", &["A=T1A", "B=T1B"], 0).await;
    c.block("A");
    let out = c.cli(&["release", "create", "T2", "A=T2A", "B=T2B"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    wait_for("B to hold T2 staged", || async {
        let staged = c.agent("B").status().await.staged;
        (!staged.is_empty()).then_some(())
    })
    .await;
    replace_coordinator_data(&mut c).await;

    c.agent_mut("B").server.restart().await;

    wait_for("B to hear that the coordinator did not make T2", || async {
        c.agent("B")
            .server
            .log()
            .contains("did not make the transaction T2")
            .then_some(())
    })
    .await;
    let staged = c.agent("B").status().await.staged;
    let ids: Vec<&str> = staged.iter().map(|s| s.transaction_id.as_str()).collect();
    assert_eq!(ids, ["T2"], "B keeps T2 staged");
    assert_eq!(c.agent("B").live().as_deref(), Some("T1B"));
}

fn prepare(version: &str, incarnation: &str) -> pb::PrepareRequest {
    pb::PrepareRequest {
        transaction_id: "T5".into(),
        environment: "default".into(),
        project: "B".into(),
        version: version.into(),
        coordinator_incarnation: incarnation.into(),
        ..Default::default()
    }
}

/// Given B prepared T5 at V1 for coordinator incarnation X, then a Prepare of T5 with
/// other content or from incarnation Y is refused and the first record kept; a Commit
/// from Y is refused; an Abort from Y leaves T5 staged; X's Abort undoes it.
#[tokio::test(flavor = "multi_thread")]
async fn orders_for_a_recorded_transaction_from_another_coordinator_or_with_other_content_are_refused()
 {
    let mut c = Cluster::new().await;
    c.add_agent("B").await;
    let mut b = c.agent("B").client().await;
    let vote = |r: pb::PrepareResponse| (r.vote, r.reason);

    let first = vote(b.prepare(prepare("V1", "X")).await.unwrap().into_inner());
    let other = vote(b.prepare(prepare("V2", "X")).await.unwrap().into_inner());
    let elsewhere = vote(b.prepare(prepare("V1", "Y")).await.unwrap().into_inner());
    let again = vote(b.prepare(prepare("V1", "X")).await.unwrap().into_inner());

    assert_eq!(first.0, pb::Vote::Prepared as i32, "{first:?}");
    assert_eq!(other.0, pb::Vote::Refused as i32);
    assert!(other.1.contains("other content"), "{other:?}");
    assert_eq!(elsewhere.0, pb::Vote::Refused as i32);
    assert!(elsewhere.1.contains("another coordinator"), "{elsewhere:?}");
    assert_eq!(
        again.0,
        pb::Vote::Prepared as i32,
        "the same Prepare: the same vote"
    );
    let commit = |incarnation: &str| pb::CommitRequest {
        transaction_id: "T5".into(),
        project: "B".into(),
        coordinator_incarnation: incarnation.into(),
        coordinator_term: 0,
    };
    let refused = b.commit(commit("Y")).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let abort = |incarnation: &str| pb::AbortRequest {
        transaction_id: "T5".into(),
        project: "B".into(),
        reason: "test".into(),
        coordinator_incarnation: incarnation.into(),
        coordinator_term: 0,
    };
    b.abort(abort("Y")).await.unwrap();
    assert_eq!(
        c.agent("B").status().await.staged.len(),
        1,
        "Y's Abort undoes nothing"
    );
    b.abort(abort("X")).await.unwrap();
    assert!(c.agent("B").status().await.staged.is_empty());
}
