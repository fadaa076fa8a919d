//! A release: the caller names the versions; the rules decide whether they may go live
//! together.

use std::collections::BTreeMap;

use lockstep::names::{Environment, ProjectName};

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
    let targets = requested_targets(view, components, None)?;
    let mut preconditions = vec![children_included(view, &targets)];
    preconditions.push(quarantine_rule(view, &targets, allow_quarantined));
    let (compat, forced) = compatibility(view, &targets, Some(force), None)?;
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
    let targets = requested_targets(view, components, Some(&upstream.environment))?;
    let mut preconditions = vec![children_included(view, &targets)];
    preconditions.push(quarantine_rule(view, &targets, false));
    let verified = Some(upstream).filter(|u| !u.untested);
    let (compat, forced) = compatibility(view, &targets, Some(force), verified)?;
    preconditions.push(compat);
    let forced = forced || upstream.untested;
    build(view, targets, preconditions, forced, Vec::new(), 0)
}

/// The requested components as targets; an unregistered project is NotFound, naming
/// the component's field. `upstream`: the environment a promotion brings them from.
fn requested_targets(
    view: &View<'_>,
    components: &[ComponentSpec],
    upstream: Option<&Environment>,
) -> Result<BTreeMap<ProjectName, Target>> {
    let mut targets = BTreeMap::new();
    for (i, c) in components.iter().enumerate() {
        view.project(&format!("components[{i}].project"), &c.project)?;
        one_build(view, i, c, upstream)?;
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
/// restore sends the artifact recorded for the version. So a version committed before
/// is not released (or promoted) again from another artifact: that build needs a
/// version of its own.
fn one_build(
    view: &View<'_>,
    i: usize,
    c: &ComponentSpec,
    upstream: Option<&Environment>,
) -> Result<()> {
    let Some(recorded) = other_build(view, c)? else {
        return Ok(());
    };
    let (field, given) = match upstream {
        None => (format!("components[{i}].artifact"), c.artifact.clone()),
        Some(env) => ("from".to_string(), format!("{env}'s build, {}", c.artifact)),
    };
    Err(CoordinatorError::Refused(format!(
        "{field}: {}={} was committed in {} {recorded}; a version names one build (agents keep releases/<version> as it is, and a revert restores the recorded artifact), so {given} needs a version of its own",
        c.project, c.version, view.environment
    )))
}

/// How the version `c` names was committed before (`from ARTIFACT`, or `without an
/// artifact`) when `c` brings another build of it; none when it brings none, the same
/// one, or the version is live now (it stays as it is: nothing is staged). A version
/// never live (every upgrade) costs no read of its own: `was_live` is the one the
/// plan's rules ask anyway (and remember).
fn other_build(view: &View<'_>, c: &ComponentSpec) -> Result<Option<String>> {
    let (project, version) = (&c.project, &c.version);
    let live_now = view.live(project) == Some(version);
    if c.artifact.is_empty() || live_now || !view.history.was_live(project, version)? {
        return Ok(None);
    }
    Ok(match view.history.build(project, version)? {
        Some(b) if !b.artifact.is_empty() => {
            (b.artifact != c.artifact).then(|| format!("from {}", b.artifact))
        }
        _ => Some("without an artifact".to_string()),
    })
}
