//! Phase 2 waves (children go live before parents) and the assembly of a [`Plan`] from
//! its targets.

use std::collections::{BTreeMap, BTreeSet};

use lockstep::names::{ProjectName, TxId};

use super::{Plan, Precondition, Target, View, rules::read_beyond};
use crate::{error::Result, model::Participant};

/// Phase 2 waves: a project goes in the wave after the last of its children taking part
/// (children go live before parents). Public so the coordinator can order the phase 2
/// of any set of projects the same way a plan does.
pub fn waves(view: &View<'_>, projects: &BTreeSet<ProjectName>) -> Vec<Vec<ProjectName>> {
    let mut wave: BTreeMap<ProjectName, usize> = BTreeMap::new();
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

/// The wave of `p`: one more than its deepest child among `projects` (0 without any),
/// memoised; `guard` bounds the recursion should `requires` ever form a cycle.
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
    let d = view
        .children(p)
        .iter()
        .filter(|c| projects.contains(*c) && guard < projects.len())
        .map(|c| depth(view, c, projects, memo, guard + 1) + 1)
        .max()
        .unwrap_or(0);
    memo.insert(p.clone(), d);
    d
}

/// The plan from its targets: participants with from/to versions, action and wave.
pub(super) fn build(
    view: &View<'_>,
    targets: BTreeMap<ProjectName, Target>,
    preconditions: Vec<Precondition>,
    forced: bool,
    reverts: Vec<TxId>,
    rollback_to: u64,
) -> Result<Plan> {
    let reads = read_beyond(view, &targets)?;
    let waves = waves(view, &targets.keys().cloned().collect());
    let wave_of: BTreeMap<&ProjectName, u32> = waves
        .iter()
        .enumerate()
        .flat_map(|(i, w)| w.iter().map(move |p| (p, i as u32)))
        .collect();
    let mut participants = Vec::new();
    for (project, target) in targets {
        let wave = wave_of.get(&project).copied().unwrap_or(0);
        participants.push(participant(view, project, target, wave)?);
    }
    Ok(Plan {
        participants,
        waves,
        preconditions,
        forced,
        reverts,
        rollback_to,
        reads,
    })
}

/// One participant of a plan, before phase 1: no vote, no schema staged yet.
fn participant(
    view: &View<'_>,
    project: ProjectName,
    target: Target,
    wave: u32,
) -> Result<Participant> {
    let record = view.project("project", &project)?;
    let from_schema = view
        .head
        .and_then(|h| h.versions.get(&project))
        .and_then(|e| e.schema.clone());
    let mut target = target;
    if target.restore
        && let Some(build) = view.history.build(&project, &target.version)?
    {
        target.artifact = build.artifact;
        target.metadata = build.metadata;
    }
    Ok(Participant {
        endpoint: record.endpoint.clone(),
        from_version: view.live(&project).cloned(),
        action: view.action(&project, &target.version)?,
        to_version: target.version,
        artifact: target.artifact,
        metadata: target.metadata,
        vote: Default::default(),
        vote_reason: String::new(),
        acknowledged: false,
        wave,
        from_schema,
        to_schema: None,
        migrations: Vec::new(),
        test_uri: String::new(),
        staged_artifact: String::new(),
        delivery_error: String::new(),
        needs_resolution: false,
        resolution: None,
        restore: target.restore,
        target_schema: target.schema,
        project,
    })
}
