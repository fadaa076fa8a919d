//! An in-memory [`History`] and a builder that commits requests into it as the
//! coordinator would, so tests read as stories.

use std::collections::{BTreeMap, BTreeSet};

use lockstep::names::{Environment, ProjectName, TxId, Version};

use super::checks::release;
use crate::{
    error::Result,
    model::{
        Action, BuildRecord, CheckpointRecord, LiveEntry, ProjectRecord, QuarantineRecord, Request,
        TxKind, TxRecord, TxState,
    },
    planner::{History, Plan, View, checkpoint_description, plan},
};

pub(super) fn p(s: &str) -> ProjectName {
    ProjectName::parse("project", s).unwrap()
}

pub(super) fn v(s: &str) -> Version {
    Version::parse("version", s).unwrap()
}

pub(super) fn id(s: &str) -> TxId {
    TxId::parse("id", s).unwrap()
}

/// Registered projects, what was committed or aborted, and what reverts quarantined.
#[derive(Default)]
pub(super) struct Story {
    pub(super) environment: Environment,
    pub(super) projects: BTreeMap<ProjectName, ProjectRecord>,
    pub(super) checkpoints: Vec<CheckpointRecord>,
    pub(super) transactions: Vec<TxRecord>,
    pub(super) seen: BTreeSet<(ProjectName, Version)>,
    pub(super) quarantine: BTreeMap<(ProjectName, Version), QuarantineRecord>,
    pub(super) builds: BTreeMap<(ProjectName, Version), BuildRecord>,
}

impl History for Story {
    fn newest_checkpoint_where(
        &self,
        _having: &[(&ProjectName, &Version)],
        matches: &mut dyn FnMut(&CheckpointRecord) -> bool,
    ) -> Result<Option<CheckpointRecord>> {
        Ok(self
            .checkpoints
            .iter()
            .rev()
            .find(|cp| matches(cp))
            .cloned())
    }

    fn was_live(&self, project: &ProjectName, version: &Version) -> Result<bool> {
        Ok(self.seen.contains(&(project.clone(), version.clone())))
    }

    fn checkpoint(&self, revision: u64) -> Result<Option<CheckpointRecord>> {
        Ok(self
            .checkpoints
            .iter()
            .find(|cp| cp.revision == revision)
            .cloned())
    }

    fn transaction(&self, tx: &TxId) -> Result<Option<TxRecord>> {
        Ok(self.transactions.iter().find(|t| &t.id == tx).cloned())
    }

    fn took_part_after(
        &self,
        project: &ProjectName,
        after: &TxRecord,
        limit: usize,
    ) -> Result<Vec<TxRecord>> {
        let later = self.transactions.iter().rev().filter(|t| {
            t.made_its_checkpoint()
                && t.checkpoint > after.checkpoint
                && t.projects().any(|q| q == project)
        });
        Ok(later.take(limit).cloned().collect())
    }

    fn build(&self, project: &ProjectName, version: &Version) -> Result<Option<BuildRecord>> {
        Ok(self
            .builds
            .get(&(project.clone(), version.clone()))
            .cloned())
    }
}

impl Story {
    /// Projects as (name, children).
    pub(super) fn with_projects(projects: &[(&str, &[&str])]) -> Self {
        let mut story = Story::default();
        for (name, requires) in projects {
            story.register(name, requires);
        }
        story
    }

    pub(super) fn register(&mut self, name: &str, requires: &[&str]) {
        let record = ProjectRecord {
            name: p(name),
            environment: self.environment.clone(),
            endpoint: format!("http://{name}.agent:7000"),
            requires: requires.iter().map(|c| p(c)).collect(),
            live_from: 0,
        };
        self.projects.insert(p(name), record);
    }

    /// Seed 000 up to T3: B and C are children of A; T1A T1B T1C, then T2B, then T3C.
    pub(super) fn seed_000_before_t4() -> Self {
        let mut story = Story::with_projects(&[("A", &["B", "C"]), ("B", &[]), ("C", &[])]);
        story.commit("T1", release(&[("A", "T1A"), ("B", "T1B"), ("C", "T1C")]));
        story.commit("T2", release(&[("B", "T2B")]));
        story.commit("T3", release(&[("C", "T3C")]));
        story
    }

    /// Seed 000: the history above, then T4A T4B T4C (checkpoint 4, live).
    pub(super) fn seed_000() -> Self {
        let mut story = Story::seed_000_before_t4();
        story.commit("T4", release(&[("A", "T4A"), ("B", "T4B"), ("C", "T4C")]));
        story
    }

    pub(super) fn view(&self) -> View<'_> {
        View {
            environment: &self.environment,
            projects: &self.projects,
            head: self.checkpoints.last(),
            quarantine: &self.quarantine,
            history: self,
        }
    }

    pub(super) fn plan(&self, request: &Request) -> Plan {
        plan(&self.view(), request).unwrap()
    }

    /// Plans `request` and commits it as the coordinator would: the next checkpoint, the
    /// versions seen, the reverted releases quarantined.
    pub(super) fn commit(&mut self, tx: &str, request: Request) -> Plan {
        let plan = self.plan(&request);
        assert!(plan.allowed(), "{tx}: {}", plan.refusal());
        let mut record = self.record(tx, request, &plan, TxState::Committed);
        record.checkpoint = self.checkpoints.last().map_or(0, |c| c.revision) + 1;
        let checkpoint = self.checkpoint_after(&record);
        self.seen.extend(
            checkpoint
                .versions
                .iter()
                .map(|(p, e)| (p.clone(), e.version.clone())),
        );
        self.quarantine_reverted(&record);
        self.record_builds(&record);
        self.checkpoints.push(checkpoint);
        self.transactions.push(record);
        plan
    }

    /// Plans `request` and records it aborted: nothing live changes.
    pub(super) fn abort(&mut self, tx: &str, request: Request) -> Plan {
        let plan = self.plan(&request);
        let record = self.record(tx, request, &plan, TxState::Aborted);
        self.transactions.push(record);
        plan
    }

    fn record(&self, tx: &str, request: Request, plan: &Plan, state: TxState) -> TxRecord {
        let kind = match request {
            Request::Release { .. } | Request::Promote { .. } => TxKind::Release,
            Request::Revert { .. } => TxKind::Revert,
            Request::Rollback { .. } => TxKind::Rollback,
        };
        TxRecord {
            id: id(tx),
            ordinal: self.transactions.len() as u64 + 1,
            environment: self.environment.clone(),
            kind,
            request,
            state,
            participants: plan.participants.clone(),
            waves: plan.waves.clone(),
            reason: String::new(),
            reverts: plan.reverts.clone(),
            rollback_to: plan.rollback_to,
            forced: plan.forced,
            quarantined: false,
            checkpoint: 0,
            prepare_timeout_ms: 0,
            created_ms: 0,
            finished_ms: 0,
            prepare_sent: true,
            created_by: String::new(),
            authority: Default::default(),
            ticket: String::new(),
            steps: Vec::new(),
            promoted_from: None,
            live_check: Default::default(),
            trace_parent: String::new(),
            held_reads: Default::default(),
        }
    }

    fn checkpoint_after(&self, tx: &TxRecord) -> CheckpointRecord {
        let mut versions = self
            .checkpoints
            .last()
            .map(|c| c.versions.clone())
            .unwrap_or_default();
        for part in &tx.participants {
            let entry = LiveEntry {
                version: part.to_version.clone(),
                schema: None,
            };
            versions.insert(part.project.clone(), entry);
        }
        CheckpointRecord {
            revision: tx.checkpoint,
            environment: tx.environment.clone(),
            versions,
            transaction: tx.id.clone(),
            kind: tx.kind,
            description: checkpoint_description(tx),
            untested: tx.forced,
            committed_ms: 0,
        }
    }

    /// What each changed part was staged from, as the COMMIT's batch records it.
    fn record_builds(&mut self, tx: &TxRecord) {
        let staged = tx.participants.iter().filter(|p| !p.artifact.is_empty());
        for part in staged.filter(|p| p.action != Action::Unchanged) {
            let build = BuildRecord {
                artifact: part.artifact.clone(),
                metadata: part.metadata.clone(),
                schema: part.to_schema.clone(),
            };
            let key = (part.project.clone(), part.to_version.clone());
            self.builds.insert(key, build);
        }
    }

    fn quarantine_reverted(&mut self, revert: &TxRecord) {
        for release in &revert.reverts {
            let release = self.transaction(release).unwrap().unwrap();
            for part in release.participants.iter() {
                if part.action != Action::Unchanged {
                    let record = QuarantineRecord {
                        release: release.id.clone(),
                        revert: revert.id.clone(),
                    };
                    let key = (part.project.clone(), part.to_version.clone());
                    self.quarantine.insert(key, record);
                }
            }
        }
    }

    /// The live state as `A=T4A B=T4B C=T4C`.
    pub(super) fn live(&self) -> String {
        let head = self.checkpoints.last().unwrap();
        let live = head
            .versions
            .iter()
            .map(|(p, e)| format!("{p}={}", e.version));
        live.collect::<Vec<_>>().join(" ")
    }
}
