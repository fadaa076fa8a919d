//! A release: the caller names the versions; the rules decide whether they may go live
//! together.

use std::collections::BTreeMap;

use lockstep::names::ProjectName;

use super::{
    Plan, Target, View,
    rules::{children_included, compatibility, quarantine_rule},
    waves::build,
};
use crate::{
    error::{CoordinatorError, Result},
    model::{CheckpointRecord, ComponentSpec},
};

/// Plans a release of `components`: every project must be registered; the rules are
/// checked in the order children-included, quarantine, compatibility.
pub(super) fn plan_release(
    view: &View<'_>,
    components: &[ComponentSpec],
    force: bool,
    allow_quarantined: bool,
) -> Result<Plan> {
    let targets = requested_targets(view, components)?;
    let mut preconditions = vec![children_included(view, &targets)];
    preconditions.push(quarantine_rule(view, &targets, allow_quarantined));
    let (compat, forced) = compatibility(view, &targets, force, None)?;
    preconditions.push(compat);
    build(view, targets, preconditions, forced, Vec::new(), 0)
}

/// Plans a promotion: a release of `components`, under the same rules, except that a
/// combination `upstream` ran (verified there) counts as tested here. An untested
/// upstream (promoted with --force) vouches for nothing and makes the promotion
/// forced: it never arrives as a tested state.
pub(super) fn plan_promotion(
    view: &View<'_>,
    components: &[ComponentSpec],
    force: bool,
    upstream: &CheckpointRecord,
) -> Result<Plan> {
    let targets = requested_targets(view, components)?;
    let mut preconditions = vec![children_included(view, &targets)];
    preconditions.push(quarantine_rule(view, &targets, false));
    let verified = Some(upstream).filter(|u| !u.untested);
    let (compat, forced) = compatibility(view, &targets, force, verified)?;
    preconditions.push(compat);
    let forced = forced || upstream.untested;
    build(view, targets, preconditions, forced, Vec::new(), 0)
}

/// The requested components as targets; an unregistered project is NotFound, naming
/// the component's field.
fn requested_targets(
    view: &View<'_>,
    components: &[ComponentSpec],
) -> Result<BTreeMap<ProjectName, Target>> {
    let mut targets = BTreeMap::new();
    for (i, c) in components.iter().enumerate() {
        view.project(&format!("components[{i}].project"), &c.project)?;
        one_build(view, i, c)?;
        targets.insert(
            c.project.clone(),
            Target {
                artifact: c.artifact.clone(),
                metadata: c.metadata.clone(),
                ..Target::at(c.version.clone())
            },
        );
    }
    Ok(targets)
}

/// A version names one build: an agent keeps `releases/<version>` as it is, and a
/// restore sends the artifact recorded for the version. So a committed version is not
/// released again from another artifact (that build needs a version of its own).
fn one_build(view: &View<'_>, i: usize, c: &ComponentSpec) -> Result<()> {
    if c.artifact.is_empty() {
        return Ok(());
    }
    let Some(build) = view.history.build(&c.project, &c.version)? else {
        return Ok(());
    };
    if build.artifact.is_empty() || build.artifact == c.artifact {
        return Ok(());
    }
    Err(CoordinatorError::Refused(format!(
        "components[{i}].artifact: {}={} was committed from {} in {}; a version names one build (agents keep releases/<version> as it is, and a revert restores the recorded artifact), so give {} a version of its own",
        c.project, c.version, build.artifact, view.environment, c.artifact
    )))
}
