//! What runs beside what should. The live checkpoint is what the coordinator decided;
//! an agent's GetStatus is what runs. They differ while a transaction changes the
//! project (its work) and otherwise only when someone changed the host by hand or an
//! agent lost its state: drift. Registration asks the same question first, so that a
//! mistyped endpoint is refused before any release is sent to it.

use std::collections::BTreeMap;

use futures::future::join_all;
use lockstep::{
    names::{Environment, ProjectName, TxId},
    orders::Schema,
};

use crate::{
    error::{CoordinatorError, Result},
    model::LiveEntry,
    ports::{Observed, Participants},
    registry::{Registry, reads::Live},
};

/// One project as its agent reports it, beside the live checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The project.
    pub project: ProjectName,
    /// What the live checkpoint says runs (`None`: never released).
    pub expected: Option<LiveEntry>,
    /// What the agent says runs (`None`: it did not answer).
    pub running: Option<Observed>,
    /// Why it did not answer.
    pub error: String,
    /// The unfinished transaction holding the project now.
    pub held_by: Option<TxId>,
    /// When it was asked (ms since the epoch).
    pub at_ms: u64,
}

impl Observation {
    /// It answered, no transaction is changing it, and its live version (or schema,
    /// when both sides know one) differs from the checkpoint's.
    pub fn drift(&self) -> bool {
        let Some(running) = &self.running else {
            return false;
        };
        if self.held_by.is_some() {
            return false;
        }
        let expected = self.expected.as_ref();
        let version = expected.map_or("", |e| e.version.as_str());
        let schema = expected.and_then(|e| e.schema.as_ref());
        running.live_version != version || schema_differs(schema, running.schema.as_ref())
    }
}

fn schema_differs(expected: Option<&Schema>, running: Option<&Schema>) -> bool {
    matches!((expected, running), (Some(e), Some(r)) if e.version != r.version)
}

/// Refuses an endpoint that does not answer GetStatus as `name` in `env`.
pub async fn check_endpoint(
    net: &dyn Participants,
    env: &Environment,
    name: &ProjectName,
    endpoint: &str,
) -> Result<Observed> {
    let seen = status_soon(net, endpoint).await.map_err(|e| {
        CoordinatorError::Refused(format!(
            "endpoint: GetStatus at {endpoint} failed ({e}): no agent answers there, or it cannot report what it runs; start or fix the agent first, or register with --unchecked"
        ))
    })?;
    if seen.project == name.as_str() && seen.environment == env.as_str() {
        return Ok(seen);
    }
    Err(CoordinatorError::Refused(format!(
        "endpoint: the agent at {endpoint} serves project {} in environment {}, not {name} in {env}; check the address, or register with --unchecked",
        seen.project, seen.environment
    )))
}

/// How long registration keeps asking an endpoint that does not answer yet: an agent
/// started a moment before `project add` (a script, the quick start) may still be
/// opening its store.
const STARTING: std::time::Duration = std::time::Duration::from_secs(3);

/// GetStatus at `endpoint`, asked again for [`STARTING`] while it fails.
async fn status_soon(
    net: &dyn Participants,
    endpoint: &str,
) -> std::result::Result<Observed, String> {
    let deadline = tokio::time::Instant::now() + STARTING;
    loop {
        match net.status(endpoint).await {
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            answer => return answer,
        }
    }
}

/// Asks every agent of `env` (those `shown` keeps) at once what it runs.
pub async fn observe(
    registry: &Registry,
    env: &Environment,
    shown: &(dyn Fn(&ProjectName) -> bool + Sync),
    now_ms: u64,
) -> Vec<Observation> {
    let before = registry.live(env);
    let projects: Vec<_> = registry
        .projects(env)
        .into_iter()
        .filter(|p| shown(&p.name))
        .collect();
    let net = registry.net();
    let answers = join_all(projects.iter().map(|p| net.status(&p.endpoint))).await;
    // A transaction may have started, or ended, while the agents were asked: what it
    // touched in between is its work, not drift.
    let after = registry.live(env);
    let mut holders = moved(&before, &after);
    holders.extend(self::holders(&before));
    holders.extend(self::holders(&after));
    let expected = after.checkpoint.map(|c| c.versions).unwrap_or_default();
    projects
        .into_iter()
        .zip(answers)
        .map(|(p, answer)| Observation {
            expected: expected.get(&p.name).cloned(),
            held_by: holders.get(&p.name).cloned(),
            error: answer.as_ref().err().cloned().unwrap_or_default(),
            running: answer.ok(),
            at_ms: now_ms,
            project: p.name,
        })
        .collect()
}

/// Which unfinished transaction holds each project (the oldest, when several do).
fn holders(live: &Live) -> BTreeMap<ProjectName, TxId> {
    let mut out = BTreeMap::new();
    for tx in &live.active {
        for p in tx.projects() {
            out.entry(p.clone()).or_insert_with(|| tx.id.clone());
        }
    }
    out
}

/// The projects whose live version changed from `before` to `after`, each with the
/// transaction that made `after`: one that began and ended while its agents were
/// asked may have reached an agent only after it answered.
fn moved(before: &Live, after: &Live) -> BTreeMap<ProjectName, TxId> {
    let (Some(new), old) = (&after.checkpoint, before.checkpoint.as_ref()) else {
        return BTreeMap::new();
    };
    let was = |p: &ProjectName| old.and_then(|c| c.versions.get(p));
    new.versions
        .iter()
        .filter(|(p, e)| was(p) != Some(*e))
        .map(|(p, _)| (p.clone(), new.transaction.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use lockstep::names::Version;

    use super::*;

    fn seen(version: &str, schema: Option<i64>) -> Observation {
        Observation {
            project: ProjectName::parse("p", "db").unwrap(),
            expected: Some(LiveEntry {
                version: Version::parse("v", "1.3").unwrap(),
                schema: Some(Schema {
                    version: 3,
                    name: "three".into(),
                }),
            }),
            running: Some(Observed {
                live_version: version.into(),
                schema: schema.map(|version| Schema {
                    version,
                    name: String::new(),
                }),
                ..Default::default()
            }),
            error: String::new(),
            held_by: None,
            at_ms: 0,
        }
    }

    #[test]
    fn a_host_running_another_version_or_schema_drifts() {
        assert!(!seen("1.3", Some(3)).drift());
        assert!(
            !seen("1.3", None).drift(),
            "no schema reported: version only"
        );
        assert!(seen("1.2", Some(3)).drift());
        assert!(seen("1.3", Some(2)).drift());
    }

    #[test]
    fn a_transaction_at_work_or_a_silent_agent_is_not_drift() {
        let mut changing = seen("1.2", Some(3));
        changing.held_by = Some(TxId::parse("id", "T5").unwrap());
        assert!(!changing.drift());
        let mut silent = seen("1.2", Some(3));
        silent.running = None;
        assert!(!silent.drift());
    }
}
