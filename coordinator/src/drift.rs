//! The drift check (`--drift-check D`): every D it asks every agent what it runs (see
//! [`crate::observe`]) and writes DRIFT_DETECTED once per change of what a drifting
//! agent runs, and DRIFT_CLEARED when it runs what it should again. What it found is
//! kept in the store, so a restart neither forgets a drift nor reports it twice, and
//! `lockstep live` shows it. It only looks and writes events: it never changes a
//! transaction or what is live.

use std::{collections::BTreeMap, time::Duration};

use lockstep::{
    names::{Environment, ProjectName},
    pb,
};
use lockstep_store::Batch;

use crate::{
    journal::{Clock, Durable, Journal},
    model::DriftRecord,
    observe::{Observation, observe},
    registry::Registry,
    tables::Tables,
};

type Known = BTreeMap<(Environment, ProjectName), DriftRecord>;

/// Checks for drift every `every` for as long as the process runs.
pub async fn watch(registry: Registry, journal: Journal, every: Duration, clock: Clock) {
    let mut known: Known = match registry.tables().drifts() {
        Ok(found) => found
            .into_iter()
            .map(|d| ((d.environment.clone(), d.project.clone()), d))
            .collect(),
        Err(e) => {
            tracing::error!("drift check off: reading what it found before: {e}");
            return;
        }
    };
    loop {
        tokio::time::sleep(every).await;
        for view in registry.environments() {
            let env = view.record.name;
            let seen = observe(&registry, &env, &|_| true, clock()).await;
            let (batch, events) = changes(&mut known, &env, &seen);
            if events.is_empty() {
                continue;
            }
            if let Err(e) = journal.append(batch, events, Durable::Soon).await {
                tracing::error!("drift check: writing what it found: {e}");
            }
        }
    }
}

/// What to write after observing `seen` in `env`, updating `known` to match.
fn changes(known: &mut Known, env: &Environment, seen: &[Observation]) -> (Batch, Vec<pb::Event>) {
    let (mut batch, mut events) = (Batch::default(), Vec::new());
    let registered = |p: &ProjectName| seen.iter().any(|o| &o.project == p);
    let gone: Vec<_> = known
        .keys()
        .filter(|(e, p)| e == env && !registered(p))
        .cloned()
        .collect();
    for key in gone {
        Tables::delete_drift(&mut batch, &key.0, &key.1);
        known.remove(&key);
    }
    for o in seen {
        let key = (env.clone(), o.project.clone());
        let was = known.get(&key);
        if o.drift() {
            let now = record(env, o);
            if was.is_none_or(|w| w.running_version != now.running_version) {
                events.push(detected(&now));
                Tables::put_drift(&mut batch, &now);
                known.insert(key, now);
            }
        } else if was.is_some() && o.running.is_some() && o.held_by.is_none() {
            events.push(cleared(env, o));
            Tables::delete_drift(&mut batch, env, &o.project);
            known.remove(&key);
        }
    }
    (batch, events)
}

fn record(env: &Environment, o: &Observation) -> DriftRecord {
    let running = o.running.as_ref();
    DriftRecord {
        environment: env.clone(),
        project: o.project.clone(),
        running_version: running.map(|r| r.live_version.clone()).unwrap_or_default(),
        running_schema: running.and_then(|r| r.schema.clone()),
        expected_version: o
            .expected
            .as_ref()
            .map(|e| e.version.to_string())
            .unwrap_or_default(),
        observed_ms: o.at_ms,
    }
}

fn shown(version: &str) -> &str {
    match version {
        "" => "nothing",
        v => v,
    }
}

fn detected(d: &DriftRecord) -> pb::Event {
    pb::Event {
        kind: pb::EventKind::DriftDetected as i32,
        environment: d.environment.to_string(),
        project: d.project.to_string(),
        message: format!(
            "{} runs {}, the live checkpoint says {}; no transaction is changing it",
            d.project,
            shown(&d.running_version),
            shown(&d.expected_version)
        ),
        ..Default::default()
    }
}

fn cleared(env: &Environment, o: &Observation) -> pb::Event {
    let running = o.running.as_ref().map_or("", |r| r.live_version.as_str());
    pb::Event {
        kind: pb::EventKind::DriftCleared as i32,
        environment: env.to_string(),
        project: o.project.to_string(),
        message: format!(
            "{} runs {} again, as the live checkpoint says",
            o.project,
            shown(running)
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use lockstep::names::Version;

    use super::*;
    use crate::{model::LiveEntry, ports::Observed};

    fn seen(running: &str) -> Observation {
        Observation {
            project: ProjectName::parse("p", "db").unwrap(),
            expected: Some(LiveEntry {
                version: Version::parse("v", "1.3").unwrap(),
                schema: None,
            }),
            running: Some(Observed {
                live_version: running.into(),
                ..Default::default()
            }),
            error: String::new(),
            held_by: None,
            at_ms: 7,
        }
    }

    fn kinds(events: &[pb::Event]) -> Vec<pb::EventKind> {
        events.iter().map(|e| e.kind()).collect()
    }

    #[test]
    fn drift_is_reported_once_per_change_and_cleared_once() {
        let (env, mut known) = (Environment::default(), Known::new());
        let mut step = |running: &str| kinds(&changes(&mut known, &env, &[seen(running)]).1);
        assert_eq!(step("1.3"), vec![]);
        assert_eq!(step("1.2"), vec![pb::EventKind::DriftDetected]);
        assert_eq!(step("1.2"), vec![], "the same drift again is not news");
        assert_eq!(step("hotfix"), vec![pb::EventKind::DriftDetected]);
        assert_eq!(step("1.3"), vec![pb::EventKind::DriftCleared]);
        assert_eq!(step("1.3"), vec![]);
    }

    #[test]
    fn a_silent_agent_keeps_its_drift_and_a_removed_project_drops_it() {
        let (env, mut known) = (Environment::default(), Known::new());
        changes(&mut known, &env, &[seen("1.2")]);
        let mut silent = seen("1.2");
        silent.running = None;
        assert!(changes(&mut known, &env, &[silent]).1.is_empty());
        assert_eq!(known.len(), 1);
        assert!(changes(&mut known, &env, &[]).1.is_empty());
        assert!(known.is_empty());
    }
}
