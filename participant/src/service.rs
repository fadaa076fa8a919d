//! The `lockstep.v1.Participant` gRPC edge over a [`Participant`]: validate, call,
//! convert. The protocol rules live in `participant.rs`.

use lockstep::{
    names::{ProjectName, TxId, Version},
    pb::{self, participant_server},
};
use tonic::{Request, Response, Status};

use crate::{deployer::Deployer, participant::Participant};

/// Serves the Participant API for one project.
pub struct ParticipantService<D> {
    participant: Participant<D>,
}

impl<D: Deployer> ParticipantService<D> {
    /// Wraps a participant.
    pub fn new(participant: Participant<D>) -> Self {
        Self { participant }
    }
}

#[tonic::async_trait]
impl<D: Deployer> participant_server::Participant for ParticipantService<D> {
    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let r = request.into_inner();
        TxId::parse("transaction_id", &r.transaction_id)?;
        ProjectName::parse("project", &r.project)?;
        Version::parse("version", &r.version)?;
        if !r.from_version.is_empty() {
            Version::parse("from_version", &r.from_version)?;
        }
        Ok(Response::new(self.participant.prepare(r).await?))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let r = request.into_inner();
        TxId::parse("transaction_id", &r.transaction_id)?;
        Ok(Response::new(
            self.participant
                .commit(&r.transaction_id, &r.project)
                .await?,
        ))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let r = request.into_inner();
        TxId::parse("transaction_id", &r.transaction_id)?;
        Ok(Response::new(
            self.participant
                .abort(&r.transaction_id, &r.project, &r.reason)
                .await?,
        ))
    }

    async fn preview(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PreviewResponse>, Status> {
        let r = request.into_inner();
        TxId::parse("transaction_id", &r.transaction_id)?;
        ProjectName::parse("project", &r.project)?;
        Version::parse("version", &r.version)?;
        Ok(Response::new(self.participant.preview(r).await?))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ParticipantStatus>, Status> {
        Ok(Response::new(self.participant.status().await?))
    }
}
