//! Each handler's first step: may this caller do this here? A refusal is recorded as an
//! ACCESS_DENIED event (the only thing a refused call writes), at most
//! [`PER_MINUTE`] a minute per principal (the next one written says how many were not),
//! and answered PERMISSION_DENIED with the permission, the scope and the principal
//! named.

use lockstep::{
    names::{Environment, ProjectName, TxId},
    pb,
};
use tonic::{Request, Status};

use super::CoordinatorService;
use crate::{
    access::{
        Principal, Standing,
        refusals::{PER_MINUTE, Verdict},
        roles::{Permission, Scope},
    },
    error::CoordinatorError,
    model::TxRecord,
    planner::Plan,
};

impl CoordinatorService {
    /// The caller, if it may do `permission` over `scope`; otherwise the refusal.
    pub(super) async fn allow<T>(
        &self,
        request: &Request<T>,
        call: &str,
        permission: Permission,
        scope: Scope,
    ) -> Result<Principal, Status> {
        let principal = crate::access::principal_of(request);
        if principal.allows(permission, &scope) {
            return Ok(principal);
        }
        let message = principal.refusal(call, permission, &scope);
        Err(self
            .refuse(&principal, call, message, scope.environment.as_ref(), None)
            .await)
    }

    /// As [`CoordinatorService::allow`], over the environment and projects of
    /// transaction `id` (NOT_FOUND if there is none).
    pub(super) async fn allow_on<T>(
        &self,
        request: &Request<T>,
        call: &str,
        permission: Permission,
        id: &TxId,
    ) -> Result<(Principal, TxRecord), Status> {
        let record = self.coordinator.get(id)?;
        let projects = record.participants.iter().map(|p| p.project.clone());
        let scope = Scope::projects(&record.environment, projects);
        let principal = self.allow(request, call, permission, scope).await?;
        Ok((principal, record))
    }

    /// GetDecision: an agent hears the decision for its own part only (so a parent's
    /// agent cannot learn COMMIT from its child's part and go live first); anyone else
    /// needs `read` on the transaction's environment.
    pub(super) async fn allow_decision<T>(
        &self,
        request: &Request<T>,
        id: &TxId,
        project: Option<&ProjectName>,
    ) -> Result<(), Status> {
        let principal = crate::access::principal_of(request);
        let env = match (self.coordinator.get(id), &principal.standing) {
            (Ok(record), _) => record.environment,
            (Err(_), Standing::Agent { environment, .. }) => environment.clone(),
            (Err(_), _) => Environment::default(),
        };
        if principal.may_ask_decision(&env, project) {
            return Ok(());
        }
        let part = project.map_or("every".to_string(), |p| format!("{p}'s"));
        let message = format!(
            "GetDecision for {part} part of {id} in environment {env}: an agent may ask for its own part only, anyone else needs permission read; {} holds {}",
            principal.actor,
            principal.holds()
        );
        Err(self
            .refuse(&principal, "GetDecision", message, Some(&env), Some(id))
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

/// The check a create makes against its final plan: `permission` over every project
/// the plan changes in `env`.
pub(super) fn plan_check(
    principal: &Principal,
    call: &'static str,
    permission: Permission,
    env: &Environment,
) -> impl Fn(&Plan) -> Result<(), CoordinatorError> + Sync + use<> {
    let (principal, env) = (principal.clone(), env.clone());
    move |plan: &Plan| {
        let scope = Scope::projects(&env, plan.projects());
        if principal.allows(permission, &scope) {
            return Ok(());
        }
        Err(CoordinatorError::Denied(
            principal.refusal(call, permission, &scope),
        ))
    }
}
