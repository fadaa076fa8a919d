//! The coordinator's GetDecision as a [`DecisionSource`]: how a participant that voted
//! PREPARED learns the decision when Commit or Abort does not come (see
//! `participant::decisions` for when it asks).

use lockstep::{
    names::{Environment, ProjectName, TxId},
    orders::Decision,
    pb::{self, coordinator_client::CoordinatorClient},
};
use tonic::transport::Channel;

use crate::participant::{DecisionSource, Pending};

/// GetDecision over (lazily connected) channels to the coordinator's instances.
#[derive(Clone)]
pub struct GrpcDecisions {
    coordinators: Vec<Channel>,
}

impl GrpcDecisions {
    /// Asks the coordinator at the other end of `coordinator`.
    pub fn new(coordinator: Channel) -> Self {
        Self::asking_each(vec![coordinator])
    }

    /// Asks each instance in turn (several coordinators on etcd: standbys answer
    /// UNAVAILABLE naming the leader) until one answers.
    pub fn asking_each(coordinators: Vec<Channel>) -> Self {
        Self { coordinators }
    }
}

impl DecisionSource for GrpcDecisions {
    fn decision(
        &self,
        tx: &TxId,
        project: &ProjectName,
        environment: &Environment,
        incarnation: &str,
    ) -> Pending<Result<Decision, String>> {
        let coordinators = self.coordinators.clone();
        let request = pb::GetDecisionRequest {
            transaction_id: tx.to_string(),
            project: project.to_string(),
            coordinator_incarnation: incarnation.to_string(),
            environment: environment.to_string(),
        };
        Box::pin(async move {
            let mut why = Vec::new();
            for channel in coordinators {
                let mut client = CoordinatorClient::new(channel);
                match client.get_decision(request.clone()).await {
                    Ok(answer) => return Ok(Decision::from(answer.into_inner().decision)),
                    Err(status) => why.push(status.message().to_string()),
                }
            }
            Err(why.join("; "))
        })
    }
}
