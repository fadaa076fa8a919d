//! Promotion carries only verified states (issue 26, defect 4), end to end: a source
//! checkpoint is promoted (automatically, or by `promote` without `--force`) only when
//! every version it holds went live in a transaction that was not forced, not pulled,
//! and passed its verification after commit, not only the checkpoint's own
//! transaction; and an automatic promotion acts for the upstream release's creator,
//! whose permission in the target is checked (over mutual TLS with real grants). Each
//! refusal is in the event log and creates nothing.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;

use lockstep::pb::{self, EventKind, TransactionState};
use support::{
    Cluster,
    secure::{As, Secure, admin},
    wait_for,
};

/// dev, then hardening taking every verified release of dev.
const DEV_TO_HARDENING: &str = r#"
[[environment]]
name = "dev"

[[environment]]
name = "hardening"
after = "dev"
auto_promote = true
"#;

/// A coordinator with `pipeline` applied.
async fn with_pipeline(pipeline: &str) -> Cluster {
    let c = Cluster::new().await;
    let file = c.dir.path().join("pipeline.toml");
    std::fs::write(&file, pipeline).unwrap();
    let applied = c.cli(&["env", "apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(applied.code, 0, "{applied:?}");
    c
}

/// Starts `project`'s agent in `env` and registers it there, requiring `requires`.
async fn env_agent(c: &mut Cluster, env: &str, project: &str, requires: &str) {
    c.add_env_agent(env, project).await;
    let url = c.agent(&format!("{env}/{project}")).server.url();
    let mut args = vec!["-e", env, "project", "add", project, "--endpoint", &url];
    if !requires.is_empty() {
        args.extend(["--requires", requires]);
    }
    let out = c.cli(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// `lockstep -e ENV release create ID COMPONENTS --wait [--force]`, which must commit.
async fn release(c: &Cluster, env: &str, id: &str, components: &[&str], force: bool) {
    let mut args = vec!["-e", env, "release", "create", id, "--wait"];
    args.extend_from_slice(components);
    if force {
        args.push("--force");
    }
    let out = c.cli(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// What each of `projects` has live in `env`.
fn versions(c: &Cluster, env: &str, projects: &[&str]) -> Vec<Option<String>> {
    let live = |p: &&str| c.agent(&format!("{env}/{p}")).live();
    projects.iter().map(live).collect()
}

fn some(versions: &[&str]) -> Vec<Option<String>> {
    versions.iter().map(|v| Some(v.to_string())).collect()
}

/// How an automatic promotion `id` came out: refused (the event saying so), or created
/// (the transaction).
#[derive(Debug)]
enum Outcome {
    Refused(pb::Event),
    Created(pb::Transaction),
}

/// Waits until promotion `id` exists or a refusal of it (an event of `kind` naming it)
/// is in the log.
async fn auto_promotion(c: &Cluster, id: &str, kind: EventKind) -> Outcome {
    wait_for(&format!("{id} to be created or refused"), || async {
        let get = pb::GetReleaseRequest { id: id.into() };
        if let Ok(t) = c.client().await.get_release(get).await {
            return Some(Outcome::Created(t.into_inner()));
        }
        let events = c.events().await.into_iter();
        let mut refusals = events.filter(|e| e.kind == kind as i32 && e.message.contains(id));
        refusals.next().map(Outcome::Refused)
    })
    .await
}

/// The refusal event of `outcome`, failing the test when the promotion was created.
fn refusal(outcome: Outcome) -> pb::Event {
    match outcome {
        Outcome::Refused(event) => event,
        Outcome::Created(t) => panic!("an unverified state was promoted: {t:?}"),
    }
}

fn mentions(text: &str, all: &[&str]) {
    for part in all {
        assert!(text.contains(part), "names {part:?}: {text}");
    }
}

/// Given dev's checkpoint 4 forced into an untested combination (api 1.0 under web
/// 2.0), rightly not promoted; when an unrelated release of docs makes checkpoint 5,
/// then checkpoint 5 (which still holds api 1.0) is not promoted either, automatically
/// or by `promote`, and the default `promote` skips back to checkpoint 3; forced, it
/// arrives in hardening as forced (untested).
#[tokio::test(flavor = "multi_thread")]
async fn a_later_checkpoint_holding_a_forced_version_is_never_promoted_as_tested() {
    let mut c = with_pipeline(DEV_TO_HARDENING).await;
    for env in ["dev", "hardening"] {
        env_agent(&mut c, env, "api", "").await;
        env_agent(&mut c, env, "web", "api").await;
        env_agent(&mut c, env, "docs", "").await;
    }
    let committed = TransactionState::Committed;
    release(&c, "dev", "D1", &["api=1.0", "web=1.0"], false).await;
    c.wait_state("promote-dev-1-to-hardening", committed).await;
    release(&c, "dev", "D2", &["docs=1.0"], false).await;
    c.wait_state("promote-dev-2-to-hardening", committed).await;
    release(&c, "dev", "D3", &["api=2.0", "web=2.0"], false).await;
    c.wait_state("promote-dev-3-to-hardening", committed).await;
    let projects = ["api", "web", "docs"];
    let hardened = some(&["2.0", "2.0", "1.0"]);
    assert_eq!(versions(&c, "hardening", &projects), hardened);

    release(&c, "dev", "D4", &["api=1.0"], true).await;
    release(&c, "dev", "D5", &["docs=2.0"], false).await;

    let kind = EventKind::PromotionRefused;
    let refused = refusal(auto_promotion(&c, "promote-dev-5-to-hardening", kind).await);
    mentions(&refused.message, &["api 1.0", "D4", "forced"]);
    assert_eq!(refused.transaction_id, "D5", "{refused:?}");
    let four = refusal(auto_promotion(&c, "promote-dev-4-to-hardening", kind).await);
    mentions(&four.message, &["untested"]);
    assert_eq!(
        versions(&c, "hardening", &projects),
        hardened,
        "hardening keeps checkpoint 3"
    );

    let checkpoint = ["promote", "--from", "dev", "--to", "hardening"];
    let five = c
        .cli(&[&checkpoint[..], &["--checkpoint", "5"]].concat())
        .await;
    assert_eq!(five.code, 1, "{five:?}");
    mentions(&five.stderr, &["api 1.0", "D4", "forced", "--force"]);
    let default = c.cli(&[&checkpoint[..], &["-o", "json"]].concat()).await;
    assert_eq!(default.code, 0, "{default:?}");
    let from = default.json()["transaction"]["promotedFrom"].clone();
    assert_eq!(from, "dev checkpoint 3", "the newest verified: {default:?}");

    let id = ["--checkpoint", "5", "--force", "--id", "H5"];
    let forced = c.cli(&[&checkpoint[..], &id].concat()).await;
    assert_eq!(forced.code, 0, "{forced:?}");
    let h5 = c.wait_state("H5", committed).await;
    assert!(h5.forced, "arrives as the untested state it is: {h5:?}");
    let history = c.cli(&["-e", "hardening", "history", "-o", "json"]).await;
    assert!(history.stdout.contains("release H5 (forced"), "{history:?}");
}

/// A live site (examples/green.py serving /health, 503 while `broken` exists) in `dir`,
/// stopped when dropped.
struct LiveSite {
    dir: PathBuf,
    url: String,
}

const GREEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/green.py");

impl LiveSite {
    fn start(dir: PathBuf, broken: &std::path::Path) -> Self {
        let out = std::process::Command::new("python3")
            .args([GREEN, "serve", dir.to_str().unwrap(), "live"])
            .env("GREEN_FAIL_FILE", broken)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        LiveSite { dir, url }
    }

    /// Staging soaking `soak`, then checking the site (`on_live_failure` = `notify`:
    /// a failed version stays live), and production taking staging's verified releases.
    fn pipeline(&self, soak: &str) -> String {
        format!(
            "[[environment]]\nname = \"staging\"\nsoak = \"{soak}\"\non_live_failure = \"notify\"\n  [[environment.verify_live]]\n  name = \"health\"\n  kind = \"http\"\n  url = \"{}/health\"\n\n[[environment]]\nname = \"production\"\nafter = \"staging\"\nauto_promote = true\n",
            self.url
        )
    }
}

impl Drop for LiveSite {
    fn drop(&mut self) {
        let stop = std::process::Command::new("python3")
            .args([GREEN, "stop", self.dir.to_str().unwrap()])
            .status();
        drop(stop);
    }
}

/// staging and production with the site's pipeline, api and docs in both.
async fn staging(site: &LiveSite, soak: &str) -> Cluster {
    let mut c = with_pipeline(&site.pipeline(soak)).await;
    for env in ["staging", "production"] {
        env_agent(&mut c, env, "api", "").await;
        env_agent(&mut c, env, "docs", "").await;
    }
    c
}

/// Waits until `id`'s live check starts with `prefix`.
async fn live_check_is(c: &Cluster, id: &str, prefix: &str) {
    wait_for(&format!("{id}'s live check to be {prefix}"), || async {
        let t = c.transaction(id).await;
        t.live_check.starts_with(prefix).then_some(())
    })
    .await;
}

/// Given api 1.0 live in staging but failed its live check (only notified), when docs
/// 1.0 passes its own, then staging's checkpoint 2 (holding api 1.0) is not promoted.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_that_failed_its_live_check_is_not_promoted_inside_a_later_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    let site = LiveSite::start(dir.path().join("site"), &broken);
    let c = staging(&site, "100ms").await;
    std::fs::write(&broken, "").unwrap();
    release(&c, "staging", "S1", &["api=1.0"], false).await;
    live_check_is(&c, "S1", "failed").await;
    std::fs::remove_file(&broken).unwrap();

    release(&c, "staging", "S2", &["docs=1.0"], false).await;
    live_check_is(&c, "S2", "passed").await;

    let kind = EventKind::PromotionRefused;
    let id = "promote-staging-2-to-production";
    let refused = refusal(auto_promotion(&c, id, kind).await);
    mentions(
        &refused.message,
        &["api 1.0", "S1", "failed its verification"],
    );
    let manual = ["promote", "--from", "staging", "--to", "production"];
    let out = c.cli(&[&manual[..], &["--checkpoint", "2"]].concat()).await;
    assert_eq!(out.code, 1, "{out:?}");
    mentions(&out.stderr, &["api 1.0", "S1", "failed its verification"]);
    assert_eq!(versions(&c, "production", &["api", "docs"]), [None, None]);
}

/// Given api 1.0's soak in staging cut by a coordinator SIGKILL and superseded by docs
/// 1.0 (so api 1.0 stays soaking), when docs 1.0 passes its check after the restart,
/// then staging's checkpoint 2 is not promoted: api 1.0 was never verified.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_still_soaking_is_not_promoted_inside_a_later_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let site = LiveSite::start(dir.path().join("site"), &dir.path().join("broken"));
    let mut c = staging(&site, "4s").await;
    release(&c, "staging", "S1", &["api=1.0"], false).await;
    release(&c, "staging", "S2", &["docs=1.0"], false).await;
    assert_eq!(c.transaction("S1").await.live_check, "soaking");
    c.coordinator.kill9().await;
    c.coordinator.restart().await;

    let id = "promote-staging-2-to-production";
    let kind = EventKind::PromotionRefused;
    let refused = refusal(auto_promotion(&c, id, kind).await);
    mentions(
        &refused.message,
        &["api 1.0", "S1", "still in its verification"],
    );
    assert_eq!(c.transaction("S1").await.live_check, "soaking");
    assert_eq!(versions(&c, "production", &["api", "docs"]), [None, None]);
}

/// default (soaking 3s after each commit), then production taking every verified
/// release of default.
const DEFAULT_TO_PRODUCTION: &str = r#"
[[environment]]
name = "default"
soak = "3s"

[[environment]]
name = "production"
after = "default"
auto_promote = true
"#;

/// `release create ID A=<ID>A --artifact ... --wait` as `who` in the default
/// environment, which must commit.
async fn secure_release(s: &Secure, who: &As, id: &str) {
    let version = format!("{id}A");
    let component = format!("A={version}");
    let artifact = s.artifact("A", &version);
    let args = [
        "release",
        "create",
        id,
        &component,
        "--artifact",
        &artifact,
        "--wait",
    ];
    let out = s.cli(who, &args).await;
    assert_eq!(out.code, 0, "{who:?} releases in default: {out:?}");
}

/// Waits for the ACCESS_DENIED event of automatic promotion `id` in the audit log,
/// failing the test as soon as `id` exists.
async fn denied(s: &Secure, id: &str) -> serde_json::Value {
    wait_for(&format!("{id} to be created or refused"), || async {
        let get = s.cli(&admin(), &["release", "get", id]).await;
        assert_ne!(get.code, 0, "promoted without permission: {get:?}");
        let audit = s.cli(&admin(), &["audit", "-o", "json"]).await;
        assert_eq!(audit.code, 0, "{audit:?}");
        let events = audit.json()["events"].as_array().cloned()?;
        let named = |e: &serde_json::Value| {
            let message = e["message"].as_str().unwrap_or_default();
            e["kind"] == "EVENT_KIND_ACCESS_DENIED" && message.contains(id)
        };
        events.into_iter().find(named)
    })
    .await
}

/// Given bob may release in the default environment only, ci holds a releaser token
/// revoked while its release soaks, and alice may release everywhere: bob's and ci's
/// automatic promotions to production are refused as them (ACCESS_DENIED, nothing
/// created); alice's is created as alice and goes live.
#[tokio::test(flavor = "multi_thread")]
async fn an_automatic_promotion_acts_for_the_upstream_creator_whose_permission_is_checked() {
    let grants = [
        "--grant",
        "bob=releaser@default",
        "--grant",
        "alice=releaser",
    ];
    let s = secure_pipeline(&grants, DEFAULT_TO_PRODUCTION, &["A"]).await;

    secure_release(&s, &As::User("bob".into()), "B1").await;
    let (token_id, ci) = s.token(&["--role", "releaser", "--subject", "ci"]).await;
    secure_release(&s, &As::Token(ci), "C2").await;
    let revoke = s.cli(&admin(), &["token", "revoke", &token_id]).await;
    assert_eq!(revoke.code, 0, "{revoke:?}");

    let bob = denied(&s, "promote-default-1-to-production").await;
    assert_eq!(bob["actor"], "user/bob", "{bob}");
    mentions(bob["message"].as_str().unwrap(), &["production", "release"]);
    let ci = denied(&s, "promote-default-2-to-production").await;
    mentions(ci["message"].as_str().unwrap(), &["revoked", &token_id]);
    assert_eq!(s.agents["production/A"].live(), None);

    secure_release(&s, &As::User("alice".into()), "A3").await;
    let id = "promote-default-3-to-production";
    let committed = |t: &serde_json::Value| t["state"] == "TRANSACTION_STATE_COMMITTED";
    let promoted = secure_get(&s, id, committed).await;
    assert_eq!(promoted["createdBy"], "user/alice", "{promoted}");
    assert_eq!(s.agents["production/A"].live().as_deref(), Some("A3A"));
}

/// A coordinator over mutual TLS with `grants`, `pipeline` applied, and `projects` in
/// default and production.
async fn secure_pipeline(grants: &[&str], pipeline: &str, projects: &[&str]) -> Secure {
    let mut s = Secure::start(projects, grants).await;
    production_certs(&s, &projects.join(",")).await;
    let file = s.dir.path().join("pipeline.toml");
    std::fs::write(&file, pipeline).unwrap();
    let apply = ["env", "apply", "-f", file.to_str().unwrap()];
    assert_eq!(s.cli(&admin(), &apply).await.code, 0);
    for p in projects {
        s.add_registered_env_agent("production", p).await;
    }
    s
}

/// `release get ID -o json` as admin (the transaction), once `ready` holds for it.
async fn secure_get(
    s: &Secure,
    id: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(&format!("{id} to be as expected"), || async {
        let get = s.cli(&admin(), &["release", "get", id, "-o", "json"]).await;
        // It exits 1 for an aborted transaction, printing it all the same.
        let json = get.stdout.starts_with('{').then(|| get.json())?;
        ready(&json).then_some(json)
    })
    .await
}

/// Waits until `id`'s PREPARE_STARTED is in the log: its creation is durable, so a
/// restart knows it.
async fn prepare_started(s: &Secure, id: &str) {
    let mut admin = s
        .coordinator_client(("user-admin.crt", "user-admin.key"))
        .await;
    let from_start = pb::WatchEventsRequest {
        from_seq: 1,
        transaction_id: id.into(),
        ..Default::default()
    };
    let mut events = admin.watch_events(from_start).await.unwrap().into_inner();
    let started = async {
        while let Some(e) = events.message().await.unwrap() {
            if e.kind == EventKind::PrepareStarted as i32 {
                return;
            }
        }
        panic!("{id}'s events ended before its PREPARE_STARTED");
    };
    let deadline = std::time::Duration::from_secs(30);
    let waited = tokio::time::timeout(deadline, started).await;
    waited.unwrap_or_else(|_| panic!("{id}'s PREPARE_STARTED within {deadline:?}"));
}

/// default (soaking 10 s after each commit: long enough to promote by hand and
/// restart), then production taking every verified release of default.
const DEFAULT_SOAKING_TO_PRODUCTION: &str = r#"
[[environment]]
name = "default"
soak = "10s"

[[environment]]
name = "production"
after = "default"
auto_promote = true
"#;

/// Review finding of stop 63: an automatic promotion adopted someone else's manual
/// promotion of the same checkpoint (a manual `promote` without `--id` takes the same
/// id). Given alice's release A1 soaking in default, and bob (an operator) promoting
/// its checkpoint `--force` while it soaks, when the coordinator restarts with bob's
/// promotion waiting in production's Prepare (so it is presumed aborted), then the
/// automatic promotion once A1 passed its soak is alice's own: planned afresh, not
/// forced, created by alice; bob's `--force` is never recorded as alice's.
#[tokio::test(flavor = "multi_thread")]
async fn an_automatic_promotion_never_adopts_another_callers_manual_promotion() {
    let grants = ["--grant", "bob=operator", "--grant", "alice=releaser"];
    let mut s = secure_pipeline(&grants, DEFAULT_SOAKING_TO_PRODUCTION, &["A"]).await;
    secure_release(&s, &As::User("alice".into()), "A1").await;
    s.block("A");
    let promote = [
        "promote",
        "--from",
        "default",
        "--to",
        "production",
        "--checkpoint",
        "1",
        "--force",
        "-o",
        "json",
    ];
    let out = s.cli(&As::User("bob".into()), &promote).await;
    assert_eq!(out.code, 0, "{out:?}");
    let bobs = "promote-default-1-to-production";
    assert_eq!(
        out.json()["transaction"]["id"],
        bobs,
        "the automatic id: {out:?}"
    );
    prepare_started(&s, bobs).await;

    s.coordinator.kill9().await;
    s.coordinator.restart().await;
    s.heal("A");
    let aborted = secure_get(&s, bobs, |t| t["state"] == "TRANSACTION_STATE_ABORTED").await;
    mentions(aborted["reason"].as_str().unwrap(), &["presumed abort"]);

    let automatic = format!("{bobs}-2");
    let committed = |t: &serde_json::Value| t["state"] == "TRANSACTION_STATE_COMMITTED";
    let promoted = secure_get(&s, &automatic, committed).await;
    assert_eq!(promoted["createdBy"], "user/alice", "{promoted}");
    let forced = &promoted["forced"];
    assert_eq!(forced, false, "bob's --force is not alice's: {promoted}");
    assert_eq!(s.agents["production/A"].live().as_deref(), Some("A1A"));
}

/// default, then production, which promotes only when asked.
const DEFAULT_THEN_PRODUCTION: &str = r#"
[[environment]]
name = "default"

[[environment]]
name = "production"
after = "default"
"#;

/// `promote --from default --to production ARGS` as `who`.
async fn promote_as(s: &Secure, who: &str, args: &[&str]) -> support::Cli {
    let mut all = vec!["promote", "--from", "default", "--to", "production"];
    all.extend_from_slice(args);
    s.cli(&As::User(who.into()), &all).await
}

/// Review finding of stop 64 (of that stop's own change): a caller's retry of its own
/// promotion with `--id` is answered with the promotion as it was accepted, even after
/// a newer checkpoint became the default; another caller's same request is refused as
/// an id taken with other content, never answered with alice's.
#[tokio::test(flavor = "multi_thread")]
async fn a_callers_own_promotion_retried_is_answered_as_accepted_and_no_one_elses() {
    let grants = ["--grant", "alice=releaser", "--grant", "bob=releaser"];
    let s = secure_pipeline(&grants, DEFAULT_THEN_PRODUCTION, &["A"]).await;
    let alice = As::User("alice".into());
    secure_release(&s, &alice, "A1").await;
    let first = promote_as(&s, "alice", &["--id", "P1", "--wait"]).await;
    assert_eq!(first.code, 0, "{first:?}");
    secure_release(&s, &alice, "A2").await;

    let again = promote_as(&s, "alice", &["--id", "P1", "-o", "json"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    let from = &again.json()["transaction"]["promotedFrom"];
    assert_eq!(from, "default checkpoint 1", "as accepted: {again:?}");
    let bobs = promote_as(&s, "bob", &["--id", "P1"]).await;
    assert_ne!(bobs.code, 0, "{bobs:?}");
    mentions(&bobs.stderr, &["P1", "already exists"]);
    assert_eq!(s.agents["production/A"].live().as_deref(), Some("A1A"));
}

/// Review finding of stop 64: a promotion's entry check asked `read` on its source
/// environment only, which a grant of one project there satisfies, and its plan (a dry
/// run's) shows the source's versions of every project it copies. Given bob, releaser
/// in production and viewer of default's A only, when he promotes (dry run) a release
/// of default's B, or default's whole checkpoint, then he is refused (PERMISSION_DENIED,
/// naming `read` on B) and learns no version of B; a release of A alone he may promote.
#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_shows_the_source_only_to_those_who_may_read_it() {
    let grants = [
        "--grant",
        "bob=releaser@production",
        "--grant",
        "bob=viewer@default/A",
    ];
    let s = secure_pipeline(&grants, DEFAULT_THEN_PRODUCTION, &["A", "B"]).await;
    let b = s.artifact("B", "secretB");
    let made = [
        "release",
        "create",
        "RB",
        "B=secretB",
        "--artifact",
        &b,
        "--wait",
    ];
    assert_eq!(s.cli(&admin(), &made).await.code, 0);
    secure_release(&s, &admin(), "RA").await;

    for source in [&["--release", "RB"][..], &["--checkpoint", "2"][..]] {
        let out = promote_as(&s, "bob", &[source, &["--dry-run", "-o", "json"]].concat()).await;
        assert_ne!(out.code, 0, "{source:?}: {out:?}");
        mentions(&out.stderr, &["PermissionDenied", "read", "B"]);
        assert!(!format!("{out:?}").contains("secretB"), "{out:?}");
    }
    let own = promote_as(&s, "bob", &["--release", "RA", "--dry-run", "-o", "json"]).await;
    assert_eq!(own.code, 0, "{own:?}");
    assert!(own.stdout.contains("RAA"), "{own:?}");
}

/// Certificates for production's agents of `agents` (comma-separated), by the
/// deployment's CA (`certs init` into the same directory reuses the CA and renews the
/// others).
async fn production_certs(s: &Secure, agents: &str) {
    let out = tokio::process::Command::new(support::bin("lockstep"))
        .args(["certs", "init"])
        .arg(&s.certs)
        .args([
            "--env",
            "production",
            "--agents",
            agents,
            "--users",
            "admin",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// dev, then hardening, where every transaction waits for an approval.
const DEV_TO_APPROVED_HARDENING: &str = r#"
[[environment]]
name = "dev"

[[environment]]
name = "hardening"
after = "dev"
  [[environment.verify]]
  name = "approval"
  kind = "approval"
  deadline = "10m"
"#;

/// Review finding of stop 57: a promotion was checked for "verified" only when it was
/// asked for. Queued behind a release of the target, it was planned again at its turn
/// from the source checkpoint it stored, so a revert upstream meanwhile (which pulls
/// the release that made the checkpoint) did not stop it: the pulled state went live
/// downstream as a tested one. At its turn it is refused, naming the revert's effect.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_promotion_is_refused_at_its_turn_when_its_source_was_reverted() {
    let mut c = with_pipeline(DEV_TO_APPROVED_HARDENING).await;
    env_agent(&mut c, "dev", "web", "").await;
    env_agent(&mut c, "hardening", "web", "").await;
    release(&c, "dev", "D1", &["web=0.5"], false).await;
    release(&c, "dev", "D2", &["web=1.0"], false).await;
    let held = ["-e", "hardening", "release", "create", "H1", "web=0.9"];
    assert_eq!(c.cli(&held).await.code, 0);
    c.wait_state("H1", TransactionState::Verifying).await;
    let promote = [
        "promote",
        "--from",
        "dev",
        "--to",
        "hardening",
        "--id",
        "P2",
    ];
    let out = c.cli(&[&promote[..], &["-o", "json"]].concat()).await;
    assert_eq!(out.code, 0, "{out:?}");
    let from = out.json()["transaction"]["promotedFrom"].clone();
    assert_eq!(from, "dev checkpoint 2", "verified when asked: {out:?}");

    let revert = c.cli(&["-e", "dev", "revert", "D2", "--wait"]).await;
    assert_eq!(revert.code, 0, "{revert:?}");
    let approve = ["-e", "hardening", "approve", "H1", "--actor", "carol"];
    assert_eq!(c.cli(&approve).await.code, 0);
    c.wait_state("H1", TransactionState::Committed).await;

    let p2 = c.wait_state("P2", TransactionState::Aborted).await;
    mentions(&p2.reason, &["while it was queued", "D2"]);
    assert_eq!(versions(&c, "hardening", &["web"]), some(&["0.9"]));
}

/// Review finding of stop 60: the promotion path was checked only when a promotion was
/// asked for. Given P2 (dev to hardening) queued behind a release of hardening, when a
/// pipeline applied meanwhile takes dev off hardening's upstreams, then at its turn P2
/// is refused: it would have gone live credited as tested by an environment that is no
/// longer upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_promotion_is_refused_at_its_turn_when_its_path_changed() {
    let mut c = with_pipeline(DEV_TO_APPROVED_HARDENING).await;
    env_agent(&mut c, "dev", "web", "").await;
    env_agent(&mut c, "hardening", "web", "").await;
    release(&c, "dev", "D1", &["web=1.0"], false).await;
    let held = ["-e", "hardening", "release", "create", "H1", "web=0.9"];
    assert_eq!(c.cli(&held).await.code, 0);
    c.wait_state("H1", TransactionState::Verifying).await;
    let promote = [
        "promote",
        "--from",
        "dev",
        "--to",
        "hardening",
        "--id",
        "P2",
    ];
    assert_eq!(c.cli(&promote).await.code, 0);

    let file = c.dir.path().join("cut.toml");
    std::fs::write(&file, "[[environment]]\nname = \"hardening\"\nafter = []\n").unwrap();
    let applied = c.cli(&["env", "apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(applied.code, 0, "{applied:?}");
    let approve = ["-e", "hardening", "approve", "H1", "--actor", "carol"];
    assert_eq!(c.cli(&approve).await.code, 0);
    c.wait_state("H1", TransactionState::Committed).await;

    let p2 = c.wait_state("P2", TransactionState::Aborted).await;
    mentions(&p2.reason, &["promotion path changed", "dev"]);
    assert_eq!(versions(&c, "hardening", &["web"]), some(&["0.9"]));
}

/// The bracket's side of the check above (a review of stop 57's change): a promotion
/// of one release (`--release`) is judged by that release alone, at its turn too, not
/// by the other versions of the checkpoint it made. Given dev's api (which requires
/// web) forced back into an untested combination (D2) and web released after it (D3,
/// verified), when `promote --release D3` waits behind a release of hardening, then at
/// its turn it goes ahead.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_bracket_of_a_verified_release_goes_ahead_at_its_turn() {
    let mut c = with_pipeline(DEV_TO_APPROVED_HARDENING).await;
    for env in ["dev", "hardening"] {
        env_agent(&mut c, env, "web", "").await;
        env_agent(&mut c, env, "api", "web").await;
    }
    release(&c, "dev", "D1", &["api=1.0", "web=1.0"], false).await;
    release(&c, "dev", "D1b", &["api=2.0", "web=2.0"], false).await;
    release(&c, "dev", "D2", &["api=1.0", "web=2.0"], true).await;
    release(&c, "dev", "D3", &["web=3.0"], false).await;
    let first = [
        "-e",
        "hardening",
        "release",
        "create",
        "H0",
        "api=0.1",
        "web=0.1",
    ];
    assert_eq!(c.cli(&first).await.code, 0);
    c.wait_state("H0", TransactionState::Verifying).await;
    let promote = ["promote", "--from", "dev", "--to", "hardening"];
    let out = c
        .cli(&[&promote[..], &["--release", "D3", "--id", "P3"]].concat())
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let approve = ["-e", "hardening", "approve", "H0", "--actor", "carol"];
    assert_eq!(c.cli(&approve).await.code, 0);
    c.wait_state("H0", TransactionState::Committed).await;

    let p3 = c.wait_state("P3", TransactionState::Verifying).await;
    assert!(!p3.forced, "D3 is verified: {p3:?}");
}
