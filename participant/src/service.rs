//! The `lockstep.v1.Participant` gRPC edge over a [`Participant`]: validate, call,
//! convert. The protocol rules live in `participant.rs`.

use lockstep::{
    orders::{AbortOrder, CommitOrder, PrepareOrder, VoteAnswer},
    pb::{self, participant_server},
};
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::{access::OnlyCoordinator, deployer::Deployer, metrics, participant::Participant};

/// `ok` or `error`, for the order metrics.
fn outcome<T, E>(result: &Result<T, E>) -> &'static str {
    if result.is_ok() { "ok" } else { "error" }
}

/// Serves the Participant API for one project.
pub struct ParticipantService<D> {
    participant: Participant<D>,
    access: OnlyCoordinator,
}

impl<D: Deployer> ParticipantService<D> {
    /// Wraps a participant, answering only whom `access` lets through.
    pub fn new(participant: Participant<D>, access: OnlyCoordinator) -> Self {
        Self {
            participant,
            access,
        }
    }
}

#[tonic::async_trait]
impl<D: Deployer> participant_server::Participant for ParticipantService<D> {
    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        self.access.orders(&request)?;
        let term = request.get_ref().coordinator_term;
        self.participant.admit_term(term).await?;
        let order = PrepareOrder::try_from(request.into_inner())?;
        let started = Instant::now();
        let vote = self.participant.prepare(order).await;
        let outcome = match &vote {
            Ok(VoteAnswer::Prepared(_)) => "prepared",
            Ok(_) => "refused",
            Err(_) => "error",
        };
        metrics::order("prepare", outcome, started.elapsed());
        Ok(Response::new(pb::PrepareResponse::from(&vote?)))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        self.access.orders(&request)?;
        let term = request.get_ref().coordinator_term;
        self.participant.admit_term(term).await?;
        let order = CommitOrder::try_from(request.into_inner())?;
        let started = Instant::now();
        let live_version = self.participant.commit(&order).await;
        metrics::order("commit", outcome(&live_version), started.elapsed());
        let live_version = live_version?;
        Ok(Response::new(pb::CommitResponse { live_version }))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        self.access.orders(&request)?;
        let term = request.get_ref().coordinator_term;
        self.participant.admit_term(term).await?;
        let order = AbortOrder::try_from(request.into_inner())?;
        let started = Instant::now();
        let live_version = self.participant.abort(&order).await;
        metrics::order("abort", outcome(&live_version), started.elapsed());
        let live_version = live_version?;
        Ok(Response::new(pb::AbortResponse { live_version }))
    }

    async fn preview(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PreviewResponse>, Status> {
        self.access.orders(&request)?;
        let order = PrepareOrder::try_from(request.into_inner())?;
        Ok(Response::new(self.participant.preview(order).await?))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ParticipantStatus>, Status> {
        self.access.reads(&request)?;
        Ok(Response::new(self.participant.status().await?))
    }
}
