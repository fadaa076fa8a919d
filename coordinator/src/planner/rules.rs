//! The release rules shared by releases, reverts and rollbacks: `children-included`,
//! `quarantine` and `compatibility`, and the adding of children at their live version.

use std::collections::{BTreeMap, BTreeSet};

use lockstep::names::{ProjectName, Version};

use super::{
    Precondition, Target, View,
    words::{describe, join_and},
};
use crate::{
    error::Result,
    model::{Action, CheckpointRecord, LiveEntry},
};

/// Projects moving back, with the version each moves back to.
type Downgrades<'t> = BTreeMap<&'t ProjectName, &'t Version>;
/// A family's versions after the plan: the target, else the live version.
type Outcome<'t> = BTreeMap<&'t ProjectName, Option<&'t Version>>;

/// Adds every child of a parent in `targets` (transitively) at its live version.
pub(super) fn add_children(view: &View<'_>, targets: &mut BTreeMap<ProjectName, Target>) {
    let parents: Vec<ProjectName> = targets.keys().cloned().collect();
    for parent in parents {
        for child in view.descendants(&parent) {
            if let (false, Some(live)) = (targets.contains_key(&child), view.live(&child)) {
                targets.insert(child, Target::at(live.clone()));
            }
        }
    }
}

/// `children-included`: every parent in `targets` comes with all its descendants.
pub(super) fn children_included(
    view: &View<'_>,
    targets: &BTreeMap<ProjectName, Target>,
) -> Precondition {
    children_rule(view, targets, |_| "add them to the release")
}

/// `children-included` for a revert or a rollback, after [`add_children`] brought
/// every live child along: what is still missing has nothing live, so the parent
/// cannot move until it is released (a parent never moves without its children).
pub(super) fn children_live(
    view: &View<'_>,
    targets: &BTreeMap<ProjectName, Target>,
) -> Precondition {
    children_rule(view, targets, |n| match n {
        1 => "release it first",
        _ => "release them first",
    })
}

/// The rule itself; `remedy` says what to do, given how many children are missing.
fn children_rule(
    view: &View<'_>,
    targets: &BTreeMap<ProjectName, Target>,
    remedy: fn(usize) -> &'static str,
) -> Precondition {
    let problems: Vec<String> = targets
        .keys()
        .filter_map(|project| {
            let missing = missing_children(view, targets, project);
            (!missing.is_empty()).then(|| {
                let fix = remedy(missing.len());
                format!("{project} requires {}; {fix}", join_and(&missing))
            })
        })
        .collect();
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

/// The descendants of `project` not in `targets`, each with its live version.
fn missing_children(
    view: &View<'_>,
    targets: &BTreeMap<ProjectName, Target>,
    project: &ProjectName,
) -> Vec<String> {
    view.descendants(project)
        .into_iter()
        .filter(|c| !targets.contains_key(c))
        .map(|c| match view.live(&c) {
            Some(v) => format!("{c} (live: {v})"),
            None => format!("{c} (nothing live)"),
        })
        .collect()
}

/// `quarantine`: no target moves to a version a revert pulled, unless `allowed`.
pub(super) fn quarantine_rule(
    view: &View<'_>,
    targets: &BTreeMap<ProjectName, Target>,
    allowed: bool,
) -> Precondition {
    let pulled = pulled_by_reverts(view, targets);
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

/// The quarantined targets, grouped by the revert that pulled them:
/// `A=T4A, B=T4B were pulled by R (revert of T4)`.
fn pulled_by_reverts(view: &View<'_>, targets: &BTreeMap<ProjectName, Target>) -> Vec<String> {
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
    by_revert
        .into_iter()
        .map(|((revert, release), versions)| {
            let verb = if versions.len() == 1 { "was" } else { "were" };
            format!(
                "{} {verb} pulled by {revert} (revert of {release})",
                versions.join(", ")
            )
        })
        .collect()
}

/// The compatibility guard. Returns the precondition and whether the plan is forced.
/// `force`: whether a release was given `--force`; `None` for a revert or rollback,
/// which cannot be forced (the refusal then names what can go live anyway).
pub(super) fn compatibility(
    view: &View<'_>,
    targets: &BTreeMap<ProjectName, Target>,
    force: Option<bool>,
    upstream: Option<&CheckpointRecord>,
) -> Result<(Precondition, bool)> {
    let downgrades = downgrades(view, targets)?;
    if downgrades.is_empty() {
        let detail = "no project moves back to an older version".into();
        return Ok((compatible(detail), false));
    }
    let family = family_read(view, targets, &downgrades);
    let result = outcome(view, &family, targets);
    if let Some(cp) = checkpoint_matching(view, &result)? {
        let detail = format!(
            "{} was live together at checkpoint {} ({})",
            describe(&result),
            cp.revision,
            cp.description
        );
        return Ok((compatible(detail), false));
    }
    if let Some(cp) = upstream.filter(|cp| ran_together(cp, &result)) {
        let detail = format!(
            "{} was live together, verified, at {} checkpoint {}",
            describe(&result),
            cp.environment,
            cp.revision
        );
        return Ok((compatible(detail), false));
    }
    let nearest = nearest_known_good(view, &downgrades, &family)?;
    let detail = untested(&downgrades, &result, nearest.as_ref(), &family);
    Ok(match force {
        Some(true) => (compatible(format!("forced: {detail}")), true),
        Some(false) => {
            let detail = format!("{detail}; or pass --force to go live anyway");
            (incompatible(detail), false)
        }
        None => {
            let detail = format!(
                "{detail}; a revert or rollback cannot be forced: to go live anyway, release those versions with `lockstep release create ID PROJECT=VERSION... --force` (permission operate)"
            );
            (incompatible(detail), false)
        }
    })
}

/// The projects whose live versions `compatibility` reads beyond `targets`: a move
/// back's whole family (what the result is checked over), nothing otherwise.
pub(super) fn read_beyond(
    view: &View<'_>,
    targets: &BTreeMap<ProjectName, Target>,
) -> Result<BTreeSet<ProjectName>> {
    let mut family = family_read(view, targets, &downgrades(view, targets)?);
    family.retain(|p| !targets.contains_key(p));
    Ok(family)
}

/// The family a move back is checked over (none without one).
fn family_read(
    view: &View<'_>,
    targets: &BTreeMap<ProjectName, Target>,
    downgrades: &Downgrades<'_>,
) -> BTreeSet<ProjectName> {
    match downgrades.is_empty() {
        true => BTreeSet::new(),
        false => view.family(&targets.keys().cloned().collect()),
    }
}

/// The targets that move a project back to a version it had live before.
fn downgrades<'t>(
    view: &View<'_>,
    targets: &'t BTreeMap<ProjectName, Target>,
) -> Result<Downgrades<'t>> {
    let mut downgrades = BTreeMap::new();
    for (p, t) in targets {
        if view.action(p, &t.version)? == Action::Downgrade {
            downgrades.insert(p, &t.version);
        }
    }
    Ok(downgrades)
}

/// What the family would run after the plan.
fn outcome<'t>(
    view: &'t View<'_>,
    family: &'t BTreeSet<ProjectName>,
    targets: &'t BTreeMap<ProjectName, Target>,
) -> Outcome<'t> {
    family
        .iter()
        .map(|p| {
            (
                p,
                targets.get(p).map(|t| &t.version).or_else(|| view.live(p)),
            )
        })
        .collect()
}

/// The newest checkpoint where the family ran exactly `result`.
fn checkpoint_matching(view: &View<'_>, result: &Outcome<'_>) -> Result<Option<CheckpointRecord>> {
    let having: Vec<_> = result
        .iter()
        .filter_map(|(p, v)| v.map(|v| (*p, v)))
        .collect();
    view.history
        .newest_checkpoint_where(&having, &mut |cp| ran_together(cp, result))
}

/// Whether `cp` ran exactly the family's versions of `result`.
fn ran_together(cp: &CheckpointRecord, result: &Outcome<'_>) -> bool {
    result
        .iter()
        .all(|(p, v)| cp.versions.get(*p).map(|e| &e.version) == *v)
}

/// The newest checkpoint that has every old version the plan moves back to, holds
/// every project of the `family` (a rollback to it then restores the whole family as
/// it ran together, which the guard accepts), and is known good (not untested, no
/// version a revert pulled), else the head: what to suggest instead of an untested
/// combination.
fn nearest_known_good(
    view: &View<'_>,
    downgrades: &Downgrades<'_>,
    family: &BTreeSet<ProjectName>,
) -> Result<Option<CheckpointRecord>> {
    let mut has_the_old_versions = |cp: &CheckpointRecord| {
        downgrades
            .iter()
            .all(|(p, v)| cp.versions.get(*p).map(|e| &e.version) == Some(*v))
            && family.iter().all(|p| cp.versions.contains_key(p))
            && known_good(view, cp)
    };
    let having: Vec<_> = downgrades.iter().map(|(p, v)| (*p, *v)).collect();
    Ok(view
        .history
        .newest_checkpoint_where(&having, &mut has_the_old_versions)?
        .or_else(|| view.head.cloned()))
}

/// Whether `cp` may be suggested: it was tested, and no revert pulled its versions.
fn known_good(view: &View<'_>, cp: &CheckpointRecord) -> bool {
    let pulled = |(p, e): (&ProjectName, &LiveEntry)| {
        view.quarantine
            .contains_key(&(p.clone(), e.version.clone()))
    };
    !cp.untested && !cp.versions.iter().any(pulled)
}

/// Why the combination is untested, with the rollback that would restore a known-good
/// one.
fn untested(
    downgrades: &Downgrades<'_>,
    result: &Outcome<'_>,
    nearest: Option<&CheckpointRecord>,
    family: &BTreeSet<ProjectName>,
) -> String {
    let moved: Vec<String> = downgrades
        .iter()
        .map(|(p, v)| format!("{p} back to {v}"))
        .collect();
    let suggestion = nearest
        .map(|cp| rollback_suggestion(cp, family))
        .unwrap_or_default();
    format!(
        "moving {} gives {}, a combination that was never live together (untested){suggestion}",
        join_and(&moved),
        describe(result)
    )
}

/// `; nearest known-good checkpoint: 3 (release T3: A=T1A B=T2B C=T3C), restore it with
/// `lockstep rollback 3``, over the family's projects.
fn rollback_suggestion(cp: &CheckpointRecord, family: &BTreeSet<ProjectName>) -> String {
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
}

/// A passed `compatibility`.
fn compatible(detail: String) -> Precondition {
    Precondition {
        name: "compatibility",
        passed: true,
        detail,
    }
}

/// A failed `compatibility`.
fn incompatible(detail: String) -> Precondition {
    Precondition {
        name: "compatibility",
        passed: false,
        detail,
    }
}
