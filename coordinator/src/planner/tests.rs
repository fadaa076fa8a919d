//! The planner against an in-memory history: seed 000's four situations and the rules'
//! edge cases, played as stories in milliseconds.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use lockstep::names::{Environment, ProjectName, TxId, Version};

use super::{History, Plan, Precondition, View, checkpoint_description, plan, waves};
use crate::{
    error::{CoordinatorError, Result},
    model::{
        Action, CheckpointRecord, ComponentSpec, LiveEntry, ProjectRecord, QuarantineRecord,
        Request, TxKind, TxRecord, TxState,
    },
};

fn p(s: &str) -> ProjectName {
    ProjectName::parse("project", s).unwrap()
}

fn v(s: &str) -> Version {
    Version::parse("version", s).unwrap()
}

fn id(s: &str) -> TxId {
    TxId::parse("id", s).unwrap()
}

/// Registered projects, what was committed or aborted, and what reverts quarantined.
#[derive(Default)]
struct Story {
    environment: Environment,
    projects: BTreeMap<ProjectName, ProjectRecord>,
    checkpoints: Vec<CheckpointRecord>,
    transactions: Vec<TxRecord>,
    seen: BTreeSet<(ProjectName, Version)>,
    quarantine: BTreeMap<(ProjectName, Version), QuarantineRecord>,
}

impl History for Story {
    fn newest_checkpoint_where(
        &self,
        matches: &mut dyn FnMut(&CheckpointRecord) -> bool,
    ) -> Result<Option<CheckpointRecord>> {
        Ok(self
            .checkpoints
            .iter()
            .rev()
            .find(|cp| matches(cp))
            .cloned())
    }

    fn was_live(&self, project: &ProjectName, version: &Version) -> Result<bool> {
        Ok(self.seen.contains(&(project.clone(), version.clone())))
    }

    fn checkpoint(&self, revision: u64) -> Result<Option<CheckpointRecord>> {
        Ok(self
            .checkpoints
            .iter()
            .find(|cp| cp.revision == revision)
            .cloned())
    }

    fn transaction(&self, tx: &TxId) -> Result<Option<TxRecord>> {
        Ok(self.transactions.iter().find(|t| &t.id == tx).cloned())
    }

    fn committed_after(&self, ordinal: u64) -> Result<Vec<TxRecord>> {
        Ok(self
            .transactions
            .iter()
            .filter(|t| t.ordinal > ordinal && t.state == TxState::Committed)
            .cloned()
            .collect())
    }
}

impl Story {
    /// Projects as (name, children).
    fn with_projects(projects: &[(&str, &[&str])]) -> Self {
        let mut story = Story::default();
        for (name, requires) in projects {
            story.register(name, requires);
        }
        story
    }

    fn register(&mut self, name: &str, requires: &[&str]) {
        let record = ProjectRecord {
            name: p(name),
            environment: self.environment.clone(),
            endpoint: format!("http://{name}.agent:7000"),
            requires: requires.iter().map(|c| p(c)).collect(),
        };
        self.projects.insert(p(name), record);
    }

    /// Seed 000 up to T3: B and C are children of A; T1A T1B T1C, then T2B, then T3C.
    fn seed_000_before_t4() -> Self {
        let mut story = Story::with_projects(&[("A", &["B", "C"]), ("B", &[]), ("C", &[])]);
        story.commit("T1", release(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")]));
        story.commit("T2", release(&[("B", "T2B")]));
        story.commit("T3", release(&[("C", "T3C")]));
        story
    }

    /// Seed 000: the history above, then T4A T4B T4C (checkpoint 4, live).
    fn seed_000() -> Self {
        let mut story = Story::seed_000_before_t4();
        story.commit("T4", release(&[("A", "T4A"), ("B", "T4B"), ("C", "T4C")]));
        story
    }

    fn view(&self) -> View<'_> {
        View {
            environment: &self.environment,
            projects: &self.projects,
            head: self.checkpoints.last(),
            quarantine: &self.quarantine,
            history: self,
        }
    }

    fn plan(&self, request: &Request) -> Plan {
        plan(&self.view(), request).unwrap()
    }

    /// Plans `request` and commits it as the coordinator would: the next checkpoint, the
    /// versions seen, the reverted releases quarantined.
    fn commit(&mut self, tx: &str, request: Request) -> Plan {
        let plan = self.plan(&request);
        assert!(plan.allowed(), "{tx}: {}", plan.refusal());
        let mut record = self.record(tx, request, &plan, TxState::Committed);
        record.checkpoint = self.checkpoints.last().map_or(0, |c| c.revision) + 1;
        let checkpoint = self.checkpoint_after(&record);
        self.seen.extend(
            checkpoint
                .versions
                .iter()
                .map(|(p, e)| (p.clone(), e.version.clone())),
        );
        self.quarantine_reverted(&record);
        self.checkpoints.push(checkpoint);
        self.transactions.push(record);
        plan
    }

    /// Plans `request` and records it aborted: nothing live changes.
    fn abort(&mut self, tx: &str, request: Request) -> Plan {
        let plan = self.plan(&request);
        let record = self.record(tx, request, &plan, TxState::Aborted);
        self.transactions.push(record);
        plan
    }

    fn record(&self, tx: &str, request: Request, plan: &Plan, state: TxState) -> TxRecord {
        let kind = match request {
            Request::Release { .. } => TxKind::Release,
            Request::Revert { .. } => TxKind::Revert,
            Request::Rollback { .. } => TxKind::Rollback,
        };
        TxRecord {
            id: id(tx),
            ordinal: self.transactions.len() as u64 + 1,
            environment: self.environment.clone(),
            kind,
            request,
            state,
            participants: plan.participants.clone(),
            waves: plan.waves.clone(),
            reason: String::new(),
            reverts: plan.reverts.clone(),
            rollback_to: plan.rollback_to,
            forced: plan.forced,
            quarantined: false,
            checkpoint: 0,
            prepare_timeout_ms: 0,
            created_ms: 0,
            finished_ms: 0,
            prepare_sent: true,
        }
    }

    fn checkpoint_after(&self, tx: &TxRecord) -> CheckpointRecord {
        let mut versions = self
            .checkpoints
            .last()
            .map(|c| c.versions.clone())
            .unwrap_or_default();
        for part in &tx.participants {
            let entry = LiveEntry {
                version: part.to_version.clone(),
                schema: None,
            };
            versions.insert(part.project.clone(), entry);
        }
        CheckpointRecord {
            revision: tx.checkpoint,
            environment: tx.environment.clone(),
            versions,
            transaction: tx.id.clone(),
            kind: tx.kind,
            description: checkpoint_description(tx),
            untested: tx.forced,
            committed_ms: 0,
        }
    }

    fn quarantine_reverted(&mut self, revert: &TxRecord) {
        for release in &revert.reverts {
            let release = self.transaction(release).unwrap().unwrap();
            for part in release.participants.iter() {
                if part.action != Action::Unchanged {
                    let record = QuarantineRecord {
                        release: release.id.clone(),
                        revert: revert.id.clone(),
                    };
                    let key = (part.project.clone(), part.to_version.clone());
                    self.quarantine.insert(key, record);
                }
            }
        }
    }

    /// The live state as `A=T4A B=T4B C=T4C`.
    fn live(&self) -> String {
        let head = self.checkpoints.last().unwrap();
        let live = head
            .versions
            .iter()
            .map(|(p, e)| format!("{p}={}", e.version));
        live.collect::<Vec<_>>().join(" ")
    }
}

fn release(components: &[(&str, &str)]) -> Request {
    Request::Release {
        components: components
            .iter()
            .map(|(project, version)| ComponentSpec {
                project: p(project),
                version: v(version),
                artifact: format!("registry.example/{project}:{version}"),
                metadata: BTreeMap::new(),
            })
            .collect(),
        force: false,
        allow_quarantined: false,
    }
}

fn forced(request: Request) -> Request {
    match request {
        Request::Release {
            components,
            allow_quarantined,
            ..
        } => Request::Release {
            components,
            force: true,
            allow_quarantined,
        },
        other => other,
    }
}

fn allowing_quarantined(request: Request) -> Request {
    match request {
        Request::Release {
            components, force, ..
        } => Request::Release {
            components,
            force,
            allow_quarantined: true,
        },
        other => other,
    }
}

fn revert(release: &str, cascade: bool) -> Request {
    Request::Revert {
        release: id(release),
        cascade,
    }
}

fn rollback(revision: u64) -> Request {
    Request::Rollback { revision }
}

/// The precondition `name` of `plan` (a panic lists those there are).
fn rule<'p>(plan: &'p Plan, name: &str) -> &'p Precondition {
    plan.preconditions
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", plan.preconditions))
}

/// Asserts the outcome of rule `name` and that its detail says every one of `words`.
fn assert_rule(plan: &Plan, name: &str, passed: bool, words: &[&str]) {
    let rule = rule(plan, name);
    assert_eq!(rule.passed, passed, "{name}: {}", rule.detail);
    for w in words {
        assert!(
            rule.detail.contains(w),
            "{name}: {:?} lacks {w:?}",
            rule.detail
        );
    }
}

/// The targets as `A=T1A B=T2B C=T3C`.
fn targets(plan: &Plan) -> String {
    let targets = plan
        .participants
        .iter()
        .map(|part| format!("{}={}", part.project, part.to_version));
    targets.collect::<Vec<_>>().join(" ")
}

fn from_versions(plan: &Plan) -> Vec<Option<String>> {
    let from = plan.participants.iter();
    from.map(|part| part.from_version.as_ref().map(|v| v.to_string()))
        .collect()
}

fn actions(plan: &Plan) -> Vec<Action> {
    plan.participants.iter().map(|part| part.action).collect()
}

fn wave_names(waves: &[Vec<ProjectName>]) -> Vec<Vec<String>> {
    let names = |w: &Vec<ProjectName>| w.iter().map(|p| p.to_string()).collect();
    waves.iter().map(names).collect()
}

fn message(err: CoordinatorError) -> String {
    match err {
        CoordinatorError::NotFound(m) => format!("not found: {m}"),
        CoordinatorError::Refused(m) => format!("refused: {m}"),
        other => format!("other: {other}"),
    }
}

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

fn plan_err(story: &Story, request: &Request) -> String {
    message(plan(&story.view(), request).unwrap_err())
}

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
    assert!(plan.allowed(), "{}", plan.refusal());
    assert_eq!(plan.reverts, [id("T2"), id("T4")]);
    assert_rule(
        &plan,
        "no-later-dependents",
        true,
        &["cascade also reverts T4"],
    );
    // The state before T2: checkpoint 1 (T3's C=T3C goes too).
    assert_eq!(targets(&plan), "A=T1A B=T1B C=T1C");
    assert_rule(
        &plan,
        "compatibility",
        true,
        &["at checkpoint 1 (release T1)"],
    );
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
