//! Declared environments and the promotion path between them (`after`: upstreams).
//! Upstreams must be declared first and the graph stays acyclic, so that a promotion
//! path always leads somewhere. An environment that only has projects is known too,
//! undeclared, with no upstream.

use std::collections::BTreeSet;

use lockstep::{
    limits::MAX_ENVIRONMENTS,
    names::{Environment, FieldError},
    pb,
};
use lockstep_store::Batch;

use super::{Registry, State};
use crate::{
    error::{CoordinatorError, Result},
    journal::Durable,
    model::EnvironmentRecord,
    reach::path_from_any,
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
            room_for(&s, &record.name)?;
            keep_upstreams(&s, &mut record);
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

/// An environment declared again with no upstreams keeps the ones it has, as a
/// pipeline file's entry without `after` does: `env add NAME` run to make sure it
/// exists must not cut it off its promotion path. A file's `after = []` removes them.
fn keep_upstreams(s: &State, record: &mut EnvironmentRecord) {
    if let Some(known) = s.environments.get(&record.name) {
        if record.after.is_empty() {
            record.after.clone_from(&known.after);
        }
    }
}

/// `Err` when `name` would be one environment more than [`MAX_ENVIRONMENTS`] declared.
fn room_for(s: &State, name: &Environment) -> Result<()> {
    let count = s.environments.len();
    if count < MAX_ENVIRONMENTS || s.environments.contains_key(name) {
        return Ok(());
    }
    let why = format!("{count} environments are declared already; at most {MAX_ENVIRONMENTS}");
    Err(FieldError::new("name", why).into())
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
    }
    let ups = |e: &Environment| {
        s.environments
            .get(e)
            .map_or(&[][..], |r| r.after.as_slice())
    };
    let Some(path) = path_from_any(ups, &record.after, &record.name) else {
        return Ok(());
    };
    let why = format!(
        "would create a cycle: {} -> {}",
        record.name,
        path.join(" -> ")
    );
    Err(FieldError::new("after", why).into())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(name: &str, after: &[&str]) -> EnvironmentRecord {
        let env = |n: &str| Environment::parse("name", n).unwrap();
        EnvironmentRecord {
            name: env(name),
            after: after.iter().map(|n| env(n)).collect(),
            created_by: "ci".into(),
            stages: Default::default(),
            pipeline_version: 0,
        }
    }

    /// Stop 62: `env add` checked for a cycle by walking every upstream path, under the
    /// state lock. Given 40 layers of diamonds (`aN` and `bN` after the join below,
    /// `jN` after both: 2^40 paths down), when an environment is added after the top,
    /// then the check answers at once (it ran for ever), and a cycle through the
    /// diamonds is still refused, named.
    #[test]
    fn adding_after_many_diamonds_is_checked_at_once() {
        let mut s = State::default();
        for (node, ups) in crate::reach::diamonds(40) {
            let ups: Vec<&str> = ups.iter().map(String::as_str).collect();
            let r = record(&node, &ups);
            s.environments.insert(r.name.clone(), r);
        }
        let below = "j39";
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let top = check_after(&s, &record("top", &[below])).map_err(|e| e.to_string());
            let cycle = check_after(&s, &record("root", &[below])).map_err(|e| e.to_string());
            let _ = tx.send((top, cycle));
        });
        let checked = rx.recv_timeout(Duration::from_secs(30));
        let (top, cycle) = checked.expect("the check still ran after 30 s");
        assert!(top.is_ok(), "{top:?}");
        let refused = cycle.unwrap_err();
        assert!(refused.contains("cycle: root -> j39 -> a39"), "{refused}");
    }

    #[test]
    fn one_environment_more_than_the_limit_is_refused_by_name() {
        let mut s = State::default();
        for i in 0..MAX_ENVIRONMENTS {
            let r = record(&format!("e{i}"), &[]);
            s.environments.insert(r.name.clone(), r);
        }
        let refused = room_for(&s, &record("one-more", &[]).name)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("name") && refused.contains("at most 1000"),
            "{refused}"
        );
        assert!(
            room_for(&s, &record("e7", &[]).name).is_ok(),
            "a declared one changes"
        );
    }
}
