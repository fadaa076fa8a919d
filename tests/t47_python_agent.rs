//! The contract proven from outside Rust: `examples/python-agent` (grpcio, stubs made
//! from the proto at start, grpcio's default server settings) passes the conformance
//! kit, takes part in a release whose Prepare runs longer than gRPC's default
//! keepalive enforcement would allow pings for, and serves mutual TLS as the reference
//! agent does (orders from the coordinator's identity alone).

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use lockstep::pb::{self, TransactionState, participant_client::ParticipantClient};
use support::{
    Cluster, Server, python,
    secure::{Secure, admin, certs_init},
    wait_for,
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

fn agent_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python-agent/agent.py")
}

/// A script that (re)starts the Python agent for B on `port`, asking the kit at `kit`
/// right after each vote: until stop 54 the kit answered ABORT for a transaction it had
/// prepared and not decided yet, so an agent that asked at once aborted and failed.
fn restart_script(dir: &Path, port: u16, kit: u16) -> PathBuf {
    let script = dir.join("agent.sh");
    let text = format!(
        r#"set -e
cd '{dir}'
if [ -f agent.pid ]; then kill -9 "$(cat agent.pid)" 2>/dev/null || true; sleep 0.1; fi
: > agent.out
'{python}' '{agent}' --project B --listen 127.0.0.1:{port} --data-dir state \
  --coordinator http://127.0.0.1:{kit} --ask-after 0 > agent.out 2>> agent.log &
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
    let (port, kit) = (support::free_port(), support::free_port());
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
    assert!(report.contains("14 of 14 checks passed"), "{report}");
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

/// A Participant client to `url` over `tls`; it dials at the first call, so a refused
/// handshake is that call's error.
fn participant(url: &str, tls: ClientTlsConfig) -> ParticipantClient<Channel> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    ParticipantClient::new(channel)
}

/// Given a coordinator and a reference agent for A with mutual TLS, and the Python agent
/// for B started with its own certificate from the deployment's CA and registered at an
/// https:// endpoint (its `--coordinator` listing an instance that is down before the
/// coordinator, as every instance of one on etcd is given), when a release of A and B
/// runs (A's Prepare held until B has asked the coordinator for the decision), then B
/// asks GetDecision over TLS with its own certificate, past the instance that is down,
/// and is answered, the release commits on both, and B takes orders from
/// the coordinator's identity alone: a caller with no certificate or one from another
/// CA is refused at the handshake, and a user's or another agent's certificate from the
/// same CA may read B's status but hears PERMISSION_DENIED naming why for an order,
/// which changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_agent_serves_mutual_tls() {
    let s = Secure::start(&["A"], &[]).await;
    let file = |name: &str| s.certs.join(name).display().to_string();
    let state = s.dir.path().join("python-B");
    let log = s.dir.path().join("python-B.log");
    let args = vec![
        agent_py().display().to_string(),
        "--project".into(),
        "B".into(),
        "--data-dir".into(),
        state.display().to_string(),
        "--coordinator".into(),
        format!("https://127.0.0.1:1,{}", s.coordinator.https_url()),
        "--tls-cert".into(),
        file("agent-default-B.crt"),
        "--tls-key".into(),
        file("agent-default-B.key"),
        "--tls-client-ca".into(),
        file("ca.crt"),
        "--ask-after".into(),
        "0".into(),
    ];
    let b = Server::start("python-B", python(), args, Vec::new(), log.clone(), 0).await;
    let out = s
        .cli(
            &admin(),
            &["project", "add", "B", "--endpoint", &b.https_url()],
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");

    s.block("A");
    let out = s
        .cli(&admin(), &["release", "create", "T1", "A=T1A", "B=T1B"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    wait_for(
        "B to ask the coordinator for T1's decision over TLS",
        || {
            let log = log.clone();
            async move {
                let heard = std::fs::read_to_string(&log).ok()?;
                let down = heard.contains("asking instance 0 for T1: StatusCode.UNAVAILABLE");
                (down && heard.contains("asked for T1: DECISION_UNDECIDED")).then_some(())
            }
        },
    )
    .await;
    s.heal("A");
    let coordinator = s
        .coordinator_client(("user-admin.crt", "user-admin.key"))
        .await;
    wait_for("T1 to commit", || {
        let mut coordinator = coordinator.clone();
        async move {
            let request = pb::GetReleaseRequest { id: "T1".into() };
            let t = coordinator.get_release(request).await.ok()?.into_inner();
            (t.state == TransactionState::Committed as i32).then_some(())
        }
    })
    .await;

    let live = s.cli(&admin(), &["live", "-o", "json"]).await;
    assert_eq!(live.code, 0, "{live:?}");
    let json = live.json();
    assert_eq!(json["checkpoint"]["transactionId"], "T1", "{json:#}");
    let versions: BTreeMap<String, String> = json["checkpoint"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let text = |k: &str| v[k].as_str().unwrap().to_string();
            (text("project"), text("version"))
        })
        .collect();
    let expected = BTreeMap::from([
        ("A".to_string(), "T1A".to_string()),
        ("B".into(), "T1B".into()),
    ]);
    assert_eq!(versions, expected, "{json:#}");
    assert_eq!(s.live(), Cluster::expect(&[("A", "T1A")]));

    let ca = std::fs::read(s.certs.join("ca.crt")).unwrap();
    let other = s.dir.path().join("other-ca");
    certs_init(&other, "B", "mallory").await;
    let read = |path: PathBuf| std::fs::read(path).unwrap();
    let foreign = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .identity(Identity::from_pem(
            read(other.join("agent-default-B.crt")),
            read(other.join("agent-default-B.key")),
        ));
    let abort = pb::AbortRequest {
        transaction_id: "T1".into(),
        project: "B".into(),
        reason: "not the coordinator".into(),
        ..Default::default()
    };
    for (who, tls) in [("no certificate", s.tls(None)), ("another CA's", foreign)] {
        // grpcio cannot ask for a client certificate without requiring one: the
        // handshake itself fails, so the call never reaches the agent.
        let mut client = participant(&b.https_url(), tls);
        let answer = client.abort(abort.clone()).await;
        assert!(answer.is_err(), "{who}: {answer:?}");
        let answer = client.get_status(pb::GetStatusRequest {}).await;
        assert!(answer.is_err(), "{who}: {answer:?}");
    }

    let prepare = pb::PrepareRequest {
        transaction_id: "T2".into(),
        environment: "default".into(),
        project: "B".into(),
        version: "T2B".into(),
        from_version: "T1B".into(),
        ..Default::default()
    };
    for (cert, uri) in [
        ("user-admin", "spiffe://lockstep/user/admin"),
        ("agent-default-A", "spiffe://lockstep/agent/default/A"),
    ] {
        let (crt, key) = (format!("{cert}.crt"), format!("{cert}.key"));
        let mut client = participant(&b.https_url(), s.tls(Some((crt.as_str(), key.as_str()))));
        let status = client
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap_or_else(|e| panic!("{cert} may read B's status: {e:?}"))
            .into_inner();
        assert_eq!(status.live_version, "T1B", "{status:?}");
        assert!(status.staged.is_empty(), "{status:?}");
        let orders = [
            client.prepare(prepare.clone()).await.map(|_| ()),
            client.abort(abort.clone()).await.map(|_| ()),
            client
                .commit(pb::CommitRequest {
                    transaction_id: "T1".into(),
                    project: "B".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ];
        for answer in orders {
            let refused = answer.unwrap_err();
            assert_eq!(
                refused.code(),
                Code::PermissionDenied,
                "{cert}: {refused:?}"
            );
            for named in ["spiffe://lockstep/coordinator", uri] {
                assert!(
                    refused.message().contains(named),
                    "the refusal names {named}: {refused:?}"
                );
            }
        }
    }

    assert_eq!(
        std::fs::read_to_string(state.join("live")).unwrap(),
        "T1B",
        "the refused orders changed nothing"
    );
    let ledger: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("ledger.json")).unwrap()).unwrap();
    assert_eq!(ledger["T1"]["phase"], "committed", "{ledger:#}");
    assert!(
        ledger.get("T2").is_none(),
        "no Prepare was recorded: {ledger:#}"
    );
    assert!(
        b.log()
            .contains("refused a call to the Participant API: PERMISSION_DENIED"),
        "the agent logs each refusal: {}",
        b.log()
    );
}
