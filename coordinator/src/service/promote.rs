//! Promote's handler: a promotion shows (in its plan, a dry run's included) and copies
//! the source's versions of every project it promotes, so the caller must be allowed
//! to read each of them in the source, not only something there. Until stop 64 the
//! entry check asked `read` on the source environment alone, which a grant of one
//! project satisfies: a releaser of production who could read staging's A learned
//! staging's B and C from a dry-run promotion of any checkpoint or release of staging.

use lockstep::{
    names::{Environment, ProjectName},
    pb,
};
use tonic::{Request, Response, Status};

use super::CoordinatorService;
use crate::{
    access::{Principal, roles::Permission, roles::Scope, table::Target},
    convert,
    model::{CreateSpec, PromoteAsk, Request as Asked},
};

impl CoordinatorService {
    /// Checks, plans and creates the promotion `request` asks for.
    pub(super) async fn promote_as_asked(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::CreateTransactionResponse>, Status> {
        super::wait::needs_id(request.get_ref().wait, &request.get_ref().id)?;
        let (ask, mut base) = convert::promote(request.get_ref().clone())?;
        let key = match ask.force {
            true => "Promote --force",
            false => "Promote",
        };
        let target = Target::promotion(&ask.from, Target::environment(&ask.to));
        let who = self.allow(&request, key, target).await?;
        if ask.release.is_some() {
            self.may_read_source(&who, &ask, self.source_projects(&ask))
                .await?;
        }
        // Who asks, so that only their own promotion under this id is theirs to retry.
        base.actor = who.actor_or("");
        let spec = match self.coordinator.registry().promotion(&ask, base) {
            Ok(spec) => spec,
            Err(refused) => {
                // It may name the source's versions and releases.
                self.may_read_source(&who, &ask, self.source_projects(&ask))
                    .await?;
                return Err(refused.into());
            }
        };
        self.may_read_source(&who, &ask, promoted(&spec)).await?;
        let waiter = request.get_ref().wait.then(|| self.waiter(&request, &who));
        let created = self.create(who, key, spec).await?;
        self.answer(created, waiter).await
    }

    /// The projects `ask` may copy, as far as is known without planning it: the
    /// release's (`--release`), or every project registered in the source (a
    /// checkpoint). A refusal of the promotion (which may name the source's versions and
    /// releases) reaches only their readers; a planned promotion is checked against what
    /// it copies.
    fn source_projects(&self, ask: &PromoteAsk) -> Vec<ProjectName> {
        match &ask.release {
            Some(id) => {
                let record = self.coordinator.get(id).ok();
                let record = record.filter(|t| t.environment == ask.from);
                record.map_or_else(Vec::new, |t| t.projects().cloned().collect())
            }
            None => {
                let projects = self.coordinator.projects(&ask.from).into_iter();
                projects.map(|p| p.name).collect()
            }
        }
    }

    /// `Err` (PERMISSION_DENIED, in the audit log) unless `who` may read every one of
    /// `projects` in the source.
    async fn may_read_source(
        &self,
        who: &Principal,
        ask: &PromoteAsk,
        projects: Vec<ProjectName>,
    ) -> Result<(), Status> {
        let from = &ask.from;
        if projects.is_empty() || who.reads_all(from, &projects) {
            return Ok(());
        }
        let message = source_refusal(who, from, projects);
        Err(self.refuse(who, "Promote", message, Some(from), None).await)
    }
}

/// The projects promotion `spec` copies from its source.
fn promoted(spec: &CreateSpec) -> Vec<ProjectName> {
    match &spec.request {
        Asked::Promote { components, .. } => components.iter().map(|c| c.project.clone()).collect(),
        _ => Vec::new(),
    }
}

fn source_refusal(who: &Principal, from: &Environment, projects: Vec<ProjectName>) -> String {
    let scope = Scope::projects(from, projects);
    let needs = who.refusal("Promote", Permission::Read, &scope);
    format!("from: a promotion shows and copies the source's versions of what it promotes: {needs}")
}
