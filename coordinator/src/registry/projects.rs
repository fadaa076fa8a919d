//! Registering projects: children must be registered first, a project cannot require
//! itself, and the `requires` graph stays acyclic, so that waves (children before
//! parents) always exist. A project never changes silently: registering a name again
//! with other settings is refused naming what differs (re-adding A with a new endpoint
//! and no `--requires` once dropped its children, and with them seed 000's first
//! rule); a change goes through [`Registry::update_project`], which changes only what
//! it is given.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use lockstep::{
    names::{Environment, FieldError, ProjectName},
    pb,
};
use lockstep_store::Batch;

use super::Registry;
use crate::{
    error::{CoordinatorError, Result},
    journal::Durable,
    model::{CheckpointRecord, LiveCheck, ProjectRecord},
    reach::path_from_any,
    tables::Tables,
};

impl Registry {
    /// Registers a project; `false` when it was registered exactly so already. Refused
    /// when the name is registered with other settings. Durable (fsync) before it
    /// returns. `runs`: the version its agent reported running, when it was asked; a
    /// project removed and registered again keeps the live version the newest
    /// checkpoint records for it only when its agent runs exactly that (see
    /// [`ProjectRecord::live_from`]).
    pub async fn register_project(
        &self,
        project: ProjectRecord,
        actor: &str,
        runs: Option<&str>,
    ) -> Result<(ProjectRecord, bool)> {
        let existing = self.project(&project.environment, &project.name);
        match existing {
            Some(old) if old == project => self.once_settled(Ok((project, false))).await,
            Some(old) => Err(CoordinatorError::AlreadyExists(differs(&old, &project))),
            None => self.write_project(project, actor, runs).await,
        }
    }

    /// Changes what `change` gives of a registered project and nothing else; `false`
    /// when nothing differs. Durable (fsync) before it returns.
    pub async fn update_project(
        &self,
        change: ProjectChange,
        actor: &str,
    ) -> Result<(ProjectRecord, bool)> {
        let Some(old) = self.project(&change.environment, &change.name) else {
            let why = format!(
                "name: project {} is not registered in environment {}; `lockstep project add` registers it",
                change.name, change.environment
            );
            return self
                .once_settled(Err(CoordinatorError::NotFound(why)))
                .await;
        };
        let project = ProjectRecord {
            endpoint: change.endpoint.unwrap_or_else(|| old.endpoint.clone()),
            requires: change.requires.unwrap_or_else(|| old.requires.clone()),
            ..old.clone()
        };
        match old == project {
            true => self.once_settled(Ok((project, false))).await,
            false => self.write_project(project, actor, None).await,
        }
    }

    /// Removes a project: refused while an unfinished transaction names it or another
    /// project requires it. Its history stays; later checkpoints leave it out. Durable
    /// (fsync) before it returns; so is what a refusal read (a removal an instant old).
    pub async fn remove_project(
        &self,
        env: &Environment,
        name: &ProjectName,
        actor: &str,
    ) -> Result<ProjectRecord> {
        let removal = {
            let mut s = self.state();
            let checked = removable(&s, env, name);
            let checked = checked.and_then(|old| self.not_soaking(&s, env, name).map(|_| old));
            checked.map(|old| {
                let mut batch = Batch::default();
                Tables::delete_project(&mut batch, env, name);
                s.changed(env);
                Arc::make_mut(s.projects.entry(env.clone()).or_default()).remove(name);
                let event = pb::Event {
                    kind: pb::EventKind::ProjectRemoved as i32,
                    environment: env.to_string(),
                    project: name.to_string(),
                    actor: actor.to_string(),
                    message: format!("project {name} (at {}) removed", old.endpoint),
                    ..Default::default()
                };
                let written = self.inner.journal.append(batch, vec![event], Durable::Now);
                (old, written)
            })
        };
        match removal {
            Ok((removed, written)) => written.await.map(|_| removed),
            Err(why) => self.once_settled(Err(why)).await,
        }
    }

    /// Refuses while the release of `env`'s newest checkpoint soaks and took part in
    /// `name`: the revert its failed live check owes names every project it moved,
    /// and a removed one would get it refused, leaving the failed release live.
    fn not_soaking(&self, s: &super::State, env: &Environment, name: &ProjectName) -> Result<()> {
        let Some(head) = s.head.get(env) else {
            return Ok(());
        };
        let Some(tx) = self.inner.tables.transaction(&head.transaction)? else {
            return Ok(());
        };
        if tx.live_check != LiveCheck::Soaking || !tx.projects().any(|p| p == name) {
            return Ok(());
        }
        Err(CoordinatorError::Refused(format!(
            "name: release {} of project {name} is soaking (its live check may still revert it); remove the project once the check has passed or failed (`lockstep release get {}`)",
            tx.id, tx.id
        )))
    }

    /// The registration of `name` in `env` (for the reachability check).
    pub fn registered(&self, env: &Environment, name: &ProjectName) -> Option<ProjectRecord> {
        self.project(env, name)
    }

    fn project(&self, env: &Environment, name: &ProjectName) -> Option<ProjectRecord> {
        let s = self.state();
        s.projects.get(env).and_then(|m| m.get(name)).cloned()
    }

    /// Writes `project` after checking its children, unless another call registered it
    /// exactly so in the meantime.
    async fn write_project(
        &self,
        mut project: ProjectRecord,
        actor: &str,
        runs: Option<&str>,
    ) -> Result<(ProjectRecord, bool)> {
        let written = {
            let mut s = self.state();
            stamp(&s, &mut project, runs);
            let env_projects = s.projects.get(&project.environment).map(|m| &**m);
            check_requires(env_projects, &project)?;
            requires_unheld(&s, &project)?;
            if env_projects.and_then(|m| m.get(&project.name)) == Some(&project) {
                None
            } else {
                let mut batch = Batch::default();
                Tables::put_project(&mut batch, &project);
                s.changed(&project.environment);
                let env = s.projects.entry(project.environment.clone()).or_default();
                Arc::make_mut(env).insert(project.name.clone(), project.clone());
                let mut event = registered(&project);
                event.actor = actor.to_string();
                let events = vec![event];
                Some(self.inner.journal.append(batch, events, Durable::Now))
            }
        };
        match written {
            Some(written) => written.await.map(|_| (project, true)),
            None => self.once_settled(Ok((project, false))).await,
        }
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

pub(super) type Projects = BTreeMap<ProjectName, ProjectRecord>;

/// Refuses a change of `project`'s `requires` while an unfinished transaction holds
/// it: that transaction's waves were made with the children it had, so a child added
/// now would go live in the same wave as its parent, or not at all.
pub(super) fn requires_unheld(s: &super::State, project: &ProjectRecord) -> Result<()> {
    let env = &project.environment;
    let old = s.projects.get(env).and_then(|m| m.get(&project.name));
    if old.is_none_or(|old| old.requires == project.requires) {
        return Ok(());
    }
    // A transaction still waiting in the queue is planned again at its turn; one the
    // queue handed the project to was planned already, even while still shown PENDING.
    match queue_holder(s, env, &project.name) {
        None => Ok(()),
        Some(tx) => Err(CoordinatorError::Refused(format!(
            "requires: transaction {} ({:?}) holds project {} and was planned with its children as they are; change them once it has ended",
            tx.id, tx.state, project.name
        ))),
    }
}

/// The transaction the queue gave `name` to (as a participant, or to read it: a move
/// back's family), as readers see it now.
fn queue_holder<'a>(
    s: &'a super::State,
    env: &Environment,
    name: &ProjectName,
) -> Option<&'a crate::model::TxRecord> {
    let wanted = BTreeSet::from([name.clone()]);
    let holders = s.queue.holders_of(env, &wanted);
    holders
        .iter()
        .find_map(|id| s.active.get(id).map(|a| &a.record))
}

/// The registration `remove_project` may remove, or why not.
fn removable(s: &super::State, env: &Environment, name: &ProjectName) -> Result<ProjectRecord> {
    let Some(old) = s.projects.get(env).and_then(|m| m.get(name)).cloned() else {
        return Err(CoordinatorError::NotFound(format!(
            "name: project {name} is not registered in environment {env}"
        )));
    };
    let holder = s
        .active
        .values()
        .map(|a| &a.record)
        .find(|t| &t.environment == env && t.projects().any(|p| p == name));
    if let Some(tx) = holder.or_else(|| queue_holder(s, env, name)) {
        return Err(CoordinatorError::Refused(format!(
            "name: transaction {} ({:?}) holds project {name}; remove it once that transaction has ended",
            tx.id, tx.state
        )));
    }
    let parents = s.projects.get(env).into_iter().flat_map(|m| m.values());
    let parents: Vec<&str> = parents
        .filter(|p| p.requires.contains(name))
        .map(|p| p.name.as_str())
        .collect();
    if !parents.is_empty() {
        return Err(CoordinatorError::Refused(format!(
            "name: project {} requires {name}; change that first (`lockstep project set {} --requires ...` or `--no-requires`)",
            parents.join(", "),
            parents[0]
        )));
    }
    Ok(old)
}

/// Stamps a registration about to be written with its `live_from`: a registered project
/// keeps its own; a new one whose name the newest checkpoint still holds (removed, and
/// registered again) gets that checkpoint's revision, unless its agent reported running
/// exactly the version recorded there (`runs`; `None`: not asked).
pub(super) fn stamp(s: &super::State, project: &mut ProjectRecord, runs: Option<&str>) {
    let env = &project.environment;
    if let Some(old) = s.projects.get(env).and_then(|m| m.get(&project.name)) {
        project.live_from = old.live_from;
        return;
    }
    let head = s.head.get(env);
    let recorded = head.and_then(|h| Some((h.revision, h.versions.get(&project.name)?)));
    project.live_from = match recorded {
        Some((_, entry)) if runs == Some(entry.version.as_str()) => 0,
        Some((revision, _)) => revision,
        None => 0,
    };
}

/// `checkpoint` as the live state of `projects`: without the entries of a project
/// removed and registered again since it was made (see [`ProjectRecord::live_from`]).
/// The same checkpoint, not a copy, when there are none (as nearly always).
pub(super) fn as_registered(
    checkpoint: &Arc<CheckpointRecord>,
    projects: Option<&Projects>,
) -> Arc<CheckpointRecord> {
    // On every plan: a pass over the registrations, no lookup, in the common case.
    let reset = |p: &ProjectRecord| p.live_from >= checkpoint.revision;
    if !projects.is_some_and(|m| m.values().any(reset)) {
        return checkpoint.clone();
    }
    let stale = |name: &ProjectName| projects.and_then(|m| m.get(name)).is_some_and(reset);
    let mut fresh = (**checkpoint).clone();
    fresh.versions.retain(|name, _| !stale(name));
    Arc::new(fresh)
}

/// A change to a registered project: only what is `Some` changes.
#[derive(Debug, Clone)]
pub struct ProjectChange {
    /// The project.
    pub name: ProjectName,
    /// Its environment.
    pub environment: Environment,
    /// A new endpoint.
    pub endpoint: Option<String>,
    /// New children (empty: none).
    pub requires: Option<Vec<ProjectName>>,
}

/// Why registering `new` over `old` is refused: what differs, and how to change it.
fn differs(old: &ProjectRecord, new: &ProjectRecord) -> String {
    let mut what = Vec::new();
    if old.endpoint != new.endpoint {
        what.push(format!(
            "endpoint: registered at {}, this request gives {}",
            old.endpoint, new.endpoint
        ));
    }
    if old.requires != new.requires {
        what.push(format!(
            "requires: registered requiring {}, this request gives {}",
            children(&old.requires),
            children(&new.requires)
        ));
    }
    format!(
        "project {} is already registered in environment {} with other settings ({}); `lockstep project set {}` changes only what it is given",
        old.name,
        old.environment,
        what.join("; "),
        old.name
    )
}

fn children(names: &[ProjectName]) -> String {
    match names.is_empty() {
        true => "none".into(),
        false => names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The children of `project` are registered (in `env_projects`), it does not require
/// itself, and it closes no cycle.
pub(super) fn check_requires(
    env_projects: Option<&Projects>,
    project: &ProjectRecord,
) -> Result<()> {
    // Each error names the child: the list is kept sorted, so an index would not be
    // the one the caller gave.
    for child in &project.requires {
        if child == &project.name {
            let reason = format!("{child}: project {child} cannot require itself");
            return Err(FieldError::new("requires", reason).into());
        }
        if !env_projects.is_some_and(|m| m.contains_key(child)) {
            return Err(CoordinatorError::NotFound(format!(
                "requires: {child}: project {child} is not registered in environment {}; register children first",
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

/// The PROJECT_REGISTERED event of `project`.
pub(super) fn registered(project: &ProjectRecord) -> pb::Event {
    let requires = match project.requires.is_empty() {
        true => String::new(),
        false => format!(", requires {}", children(&project.requires)),
    };
    pb::Event {
        kind: pb::EventKind::ProjectRegistered as i32,
        environment: project.environment.to_string(),
        project: project.name.to_string(),
        message: format!("project {} at {}{requires}", project.name, project.endpoint),
        ..Default::default()
    }
}

/// If registering `project` would close a cycle, the cycle as `A -> B -> A` (each
/// project visited once, without recursion: see [`crate::reach`]).
fn cycle_through(projects: &Projects, project: &ProjectRecord) -> Option<String> {
    let children = |p: &ProjectName| projects.get(p).map_or(&[][..], |r| r.requires.as_slice());
    let back = path_from_any(children, &project.requires, &project.name)?;
    let cycle: Vec<String> = std::iter::once(project.name.to_string())
        .chain(back)
        .collect();
    Some(cycle.join(" -> "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record(name: &str, requires: &[&str]) -> ProjectRecord {
        ProjectRecord {
            name: ProjectName::parse("name", name).unwrap(),
            environment: Environment::parse_or_default("environment", "").unwrap(),
            endpoint: format!("http://{name}.agent:7000"),
            requires: requires
                .iter()
                .map(|c| ProjectName::parse("requires", c).unwrap())
                .collect(),
            live_from: 0,
        }
    }

    /// Review finding of stop 58: a queued transaction whose turn came was planned
    /// again and handed its participants and waves, but readers (and this check) still
    /// saw it PENDING until its PREPARING write was durable: `project set B --requires
    /// C` in that window was accepted, and B went live without its new child. Given W
    /// holding B in the queue while shown PENDING, when B is set to require C, then it
    /// is refused naming W; and a project W holds only to read it (a move back's
    /// family) can neither change its requires nor be removed.
    #[test]
    fn a_project_held_in_the_queue_keeps_its_requires_and_its_registration() {
        let mut s = super::super::State::default();
        let env = Environment::default();
        let names = ["A", "B", "C", "D"];
        let projects: Projects = names.map(|n| (name(n), record(n, &[]))).into();
        s.projects.insert(env.clone(), Arc::new(projects));
        let w = crate::txn::tests::t4(crate::model::TxState::Pending);
        let (commands, _) = tokio::sync::mpsc::unbounded_channel();
        // The queue gave T4 its participants A, B, C and D, which it reads.
        let held = names.map(name);
        assert_eq!(s.queue.enqueue(1, w.id.clone(), &env, held), None);
        let active = super::super::Active {
            record: w.clone(),
            start: None,
            commands,
        };
        s.active.insert(w.id.clone(), active);

        let refused = requires_unheld(&s, &record("B", &["C"]))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("T4") && refused.contains("requires"),
            "{refused}"
        );
        let refused = removable(&s, &env, &name("D")).unwrap_err().to_string();
        assert!(refused.contains("T4"), "{refused}");
    }

    fn name(n: &str) -> ProjectName {
        ProjectName::parse("name", n).unwrap()
    }

    /// Review of stop 62: the check of `requires` walked every path to the project
    /// registered (recursing once per project on the way). Given 40 layers of diamonds
    /// (`jN` requires `aN` and `bN`, which both require the join below: 2^40 paths),
    /// when the bottom is registered requiring the top, then the cycle is found at
    /// once, named; and registering an unrelated project requiring the top is no cycle.
    #[test]
    fn a_cycle_through_many_diamonds_of_requires_is_found_at_once() {
        let mut projects = Projects::new();
        for (node, children) in crate::reach::diamonds(40) {
            let children: Vec<&str> = children.iter().map(String::as_str).collect();
            projects.insert(name(&node), record(&node, &children));
        }
        let below = "j39";
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let cycle = cycle_through(&projects, &record("root", &[below]));
            let none = cycle_through(&projects, &record("other", &[below]));
            let _ = tx.send((cycle, none));
        });
        let checked = rx.recv_timeout(std::time::Duration::from_secs(30));
        let (cycle, none) = checked.expect("the check still ran after 30 s");
        let cycle = cycle.unwrap();
        assert!(cycle.starts_with("root -> j39 -> a39 -> j38"), "{cycle}");
        assert!(cycle.ends_with("a0 -> root"), "{cycle}");
        assert_eq!(none, None);
    }

    // `--requires Z,A` for A: the children are kept sorted (A, Z), so an index named
    // the wrong one (requires[0] for the user's requires[1]); the child is named now.
    #[test]
    fn a_requires_error_names_the_child_not_a_sorted_index() {
        let z = record("Z", &[]);
        let projects: Projects = [(z.name.clone(), z)].into();
        let itself = check_requires(Some(&projects), &record("A", &["A", "Z"]));
        let message = itself.unwrap_err().to_string();
        assert!(
            message.contains("requires: A: project A cannot require itself"),
            "{message}"
        );

        let missing = check_requires(Some(&projects), &record("A", &["B", "Z"]));
        let message = missing.unwrap_err().to_string();
        assert!(
            message.contains("requires: B: project B is not registered"),
            "{message}"
        );
    }
}
