//! Turns a request (release, revert, rollback) into a plan: the target version of every
//! project taking part, the action for each, the phase 2 waves, and every release rule
//! checked with its outcome. Pure: it reads a [`View`] of the state and writes nothing,
//! so a dry run and the real run compute the same plan.
//!
//! Release rules (PRODUCT.md "Release rules"):
//! - `children-included`: a transaction touching a parent includes all its children.
//! - `compatibility`: moving a project back to a version it had live before is allowed
//!   only when the result, over the project's family (the projects connected to it by
//!   `requires`), equals a committed checkpoint; otherwise only with force, recorded as
//!   untested.
//! - `quarantine`: versions pulled by a revert need allow_quarantined.
//! - `no-later-dependents` (reverts): a later committed release that changed one of the
//!   same projects must be reverted first, or with cascade together.
//!
//! # Layout
//! - this file: the plan and its preconditions, the [`View`] the planner reads, the
//!   [`History`] it looks back through, and [`plan`], which picks the planner per request.
//! - `release`: a release of caller-named versions.
//! - `revert`: the undo of a committed release (and, with cascade, of later ones).
//! - `rollback`: the restore of a checkpoint.
//! - `rules`: the release rules shared by the three (`children-included`, `quarantine`,
//!   `compatibility`) and the adding of children at their live version.
//! - `waves`: phase 2 waves (children first) and the assembly of the final [`Plan`].
//! - `words`: the small text helpers the messages are made of.
//! - `tests`: the seed stories played against an in-memory [`History`].

use std::collections::{BTreeMap, BTreeSet};

use lockstep::names::{Environment, ProjectName, TxId, Version};

use crate::{
    error::{CoordinatorError, Result},
    model::{
        Action, BuildRecord, CheckpointRecord, LiveEntry, Participant, ProjectRecord,
        QuarantineRecord, Request, Schema, TxKind, TxRecord,
    },
};

mod release;
mod revert;
mod rollback;
mod rules;
mod waves;
mod words;

#[cfg(test)]
mod tests;

pub use waves::waves;

/// One rule checked for a transaction: kept with its outcome so a refusal, a dry run
/// and the record of a transaction all say which rules held and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    /// Stable short name.
    pub name: &'static str,
    /// Whether it holds.
    pub passed: bool,
    /// Why, in words.
    pub detail: String,
}

/// What a transaction will do: computed before anything is sent, so the coordinator can
/// refuse, preview or run it from the same description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Participants with from/to versions, action and wave; sorted by project.
    pub participants: Vec<Participant>,
    /// Phase 2 waves, children first.
    pub waves: Vec<Vec<ProjectName>>,
    /// Every rule checked.
    pub preconditions: Vec<Precondition>,
    /// The transaction moves into a combination never committed, under force.
    pub forced: bool,
    /// Releases a revert undoes (the requested one first).
    pub reverts: Vec<TxId>,
    /// Checkpoint a rollback restores.
    pub rollback_to: u64,
    /// Projects outside the participants whose live versions a rule read (a move
    /// back's family): held with the participants while the transaction runs, so
    /// what the rule saw stays live until the decision.
    pub reads: BTreeSet<ProjectName>,
}

impl Plan {
    /// True when every precondition holds.
    pub fn allowed(&self) -> bool {
        self.preconditions.iter().all(|p| p.passed)
    }

    /// The failed preconditions as one sentence, for a refusal.
    pub fn refusal(&self) -> String {
        let failed: Vec<String> = self
            .preconditions
            .iter()
            .filter(|p| !p.passed)
            .map(|p| format!("{}: {}", p.name, p.detail))
            .collect();
        format!("refused: {}", failed.join("; "))
    }

    /// The projects taking part.
    pub fn projects(&self) -> BTreeSet<ProjectName> {
        self.participants
            .iter()
            .map(|p| p.project.clone())
            .collect()
    }

    /// The projects it holds while it runs: those taking part and those its rules read.
    pub fn held(&self) -> BTreeSet<ProjectName> {
        let mut held = self.projects();
        held.extend(self.reads.iter().cloned());
        held
    }
}

/// What the planner may read: borrowed from the coordinator's state, so planning never
/// copies the state and cannot change it.
pub struct View<'a> {
    /// Environment planned for.
    pub environment: &'a Environment,
    /// Registered projects of that environment.
    pub projects: &'a BTreeMap<ProjectName, ProjectRecord>,
    /// Newest checkpoint (decided, maybe not yet acknowledged).
    pub head: Option<&'a CheckpointRecord>,
    /// Quarantined versions.
    pub quarantine: &'a BTreeMap<(ProjectName, Version), QuarantineRecord>,
    /// Reads checkpoints (newest first) and committed transactions.
    pub history: &'a dyn History,
}

/// Read access to what is on disk, for the rules that look back. A trait so the planner
/// stays pure: the coordinator reads its tables, tests read a few records in memory.
pub trait History {
    /// The newest checkpoint of the environment for which `matches` holds (read newest
    /// first, page by page, stopping at the first match). Every match has each version
    /// of `having` live: a store may start its scan at the newest checkpoint where all
    /// of them could have been, and answer none at once when one never was live, so
    /// that a move back costs what it finds, not the whole history.
    fn newest_checkpoint_where(
        &self,
        having: &[(&ProjectName, &Version)],
        matches: &mut dyn FnMut(&CheckpointRecord) -> bool,
    ) -> Result<Option<CheckpointRecord>>;
    /// Whether `version` was ever live on `project` (a move back to it is a downgrade).
    fn was_live(&self, project: &ProjectName, version: &Version) -> Result<bool>;
    /// A checkpoint by revision.
    fn checkpoint(&self, revision: u64) -> Result<Option<CheckpointRecord>>;
    /// A transaction by id.
    fn transaction(&self, id: &TxId) -> Result<Option<TxRecord>>;
    /// Up to `limit` committed transactions that took part in `project` after `after`
    /// did, newest first: what a revert of `after` would undo on that project. Two
    /// transactions sharing a project run in creation order (the queue), so a store
    /// reads the project's transactions created after `after`, not the history since.
    fn took_part_after(
        &self,
        project: &ProjectName,
        after: &TxRecord,
        limit: usize,
    ) -> Result<Vec<TxRecord>>;
    /// What `version` of `project` was staged from when it was committed.
    fn build(&self, project: &ProjectName, version: &Version) -> Result<Option<BuildRecord>>;
}

impl View<'_> {
    fn live(&self, project: &ProjectName) -> Option<&Version> {
        self.head
            .and_then(|h| h.versions.get(project))
            .map(|e| &e.version)
    }

    fn project(&self, field: &str, name: &ProjectName) -> Result<&ProjectRecord> {
        self.projects.get(name).ok_or_else(|| {
            CoordinatorError::NotFound(format!(
                "{field}: project {name} is not registered in environment {}",
                self.environment
            ))
        })
    }

    fn action(&self, project: &ProjectName, to: &Version) -> Result<Action> {
        Ok(if self.live(project) == Some(to) {
            Action::Unchanged
        } else if self.history.was_live(project, to)? {
            Action::Downgrade
        } else {
            Action::Upgrade
        })
    }

    /// The direct children of `project` (none when it is not registered).
    fn children(&self, project: &ProjectName) -> &[ProjectName] {
        self.projects
            .get(project)
            .map(|r| r.requires.as_slice())
            .unwrap_or(&[])
    }

    /// All children of `project`, transitively.
    fn descendants(&self, project: &ProjectName) -> BTreeSet<ProjectName> {
        let mut out = BTreeSet::new();
        let mut stack = vec![project.clone()];
        while let Some(p) = stack.pop() {
            for child in self.children(&p) {
                if out.insert(child.clone()) {
                    stack.push(child.clone());
                }
            }
        }
        out
    }

    /// Projects connected to any of `projects` through `requires`, in either direction.
    fn family(&self, projects: &BTreeSet<ProjectName>) -> BTreeSet<ProjectName> {
        let mut out = projects.clone();
        let mut stack: Vec<_> = projects.iter().cloned().collect();
        while let Some(p) = stack.pop() {
            let children = self.children(&p).to_vec();
            let parents = self
                .projects
                .values()
                .filter(|r| r.requires.contains(&p))
                .map(|r| r.name.clone());
            for q in children.into_iter().chain(parents) {
                if out.insert(q.clone()) {
                    stack.push(q);
                }
            }
        }
        out
    }
}

/// A project's target in a plan being built.
struct Target {
    version: Version,
    artifact: String,
    metadata: BTreeMap<String, String>,
    /// Restores an earlier version: sent with what it was first staged from.
    restore: bool,
    /// For a restore: the schema the project was at with it.
    schema: Option<Schema>,
}

impl Target {
    /// A version kept as it is (children pulled into the plan): nothing to stage.
    fn at(version: Version) -> Self {
        Target {
            version,
            artifact: String::new(),
            metadata: BTreeMap::new(),
            restore: false,
            schema: None,
        }
    }

    /// A version of an earlier checkpoint restored (revert, rollback), at the schema it
    /// had there; its artifact and metadata are filled in from the build record.
    fn restored(entry: &LiveEntry) -> Self {
        Target {
            restore: true,
            schema: entry.schema.clone(),
            ..Target::at(entry.version.clone())
        }
    }
}

/// Plans any request: the one entry point, so dry runs, admission and the re-planning of
/// a queued transaction all apply the same rules.
pub fn plan(view: &View<'_>, request: &Request) -> Result<Plan> {
    match request {
        Request::Release {
            components,
            force,
            allow_quarantined,
        } => release::plan_release(view, components, *force, *allow_quarantined),
        Request::Revert { release, cascade } => revert::plan_revert(view, release, *cascade),
        Request::Rollback {
            revision,
            allow_quarantined,
        } => rollback::plan_rollback(view, *revision, *allow_quarantined),
        Request::Promote {
            components,
            force,
            upstream,
        } => release::plan_promotion(view, components, *force, upstream),
    }
}

/// The description a checkpoint gets from the transaction that produced it: what a
/// history listing shows and what a compatibility message cites.
pub fn checkpoint_description(tx: &TxRecord) -> String {
    let base = match tx.kind {
        TxKind::Release => format!("release {}", tx.id),
        TxKind::Revert => format!(
            "revert of {}",
            tx.reverts
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TxKind::Rollback => format!("rollback to {}", tx.rollback_to),
    };
    if tx.forced {
        format!("{base} (forced, untested combination)")
    } else {
        base
    }
}
