//! Phase 2 that retrying cannot finish: a participant whose answer no retry can change
//! (its ledger was lost) shows `needs resolution`, and a person resolves it with
//! `lockstep resolve`, audited in the log; a participant that answers cannot be resolved
//! by hand; `lockstep retry` ends a backoff wait at once after an outage.

#![allow(clippy::unwrap_used)]

mod support;

use lockstep::pb::{self, EventKind, TransactionState};
use support::{Cluster, wait_for};

/// A (requires B) and B, both released at T1; T2 created with A's Prepare held, and B
/// voted PREPARED on it.
async fn t2_with_b_prepared(c: &mut Cluster) {
    c.add_agent("B").await;
    c.register("B", &[]).await;
    c.add_agent("A").await;
    c.register("A", &["B"]).await;
    c.release("T1", &["A=T1A", "B=T1B"], 0).await;
    c.block("A");
    let out = c.cli(&["release", "create", "T2", "A=T2A", "B=T2B"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    wait_for("B to vote PREPARED on T2", || async {
        let t = c.transaction("T2").await;
        let b = t.participants.iter().find(|p| p.project == "B")?;
        (b.vote == pb::Vote::Prepared as i32).then_some(())
    })
    .await;
}

fn participant<'a>(t: &'a pb::Transaction, project: &str) -> &'a pb::Participation {
    t.participants
        .iter()
        .find(|p| p.project == project)
        .unwrap()
}

/// Waits until B's phase 2 delivery of T2 has failed.
async fn b_delivery_failed(c: &Cluster) -> pb::Transaction {
    wait_for("the Commit to B to fail", || async {
        let t = c.transaction("T2").await;
        (!participant(&t, "B").delivery_error.is_empty()).then_some(t)
    })
    .await
}

/// Given B voted PREPARED on T2 and then lost its ledger (its host was rebuilt), when
/// COMMIT is decided, then B answers "never prepared here", retrying stops, and T2 shows
/// `needs resolution` in `release get` and `live`; a person then records B as committed
/// (after a dry run; "aborted" is refused for a COMMIT), the log says who, why and what
/// B answered, and T2 finishes: A goes live after its child.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_lost_its_ledger_needs_resolution_and_a_person_resolves_it() {
    let mut c = Cluster::new().await;
    t2_with_b_prepared(&mut c).await;
    c.agent_mut("B").server.kill9().await;
    std::fs::remove_dir_all(c.dir.path().join("agent-B")).unwrap();
    c.agent_mut("B").server.restart().await;
    c.heal("A");

    let t = wait_for("T2 to need resolution", || async {
        let t = c.transaction("T2").await;
        t.needs_resolution.then_some(t)
    })
    .await;
    assert_eq!(t.state, TransactionState::Committing as i32);
    let b = participant(&t, "B");
    assert!(
        b.needs_resolution && b.delivery_error.contains("never prepared here"),
        "{b:?}"
    );
    assert_eq!(
        c.agent("A").live().as_deref(),
        Some("T1A"),
        "A waits for its child"
    );
    let get = c.cli(&["release", "get", "T2"]).await;
    assert!(get.stdout.contains("NEEDS RESOLUTION: "), "{get:?}");
    let live = c.cli(&["live"]).await;
    assert!(live.stdout.contains("B: NEEDS RESOLUTION"), "{live:?}");

    let resolve = ["resolve", "T2", "--participant", "B", "--actor", "alice"];
    let wrong = [&resolve[..], &["--as", "aborted", "--reason", "B is gone"]].concat();
    let out = c.cli(&wrong).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("can only be resolved as committed"),
        "{out:?}"
    );
    let why = "B rebuilt; T2B put live by hand";
    let dry = [
        &resolve[..],
        &["--as", "committed", "--reason", why, "--dry-run"],
    ]
    .concat();
    let out = c.cli(&dry).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("dry run: would record"), "{out:?}");
    assert!(
        c.transaction("T2").await.needs_resolution,
        "a dry run changes nothing"
    );

    let out = c
        .cli(&[&resolve[..], &["--as", "committed", "--reason", why]].concat())
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let t = c.wait_state("T2", TransactionState::Committed).await;
    assert_eq!(c.agent("A").live().as_deref(), Some("T2A"));
    let b = participant(&t, "B");
    assert!(
        b.resolution.contains("resolved as committed by alice"),
        "{b:?}"
    );
    let events = c.events().await;
    let resolved: Vec<&pb::Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Resolved as i32)
        .collect();
    assert_eq!(resolved.len(), 1, "{events:#?}");
    assert_eq!(resolved[0].actor, "alice");
    assert!(
        resolved[0].message.contains(why) && resolved[0].message.contains("never prepared here"),
        "{:?}",
        resolved[0]
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::NeedsResolution as i32)
    );
}

/// Given B went away after voting PREPARED on T2, when a person tries to resolve it,
/// then while B cannot be reached a dry run says what would be recorded; once B is back
/// the decision sent just before resolving reaches it, so the resolution is refused and
/// T2 finishes as the protocol would.
#[tokio::test(flavor = "multi_thread")]
async fn a_participant_that_answers_cannot_be_resolved_by_hand() {
    let mut c = Cluster::new().await;
    // The coordinator's own retries wait 60 s, so the Commit that reaches B once it is
    // back is the one resolve sends (otherwise a retry may win the race and end T2
    // before resolve asks).
    let slow = ["--retry-initial-delay", "60s", "--retry-max-delay", "60s"];
    c.coordinator
        .restart_with_args(slow.iter().map(|s| s.to_string()).collect())
        .await;
    t2_with_b_prepared(&mut c).await;
    c.agent_mut("B").server.kill9().await;
    c.heal("A");
    b_delivery_failed(&c).await;
    let resolve = [
        "resolve",
        "T2",
        "--participant",
        "B",
        "--as",
        "committed",
        "--reason",
        "looks gone",
    ];

    let out = c.cli(&[&resolve[..], &["--dry-run"]].concat()).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("dry run: would record"), "{out:?}");
    c.agent_mut("B").server.restart().await;
    let out = c.cli(&resolve).await;

    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("B has acknowledged"), "{out:?}");
    c.wait_state("T2", TransactionState::Committed).await;
    assert_eq!(c.agent("B").live().as_deref(), Some("T2B"));
    assert_eq!(c.agent("A").live().as_deref(), Some("T2A"));
    let events = c.events().await;
    assert!(!events.iter().any(|e| e.kind == EventKind::Resolved as i32));
}

/// Given a coordinator that waits 60 s between two calls to a failing participant,
/// when B is back after an outage and a person runs `lockstep retry T2`, then the
/// Commit goes at once and T2 commits well within the wait it would have had.
#[tokio::test(flavor = "multi_thread")]
async fn retry_ends_a_backoff_wait_at_once_after_an_outage() {
    let mut c = Cluster::new().await;
    let slow = ["--retry-initial-delay", "60s", "--retry-max-delay", "60s"];
    c.coordinator
        .restart_with_args(slow.iter().map(|s| s.to_string()).collect())
        .await;
    t2_with_b_prepared(&mut c).await;
    c.agent_mut("B").server.kill9().await;
    c.heal("A");
    b_delivery_failed(&c).await;
    c.agent_mut("B").server.restart().await;

    let out = c.cli(&["retry", "T2", "--actor", "bob"]).await;

    assert_eq!(out.code, 0, "{out:?}");
    // The deadline of wait_state (30 s) is shorter than the 45-60 s backoff wait.
    c.wait_state("T2", TransactionState::Committed).await;
    let events = c.events().await;
    let asked = events
        .iter()
        .find(|e| e.kind == EventKind::RetryRequested as i32)
        .unwrap();
    assert_eq!(asked.actor, "bob");
}
