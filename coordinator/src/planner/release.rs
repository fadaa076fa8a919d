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
    error::Result,
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
