//! The coordinator's GetDecision as a [`DecisionSource`]: how a participant that voted
//! PREPARED learns the decision when Commit or Abort does not come (see
//! `participant::decisions` for when it asks).

use lockstep::{
    names::{ProjectName, TxId},
    orders::Decision,
    pb::{self, coordinator_client::CoordinatorClient},
};
use tonic::transport::Channel;

use crate::participant::{DecisionSource, Pending};

/// GetDecision over a (lazily connected) channel to the coordinator.
#[derive(Clone)]
pub struct GrpcDecisions {
    coordinator: Channel,
}

impl GrpcDecisions {
    /// Asks the coordinator at the other end of `coordinator`.
    pub fn new(coordinator: Channel) -> Self {
        Self { coordinator }
    }
}

impl DecisionSource for GrpcDecisions {
    fn decision(
        &self,
        tx: &TxId,
        project: &ProjectName,
        incarnation: &str,
    ) -> Pending<Result<Decision, String>> {
        let mut client = CoordinatorClient::new(self.coordinator.clone());
        let request = pb::GetDecisionRequest {
            transaction_id: tx.to_string(),
            project: project.to_string(),
            coordinator_incarnation: incarnation.to_string(),
        };
        Box::pin(async move {
            let answer = client.get_decision(request).await;
            let answer = answer.map_err(|status| status.message().to_string())?;
            Ok(Decision::from(answer.into_inner().decision))
        })
    }
}
