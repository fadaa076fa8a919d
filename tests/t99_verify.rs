//! Verification before commit (issue 14, part 3), end to end: every participant of a
//! bracket prepares, each agent starts its staged (green) version with `--serve-hook`
//! (`examples/green.py`, a real HTTP server) and votes with its test URI, and the
//! environment's verify steps run against the staged set while the transaction is
//! VERIFYING: the coordinator's own http smoke test, an external performance test
//! reported with `lockstep verify report`, and a person's `lockstep approve`. Every
//! kind of failure (a wrong status, a failed report, a rejection, a missed deadline)
//! aborts: nothing live changes and nothing stays staged. A coordinator SIGKILLed
//! while verifying resumes the recorded steps, and no participant decides alone.
//!
//! Then promotion and what follows a commit: a checkpoint or a bracket copied exactly
//! downstream (versions, artifacts, schema versions), untested states refused,
//! auto-promotion whose downstream smoke test fails without touching either side, and
//! the verification after commit: a failed live check reverts to the checkpoint before
//! (or only notifies), and a soak cut short by a coordinator SIGKILL runs again.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;

use lockstep::pb::{EventKind, StepStatus, TransactionState};
use support::Cluster;

const PIPELINE: &str = r#"
[[environment]]
name = "hardening"
  [[environment.verify]]
  name = "smoke"
  kind = "http"
  url = "{test_uri:foobar-backend}/health"
  [[environment.verify]]
  name = "performance"
  kind = "external"
  deadline = "DEADLINE"
  [[environment.verify]]
  name = "approval"
  kind = "approval"
"#;

const PROJECTS: [&str; 2] = ["foobar-backend", "foobar-frontend"];

/// Hardening with the three steps (the performance test gets `deadline`), and the two
/// foobar agents serving their staged versions; `broken` makes them answer 503.
async fn hardening(deadline: &str) -> (Cluster, PathBuf) {
    let mut c = with_pipeline(&PIPELINE.replace("DEADLINE", deadline)).await;
    let (hook, broken) = serve_hook(&c);
    for project in PROJECTS {
        env_agent(&mut c, "hardening", project, &hook, &[]).await;
    }
    (c, broken)
}

/// A coordinator with `pipeline` applied.
async fn with_pipeline(pipeline: &str) -> Cluster {
    let c = Cluster::new().await;
    let file = c.dir.path().join("pipeline.toml");
    std::fs::write(&file, pipeline).unwrap();
    let applied = c.cli(&["env", "apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(applied.code, 0, "{applied:?}");
    c
}

/// The agents' `--serve-hook` flags (examples/green.py) and the file that, while it
/// exists, makes every green instance answer 503.
fn serve_hook(c: &Cluster) -> (Vec<String>, PathBuf) {
    let broken = c.dir.path().join("green-broken");
    let green = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/green.py");
    let hook = format!(
        "GREEN_FAIL_FILE={} python3 {green} $LOCKSTEP_PHASE \"$LOCKSTEP_STAGE_DIR\" \"$LOCKSTEP_VERSION\"",
        broken.display()
    );
    (vec!["--serve-hook".to_string(), hook], broken)
}

/// Starts `project`'s agent in `env` with `extra` flags and registers it there.
async fn env_agent(c: &mut Cluster, env: &str, project: &str, extra: &[String], requires: &[&str]) {
    c.add_env_agent_with(env, project, extra).await;
    let url = c.agent(&format!("{env}/{project}")).server.url();
    let mut args = vec!["-e", env, "project", "add", project, "--endpoint", &url];
    let requires = requires.join(",");
    if !requires.is_empty() {
        args.extend(["--requires", &requires]);
    }
    let out = c.cli(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// Creates bracket `id` (both projects at `id`-suffixed versions) without waiting.
async fn bracket(c: &Cluster, id: &str) {
    let (b, f) = (
        format!("foobar-backend={id}b"),
        format!("foobar-frontend={id}f"),
    );
    let args = ["-e", "hardening", "release", "create", id, &b, &f];
    let out = c.cli(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// Waits until step `index` of `id` is `status`.
async fn step_is(c: &Cluster, id: &str, index: usize, status: StepStatus) {
    step_in(c, id, index, &[status]).await;
}

/// Waits until step `index` of `id` is one of `statuses`.
async fn step_in(c: &Cluster, id: &str, index: usize, statuses: &[StepStatus]) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let t = c.transaction(id).await;
        if statuses.iter().any(|s| t.steps[index].status == *s as i32) {
            return;
        }
        let late = tokio::time::Instant::now() > deadline;
        assert!(
            !late,
            "{id} step {index} is not {statuses:?} in time: {t:?}\n{}",
            c.coordinator.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn report(c: &Cluster, id: &str, outcome: &str, reason: &str) -> support::Cli {
    let args = [
        "verify",
        "report",
        id,
        "performance",
        outcome,
        "--reason",
        reason,
    ];
    c.cli(&args).await
}

fn live(c: &Cluster) -> Vec<Option<String>> {
    let agent = |p: &str| c.agent(&format!("hardening/{p}")).live();
    PROJECTS.iter().map(|p| agent(p)).collect()
}

/// What is staged or live on disk besides `kept` (leftovers of an aborted bracket).
fn leftovers(c: &Cluster, kept: &[&str]) -> Vec<String> {
    let dirs = PROJECTS
        .iter()
        .flat_map(|p| c.agent(&format!("hardening/{p}")).releases());
    dirs.filter(|d| !kept.iter().any(|k| d.starts_with(k)))
        .collect()
}

/// Passes the smoke test and performance, then approves as `approver`.
async fn pass_every_step(c: &Cluster, id: &str, approver: &str) {
    let running = [StepStatus::Triggered, StepStatus::Started];
    step_in(c, id, 1, &running).await;
    assert_eq!(report(c, id, "--passed", "p95 80ms").await.code, 0);
    step_is(c, id, 2, StepStatus::Triggered).await;
    let approve = c
        .cli(&[
            "approve",
            id,
            "--reason",
            "numbers fine",
            "--actor",
            approver,
        ])
        .await;
    assert_eq!(approve.code, 0, "{approve:?}");
    c.wait_state(id, TransactionState::Committed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bracket_is_verified_staged_then_goes_live_together() {
    let (c, _) = hardening("1m").await;
    bracket(&c, "H1").await;
    c.wait_state("H1", TransactionState::Verifying).await;
    step_is(&c, "H1", 1, StepStatus::Triggered).await;
    let t = c.transaction("H1").await;
    assert_eq!(t.steps[0].status, StepStatus::Passed as i32, "{t:?}");
    assert!(t.steps[0].reason.contains("answered 200"), "{t:?}");
    for p in &t.participants {
        assert!(p.test_uri.starts_with("http://127.0.0.1:"), "{p:?}");
    }
    let green = &t.participants[0].test_uri;
    let answer = reqwest::get(format!("{green}/health")).await.unwrap();
    assert_eq!(
        answer.text().await.unwrap().trim(),
        "H1b",
        "the staged version answers"
    );
    assert_eq!(live(&c), [None, None], "nothing is live while verifying");

    let early = c.cli(&["approve", "H1"]).await;
    assert_eq!(early.code, 1, "{early:?}");
    assert!(early.stderr.contains("performance (external"), "{early:?}");
    let started = c
        .cli(&[
            "verify",
            "report",
            "H1",
            "performance",
            "--started",
            "--link",
            "https://ci/42",
        ])
        .await;
    assert_eq!(started.code, 0, "{started:?}");
    let shown = c.cli(&["release", "get", "H1"]).await.stdout;
    assert!(
        shown.contains("VERIFYING") && shown.contains("STARTED"),
        "{shown}"
    );
    pass_every_step(&c, "H1", "tom").await;

    assert_eq!(live(&c), [Some("H1b".into()), Some("H1f".into())]);
    let t = c.transaction("H1").await;
    let by: Vec<&str> = t.steps.iter().map(|s| s.actor.as_str()).collect();
    assert_eq!(by[2], "tom", "{t:?}");
    assert_eq!(t.steps[1].link, "https://ci/42");
    let stopped = reqwest::get(format!("{green}/health")).await;
    assert!(stopped.is_err(), "the green instance is stopped at commit");

    let steps: Vec<(i32, String)> = c
        .events()
        .await
        .into_iter()
        .filter(|e| e.transaction_id == "H1" && !e.step.is_empty())
        .map(|e| (e.kind, e.step))
        .collect();
    let (t, s, f) = (
        EventKind::VerifyStepTriggered as i32,
        EventKind::VerifyStepStarted as i32,
        EventKind::VerifyStepFinished as i32,
    );
    let expected = [
        (t, "smoke"),
        (f, "smoke"),
        (t, "performance"),
        (s, "performance"),
        (f, "performance"),
        (t, "approval"),
        (f, "approval"),
    ];
    let expected: Vec<(i32, String)> = expected.iter().map(|(k, n)| (*k, n.to_string())).collect();
    assert_eq!(
        steps, expected,
        "triggered/started/finished per step, in order"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_failure_aborts_and_leaves_nothing_staged() {
    let (c, broken) = hardening("2s").await;
    bracket(&c, "H0").await;
    pass_every_step(&c, "H0", "tom").await;
    let before = live(&c);

    std::fs::write(&broken, "").unwrap();
    bracket(&c, "H1").await;
    let t = c.wait_state("H1", TransactionState::Aborted).await;
    assert!(
        t.reason.contains("smoke failed") && t.reason.contains("503"),
        "{t:?}"
    );
    std::fs::remove_file(&broken).unwrap();

    bracket(&c, "H2").await;
    step_is(&c, "H2", 1, StepStatus::Triggered).await;
    assert_eq!(report(&c, "H2", "--failed", "p95 900ms").await.code, 0);
    let t = c.wait_state("H2", TransactionState::Aborted).await;
    assert!(t.reason.contains("performance failed: p95 900ms"), "{t:?}");

    bracket(&c, "H3").await;
    step_is(&c, "H3", 1, StepStatus::Triggered).await;
    let reject = c
        .cli(&["reject", "H3", "--reason", "not today", "--actor", "tom"])
        .await;
    assert_eq!(reject.code, 0, "{reject:?}");
    let t = c.wait_state("H3", TransactionState::Aborted).await;
    assert!(t.reason.contains("rejected by tom: not today"), "{t:?}");

    bracket(&c, "H4").await;
    let t = c.wait_state("H4", TransactionState::Aborted).await;
    assert!(t.reason.contains("deadline of 2s"), "{t:?}");
    let late = report(&c, "H4", "--passed", "too late").await;
    assert_eq!(late.code, 1, "{late:?}");
    assert!(late.stderr.contains("Aborted"), "{late:?}");

    assert_eq!(live(&c), before, "no failure changed what is live");
    assert_eq!(
        leftovers(&c, &["H0"]),
        Vec::<String>::new(),
        "nothing stays staged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_while_verifying_resumes_the_recorded_steps() {
    let (mut c, _) = hardening("1m").await;
    bracket(&c, "H1").await;
    step_is(&c, "H1", 1, StepStatus::Triggered).await;
    assert_eq!(
        report(&c, "H1", "--started", "load test running")
            .await
            .code,
        0
    );

    c.coordinator.kill9().await;
    c.coordinator.restart().await;
    let t = c.wait_state("H1", TransactionState::Verifying).await;
    let status: Vec<i32> = t.steps.iter().map(|s| s.status).collect();
    let (passed, started, waiting) = (StepStatus::Passed, StepStatus::Started, StepStatus::Waiting);
    assert_eq!(
        status,
        [passed as i32, started as i32, waiting as i32],
        "{t:?}"
    );
    assert_eq!(live(&c), [None, None], "no participant decided alone");
    for p in PROJECTS {
        let status = c.agent(&format!("hardening/{p}")).status().await;
        let staged = status.staged.iter().any(|s| s.transaction_id == "H1");
        assert!(staged, "{p} is still prepared: {status:?}");
    }

    pass_every_step(&c, "H1", "tom").await;
    assert_eq!(live(&c), [Some("H1b".into()), Some("H1f".into())]);
    let recovered = c.events().await.into_iter().any(|e| {
        e.transaction_id == "H1"
            && e.kind == EventKind::Recovered as i32
            && e.message.contains("resuming verification")
    });
    assert!(recovered, "the log says verification resumed");
}

/// Creates release `id` of `parts` in hardening, without waiting.
async fn create(c: &Cluster, id: &str, parts: &[&str]) {
    let mut args = vec!["-e", "hardening", "release", "create", id];
    args.extend_from_slice(parts);
    let out = c.cli(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// Approves `id`'s one step (an approval) once it is asked for, and waits for the commit.
async fn approve_one(c: &Cluster, id: &str) {
    step_is(c, id, 0, StepStatus::Triggered).await;
    let approve = c.cli(&["approve", id, "--actor", "tom"]).await;
    assert_eq!(approve.code, 0, "{approve:?}");
    c.wait_state(id, TransactionState::Committed).await;
}

/// Review finding of stop 53: a move back holds its family until its decision (the
/// compatibility rule judged the family as it is), but its record kept only its own
/// projects, so a restart during its verification gave the rest up: a release of
/// another project of the family went live before it, and the move back then committed
/// a combination never verified as a tested one. Given A requiring B and C and T3
/// moving C back, waiting for its approval, when the coordinator restarts, then a
/// release of B still queues behind T3.
#[tokio::test(flavor = "multi_thread")]
async fn a_move_back_waiting_for_approval_keeps_its_family_after_a_restart() {
    let pipeline = "[[environment]]\nname = \"hardening\"\n  [[environment.verify]]\n  name = \"approval\"\n  kind = \"approval\"\n";
    let mut c = with_pipeline(pipeline).await;
    env_agent(&mut c, "hardening", "B", &[], &[]).await;
    env_agent(&mut c, "hardening", "C", &[], &[]).await;
    env_agent(&mut c, "hardening", "A", &[], &["B", "C"]).await;
    create(&c, "T1", &["A=1", "B=1", "C=1"]).await;
    approve_one(&c, "T1").await;
    create(&c, "T2", &["C=2"]).await;
    approve_one(&c, "T2").await;
    create(&c, "T3", &["C=1"]).await;
    step_is(&c, "T3", 0, StepStatus::Triggered).await;

    c.coordinator.kill9().await;
    c.coordinator.restart().await;
    c.wait_state("T3", TransactionState::Verifying).await;
    create(&c, "T4", &["B=4"]).await;
    let t4 = c.transaction("T4").await;
    assert_eq!(
        t4.state(),
        TransactionState::Pending,
        "B is T3's still: {t4:?}"
    );

    approve_one(&c, "T3").await;
    approve_one(&c, "T4").await;
    let agent = |p: &str| c.agent(&format!("hardening/{p}")).live();
    assert_eq!(
        [agent("A"), agent("B"), agent("C")],
        [Some("1".into()), Some("4".into()), Some("1".into())]
    );
}

/// Issue 25, defect 1: the last step passes (an approval) and the coordinator dies
/// before the COMMIT decision is written. Recovery must never find the release
/// COMMITTING without its decision (half-live: one part committed, the other staged,
/// both held for good): it resumes VERIFYING or finishes the decision, and the release
/// ends whole, with its decision, checkpoint and end each in the log once.
#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_between_the_last_step_and_the_decision_commits_whole() {
    let (mut c, _) = hardening("1m").await;
    bracket(&c, "H9").await;
    let running = [StepStatus::Triggered, StepStatus::Started];
    step_in(&c, "H9", 1, &running).await;
    assert_eq!(report(&c, "H9", "--passed", "fine").await.code, 0);
    step_is(&c, "H9", 2, StepStatus::Triggered).await;
    let crash = vec![("LOCKSTEP_CRASH_AT".into(), "before-decision".into())];
    c.coordinator.restart_with(crash).await;
    step_is(&c, "H9", 2, StepStatus::Triggered).await;

    c.cli(&["approve", "H9", "--actor", "tom"]).await;
    c.coordinator.exited().await;
    c.coordinator.restart_with(Vec::new()).await;

    approve_until_committed(&c, "H9").await;
    assert_eq!(live(&c), [Some("H9b".into()), Some("H9f".into())]);
    let events = c.events().await;
    let count = |kind: EventKind| {
        let of_h9 = events.iter().filter(|e| e.transaction_id == "H9");
        of_h9.filter(|e| e.kind == kind as i32).count()
    };
    assert_eq!(count(EventKind::DecidedCommit), 1, "{events:?}");
    assert_eq!(count(EventKind::CheckpointRecorded), 1, "{events:?}");
    assert_eq!(count(EventKind::TransactionCommitted), 1, "{events:?}");
}

/// Approves `id` whenever its approval step runs, until it is COMMITTED (30 s).
async fn approve_until_committed(c: &Cluster, id: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let t = c.transaction(id).await;
        if t.state == TransactionState::Committed as i32 {
            return;
        }
        if t.state == TransactionState::Verifying as i32
            && t.steps[2].status == StepStatus::Triggered as i32
        {
            c.cli(&["approve", id, "--actor", "tom"]).await;
        }
        let late = tokio::time::Instant::now() > deadline;
        assert!(
            !late,
            "{id} never committed: {t:?}\n{}",
            c.coordinator.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

const PATH: &str = r#"
[[environment]]
name = "dev"

[[environment]]
name = "hardening"
after = "dev"
  [[environment.verify]]
  name = "performance"
  kind = "external"

[[environment]]
name = "production"
after = "hardening"
auto_promote = true
  [[environment.verify]]
  name = "smoke"
  kind = "http"
  url = "{test_uri:foobar-backend}/health"
"#;

/// dev → hardening → production, foobar-frontend requiring foobar-backend in each.
async fn promotion_path() -> (Cluster, PathBuf) {
    let mut c = with_pipeline(PATH).await;
    let (hook, broken) = serve_hook(&c);
    for env in ["dev", "hardening", "production"] {
        env_agent(&mut c, env, "foobar-backend", &hook, &[]).await;
        env_agent(&mut c, env, "foobar-frontend", &hook, &["foobar-backend"]).await;
    }
    (c, broken)
}

fn versions(c: &Cluster, env: &str) -> Vec<Option<String>> {
    PROJECTS
        .iter()
        .map(|p| c.agent(&format!("{env}/{p}")).live())
        .collect()
}

fn at(backend: &str, frontend: &str) -> Vec<Option<String>> {
    vec![Some(backend.into()), Some(frontend.into())]
}

async fn dev_release(c: &Cluster, id: &str, components: &[&str], force: bool) {
    let mut args = vec!["-e", "dev", "release", "create", id, "--wait"];
    args.extend_from_slice(components);
    if force {
        args.push("--force");
    }
    let out = c.cli(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// Passes hardening's performance step of `id`.
async fn perform(c: &Cluster, id: &str) {
    step_is(c, id, 0, StepStatus::Triggered).await;
    let args = ["verify", "report", id, "performance", "--passed"];
    assert_eq!(c.cli(&args).await.code, 0);
    c.wait_state(id, TransactionState::Committed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn promotions_copy_tested_states_and_auto_promote_downstream() {
    let (c, broken) = promotion_path().await;
    dev_release(&c, "D1", &["foobar-backend=1.0"], false).await;
    dev_release(
        &c,
        "D2",
        &["foobar-frontend=1.0", "foobar-backend=1.0"],
        false,
    )
    .await;

    let promote = ["promote", "--from", "dev", "--to", "hardening"];
    let out = c.cli(&promote).await;
    assert_eq!(out.code, 0, "{out:?}");
    let h1 = "promote-dev-2-to-hardening";
    let t = c.wait_state(h1, TransactionState::Verifying).await;
    assert_eq!(t.promoted_from, "dev checkpoint 2", "{t:?}");
    assert_eq!(versions(&c, "hardening"), [None, None], "staged, not live");
    perform(&c, h1).await;
    assert_eq!(versions(&c, "hardening"), at("1.0", "1.0"));

    let p1 = "promote-hardening-1-to-production";
    let t = c.wait_state(p1, TransactionState::Committed).await;
    assert_eq!(t.steps[0].status, StepStatus::Passed as i32, "{t:?}");
    assert_eq!(
        versions(&c, "production"),
        at("1.0", "1.0"),
        "auto-promoted"
    );
    let history = c
        .cli(&["-e", "production", "release", "get", p1])
        .await
        .stdout;
    assert!(
        history.contains("promoted from hardening checkpoint 1"),
        "{history}"
    );

    // A bracket: only what D3 moved goes; production's smoke test then fails.
    dev_release(&c, "D3", &["foobar-backend=2.0"], false).await;
    std::fs::write(&broken, "").unwrap();
    let bracket = [
        "promote",
        "--from",
        "dev",
        "--to",
        "hardening",
        "--release",
        "D3",
    ];
    assert_eq!(c.cli(&bracket).await.code, 0);
    let h2 = "promote-dev-3-to-hardening";
    let t = c.wait_state(h2, TransactionState::Verifying).await;
    let moved: Vec<&str> = t.participants.iter().map(|p| p.project.as_str()).collect();
    assert_eq!(
        moved,
        ["foobar-backend"],
        "only the bracket's projects: {t:?}"
    );
    perform(&c, h2).await;
    let p2 = "promote-hardening-2-to-production";
    let t = c.wait_state(p2, TransactionState::Aborted).await;
    assert!(t.reason.contains("smoke failed"), "{t:?}");
    assert_eq!(
        versions(&c, "hardening"),
        at("2.0", "1.0"),
        "hardening keeps what it verified"
    );
    assert_eq!(
        versions(&c, "production"),
        at("1.0", "1.0"),
        "production at its previous checkpoint"
    );

    // An untested (forced) checkpoint is refused, and the default skips it.
    dev_release(
        &c,
        "D4",
        &["foobar-frontend=2.0", "foobar-backend=2.0"],
        false,
    )
    .await;
    dev_release(&c, "D5", &["foobar-backend=1.0"], true).await;
    let forced = [
        "promote",
        "--from",
        "dev",
        "--to",
        "hardening",
        "--checkpoint",
        "5",
    ];
    let refused = c.cli(&forced).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("untested"), "{refused:?}");
    let dry = c
        .cli(&[
            "promote",
            "--from",
            "dev",
            "--to",
            "hardening",
            "--dry-run",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(dry.code, 0, "{dry:?}");
    let plan = dry.json();
    let targets: Vec<String> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}={}",
                p["project"].as_str().unwrap(),
                p["toVersion"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        targets,
        ["foobar-backend=2.0", "foobar-frontend=2.0"],
        "checkpoint 4: {plan}"
    );
    let skipped = ["promote", "--from", "hardening", "--to", "dev"];
    let wrong_way = c.cli(&skipped).await;
    assert_eq!(wrong_way.code, 1, "{wrong_way:?}");
    assert!(
        wrong_way.stderr.contains("does not come after hardening"),
        "{wrong_way:?}"
    );
}

/// A stand-in for the live site: `examples/green.py` serving /health (503 while
/// `broken` exists), stopped when dropped.
struct LiveSite {
    dir: PathBuf,
    url: String,
}

impl LiveSite {
    fn start(dir: PathBuf, broken: &std::path::Path) -> Self {
        let green = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/green.py");
        let out = std::process::Command::new("python3")
            .args([green, "serve", dir.to_str().unwrap(), "live"])
            .env("GREEN_FAIL_FILE", broken)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        LiveSite { dir, url }
    }
}

impl Drop for LiveSite {
    fn drop(&mut self) {
        let green = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/green.py");
        let stop = std::process::Command::new("python3")
            .args([green, "stop", self.dir.to_str().unwrap()])
            .status();
        let _ = stop;
    }
}

/// A cluster with `pipeline` applied and an agent of each project in production.
async fn production(pipeline: &str) -> Cluster {
    let mut c = with_pipeline(pipeline).await;
    for project in PROJECTS {
        env_agent(&mut c, "production", project, &[], &[]).await;
    }
    c
}

/// A live site in its own directory (503 while `broken` exists), and the pipeline entry
/// of `env` soaking `soak` then checking its /health, failing as `on_live_failure` says.
fn live_site(
    env: &str,
    soak: &str,
    on_live_failure: &str,
) -> (tempfile::TempDir, PathBuf, LiveSite, String) {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("live-broken");
    let site = LiveSite::start(dir.path().join("live-site"), &broken);
    let pipeline = format!(
        "[[environment]]\nname = \"{env}\"\nsoak = \"{soak}\"\non_live_failure = \"{on_live_failure}\"\n  [[environment.verify_live]]\n  name = \"health\"\n  kind = \"http\"\n  url = \"{}/health\"\n",
        site.url
    );
    (dir, broken, site, pipeline)
}

async fn live_check_is(c: &Cluster, id: &str, prefix: &str) -> lockstep::pb::Transaction {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let t = c.transaction(id).await;
        if t.live_check.starts_with(prefix) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} live check not {prefix}: {t:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_verification_after_commit_reverts_to_the_checkpoint_before() {
    let (c, site, _dir) = revert_after_failed_live_check("P2").await;
    let refused = c
        .cli(&["promote", "--from", "production", "--to", "production"])
        .await;
    assert_eq!(refused.code, 1, "{refused:?}");
    drop(site);
}

/// Defect 5 of issue 25: the automatic revert of a release whose id was 58-64
/// characters long was refused ("id: is 67 bytes long") and the failed version stayed
/// live. Its derived id now fits.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_with_an_id_near_the_limit_is_reverted_after_its_failed_live_check() {
    let long = format!("P2-{}", "x".repeat(58));
    assert_eq!(long.len(), 61);
    let (_c, site, _dir) = revert_after_failed_live_check(&long).await;
    drop(site);
}

/// P1 passes its live check in production; `second` fails it and is reverted by the
/// coordinator, back to P1, with the reason in the log.
async fn revert_after_failed_live_check(second: &str) -> (Cluster, LiveSite, tempfile::TempDir) {
    let (dir, broken, site, pipeline) = live_site("production", "300ms", "revert");
    let c = production(&pipeline).await;
    production_release(&c, "P1").await;
    live_check_is(&c, "P1", "passed").await;

    std::fs::write(&broken, "").unwrap();
    production_release(&c, second).await;
    let t = live_check_is(&c, second, "failed").await;
    assert!(
        t.live_check.contains("health") && t.live_check.contains("503"),
        "{t:?}"
    );
    let revert = reverting(&c, second).await;
    assert!(revert.id.len() <= 64, "{revert:?}");
    let revert = c.wait_state(&revert.id, TransactionState::Committed).await;
    let agent = |p: &str| c.agent(&format!("production/{p}")).live();
    assert_eq!(
        [agent("foobar-backend"), agent("foobar-frontend")],
        [Some("P1b".to_string()), Some("P1f".to_string())],
        "back at the checkpoint before"
    );
    let why = format!("reverting it as {}", revert.id);
    let failed = c.events().await.into_iter().any(|e| {
        e.transaction_id == second
            && e.kind == EventKind::LiveVerifyFailed as i32
            && e.message.contains(&why)
    });
    assert!(failed, "the log says why it was reverted");
    (c, site, dir)
}

/// `lockstep -e production release create ID foobar-backend=IDb foobar-frontend=IDf`.
async fn production_release(c: &Cluster, id: &str) {
    let (b, f) = (
        format!("foobar-backend={id}b"),
        format!("foobar-frontend={id}f"),
    );
    let args = [
        "-e",
        "production",
        "release",
        "create",
        id,
        &b,
        &f,
        "--wait",
    ];
    let out = c.cli(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// The transaction that reverts `release`, once the coordinator has created it.
async fn reverting(c: &Cluster, release: &str) -> lockstep::pb::Transaction {
    support::wait_for("the automatic revert", || async {
        let list = c
            .client()
            .await
            .list_releases(lockstep::pb::ListReleasesRequest {
                environment: "production".into(),
                limit: 100,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        list.transactions
            .into_iter()
            .find(|t| t.reverts == [release])
    })
    .await
}

/// An artifact of foobar-backend at `version` shipping migrations 1..=`upto` (each a
/// table); the `--artifact` value.
fn ship(c: &Cluster, version: &str, upto: u32) -> String {
    let dir = c
        .dir
        .path()
        .join("artifacts")
        .join(format!("backend-{version}"));
    std::fs::create_dir_all(dir.join("migrations")).unwrap();
    for n in 1..=upto {
        let file = |dir_: &str| {
            dir.join("migrations")
                .join(format!("{n:04}_t{n}.{dir_}.sql"))
        };
        std::fs::write(
            file("up"),
            format!("CREATE TABLE t{n} (id INTEGER PRIMARY KEY);"),
        )
        .unwrap();
        std::fs::write(file("down"), format!("DROP TABLE t{n};")).unwrap();
    }
    format!("foobar-backend={}", dir.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_copies_the_versions_artifacts_and_schema_versions_exactly() {
    let pipeline =
        "[[environment]]\nname = \"dev\"\n\n[[environment]]\nname = \"staging\"\nafter = \"dev\"\n";
    let mut c = with_pipeline(pipeline).await;
    for env in ["dev", "staging"] {
        let db = format!(
            "sqlite://{}",
            c.dir.path().join(format!("{env}.db")).display()
        );
        env_agent(
            &mut c,
            env,
            "foobar-backend",
            &["--database".into(), db],
            &[],
        )
        .await;
    }
    let artifact = ship(&c, "1.0", 2);
    let args = [
        "-e",
        "dev",
        "release",
        "create",
        "D1",
        "foobar-backend=1.0",
        "--artifact",
        &artifact,
        "--wait",
    ];
    assert_eq!(c.cli(&args).await.code, 0);

    let promote = [
        "promote",
        "--from",
        "dev",
        "--to",
        "staging",
        "--checkpoint",
        "1",
        "--wait",
    ];
    let out = c.cli(&promote).await;
    assert_eq!(
        out.code, 0,
        "an environment without steps commits at once: {out:?}"
    );
    let t = c.transaction("promote-dev-1-to-staging").await;
    let path = artifact.split_once('=').unwrap().1;
    assert_eq!(
        t.participants[0].artifact, path,
        "the artifact dev staged from: {t:?}"
    );
    let schema = |env: &str| {
        let agent = c.agent(&format!("{env}/foobar-backend"));
        async move { agent.status().await.schema.map(|s| s.version) }
    };
    assert_eq!(schema("dev").await, Some(2));
    assert_eq!(
        schema("staging").await,
        schema("dev").await,
        "the same schema version"
    );
    assert_eq!(
        c.agent("staging/foobar-backend").live().as_deref(),
        Some("1.0")
    );
}

/// Production (a soak of `soak`, then its live check, `on_live_failure`) with a
/// backend agent, and P1 (backend 1.0) committed there and soaking: the cluster, the
/// file that breaks the live site, the site and its directory.
async fn p1_soaking(
    soak: &str,
    on_live_failure: &str,
) -> (Cluster, PathBuf, LiveSite, tempfile::TempDir) {
    let (dir, broken, site, pipeline) = live_site("production", soak, on_live_failure);
    let mut c = with_pipeline(&pipeline).await;
    env_agent(&mut c, "production", "foobar-backend", &[], &[]).await;
    let args = [
        "-e",
        "production",
        "release",
        "create",
        "P1",
        "foobar-backend=1.0",
        "--wait",
    ];
    assert_eq!(c.cli(&args).await.code, 0);
    assert_eq!(c.transaction("P1").await.live_check, "soaking");
    (c, broken, site, dir)
}

/// Review finding of stop 53: a release soaking when the coordinator restarted, in an
/// environment whose pipeline had lost its soak and live steps since (applied after
/// the release committed), stayed `soaking` for good: no check was due any more, so
/// none ran, and a promotion of its versions needed --force. Given P1 soaking, when
/// a pipeline without a soak is applied and the coordinator is SIGKILLed and started,
/// then P1's check is settled as not due, and the log says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_soak_a_new_pipeline_dropped_is_settled_after_a_restart() {
    let (mut c, _, site, _dir) = p1_soaking("30s", "revert").await;
    let file = c.dir.path().join("no-soak.toml");
    // Since stop 60 a left-out key keeps what is declared: the file says what it drops.
    let dropped = "[[environment]]\nname = \"production\"\nsoak = \"0s\"\nverify_live = []\n";
    std::fs::write(&file, dropped).unwrap();
    let applied = c.cli(&["env", "apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(applied.code, 0, "{applied:?}");

    c.coordinator.restart().await;
    let t = support::wait_for("P1's check to be settled", || async {
        let t = c.transaction("P1").await;
        (t.live_check != "soaking").then_some(t)
    })
    .await;
    assert_eq!(t.live_check, "", "no check is due: {t:?}");
    let said = c.events().await.into_iter().any(|e| {
        e.transaction_id == "P1"
            && e.kind == EventKind::Recovered as i32
            && e.message.contains("no live check is due")
    });
    assert!(said, "the log says why");
    drop(site);
}

/// Review finding of stop 53: a soak took its environment's stages when the release
/// committed and used them after the soak, so a pipeline applied meanwhile (a live
/// step's failure now only notifies) did not count, though a restart would have read
/// it. Given P1 soaking in production under "revert", when a pipeline with "notify" is
/// applied and the live step then fails, then it only notifies: nothing is reverted.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_applied_during_a_soak_is_the_one_that_counts() {
    let (_dir, broken, site, pipeline) = live_site("production", "3s", "revert");
    let mut c = with_pipeline(&pipeline).await;
    env_agent(&mut c, "production", "foobar-backend", &[], &[]).await;
    let release = |id: &'static str, version: &'static str| {
        let args = [
            "-e",
            "production",
            "release",
            "create",
            id,
            version,
            "--wait",
        ];
        args.map(str::to_string)
    };
    let p0 = release("P0", "foobar-backend=0.9");
    assert_eq!(c.cli(&p0.each_ref().map(String::as_str)).await.code, 0);
    live_check_is(&c, "P0", "passed").await;
    let p1 = release("P1", "foobar-backend=1.0");
    assert_eq!(c.cli(&p1.each_ref().map(String::as_str)).await.code, 0);
    let notify = pipeline.replace(
        "on_live_failure = \"revert\"",
        "on_live_failure = \"notify\"",
    );
    let file = c.dir.path().join("notify.toml");
    std::fs::write(&file, notify).unwrap();
    let applied = c.cli(&["env", "apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(applied.code, 0, "{applied:?}");
    std::fs::write(&broken, "").unwrap();

    live_check_is(&c, "P1", "failed").await;
    let said = c.events().await.into_iter().any(|e| {
        e.transaction_id == "P1"
            && e.kind == EventKind::LiveVerifyFailed as i32
            && e.message.contains("only notified")
    });
    assert!(said, "the pipeline in force says notify");
    let list = c
        .cli(&["-e", "production", "release", "list", "-o", "json"])
        .await;
    assert!(!list.stdout.contains("auto-revert"), "{}", list.stdout);
    drop(site);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soak_cut_by_a_restart_runs_again_and_notify_only_notifies() {
    let (mut c, broken, site, _dir) = p1_soaking("5s", "notify").await;

    c.coordinator.kill9().await;
    std::fs::write(&broken, "").unwrap();
    c.coordinator.restart().await;
    let t = live_check_is(&c, "P1", "failed").await;
    assert!(
        t.live_check.contains("503"),
        "the check ran again after the restart: {t:?}"
    );
    let notified = c.events().await.into_iter().any(|e| {
        e.transaction_id == "P1"
            && e.kind == EventKind::LiveVerifyFailed as i32
            && e.message.contains("only notified")
    });
    assert!(notified, "the log says it only notified");
    let reverts = c
        .cli(&["-e", "production", "release", "list", "-o", "json"])
        .await
        .json();
    let ids: Vec<&str> = reverts["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["P1"], "no revert was created");
    assert_eq!(
        c.agent("production/foobar-backend").live().as_deref(),
        Some("1.0")
    );
    drop(site);
}

/// Review finding of stop 51: at start the coordinator created the automatic revert
/// of a failure on each environment's newest checkpoint only. Given P2 soaking in
/// production and P3 (another project) committed after it, when P2 fails its live
/// check and the coordinator dies right after writing that (crash point
/// `after-live-check-failed`), then after the restart P2 is still reverted: P1's
/// versions run again.
#[tokio::test(flavor = "multi_thread")]
async fn a_revert_cut_off_by_a_crash_is_created_after_the_restart() {
    let (_dir, broken, site, pipeline) = live_site("production", "4s", "revert");
    let mut c = with_pipeline(&pipeline).await;
    for project in PROJECTS.into_iter().chain(["other"]) {
        env_agent(&mut c, "production", project, &[], &[]).await;
    }
    let other = |id: &str| format!("other={id}o");
    let p1 = ["-e", "production", "release", "create", "P1", "other=P1o"];
    let p1 = [
        &p1[..],
        &["foobar-backend=P1b", "foobar-frontend=P1f", "--wait"],
    ]
    .concat();
    assert_eq!(c.cli(&p1).await.code, 0);
    live_check_is(&c, "P1", "passed").await;
    let crash = vec![("LOCKSTEP_CRASH_AT".into(), "after-live-check-failed".into())];
    c.coordinator.restart_with(crash).await;

    std::fs::write(&broken, "").unwrap();
    production_release(&c, "P2").await;
    let p3 = other("P3");
    let p3 = ["-e", "production", "release", "create", "P3", &p3, "--wait"];
    assert_eq!(c.cli(&p3).await.code, 0);
    assert_eq!(
        c.transaction("P2").await.live_check,
        "soaking",
        "P3 committed while P2 soaked"
    );
    c.coordinator.exited().await;
    c.coordinator.restart_with(Vec::new()).await;

    let revert = reverting(&c, "P2").await;
    c.wait_state(&revert.id, TransactionState::Committed).await;
    let agent = |p: &str| c.agent(&format!("production/{p}")).live();
    assert_eq!(
        [agent("foobar-backend"), agent("foobar-frontend")],
        [Some("P1b".to_string()), Some("P1f".to_string())],
        "back at P1"
    );
    drop(site);
}

/// Review finding of stop 53: the revert-due mark went as soon as the automatic revert
/// was admitted, and a restart aborts an undecided transaction (presumed abort), after
/// which the same id was answered with that abort: a revert cut off in its Prepare was
/// lost for good. Given P2 failing its live check while production's backend agent
/// holds every Prepare, when the coordinator is SIGKILLed with the revert preparing,
/// then after the restart another attempt reverts P2: P1's versions run again.
#[tokio::test(flavor = "multi_thread")]
async fn a_revert_a_restart_cut_off_is_made_again() {
    let (_dir, broken, site, pipeline) = live_site("production", "3s", "revert");
    let mut c = production(&pipeline).await;
    production_release(&c, "P1").await;
    live_check_is(&c, "P1", "passed").await;
    production_release(&c, "P2").await;
    c.block("foobar-backend");
    std::fs::write(&broken, "").unwrap();
    let revert = reverting(&c, "P2").await;
    assert_eq!(revert.id, "auto-revert-P2");
    c.wait_state(&revert.id, TransactionState::Preparing).await;

    c.coordinator.kill9().await;
    c.heal("foobar-backend");
    c.coordinator.restart().await;

    c.wait_state("auto-revert-P2-2", TransactionState::Committed)
        .await;
    let cut_off = c.transaction("auto-revert-P2").await;
    assert_eq!(cut_off.state(), TransactionState::Aborted, "{cut_off:?}");
    let agent = |p: &str| c.agent(&format!("production/{p}")).live();
    assert_eq!(
        [agent("foobar-backend"), agent("foobar-frontend")],
        [Some("P1b".to_string()), Some("P1f".to_string())],
        "back at P1"
    );
    drop(site);
}

/// Staging (a 3 s soak, then its live check) auto-promoting to production, a backend
/// agent in each, and S1 (backend 1.0) committed in staging; the site and the
/// directory the live check needs.
async fn staging_s1_promoting() -> (Cluster, LiveSite, tempfile::TempDir) {
    let (dir, _, site, staging) = live_site("staging", "3s", "revert");
    let pipeline = format!(
        "{staging}\n[[environment]]\nname = \"production\"\nafter = \"staging\"\nauto_promote = true\n"
    );
    let mut c = with_pipeline(&pipeline).await;
    for env in ["staging", "production"] {
        env_agent(&mut c, env, "foobar-backend", &[], &[]).await;
    }
    let args = [
        "-e",
        "staging",
        "release",
        "create",
        "S1",
        "foobar-backend=1.0",
        "--wait",
    ];
    assert_eq!(c.cli(&args).await.code, 0);
    (c, site, dir)
}

/// Review finding of stop 53: an automatic promotion a restart aborted before its
/// decision was never made again (its id was answered with the abort). Given staging
/// promoting to production once a release's live check passed, when the coordinator
/// is SIGKILLed while the promotion waits in production's Prepare, then after the
/// restart another attempt promotes it: production runs 1.0.
#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_a_restart_cut_off_is_made_again() {
    let (mut c, site, _dir) = staging_s1_promoting().await;
    c.block("foobar-backend");
    let promotion = "promote-staging-1-to-production";
    c.wait_state(promotion, TransactionState::Preparing).await;
    // Killed only once its start is durable (its events are in the log): shown
    // PREPARING a moment before, it was not made yet as far as a restart knows, and
    // the restart rightly makes it under its own id (seen in CI at stop 59).
    support::wait_for("the promotion's start in the log", || async {
        let started = |e: &lockstep::pb::Event| {
            e.transaction_id == promotion && e.kind == EventKind::PrepareStarted as i32
        };
        c.events().await.iter().any(started).then_some(())
    })
    .await;

    c.coordinator.kill9().await;
    c.heal("foobar-backend");
    c.coordinator.restart().await;

    c.wait_state(&format!("{promotion}-2"), TransactionState::Committed)
        .await;
    assert_eq!(
        c.agent("production/foobar-backend").live().as_deref(),
        Some("1.0")
    );
    drop(site);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_is_promoted_only_once_its_live_check_passed() {
    let (c, site, _dir) = staging_s1_promoting().await;
    let early = c
        .cli(&[
            "promote",
            "--from",
            "staging",
            "--to",
            "production",
            "--checkpoint",
            "1",
        ])
        .await;
    assert_eq!(early.code, 1, "{early:?}");
    assert!(
        early
            .stderr
            .contains("still in its verification after commit"),
        "{early:?}"
    );

    live_check_is(&c, "S1", "passed").await;
    c.wait_state(
        "promote-staging-1-to-production",
        TransactionState::Committed,
    )
    .await;
    assert_eq!(
        c.agent("production/foobar-backend").live().as_deref(),
        Some("1.0")
    );
    drop(site);
}

/// Found by a review at stop 53: a project could be removed while a release of it
/// soaked, and the automatic revert its failed live check owes was then refused (it
/// names an unregistered project), leaving the failed release live. Given P1 soaking
/// in production, when one of its projects is removed, then the removal is refused
/// naming P1, and the project stays registered.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_of_a_soaking_release_cannot_be_removed() {
    let (_dir, _broken, site, pipeline) = live_site("production", "10m", "revert");
    let c = production(&pipeline).await;
    production_release(&c, "P1").await;
    live_check_is(&c, "P1", "soaking").await;

    let removed = c
        .cli(&["-e", "production", "project", "remove", "foobar-frontend"])
        .await;
    assert_eq!(removed.code, 1, "{removed:?}");
    assert!(
        removed.stderr.contains("P1") && removed.stderr.contains("soak"),
        "{removed:?}"
    );
    let list = c.cli(&["-e", "production", "project", "list"]).await;
    assert!(list.stdout.contains("foobar-frontend"), "{list:?}");
    drop(site);
}
