//! A rollback: restores a whole checkpoint, by revision (0: the one before the head).

use std::collections::BTreeMap;

use lockstep::names::ProjectName;

use super::{
    Plan, Precondition, Target, View,
    rules::{add_children, children_live, compatibility, quarantine_rule},
    waves::build,
};
use crate::{
    error::{CoordinatorError, Result},
    model::CheckpointRecord,
};

/// Plans the restore of checkpoint `revision`: every registered project whose live
/// version differs from the checkpoint's moves to it; projects the checkpoint does not
/// know stay as they are. Every release rule holds: versions a revert pulled stay
/// pulled unless `allow_quarantined` (a rollback right after a revert would otherwise
/// undo it). The checkpoint's other projects are held, unchanged, while it runs: a
/// release of one of them in flight commits first, and the rollback, planned again at
/// its turn, restores that project too, so the state it leaves is the checkpoint's
/// (stop 54: it used to leave the release's version, planned against a live state the
/// release then changed).
pub(super) fn plan_rollback(
    view: &View<'_>,
    revision: u64,
    allow_quarantined: bool,
) -> Result<Plan> {
    let (revision, cp) = checkpoint_to_restore(view, revision)?;
    let mut targets = changed_targets(view, &cp);
    let mut preconditions = vec![changes_something(&targets, revision, &cp)];
    preconditions.extend(projects_outside_checkpoint(view, revision, &cp));
    add_children(view, &mut targets);
    preconditions.push(children_live(view, &targets));
    preconditions.push(quarantine_rule(view, &targets, allow_quarantined));
    let (compat, _) = compatibility(view, &targets, None, None)?;
    preconditions.push(compat);
    let mut plan = build(view, targets, preconditions, false, Vec::new(), revision)?;
    let moved = plan.projects();
    let unchanged = cp
        .versions
        .keys()
        .filter(|p| view.projects.contains_key(*p));
    plan.reads
        .extend(unchanged.filter(|p| !moved.contains(*p)).cloned());
    Ok(plan)
}

/// The resolved revision and its checkpoint; NotFound names the latest one.
fn checkpoint_to_restore(view: &View<'_>, revision: u64) -> Result<(u64, CheckpointRecord)> {
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
    Ok((revision, cp))
}

/// The checkpoint's versions that differ from the live ones, for registered projects.
fn changed_targets(view: &View<'_>, cp: &CheckpointRecord) -> BTreeMap<ProjectName, Target> {
    let mut targets = BTreeMap::new();
    for (project, entry) in &cp.versions {
        if view.live(project) != Some(&entry.version) && view.projects.contains_key(project) {
            targets.insert(project.clone(), Target::restored(entry));
        }
    }
    targets
}

/// `changes-something`: a rollback to the live state is refused.
fn changes_something(
    targets: &BTreeMap<ProjectName, Target>,
    revision: u64,
    cp: &CheckpointRecord,
) -> Precondition {
    Precondition {
        name: "changes-something",
        passed: !targets.is_empty(),
        detail: if targets.is_empty() {
            format!("the live state already equals checkpoint {revision}")
        } else {
            format!("restores checkpoint {revision} ({})", cp.description)
        },
    }
}

/// `projects-outside-checkpoint` (informative, always passes): live projects the
/// checkpoint does not know, which the rollback leaves as they are. None when there are
/// none.
fn projects_outside_checkpoint(
    view: &View<'_>,
    revision: u64,
    cp: &CheckpointRecord,
) -> Option<Precondition> {
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
    (!untouched.is_empty()).then(|| Precondition {
        name: "projects-outside-checkpoint",
        passed: true,
        detail: format!(
            "{} did not exist at checkpoint {revision} and stay as they are",
            untouched.join(", ")
        ),
    })
}
