//! Whether a state of an environment is verified, version by version (issue 26,
//! defect 4). A checkpoint holds what every earlier transaction left live, not only
//! what its own transaction moved: a release of one project leaves a forced, untested
//! combination of others in place. So each project's version is traced back through
//! the history to the release that made it live (through reverts and rollbacks, which
//! restore a version an earlier release made live), and that release is checked: not
//! forced, live everywhere, not pulled by a revert, and past its verification after
//! commit (or none was due).

use std::collections::BTreeMap;

use lockstep::names::{ProjectName, TxId, Version};

use super::Registry;
use crate::{
    error::{CoordinatorError, Result},
    model::{CheckpointRecord, LiveCheck, TxKind, TxRecord, TxState},
};

/// The release that made one project's version of a checkpoint live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The project.
    pub project: ProjectName,
    /// Its version in the checkpoint.
    pub version: Version,
    /// The release that made that version live.
    pub release: TxId,
    /// The first checkpoint of the run the version is live in without a break up to
    /// the traced checkpoint: every checkpoint from there on holds it, from `release`.
    pub since: u64,
}

/// A version of a state that is not verified, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// Where it came from.
    pub origin: Origin,
    /// What is wrong with its release (`went live forced …`).
    pub why: String,
}

impl Unverified {
    /// The refusal of promoting `cp`, naming the project, version, release and why.
    pub fn refusal(&self, cp: &CheckpointRecord) -> CoordinatorError {
        let o = &self.origin;
        CoordinatorError::Refused(format!(
            "checkpoint: {} checkpoint {} holds {} {}, which {} {}; --force to promote it all the same",
            cp.environment, cp.revision, o.project, o.version, o.release, self.why
        ))
    }
}

impl Registry {
    /// The first version of `cp` whose release is not verified (`None`: every one is).
    pub(super) fn unverified_version(&self, cp: &CheckpointRecord) -> Result<Option<Unverified>> {
        for origin in self.origins(cp)? {
            let Some(release) = self.tables().transaction(&origin.release)? else {
                continue;
            };
            if let Some(why) = unverified(&release) {
                return Ok(Some(Unverified { origin, why }));
            }
        }
        Ok(None)
    }

    /// Every project's version of `cp` traced to the release that made it live, walking
    /// the history back from `cp` only as far as needed.
    fn origins(&self, cp: &CheckpointRecord) -> Result<Vec<Origin>> {
        let mut tracer = Tracer::new(cp);
        self.tables().newest_checkpoint_where(
            &cp.environment,
            (None, Some(cp.revision.saturating_sub(1))),
            &mut |older| {
                if older.revision < cp.revision {
                    tracer.step(older);
                }
                tracer.traces.is_empty()
            },
        )?;
        Ok(tracer.finish())
    }
}

/// Why `release` does not count as verified (`None`: it does). A forced one went live
/// into a combination never verified; the others were not (or not yet) verified live.
pub fn unverified(release: &TxRecord) -> Option<String> {
    let why = match &release.live_check {
        _ if release.forced => "went live forced into an untested combination".to_string(),
        _ if release.state != TxState::Committed => "is not live everywhere yet".to_string(),
        _ if release.quarantined => "was pulled by a revert".to_string(),
        LiveCheck::Failed(why) => format!("failed its verification after commit ({why})"),
        LiveCheck::Soaking => "is still in its verification after commit".into(),
        LiveCheck::None | LiveCheck::Passed => return None,
    };
    Some(why)
}

/// Where the trace of one project's version stands, walking the history back.
enum Trace {
    /// The version is live without a break from this checkpoint (so far) on.
    Run {
        revision: u64,
        transaction: TxId,
        kind: TxKind,
    },
    /// A revert or rollback restored it: looking for the release that set it before.
    Restored,
}

impl Trace {
    fn at(cp: &CheckpointRecord) -> Self {
        Self::Run {
            revision: cp.revision,
            transaction: cp.transaction.clone(),
            kind: cp.kind,
        }
    }
}

/// The traces of every project of one checkpoint, fed older checkpoints newest first.
struct Tracer {
    wanted: BTreeMap<ProjectName, Version>,
    traces: BTreeMap<ProjectName, Trace>,
    since: BTreeMap<ProjectName, u64>,
    found: Vec<Origin>,
}

impl Tracer {
    fn new(cp: &CheckpointRecord) -> Self {
        let versions = cp.versions.iter();
        let wanted = versions.map(|(p, e)| (p.clone(), e.version.clone()));
        let wanted: BTreeMap<_, _> = wanted.collect();
        let traces = wanted.keys().map(|p| (p.clone(), Trace::at(cp))).collect();
        Self {
            wanted,
            traces,
            since: BTreeMap::new(),
            found: Vec::new(),
        }
    }

    /// The checkpoint before the oldest one seen so far.
    fn step(&mut self, cp: &CheckpointRecord) {
        for (project, trace) in std::mem::take(&mut self.traces) {
            let holds = cp.versions.get(&project).map(|e| &e.version) == self.wanted.get(&project);
            let next = match (trace, holds) {
                (_, true) => Some(Trace::at(cp)),
                (Trace::Restored, false) => Some(Trace::Restored),
                (run, false) => self.run_began(&project, run),
            };
            if let Some(next) = next {
                self.traces.insert(project, next);
            }
        }
    }

    /// `project`'s run began at `run`: found when a release began it, else restored.
    fn run_began(&mut self, project: &ProjectName, run: Trace) -> Option<Trace> {
        let Trace::Run {
            revision,
            transaction,
            kind,
        } = run
        else {
            return Some(run);
        };
        let since = *self.since.entry(project.clone()).or_insert(revision);
        if kind != TxKind::Release {
            return Some(Trace::Restored);
        }
        self.found.push(Origin {
            project: project.clone(),
            version: self.wanted[project].clone(),
            release: transaction,
            since,
        });
        None
    }

    /// The origins found by project, once the history is read to its start (a version
    /// restored from before it has none).
    fn finish(mut self) -> Vec<Origin> {
        for (project, trace) in std::mem::take(&mut self.traces) {
            self.run_began(&project, trace);
        }
        self.found.sort_by(|a, b| a.project.cmp(&b.project));
        self.found
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::model::LiveEntry;

    fn cp(revision: u64, tx: &str, kind: TxKind, versions: &[(&str, &str)]) -> CheckpointRecord {
        let entry = |v: &str| LiveEntry {
            version: Version::parse("v", v).unwrap(),
            schema: None,
        };
        CheckpointRecord {
            revision,
            environment: Default::default(),
            versions: versions
                .iter()
                .map(|(p, v)| (ProjectName::parse("p", p).unwrap(), entry(v)))
                .collect(),
            transaction: TxId::parse("t", tx).unwrap(),
            kind,
            description: String::new(),
            untested: false,
            committed_ms: 0,
        }
    }

    /// Newest first, as the history is read.
    fn trace(history: &[CheckpointRecord]) -> Vec<(String, String, u64)> {
        let (newest, older) = history.split_first().unwrap();
        let mut tracer = Tracer::new(newest);
        older.iter().for_each(|cp| tracer.step(cp));
        let found = tracer.finish().into_iter();
        let found = found.map(|o| (o.project.to_string(), o.release.to_string(), o.since));
        found.collect()
    }

    #[test]
    fn each_version_is_traced_to_the_release_that_made_it_live() {
        use TxKind::Release;
        let history = [
            cp(5, "D5", Release, &[("api", "1"), ("docs", "2")]),
            cp(4, "D4", Release, &[("api", "1"), ("docs", "1")]),
            cp(3, "D3", Release, &[("api", "2"), ("docs", "1")]),
            cp(2, "D2", Release, &[("api", "1"), ("docs", "1")]),
            cp(1, "D1", Release, &[("api", "1")]),
        ];
        assert_eq!(
            trace(&history),
            [
                ("api".into(), "D4".into(), 4),
                ("docs".into(), "D5".into(), 5)
            ],
            "api 1 came back with D4, not with D1"
        );
    }

    #[test]
    fn a_version_restored_by_a_revert_is_traced_to_its_release() {
        use TxKind::{Release, Revert};
        let history = [
            cp(4, "D4", Release, &[("api", "1"), ("docs", "2")]),
            cp(3, "revert-D2", Revert, &[("api", "1"), ("docs", "1")]),
            cp(2, "D2", Release, &[("api", "2"), ("docs", "1")]),
            cp(1, "D1", Release, &[("api", "1"), ("docs", "1")]),
        ];
        assert_eq!(
            trace(&history),
            [
                ("api".into(), "D1".into(), 3),
                ("docs".into(), "D4".into(), 4)
            ]
        );
    }
}
