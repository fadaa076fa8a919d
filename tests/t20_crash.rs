//! Crashes: the coordinator and agents are killed with SIGKILL at the protocol's
//! critical points; after a restart every transaction ends all-committed or
//! all-aborted, matching what was durable.

#![allow(clippy::unwrap_used)]

mod support;

use lockstep::pb::{self, TransactionState};
use support::{Cluster, wait_for};

fn crash_at(point: &str) -> Vec<(String, String)> {
    vec![("LOCKSTEP_CRASH_AT".into(), point.into())]
}

async fn voted(c: &Cluster, tx: &str, projects: &[&str]) {
    wait_for(
        &format!("{projects:?} to vote PREPARED on {tx}"),
        || async {
            let t = c
                .client()
                .await
                .get_release(pb::GetReleaseRequest { id: tx.into() })
                .await
                .ok()?
                .into_inner();
            projects
                .iter()
                .all(|p| {
                    t.participants
                        .iter()
                        .any(|x| &x.project == p && x.vote == pb::Vote::Prepared as i32)
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_killed_after_some_prepares_and_before_the_decision_aborts_everywhere() {
    let mut c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    c.block("C");
    assert_eq!(
        c.cli(&["release", "create", "T4", "A=T4A", "B=T4B", "C=T4C"])
            .await
            .code,
        0
    );
    voted(&c, "T4", &["A", "B"]).await;

    c.coordinator.kill9().await;
    c.coordinator.restart().await;

    let t = c.wait_state("T4", TransactionState::Aborted).await;
    assert!(t.reason.contains("presumed abort"), "{}", t.reason);
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")])
    );
    for p in ["A", "B", "C"] {
        assert_eq!(
            c.agent(p).releases(),
            [format!("T1{p}")],
            "{p} keeps nothing of T4"
        );
        assert!(
            c.agent(p).status().await.staged.is_empty(),
            "{p} has nothing staged"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_killed_after_the_durable_commit_decision_commits_everywhere_on_restart() {
    let mut c = Cluster::with_coordinator_env(crash_at("after-commit-decision")).await;
    c.add_family().await;
    assert_eq!(
        c.cli(&["release", "create", "T1", "A=T1A", "B=T1B", "C=T1C"])
            .await
            .code,
        0
    );
    c.coordinator.exited().await;

    // Decided and durable, but no Commit was sent: nothing is live, all is staged.
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", ""), ("B", ""), ("C", "")])
    );
    for p in ["A", "B", "C"] {
        let staged = c.agent(p).status().await.staged;
        assert_eq!(staged.len(), 1, "{p} holds T1 prepared");
        assert_eq!(staged[0].transaction_id, "T1");
    }

    c.coordinator.restart_with(Vec::new()).await;

    let t = c.wait_state("T1", TransactionState::Committed).await;
    assert_eq!(t.checkpoint, 1);
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")])
    );
    let history = c.cli(&["history", "-o", "json"]).await.json();
    assert_eq!(
        history["checkpoints"].as_array().unwrap().len(),
        1,
        "one checkpoint, recorded once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_killed_after_some_commits_were_acknowledged_finishes_the_rest() {
    let mut c = Cluster::with_coordinator_env(crash_at("after-first-commit-ack")).await;
    c.add_family().await;
    assert_eq!(
        c.cli(&["release", "create", "T1", "A=T1A", "B=T1B", "C=T1C"])
            .await
            .code,
        0
    );
    c.coordinator.exited().await;
    restart_finishes_t1(&mut c).await;
}

/// Stopped after the first Commit was acknowledged, `T1` has reached wave 1 only (B
/// and C, in parallel; A, the parent, goes in wave 2 and was never told); the restart
/// finishes it.
async fn restart_finishes_t1(c: &mut Cluster) {
    let live = c.live();
    assert_eq!(live["A"], None, "parents go live after their children");
    assert!(live["B"].is_some() || live["C"].is_some(), "{live:?}");

    c.coordinator.restart_with(Vec::new()).await;
    c.wait_state("T1", TransactionState::Committed).await;
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")])
    );
}

/// A defect that panics in a transaction's driver, between two of its Commits, must not
/// leave the release half-delivered while the coordinator serves on (tokio ends the
/// task and nothing else hears of it): the coordinator stops, saying why, and its
/// restart finishes the release from the log, as after a crash.
#[tokio::test(flavor = "multi_thread")]
async fn a_driver_that_panics_stops_the_coordinator_and_its_restart_finishes_the_release() {
    let mut c = Cluster::with_coordinator_env(crash_at("panic:after-first-commit-ack")).await;
    c.add_family().await;
    let created = c.cli(&["release", "create", "T1", "A=T1A", "B=T1B", "C=T1C"]);
    assert_eq!(created.await.code, 0);
    let status = c.coordinator.exited().await;
    assert_eq!(status.code(), Some(101), "{status}");
    let log = c.coordinator.log();
    assert!(log.contains("panicking as LOCKSTEP_CRASH_AT asks"), "{log}");
    assert!(
        log.contains("restart to recover from the durable log"),
        "{log}"
    );
    restart_finishes_t1(&mut c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_after_voting_prepared_keeps_its_staged_version_and_learns_the_decision() {
    let mut c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    c.block("B");
    assert_eq!(
        c.cli(&["release", "create", "T2", "A=T2A", "B=T2B", "C=T2C"])
            .await
            .code,
        0
    );
    voted(&c, "T2", &["A"]).await;

    c.agent_mut("A").server.kill9().await;
    // The decision is made while A is down: B and C go live, A is owed a Commit.
    c.heal("B");
    c.wait_state("T2", TransactionState::Committing).await;
    assert_eq!(
        c.agent("A").live().as_deref(),
        Some("T1A"),
        "A never decides alone"
    );
    assert!(
        c.agent("A").releases().contains(&"T2A".to_string()),
        "A's staged version survived"
    );
    let (live, acked) = wait_for("B and C to acknowledge T2", || async {
        let live = c.cli(&["live", "-o", "json"]).await.json();
        let acked: Vec<(String, bool)> = live["inFlight"][0]["participants"]
            .as_array()?
            .iter()
            .map(|p| {
                (
                    p["project"].as_str().unwrap().to_string(),
                    p["acknowledged"].as_bool().unwrap(),
                )
            })
            .collect();
        (acked.iter().filter(|(_, a)| *a).count() == 2).then_some((live, acked))
    })
    .await;
    assert_eq!(live["inFlight"][0]["id"], "T2");
    let expected: Vec<(String, bool)> =
        vec![("A".into(), false), ("B".into(), true), ("C".into(), true)];
    assert_eq!(acked, expected, "live shows who acknowledged");
    assert_eq!(
        live["checkpoint"]["revision"], "2",
        "the decided checkpoint is the live one"
    );

    c.agent_mut("A").server.restart().await;

    c.wait_state("T2", TransactionState::Committed).await;
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T2A"), ("B", "T2B"), ("C", "T2C")])
    );
    assert!(c.agent("A").status().await.staged.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restarted_while_the_release_is_undecided_keeps_waiting_then_aborts_with_it() {
    let mut c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    c.block("B");
    assert_eq!(
        c.cli(&["release", "create", "T2", "A=T2A", "B=T2B", "C=T2C"])
            .await
            .code,
        0
    );
    voted(&c, "T2", &["A"]).await;

    c.agent_mut("A").server.kill9().await;
    c.agent_mut("A").server.restart().await;

    // After its restart A asks for the decision, hears UNDECIDED, and keeps T2 staged.
    let staged = c.agent("A").status().await.staged;
    assert_eq!(
        staged
            .iter()
            .map(|s| s.transaction_id.as_str())
            .collect::<Vec<_>>(),
        ["T2"]
    );
    let out = c
        .cli(&["release", "abort", "T2", "--reason", "B is stuck"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    c.wait_state("T2", TransactionState::Aborted).await;
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")])
    );
    assert_eq!(c.agent("A").releases(), ["T1A"]);
}

/// Prepares `project`'s agent for `tx` at `version` directly, as a coordinator whose
/// record of `tx` a crash then lost would have.
async fn prepare_unrecorded(c: &Cluster, project: &str, tx: &str, version: &str) {
    let vote = c
        .agent(project)
        .client()
        .await
        .prepare(pb::PrepareRequest {
            transaction_id: tx.into(),
            project: project.into(),
            version: version.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vote.vote, pb::Vote::Prepared as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_participant_prepared_for_a_transaction_the_coordinator_lost_asks_and_aborts() {
    // As if the coordinator crashed before T9's creation became durable: B holds a
    // PREPARED vote for a transaction the coordinator has never recorded.
    let mut c = Cluster::new().await;
    c.add_agent_with("B", &["--ask-decision-after".into(), "100ms".into()])
        .await;
    c.register("B", &[]).await;
    prepare_unrecorded(&c, "B", "T9", "T9B").await;
    assert_eq!(c.agent("B").releases(), ["T9B"]);

    // B never decides alone: it asks, hears ABORT (presumed abort), and undoes.
    wait_for("B to learn T9's fate and undo it", || async {
        let staged = c.agent("B").status().await.staged;
        (staged.is_empty() && c.agent("B").releases().is_empty()).then_some(())
    })
    .await;
    assert_eq!(c.agent("B").live(), None);
}

/// A build directory whose `app.txt` says `version`; returns `--artifact A=DIR`.
fn build_of(c: &Cluster, version: &str) -> String {
    let dir = c.dir.path().join("builds").join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.txt"), version).unwrap();
    format!("A={}", dir.display())
}

/// Given A's prepare hook fails for T2, so A removes the `releases/T2A` it had just
/// staged, when A is killed in the middle of that removal (its contents gone, the
/// directory itself not yet), then after its restart T2 aborts, and a later release of
/// the same version T2A stages the build again: `current/` holds T2A's build, never an
/// empty directory left by the torn removal and reused as if it were the version.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_while_removing_a_staged_version_never_goes_live_on_what_is_left() {
    let mut c = Cluster::new().await;
    c.add_agent("A").await;
    c.register("A", &[]).await;
    let t1 = build_of(&c, "T1A");
    let out = c
        .cli(&[
            "release",
            "create",
            "T1",
            "A=T1A",
            "--artifact",
            &t1,
            "--wait",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");

    let t2 = build_of(&c, "T2A");
    c.agent_mut("A")
        .server
        .restart_with(crash_at("agent-removing-version"))
        .await;
    c.fail("A", "no disk");
    let out = c
        .cli(&["release", "create", "T2", "A=T2A", "--artifact", &t2])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    c.agent_mut("A").server.exited().await;
    c.heal("A");
    c.agent_mut("A").server.restart_with(Vec::new()).await;
    c.wait_state("T2", TransactionState::Aborted).await;

    let out = c
        .cli(&[
            "release",
            "create",
            "T3",
            "A=T2A",
            "--artifact",
            &t2,
            "--wait",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(c.agent("A").live().as_deref(), Some("T2A"));
    let app = c.agent("A").deploy_root.join("current/app.txt");
    assert_eq!(
        std::fs::read_to_string(&app).unwrap_or_default(),
        "T2A",
        "current/ holds T2A's build; releases/: {:?}",
        c.agent("A").releases()
    );
}

/// Given B is PREPARED for a T9 the coordinator never recorded (its admission was lost
/// in a crash), when the id T9 is given again to another release that B takes no part
/// in and that release commits, then B, asking about its T9, hears ABORT and undoes
/// it: it never goes live on a version no checkpoint records because another
/// transaction holds the id now.
#[tokio::test(flavor = "multi_thread")]
async fn a_participant_prepared_for_a_lost_transaction_whose_id_was_given_again_aborts() {
    let mut c = Cluster::new().await;
    c.add_agent("A").await;
    c.register("A", &[]).await;
    c.add_agent_with("B", &["--ask-decision-after".into(), "2s".into()])
        .await;
    c.register("B", &[]).await;
    prepare_unrecorded(&c, "B", "T9", "T9B").await;

    c.release("T9", &["A=T9A"], 0).await;

    wait_for("B to learn its T9's fate", || async {
        c.agent("B").status().await.staged.is_empty().then_some(())
    })
    .await;
    assert_eq!(c.agent("B").live(), None, "B never went live on T9B");
    assert!(c.agent("B").releases().is_empty());
    assert_eq!(c.agent("A").live().as_deref(), Some("T9A"));
}

/// Review finding of stop 51: a hook runs in a process group of its own that the agent
/// kills only when it drops the hook, so an agent killed with SIGKILL left its prepare
/// hook running, and after its restart recovery ran its own hooks beside it. Given A's
/// prepare hook running for T1 (held by the test), when A is killed with SIGKILL, then
/// the hook outlives it, and once A has started again the hook is gone.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_while_a_hook_runs_stops_that_hook_when_it_starts_again() {
    let mut c = Cluster::new().await;
    c.add_agent("A").await;
    c.register("A", &[]).await;
    c.block("A");
    let out = c.cli(&["release", "create", "T1", "A=T1A"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let control = c.dir.path().join("control").display().to_string();
    let hook = wait_for("A's prepare hook for T1", || async {
        let shells = hook_shells(&control, "T1");
        (!shells.is_empty()).then_some(shells)
    })
    .await;
    c.agent_mut("A").server.kill9().await;
    assert!(
        hook.iter().all(|pid| alive(*pid)),
        "the hook outlived the agent"
    );
    c.agent_mut("A").server.restart().await;
    wait_for("the hook left by the killed agent to be gone", || async {
        hook.iter().all(|pid| !alive(*pid)).then_some(())
    })
    .await;
    c.heal("A");
}

/// Live processes whose command line names `marker` (this cluster's control
/// directory, which its agents' prepare hook reads) and whose environment says they
/// run for transaction `tx`.
fn hook_shells(marker: &str, tx: &str) -> Vec<i32> {
    let tx = format!("LOCKSTEP_TX={tx}");
    let pids = std::fs::read_dir("/proc").unwrap().flatten();
    let pids = pids.filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    pids.filter(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains(marker)
            && environ.split(|b| *b == 0).any(|v| v == tx.as_bytes())
    })
    .collect()
}

/// Whether `pid` runs (a zombie's environment reads empty).
fn alive(pid: i32) -> bool {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    !environ.is_empty()
}

/// Review finding of stop 56: the driver sent Prepare while the creation write was
/// still being synced, so a crash could lose a transaction that agents had prepared.
/// Presumed abort kept that safe, but the coordinator then handed out the same id
/// again (`tx-N` for a request without an id; the ids it makes for promotions and
/// automatic reverts alike), and an agent that had aborted the lost one refused the
/// new one as "already aborted here": the new release ended ABORTED for nothing its
/// author did. Given T1 live, a release of B held in its Prepare, and a coordinator whose syncs wait up to 1 s
/// (`--commit-delay`), when a release without an id is killed just before its
/// decision and the coordinator restarts, then once A has learnt that release's fate,
/// another release without an id commits and A is live at its version.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_without_an_id_cut_by_a_crash_leaves_its_id_to_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    let args = vec![
        "--data-dir".to_string(),
        data.display().to_string(),
        "--commit-delay".into(),
        "1s".into(),
        "--commit-siblings".into(),
        "0".into(),
    ];
    let mut c = Cluster::with_coordinator(dir, args, Vec::new()).await;
    c.add_agent_with("A", &["--ask-decision-after".into(), "100ms".into()])
        .await;
    c.register("A", &[]).await;
    c.add_agent("B").await;
    c.register("B", &[]).await;
    c.release("T1", &["A=T1A"], 0).await;
    // A release of B held in its Prepare: with it in flight the commit delay holds
    // every sync back, so the next creation stays unsynced while its agents prepare.
    c.block("B");
    let held = c.cli(&["release", "create", "T9", "B=T9B"]).await;
    assert_eq!(held.code, 0, "{held:?}");
    let without_id = |version: &str| pb::CreateReleaseRequest {
        components: vec![pb::Component {
            project: "A".into(),
            version: version.into(),
            ..Default::default()
        }],
        ..Default::default()
    };

    c.coordinator
        .restart_with(crash_at("before-decision"))
        .await;
    // Answered or cut by the crash: either way its agent prepared it.
    let _cut = c.client().await.create_release(without_id("X1")).await;
    c.coordinator.restart_with(Vec::new()).await;
    wait_for("A to learn the cut release's fate", || async {
        c.agent("A").status().await.staged.is_empty().then_some(())
    })
    .await;

    let again = c.client().await.create_release(without_id("X2")).await;
    let id = again.unwrap().into_inner().transaction.unwrap().id;
    let ended = wait_for("the second release to end", || async {
        let t = c.transaction(&id).await;
        let done = [
            pb::TransactionState::Committed,
            pb::TransactionState::Aborted,
        ];
        done.iter().any(|s| *s as i32 == t.state).then_some(t)
    })
    .await;
    assert_eq!(
        ended.state,
        pb::TransactionState::Committed as i32,
        "{ended:?}"
    );
    assert_eq!(c.agent("A").live().as_deref(), Some("X2"));
}
