//! The `lockstep.v1.Coordinator` gRPC edge: each handler validates and converts its
//! request, calls the [`Coordinator`], and converts the answer. No protocol logic here.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use lockstep::{
    names::{Environment, ProjectName, TxId},
    pb::{self, coordinator_server},
};
use tonic::{Request, Response, Status};

use crate::{
    convert, coordinator::Coordinator, feed::WatchFilter, model::TxState, registry::admit::Created,
};

/// Serves the Coordinator API over a [`Coordinator`].
#[derive(Clone)]
pub struct CoordinatorService {
    coordinator: Coordinator,
}

impl CoordinatorService {
    /// Wraps a coordinator.
    pub fn new(coordinator: Coordinator) -> Self {
        Self { coordinator }
    }
}

fn created(c: Created) -> pb::CreateTransactionResponse {
    pb::CreateTransactionResponse {
        transaction: c.transaction.as_ref().map(convert::transaction),
        plan: Some(convert::plan(&c.plan, &c.waits_for)),
        created: c.created,
        first_event_seq: c.first_event_seq,
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
        let project = convert::project(request.into_inner())?;
        let (project, changed) = self.coordinator.register_project(project).await?;
        Ok(Response::new(pb::RegisterProjectResponse {
            project: Some(convert::project_message(&project)),
            changed,
        }))
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let env = environment("environment", &request.into_inner().environment)?;
        let projects = self
            .coordinator
            .projects(&env)
            .iter()
            .map(convert::project_message)
            .collect();
        Ok(Response::new(pb::ListProjectsResponse { projects }))
    }

    async fn create_release(
        &self,
        request: Request<pb::CreateReleaseRequest>,
    ) -> Result<Response<pb::CreateTransactionResponse>, Status> {
        let spec = convert::release(request.into_inner())?;
        Ok(Response::new(created(self.coordinator.create(spec).await?)))
    }

    async fn revert_release(
        &self,
        request: Request<pb::RevertReleaseRequest>,
    ) -> Result<Response<pb::CreateTransactionResponse>, Status> {
        let spec = convert::revert(request.into_inner())?;
        Ok(Response::new(created(self.coordinator.create(spec).await?)))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::CreateTransactionResponse>, Status> {
        let r = request.into_inner();
        let env = environment("environment", &r.environment)?;
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
        Ok(Response::new(created(self.coordinator.create(spec).await?)))
    }

    async fn get_release(
        &self,
        request: Request<pb::GetReleaseRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        let id = TxId::parse("id", &request.into_inner().id)?;
        Ok(Response::new(convert::transaction(
            &self.coordinator.get(&id)?,
        )))
    }

    async fn list_releases(
        &self,
        request: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        let r = request.into_inner();
        let env = (!r.environment.is_empty())
            .then(|| Environment::parse("environment", &r.environment))
            .transpose()?;
        let (field, size) = match r.page_size {
            0 => ("limit", r.limit),
            n => ("page_size", n),
        };
        let size = convert::page_size(field, size, 50)?;
        let before = convert::page_token("page_token", &r.page_token, TX_PAGES)?;
        let page = self
            .coordinator
            .list(env.as_ref(), size, before, r.active_only)?;
        Ok(Response::new(pb::ListReleasesResponse {
            transactions: page.items.iter().map(convert::transaction).collect(),
            next_page_token: convert::next_token(TX_PAGES, page.next),
        }))
    }

    async fn resolve_participant(
        &self,
        request: Request<pb::ResolveParticipantRequest>,
    ) -> Result<Response<pb::ResolveParticipantResponse>, Status> {
        let r = request.into_inner();
        let (id, project, resolution) = convert::resolution(&r)?;
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
        let r = request.into_inner();
        let id = TxId::parse("transaction_id", &r.transaction_id)?;
        let actor = convert::actor(&r.actor)?;
        let record = self.coordinator.retry(&id, actor).await?;
        Ok(Response::new(convert::transaction(&record)))
    }

    async fn abort_release(
        &self,
        request: Request<pb::AbortReleaseRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        let r = request.into_inner();
        let id = TxId::parse("id", &r.id)?;
        convert::text("reason", &r.reason, lockstep::limits::MAX_TEXT_LEN)?;
        let reason = if r.reason.is_empty() {
            "no reason given".to_string()
        } else {
            r.reason
        };
        Ok(Response::new(convert::transaction(
            &self.coordinator.abort(&id, reason).await?,
        )))
    }

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = request.into_inner();
        let filter = (!r.transaction_id.is_empty())
            .then(|| TxId::parse("transaction_id", &r.transaction_id))
            .transpose()?;
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
        if let Some(id) = &filter {
            self.coordinator.get(id)?;
        }
        let filter = WatchFilter {
            transaction: filter,
            until_terminal: r.until_terminal,
            only_terminal: r.only_terminal,
        };
        let events = self.coordinator.watch(filter, r.from_seq);
        let events = events
            .map(|e| e.map_err(|e| Status::unavailable(format!("reading the event log: {e}"))));
        Ok(Response::new(Box::pin(events)))
    }

    async fn get_live_state(
        &self,
        request: Request<pb::GetLiveStateRequest>,
    ) -> Result<Response<pb::LiveState>, Status> {
        let env = environment("environment", &request.into_inner().environment)?;
        let live = self.coordinator.live(&env);
        let (in_flight, pending): (Vec<_>, Vec<_>) = live
            .active
            .iter()
            .partition(|t| matches!(t.state, TxState::Committing | TxState::Aborting));
        Ok(Response::new(pb::LiveState {
            environment: env.to_string(),
            checkpoint: live.checkpoint.as_ref().map(convert::checkpoint),
            in_flight: in_flight.into_iter().map(convert::transaction).collect(),
            pending: pending.into_iter().map(convert::transaction).collect(),
            last_event_seq: *self.coordinator.feed().latest().borrow(),
        }))
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let r = request.into_inner();
        let env = environment("environment", &r.environment)?;
        let size = convert::page_size("page_size", r.page_size, 1000)?;
        let after = convert::page_token("page_token", &r.page_token, HISTORY_PAGES)?;
        let page = self.coordinator.history(&env, after.unwrap_or(0), size)?;
        Ok(Response::new(pb::GetHistoryResponse {
            checkpoints: page.items.iter().map(convert::checkpoint).collect(),
            next_page_token: convert::next_token(HISTORY_PAGES, page.next),
        }))
    }

    async fn get_decision(
        &self,
        request: Request<pb::GetDecisionRequest>,
    ) -> Result<Response<pb::GetDecisionResponse>, Status> {
        let r = request.into_inner();
        let id = TxId::parse("transaction_id", &r.transaction_id)?;
        let project = (!r.project.is_empty())
            .then(|| ProjectName::parse("project", &r.project))
            .transpose()?;
        let ours = self.coordinator.incarnation();
        if !r.coordinator_incarnation.is_empty() && r.coordinator_incarnation != ours {
            return Err(Status::failed_precondition(format!(
                "coordinator_incarnation: this coordinator (incarnation {ours}) did not make the transaction {id} you prepared (incarnation {}): its data directory was replaced, and the decision was lost with the old one; keep {id} staged and resolve it by hand",
                r.coordinator_incarnation
            )));
        }
        let decision = pb::Decision::from(self.coordinator.decision(&id, project.as_ref())?);
        Ok(Response::new(pb::GetDecisionResponse {
            decision: decision as i32,
        }))
    }
}
