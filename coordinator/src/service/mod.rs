//! The `lockstep.v1.Coordinator` gRPC edge: each handler validates and converts its
//! request, checks the caller may do it (`guard`), calls the [`Coordinator`], and
//! converts the answer. No protocol logic here.
//!
//! What each call needs is its row of the permission table (`access::table`): a
//! handler names its row and what the request names (a `Target`), never a permission.

mod environments;
mod guard;
mod notify;
mod promote;
mod reads;
mod revoked;
mod tokens;
mod verify;
mod wait;

use std::pin::Pin;

use futures::{Stream, StreamExt};
use lockstep::{
    names::{Environment, ProjectName, TxId},
    pb::{self, coordinator_server},
};
use tonic::{Request, Response, Status};

use crate::{
    access::{
        Access, Principal, Standing,
        roles::Authority,
        table::{self, Target},
    },
    convert,
    coordinator::Coordinator,
    error::CoordinatorError,
    feed::WatchFilter,
    model::{CreateSpec, TxState},
    planner::Plan,
    registry::{admit::Created, listing::Filter},
    txn::Asker,
};

/// Serves the Coordinator API over a [`Coordinator`].
#[derive(Clone)]
pub struct CoordinatorService {
    coordinator: Coordinator,
    access: Access,
}

impl CoordinatorService {
    /// Wraps a coordinator whose callers `access` authenticates (its interceptor must
    /// run in front of this service).
    pub fn new(coordinator: Coordinator, access: Access) -> Self {
        Self {
            coordinator,
            access,
        }
    }

    /// Creates what `spec` asks for if `principal` may carry out its final plan by row
    /// `key` of the table (whose entry check the handler made).
    async fn create(
        &self,
        principal: Principal,
        key: &str,
        mut spec: CreateSpec,
    ) -> Result<Created, Status> {
        let env = spec.environment.clone();
        let Some(rule) = table::rule(key) else {
            return Err(Status::internal(format!(
                "{key} has no row in the permission table"
            )));
        };
        let call = rule.rpc();
        let permitted = guard::plan_check(&principal, rule, &env);
        let scheme = self.agent_scheme();
        let check = move |plan: &Plan| permitted(plan).and_then(|()| reachable(plan, scheme));
        if let Some(message) = self.revert_out_of_reach(&principal, rule, &spec) {
            return Err(self
                .refuse(&principal, call, message, Some(&env), None)
                .await);
        }
        spec.actor = principal.actor_or("");
        spec.authority = authority(&principal);
        match self.coordinator.create(spec, &check).await {
            Err(CoordinatorError::Denied(message)) => Err(self
                .refuse(&principal, call, message, Some(&env), None)
                .await),
            other => Ok(other?),
        }
    }
}

impl CoordinatorService {
    /// The refusal of a revert of a release that changed projects the caller may not
    /// change, decided before it is planned: the planner's own refusals name the
    /// release's versions, which the caller may not read (stop 57). `None`: planned and
    /// checked against its plan as every create is.
    fn revert_out_of_reach(
        &self,
        principal: &Principal,
        rule: &table::Rule,
        spec: &CreateSpec,
    ) -> Option<String> {
        let crate::model::Request::Revert { release, .. } = &spec.request else {
            return None;
        };
        let tx = self.coordinator.get(release).ok()?;
        if tx.environment != spec.environment {
            return None;
        }
        let target = Target::projects(&spec.environment, tx.projects().cloned());
        (!rule.admits(principal, &target)).then(|| rule.refusal(principal, &target))
    }
}

/// Refused when a participant of `plan` is registered at an endpoint of the other
/// scheme than `scheme` (how this coordinator reaches agents): its Prepare could never
/// arrive, and the transaction would end waiting for a person. Left behind by moving a
/// coordinator to TLS.
fn reachable(plan: &Plan, scheme: &str) -> Result<(), CoordinatorError> {
    let Some(p) = plan
        .participants
        .iter()
        .find(|p| !p.endpoint.starts_with(scheme))
    else {
        return Ok(());
    };
    Err(CoordinatorError::Refused(format!(
        "{} is registered at {}, but this coordinator reaches agents over {scheme}: move it with `lockstep project set {} --endpoint {scheme}...` (docs/security.md, \"Moving to TLS\")",
        p.project, p.endpoint, p.project
    )))
}

/// What `principal` is allowed, as recorded on what it creates (an agent's or the
/// coordinator's identity creates nothing, so it is recorded as no grant).
fn authority(principal: &Principal) -> Authority {
    match &principal.standing {
        Standing::Unchecked => Authority::Unchecked,
        Standing::Granted(grants) => Authority::Granted(grants.clone()),
        Standing::Agent { .. } | Standing::Nothing => Authority::Granted(Vec::new()),
    }
}

fn created(c: Created) -> pb::CreateTransactionResponse {
    pb::CreateTransactionResponse {
        transaction: c.transaction.as_ref().map(convert::transaction),
        plan: Some(convert::plan(&c.plan, &c.waits_for)),
        created: c.created,
        first_event_seq: c.first_event_seq,
        ended: None,
    }
}

impl CoordinatorService {
    /// NOT_FOUND for an environment that is not `default`, not declared and has no
    /// projects: a mistyped `-e` is an error, never an empty answer.
    fn known(&self, env: &Environment) -> Result<(), Status> {
        let default = env.as_str() == lockstep::DEFAULT_ENVIRONMENT;
        if default || self.coordinator.registry().environment(env).is_ok() {
            return Ok(());
        }
        Err(Status::not_found(format!(
            "environment: no environment {env} (`lockstep env list` shows them)"
        )))
    }

    /// How this coordinator reaches agents: `https://` on mutual TLS, else `http://`.
    fn agent_scheme(&self) -> &'static str {
        match self.access.is_secure() {
            true => "https://",
            false => "http://",
        }
    }

    /// A coordinator on mutual TLS reaches agents over https only; `field` names the
    /// endpoint in the refusal.
    fn endpoint_fits_tls(&self, field: &str, endpoint: &str) -> Result<(), Status> {
        if self.access.is_secure() && !endpoint.starts_with("https://") {
            let why = "must be https://: this coordinator reaches agents over mutual TLS";
            return Err(lockstep::names::FieldError::new(field, why).into());
        }
        Ok(())
    }
}

fn environment(field: &str, value: &str) -> Result<Environment, Status> {
    Ok(Environment::parse_or_default(field, value)?)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// Page tokens of ListReleases: `tx:<ordinal>` (the next page is older).
const TX_PAGES: &str = "tx";
/// Page tokens of GetHistory: `cp:<revision>` (the next page is newer).
const HISTORY_PAGES: &str = "cp";

#[tonic::async_trait]
impl coordinator_server::Coordinator for CoordinatorService {
    async fn register_project(
        &self,
        request: Request<pb::RegisterProjectRequest>,
    ) -> Result<Response<pb::RegisterProjectResponse>, Status> {
        let project = convert::project(request.get_ref().clone())?;
        self.endpoint_fits_tls("endpoint", &project.endpoint)?;
        let target = Target::projects(&project.environment, [project.name.clone()]);
        let who = self.allow(&request, "RegisterProject", target).await?;
        let actor = who.actor_or("");
        let checked = !request.get_ref().unchecked;
        let register = self.coordinator.register_project(project, &actor, checked);
        let (project, changed) = register.await?;
        Ok(Response::new(pb::RegisterProjectResponse {
            project: Some(convert::project_message(&project)),
            changed,
        }))
    }

    async fn update_project(
        &self,
        request: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::UpdateProjectResponse>, Status> {
        let change = convert::project_change(request.get_ref().clone())?;
        if let Some(endpoint) = &change.endpoint {
            self.endpoint_fits_tls("endpoint", endpoint)?;
        }
        let target = Target::projects(&change.environment, [change.name.clone()]);
        let who = self.allow(&request, "UpdateProject", target).await?;
        let actor = who.actor_or("");
        let checked = !request.get_ref().unchecked;
        let update = self.coordinator.update_project(change, &actor, checked);
        let (project, changed) = update.await?;
        Ok(Response::new(pb::UpdateProjectResponse {
            project: Some(convert::project_message(&project)),
            changed,
        }))
    }

    async fn remove_project(
        &self,
        request: Request<pb::RemoveProjectRequest>,
    ) -> Result<Response<pb::RemoveProjectResponse>, Status> {
        let r = request.get_ref();
        let name = ProjectName::parse("name", &r.name).map_err(CoordinatorError::from)?;
        let env = environment("environment", &r.environment)?;
        let target = Target::projects(&env, [name.clone()]);
        let who = self.allow(&request, "RemoveProject", target).await?;
        let actor = who.actor_or("");
        let removed = self.coordinator.remove_project(&env, &name, &actor).await?;
        Ok(Response::new(pb::RemoveProjectResponse {
            project: Some(convert::project_message(&removed)),
        }))
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let env = environment("environment", &request.get_ref().environment)?;
        let who = self
            .allow(&request, "ListProjects", Target::environment(&env))
            .await?;
        self.known(&env)?;
        let projects = self
            .coordinator
            .projects(&env)
            .iter()
            .filter(|p| reads::shows_project(&who, p))
            .map(convert::project_message)
            .collect();
        Ok(Response::new(pb::ListProjectsResponse { projects }))
    }

    async fn create_release(
        &self,
        request: Request<pb::CreateReleaseRequest>,
    ) -> Result<Response<pb::CreateTransactionResponse>, Status> {
        let r = request.get_ref();
        let key = match r.force || r.allow_quarantined {
            true => "CreateRelease --force",
            false => "CreateRelease",
        };
        wait::needs_id(r.wait, &r.id)?;
        let (spec, wait) = (convert::release(r.clone())?, r.wait);
        let target = Target::environment(&spec.environment);
        let who = self.allow(&request, key, target).await?;
        let waiter = wait.then(|| self.waiter(&request, &who));
        let created = self.create(who, key, spec).await?;
        self.answer(created, waiter).await
    }

    async fn revert_release(
        &self,
        request: Request<pb::RevertReleaseRequest>,
    ) -> Result<Response<pb::CreateTransactionResponse>, Status> {
        wait::needs_id(request.get_ref().wait, &request.get_ref().id)?;
        let spec = convert::revert(request.get_ref().clone())?;
        let (key, wait) = ("RevertRelease", request.get_ref().wait);
        let who = self
            .allow(&request, key, Target::environment(&spec.environment))
            .await?;
        let waiter = wait.then(|| self.waiter(&request, &who));
        let created = self.create(who, key, spec).await?;
        self.answer(created, waiter).await
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::CreateTransactionResponse>, Status> {
        let env = environment("environment", &request.get_ref().environment)?;
        wait::needs_id(request.get_ref().wait, &request.get_ref().id)?;
        let key = match request.get_ref().allow_quarantined {
            true => "Rollback --allow-quarantined",
            false => "Rollback",
        };
        let who = self.allow(&request, key, Target::environment(&env)).await?;
        let waiter = request.get_ref().wait.then(|| self.waiter(&request, &who));
        let r = request.into_inner();
        let resolved = match r.revision {
            0 => self
                .coordinator
                .live(&env)
                .checkpoint
                .map(|c| c.revision.saturating_sub(1))
                .unwrap_or(0),
            n => n,
        };
        let spec = convert::rollback(r, resolved)?;
        let created = self.create(who, key, spec).await?;
        self.answer(created, waiter).await
    }

    async fn get_release(
        &self,
        request: Request<pb::GetReleaseRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        let id = TxId::parse("id", &request.get_ref().id)?;
        let (_, record) = self.allow_on(&request, "GetRelease", &id).await?;
        Ok(Response::new(convert::transaction(&record)))
    }

    async fn list_releases(
        &self,
        request: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        let r = request.get_ref();
        let env = (!r.environment.is_empty())
            .then(|| Environment::parse("environment", &r.environment))
            .transpose()?;
        let who = self
            .allow(&request, "ListReleases", Target::optional(env.as_ref()))
            .await?;
        env.as_ref().map(|e| self.known(e)).transpose()?;
        let r = request.into_inner();
        let (field, size) = match r.page_size {
            0 => ("limit", r.limit),
            n => ("page_size", n),
        };
        let size = convert::page_size(field, size, 50)?;
        let before = convert::page_token("page_token", &r.page_token, TX_PAGES)?;
        let project = (!r.project.is_empty())
            .then(|| ProjectName::parse("project", &r.project))
            .transpose()?;
        let visible = |t: &_| reads::shows_transaction(&who, t);
        let readable = reads::readable(&who);
        let filter = Filter {
            env: env.as_ref(),
            project: project.as_ref(),
            readable: &readable,
            visible: &visible,
        };
        let page = self
            .coordinator
            .list(&filter, size, before, r.active_only)?;
        Ok(Response::new(pb::ListReleasesResponse {
            transactions: page.items.iter().map(convert::transaction).collect(),
            next_page_token: convert::next_token(TX_PAGES, page.next),
        }))
    }

    async fn resolve_participant(
        &self,
        request: Request<pb::ResolveParticipantRequest>,
    ) -> Result<Response<pb::ResolveParticipantResponse>, Status> {
        let (id, project, mut resolution) = convert::resolution(request.get_ref())?;
        let (who, _) = self.allow_on(&request, "ResolveParticipant", &id).await?;
        resolution.actor = who.actor_or(&resolution.actor);
        let r = request.into_inner();
        let (record, resolved) = self
            .coordinator
            .resolve(&id, project, resolution, r.dry_run)
            .await?;
        Ok(Response::new(pb::ResolveParticipantResponse {
            transaction: Some(convert::transaction(&record)),
            participant_status: resolved.status,
            applied: resolved.applied,
        }))
    }

    async fn retry_delivery(
        &self,
        request: Request<pb::RetryDeliveryRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        let r = request.get_ref();
        let id = TxId::parse("transaction_id", &r.transaction_id)?;
        let actor = convert::actor(&r.actor)?;
        let (who, _) = self.allow_on(&request, "RetryDelivery", &id).await?;
        let record = self.coordinator.retry(&id, who.actor_or(&actor)).await?;
        Ok(Response::new(convert::transaction(&record)))
    }

    async fn abort_release(
        &self,
        request: Request<pb::AbortReleaseRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        let id = TxId::parse("id", &request.get_ref().id)?;
        let (who, _) = self.allow_on(&request, "AbortRelease", &id).await?;
        let r = request.into_inner();
        convert::text("reason", &r.reason, lockstep::limits::MAX_TEXT_LEN)?;
        let reason = if r.reason.is_empty() {
            "no reason given".to_string()
        } else {
            r.reason
        };
        Ok(Response::new(convert::transaction(
            &self
                .coordinator
                .abort(&id, reason, who.actor_or(""))
                .await?,
        )))
    }

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = request.get_ref();
        let filter = (!r.transaction_id.is_empty())
            .then(|| TxId::parse("transaction_id", &r.transaction_id))
            .transpose()?;
        let who = match &filter {
            Some(id) => self.allow_on(&request, "WatchEvents", id).await?.0,
            None => {
                // The whole log, filtered to what the caller may read.
                let key = "WatchEvents --all";
                self.allow(&request, key, Target::every()).await?
            }
        };
        let expires = self.access.token_expiry(&request);
        let r = request.into_inner();
        if r.until_terminal && filter.is_none() {
            return Err(Status::invalid_argument(
                "until_terminal: needs transaction_id",
            ));
        }
        if r.only_terminal && !r.until_terminal {
            return Err(Status::invalid_argument(
                "only_terminal: needs until_terminal (and transaction_id)",
            ));
        }
        let filter = WatchFilter {
            transaction: filter,
            until_terminal: r.until_terminal,
            only_terminal: r.only_terminal,
        };
        let events = self.coordinator.watch(filter, r.from_seq);
        let events = events
            .map(|e| e.map_err(|e| Status::unavailable(format!("reading the event log: {e}"))));
        let actor = who.actor.clone();
        let events = self.visible_events(who, Box::pin(events));
        let events = revoked::ending_on_revocation(&self.access, &actor, expires, events);
        Ok(Response::new(events))
    }

    async fn get_live_state(
        &self,
        request: Request<pb::GetLiveStateRequest>,
    ) -> Result<Response<pb::LiveState>, Status> {
        let env = environment("environment", &request.get_ref().environment)?;
        let who = self
            .allow(&request, "GetLiveState", Target::environment(&env))
            .await?;
        self.known(&env)?;
        let live = self.coordinator.live(&env);
        let (in_flight, pending): (Vec<_>, Vec<_>) = live
            .active
            .iter()
            .filter(|t| reads::shows_transaction(&who, t))
            .partition(|t| matches!(t.state, TxState::Committing | TxState::Aborting));
        let checkpoint = live.checkpoint.as_ref();
        let (observed, drift) = self.observed(&who, &env, request.get_ref().observe).await?;
        Ok(Response::new(pb::LiveState {
            environment: env.to_string(),
            checkpoint: checkpoint.map(|c| self.live_checkpoint(&who, c)),
            in_flight: in_flight.into_iter().map(convert::transaction).collect(),
            pending: pending.into_iter().map(convert::transaction).collect(),
            last_event_seq: *self.coordinator.feed().latest().borrow(),
            observed,
            drift,
        }))
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let env = environment("environment", &request.get_ref().environment)?;
        let who = self
            .allow(&request, "GetHistory", Target::environment(&env))
            .await?;
        self.known(&env)?;
        let r = request.into_inner();
        let size = convert::page_size("page_size", r.page_size, 1000)?;
        let after = convert::page_token("page_token", &r.page_token, HISTORY_PAGES)?;
        let page = self.coordinator.history(&env, after.unwrap_or(0), size)?;
        Ok(Response::new(pb::GetHistoryResponse {
            checkpoints: page
                .items
                .iter()
                .map(|c| self.visible_checkpoint(&who, c))
                .collect(),
            next_page_token: convert::next_token(HISTORY_PAGES, page.next),
        }))
    }

    async fn get_decision(
        &self,
        request: Request<pb::GetDecisionRequest>,
    ) -> Result<Response<pb::GetDecisionResponse>, Status> {
        let r = request.get_ref();
        let id = TxId::parse("transaction_id", &r.transaction_id)?;
        let project = (!r.project.is_empty())
            .then(|| ProjectName::parse("project", &r.project))
            .transpose()?;
        let named = (!r.environment.is_empty())
            .then(|| Environment::parse("environment", &r.environment))
            .transpose()?;
        let environment = Self::asking_from(&request, named);
        let asker = Asker {
            project: project.as_ref(),
            environment: environment.as_ref(),
        };
        self.allow_decision(&request, &id, asker).await?;
        let r = request.into_inner();
        let ours = self.coordinator.incarnation();
        if !r.coordinator_incarnation.is_empty() && r.coordinator_incarnation != ours {
            return Err(Status::failed_precondition(format!(
                "coordinator_incarnation: this coordinator (incarnation {ours}) did not make the transaction {id} you prepared (incarnation {}): its data directory was replaced, and the decision was lost with the old one; keep {id} staged and resolve it by hand",
                r.coordinator_incarnation
            )));
        }
        let decision = pb::Decision::from(self.coordinator.decision(&id, asker)?);
        Ok(Response::new(pb::GetDecisionResponse {
            decision: decision as i32,
            coordinator_term: Some(self.coordinator.term()),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        Ok(Response::new(self.make_token(request).await?))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Ok(Response::new(self.revoke(request).await?))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        // Every principal's refused calls, in every environment and project.
        self.allow(&request, "ListAudit", Target::every()).await?;
        let r = request.into_inner();
        let size = convert::page_size("page_size", r.page_size, 100)?;
        let page = self.coordinator.audit(r.since_seq, size)?;
        Ok(Response::new(pb::ListAuditResponse {
            events: page.events,
            next_seq: page.next.unwrap_or(0),
        }))
    }

    async fn add_subscription(
        &self,
        request: Request<pb::AddSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        self.subscribe(request).await
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        self.subscriptions(request).await
    }

    async fn remove_subscription(
        &self,
        request: Request<pb::RemoveSubscriptionRequest>,
    ) -> Result<Response<pb::RemoveSubscriptionResponse>, Status> {
        self.unsubscribe(request).await
    }

    async fn test_subscription(
        &self,
        request: Request<pb::TestSubscriptionRequest>,
    ) -> Result<Response<pb::TestSubscriptionResponse>, Status> {
        self.ping(request).await
    }

    async fn add_environment(
        &self,
        request: Request<pb::AddEnvironmentRequest>,
    ) -> Result<Response<pb::EnvironmentInfo>, Status> {
        self.declare_environment(request).await
    }

    async fn list_environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        self.environments(request).await
    }

    async fn get_environment(
        &self,
        request: Request<pb::GetEnvironmentRequest>,
    ) -> Result<Response<pb::EnvironmentInfo>, Status> {
        self.environment(request).await
    }

    async fn apply_pipeline(
        &self,
        request: Request<pb::ApplyPipelineRequest>,
    ) -> Result<Response<pb::ApplyPipelineResponse>, Status> {
        self.apply(request).await
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::CreateTransactionResponse>, Status> {
        self.promote_as_asked(request).await
    }

    async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.allow(&request, "GetCluster", Target::every()).await?;
        let status = match self.coordinator.cluster()? {
            None => pb::ClusterStatus {
                store: "rocksdb".into(),
                ..Default::default()
            },
            Some(view) => convert::cluster(&view),
        };
        Ok(Response::new(status))
    }

    async fn report_verify(
        &self,
        request: Request<pb::ReportVerifyRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        self.report(request).await
    }

    async fn approve(
        &self,
        request: Request<pb::ApprovalRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        self.decide_approval(request, true).await
    }

    async fn reject(
        &self,
        request: Request<pb::ApprovalRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        self.decide_approval(request, false).await
    }
}
