//! Projects never change silently: registering a name again with other settings is
//! refused naming what differs, and `project set` changes only what it is given.

#![allow(clippy::unwrap_used)]

mod support;

use lockstep::pb::{self, TransactionState};
use support::Cluster;

/// A's registration as `project list -o json` shows it: (endpoint, requires).
async fn registration(c: &Cluster, name: &str) -> (String, Vec<String>) {
    let out = c.cli(&["project", "list", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let list = out.json();
    let project = list["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
        .clone();
    let requires = project["requires"]
        .as_array()
        .map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    (project["endpoint"].as_str().unwrap().to_string(), requires)
}

/// Defect 1 of issue 27: `project add A --endpoint NEW` on A (which requires B and C)
/// answered "registered" and dropped its children, so A could go live without them.
/// Given the family, when A is added again with another endpoint and no `--requires`,
/// then it is refused naming both differences, A keeps its endpoint and children, and
/// a release of A alone is still refused by the children-included rule.
#[tokio::test(flavor = "multi_thread")]
async fn adding_a_project_again_with_other_settings_is_refused_and_changes_nothing() {
    let c = Cluster::family().await;
    let before = registration(&c, "A").await;
    assert_eq!(before.1, ["B", "C"]);

    let moved = c
        .cli(&["project", "add", "A", "--endpoint", "http://127.0.0.1:1"])
        .await;
    assert_eq!(moved.code, 1, "{moved:?}");
    for named in ["endpoint", "requires", "B, C", "project set A"] {
        assert!(moved.stderr.contains(named), "names {named}: {moved:?}");
    }
    assert_eq!(registration(&c, "A").await, before, "nothing changed");
    let alone = c.cli(&["release", "create", "T1", "A=T1A"]).await;
    assert!(
        alone.code == 1 && alone.stderr.contains("children-included"),
        "{alone:?}"
    );

    let url = c.agent("A").server.url();
    let same = c
        .cli(&[
            "project",
            "add",
            "A",
            "--endpoint",
            &url,
            "--requires",
            "C,B",
        ])
        .await;
    assert_eq!(same.code, 0, "the same settings again: {same:?}");
    assert!(same.stdout.contains("unchanged"), "{same:?}");
}

/// Given A moved to another address, when `project set A --endpoint NEW` runs, then
/// only the endpoint changes and a release of the family commits there; children
/// change only when given (`--requires`, `--no-requires`), and an unknown project is
/// NOT_FOUND naming it.
#[tokio::test(flavor = "multi_thread")]
async fn project_set_changes_only_what_it_is_given() {
    let mut c = Cluster::family().await;
    c.agent_mut("A").server.restart_elsewhere().await;
    let new = c.agent("A").server.url();
    let set = c.cli(&["project", "set", "A", "--endpoint", &new]).await;
    assert_eq!(set.code, 0, "{set:?}");
    assert_eq!(
        registration(&c, "A").await,
        (new.clone(), vec!["B".to_string(), "C".to_string()])
    );
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    assert_eq!(
        c.transaction("T1").await.state,
        TransactionState::Committed as i32
    );
    assert_eq!(c.agent("A").live().as_deref(), Some("T1A"));

    let fewer = c.cli(&["project", "set", "A", "--requires", "B"]).await;
    assert_eq!(fewer.code, 0, "{fewer:?}");
    assert_eq!(registration(&c, "A").await, (new.clone(), vec!["B".into()]));
    let none = c.cli(&["project", "set", "A", "--no-requires"]).await;
    assert_eq!(none.code, 0, "{none:?}");
    assert_eq!(registration(&c, "A").await, (new, Vec::new()));

    let unknown = c
        .cli(&["project", "set", "Z", "--endpoint", "http://127.0.0.1:1"])
        .await;
    assert!(
        unknown.code == 1 && unknown.stderr.contains("Z is not registered"),
        "{unknown:?}"
    );
}

/// Defect 4 of issue 27: switching to TLS left the `http://` endpoints registered
/// with no warning. Given a project registered at the other scheme than the
/// coordinator's setting, when the coordinator starts, then its log names the project,
/// its endpoint and the command that moves it, `project list` flags it, and a release
/// to it is refused before anything is sent.
#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_warns_at_start_of_endpoints_that_do_not_fit_its_tls_setting() {
    let mut c = Cluster::new().await;
    let add = [
        "project",
        "add",
        "X",
        "--endpoint",
        "https://127.0.0.1:1",
        "--unchecked",
    ];
    assert_eq!(c.cli(&add).await.code, 0);
    c.coordinator.restart().await;
    let log = c.coordinator.log();
    let warned = log.lines().any(|l| {
        l.contains("WARN")
            && l.contains("project X in environment default is registered at https://127.0.0.1:1")
            && l.contains("project set X --endpoint http://")
    });
    assert!(warned, "{log}");
    let list = c.cli(&["project", "list"]).await;
    assert!(list.stdout.contains("(! not http://"), "flagged: {list:?}");
    let release = c.cli(&["release", "create", "T1", "X=1", "--wait"]).await;
    assert!(
        release.code == 1 && release.stderr.contains("project set X --endpoint http://"),
        "refused before anything is sent, not left waiting for a person: {release:?}"
    );
    assert!(
        c.client()
            .await
            .list_releases(pb::ListReleasesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .transactions
            .is_empty()
    );
}

/// Defect 5 of issue 27: a mistyped endpoint was accepted without a word, and its
/// release sat in ABORTING until a manual resolve. Given agent A running and nothing
/// at another port, when A is registered at the empty port, or B at A's agent, then
/// each is refused naming the endpoint and what answered there (nothing is
/// registered); at A's own agent it registers; `project set` to an empty port is
/// refused and A stays where it was; `--unchecked` registers without asking.
#[tokio::test(flavor = "multi_thread")]
async fn registration_asks_the_endpoint_first_unless_unchecked() {
    let mut c = Cluster::new().await;
    c.add_agent("A").await;
    let a = c.agent("A").server.url();
    let nothing = {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", unused.local_addr().unwrap())
    };

    let typo = c
        .cli(&["project", "add", "A", "--endpoint", &nothing])
        .await;
    assert_eq!(typo.code, 1, "{typo:?}");
    for named in ["endpoint", &nothing, "no agent answers", "--unchecked"] {
        assert!(typo.stderr.contains(named), "names {named}: {typo:?}");
    }
    let other = c.cli(&["project", "add", "B", "--endpoint", &a]).await;
    assert_eq!(other.code, 1, "{other:?}");
    assert!(
        other
            .stderr
            .contains("serves project A in environment default, not B"),
        "{other:?}"
    );
    let list = c.cli(&["project", "list", "-o", "json"]).await.json();
    assert!(
        list["projects"].as_array().is_none_or(Vec::is_empty),
        "{list}"
    );

    assert_eq!(
        c.cli(&["project", "add", "A", "--endpoint", &a]).await.code,
        0
    );
    let moved = c
        .cli(&["project", "set", "A", "--endpoint", &nothing])
        .await;
    assert!(
        moved.code == 1 && moved.stderr.contains("no agent answers"),
        "{moved:?}"
    );
    assert_eq!(registration(&c, "A").await.0, a, "A stays where it was");

    let unchecked = ["project", "add", "Z", "--endpoint", &nothing, "--unchecked"];
    assert_eq!(c.cli(&unchecked).await.code, 0);
    assert_eq!(registration(&c, "Z").await.0, nothing);
}

/// `project remove`: given the family with T1 committed, removing B (which A
/// requires) is refused naming A; once A is removed its registration is gone, `live`
/// no longer shows it while `history` still does, and B and C release alone; a project
/// held by a transaction cannot be removed until it ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_is_removed_only_when_nothing_needs_it_and_its_history_stays() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;

    let needed = c.cli(&["project", "remove", "B"]).await;
    assert_eq!(needed.code, 1, "{needed:?}");
    assert!(needed.stderr.contains("project A requires B"), "{needed:?}");
    let removed = c.cli(&["project", "remove", "A"]).await;
    assert_eq!(removed.code, 0, "{removed:?}");
    assert!(removed.stdout.contains("project A removed"), "{removed:?}");
    let list = c.cli(&["project", "list", "-o", "json"]).await.json();
    let names: Vec<&str> = list["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["B", "C"]);
    let live = c.cli(&["live"]).await.stdout;
    assert!(!live.contains("T1A"), "A left the live state: {live}");
    let history = c.cli(&["history"]).await.stdout;
    assert!(history.contains("T1A"), "its history stays: {history}");
    let again = c.cli(&["project", "remove", "A"]).await;
    assert!(
        again.code == 1 && again.stderr.contains("A is not registered"),
        "{again:?}"
    );

    c.release("T2", &["B=T2B"], 0).await;
    let live = c.live_state().await.checkpoint.unwrap();
    let projects: Vec<&str> = live.versions.iter().map(|v| v.project.as_str()).collect();
    assert_eq!(projects, ["B", "C"], "the next checkpoint leaves A out");

    c.block("C");
    let held = c.cli(&["release", "create", "T3", "C=T3C"]).await;
    assert_eq!(held.code, 0, "{held:?}");
    c.wait_state("T3", TransactionState::Preparing).await;
    let busy = c.cli(&["project", "remove", "C"]).await;
    assert!(
        busy.code == 1 && busy.stderr.contains("transaction T3"),
        "{busy:?}"
    );
    c.heal("C");
    c.wait_state("T3", TransactionState::Committed).await;
    assert_eq!(c.cli(&["project", "remove", "C"]).await.code, 0);
}

/// Given T1 committed as checkpoint 1 of the default environment and its only project
/// removed, when the coordinator restarts and the project is registered and released
/// again, then the new release is checkpoint 2: the environment's numbering survives
/// the restart, so T1's checkpoint 1 is never overwritten.
#[tokio::test(flavor = "multi_thread")]
async fn an_environment_emptied_of_projects_keeps_its_checkpoint_numbering_across_a_restart() {
    let mut c = Cluster::new().await;
    c.add_agent("A").await;
    c.register("A", &[]).await;
    c.release("T1", &["A=T1A"], 0).await;
    let removed = c.cli(&["project", "remove", "A"]).await;
    assert_eq!(removed.code, 0, "{removed:?}");

    c.coordinator.restart().await;
    c.register("A", &[]).await;
    c.release("T2", &["A=T2A"], 0).await;

    let history = c.cli(&["history", "-o", "json"]).await.json();
    let checkpoints: Vec<(String, String)> = history["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let revision = k["revision"].as_str().unwrap().to_string();
            (revision, k["transactionId"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        checkpoints,
        [("1".into(), "T1".into()), ("2".into(), "T2".into())]
    );
}

/// Kills `project`'s agent and starts a fresh one in its place (new data directory,
/// nothing deployed, another port), as a team replacing a host does.
async fn replace_agent(c: &mut Cluster, project: &str) {
    c.agent_mut(project).server.kill9().await;
    for dir in [format!("agent-{project}"), format!("deploy-{project}")] {
        std::fs::remove_dir_all(c.dir.path().join(dir)).unwrap();
    }
    c.add_agent(project).await;
}

/// The live versions of the default environment, as `live -o json` shows them.
async fn live_versions(c: &Cluster) -> Vec<(String, String)> {
    let live = c.live_state().await.checkpoint.unwrap_or_default();
    let versions = live.versions.iter();
    versions
        .map(|v| (v.project.clone(), v.version.clone()))
        .collect()
}

/// Found by a review: a removed project registered again kept its old live version
/// until the next commit, so a fresh agent refused every Prepare ("the live version
/// here is nothing but the coordinator expects T1A") for good. Given A released and
/// removed, when A is registered again at a fresh agent that runs nothing, then the
/// live state has no A (after a restart too) and a release of A commits; when B is
/// registered again at the agent that still runs T1B, then T1B is live again and the
/// next release moves it on.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_registered_again_starts_from_what_its_agent_runs() {
    let mut c = Cluster::new().await;
    c.add_agent("A").await;
    c.add_agent("B").await;
    c.register("A", &[]).await;
    c.register("B", &[]).await;
    c.release("T1", &["A=T1A", "B=T1B"], 0).await;

    assert_eq!(c.cli(&["project", "remove", "A"]).await.code, 0);
    replace_agent(&mut c, "A").await;
    c.register("A", &[]).await;
    assert_eq!(live_versions(&c).await, [("B".into(), "T1B".into())]);
    c.coordinator.restart().await;
    let after = live_versions(&c).await;
    assert_eq!(after, [("B".into(), "T1B".into())], "and after a restart");
    c.release("T2", &["A=T2A"], 0).await;
    assert_eq!(c.agent("A").live().as_deref(), Some("T2A"));

    assert_eq!(c.cli(&["project", "remove", "B"]).await.code, 0);
    c.register("B", &[]).await;
    let live = live_versions(&c).await;
    assert_eq!(
        live,
        [("A".into(), "T2A".into()), ("B".into(), "T1B".into())]
    );
    c.release("T3", &["B=T3B"], 0).await;
    assert_eq!(c.agent("B").live().as_deref(), Some("T3B"));
}

/// Review finding of stop 57: a project's `requires` could be changed while a
/// transaction held it. Its waves were fixed when it was accepted, so a project given a
/// child mid-way went live in the same wave as that child (a parent before its child).
/// Given T2 of B and C waiting on B's Prepare, when C is set to require B, then it is
/// refused naming T2, C's registration is unchanged, and once T2 ends it is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn changing_requires_is_refused_while_a_transaction_holds_the_project() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    c.block("B");
    let out = c.cli(&["release", "create", "T2", "B=T2B", "C=T2C"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    c.wait_state("T2", TransactionState::Preparing).await;

    let set = c.cli(&["project", "set", "C", "--requires", "B"]).await;
    assert_ne!(set.code, 0, "accepted while T2 holds C: {set:?}");
    assert!(
        set.stderr.contains("T2") && set.stderr.contains("requires"),
        "{set:?}"
    );
    assert_eq!(registration(&c, "C").await.1, Vec::<String>::new());
    let file = c.dir.path().join("pipeline.toml");
    let endpoint = registration(&c, "C").await.0;
    let declared = format!(
        "[[environment]]\nname = \"default\"\n  [[environment.project]]\n  name = \"C\"\n  endpoint = \"{endpoint}\"\n  requires = [\"B\"]\n"
    );
    std::fs::write(&file, declared).unwrap();
    let apply = c.cli(&["env", "apply", "-f", file.to_str().unwrap()]).await;
    assert_ne!(apply.code, 0, "env apply accepted it: {apply:?}");
    assert_eq!(registration(&c, "C").await.1, Vec::<String>::new());

    c.heal("B");
    c.wait_state("T2", TransactionState::Committed).await;
    let set = c.cli(&["project", "set", "C", "--requires", "B"]).await;
    assert_eq!(set.code, 0, "{set:?}");
    assert_eq!(registration(&c, "C").await.1, ["B"]);
}
