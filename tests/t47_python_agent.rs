//! The contract proven from outside Rust: `examples/python-agent` (grpcio, stubs made
//! from the proto at start, grpcio's default server settings) passes the conformance
//! kit, and takes part in a release whose Prepare runs longer than gRPC's default
//! keepalive enforcement would allow pings for.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use lockstep::pb::TransactionState;
use support::{Cluster, Server};

/// The venv's Python, with grpcio and grpcio-tools (installed by scripts/setup).
fn python() -> PathBuf {
    let tools =
        std::env::var("LOCKSTEP_TOOLS").unwrap_or_else(|_| "/var/tmp/lockstep-tools".into());
    Path::new(&tools).join("venv/bin/python3")
}

fn agent_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python-agent/agent.py")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A script that (re)starts the Python agent for B on `port`, asking the kit at `kit`.
fn restart_script(dir: &Path, port: u16, kit: u16) -> PathBuf {
    let script = dir.join("agent.sh");
    let text = format!(
        r#"set -e
cd '{dir}'
if [ -f agent.pid ]; then kill -9 "$(cat agent.pid)" 2>/dev/null || true; sleep 0.1; fi
: > agent.out
'{python}' '{agent}' --project B --listen 127.0.0.1:{port} --data-dir state \
  --coordinator http://127.0.0.1:{kit} > agent.out 2>> agent.log &
echo $! > agent.pid
for i in $(seq 1 300); do grep -q 'listening on' agent.out && exit 0; sleep 0.1; done
echo 'the agent did not start' >&2; cat agent.log >&2; exit 1
"#,
        dir = dir.display(),
        python = python().display(),
        agent = agent_py().display(),
    );
    std::fs::write(&script, text).unwrap();
    script
}

/// Given the Python agent, when the conformance kit checks it (restarting it once with
/// a PREPARED vote), then every check passes.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_agent_passes_the_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    let (port, kit) = (free_port(), free_port());
    let script = restart_script(dir.path(), port, kit);
    assert!(
        std::process::Command::new("sh")
            .arg(&script)
            .status()
            .unwrap()
            .success()
    );
    let restart = format!("sh '{}'", script.display());

    let out = tokio::process::Command::new(support::bin("lockstep"))
        .args([
            "conformance",
            "--agent",
            &format!("http://127.0.0.1:{port}"),
        ])
        .args(["--project", "B", "--serve", &format!("127.0.0.1:{kit}")])
        .args(["--restart-cmd", &restart])
        .output()
        .await
        .unwrap();

    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "kill -9 $(cat '{}/agent.pid')",
            dir.path().display()
        ))
        .status();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("12 of 12 checks passed"), "{report}");
}

/// Given the Python agent next to a reference agent, when a release's Prepare on it
/// takes 30 s, then the coordinator's connection is not dropped for too many pings:
/// the agent hears that Prepare once, and the release commits on both.
///
/// Defect 8 of issue 25: each Prepare attempt was cut after `--delivery-timeout` and
/// sent again, so a Prepare staging longer was heard twice (grpcio saw its first call
/// cancelled). The delivery timeout here is far below the Prepare's 30 s: a Prepare
/// call lives until the phase 1 deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_agent_on_default_grpc_settings_takes_part_in_a_slow_release() {
    let mut c = Cluster::new().await;
    c.coordinator
        .restart_with_args(vec!["--delivery-timeout".into(), "2s".into()])
        .await;
    c.add_agent("A").await;
    let log = c.dir.path().join("python-B.log");
    let args = [
        agent_py().display().to_string(),
        "--project".into(),
        "B".into(),
        "--data-dir".into(),
        c.dir.path().join("python-B").display().to_string(),
        "--coordinator".into(),
        c.coordinator.url(),
        "--prepare-seconds".into(),
        "30".into(),
    ];
    let b = Server::start(
        "python-B",
        python(),
        args.to_vec(),
        Vec::new(),
        log.clone(),
        0,
    )
    .await;
    let out = c
        .cli(&["project", "add", "B", "--endpoint", &b.url()])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    c.register("A", &["B"]).await;

    c.release("T1", &["A=T1A", "B=T1B"], 0).await;

    let heard = std::fs::read_to_string(&log).unwrap();
    let prepares = heard.lines().filter(|l| *l == "Prepare T1").count();
    assert_eq!(prepares, 1, "{heard}");
    assert_eq!(
        c.transaction("T1").await.state,
        TransactionState::Committed as i32
    );
    assert_eq!(c.agent("A").live().as_deref(), Some("T1A"));
}

/// Issue 27 (small things): the example agent copied out of the repository failed with
/// protoc's "Could not make proto path relative". Given `agent.py` alone in another
/// directory, when it starts without a proto it says where it looked and how to point
/// it at one, and with `LOCKSTEP_PROTO_DIR` it generates its stubs and runs.
#[test]
fn the_python_agent_copied_elsewhere_finds_its_proto_or_says_how() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("agent.py");
    std::fs::copy(agent_py(), &copy).unwrap();
    let run = |proto: Option<&str>| {
        let mut cmd = std::process::Command::new(python());
        cmd.arg(&copy)
            .arg("--help")
            .env_remove("LOCKSTEP_PROTO_DIR");
        if let Some(p) = proto {
            cmd.env("LOCKSTEP_PROTO_DIR", p);
        }
        cmd.output().unwrap()
    };
    let lost = run(None);
    let said = String::from_utf8_lossy(&lost.stderr);
    assert!(!lost.status.success(), "{said}");
    assert!(said.contains("LOCKSTEP_PROTO_DIR"), "{said}");
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let found = run(Some(proto));
    let help = String::from_utf8_lossy(&found.stdout);
    assert!(found.status.success(), "{:?}", found);
    assert!(help.contains("--project"), "{help}");
}
