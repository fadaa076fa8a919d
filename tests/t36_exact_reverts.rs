//! A revert or rollback reproduces the earlier state exactly, or refuses: the
//! coordinator records what each committed version was staged from and sends it again,
//! and an agent that cannot reproduce a version says what is missing instead of staging
//! an empty one.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;

use support::Cluster;

/// A build of B at `version` whose `app.txt` says `text`; returns `--artifact B=PATH`.
fn build(c: &Cluster, version: &str, text: &str) -> (PathBuf, String) {
    let dir = c.dir.path().join("builds").join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.txt"), text).unwrap();
    let flag = format!("B={}", dir.display());
    (dir, flag)
}

async fn release(c: &Cluster, id: &str, version: &str, artifact: Option<&str>) {
    let component = format!("B={version}");
    let mut args = vec!["release", "create", id, component.as_str(), "--wait"];
    if let Some(a) = artifact {
        args.extend(["--artifact", a]);
    }
    let out = c.cli(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
}

async fn b_only() -> Cluster {
    let mut c = Cluster::new().await;
    c.add_agent("B").await;
    c.register("B", &[]).await;
    c
}

/// Given T1B was released from an artifact and T2 replaced it, when the agent's copy
/// of T1B is gone (disk clean-up) and T2 is reverted, then the revert stages T1B again
/// from the artifact recorded at T1's commit, and `current/` holds T1B's files.
#[tokio::test(flavor = "multi_thread")]
async fn a_revert_whose_build_is_gone_from_the_agent_stages_it_again_from_the_recorded_artifact() {
    let c = b_only().await;
    let (_, one) = build(&c, "T1B", "one");
    release(&c, "T1", "T1B", Some(&one)).await;
    let (_, two) = build(&c, "T2B", "two");
    release(&c, "T2", "T2B", Some(&two)).await;
    std::fs::remove_dir_all(c.agent("B").deploy_root.join("releases/T1B")).unwrap();

    let out = c.cli(&["revert", "T2", "--wait"]).await;

    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(c.agent("B").live().as_deref(), Some("T1B"));
    let current = c.agent("B").deploy_root.join("current/app.txt");
    assert_eq!(std::fs::read_to_string(current).unwrap(), "one");
}

/// Given T1B's build is gone from the agent, when T2 is reverted and T1B cannot be
/// reproduced (released without an artifact; or its artifact was deleted), then the
/// agent refuses naming what is missing, the revert aborts and T2B stays live.
#[tokio::test(flavor = "multi_thread")]
async fn a_revert_that_cannot_be_reproduced_is_refused_naming_what_is_missing() {
    let c = b_only().await;
    release(&c, "T1", "T1B", None).await;
    release(&c, "T2", "T2B", None).await;
    std::fs::remove_dir_all(c.agent("B").deploy_root.join("releases/T1B")).unwrap();

    let out = c.cli(&["revert", "T2", "--wait"]).await;

    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("cannot restore T1B"), "{out:?}");
    assert_eq!(c.agent("B").live().as_deref(), Some("T2B"));

    let (dir, three) = build(&c, "T3B", "three");
    release(&c, "T3", "T3B", Some(&three)).await;
    release(&c, "T4", "T4B", None).await;
    std::fs::remove_dir_all(c.agent("B").deploy_root.join("releases/T3B")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let out = c.cli(&["revert", "T4", "--wait"]).await;

    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains(&format!("artifact {}", dir.display())),
        "{out:?}"
    );
    assert_eq!(c.agent("B").live().as_deref(), Some("T4B"));
}

/// Defect 3 of issue 27: a bare `lockstep rollback` right after a revert put the
/// reverted release back live (the rollback planner never applied the quarantine
/// rule, so a releaser undid an operator-only decision). Given T2 reverted, when a
/// bare rollback is asked, then it is refused by the quarantine rule and nothing
/// moves; with `--allow-quarantined` (an operator's choice) it restores T2.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_keeps_the_quarantine_of_what_a_revert_pulled() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    c.release("T2", &["A=T2A", "B=T2B", "C=T2C"], 0).await;
    let reverted = c.cli(&["revert", "T2", "--wait"]).await;
    assert_eq!(reverted.code, 0, "{reverted:?}");
    let at_t1 = Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")]);
    assert_eq!(c.live(), at_t1);

    let bare = c.cli(&["rollback", "--wait"]).await;
    assert_eq!(bare.code, 1, "{bare:?}");
    assert!(
        bare.stderr.contains("quarantine") && bare.stderr.contains("--allow-quarantined"),
        "{bare:?}"
    );
    assert_eq!(c.live(), at_t1, "nothing moved");

    let allowed = c.cli(&["rollback", "--allow-quarantined", "--wait"]).await;
    assert_eq!(allowed.code, 0, "{allowed:?}");
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T2A"), ("B", "T2B"), ("C", "T2C")])
    );
}

/// Defect 7 of issue 27: leaving `--artifact` out put an empty `releases/<v>` live
/// without a word. Given B's agent runs with `--require-artifact`, when T1 names B
/// without an artifact, then B refuses it naming the flag and nothing moves; with an
/// artifact T1 goes live with its files.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_requiring_artifacts_refuses_a_version_without_one() {
    let mut c = Cluster::new().await;
    c.add_agent_with("B", &["--require-artifact".to_string()])
        .await;
    c.register("B", &[]).await;
    let bare = c.cli(&["release", "create", "T1", "B=T1B", "--wait"]).await;
    assert_eq!(bare.code, 1, "{bare:?}");
    assert!(bare.stderr.contains("--require-artifact"), "{bare:?}");
    assert_eq!(c.agent("B").live(), None, "nothing went live");

    let (_, flag) = build(&c, "T1B", "built T1B");
    release(&c, "T1-again", "T1B", Some(&flag)).await;
    let app = c.agent("B").deploy_root.join("current/app.txt");
    assert_eq!(std::fs::read_to_string(app).unwrap(), "built T1B");
}

/// What an older coordinator leaves in the data (a rolling upgrade on etcd): T3 decided
/// without its `version_starts` row and without moving the environment's mark.
fn as_if_an_older_leader_decided_t3(data: &std::path::Path) {
    use lockstep::names::{Environment, ProjectName, Version};
    use lockstep_coordinator::tables::{self, META, Tables, VERSION_STARTS};
    use lockstep_store::{Batch, Durability, RocksKv, keys};

    let t = Tables::new(std::sync::Arc::new(
        RocksKv::open(data, tables::ALL).unwrap(),
    ));
    let env = Environment::default();
    let (b, t3b) = (
        ProjectName::parse("project", "B").unwrap(),
        Version::parse("version", "T3B").unwrap(),
    );
    let revision = t.last_start(&env, &b, &t3b).unwrap().expect("T3B's start");
    assert_eq!(
        t.starts_through(&env).unwrap(),
        revision,
        "T3 is the newest"
    );
    let mut batch = Batch::default();
    let start = [env.as_str(), b.as_str(), t3b.as_str()];
    batch.delete(VERSION_STARTS, keys::parts_u64_key(&start, revision));
    let mark = [
        b"version-starts-through/".as_slice(),
        env.as_str().as_bytes(),
    ]
    .concat();
    batch.put(META, mark, keys::u64_key(revision - 1));
    t.kv().write(batch, Durability::Sync).unwrap();
}

/// Given T1, T2 and T3 each released B, and T3 decided by an older coordinator that
/// kept no `version_starts` (a rolling upgrade on etcd), when this version's coordinator
/// starts on the data and T2 is reverted, then the revert is refused naming T3, which
/// made B's live version live after T2, and T3B stays live. (Before stop 42 the table
/// was trusted once filled: the revert found no later release and put T1B back over
/// T3B.)
#[tokio::test(flavor = "multi_thread")]
async fn a_revert_sees_the_release_an_older_coordinator_made_live() {
    let mut c = b_only().await;
    release(&c, "T1", "T1B", None).await;
    release(&c, "T2", "T2B", None).await;
    release(&c, "T3", "T3B", None).await;
    c.coordinator.kill9().await;
    as_if_an_older_leader_decided_t3(&c.dir.path().join("coordinator"));
    c.coordinator.restart().await;

    let refused = c.cli(&["revert", "T2", "--wait"]).await;

    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("T3 committed after T2") && refused.stderr.contains("B=T3B"),
        "{refused:?}"
    );
    assert_eq!(c.agent("B").live().as_deref(), Some("T3B"));
}
