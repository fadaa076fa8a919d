//! Release history that can be trusted: the four situations of the seed incident
//! (../shared/seeds/000) each end in a known-good composite state; dry runs show the
//! plan the real run executes; history survives restarts.

#![allow(clippy::unwrap_used)]

mod support;

use lockstep::pb::TransactionState;
use serde_json::Value;
use support::Cluster;

/// Given the seed's history T1A T1B T1C, T2B, T3C, then T4A T4B T4C live.
async fn seed_with_t4() -> Cluster {
    let c = Cluster::family().await;
    c.seed_history().await;
    c.release("T4", &["A=T4A", "B=T4B", "C=T4C"], 0).await;
    c
}

/// `(project, from, to, action)` rows and waves, from a plan or from a transaction.
fn changes(rows: &Value) -> Vec<(String, String, String, String)> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("project"), s("fromVersion"), s("toVersion"), s("action"))
        })
        .collect()
}

/// Runs `args` with --dry-run, then for real with --wait; asserts the real run did what
/// the dry run showed, and returns the real run's exit code and transaction.
async fn dry_then_real(c: &Cluster, args: &[&str]) -> (i32, Value) {
    let mut dry = args.to_vec();
    dry.extend(["--dry-run", "-o", "json"]);
    let plan = c.cli(&dry).await;
    assert_eq!(plan.code, 0, "dry run allowed: {plan:?}");
    let plan = plan.json();
    let mut real = args.to_vec();
    real.extend(["--wait", "-o", "json"]);
    let out = c.cli(&real).await;
    let tx = out.json();
    assert_eq!(
        changes(&plan["changes"]),
        changes(&tx["participants"]),
        "same targets and actions"
    );
    assert_eq!(plan["waves"], tx["waves"], "same commit waves");
    (out.code, tx)
}

#[tokio::test(flavor = "multi_thread")]
async fn situation_1_reverting_t4_restores_exactly_t1a_t2b_t3c() {
    let c = seed_with_t4().await;

    let (code, tx) = dry_then_real(&c, &["revert", "T4"]).await;

    assert_eq!(code, 0);
    assert_eq!(tx["reverts"][0], "T4");
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T2B"), ("C", "T3C")])
    );
    let history = c.cli(&["history", "-o", "json"]).await.json();
    let last = history["checkpoints"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["description"], "revert of T4");
    assert_eq!(last["revision"], "5");
}

#[tokio::test(flavor = "multi_thread")]
async fn situation_2_activating_t3c_alone_under_t4_is_refused_forced_flagged_then_rolled_back() {
    let c = seed_with_t4().await;

    let refused = c.cli(&["release", "create", "T5", "C=T3C", "--wait"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("A=T4A B=T4B C=T3C"),
        "names the combination: {}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("never live together"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("nearest known-good checkpoint: 3"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T4A"), ("B", "T4B"), ("C", "T4C")])
    );

    let (code, tx) = dry_then_real(&c, &["release", "create", "T5", "C=T3C", "--force"]).await;
    assert_eq!(code, 0);
    assert_eq!(tx["forced"], true);
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T4A"), ("B", "T4B"), ("C", "T3C")])
    );
    let live = c.cli(&["live", "-o", "json"]).await.json();
    assert_eq!(
        live["checkpoint"]["untested"], true,
        "shown as an untested combination"
    );

    let (code, tx) = dry_then_real(&c, &["rollback"]).await;
    assert_eq!(code, 0);
    assert_eq!(tx["rollbackTo"], "4");
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T4A"), ("B", "T4B"), ("C", "T4C")])
    );
    let live = c.cli(&["live", "-o", "json"]).await.json();
    assert_eq!(live["checkpoint"]["description"], "rollback to 4");
    assert_eq!(live["checkpoint"]["untested"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn situation_3_a_revert_that_c_cannot_prepare_aborts_and_t4_stays_whole() {
    let c = seed_with_t4().await;
    c.fail("C", "cannot re-activate T3C");

    let (code, tx) = dry_then_real(&c, &["revert", "T4"]).await;

    assert_eq!(code, 1);
    assert_eq!(tx["state"], "TRANSACTION_STATE_ABORTED");
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T4A"), ("B", "T4B"), ("C", "T4C")]),
        "not T1A T2B T4C"
    );
    for p in ["A", "B", "C"] {
        assert!(
            c.agent(p).status().await.staged.is_empty(),
            "{p} has nothing staged"
        );
    }
    // T4 as a whole is still intact and can be reverted once C is fixed.
    c.heal("C");
    let (code, _) = dry_then_real(&c, &["revert", "T4"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T2B"), ("C", "T3C")])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn situation_4_t4_failing_in_c_leaves_exactly_t1a_t2b_t3c_and_nothing_staged() {
    let c = Cluster::family().await;
    c.seed_history().await;
    c.fail("C", "migration failed");

    let (code, _) =
        dry_then_real(&c, &["release", "create", "T4", "A=T4A", "B=T4B", "C=T4C"]).await;

    assert_eq!(code, 1);
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T2B"), ("C", "T3C")]),
        "not T1A T1B T1C"
    );
    assert_eq!(c.agent("A").releases(), ["T1A"]);
    assert_eq!(c.agent("B").releases(), ["T1B", "T2B"]);
    for p in ["A", "B"] {
        assert!(
            c.agent(p).status().await.staged.is_empty(),
            "{p} has nothing staged"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revert_under_a_later_release_is_refused_unless_cascaded() {
    let c = seed_with_t4().await;
    c.release("T5", &["B=T5B"], 0).await;

    let refused = c.cli(&["revert", "T4", "--wait"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("T5 committed after T4") && refused.stderr.contains("B=T5B"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--cascade"), "{}", refused.stderr);

    let (code, tx) = dry_then_real(&c, &["revert", "T4", "--cascade"]).await;
    assert_eq!(code, 0);
    assert_eq!(tx["reverts"], serde_json::json!(["T4", "T5"]));
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T1A"), ("B", "T2B"), ("C", "T3C")])
    );
}

/// T5 and T6 changed B, then T7 changed all three: a cascade revert of T5 undoes T6
/// as well as T7, so the revert names (and quarantines) both, not only T7, which made
/// B's live version.
#[tokio::test(flavor = "multi_thread")]
async fn a_cascade_revert_names_every_release_it_undoes() {
    let c = seed_with_t4().await;
    c.release("T5", &["B=T5B"], 0).await;
    c.release("T6", &["B=T6B"], 0).await;
    c.release("T7", &["A=T7A", "B=T7B", "C=T7C"], 0).await;

    let (code, tx) = dry_then_real(&c, &["revert", "T5", "--cascade"]).await;
    assert_eq!(code, 0);
    assert_eq!(tx["reverts"], serde_json::json!(["T5", "T6", "T7"]));
    assert!(c.transaction("T6").await.quarantined);
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T4A"), ("B", "T4B"), ("C", "T4C")])
    );
}

/// T5 changed B, T6 changed C alone, then T7 changed all three: a cascade revert of T5
/// reverts T7, not T6 (it built on nothing T5 did), so C could only go back to T6C,
/// what T7 replaced; with A=T4A and B=T4B that family was never live together, so the
/// revert is refused and nothing moves, where it used to undo T6 unasked.
#[tokio::test(flavor = "multi_thread")]
async fn a_cascade_revert_never_undoes_a_release_it_does_not_name() {
    let c = seed_with_t4().await;
    c.release("T5", &["B=T5B"], 0).await;
    c.release("T6", &["C=T6C"], 0).await;
    c.release("T7", &["A=T7A", "B=T7B", "C=T7C"], 0).await;

    let refused = c.cli(&["revert", "T5", "--cascade", "--wait"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("compatibility") && refused.stderr.contains("C=T6C"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T7A"), ("B", "T7B"), ("C", "T7C")])
    );
    assert!(!c.transaction("T6").await.quarantined);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reverted_release_is_quarantined_until_explicitly_allowed() {
    let c = seed_with_t4().await;
    assert_eq!(c.cli(&["revert", "T4", "--wait"]).await.code, 0);
    assert!(c.transaction("T4").await.quarantined);

    let refused = c
        .cli(&[
            "release", "create", "T4-again", "A=T4A", "B=T4B", "C=T4C", "--wait",
        ])
        .await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("pulled by revert-T4")
            && refused.stderr.contains("--allow-quarantined"),
        "{}",
        refused.stderr
    );

    c.release(
        "T4-again",
        &["A=T4A", "B=T4B", "C=T4C", "--allow-quarantined"],
        0,
    )
    .await;
    assert_eq!(
        c.live(),
        Cluster::expect(&[("A", "T4A"), ("B", "T4B"), ("C", "T4C")])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_never_moves_without_its_children_in_any_kind_of_transaction() {
    let c = seed_with_t4().await;
    let refused = c
        .cli(&[
            "release",
            "create",
            "T5",
            "A=T5A",
            "--dry-run",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(refused.code, 1);
    let plan = refused.json();
    let rule = plan["preconditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "children-included")
        .unwrap()
        .clone();
    assert_eq!(rule["passed"], false);
    assert_eq!(
        rule["detail"],
        "A requires B (live: T4B) and C (live: T4C); add them to the release"
    );

    // A rollback that only needs to move A still brings B and C along (unchanged).
    c.release("T5", &["A=T5A", "B=T4B", "C=T4C"], 0).await;
    let (code, tx) = dry_then_real(&c, &["rollback"]).await;
    assert_eq!(code, 0);
    let actions: Vec<(String, String)> = changes(&tx["participants"])
        .into_iter()
        .map(|(p, _, _, a)| (p, a))
        .collect();
    assert_eq!(
        actions,
        [
            ("A".into(), "ACTION_DOWNGRADE".into()),
            ("B".into(), "ACTION_UNCHANGED".into()),
            ("C".into(), "ACTION_UNCHANGED".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn history_and_live_state_survive_a_coordinator_restart_unchanged() {
    let mut c = seed_with_t4().await;
    c.cli(&["release", "create", "T5", "C=T3C", "--force", "--wait"])
        .await;
    let history = c.cli(&["history", "-o", "json"]).await.stdout;
    let live = c.cli(&["live", "-o", "json"]).await.stdout;
    let releases = c.cli(&["release", "list", "-o", "json"]).await.stdout;

    c.coordinator.kill9().await;
    c.coordinator.restart().await;

    assert_eq!(c.cli(&["history", "-o", "json"]).await.stdout, history);
    assert_eq!(c.cli(&["live", "-o", "json"]).await.stdout, live);
    assert_eq!(
        c.cli(&["release", "list", "-o", "json"]).await.stdout,
        releases
    );
    // The guard still knows what was committed before the restart.
    let refused = c
        .cli(&["release", "create", "T6", "C=T1C", "--dry-run"])
        .await;
    assert_eq!(refused.code, 1, "{refused:?}");
}

/// Given five releases, when ListReleases and GetHistory are read two at a time, then
/// the pages hold every transaction newest first and every checkpoint oldest first,
/// each once, and the last page has no next token; `lockstep history` reads every page.
#[tokio::test(flavor = "multi_thread")]
async fn releases_and_history_are_read_page_by_page() {
    use lockstep::pb;
    let mut c = Cluster::new().await;
    c.add_agent("B").await;
    c.register("B", &[]).await;
    for n in 1..=5 {
        let (id, version) = (format!("T{n}"), format!("B=T{n}B"));
        c.release(&id, &[version.as_str()], 0).await;
    }
    let mut co = c.client().await;

    let (mut ids, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let request = pb::ListReleasesRequest {
            page_size: 2,
            page_token: token.clone(),
            ..Default::default()
        };
        let page = co.list_releases(request).await.unwrap().into_inner();
        ids.extend(page.transactions.into_iter().map(|t| t.id));
        pages += 1;
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(ids, ["T5", "T4", "T3", "T2", "T1"]);
    assert_eq!(pages, 3);

    let (mut revisions, mut token) = (Vec::new(), String::new());
    loop {
        let request = pb::GetHistoryRequest {
            page_size: 2,
            page_token: token.clone(),
            ..Default::default()
        };
        let page = co.get_history(request).await.unwrap().into_inner();
        revisions.extend(page.checkpoints.into_iter().map(|c| c.revision));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(revisions, [1, 2, 3, 4, 5]);
    let all = c.cli(&["history", "-o", "json"]).await.json();
    assert_eq!(all["checkpoints"].as_array().unwrap().len(), 5);
}

/// The ids of a `release list -o json`, newest first, and its next page token.
fn listed(out: &support::Cli) -> (Vec<String>, String) {
    assert_eq!(out.code, 0, "{out:?}");
    let json = out.json();
    let ids = json["transactions"].as_array().cloned().unwrap_or_default();
    let ids = ids.iter().map(|t| t["id"].as_str().unwrap().to_string());
    let token = json["nextPageToken"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (ids.collect(), token)
}

/// Given T1 (A, B and C), T2 (B), T3 (C) and T4 (A, B and C), when the releases of one
/// project are listed, then exactly those it takes part in are shown, newest first, a
/// page at a time, and the same after the coordinator is killed and restarted; a
/// project that is not a name is refused, naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn the_releases_of_one_project_are_listed_page_by_page() {
    let mut c = seed_with_t4().await;
    let list = |project: &str, token: &str| {
        let args = ["release", "list", "--project", project, "-o", "json"];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend([
            "--limit".into(),
            "1".into(),
            "--page-token".into(),
            token.into(),
        ]);
        args
    };
    for restarted in [false, true] {
        for (project, expected) in [("A", &["T4", "T1"][..]), ("B", &["T4", "T2", "T1"])] {
            let (mut ids, mut token) = (Vec::new(), String::new());
            loop {
                let args = list(project, &token);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (page, next) = listed(&c.cli(&args).await);
                assert!(page.len() <= 1, "{page:?}");
                ids.extend(page);
                token = next;
                if token.is_empty() {
                    break;
                }
            }
            assert_eq!(ids, expected, "{project}, restarted: {restarted}");
        }
        let all = c
            .cli(&["release", "list", "--project", "C", "-o", "json"])
            .await;
        assert_eq!(listed(&all).0, ["T4", "T3", "T1"]);
        let none = c
            .cli(&["release", "list", "--project", "Z", "-o", "json"])
            .await;
        assert_eq!(listed(&none).0, Vec::<String>::new());
        if !restarted {
            c.coordinator.kill9().await;
            c.coordinator.restart().await;
        }
    }
    let bad = c.cli(&["release", "list", "--project", "no space"]).await;
    assert_ne!(bad.code, 0, "{bad:?}");
    assert!(bad.stderr.contains("project"), "names the field: {bad:?}");
}

/// Found by t80 at stop 54 (its new `rollback-target` rule): a rollback was planned
/// against the live state while a release of another project of the checkpoint was in
/// flight; that release committed first, and the rollback, committed after it, left
/// that project at the release's version: the state after "rollback to 1" was not
/// checkpoint 1. Given D being released (its Prepare held) and C's Prepare held, when
/// checkpoint 1 is rolled back to and D's release then commits, then the rollback
/// restores D too: afterwards the live state is checkpoint 1's.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_restores_the_whole_checkpoint_over_a_release_in_flight() {
    let mut c = Cluster::new().await;
    for p in ["C", "D"] {
        c.add_agent(p).await;
        c.register(p, &[]).await;
    }
    c.release("T1", &["C=C1", "D=D1"], 0).await;
    c.release("T2", &["C=C2"], 0).await;
    c.block("D");
    assert_eq!(c.cli(&["release", "create", "T3", "D=D3"]).await.code, 0);
    c.wait_state("T3", TransactionState::Preparing).await;
    c.block("C");
    let rollback = c.cli(&["rollback", "1", "--id", "RB"]).await;
    assert_eq!(rollback.code, 0, "{rollback:?}");
    c.heal("D");
    c.wait_state("T3", TransactionState::Committed).await;
    c.heal("C");
    c.wait_state("RB", TransactionState::Committed).await;
    let live = c.live_state().await.checkpoint.unwrap();
    let versions: Vec<(&str, &str)> = live
        .versions
        .iter()
        .map(|v| (v.project.as_str(), v.version.as_str()))
        .collect();
    assert_eq!(versions, [("C", "C1"), ("D", "D1")], "checkpoint 1 again");
    assert_eq!(c.agent("D").live().as_deref(), Some("D1"));
}
