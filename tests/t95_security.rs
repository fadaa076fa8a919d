//! Only who may: mutual TLS between every process, roles per environment and project,
//! tokens that expire and can be revoked, and who did what in the log. Every test runs
//! the real binaries with certificates from `lockstep certs init`, over real TLS
//! handshakes.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;

use lockstep::pb;
use support::{
    Cli, Server, bin, grpcurl,
    secure::{As, Secure, admin, certs_init, with_token},
    wait_for,
};
use tonic::Code;

fn versions(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, Option<String>> {
    support::Cluster::expect(pairs)
}

/// `release create ID P=V... --artifact ... --wait` as `who`.
async fn release(s: &Secure, who: &As, id: &str, projects: &[&str], extra: &[&str]) -> Cli {
    let mut args: Vec<String> = vec!["release".into(), "create".into(), id.into()];
    for p in projects {
        args.push(format!("{p}={id}{p}"));
        args.push("--artifact".into());
        args.push(s.artifact(p, &format!("{id}{p}")));
    }
    args.extend(extra.iter().map(|e| e.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.cli(who, &args).await
}

/// Transaction `id` as `release get -o json` shows it to an admin (it exits 1 for an
/// aborted transaction, and prints it all the same).
async fn get(s: &Secure, id: &str) -> serde_json::Value {
    let out = s.cli(&admin(), &["release", "get", id, "-o", "json"]).await;
    assert!(out.code == 0 || out.code == 1, "{out:?}");
    out.json()
}

/// Transaction `id` once it has ended (committed or aborted).
async fn ended(s: &Secure, id: &str) -> serde_json::Value {
    wait_for(&format!("{id} to end"), || async {
        let t = get(s, id).await;
        let state = t["state"].as_str().unwrap_or_default().to_string();
        (state == "TRANSACTION_STATE_ABORTED" || state == "TRANSACTION_STATE_COMMITTED")
            .then_some(t)
    })
    .await
}

fn refused(out: &Cli, code: &str) {
    assert_eq!(out.code, 4, "not allowed is exit 4: {out:?}");
    assert!(out.stderr.contains(code), "{code}: {out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abort_from_anyone_but_the_coordinator_is_refused_and_the_release_commits_everywhere() {
    let s = Secure::start(&["A", "B", "C"], &[]).await;
    s.block("B");
    let attack = async {
        let mut a = s
            .agent_client("A", Some(("user-admin.crt", "user-admin.key")))
            .await;
        wait_for("A to vote PREPARED on T1", || {
            let mut a = a.clone();
            async move {
                let status = a.get_status(pb::GetStatusRequest {}).await.ok()?;
                let staged = status.into_inner().staged;
                staged
                    .iter()
                    .any(|t| t.transaction_id == "T1")
                    .then_some(())
            }
        })
        .await;
        let abort = pb::AbortRequest {
            transaction_id: "T1".into(),
            project: "A".into(),
            ..Default::default()
        };
        let attackers = [
            (None, Code::Unauthenticated),
            (
                Some(("user-admin.crt", "user-admin.key")),
                Code::PermissionDenied,
            ),
            (
                Some(("agent-default-B.crt", "agent-default-B.key")),
                Code::PermissionDenied,
            ),
        ];
        for (identity, code) in attackers {
            let mut client = s.agent_client("A", identity).await;
            let answer = client.abort(abort.clone()).await;
            assert_eq!(answer.unwrap_err().code(), code, "{identity:?}");
        }
        let refused = a.abort(abort.clone()).await.unwrap_err();
        assert!(
            refused.message().contains("spiffe://lockstep/coordinator"),
            "names who orders come from: {refused:?}"
        );
        s.heal("B");
    };
    let admin = admin();
    let (out, ()) = tokio::join!(
        release(&s, &admin, "T1", &["A", "B", "C"], &["--wait"]),
        attack
    );

    assert_eq!(out.code, 0, "T1 commits: {out:?}");
    assert_eq!(
        s.live(),
        versions(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_without_a_trusted_credential_are_unauthenticated_and_change_nothing() {
    let s = Secure::start(&["A"], &[]).await;
    let other = s.dir.path().join("other-ca");
    certs_init(&other, "A", "mallory").await;
    let foreign = As::Files(
        other.join("user-mallory.crt"),
        other.join("user-mallory.key"),
    );
    let (short_id, short) = s.token(&["--role", "releaser", "--ttl", "1s"]).await;
    let (revoked_id, revoked) = s.token(&["--role", "releaser", "--ttl", "1h"]).await;
    assert_eq!(
        s.cli(&As::Token(revoked.clone()), &["live"]).await.code,
        0,
        "a fresh token works"
    );
    let out = s.cli(&admin(), &["token", "revoke", &revoked_id]).await;
    assert_eq!(out.code, 0, "{out:?}");

    refused(&s.cli(&As::Nobody, &["live"]).await, "Unauthenticated");
    let out = release(&s, &foreign, "X1", &["A"], &[]).await;
    refused(&out, "Unauthenticated");
    assert!(
        out.stderr.contains("client certificate not accepted"),
        "{out:?}"
    );
    let out = release(&s, &As::Token(revoked), "X2", &["A"], &[]).await;
    refused(&out, "Unauthenticated");
    assert!(
        out.stderr
            .contains(&format!("token {revoked_id} was revoked")),
        "{out:?}"
    );
    wait_for("the 1s token to expire", || async {
        let out = s.cli(&As::Token(short.clone()), &["live"]).await;
        (out.code == 4).then_some(())
    })
    .await;
    let expired = release(&s, &As::Token(short), "X3", &["A"], &[]).await;
    refused(&expired, "Unauthenticated");
    assert!(
        expired
            .stderr
            .contains(&format!("token {short_id} expired")),
        "{expired:?}"
    );

    let list = s.cli(&admin(), &["release", "list", "-o", "json"]).await;
    assert_eq!(list.code, 0, "{list:?}");
    assert_eq!(
        list.json()["transactions"].as_array().map_or(0, Vec::len),
        0,
        "nothing was created: {list:?}"
    );
    assert_eq!(s.live(), versions(&[("A", "")]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_releaser_releases_its_projects_only_and_operators_alone_steer() {
    let s = Secure::start(&["A", "B", "C"], &[]).await;
    let (_, releaser) = s
        .token(&[
            "--role",
            "releaser",
            "--env",
            "default",
            "--project",
            "B,C",
            "--subject",
            "ci-bc",
        ])
        .await;
    let (_, viewer) = s
        .token(&["--role", "viewer", "--subject", "dashboard"])
        .await;
    let (_, operator) = s
        .token(&["--role", "operator", "--subject", "oncall"])
        .await;
    let (releaser, viewer, operator) =
        (As::Token(releaser), As::Token(viewer), As::Token(operator));

    let out = release(&s, &releaser, "R1", &["B", "C"], &["--wait"]).await;
    assert_eq!(out.code, 0, "inside its scope: {out:?}");
    let out = release(&s, &releaser, "R2", &["A", "B"], &["--wait"]).await;
    refused(&out, "PermissionDenied");
    for named in ["permission release", "projects A,B", "ci-bc"] {
        assert!(
            out.stderr.contains(named),
            "the refusal names {named}: {out:?}"
        );
    }
    refused(
        &release(&s, &releaser, "R3", &["B"], &["--force"]).await,
        "permission operate",
    );

    let get = s.cli(&viewer, &["release", "get", "R1"]).await;
    assert_eq!(get.code, 0, "a viewer reads: {get:?}");
    assert!(get.stdout.contains("created by ci-bc"), "{get:?}");
    assert_eq!(s.cli(&viewer, &["history"]).await.code, 0);
    refused(
        &release(&s, &viewer, "V1", &["B"], &[]).await,
        "permission release",
    );

    s.block("C");
    let out = release(&s, &releaser, "R4", &["C"], &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    refused(
        &s.cli(&releaser, &["release", "abort", "R4"]).await,
        "permission operate",
    );
    let resolve = [
        "resolve",
        "R4",
        "--participant",
        "C",
        "--as",
        "aborted",
        "--reason",
        "x",
    ];
    refused(&s.cli(&releaser, &resolve).await, "permission operate");
    let out = s
        .cli(
            &operator,
            &["release", "abort", "R4", "--reason", "wrong build"],
        )
        .await;
    assert_eq!(out.code, 0, "an operator aborts: {out:?}");
    s.heal("C");

    let audit = s.cli(&admin(), &["audit", "-o", "json"]).await;
    assert_eq!(audit.code, 0, "{audit:?}");
    let events = audit.json()["events"].as_array().unwrap().clone();
    let by = |kind: &str, actor: &str| {
        events.iter().any(|e| {
            e["kind"] == kind && e["actor"].as_str().unwrap_or_default().starts_with(actor)
        })
    };
    assert!(by("EVENT_KIND_TRANSACTION_CREATED", "ci-bc"), "{events:#?}");
    assert!(by("EVENT_KIND_ACCESS_DENIED", "ci-bc"), "{events:#?}");
    assert!(by("EVENT_KIND_ACCESS_DENIED", "dashboard"), "{events:#?}");
    assert!(
        by("EVENT_KIND_DECIDED_ABORT", "oncall"),
        "the abort names the operator: {events:#?}"
    );
    assert!(by("EVENT_KIND_TOKEN_CREATED", "user/admin"), "{events:#?}");
    refused(&s.cli(&viewer, &["audit"]).await, "permission operate");
    assert_eq!(s.live(), versions(&[("A", ""), ("B", "R1B"), ("C", "R1C")]));
}

/// Issue 26, defects 1 and 2: an operator for project A only acts on A, never on the
/// whole of an environment or on everything (verify steps, webhooks), and an admin for
/// A makes tokens for A only, and for herself only. Each refusal writes nothing but its
/// audit event.
#[tokio::test(flavor = "multi_thread")]
async fn grants_scoped_to_a_project_never_reach_the_whole_environment_or_widen() {
    let s = Secure::start(&["A", "B"], &[]).await;
    let (_, bob) = s
        .token(&["--role", "operator", "--project", "A", "--subject", "bob"])
        .await;
    let (_, carla) = s
        .token(&["--role", "admin", "--project", "A", "--subject", "carla"])
        .await;
    let (bob, carla) = (As::Token(bob), As::Token(carla));
    let pipeline = s.dir.path().join("pipeline.toml");
    std::fs::write(&pipeline, "[[environment]]\nname = \"default\"\n").unwrap();
    let apply = ["env", "apply", "-f", pipeline.to_str().unwrap()];
    refused(&s.cli(&bob, &apply).await, "PermissionDenied");
    let hook = ["notify", "add", "all", "--url", "http://127.0.0.1:9/x"];
    refused(&s.cli(&bob, &hook).await, "PermissionDenied");
    refused(&s.cli(&carla, &hook).await, "PermissionDenied");
    refused(&s.cli(&bob, &["audit"]).await, "PermissionDenied");
    let wide = ["token", "create", "--role", "admin", "--subject", "mallory"];
    refused(&s.cli(&carla, &wide).await, "PermissionDenied");
    let other = ["token", "create", "--role", "viewer", "--project", "B"];
    refused(&s.cli(&carla, &other).await, "PermissionDenied");
    let within = ["token", "create", "--role", "releaser", "--project", "A"];
    let made = s.cli(&carla, &within).await;
    assert_eq!(made.code, 0, "within its own grant: {made:?}");
    // A token's subject is a person to the four-eyes rule: carla, admin for A, could
    // approve her own release as "dave". Only an admin over everything names others.
    let for_dave = [
        "token",
        "create",
        "--role",
        "operator",
        "--project",
        "A",
        "--subject",
        "dave",
    ];
    refused(&s.cli(&carla, &for_dave).await, "PermissionDenied");
    let for_herself = [
        "token",
        "create",
        "--role",
        "operator",
        "--project",
        "A",
        "--subject",
        "carla",
    ];
    let made = s.cli(&carla, &for_herself).await;
    assert_eq!(made.code, 0, "a token for herself: {made:?}");

    let list = s.cli(&admin(), &["notify", "list", "-o", "json"]).await;
    assert_eq!(list.code, 0, "{list:?}");
    assert!(
        !list.stdout.contains("\"all\""),
        "no subscription was added: {list:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_may_ask_the_decision_for_its_own_part_only() {
    let s = Secure::start(&["A", "B"], &[]).await;
    let out = release(&s, &admin(), "T1", &["A", "B"], &["--wait"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let mut b = s
        .coordinator_client(("agent-default-B.crt", "agent-default-B.key"))
        .await;
    let ask = |project: &str| pb::GetDecisionRequest {
        transaction_id: "T1".into(),
        project: project.into(),
        ..Default::default()
    };

    let own = b.get_decision(ask("B")).await.unwrap().into_inner();
    let other = b.get_decision(ask("A")).await.unwrap_err();

    assert_eq!(own.decision, pb::Decision::Commit as i32);
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    assert!(other.message().contains("own part"), "{other:?}");
    let releases = b.list_releases(pb::ListReleasesRequest::default()).await;
    assert_eq!(
        releases.unwrap_err().code(),
        Code::PermissionDenied,
        "an agent reads nothing else"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_artifact_outside_every_artifact_root_is_refused_by_the_agent() {
    let s = Secure::start(&["A"], &[]).await;
    let elsewhere = s.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("secret"), "not a build").unwrap();
    let artifact = format!("A={}", elsewhere.display());

    let out = s
        .cli(
            &admin(),
            &[
                "release",
                "create",
                "T1",
                "A=T1A",
                "--artifact",
                &artifact,
                "--wait",
            ],
        )
        .await;

    assert_eq!(out.code, 1, "a refused vote aborts: {out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("outside every --artifact-root"), "{out:?}");
    assert!(
        text.contains(&elsewhere.display().to_string()),
        "names the path: {out:?}"
    );
    assert_eq!(s.live(), versions(&[("A", "")]));
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_services_and_reads_the_live_state_with_the_dev_certificates() {
    let s = Secure::start(&["A"], &[]).await;
    let file = |name: &str| s.certs.join(name);
    let grpcurl = |rest: &[&str]| {
        let mut c = std::process::Command::new(grpcurl());
        c.arg("-cacert").arg(file("ca.crt"));
        c.arg("-cert")
            .arg(file("user-admin.crt"))
            .arg("-key")
            .arg(file("user-admin.key"));
        c.arg(s.coordinator.addr.to_string()).args(rest);
        c.output().unwrap()
    };

    let list = grpcurl(&["list"]);
    let live = grpcurl(&["lockstep.v1.Coordinator/GetLiveState"]);

    assert!(list.status.success(), "{list:?}");
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("lockstep.v1.Coordinator"),
        "{list:?}"
    );
    assert!(live.status.success(), "{live:?}");
    assert!(
        String::from_utf8_lossy(&live.stdout).contains("\"environment\": \"default\""),
        "{live:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_reread_on_sighup_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, live) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("tls"),
    );
    certs_init(&old, "A", "admin").await;
    certs_init(&new, "A", "admin").await;
    std::fs::create_dir_all(&live).unwrap();
    let install = |from: &PathBuf| {
        for f in ["coordinator.crt", "coordinator.key", "ca.crt"] {
            std::fs::copy(from.join(f), live.join(f)).unwrap();
        }
    };
    install(&old);
    let arg = |f: &str| live.join(f).display().to_string();
    let args = vec![
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--tls-cert".into(),
        arg("coordinator.crt"),
        "--tls-key".into(),
        arg("coordinator.key"),
        "--tls-client-ca".into(),
        arg("ca.crt"),
    ];
    let log = dir.path().join("coordinator.log");
    let coordinator = Server::start(
        "coordinator",
        bin("lockstep-coordinator"),
        args,
        Vec::new(),
        log,
        0,
    )
    .await;
    let as_admin_of = |ca: &PathBuf| {
        let ca = ca.clone();
        let url = coordinator.https_url();
        async move {
            let out = tokio::process::Command::new(bin("lockstep"))
                .arg("--ca")
                .arg(ca.join("ca.crt"))
                .arg("--cert")
                .arg(ca.join("user-admin.crt"))
                .arg("--key")
                .arg(ca.join("user-admin.key"))
                .args(["--coordinator", &url, "live"])
                .output()
                .await
                .unwrap();
            out.status.code()
        }
    };
    assert_eq!(as_admin_of(&old).await, Some(0));
    assert_ne!(
        as_admin_of(&new).await,
        Some(0),
        "the new CA is not trusted yet"
    );

    install(&new);
    coordinator.hangup();

    wait_for("the new certificates to be used", || async {
        (as_admin_of(&new).await == Some(0)).then_some(())
    })
    .await;
    assert_ne!(
        as_admin_of(&old).await,
        Some(0),
        "the old CA is trusted no more"
    );
    assert!(
        coordinator.log().contains("SIGHUP: certificates re-read"),
        "{}",
        coordinator.log()
    );
}

/// Issue 26, defect 5: a principal in a loop of refused calls cannot grow the log
/// without end: its refusals are written at most ten a minute (every call is still
/// refused), another principal's are written as before, and the first one written after
/// the minute says how many were not.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_of_one_principal_are_written_at_most_ten_a_minute_then_counted() {
    let s = Secure::start(&[], &[]).await;
    let hook = ["notify", "add", "all", "--url", "http://127.0.0.1:9/x"];
    let bob = As::User("bob".into());
    for _ in 0..25 {
        refused(&s.cli(&bob, &hook).await, "PermissionDenied");
    }
    for _ in 0..3 {
        refused(
            &s.cli(&As::User("alice".into()), &hook).await,
            "PermissionDenied",
        );
    }
    let denied = |actor: &'static str| {
        let s = &s;
        async move {
            let audit = s.cli(&admin(), &["audit", "-o", "json"]).await;
            assert_eq!(audit.code, 0, "{audit:?}");
            let events = audit.json()["events"].as_array().unwrap().clone();
            let of = |e: &&serde_json::Value| {
                e["kind"] == "EVENT_KIND_ACCESS_DENIED" && e["actor"] == actor
            };
            let messages = events.iter().filter(of);
            messages
                .map(|e| e["message"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(denied("user/bob").await.len(), 10, "at most ten a minute");
    assert_eq!(
        denied("user/alice").await.len(),
        3,
        "each principal has its own"
    );

    // Past the minute, the next one is written with the count of those that were not.
    let calls = std::sync::atomic::AtomicU64::new(25);
    let counted = support::wait_within(
        "bob's next refusal to be written",
        std::time::Duration::from_secs(90),
        std::time::Duration::from_secs(1),
        || async {
            refused(&s.cli(&bob, &hook).await, "PermissionDenied");
            let made = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let all = denied("user/bob").await;
            (all.len() == 11).then(|| (all[10].clone(), made))
        },
    )
    .await;
    let (message, calls) = counted;
    let count = message
        .split(" more refused calls")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("says how many were not written: {message}"));
    assert_eq!(count, calls - 11, "{message}");
}

/// Issue 26: reads of one environment show a caller its own projects only. Given B1 (of
/// B), AB1 (of A and B) and A1 (of A) committed in `default`, bob (viewer of A only,
/// by certificate or by token) reads A1 and A's versions and events, nothing of B:
/// not B1, not AB1 (it changed B, which `GetRelease` refuses him too), not B's live
/// version; alice (viewer of the whole of `default`) reads everything as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_of_one_project_reads_that_projects_releases_versions_and_events_only() {
    let grants = ["--grant", "bob=viewer/A", "--grant", "alice=viewer@default"];
    let s = Secure::start(&["A", "B"], &grants).await;
    for (id, projects) in [("B1", &["B"][..]), ("AB1", &["A", "B"]), ("A1", &["A"])] {
        let out = release(&s, &admin(), id, projects, &["--wait"]).await;
        assert_eq!(out.code, 0, "{id} commits: {out:?}");
    }
    let mut bob = s.coordinator_client(("user-bob.crt", "user-bob.key")).await;
    let mut alice = s
        .coordinator_client(("user-alice.crt", "user-alice.key"))
        .await;

    assert_eq!(release_ids(&mut bob, "").await, ["A1"]);
    assert_eq!(release_ids(&mut bob, "default").await, ["A1"]);
    assert_eq!(
        release_ids(&mut alice, "default").await,
        ["A1", "AB1", "B1"]
    );
    assert_eq!(live_versions(&mut bob).await, ["A=A1A"]);
    assert_eq!(live_versions(&mut alice).await, ["A=A1A", "B=AB1B"]);
    let (bobs, alices) = (history(&mut bob).await, history(&mut alice).await);
    assert_eq!(
        bobs.len(),
        alices.len(),
        "every checkpoint, A's versions only"
    );
    assert!(
        bobs.iter().flatten().all(|v| v.starts_with("A=")),
        "{bobs:?}"
    );
    assert!(alices.iter().flatten().any(|v| v == "B=B1B"), "{alices:?}");
    assert_eq!(project_names(&mut bob).await, ["A"]);
    assert_eq!(project_names(&mut alice).await, ["A", "B"]);
    let default = || pb::GetEnvironmentRequest {
        name: "default".into(),
    };
    let env = bob.get_environment(default()).await.unwrap().into_inner();
    assert_eq!(env.projects, ["A"]);
    let env = alice.get_environment(default()).await.unwrap().into_inner();
    assert_eq!(env.projects, ["A", "B"]);

    let bobs = events_until_a1_commits(&mut bob).await;
    assert!(bobs.iter().any(|e| e.transaction_id == "A1"), "{bobs:?}");
    let of_b =
        |e: &&pb::Event| e.project == "B" || ["B1", "AB1"].contains(&e.transaction_id.as_str());
    assert_eq!(bobs.iter().find(of_b), None, "bob sees no event of B");
    let alices = events_until_a1_commits(&mut alice).await;
    assert!(
        alices.iter().any(|e| e.transaction_id == "B1"),
        "{alices:?}"
    );

    let (_, token) = s.token(&["--role", "viewer", "--project", "A"]).await;
    let listed = s
        .cli(&As::Token(token), &["release", "list", "-o", "json"])
        .await;
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(listed.stdout.contains("\"A1\""), "{listed:?}");
    assert!(
        !listed.stdout.contains("B1\""),
        "the token sees no B: {listed:?}"
    );
}

type Reader = lockstep::pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

/// The ids ListReleases shows `who` in `environment` ("": every one), newest first.
async fn release_ids(who: &mut Reader, environment: &str) -> Vec<String> {
    let list = pb::ListReleasesRequest {
        environment: environment.into(),
        ..Default::default()
    };
    let list = who.list_releases(list).await.unwrap().into_inner();
    list.transactions.into_iter().map(|t| t.id).collect()
}

fn versions_of(checkpoint: &pb::Checkpoint) -> Vec<String> {
    let each = checkpoint.versions.iter();
    each.map(|v| format!("{}={}", v.project, v.version))
        .collect()
}

/// `project=version` of the live checkpoint of `default`, as `who` sees it.
async fn live_versions(who: &mut Reader) -> Vec<String> {
    let live = who.get_live_state(pb::GetLiveStateRequest::default());
    let live = live.await.unwrap().into_inner();
    versions_of(&live.checkpoint.unwrap())
}

/// Each checkpoint's `project=version`s in `default`, oldest first, as `who` sees them.
async fn history(who: &mut Reader) -> Vec<Vec<String>> {
    let history = who.get_history(pb::GetHistoryRequest::default());
    let history = history.await.unwrap().into_inner();
    history.checkpoints.iter().map(versions_of).collect()
}

async fn project_names(who: &mut Reader) -> Vec<String> {
    let list = who.list_projects(pb::ListProjectsRequest::default());
    let list = list.await.unwrap().into_inner();
    list.projects.into_iter().map(|p| p.name).collect()
}

/// The whole log as `who` watches it, up to A1's commit (the last release, so every
/// event of B1 and AB1 came before it).
async fn events_until_a1_commits(who: &mut Reader) -> Vec<pb::Event> {
    let watch = pb::WatchEventsRequest {
        from_seq: 1,
        ..Default::default()
    };
    let stream = who.watch_events(watch).await.unwrap().into_inner();
    events_until_committed(stream, "A1").await
}

/// The events `stream` delivers up to `id`'s TRANSACTION_COMMITTED.
async fn events_until_committed(
    mut stream: tonic::Streaming<pb::Event>,
    id: &str,
) -> Vec<pb::Event> {
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(support::DEADLINE, stream.message()).await;
        let event = next
            .expect("the commit within the deadline")
            .unwrap()
            .unwrap();
        let committed = event.kind == pb::EventKind::TransactionCommitted as i32;
        let done = committed && event.transaction_id == id;
        seen.push(event);
        if done {
            return seen;
        }
    }
}

/// A viewer's whole-log stream from the first event, with `token`.
async fn stream_with(s: &Secure, token: &str) -> tonic::Streaming<pb::Event> {
    let watch = pb::WatchEventsRequest {
        from_seq: 1,
        ..Default::default()
    };
    let mut client = s.coordinator_over_tls(None).await;
    let watch = client.watch_events(with_token(watch, token));
    watch.await.unwrap().into_inner()
}

/// How `stream` ends (within the deadline), skipping its events.
async fn ending(stream: &mut tonic::Streaming<pb::Event>) -> tonic::Status {
    loop {
        let next = tokio::time::timeout(support::DEADLINE, stream.message()).await;
        match next.expect("the stream ends within the deadline") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => return status,
        }
    }
}

/// Given an admin token that made other tokens (with no subject of its own, so acting
/// as the first one's holder; with its holder's own name as `--subject`; for another
/// person), when the first is revoked, then every one it made is refused too, naming
/// the revoked token: revoking a credential revokes what it handed out. Until stop 64
/// (review finding) a token made with `--subject` outlived its maker's revocation.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_made_by_a_revoked_token_is_refused_too() {
    let s = Secure::start(&["A"], &[]).await;
    let (parent_id, parent) = s.token(&["--role", "admin", "--ttl", "1h"]).await;
    let mut children = Vec::new();
    for subject in [&[][..], &["--subject", "admin"], &["--subject", "dave"]] {
        let create = ["token", "create", "--role", "viewer", "-o", "json"];
        let made = s
            .cli(&As::Token(parent.clone()), &[&create[..], subject].concat())
            .await;
        assert_eq!(made.code, 0, "{made:?}");
        let child = made.json()["token"].as_str().unwrap().to_string();
        assert_eq!(s.cli(&As::Token(child.clone()), &["live"]).await.code, 0);
        children.push(child);
    }

    let out = s.cli(&admin(), &["token", "revoke", &parent_id]).await;
    assert_eq!(out.code, 0, "{out:?}");

    for child in children {
        let out = s.cli(&As::Token(child), &["live"]).await;
        refused(&out, "Unauthenticated");
        let names = out.stderr.contains(&format!("token {parent_id}"));
        assert!(names && out.stderr.contains("revoked"), "{out:?}");
    }
}

/// Review finding of stop 57: a token made by a token expired when its own `--ttl`
/// said, however soon its maker expired, so a one-hour admin token could hand its
/// holder a year. Given an admin token of one hour, when it makes an admin token of 366
/// days, then the new one expires no later than its maker.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_made_by_a_token_expires_no_later_than_its_maker() {
    let s = Secure::start(&["A"], &[]).await;
    let made = s
        .cli(
            &admin(),
            &[
                "token", "create", "--role", "admin", "--ttl", "1h", "-o", "json",
            ],
        )
        .await;
    assert_eq!(made.code, 0, "{made:?}");
    let maker = made.json();
    let child = s
        .cli(
            &As::Token(maker["token"].as_str().unwrap().to_string()),
            &[
                "token", "create", "--role", "admin", "--ttl", "366d", "-o", "json",
            ],
        )
        .await;
    assert_eq!(child.code, 0, "{child:?}");
    let expires = |v: &serde_json::Value| v["expires"].as_str().unwrap().to_string();
    // RFC 3339 in UTC with the same precision: text order is time order.
    assert!(
        expires(&child.json()) <= expires(&maker),
        "the token made expires after its maker: {} > {}",
        expires(&child.json()),
        expires(&maker)
    );
}

/// Review finding of stop 51: a token is checked when a call starts, and an open
/// WatchEvents stream (the console's SSE rides on it) went on delivering after the
/// token was revoked. Given a viewer token following the log, quiet after what it has
/// read, when the token is revoked, then the stream ends with UNAUTHENTICATED naming
/// the token.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_stream_ends_when_its_token_is_revoked() {
    let s = Secure::start(&["A"], &[]).await;
    let (id, token) = s.token(&["--role", "viewer", "--ttl", "1h"]).await;
    let mut stream = stream_with(&s, &token).await;

    let out = s.cli(&admin(), &["token", "revoke", &id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let ended = ending(&mut stream).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains(&id), "{ended:?}");
}

/// Review finding of stop 51: GetDecision without a project was checked against the
/// environment with no project in it, which any grant there covers, so a viewer of
/// project B learned the outcome of any transaction in the environment. Given T1, a
/// release of A only, when a viewer token scoped to B asks T1's decision naming no
/// project, then it is refused; a viewer token of A hears COMMIT.
#[tokio::test(flavor = "multi_thread")]
async fn a_decision_is_told_only_to_who_may_read_the_transaction() {
    let s = Secure::start(&["A", "B"], &[]).await;
    let out = release(&s, &admin(), "T1", &["A"], &["--wait"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let mut client = s.coordinator_over_tls(None).await;
    for (project, allowed) in [("B", false), ("A", true)] {
        let (_, token) = s.token(&["--role", "viewer", "--project", project]).await;
        let ask = pb::GetDecisionRequest {
            transaction_id: "T1".into(),
            ..Default::default()
        };
        let answer = client.get_decision(with_token(ask, &token)).await;
        match allowed {
            true => {
                let decision = answer.unwrap().into_inner().decision;
                assert_eq!(
                    decision,
                    pb::Decision::Commit as i32,
                    "a viewer of {project}"
                );
            }
            false => {
                let refused = answer.unwrap_err();
                assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
            }
        }
    }
}

/// The kinds of the events `stream` delivers up to `id`'s TRANSACTION_COMMITTED.
async fn kinds_until_committed(
    stream: tonic::Streaming<pb::Event>,
    id: &str,
) -> Vec<pb::EventKind> {
    let events = events_until_committed(stream, id).await;
    events.iter().map(pb::Event::kind).collect()
}

/// Review finding of stop 53: a viewer read the audit log through WatchEvents (and
/// the HTTP API's /events and the console's timeline, which ride on it), where
/// ListAudit refuses it: every refusal (who was refused what) and every token made or
/// revoked. Given a token made and a refused write, when a viewer of everything
/// follows the log past a later release, then it hears the release and none of those;
/// an admin hears them.
#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_does_not_read_the_audit_log_through_the_event_log() {
    let s = Secure::start(&["A"], &[]).await;
    let (_, token) = s.token(&["--role", "viewer", "--ttl", "1h"]).await;
    let write = s
        .cli(&As::Token(token.clone()), &["project", "remove", "A"])
        .await;
    refused(&write, "PermissionDenied");
    assert_eq!(
        release(&s, &admin(), "M", &["A"], &["--wait"]).await.code,
        0
    );
    let from_start = || pb::WatchEventsRequest {
        from_seq: 1,
        ..Default::default()
    };

    let heard = kinds_until_committed(stream_with(&s, &token).await, "M").await;
    let audit = [
        pb::EventKind::AccessDenied,
        pb::EventKind::TokenCreated,
        pb::EventKind::TokenRevoked,
    ];
    assert!(!heard.iter().any(|k| audit.contains(k)), "{heard:?}");

    let mut admin = s
        .coordinator_client(("user-admin.crt", "user-admin.key"))
        .await;
    let stream = admin.watch_events(from_start());
    let heard = kinds_until_committed(stream.await.unwrap().into_inner(), "M").await;
    assert!(heard.contains(&pb::EventKind::AccessDenied), "{heard:?}");
    assert!(heard.contains(&pb::EventKind::TokenCreated), "{heard:?}");
}

/// Review finding of stop 53: only a revocation ended an open stream, so a token's
/// WatchEvents (and the console's SSE on it) went on after the token expired. Given a
/// viewer token of a few seconds following the log, when it expires, then the stream
/// ends with UNAUTHENTICATED naming the token.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_stream_ends_when_its_token_expires() {
    let s = Secure::start(&["A"], &[]).await;
    let (id, token) = s.token(&["--role", "viewer", "--ttl", "3s"]).await;
    let mut stream = stream_with(&s, &token).await;
    let ended = ending(&mut stream).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        ended.message().contains(&id) && ended.message().contains("expired"),
        "{ended:?}"
    );
}

/// Review finding of stop 53: `--wait` reconnected only after UNAVAILABLE and gave up
/// at any other error with the coordinator's bare message (an expired token's, or a
/// connection reset's, which exited 1 as if aborted), naming no transaction. Given A's
/// agent holding every Prepare and a releaser token of a few seconds, when `release
/// create --wait` outlives the token, then the CLI says the outcome is unknown here
/// and how to check it, with the not-allowed code, not the aborted one.
#[tokio::test(flavor = "multi_thread")]
async fn a_wait_that_loses_its_credential_says_the_outcome_is_unknown() {
    let s = Secure::start(&["A"], &[]).await;
    let (_, token) = s.token(&["--role", "releaser", "--ttl", "3s"]).await;
    s.block("A");
    let out = release(&s, &As::Token(token), "T1", &["A"], &["--wait"]).await;
    s.heal("A");
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr.contains("its outcome is unknown here")
            && out.stderr.contains("lockstep release get T1"),
        "{out:?}"
    );
}

/// Given a coordinator on mutual TLS, when a pipeline file registers a project at an
/// http:// endpoint (with `--unchecked`, so no agent is asked), then the file is
/// refused naming the endpoint's line and field, and nothing of it is registered. It
/// used to register it (RegisterProject refused the same endpoint), and the project's
/// releases were then refused one by one as unreachable.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_file_on_tls_refuses_a_plaintext_endpoint_and_registers_nothing() {
    let s = Secure::start(&["A"], &[]).await;
    let pipeline = s.dir.path().join("pipeline.toml");
    let text = "[[environment]]\nname = \"default\"\n\n[[environment.project]]\nname = \"C\"\nendpoint = \"http://127.0.0.1:9\"\n";
    std::fs::write(&pipeline, text).unwrap();
    let apply = [
        "env",
        "apply",
        "-f",
        pipeline.to_str().unwrap(),
        "--unchecked",
    ];

    let out = s.cli(&admin(), &apply).await;

    assert_eq!(out.code, 2, "bad input is exit 2: {out:?}");
    let field = "line 6: environment[0].project[0].endpoint";
    assert!(out.stderr.contains(field), "{out:?}");
    assert!(out.stderr.contains("must be https://"), "{out:?}");
    let list = s.cli(&admin(), &["project", "list", "-o", "json"]).await;
    assert_eq!(list.code, 0, "{list:?}");
    assert!(!list.stdout.contains("\"C\""), "C was registered: {list:?}");
}

/// Review finding of stop 57: a revert was checked against the caller's grant only
/// once planned, so the planner's own refusals reached a caller who may not change the
/// release's projects, naming their versions (a revert of a revert: "release it with
/// `release create ID B=2.0 ...`"), which GetRelease hides from that caller. Given a
/// releaser of A only, when it reverts a revert of B, then it is refused as not
/// allowed, naming no version of B.
#[tokio::test(flavor = "multi_thread")]
async fn a_revert_outside_the_grant_is_refused_before_it_is_planned() {
    let s = Secure::start(&["A", "B"], &[]).await;
    for (id, versions) in [("T1", &["A=1.0", "B=1.0"][..]), ("T2", &["B=2.0"][..])] {
        let mut args = vec!["release", "create", id, "--wait"];
        args.extend_from_slice(versions);
        assert_eq!(s.cli(&admin(), &args).await.code, 0);
    }
    let reverted = s
        .cli(&admin(), &["revert", "T2", "--id", "R2", "--wait"])
        .await;
    assert_eq!(reverted.code, 0, "{reverted:?}");
    let (_, token) = s.token(&["--role", "releaser", "--project", "A"]).await;
    let out = s.cli(&As::Token(token), &["revert", "R2"]).await;
    refused(&out, "PermissionDenied");
    assert!(!out.stderr.contains("2.0"), "B's version leaked: {out:?}");
}

/// Review finding of stop 58: a release created through a token and queued behind
/// another went live at its turn even though the token was revoked while it waited,
/// although "a revoked credential acts no more, not even through what it set going"
/// (an automatic promotion acting for it is refused). Given T1 holding B and T2 of B
/// queued by ci's token, when the token is revoked and T1 ends, then T2 is aborted
/// naming the token, and B stays at T1's version.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_queued_by_a_token_revoked_while_it_waits_does_not_go_live() {
    let s = Secure::start(&["A", "B"], &[]).await;
    s.block("B");
    let out = release(&s, &admin(), "T1", &["B"], &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let (token_id, ci) = s.token(&["--role", "releaser", "--subject", "ci"]).await;
    let out = release(&s, &As::Token(ci), "T2", &["B"], &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(get(&s, "T2").await["state"], "TRANSACTION_STATE_PENDING");
    let out = s.cli(&admin(), &["token", "revoke", &token_id]).await;
    assert_eq!(out.code, 0, "{out:?}");

    s.heal("B");
    let t2 = ended(&s, "T2").await;
    assert_eq!(t2["state"], "TRANSACTION_STATE_ABORTED", "{t2}");
    let reason = t2["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&token_id) && reason.contains("revoked"),
        "{t2}"
    );
    assert_eq!(s.live(), versions(&[("A", ""), ("B", "T1B")]));
}

/// Review finding of stop 63: a rollback queued by a releaser scoped to A was planned
/// again at its turn and restored every project of its checkpoint that had changed
/// meanwhile, B included, undoing a release of B by someone else although the caller
/// has no grant on B. Given checkpoint 1 (A, B), checkpoint 2 (A) and T3 of B in
/// flight, when bob (releaser of A) rolls back to 1 (only A changes then: allowed, and
/// queued behind T3, which holds B) and T3 commits, then at its turn the rollback is
/// aborted naming bob and the permission he lacks, and B stays at T3's version.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_queued_by_a_scoped_releaser_never_moves_a_project_beyond_its_grant() {
    let s = Secure::start(&["A", "B"], &[]).await;
    let bob = ["--role", "releaser", "--project", "A", "--subject", "bob"];
    let (_, bob) = s.token(&bob).await;
    for (id, projects) in [("T1", &["A", "B"][..]), ("T2", &["A"])] {
        let out = release(&s, &admin(), id, projects, &["--wait"]).await;
        assert_eq!(out.code, 0, "{out:?}");
    }
    s.block("B");
    let out = release(&s, &admin(), "T3", &["B"], &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = s
        .cli(&As::Token(bob), &["rollback", "1", "--id", "RB"])
        .await;
    assert_eq!(
        out.code, 0,
        "only A changes now, which bob may roll back: {out:?}"
    );
    assert_eq!(get(&s, "RB").await["state"], "TRANSACTION_STATE_PENDING");

    s.heal("B");
    let rb = ended(&s, "RB").await;
    assert_eq!(rb["state"], "TRANSACTION_STATE_ABORTED", "{rb}");
    let reason = rb["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("bob") && reason.contains("permission release"),
        "{rb}"
    );
    assert_eq!(s.live(), versions(&[("A", "T2A"), ("B", "T3B")]));
}

/// Review finding of stop 59: `lockstep release watch` with no id asked the live state
/// of `-e` (default: `default`) for where the log stands, so a caller whose grant
/// reads only `dev` was refused (exit 4) although it may follow the log (what of it it
/// may read). Given a viewer token for `dev`, when it watches with no `-e`, then it
/// follows, and prints an event of `dev` made after it started.
#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_of_one_environment_watches_the_log_without_naming_it() {
    use tokio::io::AsyncBufReadExt;
    let s = Secure::start(&["A"], &[]).await;
    let out = s.cli(&admin(), &["env", "add", "dev"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let (_, token) = s
        .token(&["--role", "viewer", "--env", "dev", "--subject", "dash"])
        .await;
    let mut watch = tokio::process::Command::new(bin("lockstep"))
        .args(s.credentials(&As::Token(token)))
        .args(["release", "watch"])
        .env("LOCKSTEP_COORDINATOR", s.coordinator.https_url())
        .env_remove("LOCKSTEP_TOKEN")
        .env_remove("LOCKSTEP_ENVIRONMENT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let endpoint = s.agents["A"].server.https_url();
    let seen = async {
        for n in 0.. {
            // A new project until the watch prints one: the watch may start following
            // only after the first registration.
            let name = format!("P{n}");
            let add = [
                "-e",
                "dev",
                "project",
                "add",
                &name,
                "--endpoint",
                &endpoint,
                "--unchecked",
            ];
            let out = s.cli(&admin(), &add).await;
            assert_eq!(out.code, 0, "{out:?}");
            let next = tokio::time::timeout(std::time::Duration::from_secs(1), lines.next_line());
            if let Ok(line) = next.await {
                match line.unwrap() {
                    Some(line) if line.contains("PROJECT_REGISTERED") => return,
                    Some(_) => {}
                    None => {
                        let status = watch.wait().await.unwrap();
                        panic!("the watch ended: {status:?}");
                    }
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), seen)
        .await
        .expect("the viewer's watch printed no event of dev");
}
