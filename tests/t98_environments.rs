//! Environments as first-class objects (the first part of issue 14), end to end: the
//! promotion path is declared with `lockstep env add NAME --after UPSTREAM`, bad paths
//! (an unknown upstream, a cycle, an environment after itself) are refused naming the
//! field and change nothing, and `lockstep live --all` shows the environment × project
//! matrix of what is live, one agent per project and environment.

#![allow(clippy::unwrap_used)]

mod support;

use lockstep::pb::{EventKind, TransactionState};
use serde_json::Value;
use support::Cluster;

#[tokio::test(flavor = "multi_thread")]
async fn environments_form_a_promotion_path_and_bad_ones_are_refused() {
    let c = Cluster::new().await;
    for args in [
        vec!["env", "add", "dev"],
        vec!["env", "add", "hardening", "--after", "dev"],
        vec!["env", "add", "production", "--after", "hardening"],
    ] {
        let out = c.cli(&args).await;
        assert_eq!(out.code, 0, "{out:?}");
    }
    let again = c
        .cli(&["env", "add", "production", "--after", "hardening"])
        .await;
    assert!(again.stdout.contains("unchanged"), "{again:?}");
    // Declared again without --after (a script making sure it exists), it keeps its
    // upstream: before stop 63 this cut production off its promotion path.
    let bare = c.cli(&["env", "add", "production"]).await;
    assert!(bare.stdout.contains("unchanged"), "{bare:?}");

    let unknown = c
        .cli(&["env", "add", "staging", "--after", "nowhere"])
        .await;
    assert_eq!(unknown.code, 1, "NOT_FOUND: {unknown:?}");
    assert!(
        unknown.stderr.contains("after[0]") && unknown.stderr.contains("nowhere"),
        "{unknown:?}"
    );
    let cycle = c.cli(&["env", "add", "dev", "--after", "production"]).await;
    assert_eq!(cycle.code, 2, "INVALID_ARGUMENT: {cycle:?}");
    assert!(
        cycle.stderr.contains("after")
            && cycle
                .stderr
                .contains("dev -> production -> hardening -> dev"),
        "names the cycle: {cycle:?}"
    );
    let itself = c.cli(&["env", "add", "dev", "--after", "dev"]).await;
    assert_eq!(itself.code, 2, "{itself:?}");
    assert!(itself.stderr.contains("after[0]"), "{itself:?}");

    let list = c.cli(&["env", "list", "-o", "json"]).await.json();
    let environments = list["environments"].as_array().unwrap();
    let after = |name: &str| -> Vec<Value> {
        let e = environments.iter().find(|e| e["name"] == name).unwrap();
        e["after"].as_array().cloned().unwrap_or_default()
    };
    assert!(
        after("dev").is_empty(),
        "the refused cycle changed nothing: {list}"
    );
    assert_eq!(after("hardening"), ["dev"]);
    assert_eq!(after("production"), ["hardening"]);
    let hardening = c
        .cli(&["env", "show", "hardening", "-o", "json"])
        .await
        .json();
    assert_eq!(
        hardening["before"],
        serde_json::json!(["production"]),
        "{hardening}"
    );
    assert_eq!(hardening["declared"], true);

    let added = c.events().await.into_iter();
    let added = added
        .filter(|e| e.kind == EventKind::EnvironmentAdded as i32)
        .count();
    assert_eq!(
        added, 3,
        "one event per declaration; refusals and repeats write none"
    );
    let missing = c.cli(&["env", "show", "qa"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn live_all_shows_every_environment_and_project() {
    let mut c = Cluster::family().await;
    let add = c
        .cli(&["env", "add", "production", "--after", "default"])
        .await;
    assert_eq!(add.code, 1, "default is not declared yet: {add:?}");
    for args in [
        vec!["env", "add", "default"],
        vec!["env", "add", "production", "--after", "default"],
    ] {
        assert_eq!(c.cli(&args).await.code, 0);
    }
    production_b(&mut c).await;

    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    let p1 = c
        .cli(&[
            "-e",
            "production",
            "release",
            "create",
            "P1",
            "B=P1B",
            "--wait",
        ])
        .await;
    assert_eq!(p1.code, 0, "{p1:?}");
    assert_eq!(c.agent("production/B").live().as_deref(), Some("P1B"));
    assert_eq!(
        c.agent("B").live().as_deref(),
        Some("T1B"),
        "each environment has its own agent"
    );

    let all = c.cli(&["live", "--all", "-o", "json"]).await.json();
    let envs = all["environments"].as_array().unwrap();
    let names: Vec<&str> = envs
        .iter()
        .map(|e| e["environment"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["default", "production"],
        "in promotion order: {all}"
    );
    let version = |env: usize, project: &str| {
        let versions = envs[env]["checkpoint"]["versions"].as_array().unwrap();
        let v = versions.iter().find(|v| v["project"] == project);
        v.map(|v| v["version"].as_str().unwrap().to_string())
    };
    assert_eq!(version(0, "A").as_deref(), Some("T1A"));
    assert_eq!(version(0, "B").as_deref(), Some("T1B"));
    assert_eq!(version(1, "B").as_deref(), Some("P1B"));
    assert_eq!(version(1, "A"), None, "A is not a project of production");

    let table = c.cli(&["live", "--all"]).await;
    assert_eq!(table.code, 0, "{table:?}");
    let row = |p: &str| {
        table
            .stdout
            .lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        table.stdout.contains("production (checkpoint 1)"),
        "{}",
        table.stdout
    );
    assert!(
        row("B ").contains("T1B") && row("B ").contains("P1B"),
        "{}",
        table.stdout
    );
    assert!(
        row("A ").contains("T1A") && row("A ").trim_end().ends_with('-'),
        "{}",
        table.stdout
    );
}

/// The pipeline file: dev, then hardening with an external performance step,
/// then production with auto-promotion.
const SHIPYARD: &str = include_str!("../examples/pipeline.toml");

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_file_is_applied_as_one_version_and_bad_ones_change_nothing() {
    let c = Cluster::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let good = file("shipyard.toml", SHIPYARD);

    let dry = c.cli(&["env", "apply", "-f", &good, "--dry-run"]).await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout
            .contains("+ hardening: after dev; verify performance (external, 10m)"),
        "{dry:?}"
    );
    assert!(dry.stdout.contains("dry run"), "{dry:?}");
    assert_eq!(
        c.cli(&["env", "show", "hardening"]).await.code,
        1,
        "a dry run declares nothing"
    );

    let applied = c.cli(&["env", "apply", "-f", &good]).await;
    assert_eq!(applied.code, 0, "{applied:?}");
    assert!(
        applied.stdout.contains("pipeline version 1 applied"),
        "{applied:?}"
    );
    let hardening = c
        .cli(&["env", "show", "hardening", "-o", "json"])
        .await
        .json();
    assert_eq!(hardening["pipelineVersion"], "1", "{hardening}");
    let in_force = hardening["stages"].as_str().unwrap().to_string();
    assert!(
        in_force.contains("verify performance (external, 10m)"),
        "{hardening}"
    );
    let production = c.cli(&["env", "show", "production"]).await;
    assert!(production.stdout.contains("auto-promote"), "{production:?}");
    let again = c.cli(&["env", "apply", "-f", &good]).await;
    assert!(
        again.stdout.contains("nothing changed (pipeline version 1"),
        "{again:?}"
    );

    let bad = [
        (
            "unknown upstream",
            SHIPYARD.replace("after = \"dev\"", "after = \"qa\""),
            "line 6: environment[1].after",
        ),
        (
            "a cycle",
            SHIPYARD.replace("name = \"dev\"", "name = \"dev\"\nafter = \"production\""),
            "cycle",
        ),
        (
            "an unknown step kind",
            SHIPYARD.replace("\"external\"", "\"smoke\""),
            "environment[1].verify[0].kind",
        ),
        (
            "a duplicate name",
            format!("{SHIPYARD}\n[[environment]]\nname = \"dev\"\n"),
            "declared twice",
        ),
        (
            "an unknown key",
            SHIPYARD.replace("auto_promote", "auto_promot"),
            "auto_promot",
        ),
        (
            // Stop 62: any number was checked under the state lock, recursing once per
            // environment of a chain.
            "more environments than the limit",
            (0..1001).fold(SHIPYARD.to_string(), |text, i| {
                format!("{text}\n[[environment]]\nname = \"e{i}\"\n")
            }),
            "environment: 1004 environments in the file; at most 1000",
        ),
    ];
    for (what, text, named) in bad {
        let path = file("bad.toml", &text);
        let out = c.cli(&["env", "apply", "-f", &path]).await;
        assert_eq!(out.code, 2, "{what}: INVALID_ARGUMENT: {out:?}");
        assert!(
            out.stderr.contains(named),
            "{what}: names {named:?}: {out:?}"
        );
        let now = c
            .cli(&["env", "show", "hardening", "-o", "json"])
            .await
            .json();
        assert_eq!(
            now["stages"].as_str().unwrap(),
            in_force,
            "{what}: nothing changed"
        );
        assert_eq!(now["pipelineVersion"], "1", "{what}");
    }
    let events = c.events().await.into_iter();
    let applied = events
        .filter(|e| e.kind == EventKind::PipelineApplied as i32)
        .count();
    assert_eq!(applied, 1, "only the one applied file is in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_environments_release_the_same_project_without_waiting_on_each_other() {
    let mut c = Cluster::family().await;
    production_b(&mut c).await;

    // T1 holds B in default while C's Prepare hangs.
    c.block("C");
    let (t1, p1) = tokio::join!(c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0), async {
        c.wait_state("T1", TransactionState::Preparing).await;
        let p1 = c
            .cli(&[
                "-e",
                "production",
                "release",
                "create",
                "P1",
                "B=P1B",
                "--wait",
            ])
            .await;
        let t1 = c.transaction("T1").await;
        assert_eq!(
            t1.state,
            TransactionState::Preparing as i32,
            "T1 still holds B in default"
        );
        c.heal("C");
        p1
    });
    assert_eq!(t1.code, 0, "{t1:?}");
    assert_eq!(
        p1.code, 0,
        "production's B did not wait for default's T1: {p1:?}"
    );
    assert_eq!(c.agent("production/B").live().as_deref(), Some("P1B"));
    assert_eq!(c.agent("B").live().as_deref(), Some("T1B"));
}

/// Defect 6 of issue 27: `release list` ignored `-e` (it mixed environments, with
/// repeated checkpoint numbers), and `lockstep -e nosuchenv live` said "nothing
/// released yet", exit 0. Given releases in default and production, when each
/// environment's releases are listed, then each shows its own only, with its
/// environment; and a mistyped environment is NOT_FOUND (exit 1, naming it) for
/// every read.
#[tokio::test(flavor = "multi_thread")]
async fn release_list_is_per_environment_and_an_unknown_environment_is_not_found() {
    let mut c = Cluster::family().await;
    production_b(&mut c).await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    let p1 = [
        "-e",
        "production",
        "release",
        "create",
        "P1",
        "B=P1B",
        "--wait",
    ];
    assert_eq!(c.cli(&p1).await.code, 0);

    let ids = |out: &support::Cli| -> Vec<(String, String)> {
        out.json()["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let env = t["environment"].as_str().unwrap().to_string();
                (t["id"].as_str().unwrap().to_string(), env)
            })
            .collect()
    };
    let default = c.cli(&["release", "list", "-o", "json"]).await;
    assert_eq!(ids(&default), [("T1".to_string(), "default".to_string())]);
    let production = c
        .cli(&["-e", "production", "release", "list", "-o", "json"])
        .await;
    assert_eq!(ids(&production), [("P1".into(), "production".into())]);
    let table = c.cli(&["-e", "production", "release", "list"]).await;
    assert!(
        table.stdout.contains("ENV") && table.stdout.contains("production"),
        "{table:?}"
    );

    for read in [
        &["live"][..],
        &["history"],
        &["project", "list"],
        &["release", "list"],
    ] {
        let mut args = vec!["-e", "nosuchenv"];
        args.extend_from_slice(read);
        let out = c.cli(&args).await;
        assert!(
            out.code == 1 && out.stderr.contains("no environment nosuchenv"),
            "lockstep {args:?}: {out:?}"
        );
    }
}

/// An agent for project B in environment `production`, registered there.
async fn production_b(c: &mut Cluster) {
    c.add_env_agent("production", "B").await;
    let url = c.agent("production/B").server.url();
    let args = [
        "-e",
        "production",
        "project",
        "add",
        "B",
        "--endpoint",
        &url,
    ];
    let registered = c.cli(&args).await;
    assert_eq!(registered.code, 0, "{registered:?}");
}

/// Names of the projects registered in `env`.
async fn projects_in(c: &Cluster, env: &str) -> Vec<(String, String, Vec<String>)> {
    let out = c.cli(&["-e", env, "project", "list", "-o", "json"]).await;
    if out.code == 1 && out.stderr.contains("no environment") {
        return Vec::new();
    }
    let list = out.json();
    let projects = list["projects"].as_array().cloned().unwrap_or_default();
    projects
        .iter()
        .map(|p| {
            let requires = p["requires"].as_array().cloned().unwrap_or_default();
            (
                p["name"].as_str().unwrap().to_string(),
                p["endpoint"].as_str().unwrap().to_string(),
                requires
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

/// Projects as files (issue 27): given agents for B and C in production, a pipeline
/// file that declares them (C requiring B) is shown by a dry run and changes nothing,
/// is applied as one version registering both, and applied again changes nothing; a
/// file moving C to an address where no agent answers is refused whole (its
/// environment change too) unless `--unchecked`; a child neither registered nor
/// declared is refused naming the project; a project the file does not name is left
/// as it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_file_declares_projects_applied_diffed_and_dry_run() {
    let mut c = Cluster::new().await;
    c.add_env_agent("production", "B").await;
    c.add_env_agent("production", "C").await;
    c.add_agent("A").await;
    c.register("A", &[]).await;
    let (b, cc) = (
        c.agent("production/B").server.url(),
        c.agent("production/C").server.url(),
    );
    let file = |c_at: &str, soak: &str, child: &str| {
        format!(
            "[[environment]]\nname = \"default\"\n\n[[environment]]\nname = \"production\"\nafter = \"default\"\nsoak = \"{soak}\"\n  [[environment.project]]\n  name = \"B\"\n  endpoint = \"{b}\"\n  [[environment.project]]\n  name = \"C\"\n  endpoint = \"{c_at}\"\n  requires = [\"{child}\"]\n"
        )
    };
    let path = c.dir.path().join("pipeline.toml");
    let write = |text: String| {
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let good = write(file(&cc, "1s", "B"));

    let dry = c.cli(&["env", "apply", "-f", &good, "--dry-run"]).await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout
            .contains(&format!("+ project production/C: at {cc}, requires B")),
        "{dry:?}"
    );
    assert!(
        projects_in(&c, "production").await.is_empty(),
        "a dry run writes nothing"
    );

    let applied = c.cli(&["env", "apply", "-f", &good]).await;
    assert_eq!(applied.code, 0, "{applied:?}");
    let want = vec![
        ("B".to_string(), b.clone(), Vec::new()),
        ("C".to_string(), cc.clone(), vec!["B".to_string()]),
    ];
    assert_eq!(projects_in(&c, "production").await, want);
    let again = c.cli(&["env", "apply", "-f", &good]).await;
    assert!(
        again.stdout.contains("= project production/C: unchanged")
            && again.stdout.contains("nothing changed"),
        "{again:?}"
    );

    let nothing = {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", unused.local_addr().unwrap())
    };
    let moved = write(file(&nothing, "2s", "B"));
    let refused = c.cli(&["env", "apply", "-f", &moved]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("no agent answers"), "{refused:?}");
    assert_eq!(projects_in(&c, "production").await, want, "refused whole");
    let env = c
        .cli(&["env", "show", "production", "-o", "json"])
        .await
        .json();
    assert_eq!(
        env["pipelineVersion"], "1",
        "the environment is unchanged too: {env}"
    );
    let unchecked = c.cli(&["env", "apply", "-f", &moved, "--unchecked"]).await;
    assert_eq!(unchecked.code, 0, "{unchecked:?}");
    assert_eq!(projects_in(&c, "production").await[1].1, nothing);

    let orphan = write(file(&cc, "2s", "Z"));
    let out = c.cli(&["env", "apply", "-f", &orphan, "--unchecked"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("project C of environment production")
            && out.stderr.contains("Z is not registered"),
        "{out:?}"
    );
    assert_eq!(projects_in(&c, "default").await.len(), 1, "A untouched");
}

/// Given A registered requiring B and C, when a pipeline file names A with its
/// endpoint only (no `requires` key), then A keeps B and C (the dry run says
/// unchanged) and a release of A alone is still refused for want of them; only
/// `requires = []` drops them, and the dry run shows that change first.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_file_without_requires_never_drops_a_parents_children() {
    let c = Cluster::family().await;
    let a = c.agent("A").server.url();
    let path = c.dir.path().join("pipeline.toml");
    let file = |requires: &str| {
        let text = format!(
            "[[environment]]\nname = \"default\"\n  [[environment.project]]\n  name = \"A\"\n  endpoint = \"{a}\"\n{requires}"
        );
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };

    let silent = file("");
    let dry = c.cli(&["env", "apply", "-f", &silent, "--dry-run"]).await;
    assert!(
        dry.stdout.contains("= project default/A: unchanged"),
        "{dry:?}"
    );
    let applied = c.cli(&["env", "apply", "-f", &silent]).await;
    assert_eq!(applied.code, 0, "{applied:?}");
    assert_eq!(children_of_a(&c).await, ["B", "C"]);
    let alone = c.cli(&["release", "create", "T1", "A=T1A"]).await;
    assert_eq!(alone.code, 1, "A alone still needs its children: {alone:?}");

    let dropped = file("  requires = []\n");
    let dry = c.cli(&["env", "apply", "-f", &dropped, "--dry-run"]).await;
    assert!(dry.stdout.contains("~ project default/A"), "{dry:?}");
    let applied = c.cli(&["env", "apply", "-f", &dropped]).await;
    assert_eq!(applied.code, 0, "{applied:?}");
    assert!(children_of_a(&c).await.is_empty());
}

async fn children_of_a(c: &Cluster) -> Vec<String> {
    let projects = projects_in(c, "default").await;
    projects.into_iter().find(|p| p.0 == "A").unwrap().2
}
