//! Turns a request (release, revert, rollback) into a plan: the target version of every
//! project taking part, the action for each, the phase 2 waves, and every release rule
//! checked with its outcome. Pure: it reads a [`View`] of the state and writes nothing,
//! so a dry run and the real run compute the same plan.
//!
//! Release rules (PRODUCT.md "Release rules"):
//! - `children-included`: a transaction touching a parent includes all its children.
//! - `compatibility`: moving a project back to a version it had live before is allowed
//!   only when the result, over the project's family (the projects connected to it by
//!   `requires`), equals a committed checkpoint; otherwise only with force, recorded as
//!   untested.
//! - `quarantine`: versions pulled by a revert need allow_quarantined.
//! - `no-later-dependents` (reverts): a later committed release that changed one of the
//!   same projects must be reverted first, or with cascade together.

use std::collections::{BTreeMap, BTreeSet};

use lockstep::names::{Environment, ProjectName, TxId, Version};

use crate::{
    error::{CoordinatorError, Result},
    model::{
        Action, CheckpointRecord, ComponentSpec, Participant, ProjectRecord, QuarantineRecord,
        Request, TxKind, TxRecord, TxState,
    },
};

/// One rule checked for a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    /// Stable short name.
    pub name: &'static str,
    /// Whether it holds.
    pub passed: bool,
    /// Why, in words.
    pub detail: String,
}

/// What a transaction will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Participants with from/to versions, action and wave; sorted by project.
    pub participants: Vec<Participant>,
    /// Phase 2 waves, children first.
    pub waves: Vec<Vec<ProjectName>>,
    /// Every rule checked.
    pub preconditions: Vec<Precondition>,
    /// The transaction moves into a combination never committed, under force.
    pub forced: bool,
    /// Releases a revert undoes (the requested one first).
    pub reverts: Vec<TxId>,
    /// Checkpoint a rollback restores.
    pub rollback_to: u64,
}

impl Plan {
    /// True when every precondition holds.
    pub fn allowed(&self) -> bool {
        self.preconditions.iter().all(|p| p.passed)
    }

    /// The failed preconditions as one sentence, for a refusal.
    pub fn refusal(&self) -> String {
        let failed: Vec<String> = self
            .preconditions
            .iter()
            .filter(|p| !p.passed)
            .map(|p| format!("{}: {}", p.name, p.detail))
            .collect();
        format!("refused: {}", failed.join("; "))
    }

    /// The projects taking part.
    pub fn projects(&self) -> BTreeSet<ProjectName> {
        self.participants
            .iter()
            .map(|p| p.project.clone())
            .collect()
    }
}

/// What the planner may read.
pub struct View<'a> {
    /// Environment planned for.
    pub environment: &'a Environment,
    /// Registered projects of that environment.
    pub projects: &'a BTreeMap<ProjectName, ProjectRecord>,
    /// Newest checkpoint (decided, maybe not yet acknowledged).
    pub head: Option<&'a CheckpointRecord>,
    /// Quarantined versions.
    pub quarantine: &'a BTreeMap<(ProjectName, Version), QuarantineRecord>,
    /// Reads checkpoints (newest first) and committed transactions.
    pub history: &'a dyn History,
}

/// Read access to what is on disk, for the rules that look back.
pub trait History {
    /// The newest checkpoint of the environment for which `matches` holds (read newest
    /// first, page by page, stopping at the first match).
    fn newest_checkpoint_where(
        &self,
        matches: &mut dyn FnMut(&CheckpointRecord) -> bool,
    ) -> Result<Option<CheckpointRecord>>;
    /// Whether `version` was ever live on `project` (a move back to it is a downgrade).
    fn was_live(&self, project: &ProjectName, version: &Version) -> Result<bool>;
    /// A checkpoint by revision.
    fn checkpoint(&self, revision: u64) -> Result<Option<CheckpointRecord>>;
    /// A transaction by id.
    fn transaction(&self, id: &TxId) -> Result<Option<TxRecord>>;
    /// Committed transactions of the environment created after `ordinal`, oldest first.
    fn committed_after(&self, ordinal: u64) -> Result<Vec<TxRecord>>;
}

impl View<'_> {
    fn live(&self, project: &ProjectName) -> Option<&Version> {
        self.head
            .and_then(|h| h.versions.get(project))
            .map(|e| &e.version)
    }

    fn project(&self, field: &str, name: &ProjectName) -> Result<&ProjectRecord> {
        self.projects.get(name).ok_or_else(|| {
            CoordinatorError::NotFound(format!(
                "{field}: project {name} is not registered in environment {}",
                self.environment
            ))
        })
    }

    fn action(&self, project: &ProjectName, to: &Version) -> Result<Action> {
        Ok(if self.live(project) == Some(to) {
            Action::Unchanged
        } else if self.history.was_live(project, to)? {
            Action::Downgrade
        } else {
            Action::Upgrade
        })
    }

    /// All children of `project`, transitively.
    fn descendants(&self, project: &ProjectName) -> BTreeSet<ProjectName> {
        let mut out = BTreeSet::new();
        let mut stack = vec![project.clone()];
        while let Some(p) = stack.pop() {
            for child in self
                .projects
                .get(&p)
                .map(|r| r.requires.as_slice())
                .unwrap_or(&[])
            {
                if out.insert(child.clone()) {
                    stack.push(child.clone());
                }
            }
        }
        out
    }

    /// Projects connected to any of `projects` through `requires`, in either direction.
    fn family(&self, projects: &BTreeSet<ProjectName>) -> BTreeSet<ProjectName> {
        let mut out = projects.clone();
        let mut stack: Vec<_> = projects.iter().cloned().collect();
        while let Some(p) = stack.pop() {
            let children = self
                .projects
                .get(&p)
                .map(|r| r.requires.clone())
                .unwrap_or_default();
            let parents = self
                .projects
                .values()
                .filter(|r| r.requires.contains(&p))
                .map(|r| r.name.clone());
            for q in children.into_iter().chain(parents) {
                if out.insert(q.clone()) {
                    stack.push(q);
                }
            }
        }
        out
    }
}

/// A project's target in a plan being built.
struct Target {
    version: Version,
    artifact: String,
    metadata: BTreeMap<String, String>,
}

/// Plans any request.
pub fn plan(view: &View<'_>, request: &Request) -> Result<Plan> {
    match request {
        Request::Release {
            components,
            force,
            allow_quarantined,
        } => plan_release(view, components, *force, *allow_quarantined),
        Request::Revert { release, cascade } => plan_revert(view, release, *cascade),
        Request::Rollback { revision } => plan_rollback(view, *revision),
    }
}

fn plan_release(
    view: &View<'_>,
    components: &[ComponentSpec],
    force: bool,
    allow_quarantined: bool,
) -> Result<Plan> {
    let mut targets = BTreeMap::new();
    for (i, c) in components.iter().enumerate() {
        view.project(&format!("components[{i}].project"), &c.project)?;
        targets.insert(
            c.project.clone(),
            Target {
                version: c.version.clone(),
                artifact: c.artifact.clone(),
                metadata: c.metadata.clone(),
            },
        );
    }
    let mut preconditions = vec![children_included(view, &targets)];
    preconditions.push(quarantine_rule(view, &targets, allow_quarantined));
    let (compat, forced) = compatibility(view, &targets, force)?;
    preconditions.push(compat);
    build(view, targets, preconditions, forced, Vec::new(), 0)
}

fn plan_revert(view: &View<'_>, release: &TxId, cascade: bool) -> Result<Plan> {
    let target_tx = view.history.transaction(release)?.ok_or_else(|| {
        CoordinatorError::NotFound(format!("release_id: transaction {release} does not exist"))
    })?;
    if &target_tx.environment != view.environment {
        return Err(CoordinatorError::NotFound(format!(
            "release_id: {release} belongs to environment {}, not {}",
            target_tx.environment, view.environment
        )));
    }
    if target_tx.state != TxState::Committed {
        return Err(CoordinatorError::Refused(format!(
            "release_id: {release} is {:?}, only a committed transaction can be reverted",
            target_tx.state
        )));
    }
    let before = target_tx.checkpoint.saturating_sub(1);
    let base = match before {
        0 => None,
        n => view.history.checkpoint(n)?,
    };
    let Some(base) = base else {
        return Err(CoordinatorError::Refused(format!(
            "release_id: {release} produced checkpoint {}, the first one: there is no earlier state to restore",
            target_tx.checkpoint
        )));
    };

    let later = view.history.committed_after(target_tx.ordinal)?;
    let mut reverted = vec![target_tx];
    let mut dependents: Vec<(TxId, String)> = Vec::new();
    // Fixpoint: a project whose live version is no longer the one the reverted
    // transactions set was changed by a later release, which depends on what the revert
    // undoes. With cascade that release is reverted too and its projects join the set.
    loop {
        let mut grew = false;
        for (project, set_to) in versions_set_by(&reverted) {
            let Some(live) = view.live(&project) else {
                continue;
            };
            if live == &set_to {
                continue;
            }
            let culprit = later.iter().rev().find(|tx| {
                tx.participants.iter().any(|p| {
                    p.project == project && p.action != Action::Unchanged && &p.to_version == live
                })
            });
            let Some(culprit) = culprit else { continue };
            if reverted.iter().any(|r| r.id == culprit.id) {
                continue;
            }
            if cascade {
                reverted.push(culprit.clone());
                grew = true;
                break;
            } else if !dependents.iter().any(|(id, _)| id == &culprit.id) {
                dependents.push((culprit.id.clone(), format!("{project}={live}")));
            }
        }
        if !grew {
            break;
        }
    }
    let reverts: Vec<TxId> = reverted.iter().map(|t| t.id.clone()).collect();
    let touched: BTreeSet<ProjectName> = reverted
        .iter()
        .flat_map(|t| t.projects().cloned())
        .collect();

    let mut preconditions = Vec::new();
    let mut targets = BTreeMap::new();
    let mut missing = Vec::new();
    for project in &touched {
        match base.versions.get(project) {
            Some(entry) => {
                targets.insert(
                    project.clone(),
                    Target {
                        version: entry.version.clone(),
                        artifact: String::new(),
                        metadata: BTreeMap::new(),
                    },
                );
            }
            None => missing.push(project.to_string()),
        }
    }
    preconditions.push(Precondition {
        name: "earlier-state-exists",
        passed: missing.is_empty(),
        detail: if missing.is_empty() {
            format!("every project has a version in checkpoint {before}, the state before {release}")
        } else {
            format!(
                "{} had no version before {release} (checkpoint {before}); a revert cannot remove a project",
                missing.join(", ")
            )
        },
    });
    preconditions.push(if dependents.is_empty() {
        Precondition {
            name: "no-later-dependents",
            passed: true,
            detail: if reverts.len() > 1 {
                format!("cascade also reverts {}", join(&reverts[1..]))
            } else {
                format!("no later committed release changed what {release} changed")
            },
        }
    } else {
        let ids: Vec<TxId> = dependents.iter().map(|(id, _)| id.clone()).collect();
        let live: Vec<String> = dependents.iter().map(|(id, pv)| format!("{pv} by {id}")).collect();
        Precondition {
            name: "no-later-dependents",
            passed: false,
            detail: format!(
                "{} committed after {release} and built on it ({} is live now); revert {} first, or pass --cascade",
                join(&ids),
                live.join(", "),
                if ids.len() == 1 { "it" } else { "them" }
            ),
        }
    });
    add_children(view, &mut targets);
    let (compat, _) = compatibility(view, &targets, false)?;
    preconditions.push(compat);
    build(view, targets, preconditions, false, reverts, 0)
}

/// The version each project was last set to by `txs` (in order).
fn versions_set_by(txs: &[TxRecord]) -> BTreeMap<ProjectName, Version> {
    let mut out = BTreeMap::new();
    for tx in txs {
        for p in &tx.participants {
            out.insert(p.project.clone(), p.to_version.clone());
        }
    }
    out
}

fn plan_rollback(view: &View<'_>, revision: u64) -> Result<Plan> {
    let head = view.head.map(|h| h.revision).unwrap_or(0);
    let revision = if revision == 0 {
        head.saturating_sub(1)
    } else {
        revision
    };
    let Some(cp) = (revision > 0)
        .then(|| view.history.checkpoint(revision))
        .transpose()?
        .flatten()
    else {
        return Err(CoordinatorError::NotFound(format!(
            "revision: checkpoint {revision} does not exist in environment {} (latest is {head})",
            view.environment
        )));
    };
    let mut targets = BTreeMap::new();
    for (project, entry) in &cp.versions {
        if view.live(project) != Some(&entry.version) && view.projects.contains_key(project) {
            targets.insert(
                project.clone(),
                Target {
                    version: entry.version.clone(),
                    artifact: String::new(),
                    metadata: BTreeMap::new(),
                },
            );
        }
    }
    let mut preconditions = vec![Precondition {
        name: "changes-something",
        passed: !targets.is_empty(),
        detail: if targets.is_empty() {
            format!("the live state already equals checkpoint {revision}")
        } else {
            format!("restores checkpoint {revision} ({})", cp.description)
        },
    }];
    let untouched: Vec<String> = view
        .head
        .map(|h| {
            h.versions
                .keys()
                .filter(|p| !cp.versions.contains_key(*p))
                .map(|p| p.to_string())
                .collect()
        })
        .unwrap_or_default();
    if !untouched.is_empty() {
        preconditions.push(Precondition {
            name: "projects-outside-checkpoint",
            passed: true,
            detail: format!(
                "{} did not exist at checkpoint {revision} and stay as they are",
                untouched.join(", ")
            ),
        });
    }
    add_children(view, &mut targets);
    let (compat, _) = compatibility(view, &targets, false)?;
    preconditions.push(compat);
    build(view, targets, preconditions, false, Vec::new(), revision)
}

/// Adds every child of a parent in `targets` (transitively) at its live version.
fn add_children(view: &View<'_>, targets: &mut BTreeMap<ProjectName, Target>) {
    let parents: Vec<ProjectName> = targets.keys().cloned().collect();
    for parent in parents {
        for child in view.descendants(&parent) {
            if let (false, Some(live)) = (targets.contains_key(&child), view.live(&child)) {
                targets.insert(
                    child,
                    Target {
                        version: live.clone(),
                        artifact: String::new(),
                        metadata: BTreeMap::new(),
                    },
                );
            }
        }
    }
}

fn children_included(view: &View<'_>, targets: &BTreeMap<ProjectName, Target>) -> Precondition {
    let mut problems = Vec::new();
    for project in targets.keys() {
        let missing: Vec<String> = view
            .descendants(project)
            .into_iter()
            .filter(|c| !targets.contains_key(c))
            .map(|c| match view.live(&c) {
                Some(v) => format!("{c} (live: {v})"),
                None => c.to_string(),
            })
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{project} requires {}; add them to the release",
                join_and(&missing)
            ));
        }
    }
    Precondition {
        name: "children-included",
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            "every parent comes with all its children".into()
        } else {
            problems.join("; ")
        },
    }
}

fn quarantine_rule(
    view: &View<'_>,
    targets: &BTreeMap<ProjectName, Target>,
    allowed: bool,
) -> Precondition {
    // Grouped by the revert that pulled them: `A=T4A, B=T4B were pulled by R (revert of T4)`.
    let mut by_revert: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (p, t) in targets
        .iter()
        .filter(|(p, t)| view.live(p) != Some(&t.version))
    {
        if let Some(q) = view.quarantine.get(&(p.clone(), t.version.clone())) {
            by_revert
                .entry((q.revert.to_string(), q.release.to_string()))
                .or_default()
                .push(format!("{p}={}", t.version));
        }
    }
    let pulled: Vec<String> = by_revert
        .into_iter()
        .map(|((revert, release), versions)| {
            let verb = if versions.len() == 1 { "was" } else { "were" };
            format!(
                "{} {verb} pulled by {revert} (revert of {release})",
                versions.join(", ")
            )
        })
        .collect();
    Precondition {
        name: "quarantine",
        passed: pulled.is_empty() || allowed,
        detail: match (pulled.is_empty(), allowed) {
            (true, _) => "no quarantined version".into(),
            (false, true) => format!("allowed by --allow-quarantined: {}", pulled.join("; ")),
            (false, false) => format!(
                "{}; pass --allow-quarantined to release them again",
                pulled.join("; ")
            ),
        },
    }
}

/// The compatibility guard. Returns the precondition and whether the plan is forced.
fn compatibility(
    view: &View<'_>,
    targets: &BTreeMap<ProjectName, Target>,
    force: bool,
) -> Result<(Precondition, bool)> {
    let mut downgrades: BTreeMap<&ProjectName, &Version> = BTreeMap::new();
    for (p, t) in targets {
        if view.action(p, &t.version)? == Action::Downgrade {
            downgrades.insert(p, &t.version);
        }
    }
    if downgrades.is_empty() {
        return Ok((
            Precondition {
                name: "compatibility",
                passed: true,
                detail: "no project moves back to an older version".into(),
            },
            false,
        ));
    }
    let family = view.family(&targets.keys().cloned().collect());
    let result: BTreeMap<&ProjectName, Option<&Version>> = family
        .iter()
        .map(|p| {
            (
                p,
                targets.get(p).map(|t| &t.version).or_else(|| view.live(p)),
            )
        })
        .collect();
    let mut matches = |cp: &CheckpointRecord| {
        result
            .iter()
            .all(|(p, v)| cp.versions.get(*p).map(|e| &e.version) == *v)
    };
    if let Some(cp) = view.history.newest_checkpoint_where(&mut matches)? {
        return Ok((
            Precondition {
                name: "compatibility",
                passed: true,
                detail: format!(
                    "{} was live together at checkpoint {} ({})",
                    describe(&result),
                    cp.revision,
                    cp.description
                ),
            },
            false,
        ));
    }
    let mut has_the_old_versions = |cp: &CheckpointRecord| {
        downgrades
            .iter()
            .all(|(p, v)| cp.versions.get(*p).map(|e| &e.version) == Some(*v))
    };
    let nearest = view
        .history
        .newest_checkpoint_where(&mut has_the_old_versions)?
        .or_else(|| view.head.cloned());
    let nearest = nearest.as_ref();
    let moved: Vec<String> = downgrades
        .iter()
        .map(|(p, v)| format!("{p} back to {v}"))
        .collect();
    let suggestion = nearest
        .map(|cp| {
            format!(
                "; nearest known-good checkpoint: {} ({}: {}), restore it with `lockstep rollback {}`",
                cp.revision,
                cp.description,
                cp.versions
                    .iter()
                    .filter(|(p, _)| family.contains(*p))
                    .map(|(p, e)| format!("{p}={}", e.version))
                    .collect::<Vec<_>>()
                    .join(" "),
                cp.revision
            )
        })
        .unwrap_or_default();
    let detail = format!(
        "moving {} gives {}, a combination that was never live together (untested){suggestion}",
        join_and(&moved),
        describe(&result)
    );
    Ok(if force {
        (
            Precondition {
                name: "compatibility",
                passed: true,
                detail: format!("forced: {detail}"),
            },
            true,
        )
    } else {
        (
            Precondition {
                name: "compatibility",
                passed: false,
                detail: format!("{detail}; or pass --force to go live anyway"),
            },
            false,
        )
    })
}

fn build(
    view: &View<'_>,
    targets: BTreeMap<ProjectName, Target>,
    preconditions: Vec<Precondition>,
    forced: bool,
    reverts: Vec<TxId>,
    rollback_to: u64,
) -> Result<Plan> {
    let waves = waves(view, &targets.keys().cloned().collect());
    let wave_of: BTreeMap<&ProjectName, u32> = waves
        .iter()
        .enumerate()
        .flat_map(|(i, w)| w.iter().map(move |p| (p, i as u32)))
        .collect();
    let mut participants = Vec::new();
    for (project, target) in targets {
        let record = view.project("project", &project)?;
        let from_schema = view
            .head
            .and_then(|h| h.versions.get(&project))
            .and_then(|e| e.schema.clone());
        participants.push(Participant {
            endpoint: record.endpoint.clone(),
            from_version: view.live(&project).cloned(),
            action: view.action(&project, &target.version)?,
            to_version: target.version,
            artifact: target.artifact,
            metadata: target.metadata,
            vote: Default::default(),
            vote_reason: String::new(),
            acknowledged: false,
            wave: wave_of.get(&project).copied().unwrap_or(0),
            from_schema,
            to_schema: None,
            migrations: Vec::new(),
            delivery_error: String::new(),
            project,
        });
    }
    Ok(Plan {
        participants,
        waves,
        preconditions,
        forced,
        reverts,
        rollback_to,
    })
}

/// Phase 2 waves: a project goes in the wave after the last of its children taking part
/// (children go live before parents).
pub fn waves(view: &View<'_>, projects: &BTreeSet<ProjectName>) -> Vec<Vec<ProjectName>> {
    let mut wave: BTreeMap<ProjectName, usize> = BTreeMap::new();
    fn depth(
        view: &View<'_>,
        p: &ProjectName,
        projects: &BTreeSet<ProjectName>,
        memo: &mut BTreeMap<ProjectName, usize>,
        guard: usize,
    ) -> usize {
        if let Some(d) = memo.get(p) {
            return *d;
        }
        let children = view
            .projects
            .get(p)
            .map(|r| r.requires.clone())
            .unwrap_or_default();
        let d = children
            .iter()
            .filter(|c| projects.contains(*c) && guard < projects.len())
            .map(|c| depth(view, c, projects, memo, guard + 1) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(p.clone(), d);
        d
    }
    for p in projects {
        depth(view, p, projects, &mut wave, 0);
    }
    let mut out: Vec<Vec<ProjectName>> = Vec::new();
    for (p, w) in wave {
        if out.len() <= w {
            out.resize(w + 1, Vec::new());
        }
        out[w].push(p);
    }
    out.retain(|w| !w.is_empty());
    out
}

/// `A=T4A B=T4B` for a set of (project, version).
fn describe(result: &BTreeMap<&ProjectName, Option<&Version>>) -> String {
    result
        .iter()
        .map(|(p, v)| format!("{p}={}", v.map(|v| v.as_str()).unwrap_or("(none)")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn join(ids: &[TxId]) -> String {
    ids.iter()
        .map(|i| i.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `B`, `B and C`, `B, C and D`.
fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The description a checkpoint gets from the transaction that produced it.
pub fn checkpoint_description(tx: &TxRecord) -> String {
    let base = match tx.kind {
        TxKind::Release => format!("release {}", tx.id),
        TxKind::Revert => format!(
            "revert of {}",
            tx.reverts
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TxKind::Rollback => format!("rollback to {}", tx.rollback_to),
    };
    if tx.forced {
        format!("{base} (forced, untested combination)")
    } else {
        base
    }
}
