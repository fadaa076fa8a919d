//! Requests to plan and assertions on plans, in the words of the stories.

use std::collections::BTreeMap;

use lockstep::names::ProjectName;

use super::story::{Story, id, p, v};
use crate::{
    error::CoordinatorError,
    model::{Action, ComponentSpec, Request},
    planner::{Plan, Precondition, plan},
};

pub(super) fn release(components: &[(&str, &str)]) -> Request {
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

pub(super) fn forced(request: Request) -> Request {
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

pub(super) fn allowing_quarantined(request: Request) -> Request {
    match request {
        Request::Release {
            components, force, ..
        } => Request::Release {
            components,
            force,
            allow_quarantined: true,
        },
        Request::Rollback { revision, .. } => Request::Rollback {
            revision,
            allow_quarantined: true,
        },
        other => other,
    }
}

pub(super) fn revert(release: &str, cascade: bool) -> Request {
    Request::Revert {
        release: id(release),
        cascade,
    }
}

pub(super) fn rollback(revision: u64) -> Request {
    Request::Rollback {
        revision,
        allow_quarantined: false,
    }
}

/// The precondition `name` of `plan` (a panic lists those there are).
pub(super) fn rule<'p>(plan: &'p Plan, name: &str) -> &'p Precondition {
    plan.preconditions
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", plan.preconditions))
}

/// Asserts the outcome of rule `name` and that its detail says every one of `words`.
pub(super) fn assert_rule(plan: &Plan, name: &str, passed: bool, words: &[&str]) {
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
pub(super) fn targets(plan: &Plan) -> String {
    let targets = plan
        .participants
        .iter()
        .map(|part| format!("{}={}", part.project, part.to_version));
    targets.collect::<Vec<_>>().join(" ")
}

pub(super) fn from_versions(plan: &Plan) -> Vec<Option<String>> {
    let from = plan.participants.iter();
    from.map(|part| part.from_version.as_ref().map(|v| v.to_string()))
        .collect()
}

pub(super) fn actions(plan: &Plan) -> Vec<Action> {
    plan.participants.iter().map(|part| part.action).collect()
}

pub(super) fn wave_names(waves: &[Vec<ProjectName>]) -> Vec<Vec<String>> {
    let names = |w: &Vec<ProjectName>| w.iter().map(|p| p.to_string()).collect();
    waves.iter().map(names).collect()
}

pub(super) fn message(err: CoordinatorError) -> String {
    match err {
        CoordinatorError::NotFound(m) => format!("not found: {m}"),
        CoordinatorError::Refused(m) => format!("refused: {m}"),
        other => format!("other: {other}"),
    }
}

pub(super) fn plan_err(story: &Story, request: &Request) -> String {
    message(plan(&story.view(), request).unwrap_err())
}
