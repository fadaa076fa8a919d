//! Seed 000's four situations: B and C are children of A; T1A T1B T1C, then T2B, then
//! T3C, then T4A T4B T4C.

use super::{
    checks::{
        actions, assert_rule, forced, from_versions, plan_err, release, revert, rule, targets,
        wave_names,
    },
    story::{Story, id, p},
};
use crate::model::Action;

// Seed 000, situation 1: a manual revert of T4 restores T1A T2B T3C, the state that was
// live (and worked) between T3 and T4.
#[test]
fn reverting_t4_gives_exactly_t1a_t2b_t3c() {
    let mut story = Story::seed_000();
    let plan = story.plan(&revert("T4", false));
    assert!(plan.allowed(), "{}", plan.refusal());
    assert_eq!(targets(&plan), "A=T1A B=T2B C=T3C");
    assert_eq!(actions(&plan), [Action::Downgrade; 3]);
    assert_eq!(plan.reverts, [id("T4")]);
    assert_rule(
        &plan,
        "earlier-state-exists",
        true,
        &["checkpoint 3", "before T4"],
    );
    assert_rule(
        &plan,
        "no-later-dependents",
        true,
        &["no later committed release"],
    );
    let cited = "A=T1A B=T2B C=T3C was live together at checkpoint 3 (release T3)";
    assert_rule(&plan, "compatibility", true, &[cited]);

    story.commit("R4", revert("T4", false));
    assert_eq!(story.live(), "A=T1A B=T2B C=T3C");
    assert_eq!(story.checkpoints[4].description, "revert of T4");
}

// Situation 2: activating T3 alone while T4 is live gives T4A T4B T3C, which nobody ever
// ran: refused without force, recorded as untested with it; a revert then restores T4.
#[test]
fn activating_old_t3c_under_t4_is_an_untested_combination_refused_without_force() {
    let mut story = Story::seed_000();
    let plan = story.plan(&release(&[("C", "T3C")]));
    assert!(!plan.allowed());
    assert!(plan.refusal().starts_with("refused: compatibility: "));
    assert_eq!(actions(&plan), [Action::Downgrade]);
    assert_rule(&plan, "children-included", true, &[]);
    assert_rule(&plan, "quarantine", true, &[]);
    let words = [
        "moving C back to T3C gives A=T4A B=T4B C=T3C",
        "never live together (untested)",
        "nearest known-good checkpoint: 3 (release T3: A=T1A B=T2B C=T3C)",
        "`lockstep rollback 3`",
        "or pass --force",
    ];
    assert_rule(&plan, "compatibility", false, &words);

    let plan = story.commit("T5", forced(release(&[("C", "T3C")])));
    assert!(plan.forced);
    assert!(
        rule(&plan, "compatibility")
            .detail
            .starts_with("forced: moving C back")
    );
    let head = story.checkpoints.last().unwrap();
    assert!(head.untested);
    assert_eq!(
        head.description,
        "release T5 (forced, untested combination)"
    );

    let back = story.plan(&revert("T5", false));
    assert_eq!(targets(&back), "C=T4C", "only what T5 changed moves back");
    assert_rule(
        &back,
        "compatibility",
        true,
        &["at checkpoint 4 (release T4)"],
    );
}

// Situation 3: the revert of T4 is one transaction over A, B and C, so it cannot end as
// T1A T2B T4C; and A alone can never be released without its children.
#[test]
fn reverting_t4_brings_b_and_c_along_so_a_cannot_be_left_waiting_for_children() {
    let mut story = Story::seed_000();
    let alone = story.plan(&release(&[("A", "T1A")]));
    assert!(!alone.allowed());
    let missing = "A requires B (live: T4B) and C (live: T4C); add them to the release";
    assert_rule(&alone, "children-included", false, &[missing]);

    let plan = story.plan(&revert("T4", false));
    assert_eq!(plan.projects(), [p("A"), p("B"), p("C")].into());
    assert_eq!(wave_names(&plan.waves), [vec!["B", "C"], vec!["A"]]);

    // The revert fails as a whole (C cannot go back): nothing moved, the same plan again.
    story.abort("R4", revert("T4", false));
    assert_eq!(story.live(), "A=T4A B=T4B C=T4C");
    assert_eq!(story.plan(&revert("T4", false)), plan);
}

// Situation 4: T4 fails while T1A T2B T3C is live. It is planned from that state, and an
// abort leaves it exactly there: no fall back to T1, nothing of T4 to "revert".
#[test]
fn a_failed_t4_changes_nothing_so_the_plan_starts_from_t1a_t2b_t3c() {
    let mut story = Story::seed_000_before_t4();
    let t4 = release(&[("A", "T4A"), ("B", "T4B"), ("C", "T4C")]);
    let plan = story.plan(&t4);
    assert!(plan.allowed(), "{}", plan.refusal());
    let from = [Some("T1A".into()), Some("T2B".into()), Some("T3C".into())];
    assert_eq!(from_versions(&plan), from);
    assert_eq!(actions(&plan), [Action::Upgrade; 3]);
    assert_eq!(wave_names(&plan.waves), [vec!["B", "C"], vec!["A"]]);

    story.abort("T4", t4.clone());
    assert_eq!(story.live(), "A=T1A B=T2B C=T3C");
    assert_eq!(story.plan(&t4), plan);
    let err = plan_err(&story, &revert("T4", false));
    assert_eq!(
        err,
        "refused: release_id: T4 is Aborted, only a committed transaction can be reverted"
    );
}
