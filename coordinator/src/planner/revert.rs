//! A revert: restores, for every project a committed release touched, the version it had
//! in the checkpoint before that release. Later releases built on it are either named
//! (`no-later-dependents` fails) or, with cascade, reverted together.

use std::collections::{BTreeMap, BTreeSet, btree_map::Entry};

use lockstep::names::{ProjectName, TxId};

use super::{
    Plan, Precondition, Target, View,
    rules::{add_children, children_live, compatibility},
    waves::build,
    words::join,
};
use crate::{
    error::{CoordinatorError, Result},
    model::{CheckpointRecord, TxKind, TxRecord, TxState},
};

/// Plans the revert of `release` (and, with `cascade`, of the later releases built on
/// it). Refuses outright what cannot be reverted at all; otherwise the rules say why.
pub(super) fn plan_revert(view: &View<'_>, release: &TxId, cascade: bool) -> Result<Plan> {
    let target_tx = revertible(view, release)?;
    base_checkpoint(view, release, &target_tx)?;
    let cascade = Cascade::resolve(view, target_tx, cascade)?;
    let reverts: Vec<TxId> = cascade.reverted.iter().map(|t| t.id.clone()).collect();
    let first = cascade.first_changes();
    let (mut targets, missing) = targets_before(view, &first)?;
    let mut preconditions = vec![earlier_state_exists(&missing, &first)];
    preconditions.push(no_later_dependents(&cascade.dependents, &reverts, release));
    add_children(view, &mut targets);
    preconditions.push(children_live(view, &targets));
    let (compat, _) = compatibility(view, &targets, None, None)?;
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
    if target_tx.kind == TxKind::Revert {
        // What it undid is quarantined: putting it back is a release, held to the
        // quarantine rule (`--allow-quarantined` needs `operate`).
        let versions: Vec<String> = (target_tx.participants.iter())
            .filter_map(|p| {
                p.from_version
                    .as_ref()
                    .map(|v| format!("{}={v}", p.project))
            })
            .collect();
        return Err(CoordinatorError::Refused(format!(
            "release_id: {release} is a revert, which is not revertible; to make live again what it undid, release it (`lockstep release create ID {} --allow-quarantined`)",
            versions.join(" ")
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

/// Refuses the revert of the first release: there is no earlier state to restore.
fn base_checkpoint(view: &View<'_>, release: &TxId, target_tx: &TxRecord) -> Result<()> {
    let before = target_tx.checkpoint.saturating_sub(1);
    if before > 0 && view.history.checkpoint(before)?.is_some() {
        return Ok(());
    }
    Err(CoordinatorError::Refused(format!(
        "release_id: {release} produced checkpoint {}, the first one: there is no earlier state to restore",
        target_tx.checkpoint
    )))
}

/// The releases a revert undoes, and the later ones it would undo without saying so.
struct Cascade {
    /// Reverted: the requested release first, then those cascade pulled in, oldest
    /// first.
    reverted: Vec<TxRecord>,
    /// Without cascade: the newest later release that took part in each project the
    /// reverted one did, with the `project=version` it made live.
    dependents: Vec<(TxId, String)>,
    /// The (project, first reverted release on it) already looked after: a pass of the
    /// fixpoint reads only what the last one changed.
    asked: BTreeSet<(ProjectName, TxId)>,
}

impl Cascade {
    /// Fixpoint: a committed release that took part in a project after a reverted one
    /// did (changed it, or came along unchanged with a parent it changed) was built on
    /// what the revert undoes. With cascade it is reverted
    /// too (its projects join the set); without, it is a dependent, and the rule fails.
    fn resolve(view: &View<'_>, first: TxRecord, cascade: bool) -> Result<Self> {
        let mut out = Cascade {
            reverted: vec![first],
            dependents: Vec::new(),
            asked: BTreeSet::new(),
        };
        while out.pull(view, cascade)? {}
        out.reverted[1..].sort_by_key(|t| t.checkpoint);
        Ok(out)
    }

    /// One pass over the reverted projects, each from the first reverted release that
    /// changed it. With cascade, every later release found joins (true: pass again, as
    /// its projects may pull in more); without, the newest of each is a dependent.
    fn pull(&mut self, view: &View<'_>, cascade: bool) -> Result<bool> {
        let limit = if cascade { usize::MAX } else { 1 };
        let mut pulled = false;
        for (project, first) in self.first_changes() {
            if !self.asked.insert((project.clone(), first.id.clone())) {
                continue;
            }
            for later in view.history.took_part_after(&project, &first, limit)? {
                if self.reverted.iter().any(|r| r.id == later.id) {
                    continue;
                }
                if cascade {
                    self.reverted.push(later);
                    pulled = true;
                } else {
                    self.add_dependent(&project, later);
                }
            }
        }
        Ok(pulled)
    }

    /// Names `later` with the version it made live on `project`, once.
    fn add_dependent(&mut self, project: &ProjectName, later: TxRecord) {
        if self.dependents.iter().any(|(id, _)| id == &later.id) {
            return;
        }
        let set = later.participants.iter().find(|p| &p.project == project);
        let live = set.map(|p| p.to_version.to_string()).unwrap_or_default();
        self.dependents
            .push((later.id, format!("{project}={live}")));
    }

    /// Each project a reverted release took part in, with the first (oldest) of them
    /// that did: the revert restores the version it had before that one.
    fn first_changes(&self) -> BTreeMap<ProjectName, TxRecord> {
        let mut out: BTreeMap<ProjectName, TxRecord> = BTreeMap::new();
        for tx in &self.reverted {
            for project in tx.projects() {
                let older = out
                    .get(project)
                    .is_some_and(|o| o.checkpoint < tx.checkpoint);
                if !older {
                    out.insert(project.clone(), tx.clone());
                }
            }
        }
        out
    }
}

/// Targets: each project at its version in the checkpoint before the first reverted
/// release that changed it (so no unlisted release's change is undone); and the
/// projects that had no version then (a revert cannot remove a project).
fn targets_before(
    view: &View<'_>,
    first: &BTreeMap<ProjectName, TxRecord>,
) -> Result<(BTreeMap<ProjectName, Target>, Vec<String>)> {
    let mut bases: BTreeMap<u64, Option<CheckpointRecord>> = BTreeMap::new();
    let (mut targets, mut missing) = (BTreeMap::new(), Vec::new());
    for (project, tx) in first {
        let before = tx.checkpoint.saturating_sub(1);
        let base = match bases.entry(before) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => new.insert(view.history.checkpoint(before)?),
        };
        match base.as_ref().and_then(|b| b.versions.get(project)) {
            Some(entry) => {
                targets.insert(project.clone(), Target::restored(entry));
            }
            None => missing.push(format!("{project} (before {})", tx.id)),
        }
    }
    Ok((targets, missing))
}

/// `earlier-state-exists`: every touched project had a version in the checkpoint
/// before the first reverted release that changed it (each such state named).
fn earlier_state_exists(
    missing: &[String],
    first: &BTreeMap<ProjectName, TxRecord>,
) -> Precondition {
    if !missing.is_empty() {
        return Precondition {
            name: "earlier-state-exists",
            passed: false,
            detail: format!(
                "{} had no version before; a revert cannot remove a project",
                missing.join(", ")
            ),
        };
    }
    let mut states: Vec<(u64, &TxId)> = first.values().map(|t| (t.checkpoint, &t.id)).collect();
    states.sort();
    states.dedup();
    let states: Vec<String> = states
        .iter()
        .map(|(cp, id)| format!("checkpoint {}, the state before {id}", cp.saturating_sub(1)))
        .collect();
    Precondition {
        name: "earlier-state-exists",
        passed: true,
        detail: format!("every project has a version in {}", states.join("; ")),
    }
}

/// `no-later-dependents`: no later committed release took part in what the revert undoes, or
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
                format!("no later committed release took part in what {release} changed")
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
