//! Phase 2 always finishes, and nobody waits on it blindly: a commit hook slower than
//! the coordinator's delivery timeout runs once, to its end; `--wait` returns as soon
//! as the outcome is settled, and at most `--wait-timeout` after the call, naming who
//! has not acknowledged.

#![allow(clippy::unwrap_used)]

mod support;

use lockstep::pb::{EventKind, TransactionState};
use support::{Cluster, wait_for};

/// A commit hook of B that records its start, waits while `held` exists, and records
/// its end.
fn held_commit_hook(log: &std::path::Path, held: &std::path::Path) -> String {
    format!(
        "echo start >> '{log}'; while [ -e '{held}' ]; do sleep 0.02; done; echo end >> '{log}'",
        log = log.display(),
        held = held.display()
    )
}

/// Given a coordinator whose Commit calls time out after 300 ms, when B's commit hook
/// takes longer than that, then the hook is not killed and run again: it runs once, to
/// its end, and the release commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_hook_slower_than_the_delivery_timeout_runs_once_to_its_end() {
    let mut c = Cluster::new().await;
    c.coordinator
        .restart_with_args(vec!["--delivery-timeout".into(), "300ms".into()])
        .await;
    let (log, held) = (c.control("B.commit-log"), c.control("B.commit-held"));
    std::fs::write(&held, "").unwrap();
    let hook = held_commit_hook(&log, &held);
    c.add_agent_with("B", &["--commit-hook".into(), hook]).await;
    c.register("B", &[]).await;

    assert_eq!(c.cli(&["release", "create", "T1", "B=T1B"]).await.code, 0);
    wait_for("B's commit hook to start", || async {
        log.exists().then_some(())
    })
    .await;
    // A delivery timeout passes while the hook runs (the coordinator then sends Commit
    // again, with backoff).
    wait_for("a Commit to B to time out", || async {
        let t = c.transaction("T1").await;
        let retries = c
            .events()
            .await
            .iter()
            .filter(|e| e.transaction_id == "T1" && e.kind == EventKind::DeliveryRetry as i32)
            .count();
        (retries >= 1 && t.state == TransactionState::Committing as i32).then_some(())
    })
    .await;
    std::fs::remove_file(&held).unwrap();

    c.wait_state("T1", TransactionState::Committed).await;
    assert_eq!(c.agent("B").live().as_deref(), Some("T1B"));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "start\nend\n",
        "the commit hook ran once, to its end"
    );
}

/// Given C dies while preparing T2, when T2 reaches its prepare deadline, then ABORT is
/// decided and `--wait` exits 1 at once, naming C, which has not restored its state yet
/// (the coordinator keeps retrying it).
#[tokio::test(flavor = "multi_thread")]
async fn waiting_on_a_release_exits_at_once_when_abort_is_decided_naming_who_has_not_restored() {
    let mut c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    let crash = vec![(
        "LOCKSTEP_CRASH_AT".to_string(),
        "agent-before-prepared-record".to_string(),
    )];
    c.agent_mut("C").server.restart_with(crash).await;

    let out = c
        .cli(&[
            "release",
            "create",
            "T2",
            "A=T2A",
            "B=T2B",
            "C=T2C",
            "--wait",
            "--timeout",
            "2s",
        ])
        .await;

    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not yet restored on C"), "{out:?}");
    assert_eq!(
        c.transaction("T2").await.state,
        TransactionState::Aborting as i32
    );
    c.agent_mut("C").server.restart_with(Vec::new()).await;
    c.wait_state("T2", TransactionState::Aborted).await;
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")])
    );
}

/// Given B's commit hook does not finish, when T1 is committed, then `--wait` waits
/// for the acknowledgements until `--wait-timeout` and exits 5 ("committed, not yet
/// live everywhere") naming B; T1 finishes on its own once the hook does.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_on_a_committed_release_gives_up_after_the_wait_timeout_naming_who_is_not_live() {
    let mut c = Cluster::new().await;
    let (log, held) = (c.control("B.commit-log"), c.control("B.commit-held"));
    std::fs::write(&held, "").unwrap();
    let hook = held_commit_hook(&log, &held);
    c.add_agent_with("B", &["--commit-hook".into(), hook]).await;
    c.register("B", &[]).await;
    c.add_agent("A").await;
    c.register("A", &["B"]).await;

    let out = c
        .cli(&[
            "release",
            "create",
            "T1",
            "A=T1A",
            "B=T1B",
            "--wait",
            "--wait-timeout",
            "1s",
        ])
        .await;

    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stderr
            .contains("T1 is committed but not yet live on A, B"),
        "{out:?}"
    );
    std::fs::remove_file(&held).unwrap();
    c.wait_state("T1", TransactionState::Committed).await;
    assert_eq!(c.agent("A").live().as_deref(), Some("T1A"));
}

/// Review finding of stop 59: `--wait` forgot a decision it had already read. When the
/// coordinator went away after the CLI read DECIDED_ABORT (events reach a watcher only
/// once durable, so the outcome was known), the wait retried until `--wait-timeout`
/// and exited 3, "outcome unknown". Given C refusing and B down (so the abort stays
/// ABORTING), when the coordinator is killed once the CLI has printed DECIDED_ABORT,
/// then the CLI exits 1 (aborted) after its grace, saying it is as the log said.
#[tokio::test(flavor = "multi_thread")]
async fn a_wait_that_read_the_abort_ends_aborted_when_the_coordinator_goes_away() {
    use tokio::io::AsyncBufReadExt;
    let mut c = Cluster::family().await;
    c.fail("C", "C is broken");
    c.agents.get_mut("B").unwrap().server.kill9().await;
    let mut cli = tokio::process::Command::new(support::bin("lockstep"))
        .args(["release", "create", "T1", "A=1", "B=1", "C=1", "--wait"])
        .args(["--wait-timeout", "40s"])
        .env("LOCKSTEP_COORDINATOR", c.coordinators())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(cli.stderr.take().unwrap()).lines();
    let mut said = String::new();
    let read_abort = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            said.push_str(&line);
            said.push('\n');
            if line.contains("DECIDED_ABORT") {
                return;
            }
        }
        panic!("the CLI ended before it read the abort: {said}");
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read_abort)
        .await
        .expect("the CLI read no DECIDED_ABORT");
    c.coordinator.kill9().await;
    let rest = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            said.push_str(&line);
            said.push('\n');
        }
    };
    let (status, ()) = tokio::join!(cli.wait(), rest);
    assert_eq!(
        status.unwrap().code(),
        Some(1),
        "aborted, not unknown: {said}"
    );
    assert!(said.contains("T1 is aborted"), "{said}");
    // Why, as the decision's event said, and that the coordinator was not asked.
    assert!(
        said.contains("C is broken") && said.contains("stopped answering"),
        "{said}"
    );
}
