//! A revert: restores, for every project a committed release touched, the version it had
//! in the checkpoint before that release. Later releases built on it are either named
//! (`no-later-dependents` fails) or, with cascade, reverted together.

use std::collections::{BTreeMap, BTreeSet};

use lockstep::names::{ProjectName, TxId, Version};

use super::{
    Plan, Precondition, Target, View,
    rules::{add_children, compatibility},
    waves::build,
    words::join,
};
use crate::{
    error::{CoordinatorError, Result},
    model::{CheckpointRecord, TxRecord, TxState},
};

/// Plans the revert of `release` (and, with `cascade`, of the later releases built on
/// it). Refuses outright what cannot be reverted at all; otherwise the rules say why.
pub(super) fn plan_revert(view: &View<'_>, release: &TxId, cascade: bool) -> Result<Plan> {
    let target_tx = revertible(view, release)?;
    let (before, base) = base_checkpoint(view, release, &target_tx)?;
    let cascade = Cascade::resolve(view, target_tx, cascade)?;
    let reverts: Vec<TxId> = cascade.reverted.iter().map(|t| t.id.clone()).collect();
    let (mut targets, missing) = targets_in(&base, &cascade.touched());
    let mut preconditions = vec![earlier_state_exists(&missing, before, release)];
    preconditions.push(no_later_dependents(&cascade.dependents, &reverts, release));
    add_children(view, &mut targets);
    let (compat, _) = compatibility(view, &targets, false, None)?;
    preconditions.push(compat);
    build(view, targets, preconditions, false, reverts, 0)
}

/// The transaction to revert: it must exist, belong to the environment and be committed.
fn revertible(view: &View<'_>, release: &TxId) -> Result<TxRecord> {
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
    Ok(target_tx)
}

/// The checkpoint before the one `target_tx` produced (with its revision): the state the
/// revert restores. The first release has none.
fn base_checkpoint(
    view: &View<'_>,
    release: &TxId,
    target_tx: &TxRecord,
) -> Result<(u64, CheckpointRecord)> {
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
    Ok((before, base))
}

/// The releases a revert undoes, and the later ones it would undo without saying so.
struct Cascade {
    /// Reverted, the requested release first, then those cascade pulled in.
    reverted: Vec<TxRecord>,
    /// Without cascade: later releases built on the reverted one, with the
    /// `project=version` they made live.
    dependents: Vec<(TxId, String)>,
}

impl Cascade {
    /// Fixpoint: a project whose live version is no longer the one the reverted
    /// transactions set was changed by a later release, which depends on what the revert
    /// undoes. With cascade that release is reverted too and its projects join the set.
    fn resolve(view: &View<'_>, first: TxRecord, cascade: bool) -> Result<Self> {
        let after = first.checkpoint;
        let mut out = Cascade {
            reverted: vec![first],
            dependents: Vec::new(),
        };
        while out.pull_one(view, after, cascade)? {}
        Ok(out)
    }

    /// One pass over the reverted projects. With cascade, stops at the first later
    /// release found and reverts it too (true: pass again); without, records every one
    /// as a dependent (false: done).
    fn pull_one(&mut self, view: &View<'_>, after: u64, cascade: bool) -> Result<bool> {
        for (project, set_to) in versions_set_by(&self.reverted) {
            let Some((culprit, live)) = changed_later(view, after, &project, &set_to)? else {
                continue;
            };
            if self.reverted.iter().any(|r| r.id == culprit.id) {
                continue;
            }
            if cascade {
                self.reverted.push(culprit);
                return Ok(true);
            } else if !self.dependents.iter().any(|(id, _)| id == &culprit.id) {
                self.dependents
                    .push((culprit.id, format!("{project}={live}")));
            }
        }
        Ok(false)
    }

    /// Every project a reverted transaction took part in.
    fn touched(&self) -> BTreeSet<ProjectName> {
        self.reverted
            .iter()
            .flat_map(|t| t.projects().cloned())
            .collect()
    }
}

/// The release after checkpoint `after` that made `project`'s live version what it is,
/// when that is no longer `set_to` (the newest one that moved it there), with that live
/// version.
fn changed_later<'v>(
    view: &'v View<'_>,
    after: u64,
    project: &ProjectName,
    set_to: &Version,
) -> Result<Option<(TxRecord, &'v Version)>> {
    let Some(live) = view.live(project).filter(|live| *live != set_to) else {
        return Ok(None);
    };
    let culprit = view.history.made_live_after(project, live, after)?;
    Ok(culprit.map(|culprit| (culprit, live)))
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

/// Targets: each touched project at its version in `base`; and the projects `base` has
/// no version for (a revert cannot remove a project).
fn targets_in(
    base: &CheckpointRecord,
    touched: &BTreeSet<ProjectName>,
) -> (BTreeMap<ProjectName, Target>, Vec<String>) {
    let mut targets = BTreeMap::new();
    let mut missing = Vec::new();
    for project in touched {
        match base.versions.get(project) {
            Some(entry) => {
                targets.insert(project.clone(), Target::restored(entry));
            }
            None => missing.push(project.to_string()),
        }
    }
    (targets, missing)
}

/// `earlier-state-exists`: every touched project had a version before the release.
fn earlier_state_exists(missing: &[String], before: u64, release: &TxId) -> Precondition {
    Precondition {
        name: "earlier-state-exists",
        passed: missing.is_empty(),
        detail: if missing.is_empty() {
            format!(
                "every project has a version in checkpoint {before}, the state before {release}"
            )
        } else {
            format!(
                "{} had no version before {release} (checkpoint {before}); a revert cannot remove a project",
                missing.join(", ")
            )
        },
    }
}

/// `no-later-dependents`: no later committed release changed what the revert undoes, or
/// cascade reverts those releases too (then named).
fn no_later_dependents(
    dependents: &[(TxId, String)],
    reverts: &[TxId],
    release: &TxId,
) -> Precondition {
    if dependents.is_empty() {
        return Precondition {
            name: "no-later-dependents",
            passed: true,
            detail: if reverts.len() > 1 {
                format!("cascade also reverts {}", join(&reverts[1..]))
            } else {
                format!("no later committed release changed what {release} changed")
            },
        };
    }
    let ids: Vec<TxId> = dependents.iter().map(|(id, _)| id.clone()).collect();
    let live: Vec<String> = dependents
        .iter()
        .map(|(id, pv)| format!("{pv} by {id}"))
        .collect();
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
}
