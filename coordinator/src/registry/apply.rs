//! Applying a pipeline file: its environments (upstreams, stages) and the projects it
//! declares (endpoint, children), checked together and written as one durable batch
//! with a new pipeline version, so a file is in force whole or not at all.

use std::{future::Future, sync::Arc};

use lockstep::{
    names::{Environment, ProjectName},
    pb,
};
use lockstep_store::Batch;

use super::{Registry, State, projects};
use crate::{
    error::{CoordinatorError, Result},
    journal::Durable,
    model::ProjectRecord,
    pipeline::{self, Declared},
    tables::Tables,
};

/// What applying a pipeline file did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The pipeline version in force afterwards.
    pub version: u64,
    /// One line per environment and project of the file: `+` new, `~` changed, `=`
    /// unchanged.
    pub changes: Vec<String>,
    /// Whether anything was written.
    pub written: bool,
}

impl Registry {
    /// The endpoints a file would register or move, which are asked before it is
    /// applied: (environment, project, endpoint).
    pub fn pipeline_endpoints(&self, text: &str) -> Result<Vec<ProjectRecord>> {
        let s = self.state();
        let declared = pipeline::parse(text, &s.environments)?;
        let current = |p: &ProjectRecord| {
            let env = s.projects.get(&p.environment);
            env.and_then(|m| m.get(&p.name)).map(|r| r.endpoint.clone())
        };
        let moved = declared.projects.into_iter();
        Ok(moved
            .filter(|p| current(p).as_ref() != Some(&p.endpoint))
            .collect())
    }

    /// Applies a pipeline file: every environment it names is declared with its
    /// upstreams and stages, and every project it names registered or changed, as one
    /// durable write with a new pipeline version and a PIPELINE_APPLIED event (and a
    /// PROJECT_REGISTERED per project changed). A refused file or a dry run changes
    /// nothing; a file that changes nothing writes nothing.
    /// `runs`: what the agents of the projects it registers reported running, where
    /// they were asked (see [`Registry::register_project`]).
    pub async fn apply_pipeline(
        &self,
        (text, dry_run): (&str, bool),
        runs: &Runs,
        actor: &str,
    ) -> Result<Applied> {
        let (written, outcome) = self.apply_now((text, dry_run), runs, actor)?;
        match written {
            Some(written) => written.await.map(|_| outcome),
            None if dry_run => Ok(outcome),
            // Unchanged: perhaps by the same file applied an instant ago, not yet durable.
            None => self.once_settled(Ok(outcome)).await,
        }
    }

    /// Checks `text` against the state and, unless it is a dry run or changes nothing,
    /// puts it in force in memory: the append to wait for (`None`: nothing written),
    /// and the answer.
    fn apply_now(
        &self,
        (text, dry_run): (&str, bool),
        runs: &Runs,
        actor: &str,
    ) -> Result<(Option<impl Future<Output = Result<u64>> + use<>>, Applied)> {
        let mut s = self.state();
        let mut declared = pipeline::parse(text, &s.environments)?;
        keep_children(&s, &mut declared);
        check_projects(&s, &declared.projects)?;
        let mut changes = pipeline::diff(&s.environments, &declared.environments);
        changes.extend(pipeline::diff_projects(&s.projects, &declared.projects));
        let unchanged = changes.iter().all(|c| c.starts_with('='));
        if dry_run || unchanged {
            let version = s.pipeline_version;
            let written = false;
            return Ok((
                None,
                Applied {
                    version,
                    changes,
                    written,
                },
            ));
        }
        let (batch, events, version) = write(&mut s, (text, declared), (&changes, runs), actor);
        let append = self.inner.journal.append(batch, events, Durable::Now);
        let written = true;
        Ok((
            Some(append),
            Applied {
                version,
                changes,
                written,
            },
        ))
    }
}

/// What the agents a pipeline file registers reported running: (environment, project)
/// to version ("" none).
pub type Runs = std::collections::BTreeMap<(Environment, ProjectName), String>;

/// A registered project the file names without `requires` keeps the children it is
/// registered with; only `requires = [...]` changes them (`[]` drops them), as `project
/// update` changes only what it is given. A key left out never drops a parent's
/// children, and with them the rule that they go live first.
fn keep_children(s: &State, declared: &mut Declared) {
    let unset = &declared.requires_unset;
    for p in &mut declared.projects {
        let key = (p.environment.clone(), p.name.clone());
        let registered = s.projects.get(&p.environment).and_then(|m| m.get(&p.name));
        if let Some(r) = registered.filter(|_| unset.contains(&key)) {
            p.requires.clone_from(&r.requires);
        }
    }
}

/// Each declared project's children are registered or declared in the file for its
/// environment, and no cycle forms.
fn check_projects(s: &State, declared: &[ProjectRecord]) -> Result<()> {
    let mut merged = s.projects.clone();
    for p in declared {
        let env = merged.entry(p.environment.clone()).or_default();
        Arc::make_mut(env).insert(p.name.clone(), p.clone());
    }
    for p in declared {
        let env = merged.get(&p.environment).map(|m| &**m);
        projects::check_requires(env, p).map_err(|e| in_file(p, e))?;
        projects::requires_unheld(s, p).map_err(|e| in_file(p, e))?;
    }
    Ok(())
}

/// `e` as a refusal of the file, naming the project it is about.
fn in_file(p: &ProjectRecord, e: CoordinatorError) -> CoordinatorError {
    let about = format!("project {} of environment {}", p.name, p.environment);
    match e {
        CoordinatorError::NotFound(why) => CoordinatorError::NotFound(format!("{about}: {why}")),
        CoordinatorError::Invalid(f) => {
            let field = format!("{about}: {}", f.field);
            lockstep::names::FieldError::new(field, f.reason).into()
        }
        other => other,
    }
}

/// The batch and events that put `declared` in force as a new pipeline version.
fn write(
    s: &mut State,
    (text, declared): (&str, Declared),
    (changes, runs): (&[String], &Runs),
    actor: &str,
) -> (Batch, Vec<pb::Event>, u64) {
    s.pipeline_version += 1;
    let version = s.pipeline_version;
    let mut batch = Batch::default();
    Tables::put_pipeline(&mut batch, version, text);
    let mut events = vec![applied(version, changes, actor)];
    for mut r in declared.environments {
        r.created_by = actor.to_string();
        r.pipeline_version = version;
        Tables::put_environment(&mut batch, &r);
        s.environments.insert(r.name.clone(), r);
    }
    for mut p in declared.projects {
        let reported = runs.get(&(p.environment.clone(), p.name.clone()));
        projects::stamp(s, &mut p, reported.map(String::as_str));
        let env = Arc::make_mut(s.projects.entry(p.environment.clone()).or_default());
        if env.get(&p.name) == Some(&p) {
            continue;
        }
        Tables::put_project(&mut batch, &p);
        let mut event = projects::registered(&p);
        event.actor = actor.to_string();
        events.push(event);
        env.insert(p.name.clone(), p.clone());
        s.changed(&p.environment);
    }
    (batch, events, version)
}

fn applied(version: u64, changes: &[String], actor: &str) -> pb::Event {
    pb::Event {
        kind: pb::EventKind::PipelineApplied as i32,
        message: format!("pipeline version {version} applied: {}", changes.join("; ")),
        actor: actor.to_string(),
        ..Default::default()
    }
}
