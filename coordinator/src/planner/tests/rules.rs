//! The rules one at a time: waves, later dependents, rollbacks, quarantine, lookups.

use super::{
    checks::{
        allowing_quarantined, assert_rule, plan_err, release, revert, rollback, rule, targets,
        wave_names,
    },
    story::{Story, id, p},
};
use crate::{
    model::{Request, TxState},
    planner::waves,
};

#[test]
fn waves_put_children_before_parents_three_levels_deep() {
    let story = Story::with_projects(&[
        ("app", &["api"]),
        ("api", &["db"]),
        ("db", &[]),
        ("web", &[]),
    ]);
    let all = [p("app"), p("api"), p("db"), p("web")].into();
    let expected = [vec!["db", "web"], vec!["api"], vec!["app"]];
    assert_eq!(wave_names(&waves(&story.view(), &all)), expected);

    let plan = story.plan(&release(&[("app", "1"), ("api", "1"), ("db", "1")]));
    let waves: Vec<(String, u32)> = plan
        .participants
        .iter()
        .map(|part| (part.project.to_string(), part.wave))
        .collect();
    let expected = [("api".into(), 1), ("app".into(), 2), ("db".into(), 0)];
    assert_eq!(waves, expected);
}

// T2 changed B; T4 changed B again. Reverting T2 alone would silently undo T4's B.
#[test]
fn reverting_t2_after_t4_changed_b_is_refused_unless_cascade_reverts_t4_too() {
    let story = Story::seed_000();
    let plan = story.plan(&revert("T2", false));
    assert!(!plan.allowed());
    let words = ["T4 committed after T2 and built on it (B=T4B by T4 is live now)"];
    assert_rule(&plan, "no-later-dependents", false, &words);
    assert!(
        rule(&plan, "no-later-dependents")
            .detail
            .ends_with("revert it first, or pass --cascade")
    );

    let plan = story.plan(&revert("T2", true));
    assert_eq!(plan.reverts, [id("T2"), id("T4")]);
    assert_rule(
        &plan,
        "no-later-dependents",
        true,
        &["cascade also reverts T4"],
    );
    // Each project goes back to its version before the first reverted release that
    // changed it: B before T2, A and C before T4. T3 is not reverted, so C=T3C stays.
    assert_eq!(targets(&plan), "A=T1A B=T1B C=T3C");
    assert_rule(
        &plan,
        "earlier-state-exists",
        true,
        &["checkpoint 1, the state before T2; checkpoint 3, the state before T4"],
    );
    // A family never live together: refused, unless forced.
    assert!(!plan.allowed());
    assert_rule(&plan, "compatibility", false, &["A=T1A B=T1B C=T3C"]);
}

// T5 changed B, T6 changed B again, T7 changed all three: a cascade revert of T5 undoes
// T6 as well as T7, so it names both, not only the release that made B's live version.
#[test]
fn a_cascade_names_every_later_release_it_undoes_not_only_the_newest() {
    let mut story = Story::seed_000();
    story.commit("T5", release(&[("B", "T5B")]));
    story.commit("T6", release(&[("B", "T6B")]));
    story.commit("T7", release(&[("A", "T7A"), ("B", "T7B"), ("C", "T7C")]));

    let plan = story.plan(&revert("T5", false));
    let words = ["T7 committed after T5 and built on it (B=T7B by T7 is live now)"];
    assert_rule(&plan, "no-later-dependents", false, &words);

    let plan = story.plan(&revert("T5", true));
    assert!(plan.allowed(), "{}", plan.refusal());
    assert_eq!(plan.reverts, [id("T5"), id("T6"), id("T7")]);
    assert_eq!(targets(&plan), "A=T4A B=T4B C=T4C");
}

// T5 changed B, T6 changed C alone, T7 changed all three: a cascade revert of T5
// reverts T7 but not T6, which built on nothing T5 did, so C goes back to T6C (what T7
// replaced), not to T4C. That family was never live together: refused unless forced.
#[test]
fn a_cascade_keeps_what_a_release_it_does_not_revert_changed() {
    let mut story = Story::seed_000();
    story.commit("T5", release(&[("B", "T5B")]));
    story.commit("T6", release(&[("C", "T6C")]));
    story.commit("T7", release(&[("A", "T7A"), ("B", "T7B"), ("C", "T7C")]));

    let plan = story.plan(&revert("T5", true));
    assert_eq!(plan.reverts, [id("T5"), id("T7")]);
    assert_eq!(targets(&plan), "A=T4A B=T4B C=T6C");
    assert!(!plan.allowed());
    assert_rule(&plan, "compatibility", false, &["A=T4A B=T4B C=T6C"]);
}

#[test]
fn the_first_release_has_no_earlier_state_to_revert_to() {
    let story = Story::seed_000();
    let err = plan_err(&story, &revert("T1", false));
    assert!(
        err.contains("T1 produced checkpoint 1, the first one"),
        "{err}"
    );
    let err = plan_err(&story, &revert("T9", false));
    assert_eq!(err, "not found: release_id: transaction T9 does not exist");
}

#[test]
fn a_rollback_restores_a_whole_checkpoint() {
    let story = Story::seed_000();
    let plan = story.plan(&rollback(1));
    assert!(plan.allowed(), "{}", plan.refusal());
    assert_eq!(plan.rollback_to, 1);
    assert_eq!(targets(&plan), "A=T1A B=T1B C=T1C");
    assert_rule(
        &plan,
        "changes-something",
        true,
        &["restores checkpoint 1 (release T1)"],
    );
    assert_rule(&plan, "compatibility", true, &["at checkpoint 1"]);

    // 0: the checkpoint before the head.
    let plan = story.plan(&rollback(0));
    assert_eq!(plan.rollback_to, 3);
    assert_eq!(targets(&plan), "A=T1A B=T2B C=T3C");

    let err = plan_err(&story, &rollback(9));
    assert!(
        err.starts_with("not found: revision: checkpoint 9 does not exist"),
        "{err}"
    );
    assert!(err.ends_with("(latest is 4)"), "{err}");
}

#[test]
fn a_rollback_to_the_live_state_changes_nothing_and_is_refused() {
    let story = Story::seed_000();
    let plan = story.plan(&rollback(4));
    assert!(!plan.allowed());
    assert!(plan.participants.is_empty());
    let words = ["the live state already equals checkpoint 4"];
    assert_rule(&plan, "changes-something", false, &words);
}

#[test]
fn a_rollback_leaves_projects_the_checkpoint_never_knew() {
    let mut story = Story::seed_000();
    story.register("D", &[]);
    story.commit("T5", release(&[("D", "T5D")]));
    let plan = story.plan(&rollback(1));
    assert!(!plan.projects().contains(&p("D")));
    let words = ["D did not exist at checkpoint 1 and stay as they are"];
    assert_rule(&plan, "projects-outside-checkpoint", true, &words);
}

#[test]
fn versions_pulled_by_a_revert_are_quarantined_unless_allowed() {
    let mut story = Story::seed_000();
    story.commit("R4", revert("T4", false));
    let t4 = release(&[("A", "T4A"), ("B", "T4B"), ("C", "T4C")]);
    let plan = story.plan(&t4);
    assert!(!plan.allowed());
    let pulled = "A=T4A, B=T4B, C=T4C were pulled by R4 (revert of T4)";
    let words = [pulled, "pass --allow-quarantined to release them again"];
    assert_rule(&plan, "quarantine", false, &words);
    assert_rule(&plan, "compatibility", true, &["at checkpoint 4"]);

    let plan = story.plan(&allowing_quarantined(t4));
    assert!(plan.allowed(), "{}", plan.refusal());
    let allowed = format!("allowed by --allow-quarantined: {pulled}");
    assert_rule(&plan, "quarantine", true, &[&allowed]);
}

/// Defect 3 of issue 27: a bare rollback right after a revert put the reverted
/// release back live, quarantined versions and all (a releaser undoing an operator's
/// decision). The rollback keeps the quarantine rule: refused unless allowed.
#[test]
fn a_rollback_to_what_a_revert_pulled_is_quarantined_unless_allowed() {
    let mut story = Story::seed_000();
    story.commit("R4", revert("T4", false));
    let plan = story.plan(&rollback(0));
    assert!(!plan.allowed(), "rolled back to T4's checkpoint: {plan:?}");
    let pulled = "A=T4A, B=T4B, C=T4C were pulled by R4 (revert of T4)";
    assert_rule(&plan, "quarantine", false, &[pulled, "--allow-quarantined"]);

    let plan = story.plan(&allowing_quarantined(rollback(0)));
    assert!(plan.allowed(), "{}", plan.refusal());
}

/// Review finding of stop 57: a revert of a revert put back what the first revert
/// pulled, quarantined versions and all, with no `--allow-quarantined` (which needs
/// `operate`; a revert needs only `release`), and quarantined what it took down as
/// "pulled by the revert of R4". A revert is not revertible: releasing those versions
/// again is a release, which the quarantine rule holds to `--allow-quarantined`.
#[test]
fn a_revert_is_not_revertible() {
    let mut story = Story::seed_000();
    story.commit("R4", revert("T4", false));
    let err = plan_err(&story, &revert("R4", false));
    assert!(
        err.contains("release_id") && err.contains("R4 is a revert"),
        "{err}"
    );
    assert!(err.contains("--allow-quarantined"), "{err}");
}

/// Review finding of stop 57: a revert or rollback refused by the compatibility guard
/// said "pass --force", which neither command takes. Its hint names what can go live
/// anyway: a forced release of those versions.
#[test]
fn a_refused_revert_or_rollback_is_not_told_to_pass_force() {
    let mut story = Story::with_projects(&[("A", &["B"]), ("B", &[]), ("C", &[])]);
    story.commit("T1", release(&[("A", "A1"), ("B", "B1")]));
    story.commit("T2", release(&[("A", "A2"), ("B", "B2")]));
    story.register("A", &["B", "C"]);
    story.commit("T3", release(&[("C", "C1")]));
    for request in [revert("T2", false), rollback(1)] {
        let plan = story.plan(&request);
        let detail = &rule(&plan, "compatibility").detail;
        assert!(!plan.allowed(), "A1 B1 C1 never ran together: {plan:?}");
        assert!(!detail.contains("pass --force"), "{detail}");
        assert!(
            detail.contains("release create") && detail.contains("--force"),
            "{detail}"
        );
    }
}

/// Defect 3 of issue 27: the compatibility hint suggested rolling back to the
/// checkpoint a revert had pulled. A hint names only a checkpoint that is neither
/// reverted (quarantined versions) nor untested.
#[test]
fn a_hint_never_suggests_a_reverted_or_untested_checkpoint() {
    let mut story = Story::seed_000();
    story.commit("R4", revert("T4", false));
    let plan = story.plan(&allowing_quarantined(release(&[("C", "T4C")])));
    let detail = &rule(&plan, "compatibility").detail;
    assert!(detail.contains("never live together"), "{detail}");
    assert!(!detail.contains("rollback 4"), "T4 was reverted: {detail}");
}

#[test]
fn a_release_of_an_unregistered_project_names_the_component() {
    let story = Story::seed_000();
    let err = plan_err(&story, &release(&[("A", "T5A"), ("Z", "1")]));
    let expected = format!(
        "not found: components[1].project: project Z is not registered in environment {}",
        story.environment
    );
    assert_eq!(err, expected);
}

// Production had A=1 B=1, then A=2 B=2; hardening verified A=1 with B=2. Moving A back
// alone is an untested combination here, but a promotion of hardening's checkpoint
// counts it as tested: it was live together, verified, upstream.
#[test]
fn a_combination_verified_upstream_counts_as_tested_in_a_promotion() {
    let mut story = Story::with_projects(&[("A", &["B"]), ("B", &[])]);
    story.commit("T1", release(&[("A", "1"), ("B", "1")]));
    story.commit("T2", release(&[("A", "2"), ("B", "2")]));
    let wanted = release(&[("A", "1"), ("B", "2")]);
    assert_rule(&story.plan(&wanted), "compatibility", false, &["--force"]);

    let promotion = promotion_of(wanted, false, false);
    let plan = story.plan(&promotion);
    assert!(plan.allowed(), "{}", plan.refusal());
    assert_rule(
        &plan,
        "compatibility",
        true,
        &["verified, at hardening checkpoint 4"],
    );
    assert!(!plan.forced, "tested, so not forced");
}

/// A promotion of `wanted` from hardening checkpoint 4, which ran exactly it (`untested`:
/// a version in it was not verified there).
fn promotion_of(
    wanted: crate::model::Request,
    force: bool,
    untested: bool,
) -> crate::model::Request {
    use crate::model::{CheckpointRecord, LiveEntry, Request, TxKind};
    let Request::Release { components, .. } = wanted else {
        unreachable!("a release")
    };
    let entry = |version: &lockstep::names::Version| LiveEntry {
        version: version.clone(),
        schema: None,
    };
    let versions = components
        .iter()
        .map(|c| (c.project.clone(), entry(&c.version)));
    let upstream = CheckpointRecord {
        revision: 4,
        environment: lockstep::names::Environment::parse("environment", "hardening").unwrap(),
        versions: versions.collect(),
        transaction: id("H4"),
        kind: TxKind::Release,
        description: "release H4".into(),
        untested,
        committed_ms: 0,
    };
    Request::Promote {
        components,
        force,
        upstream,
    }
}

// Issue 26, defect 4: an upstream state holding an unverified version (promoted with
// --force) vouches for nothing here, and the promotion is forced: it never arrives as
// a tested state, whether or not anything moves back.
#[test]
fn an_unverified_upstream_state_arrives_forced_and_vouches_for_nothing() {
    let mut story = Story::with_projects(&[("A", &["B"]), ("B", &[])]);
    story.commit("T1", release(&[("A", "1"), ("B", "1")]));
    story.commit("T2", release(&[("A", "2"), ("B", "2")]));
    let back = release(&[("A", "1"), ("B", "2")]);
    let refused = story.plan(&promotion_of(back.clone(), false, true));
    assert_rule(&refused, "compatibility", false, &["--force"]);
    let forced = story.plan(&promotion_of(back, true, true));
    assert!(forced.allowed() && forced.forced, "{}", forced.refusal());

    let ahead = story.plan(&promotion_of(
        release(&[("A", "3"), ("B", "3")]),
        true,
        true,
    ));
    assert!(ahead.allowed(), "{}", ahead.refusal());
    assert!(ahead.forced, "nothing moves back, still forced");
}

// A version names one build: an agent keeps `releases/<version>` as it is, and a restore
// sends the build recorded for the version. A release giving a committed version another
// artifact is refused, naming the field; the same artifact again is not.
#[test]
fn a_committed_version_is_not_released_again_from_another_artifact() {
    let mut story = Story::seed_000();
    story.commit("T5", release(&[("B", "T5B")]));
    story.commit("T6", release(&[("B", "T6B")]));

    let mut rebuilt = release(&[("B", "T5B")]);
    if let Request::Release { components, .. } = &mut rebuilt {
        components[0].artifact = "registry.example/B:T5B-rebuilt".into();
    }
    let err = plan_err(&story, &rebuilt);
    assert!(
        err.contains(
            "components[0].artifact: B=T5B was committed in default from registry.example/B:T5B"
        ) && err.contains("registry.example/B:T5B-rebuilt"),
        "{err}"
    );
    let plan = story.plan(&release(&[("B", "T5B")]));
    assert!(!plan.refusal().contains("artifact"), "{}", plan.refusal());

    // B=T6B is live: nothing is staged for it, whatever artifact is given.
    let mut live = release(&[("B", "T6B")]);
    if let Request::Release { components, .. } = &mut live {
        components[0].artifact = "registry.example/B:T6B-rebuilt".into();
    }
    story.plan(&live);

    // A version committed without an artifact has no other build to be given later.
    let mut bare = release(&[("C", "T7C")]);
    if let Request::Release { components, .. } = &mut bare {
        components[0].artifact.clear();
    }
    story.commit("T7", bare);
    story.commit("T8", release(&[("C", "T8C")]));
    let err = plan_err(&story, &release(&[("C", "T7C")]));
    assert!(
        err.contains("components[0].artifact: C=T7C was committed in default without an artifact"),
        "{err}"
    );
}

// A later release decided COMMIT whose participants have not all acknowledged it yet has
// made its checkpoint: a revert that would undo it names it, as it names a committed one.
#[test]
fn a_later_release_still_committing_is_a_dependent() {
    let mut story = Story::seed_000();
    story.commit("T5", release(&[("B", "T5B")]));
    story.commit("T6", release(&[("B", "T6B")]));
    story.transactions.last_mut().unwrap().state = TxState::Committing;

    let plan = story.plan(&revert("T5", false));
    let words = ["T6 committed after T5 and built on it (B=T6B by T6 is live now)"];
    assert_rule(&plan, "no-later-dependents", false, &words);
    let plan = story.plan(&revert("T5", true));
    assert_eq!(plan.reverts, [id("T5"), id("T6")]);
}

// A's `requires` grew a child D that has nothing live. A release of A is refused until
// D is released; a revert or a rollback that moves A is refused the same way, since it
// would move a parent whose child cannot come along (it used to skip the rule).
#[test]
fn a_revert_or_rollback_moving_a_parent_needs_every_child_live() {
    let mut story = Story::seed_000();
    story.register("D", &[]);
    story.register("A", &["B", "C", "D"]);
    let missing = "A requires D (nothing live); release it first";
    for request in [revert("T4", false), rollback(1)] {
        let plan = story.plan(&request);
        assert!(!plan.allowed(), "{request:?}");
        assert_rule(&plan, "children-included", false, &[missing]);
    }

    story.commit("T5", release(&[("D", "T5D")]));
    // Compatibility still speaks for the family (D=T5D was never live beside T3's).
    let plan = story.plan(&revert("T4", false));
    assert_rule(&plan, "children-included", true, &[]);
    assert!(
        plan.projects().contains(&p("D")),
        "D comes along at its live version"
    );
}
