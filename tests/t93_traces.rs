//! Traces (issue 29): with `--otlp-endpoint` on the coordinator and every agent, one
//! release is one OpenTelemetry trace across the processes, received by a real OTLP
//! gRPC receiver (tests/support/otlp.rs): the CLI's command, the CreateRelease call, the
//! transaction, each order to each participant, each agent's handling of it, and each
//! migration file.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use support::{Cluster, otlp, wait_for};

/// A real HTTP webhook receiver (tests/support/receiver.py) logging every request.
struct Hooks {
    dir: std::path::PathBuf,
    port: u16,
    _child: tokio::process::Child,
}

impl Hooks {
    async fn start(root: &std::path::Path) -> Self {
        let dir = root.join("hooks");
        std::fs::create_dir_all(&dir).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/receiver.py");
        let child = tokio::process::Command::new("python3")
            .arg(script)
            .arg("--port-file")
            .arg(dir.join("port"))
            .arg("--log")
            .arg(dir.join("log"))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let port = wait_for("the receiver to listen", || async {
            std::fs::read_to_string(dir.join("port"))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .await;
        Hooks {
            dir,
            port,
            _child: child,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn lines(&self) -> Vec<Value> {
        let raw = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let complete = raw.split_inclusive('\n').filter(|l| l.ends_with('\n'));
        complete
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A build of C at `version` shipping one migration.
fn build_with_migration(root: &std::path::Path, version: &str) -> String {
    let dir = root.join("builds").join(version);
    std::fs::create_dir_all(dir.join("migrations")).unwrap();
    std::fs::write(dir.join("app.txt"), version).unwrap();
    let up = "CREATE TABLE c_t1 (id INTEGER PRIMARY KEY);";
    std::fs::write(dir.join("migrations/0001_first.up.sql"), up).unwrap();
    std::fs::write(
        dir.join("migrations/0001_first.down.sql"),
        "DROP TABLE c_t1;",
    )
    .unwrap();
    format!("C={}", dir.display())
}

/// Given the family exporting traces to a receiver, and C with a database, when T1
/// commits through the CLI (exporting too), then the receiver holds one trace rooted at
/// the CLI's `lockstep release create`, with the coordinator's CreateRelease,
/// the transaction as its child, a Prepare and a Commit to each of A, B and C as the
/// transaction's children, each agent's Prepare as the child of the coordinator's
/// order to it, and C's migration file inside C's Prepare.
#[tokio::test(flavor = "multi_thread")]
async fn one_release_is_one_trace_across_the_coordinator_and_every_agent() {
    let receiver = otlp::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator").display().to_string();
    let args = ["--data-dir", &data, "--otlp-endpoint", &receiver.url].map(String::from);
    let mut c = Cluster::with_coordinator(dir, args.into(), Vec::new()).await;
    let traced = ["--otlp-endpoint".to_string(), receiver.url.clone()];
    let database = format!("sqlite://{}", c.dir.path().join("c.db").display());
    for (p, requires) in [("B", &[][..]), ("C", &[]), ("A", &["B", "C"])] {
        let mut flags = traced.to_vec();
        if p == "B" {
            flags.extend(["--log-format".to_string(), "json".to_string()]);
        }
        if p == "C" {
            flags.extend(["--database".to_string(), database.clone()]);
        }
        c.add_agent_with(p, &flags).await;
        c.register(p, requires).await;
    }
    let hooks = Hooks::start(c.dir.path()).await;
    let url = hooks.url();
    let added = c.cli(&["notify", "add", "all", "--url", &url]).await;
    assert_eq!(added.code, 0, "{added:?}");
    let artifact = build_with_migration(c.dir.path(), "T1C");
    // The CLI exports its own span when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let create = ["release", "create", "T1", "A=T1A", "B=T1B", "C=T1C"];
    let out = tokio::process::Command::new(support::bin("lockstep"))
        .args(create)
        .args(["--artifact", &artifact, "--wait"])
        .env("LOCKSTEP_COORDINATOR", c.coordinator.url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Spans are exported in batches (every 5 s by default): wait for the last ones.
    let spans = wait_for("C's Commit span", || async {
        let spans = receiver.spans();
        let done = spans.iter().any(|s| {
            s.service == "lockstep-agent"
                && s.name == "Commit"
                && s.attribute("rpc.method") == Some("Commit")
        });
        let agents_done = spans
            .iter()
            .filter(|s| s.service == "lockstep-agent" && s.name == "Commit")
            .count()
            >= 3;
        (done && agents_done).then_some(spans)
    })
    .await;
    let create = spans
        .iter()
        .find(|s| s.service == "lockstep-coordinator" && s.name == "CreateRelease")
        .unwrap_or_else(|| panic!("no CreateRelease span: {spans:#?}"));
    let trace: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == create.trace_id)
        .collect();
    let cli = trace
        .iter()
        .find(|s| s.service == "lockstep" && s.name == "lockstep release create")
        .unwrap_or_else(|| panic!("no CLI span in the trace: {spans:#?}"));
    assert_eq!(create.parent, cli.span_id, "the CLI's command is the root");
    assert_eq!(cli.parent, "", "{cli:?}");
    // `release get` names the trace, to find the whole release in a tracing backend.
    let got = c.cli(&["release", "get", "T1"]).await;
    assert!(
        got.stdout.contains(&format!("trace {}", create.trace_id)),
        "{got:?}"
    );
    let json = c.cli(&["release", "get", "T1", "-o", "json"]).await.json();
    assert_eq!(json["traceId"], create.trace_id.as_str());
    // The webhook of T1's commit continues the trace (header and CloudEvents attribute).
    let committed = wait_for("the webhook of T1's commit", || async {
        hooks.lines().into_iter().find(|l| {
            let body: Value =
                serde_json::from_str(l["body"].as_str().unwrap_or("{}")).unwrap_or_default();
            body["type"] == "dev.lockstep.transaction.committed"
        })
    })
    .await;
    let header = committed["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        header.split('-').nth(1),
        Some(create.trace_id.as_str()),
        "{committed}"
    );
    let body: Value = serde_json::from_str(committed["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["traceparent"], header.as_str(), "{body}");
    let transaction = trace
        .iter()
        .find(|s| s.attribute("transaction_id") == Some("T1") && s.name.contains("T1"))
        .unwrap_or_else(|| panic!("no transaction span in {trace:#?}"));
    assert_eq!(transaction.parent, create.span_id, "created by the call");
    let decision = trace
        .iter()
        .find(|s| s.name == "COMMIT decision (durable)")
        .unwrap_or_else(|| panic!("no decision span in {trace:#?}"));
    assert_eq!(
        decision.parent, transaction.span_id,
        "the decision's durable write"
    );
    for p in ["A", "B", "C"] {
        for order in ["Prepare", "Commit"] {
            let sent = trace
                .iter()
                .find(|s| s.name == format!("{order} {p}"))
                .unwrap_or_else(|| panic!("no {order} {p} in {trace:#?}"));
            assert_eq!(sent.parent, transaction.span_id, "{order} {p}");
            let handled = trace
                .iter()
                .find(|s| {
                    s.service == "lockstep-agent" && s.name == order && s.parent == sent.span_id
                })
                .unwrap_or_else(|| panic!("{p} did not continue {order}: {trace:#?}"));
            if (p, order) == ("C", "Prepare") {
                let migration = trace
                    .iter()
                    .find(|s| s.name == "migration 0001_first.up.sql")
                    .unwrap_or_else(|| panic!("no migration span in {trace:#?}"));
                assert_eq!(migration.parent, handled.span_id);
            }
        }
    }

    // A log line written inside a traced call names the trace: B refuses T2 (its
    // prepare hook fails) and its JSON log's warning carries T2's trace id.
    c.fail("B", "tests failed");
    let refused = c.cli(&["release", "create", "T2", "B=T2B", "--wait"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    let t2 = c.cli(&["release", "get", "T2", "-o", "json"]).await.json();
    let trace_id = t2["traceId"].as_str().unwrap().to_string();
    let log = c.agent("B").server.log();
    let warned = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("prepare hook"))
        })
        .unwrap_or_else(|| panic!("no hook warning in B's log:\n{log}"));
    let spans = warned["spans"].as_array().unwrap();
    let named = spans.iter().any(|s| s["trace_id"] == trace_id.as_str());
    assert!(named, "the line names trace {trace_id}: {warned}");
}

/// One environment whose releases wait on the three kinds of verify step; its http step
/// asks the coordinator's own `/metrics` (always 200).
const PIPELINE: &str = r#"
[[environment]]
name = "staging"
  [[environment.verify]]
  name = "smoke"
  kind = "http"
  url = "http://127.0.0.1:METRICS/metrics"
  [[environment.verify]]
  name = "performance"
  kind = "external"
  [[environment.verify]]
  name = "approval"
  kind = "approval"
"#;

/// Passes `id`'s external step, then approves it, and waits for its commit.
async fn pass_steps(c: &Cluster, id: &str) {
    let report = [
        "-e",
        "staging",
        "verify",
        "report",
        id,
        "performance",
        "--passed",
    ];
    wait_for("the performance step to take a report", || async {
        (c.cli(&report).await.code == 0).then_some(())
    })
    .await;
    let approve = ["-e", "staging", "approve", id, "--actor", "carol"];
    wait_for("the approval step to take an approval", || async {
        (c.cli(&approve).await.code == 0).then_some(())
    })
    .await;
    c.wait_state(id, lockstep::pb::TransactionState::Committed)
        .await;
}

/// A coordinator exporting spans to `receiver`, with the staging pipeline of
/// [`PIPELINE`] and its agent A (tracing too).
async fn staging_traced(receiver: &otlp::Receiver) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator").display().to_string();
    let port = support::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let args = [
        "--data-dir",
        &data,
        "--otlp-endpoint",
        &receiver.url,
        "--metrics-listen",
        &metrics,
    ];
    let mut c = Cluster::with_coordinator(dir, args.map(String::from).into(), Vec::new()).await;
    let file = c.dir.path().join("pipeline.toml");
    std::fs::write(&file, PIPELINE.replace("METRICS", &port.to_string())).unwrap();
    let applied = c.cli(&["env", "apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(applied.code, 0, "{applied:?}");
    let traced = ["--otlp-endpoint".to_string(), receiver.url.clone()];
    c.add_env_agent_with("staging", "A", &traced).await;
    let url = c.agent("staging/A").server.url();
    let added = c
        .cli(&["-e", "staging", "project", "add", "A", "--endpoint", &url])
        .await;
    assert_eq!(added.code, 0, "{added:?}");
    c
}

/// Given a pipeline with an http, an external and an approval step, when T2 is queued
/// behind T1 on the same project and both pass their steps, then T2's trace holds its
/// queue wait, and each trace holds a span per verify step under its transaction, the
/// external and approval ones lasting from their trigger to their outcome.
#[tokio::test(flavor = "multi_thread")]
async fn the_queue_wait_and_every_verify_step_are_spans_of_the_transaction() {
    let receiver = otlp::Receiver::start().await;
    let c = staging_traced(&receiver).await;
    for id in ["T1", "T2"] {
        let version = format!("A={id}A");
        let out = c
            .cli(&["-e", "staging", "release", "create", id, &version])
            .await;
        assert_eq!(out.code, 0, "{out:?}");
    }
    pass_steps(&c, "T1").await;
    pass_steps(&c, "T2").await;

    let spans = wait_for("both transactions' spans", || async {
        let spans = receiver.spans();
        let ended = |id: &str| spans.iter().any(|s| s.name == format!("Release {id}"));
        (ended("T1") && ended("T2")).then_some(spans)
    })
    .await;
    let transaction = |id: &str| {
        let name = format!("Release {id}");
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} in {spans:#?}"))
    };
    let children = |id: &str, name: &str| {
        let t = transaction(id);
        let found = spans
            .iter()
            .filter(|s| s.parent == t.span_id && s.name == name);
        found.collect::<Vec<_>>()
    };
    assert_eq!(
        children("T2", "queue wait").len(),
        1,
        "T2 waited for T1: {spans:#?}"
    );
    assert!(children("T1", "queue wait").is_empty(), "T1 did not wait");
    for id in ["T1", "T2"] {
        assert_eq!(
            children(id, "verify smoke").len(),
            1,
            "{id}'s http step: {spans:#?}"
        );
        for step in ["performance", "approval"] {
            let found = children(id, &format!("verify {step}"));
            assert_eq!(found.len(), 1, "{id}'s {step} step: {spans:#?}");
            assert_eq!(found[0].attribute("outcome"), Some("passed"), "{found:?}");
        }
    }
}

/// Review finding of stop 58: a verify step's span ended only when its step did, and
/// an abort while a person was asked to approve leaves the step waiting: its span
/// stayed open through phase 2 and ended, with no outcome, when the driver did (after
/// a restart in phase 2 a new one even started for a step that never runs again).
/// Given T3 waiting for its approval, when it is aborted, then its approval span ends
/// with outcome `abandoned` no later than its transaction.
#[tokio::test(flavor = "multi_thread")]
async fn an_abort_while_a_step_waits_ends_the_steps_span_as_abandoned() {
    let receiver = otlp::Receiver::start().await;
    let c = staging_traced(&receiver).await;
    let out = c
        .cli(&["-e", "staging", "release", "create", "T3", "A=T3A"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let report = [
        "-e",
        "staging",
        "verify",
        "report",
        "T3",
        "performance",
        "--passed",
    ];
    wait_for("the performance step to take a report", || async {
        (c.cli(&report).await.code == 0).then_some(())
    })
    .await;
    let abort = [
        "-e",
        "staging",
        "release",
        "abort",
        "T3",
        "--reason",
        "not today",
    ];
    assert_eq!(c.cli(&abort).await.code, 0);
    c.wait_state("T3", lockstep::pb::TransactionState::Aborted)
        .await;

    let spans = wait_for("T3's spans", || async {
        let spans = receiver.spans();
        spans
            .iter()
            .any(|s| s.name == "Release T3")
            .then_some(spans)
    })
    .await;
    let approval: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "verify approval")
        .collect();
    assert_eq!(approval.len(), 1, "{spans:#?}");
    assert_eq!(
        approval[0].attribute("outcome"),
        Some("abandoned"),
        "{approval:?}"
    );
}

/// Found by a review at stop 54: the transaction span of a transaction that recovery
/// resumed had no parent (the stored traceparent was never used), so its phase 2
/// after a restart, and the agents' spans under it, landed in a trace of their own.
/// Given T1 held in phase 2 by B's commit hook across a coordinator restart, when it
/// commits, then the transaction span the new process exports is in T1's trace.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_resumed_after_a_restart_stays_in_its_trace() {
    let receiver = otlp::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator").display().to_string();
    let hold = dir.path().join("B.commit-block");
    let args = ["--data-dir", &data, "--otlp-endpoint", &receiver.url].map(String::from);
    let mut c = Cluster::with_coordinator(dir, args.into(), Vec::new()).await;
    let hook = format!("while [ -e '{}' ]; do sleep 0.02; done", hold.display());
    let flags = [
        "--otlp-endpoint".into(),
        receiver.url.clone(),
        "--commit-hook".into(),
        hook,
    ];
    c.add_agent_with("B", &flags).await;
    c.register("B", &[]).await;
    std::fs::write(&hold, "").unwrap();
    assert_eq!(c.cli(&["release", "create", "T1", "B=1.0"]).await.code, 0);
    let t1 = c
        .wait_state("T1", lockstep::pb::TransactionState::Committing)
        .await;
    assert!(!t1.trace_id.is_empty(), "{t1:?}");

    c.coordinator.restart().await;
    std::fs::remove_file(&hold).unwrap();
    c.wait_state("T1", lockstep::pb::TransactionState::Committed)
        .await;
    let span = wait_for("the resumed transaction's span", || async {
        let spans = receiver.spans();
        let found = spans
            .iter()
            .find(|s| s.service == "lockstep-coordinator" && s.name == "Release T1");
        found.cloned()
    })
    .await;
    assert_eq!(span.trace_id, t1.trace_id, "{span:?}");
}

/// Found by a review at stop 54: a release created over the HTTP API (the console,
/// curl) was never in a trace: the API called the service outside any span, so the
/// `traceparent` it was given went nowhere and `release get` showed no trace id.
/// Given the API, when a release is created with a traceparent, then it is in that
/// trace.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_created_over_http_is_in_the_callers_trace() {
    let receiver = otlp::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator").display().to_string();
    let listen = format!("127.0.0.1:{}", support::free_port());
    let args = [
        "--data-dir",
        &data,
        "--otlp-endpoint",
        &receiver.url,
        "--http-listen",
        &listen,
    ];
    let mut c = Cluster::with_coordinator(dir, args.map(String::from).into(), Vec::new()).await;
    c.add_agent("B").await;
    c.register("B", &[]).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = serde_json::json!({"id": "H1", "components": [{"project": "B", "version": "1.0"}]});
    let answer = reqwest::Client::new()
        .post(format!("http://{listen}/api/v1/releases"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{answer:?}");
    let t = c
        .wait_state("H1", lockstep::pb::TransactionState::Committed)
        .await;
    assert_eq!(t.trace_id, trace, "{t:?}");
}
