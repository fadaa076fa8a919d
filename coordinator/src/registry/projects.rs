//! Registering projects: children must be registered first, a project cannot require
//! itself, and the `requires` graph stays acyclic, so that waves (children before
//! parents) always exist.

use std::collections::BTreeMap;

use lockstep::{
    names::{Environment, FieldError, ProjectName},
    pb,
};
use lockstep_store::Batch;

use super::Registry;
use crate::{
    error::{CoordinatorError, Result},
    journal::Durable,
    model::ProjectRecord,
    tables::Tables,
};

impl Registry {
    /// Registers or updates a project; `false` when it was registered exactly so
    /// already. Durable (fsync) before it returns.
    pub async fn register_project(
        &self,
        project: ProjectRecord,
        actor: &str,
    ) -> Result<(ProjectRecord, bool)> {
        let written = {
            let mut s = self.state();
            let env_projects = s.projects.get(&project.environment);
            check_requires(env_projects, &project)?;
            if env_projects.and_then(|m| m.get(&project.name)) == Some(&project) {
                return Ok((project, false));
            }
            let mut batch = Batch::default();
            Tables::put_project(&mut batch, &project);
            s.changed(&project.environment);
            let env = s.projects.entry(project.environment.clone()).or_default();
            env.insert(project.name.clone(), project.clone());
            let mut event = registered(&project);
            event.actor = actor.to_string();
            let events = vec![event];
            self.inner.journal.append(batch, events, Durable::Now)
        };
        written.await?;
        Ok((project, true))
    }

    /// Projects of `env`, sorted by name.
    pub fn projects(&self, env: &Environment) -> Vec<ProjectRecord> {
        let s = self.state();
        let projects = s.projects.get(env);
        projects
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

type Projects = BTreeMap<ProjectName, ProjectRecord>;

fn check_requires(env_projects: Option<&Projects>, project: &ProjectRecord) -> Result<()> {
    for (i, child) in project.requires.iter().enumerate() {
        if child == &project.name {
            let reason = format!("project {} cannot require itself", project.name);
            return Err(FieldError::new(format!("requires[{i}]"), reason).into());
        }
        if !env_projects.is_some_and(|m| m.contains_key(child)) {
            return Err(CoordinatorError::NotFound(format!(
                "requires[{i}]: project {child} is not registered in environment {}; register children first",
                project.environment
            )));
        }
    }
    if let Some(path) = env_projects.and_then(|m| cycle_through(m, project)) {
        let reason = format!("would create a cycle: {path}");
        return Err(FieldError::new("requires", reason).into());
    }
    Ok(())
}

fn registered(project: &ProjectRecord) -> pb::Event {
    let requires = if project.requires.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = project.requires.iter().map(|r| r.as_str()).collect();
        format!(", requires {}", names.join(", "))
    };
    pb::Event {
        kind: pb::EventKind::ProjectRegistered as i32,
        environment: project.environment.to_string(),
        project: project.name.to_string(),
        message: format!("project {} at {}{requires}", project.name, project.endpoint),
        ..Default::default()
    }
}

/// If registering `project` would close a cycle, the cycle as `A -> B -> A`.
fn cycle_through(projects: &Projects, project: &ProjectRecord) -> Option<String> {
    for child in &project.requires {
        let mut path = vec![project.name.clone()];
        if reaches(projects, child, &project.name, &mut path) {
            let names: Vec<&str> = path.iter().map(|p| p.as_str()).collect();
            return Some(names.join(" -> "));
        }
    }
    None
}

/// Whether `target` is reachable from `from` through `requires`; `path` ends with the
/// way there when it is.
fn reaches(
    projects: &Projects,
    from: &ProjectName,
    target: &ProjectName,
    path: &mut Vec<ProjectName>,
) -> bool {
    if path.len() > projects.len() + 1 {
        return false;
    }
    path.push(from.clone());
    if from == target {
        return true;
    }
    let children = projects
        .get(from)
        .map(|p| p.requires.as_slice())
        .unwrap_or(&[]);
    if children
        .iter()
        .any(|child| reaches(projects, child, target, path))
    {
        return true;
    }
    path.pop();
    false
}
