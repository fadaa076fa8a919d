//! Declared environments and the promotion path between them (`after`: upstreams).
//! Upstreams must be declared first and the graph stays acyclic, so that a promotion
//! path always leads somewhere. An environment that only has projects is known too,
//! undeclared, with no upstream.

use std::collections::BTreeSet;

use lockstep::{
    names::{Environment, FieldError},
    pb,
};
use lockstep_store::Batch;

use super::{Registry, State};
use crate::{
    error::{CoordinatorError, Result},
    journal::Durable,
    model::EnvironmentRecord,
    tables::Tables,
};

/// An environment as readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentView {
    /// Its record (undeclared ones: no upstream, no author).
    pub record: EnvironmentRecord,
    /// Declared with AddEnvironment.
    pub declared: bool,
    /// Environments that name it in `after`.
    pub before: Vec<Environment>,
    /// Its registered projects.
    pub projects: Vec<String>,
    /// Its live checkpoint (0: none).
    pub checkpoint: u64,
}

impl Registry {
    /// Declares `record` (or changes its upstreams); `false` when it was declared
    /// exactly so already. Durable (fsync) before it returns.
    /// Its stages (from a pipeline file) stay as they are.
    pub async fn add_environment(
        &self,
        mut record: EnvironmentRecord,
    ) -> Result<(EnvironmentRecord, bool)> {
        let written = {
            let mut s = self.state();
            check_after(&s, &record)?;
            match s.environments.get(&record.name) {
                Some(k) if k.after == record.after => Err(k.clone()),
                known => {
                    if let Some(k) = known {
                        record.stages = k.stages.clone();
                        record.pipeline_version = k.pipeline_version;
                    }
                    let mut batch = Batch::default();
                    Tables::put_environment(&mut batch, &record);
                    s.environments.insert(record.name.clone(), record.clone());
                    let events = vec![added(&record)];
                    Ok(self.inner.journal.append(batch, events, Durable::Now))
                }
            }
        };
        match written {
            Ok(written) => written.await.map(|_| (record, true)),
            Err(same) => self.once_settled(Ok((same, false))).await,
        }
    }

    /// Every environment, declared or with projects, sorted by name.
    pub fn environments(&self) -> Vec<EnvironmentView> {
        let s = self.state();
        let mut names: BTreeSet<Environment> = s.environments.keys().cloned().collect();
        names.extend(s.projects.keys().cloned());
        names.iter().map(|n| view(&s, n)).collect()
    }

    /// One environment; NOT_FOUND when it is neither declared nor has projects.
    pub fn environment(&self, name: &Environment) -> Result<EnvironmentView> {
        let s = self.state();
        if !s.environments.contains_key(name) && !s.projects.contains_key(name) {
            let why = format!(
                "name: no environment {name} (`lockstep env list`; `lockstep env add {name}`)"
            );
            return Err(CoordinatorError::NotFound(why));
        }
        Ok(view(&s, name))
    }
}

fn view(s: &State, name: &Environment) -> EnvironmentView {
    let declared = s.environments.get(name);
    let record = declared.cloned().unwrap_or_else(|| EnvironmentRecord {
        name: name.clone(),
        after: Vec::new(),
        created_by: String::new(),
        stages: Default::default(),
        pipeline_version: 0,
    });
    let before = s.environments.values().filter(|e| e.after.contains(name));
    let projects = s
        .projects
        .get(name)
        .map(|m| m.keys().map(|p| p.to_string()).collect());
    EnvironmentView {
        record,
        declared: declared.is_some(),
        before: before.map(|e| e.name.clone()).collect(),
        projects: projects.unwrap_or_default(),
        checkpoint: s.live.get(name).map_or(0, |c| c.revision),
    }
}

/// Upstreams exist, are not the environment itself, and make no cycle.
fn check_after(s: &State, record: &EnvironmentRecord) -> Result<()> {
    for (i, up) in record.after.iter().enumerate() {
        if up == &record.name {
            let why = format!("environment {up} cannot come after itself");
            return Err(FieldError::new(format!("after[{i}]"), why).into());
        }
        if !s.environments.contains_key(up) {
            return Err(CoordinatorError::NotFound(format!(
                "after[{i}]: environment {up} is not declared; `lockstep env add {up}` first"
            )));
        }
        if let Some(path) = path_to(s, up, &record.name) {
            let why = format!(
                "would create a cycle: {} -> {}",
                record.name,
                path.join(" -> ")
            );
            return Err(FieldError::new("after", why).into());
        }
    }
    Ok(())
}

/// The upstream path from `from` to `to` (both included), if there is one.
fn path_to(s: &State, from: &Environment, to: &Environment) -> Option<Vec<String>> {
    if from == to {
        return Some(vec![to.to_string()]);
    }
    let ups = s
        .environments
        .get(from)
        .map(|e| e.after.as_slice())
        .unwrap_or_default();
    ups.iter().find_map(|up| {
        let mut path = path_to(s, up, to)?;
        path.insert(0, from.to_string());
        Some(path)
    })
}

fn added(record: &EnvironmentRecord) -> pb::Event {
    let after: Vec<&str> = record.after.iter().map(|e| e.as_str()).collect();
    let message = match after.is_empty() {
        true => format!("environment {} declared (no upstream)", record.name),
        false => format!(
            "environment {} declared after {}",
            record.name,
            after.join(", ")
        ),
    };
    pb::Event {
        kind: pb::EventKind::EnvironmentAdded as i32,
        environment: record.name.to_string(),
        message,
        actor: record.created_by.clone(),
        ..Default::default()
    }
}
