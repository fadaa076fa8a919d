//! `lockstep conformance` against real agents: the reference agent (restarted by the
//! kit with `--restart-cmd`) passes every check; an agent that breaks the rules fails
//! the kit, with each broken rule named.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use lockstep::pb::{self, participant_server};
use tonic::{Request, Response, Status};

/// A script that (re)starts the reference agent for project B on `port`, asking the
/// kit at `kit` for decisions 10 ms after each vote, and returns once it listens.
fn agent_script(dir: &Path, port: u16, kit: u16) -> std::path::PathBuf {
    let script = dir.join("agent.sh");
    let text = format!(
        r#"set -e
cd '{dir}'
if [ -f agent.pid ]; then kill -9 "$(cat agent.pid)" 2>/dev/null || true; sleep 0.1; fi
: > agent.out
'{bin}' --project B --listen 127.0.0.1:{port} --data-dir state --deploy-root root \
  --insecure --coordinator http://127.0.0.1:{kit} --ask-decision-after 10ms \
  > agent.out 2>> agent.log &
echo $! > agent.pid
for i in $(seq 1 300); do grep -q 'listening on' agent.out && exit 0; sleep 0.1; done
echo 'the agent did not start' >&2; exit 1
"#,
        dir = dir.display(),
        bin = support::bin("lockstep-agent").display(),
    );
    std::fs::write(&script, text).unwrap();
    script
}

async fn conformance(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = tokio::process::Command::new(support::bin("lockstep"))
        .arg("conformance")
        .args(args)
        .args(["-o", "json"])
        .output()
        .await
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), report, stderr)
}

/// Given the reference agent, when the kit plays the coordinator against it (and
/// restarts it holding a PREPARED vote), then every check passes and none is skipped.
/// The agent asks GetDecision 10 ms after each vote: until stop 54 the kit answered
/// ABORT for a transaction it had prepared and not yet decided, so a correct agent
/// that asked soon aborted and failed the kit.
#[tokio::test(flavor = "multi_thread")]
async fn the_reference_agent_passes_every_check_of_the_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    let (port, kit) = (support::free_port(), support::free_port());
    let script = agent_script(dir.path(), port, kit);
    let started = std::process::Command::new("sh")
        .arg(&script)
        .status()
        .unwrap();
    assert!(started.success());
    let restart = format!("sh '{}'", script.display());
    let agent = format!("http://127.0.0.1:{port}");
    let serve = format!("127.0.0.1:{kit}");

    let run = [
        "--agent",
        &agent,
        "--project",
        "B",
        "--serve",
        &serve,
        "--restart-cmd",
        &restart,
    ];
    let (code, report, stderr) = conformance(&run).await;
    // Found by a review at stop 54: every order went at term 0 and the term check left
    // the agent at term 2, so a second run against the same agent failed almost every
    // check (FAILED_PRECONDITION).
    let second = conformance(&run).await;
    // Found by a review at stop 54: without --restart-cmd the durability check was
    // skipped and the run still exited 0.
    let unrestarted = &run[..6];
    let skipping = conformance(unrestarted).await;
    let allowed = conformance(&[unrestarted, &["--allow-skip"]].concat()).await;
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "kill -9 $(cat '{}/agent.pid')",
            dir.path().display()
        ))
        .status();
    assert_eq!(code, 0, "{report:#} {stderr}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 14, "{report:#}");
    assert!(checks.iter().all(|c| c["outcome"] == "pass"), "{report:#}");
    let (again, report, stderr) = second;
    assert_eq!(again, 0, "a second run: {report:#} {stderr}");
    let (code, report, stderr) = skipping;
    assert_eq!(code, 1, "a skip fails the run: {report:#} {stderr}");
    assert_eq!(report["passed"], false, "{report:#}");
    let (code, report, stderr) = allowed;
    assert_eq!(code, 0, "--allow-skip: {report:#} {stderr}");
}

/// Answers every Prepare PREPARED and every Commit and Abort OK, whatever it holds.
struct Yes;

#[tonic::async_trait]
impl participant_server::Participant for Yes {
    async fn prepare(
        &self,
        _: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        Ok(Response::new(pb::PrepareResponse {
            vote: pb::Vote::Prepared as i32,
            ..Default::default()
        }))
    }

    async fn commit(
        &self,
        _: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        Ok(Response::new(pb::CommitResponse::default()))
    }

    async fn abort(
        &self,
        _: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        Ok(Response::new(pb::AbortResponse::default()))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ParticipantStatus>, Status> {
        Ok(Response::new(pb::ParticipantStatus::default()))
    }
}

/// Given an agent that says yes to everything, when the kit checks it, then it exits 1
/// and names the rules it breaks: the wrong from_version, the second transaction, the
/// unknown Commit, the Abort before Prepare, the Commit and Abort for another project.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_agrees_to_everything_fails_the_kit_naming_each_broken_rule() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(participant_server::ParticipantServer::new(Yes))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let serve = format!("127.0.0.1:{}", support::free_port());

    let (code, report, stderr) =
        conformance(&["--agent", &agent, "--project", "B", "--serve", &serve]).await;

    assert_eq!(code, 1, "{report:#} {stderr}");
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["outcome"] == "fail")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for rule in [
        "a Prepare whose from_version is not live is refused",
        "a second transaction is refused while one is prepared",
        "a Commit for an unknown id is FAILED_PRECONDITION",
        "an Abort before its Prepare is remembered: the late Prepare is refused",
        // Since stop 58: orders meant for another project (a wrong registration).
        "a Commit or Abort naming another project is refused and changes nothing",
    ] {
        assert!(failed.contains(&rule), "{rule:?} not among {failed:?}");
    }
    let skipped = &report["checks"][12];
    assert_eq!(skipped["outcome"], "skip", "{skipped}");
}

/// An agent that takes every call and never answers it.
struct Hung;

#[tonic::async_trait]
impl participant_server::Participant for Hung {
    async fn prepare(
        &self,
        _: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        std::future::pending().await
    }

    async fn commit(
        &self,
        _: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        std::future::pending().await
    }

    async fn abort(
        &self,
        _: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        std::future::pending().await
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ParticipantStatus>, Status> {
        std::future::pending().await
    }
}

/// Given an agent that never answers, when the kit checks it with `--call-timeout 1s`,
/// then it ends (it used to wait forever), exits 1, says which call went unanswered
/// and for how long, and runs nothing after it (each later check fails as not run).
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_never_answers_fails_the_kit_within_its_call_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(participant_server::ParticipantServer::new(Hung))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let serve = format!("127.0.0.1:{}", support::free_port());
    let args = ["--agent", &agent, "--project", "B", "--serve", &serve];
    let args = [&args[..], &["--call-timeout", "1s"]].concat();
    let run = conformance(&args);

    let (code, report, stderr) = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("the kit still waits on an agent that never answers, 60 s on");

    assert_eq!(code, 1, "{report:#} {stderr}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks[0]["outcome"], "fail", "{report:#}");
    let reason = checks[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("GetStatus: no answer within 1s"),
        "{reason}"
    );
    for c in &checks[1..] {
        assert_eq!(c["outcome"], "fail", "{c}");
        let reason = c["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("not run: the agent stopped answering"),
            "{reason}"
        );
    }
}
