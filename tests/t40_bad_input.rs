//! Bad input on every RPC: the right status code, a message naming the field, and
//! nothing written to the log.

#![allow(clippy::unwrap_used)]

mod support;

use lockstep::{pb, wkt};
use support::Cluster;
use tonic::Code;

#[track_caller]
fn refused<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    field: &str,
) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(field),
        "message must name {field:?}: {:?}",
        status.message()
    );
}

fn component(project: &str, version: &str) -> pb::Component {
    pb::Component {
        project: project.into(),
        version: version.into(),
        ..Default::default()
    }
}

fn release(id: &str, components: Vec<pb::Component>) -> pb::CreateReleaseRequest {
    pb::CreateReleaseRequest {
        id: id.into(),
        components,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_coordinator_rpc_refuses_bad_input_by_field_and_writes_nothing() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    let head = c.last_seq().await;
    let history = c.cli(&["history", "-o", "json"]).await.stdout;
    let mut co = c.client().await;

    let register = |name: &str, endpoint: &str, requires: &[&str]| pb::RegisterProjectRequest {
        name: name.into(),
        environment: String::new(),
        endpoint: endpoint.into(),
        requires: requires.iter().map(|s| s.to_string()).collect(),
        unchecked: true,
    };
    let ep = "http://127.0.0.1:1";
    refused(
        co.register_project(register("", ep, &[])).await,
        Code::InvalidArgument,
        "name",
    );
    refused(
        co.register_project(register("D", "ftp://x", &[])).await,
        Code::InvalidArgument,
        "endpoint",
    );
    // A port out of range was taken as no port (calls went to port 80), and port 0
    // can never be reached.
    for bad in [
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://127.0.0.1:",
    ] {
        refused(
            co.register_project(register("D", bad, &[])).await,
            Code::InvalidArgument,
            "endpoint: ",
        );
    }
    refused(
        co.register_project(register("D", ep, &["Nope"])).await,
        Code::NotFound,
        "requires: Nope: project Nope is not registered",
    );
    refused(
        co.register_project(register("D", ep, &["D"])).await,
        Code::InvalidArgument,
        "requires: D: project D cannot require itself",
    );
    refused(
        co.register_project(register("B", ep, &["A"])).await,
        Code::AlreadyExists,
        "project set B",
    );
    let update =
        |name: &str, endpoint: Option<&str>, requires: Option<&[&str]>| pb::UpdateProjectRequest {
            name: name.into(),
            environment: String::new(),
            endpoint: endpoint.map(String::from),
            requires: requires.map(|r| pb::ProjectChildren {
                names: r.iter().map(|s| s.to_string()).collect(),
            }),
            unchecked: true,
        };
    refused(
        co.update_project(update("B", None, Some(&["A"]))).await,
        Code::InvalidArgument,
        "cycle",
    );
    refused(
        co.update_project(update("B", Some("ftp://x"), None)).await,
        Code::InvalidArgument,
        "endpoint",
    );
    refused(
        co.update_project(update("B", None, Some(&["C", "C"])))
            .await,
        Code::InvalidArgument,
        "requires.names[1]",
    );
    refused(
        co.update_project(update("Nope", Some(ep), None)).await,
        Code::NotFound,
        "name",
    );
    refused(
        co.list_projects(pb::ListProjectsRequest {
            environment: "a/b".into(),
        })
        .await,
        Code::InvalidArgument,
        "environment",
    );

    refused(
        co.create_release(release("T9", vec![component("Nope", "1")]))
            .await,
        Code::NotFound,
        "components[0].project",
    );
    refused(
        co.create_release(release("T9", vec![component("B", "")]))
            .await,
        Code::InvalidArgument,
        "components[0].version",
    );
    refused(
        co.create_release(release("T9", vec![component("B", "../x")]))
            .await,
        Code::InvalidArgument,
        "components[0].version",
    );
    refused(
        co.create_release(release(
            "T9",
            vec![component("B", "1"), component("B", "2")],
        ))
        .await,
        Code::InvalidArgument,
        "components[1].project",
    );
    refused(
        co.create_release(release("T9", vec![component("A", "T9A")]))
            .await,
        Code::FailedPrecondition,
        "A requires B",
    );
    refused(
        co.create_release(release("T9", vec![])).await,
        Code::InvalidArgument,
        "components",
    );
    refused(
        co.create_release(release("bad id", vec![component("B", "1")]))
            .await,
        Code::InvalidArgument,
        "id",
    );
    refused(
        co.create_release(release("T1", vec![component("B", "other")]))
            .await,
        Code::AlreadyExists,
        "id",
    );
    let mut negative = release("T9", vec![component("B", "T9B")]);
    negative.prepare_timeout = Some(wkt::Duration {
        seconds: -5,
        nanos: 0,
    });
    refused(
        co.create_release(negative).await,
        Code::InvalidArgument,
        "prepare_timeout",
    );
    let mut huge = release("T9", vec![component("B", "T9B")]);
    huge.components[0].artifact = "x".repeat(5 * 1024 * 1024);
    refused(
        co.create_release(huge).await,
        Code::ResourceExhausted,
        "too large",
    );
    let mut long = release("T9", vec![component("B", "T9B")]);
    long.components[0].artifact = "x".repeat(10_000);
    refused(
        co.create_release(long).await,
        Code::InvalidArgument,
        "components[0].artifact",
    );

    let revert = |id: &str| pb::RevertReleaseRequest {
        release_id: id.into(),
        ..Default::default()
    };
    refused(
        co.revert_release(revert("")).await,
        Code::InvalidArgument,
        "release_id",
    );
    refused(
        co.revert_release(revert("T404")).await,
        Code::NotFound,
        "release_id",
    );
    refused(
        co.revert_release(revert("T1")).await,
        Code::FailedPrecondition,
        "release_id",
    );
    refused(
        co.rollback(pb::RollbackRequest {
            revision: 42,
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "revision",
    );
    refused(
        co.get_release(pb::GetReleaseRequest { id: String::new() })
            .await,
        Code::InvalidArgument,
        "id",
    );
    refused(
        co.get_release(pb::GetReleaseRequest { id: "T404".into() })
            .await,
        Code::NotFound,
        "id",
    );
    refused(
        co.list_releases(pb::ListReleasesRequest {
            limit: 5000,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "limit",
    );
    refused(
        co.list_releases(pb::ListReleasesRequest {
            page_token: "T1".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    );
    refused(
        co.abort_release(pb::AbortReleaseRequest {
            id: "T404".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "id",
    );
    refused(
        co.abort_release(pb::AbortReleaseRequest {
            id: "T1".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "id",
    );
    refused(
        co.watch_events(pb::WatchEventsRequest {
            until_terminal: true,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "until_terminal",
    );
    refused(
        co.watch_events(pb::WatchEventsRequest {
            transaction_id: "T404".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "T404",
    );
    refused(
        co.get_live_state(pb::GetLiveStateRequest {
            environment: " ".into(),
            observe: true,
        })
        .await,
        Code::InvalidArgument,
        "environment",
    );
    refused(
        co.get_history(pb::GetHistoryRequest {
            environment: "x y".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "environment",
    );
    refused(
        co.get_decision(pb::GetDecisionRequest::default()).await,
        Code::InvalidArgument,
        "transaction_id",
    );
    let unknown = co
        .get_decision(pb::GetDecisionRequest {
            transaction_id: "T404".into(),
            project: "A".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        unknown.into_inner().decision,
        pb::Decision::Abort as i32,
        "unknown means presumed abort"
    );

    assert_eq!(c.last_seq().await, head, "nothing was written to the log");
    assert_eq!(c.cli(&["history", "-o", "json"]).await.stdout, history);
    let projects = co
        .list_projects(pb::ListProjectsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .projects;
    assert_eq!(
        projects.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["A", "B", "C"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_participant_rpc_refuses_bad_input_and_stages_nothing() {
    let c = Cluster::family().await;
    let mut a = c.agent("A").client().await;
    let prepare = |tx: &str, project: &str, version: &str| pb::PrepareRequest {
        transaction_id: tx.into(),
        project: project.into(),
        version: version.into(),
        ..Default::default()
    };
    refused(
        a.prepare(prepare("", "A", "1")).await,
        Code::InvalidArgument,
        "transaction_id",
    );
    refused(
        a.prepare(prepare("T9", "A", "a/b")).await,
        Code::InvalidArgument,
        "version",
    );
    refused(
        a.prepare(prepare("T9", "", "1")).await,
        Code::InvalidArgument,
        "project",
    );
    let mut huge = prepare("T9", "A", "1");
    huge.artifact = "x".repeat(5 * 1024 * 1024);
    refused(a.prepare(huge).await, Code::ResourceExhausted, "too large");
    let wrong = a
        .prepare(prepare("T9", "B", "1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wrong.vote, pb::Vote::Refused as i32);
    assert!(
        wrong.reason.contains("serves project A, not B"),
        "{}",
        wrong.reason
    );
    refused(
        a.commit(pb::CommitRequest {
            transaction_id: "T8".into(),
            project: "A".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "never prepared",
    );
    refused(
        a.commit(pb::CommitRequest {
            transaction_id: "T8".into(),
            project: "B".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "project",
    );
    refused(
        a.abort(pb::AbortRequest {
            transaction_id: String::new(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "transaction_id",
    );

    assert_eq!(
        c.agent("A").releases(),
        Vec::<String>::new(),
        "nothing staged"
    );
    assert_eq!(c.agent("A").live(), None);
}

/// Defect 6 of issue 25: `lockstep … | head` panicked ("failed printing to stdout:
/// Broken pipe"). Given a reader that closes its end before the CLI writes, when the
/// CLI prints, then it ends quietly: no panic, no message, not exit code 101.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_pipe_ends_the_cli_quietly() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    for args in [&["project", "list"][..], &["history", "-o", "json"]] {
        let mut child = tokio::process::Command::new(support::bin("lockstep"))
            .args(args)
            .env("LOCKSTEP_COORDINATOR", c.coordinator.url())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "lockstep {args:?}: {stderr}"
        );
        assert_ne!(out.status.code(), Some(101), "lockstep {args:?} panicked");
    }
}

/// Review finding of stop 53: an empty value (`--artifact A=$BUILD` with `BUILD`
/// unset) meant "no artifact", and A went live as an empty version; an empty version
/// (`A=`) was refused by the coordinator naming another component's index. Both are
/// refused by the CLI now, naming the argument, with the usage code, and nothing is
/// created.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_component_or_artifact_is_refused_by_name() {
    let c = Cluster::family().await;
    for (args, named) in [
        (
            &["release", "create", "E1", "B=1.0", "--artifact", "B="][..],
            "--artifact \"B=\"",
        ),
        (
            &["release", "create", "E2", "C=3.0", "B="][..],
            "component \"B=\"",
        ),
    ] {
        let out = c.cli(args).await;
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr.contains(named) && out.stderr.contains("empty"),
            "{out:?}"
        );
    }
    let listed = c.cli(&["release", "list", "-o", "json"]).await;
    assert!(
        !listed.stdout.contains("\"E1\"") && !listed.stdout.contains("\"E2\""),
        "{listed:?}"
    );
}

/// Review findings of stop 53: `rollback 0` and `promote --checkpoint 0` meant "the
/// default" (the checkpoint before, the newest verified) instead of being refused;
/// `-e ""` meant the default environment; `--meta A=k=1 --meta A=k=2` kept the last.
/// Given two releases, each is now a usage error naming what is wrong, and no
/// transaction starts.
#[tokio::test(flavor = "multi_thread")]
async fn a_revision_0_an_empty_environment_or_a_key_given_twice_is_a_usage_error() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    c.release("T2", &["B=T2B"], 0).await;
    let cases: [(&[&str], &str); 12] = [
        // Review finding of stop 59: a validity past the calendar panicked (exit 101).
        (
            &[
                "certs",
                "init",
                "/nonexistent/certs",
                "--valid-for",
                "8000y",
            ],
            "--valid-for",
        ),
        (&["rollback", "0"], "0"),
        // Review findings of stop 59: `--release "$REL"` with REL unset promoted the
        // whole newest checkpoint; an empty item of `--after` sent no upstreams (cutting
        // an environment off its path), of `--events` subscribed to every event, and an
        // empty `--env` or `--project` of a subscription meant all of them.
        (
            &[
                "promote",
                "--from",
                "default",
                "--to",
                "prod",
                "--release",
                "",
            ],
            "--release",
        ),
        (&["env", "add", "prod", "--after", ""], "--after"),
        (&["env", "add", "prod", "--after", "default,"], "--after"),
        (
            &[
                "notify",
                "add",
                "h",
                "--url",
                "http://127.0.0.1:9/",
                "--events",
                "",
            ],
            "--events",
        ),
        (
            &[
                "notify",
                "add",
                "h",
                "--url",
                "http://127.0.0.1:9/",
                "--project",
                "",
            ],
            "--project",
        ),
        (
            &[
                "promote",
                "--from",
                "default",
                "--to",
                "prod",
                "--checkpoint",
                "0",
            ],
            "0",
        ),
        (
            &["-e", "", "release", "create", "E1", "B=3.0"],
            "environment",
        ),
        // Review finding of stop 57: an unset `$RELEASE_ID` made the coordinator choose
        // an id, so a retry after a lost answer started a second release.
        (&["release", "create", "", "B=3.0"], "<ID>"),
        (&["revert", "T2", "--id", ""], "--id"),
        (
            &[
                "release", "create", "E2", "D=1", "--meta", "D=k=1", "--meta", "D=k=2",
            ],
            "twice",
        ),
    ];
    for (args, named) in cases {
        let out = c.cli(args).await;
        assert_eq!(out.code, 2, "lockstep {args:?}: {out:?}");
        assert!(out.stderr.contains(named), "lockstep {args:?}: {out:?}");
    }
    let listed = c.cli(&["release", "list", "-o", "json"]).await.json();
    let ids: Vec<&str> = listed["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["T2", "T1"], "nothing else started");
}

/// Review finding of stop 51: the ids of the coordinator's own transactions are known
/// in advance (the revert after a failed live check, `auto-revert-<release>` since
/// stop 52; `promote-<from>-<checkpoint>-to-<to>`), and a caller who took one first
/// made the automatic revert or promotion refused as ALREADY_EXISTS, leaving a failed
/// release live. Given T1 and T2 committed, when a release, a revert, a rollback or a
/// promotion asks for an id beginning with `auto-` or `promote-`, then it is refused
/// by field and nothing is written; a revert without an id still gets `revert-T2`.
#[tokio::test(flavor = "multi_thread")]
async fn the_ids_of_automatic_transactions_cannot_be_taken_first() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    c.release("T2", &["C=T2C"], 0).await;
    let head = c.last_seq().await;
    let mut co = c.client().await;
    refused(
        co.create_release(release("auto-revert-T1", vec![component("B", "x")]))
            .await,
        Code::InvalidArgument,
        "id: \"auto-revert-T1\"",
    );
    let revert = pb::RevertReleaseRequest {
        id: "auto-revert-T1".into(),
        release_id: "T1".into(),
        ..Default::default()
    };
    refused(
        co.revert_release(revert).await,
        Code::InvalidArgument,
        "id:",
    );
    let rollback = pb::RollbackRequest {
        id: "promote-default-1-to-production".into(),
        revision: 1,
        ..Default::default()
    };
    refused(co.rollback(rollback).await, Code::InvalidArgument, "id:");
    let promote = pb::PromoteRequest {
        id: "promote-default-1-to-production".into(),
        from: "default".into(),
        to: "production".into(),
        ..Default::default()
    };
    refused(co.promote(promote).await, Code::InvalidArgument, "id:");
    assert_eq!(c.last_seq().await, head, "nothing written");

    let out = c.cli(&["revert", "T2", "--wait", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["id"], "revert-T2");
}

/// Defect 5 of issue 25: a release id near the 64-byte limit made `lockstep revert ID`
/// (no `--id`) fail naming a field the caller never gave. Given a committed release
/// with a 60-character id, when it is reverted without `--id`, then the revert's
/// derived id fits and the revert commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_with_an_id_near_the_limit_is_reverted_under_a_derived_id_that_fits() {
    let c = Cluster::family().await;
    c.release("T1", &["A=T1A", "B=T1B", "C=T1C"], 0).await;
    let long = format!("release-{}", "x".repeat(52));
    assert_eq!(long.len(), 60);
    c.release(&long, &["A=T2A", "B=T2B", "C=T2C"], 0).await;

    let out = c.cli(&["revert", &long, "--wait", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let shown: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let id = shown["id"].as_str().unwrap();
    assert!(id.len() <= 64 && id.starts_with("revert-"), "{id}");
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")]),
        "back at T1"
    );
}

/// Issue 31: `--commit-delay` holds every synced step of every release under load, so a
/// value past a second is a typo, not a setting: the coordinator refuses to start,
/// naming the flag and the limit, and creates no data directory.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_delay_over_a_second_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = tokio::process::Command::new(support::bin("lockstep-coordinator"))
        .args([
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--commit-delay",
            "5s",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--commit-delay") && stderr.contains("longest allowed, 1s"),
        "{stderr}"
    );
    assert!(!data.exists(), "nothing written");
}

/// Review finding of stop 53: a file the command reads that is missing is a usage
/// error (exit 2, naming the flag), whether or not the coordinator is up. With the
/// coordinator down, `env apply -f missing` exited 3 (unreachable): the CLI connected
/// before it read the file, so the user was sent to look at the wrong problem.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_input_file_is_a_usage_error_with_the_coordinator_down() {
    // A port that was free a moment ago: nothing listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let missing = "/nonexistent/lockstep-input";
    let cases: [(&[&str], &str); 2] = [
        (
            &["env", "apply", "-f", missing],
            "-f /nonexistent/lockstep-input",
        ),
        (
            &[
                "notify",
                "add",
                "hook",
                "--url",
                "http://127.0.0.1:9/x",
                "--secret-file",
                missing,
            ],
            "--secret-file /nonexistent/lockstep-input",
        ),
    ];
    for (args, named) in cases {
        let out = tokio::process::Command::new(support::bin("lockstep"))
            .args(["--coordinator", &down])
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "lockstep {args:?}: {stderr}");
        assert!(stderr.contains(named), "lockstep {args:?}: {stderr}");
    }
}

/// Review of stop 62: a path that is not UTF-8 (Unix allows any bytes but `/` and NUL)
/// made the CLI panic (exit 101) before it said anything: the name of its trace span
/// was read with `std::env::args()`. Given a missing `--ca` whose name is not UTF-8,
/// the CLI answers a usage error naming the file, as for any missing `--ca`.
#[tokio::test(flavor = "multi_thread")]
async fn a_path_that_is_not_utf8_is_named_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("https://{}", free.local_addr().unwrap());
    drop(free);
    let ca = std::ffi::OsStr::from_bytes(b"/nonexistent/ca-\xff.pem");
    let out = tokio::process::Command::new(support::bin("lockstep"))
        .args(["--coordinator", &down, "--ca"])
        .arg(ca)
        .arg("live")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca-"), "{stderr}");
    assert!(stderr.contains("cannot read certificates"), "{stderr}");
}

/// Review findings of stop 59: every connection failure read "transport error", whether
/// the port was closed or the certificate untrusted, and a coordinator given without
/// its scheme (`127.0.0.1:7700`) was "unreachable" (exit 3). Given no coordinator on a
/// port, the message says why it could not connect; given no scheme, the usage code
/// names `--coordinator` and what to give.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_failure_says_why_and_a_missing_scheme_is_a_usage_error() {
    let port = support::free_port();
    let run = |coordinator: String| async move {
        let out = tokio::process::Command::new(support::bin("lockstep"))
            .args(["--coordinator", &coordinator, "live"])
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(format!("http://127.0.0.1:{port}")).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("refused"), "says why: {stderr}");
    let (code, stderr) = run(format!("127.0.0.1:{port}")).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--coordinator") && stderr.contains("http://"),
        "{stderr}"
    );
}

/// Found at stop 56: with `-o json` a failed command printed nothing on stdout, so a CI
/// job piping it to `jq` read empty input and could not tell "not found" from "not
/// allowed" from "unreachable" but by the exit code. Given a running coordinator, when
/// a release that does not exist is shown, a malformed request is sent, and a
/// coordinator that is down is asked, then each prints one JSON object on stdout naming
/// the gRPC code, the message and the exit code, which matches the process's, and the
/// stderr line stays as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_failure_with_json_output_prints_a_json_error_on_stdout() {
    let c = Cluster::family().await;
    let cases: [(&[&str], i32, &str, &str); 2] = [
        (
            &["release", "get", "NOPE", "-o", "json"],
            1,
            "NOT_FOUND",
            "NOPE",
        ),
        (
            &[
                "release",
                "create",
                "R1",
                "B=1.0",
                "--timeout",
                "0s",
                "-o",
                "json",
            ],
            2,
            "INVALID_ARGUMENT",
            "prepare_timeout",
        ),
    ];
    for (args, exit, code, named) in cases {
        let out = c.cli(args).await;
        assert_eq!(out.code, exit, "{out:?}");
        let error = out.json();
        assert_eq!(error["code"], code, "{out:?}");
        assert_eq!(error["exitCode"], exit, "{out:?}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(named), "{out:?}");
        assert!(out.stderr.contains(message), "{out:?}");
    }
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let out = tokio::process::Command::new(support::bin("lockstep"))
        .args(["--coordinator", &down, "release", "list", "-o", "json"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let error: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"));
    assert_eq!(error["code"], "UNAVAILABLE", "{error}");
    assert_eq!(error["exitCode"], 3, "{error}");
}

/// Carried from stop 59's review: a bad `--hosts` was found after the CA and the first
/// certificates were on disk, and `-o json` printed text. Given a host that is no DNS
/// name, nothing is written; given good names, the JSON answer names what was made.
#[test]
fn certs_init_checks_every_name_first_and_answers_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs = certs.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut lockstep = std::process::Command::new(support::bin("lockstep"));
        lockstep.args(args).output().unwrap()
    };

    let bad = run(&["certs", "init", certs, "--hosts", "hôst"]);

    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        !std::path::Path::new(certs).exists(),
        "files were written before the names were checked"
    );
    let good = run(&["certs", "init", certs, "--agents", "A", "-o", "json"]);
    assert!(good.status.success(), "{good:?}");
    let json: serde_json::Value = serde_json::from_slice(&good.stdout).unwrap();
    let made = serde_json::json!(["coordinator.crt", "agent-default-A.crt", "user-admin.crt"]);
    assert_eq!(json["certificates"], made, "{json}");
    assert_eq!(json["ca"]["reused"], false, "{json}");
}
