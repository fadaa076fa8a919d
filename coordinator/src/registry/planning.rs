//! Planning without a scan under the lock: some rules look back through history (a
//! downgrade's compatibility, a revert's later releases, a rollback's checkpoint),
//! scanning checkpoints and transactions, which must not happen under the registry's
//! lock, or one long history would stall every reader and every transaction. A plan is
//! made against a snapshot of its environment taken under the lock; then the lock is
//! taken again and the plan kept only if the environment did not change meanwhile (its
//! generation counts every change of its projects, newest checkpoint and quarantine);
//! otherwise it is made again.
//!
//! The store may lag memory by one syncer write (less than an fsync: appends are only
//! queued under the lock). That never makes a plan act on missing history: a plan goes
//! ahead at once only for projects no transaction holds, whose last transaction has
//! finished and so is written, and a plan that has to wait is made again when its turn
//! comes. At worst an admission in that window is refused and can be sent again.

use std::{
    collections::BTreeMap,
    sync::{Arc, MutexGuard},
};

use lockstep::names::{Environment, ProjectName, Version};

use super::{Registry, State, history::StoredHistory, projects};
use crate::{
    error::Result,
    model::{CheckpointRecord, ProjectRecord, QuarantineRecord, Request},
    planner::{self, Plan, View},
};

/// Attempts at planning against a snapshot before planning under the lock (only an
/// environment changing faster than a plan can be made gets there).
const OPTIMISTIC_ATTEMPTS: usize = 5;

/// What a plan reads from memory, copied out of the state.
struct Snapshot {
    projects: Arc<BTreeMap<ProjectName, ProjectRecord>>,
    head: Option<Arc<CheckpointRecord>>,
    quarantine: BTreeMap<(ProjectName, Version), QuarantineRecord>,
    generation: u64,
}

impl State {
    /// How many times `env`'s projects, newest checkpoint or quarantine changed.
    pub(super) fn generation(&self, env: &Environment) -> u64 {
        self.generations.get(env).copied().unwrap_or(0)
    }

    /// Notes a change of what plans of `env` read.
    pub(super) fn changed(&mut self, env: &Environment) {
        *self.generations.entry(env.clone()).or_default() += 1;
    }

    fn snapshot(&self, env: &Environment) -> Snapshot {
        let projects = self.projects.get(env).map(|m| &**m);
        let head = self.head.get(env);
        Snapshot {
            projects: self.projects.get(env).cloned().unwrap_or_default(),
            head: head.map(|h| projects::as_registered(h, projects)),
            quarantine: self.quarantine.get(env).cloned().unwrap_or_default(),
            generation: self.generation(env),
        }
    }
}

impl Registry {
    /// The plan of `request` in `env`, with the lock under which it is still valid.
    pub(super) fn plan_for(
        &self,
        env: &Environment,
        request: &Request,
    ) -> (MutexGuard<'_, State>, Result<Plan>) {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let snapshot = self.state().snapshot(env);
            let plan = self.plan_snapshot(env, &snapshot, request);
            let s = self.state();
            if s.generation(env) == snapshot.generation {
                return (s, plan);
            }
        }
        tracing::warn!(%env, "the environment kept changing while a plan was made; planning under the lock");
        let s = self.state();
        let plan = self.plan_snapshot(env, &s.snapshot(env), request);
        (s, plan)
    }

    fn plan_snapshot(
        &self,
        env: &Environment,
        snapshot: &Snapshot,
        request: &Request,
    ) -> Result<Plan> {
        let history = StoredHistory::new(&self.inner.tables, env, snapshot.head.as_deref());
        let view = View {
            environment: env,
            projects: &snapshot.projects,
            head: snapshot.head.as_deref(),
            quarantine: &snapshot.quarantine,
            history: &history,
        };
        planner::plan(&view, request)
    }
}
