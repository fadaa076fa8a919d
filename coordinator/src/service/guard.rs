//! Each handler's first step: may this caller do this here, by its row of the
//! permission table (`access::table`)? A refusal is recorded as an
//! ACCESS_DENIED event (the only thing a refused call writes), at most
//! [`PER_MINUTE`] a minute per principal (the next one written says how many were not),
//! and answered PERMISSION_DENIED with the permission, the scope and the principal
//! named.

use lockstep::{
    names::{Environment, TxId},
    pb,
};
use tonic::{Request, Status};

use super::CoordinatorService;
use crate::{
    access::{
        Principal, Standing,
        refusals::{PER_MINUTE, Verdict},
        table::{self, Rule, Target},
    },
    error::CoordinatorError,
    model::TxRecord,
    planner::Plan,
    txn::Asker,
};

impl CoordinatorService {
    /// The caller, if its row `key` of the permission table admits it on `target`;
    /// otherwise the refusal.
    pub(super) async fn allow<T>(
        &self,
        request: &Request<T>,
        key: &str,
        target: Target,
    ) -> Result<Principal, Status> {
        self.check(request, key, &target, None).await
    }

    /// As [`CoordinatorService::allow`], on the environment and projects of
    /// transaction `id` (NOT_FOUND if there is none).
    pub(super) async fn allow_on<T>(
        &self,
        request: &Request<T>,
        key: &str,
        id: &TxId,
    ) -> Result<(Principal, TxRecord), Status> {
        let record = self.coordinator.get(id)?;
        let projects = record.participants.iter().map(|p| p.project.clone());
        let target = Target::projects(&record.environment, projects);
        let principal = self.check(request, key, &target, None).await?;
        Ok((principal, record))
    }

    /// GetDecision, on `project`'s part of transaction `id` (none named: every part of
    /// it, so a caller who may read some projects learns nothing of a transaction of
    /// others): the transaction's environment, or the asking agent's when there is no
    /// such transaction (so an agent asking about an unknown id hears NOT_FOUND).
    pub(super) async fn allow_decision<T>(
        &self,
        request: &Request<T>,
        id: &TxId,
        asker: Asker<'_>,
    ) -> Result<(), Status> {
        // The asker's own environment when it is known: a transaction of another one
        // under this id is not the asker's and is answered ABORT, so an agent whose
        // grant covers its environment only is never refused into waiting for ever.
        let record = self.coordinator.get(id).ok();
        let env = match (asker.environment, &record) {
            (Some(env), _) => env.clone(),
            (None, Some(record)) => record.environment.clone(),
            (None, None) => Environment::default(),
        };
        let parts = match (asker.project, &record) {
            (Some(project), _) => vec![project.clone()],
            (None, Some(record)) => record.projects().cloned().collect(),
            (None, None) => Vec::new(),
        };
        let target = Target::projects(&env, parts);
        self.check(request, "GetDecision", &target, Some(id))
            .await?;
        Ok(())
    }

    /// The environment a GetDecision asks from: the one the request names, else the
    /// calling agent's (from its credential), else unknown.
    pub(super) fn asking_from<T>(
        request: &Request<T>,
        named: Option<Environment>,
    ) -> Option<Environment> {
        let principal = crate::access::principal_of(request);
        match (named, &principal.standing) {
            (Some(env), _) => Some(env),
            (None, Standing::Agent { environment, .. }) => Some(environment.clone()),
            (None, _) => None,
        }
    }

    /// The one check every handler makes: its row of the table (none: refused, the
    /// table fails closed) on `target`; a refusal is audited with `transaction`.
    async fn check<T>(
        &self,
        request: &Request<T>,
        key: &str,
        target: &Target,
        transaction: Option<&TxId>,
    ) -> Result<Principal, Status> {
        let principal = crate::access::principal_of(request);
        let Some(rule) = table::rule(key) else {
            tracing::error!("{key} has no row in the permission table: refused");
            let message = format!("{key} has no row in the permission table");
            return Err(self.refuse(&principal, key, message, None, None).await);
        };
        if rule.admits(&principal, target) {
            return Ok(principal);
        }
        let message = rule.refusal(&principal, target);
        let env = target.environment.as_ref();
        Err(self
            .refuse(&principal, rule.rpc(), message, env, transaction)
            .await)
    }

    /// Records that `principal` was refused `call` (with `message`), unless it was
    /// refused too often this minute, and the answer.
    pub(super) async fn refuse(
        &self,
        principal: &Principal,
        call: &str,
        message: String,
        environment: Option<&Environment>,
        transaction: Option<&TxId>,
    ) -> Status {
        let suppressed = match self.access.admit_refusal(principal) {
            Verdict::Write { suppressed } => suppressed,
            Verdict::Suppress { first } => {
                not_written(principal, call, first);
                return Status::permission_denied(message);
            }
        };
        let event = pb::Event {
            kind: pb::EventKind::AccessDenied as i32,
            actor: principal.actor.clone(),
            message: format!(
                "{call} refused: {message}{}",
                counted(principal, suppressed)
            ),
            environment: environment.map(|e| e.to_string()).unwrap_or_default(),
            transaction_id: transaction.map(|t| t.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        tracing::warn!(actor = %principal.actor, "{}", event.message);
        if let Err(e) = self.coordinator.deny(event).await {
            tracing::error!("recording a refusal: {e}");
        }
        Status::permission_denied(message)
    }
}

/// What an ACCESS_DENIED event adds when earlier refusals were not written.
fn counted(principal: &Principal, suppressed: u64) -> String {
    match suppressed {
        0 => String::new(),
        n => format!(
            "; {n} more refused calls by {} before this one were not written (at most {PER_MINUTE} a minute are)",
            principal.actor
        ),
    }
}

/// Traces a refusal that is not written: the first of a minute as a warning.
fn not_written(principal: &Principal, call: &str, first: bool) {
    let actor = &principal.actor;
    match first {
        true => {
            tracing::warn!(%actor, "{call} refused; more than {PER_MINUTE} refusals this minute: the rest of the minute's are counted, not written")
        }
        false => tracing::debug!(%actor, "{call} refused (not written)"),
    }
}

/// The check a create makes against its final plan: `rule` on every project the plan
/// changes in `env`.
pub(super) fn plan_check(
    principal: &Principal,
    rule: &'static Rule,
    env: &Environment,
) -> impl Fn(&Plan) -> Result<(), CoordinatorError> + Sync + use<> {
    let (principal, env) = (principal.clone(), env.clone());
    move |plan: &Plan| {
        let target = Target::projects(&env, plan.projects());
        if rule.admits(&principal, &target) {
            return Ok(());
        }
        Err(CoordinatorError::Denied(rule.refusal(&principal, &target)))
    }
}
