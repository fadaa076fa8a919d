//! What the filtered reads (`ScopeRule::Filtered` in `access::table`) return to their
//! caller: only what `Principal::reads` lets it read (`access::reads` says why a
//! transaction needs every one of its projects). A caller who reads the whole
//! environment, or an unauthenticated one, gets everything, unfiltered and at no cost.

use std::collections::HashMap;

use futures::StreamExt;
use lockstep::{
    names::{Environment, ProjectName, TxId},
    pb,
};

use super::{CoordinatorService, EventStream};
use crate::{
    access::{
        Principal,
        roles::{Grant, Permission, Scope},
    },
    convert,
    error::CoordinatorError,
    model::{CheckpointRecord, ProjectRecord, TxRecord},
    registry::listing::Readable,
};

/// What a checkpoint says of a transaction the caller may not read.
const UNREADABLE: &str = "a change to projects outside your grant";

/// Whether `who` may see transaction `t`: every one of its projects is readable.
pub(super) fn shows_transaction(who: &Principal, t: &TxRecord) -> bool {
    who.reads_all(&t.environment, t.participants.iter().map(|p| &p.project))
}

/// Where a listing finds everything `who` may see: the environments and projects its
/// read grants name (what [`shows_transaction`] then checks of each record).
pub(super) fn readable(who: &Principal) -> Readable {
    let Some(grants) = who.read_grants() else {
        return Readable::everything();
    };
    let mut readable = Readable::default();
    grants.into_iter().for_each(|g| add_reach(&mut readable, g));
    readable
}

/// Adds where `grant` reaches: everything, the environments it names whole, or the
/// projects it names in the environments it names (in every one when it names none).
fn add_reach(readable: &mut Readable, grant: &Grant) {
    let environments = grant.environments.iter();
    let environments: Vec<Environment> = environments
        .filter_map(|e| Environment::parse("environment", e).ok())
        .collect();
    let projects = grant.projects.iter();
    let projects = projects.filter_map(|p| ProjectName::parse("project", p).ok());
    match (grant.environments.is_empty(), grant.projects.is_empty()) {
        (true, true) => readable.everything = true,
        (false, true) => readable.environments.extend(environments),
        (true, false) => readable.projects.extend(projects.map(|p| (None, p))),
        (false, false) => {
            for project in projects {
                let each = environments
                    .iter()
                    .map(|e| (Some(e.clone()), project.clone()));
                readable.projects.extend(each);
            }
        }
    }
}

/// Whether `who` may see project `p` (as registered).
pub(super) fn shows_project(who: &Principal, p: &ProjectRecord) -> bool {
    who.reads(&p.environment, &p.name)
}

/// The project names of `env` (as an environment lists them) that `who` may read.
pub(super) fn readable_names(who: &Principal, env: &Environment, names: &mut Vec<String>) {
    let readable = |n: &String| ProjectName::parse("project", n).is_ok_and(|p| who.reads(env, &p));
    names.retain(readable);
}

impl CoordinatorService {
    /// Checkpoint `c` as `who` may see it: the versions of its readable projects only,
    /// and the transaction that made it named only when `who` may read that.
    pub(super) fn visible_checkpoint(
        &self,
        who: &Principal,
        c: &CheckpointRecord,
    ) -> pb::Checkpoint {
        if who.reads_whole(Some(&c.environment)) {
            return convert::checkpoint(c);
        }
        let mut mine = c.clone();
        mine.versions.retain(|p, _| who.reads(&c.environment, p));
        let mut shown = convert::checkpoint(&mine);
        if !self.shows_id(who, &c.transaction) {
            shown.transaction_id.clear();
            shown.description = UNREADABLE.into();
        }
        shown
    }

    /// The live checkpoint as `who` may see it, without projects removed since.
    pub(super) fn live_checkpoint(&self, who: &Principal, c: &CheckpointRecord) -> pb::Checkpoint {
        let registered = self.coordinator.projects(&c.environment);
        let mut current = c.clone();
        current
            .versions
            .retain(|p, _| registered.iter().any(|r| &r.name == p));
        self.visible_checkpoint(who, &current)
    }

    /// With `observe`, what every agent `who` may read runs now; and always the drift
    /// the drift check found among them.
    pub(super) async fn observed(
        &self,
        who: &Principal,
        env: &Environment,
        observe: bool,
    ) -> Result<(Vec<pb::ObservedProject>, Vec<pb::ObservedProject>), CoordinatorError> {
        let shown = |p: &ProjectName| who.reads(env, p);
        let observed = match observe {
            true => self.coordinator.observe(env, &shown).await,
            false => Vec::new(),
        };
        let mut drift = self.coordinator.drifts(env)?;
        drift.retain(|d| shown(&d.project));
        Ok((
            observed.iter().map(convert::observation).collect(),
            drift.iter().map(convert::drift).collect(),
        ))
    }

    /// Whether `who` may see the transaction `id` (one that cannot be found: no).
    fn shows_id(&self, who: &Principal, id: &TxId) -> bool {
        let found = self.coordinator.get(id);
        found.is_ok_and(|t| shows_transaction(who, &t))
    }

    /// `events` with only those `who` may read: a transaction's if it may see the
    /// transaction, a project's if it reads the project, the rest (an environment's, a
    /// webhook's) if it reads the whole environment, or everything; and the audit
    /// log's own (refusals, tokens made or revoked) only if it may read that log
    /// (ListAudit: operate over everything), however much else it reads.
    pub(super) fn visible_events(&self, who: Principal, events: EventStream) -> EventStream {
        let audits = who.allows(Permission::Operate, &Scope::whole(None));
        if audits && who.reads_whole(None) {
            return events;
        }
        let service = self.clone();
        // Each transaction is looked up once per stream (found ones only: a lookup
        // that fails is asked again at the transaction's next event).
        let mut seen: HashMap<String, bool> = HashMap::new();
        let kept = events.filter(move |e| {
            let keep = match e {
                Ok(e) if crate::notify::kinds::is_audit_only(e) => audits,
                Ok(e) => service.shows_event(&who, e, &mut seen),
                Err(_) => true,
            };
            futures::future::ready(keep)
        });
        Box::pin(kept)
    }

    /// Whether `who` may read event `e` (see [`CoordinatorService::visible_events`]).
    fn shows_event(
        &self,
        who: &Principal,
        e: &pb::Event,
        seen: &mut HashMap<String, bool>,
    ) -> bool {
        if !e.transaction_id.is_empty() {
            return self.shows_cached(who, &e.transaction_id, seen);
        }
        let env = Environment::parse("environment", &e.environment).ok();
        match (env, ProjectName::parse("project", &e.project).ok()) {
            (Some(env), Some(project)) => who.reads(&env, &project),
            (env, _) => who.reads_whole(env.as_ref()),
        }
    }

    /// Whether `who` may see transaction `id`, asked of `seen` first.
    fn shows_cached(&self, who: &Principal, id: &str, seen: &mut HashMap<String, bool>) -> bool {
        if let Some(known) = seen.get(id) {
            return *known;
        }
        let id_ok = TxId::parse("transaction_id", id).ok();
        let Some(record) = id_ok.and_then(|id| self.coordinator.get(&id).ok()) else {
            return false;
        };
        let shown = shows_transaction(who, &record);
        seen.insert(id.to_string(), shown);
        shown
    }
}

/// Whether `e` is of the audit log alone: a refusal, or a token made or revoked.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use super::*;
    use crate::access::{
        Standing,
        roles::{Grant, Role},
    };

    fn grant(role: Role, environments: &[&str], projects: &[&str]) -> Grant {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Grant {
            role,
            environments: strings(environments),
            projects: strings(projects),
        }
    }

    fn granted(grants: Vec<Grant>) -> Principal {
        Principal {
            actor: "user/bob".into(),
            standing: Standing::Granted(grants),
        }
    }

    /// A listing looks where the caller's grants reach: the projects they name in the
    /// environments they name (or in every one), the environments they hold whole, and
    /// everywhere for a grant over everything or an unchecked caller.
    #[test]
    fn a_listing_looks_where_the_grants_reach() {
        let (e, p) = (
            |n: &str| Environment::parse("e", n).unwrap(),
            |n: &str| ProjectName::parse("p", n).unwrap(),
        );
        let bob = granted(vec![
            grant(Role::Viewer, &["staging", "prod"], &["A", "B"]),
            grant(Role::Viewer, &["dev"], &[]),
            grant(Role::Releaser, &[], &["C"]),
        ]);
        let readable = readable(&bob);
        assert!(!readable.everything);
        assert_eq!(readable.environments, BTreeSet::from([e("dev")]));
        let expected = [
            (Some(e("prod")), p("A")),
            (Some(e("prod")), p("B")),
            (Some(e("staging")), p("A")),
            (Some(e("staging")), p("B")),
            (None, p("C")),
        ];
        assert_eq!(readable.projects, BTreeSet::from(expected));
        let everywhere = granted(vec![grant(Role::Viewer, &[], &[])]);
        assert!(readable_everything(&everywhere));
        let unchecked = Principal {
            actor: "anyone".into(),
            standing: Standing::Unchecked,
        };
        assert!(readable_everything(&unchecked));
    }

    fn readable_everything(who: &Principal) -> bool {
        readable(who).everything
    }
}
