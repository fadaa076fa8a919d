//! The coordinator's GetDecision as a [`DecisionSource`]: how a participant that voted
//! PREPARED learns the decision when Commit or Abort does not come (see
//! `participant::decisions` for when it asks).

use lockstep::{
    orders::Decision,
    pb::{self, coordinator_client::CoordinatorClient},
};
use tonic::transport::Channel;

use crate::participant::{Answer, DecisionSource, Pending, Question};

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
    fn decision(&self, question: &Question) -> Pending<Result<Answer, String>> {
        let coordinators = self.coordinators.clone();
        let request = pb::GetDecisionRequest {
            transaction_id: question.tx.to_string(),
            project: question.project.to_string(),
            coordinator_incarnation: question.incarnation.clone(),
            environment: question.environment.to_string(),
        };
        let term = question.term;
        Box::pin(async move {
            let mut why = Vec::new();
            for channel in coordinators {
                let mut client = CoordinatorClient::new(channel);
                match client.get_decision(request.clone()).await {
                    Ok(answer) => match answered(answer.into_inner(), term) {
                        Ok(answer) => return Ok(answer),
                        Err(stale) => why.push(stale),
                    },
                    Err(status) => why.push(status.message().to_string()),
                }
            }
            Err(why.join("; "))
        })
    }
}

/// `answer`, unless it was given in a term older than `term` (a deposed leader that
/// still answers): then the next instance is asked. An answer without a term (a
/// coordinator older than stop 60) is taken as before.
fn answered(answer: pb::GetDecisionResponse, term: u64) -> Result<Answer, String> {
    let decision = Decision::from(answer.decision);
    match answer.coordinator_term {
        Some(given) if given < term => Err(format!(
            "an instance answered {decision:?} in coordinator term {given}, older than term {term} seen here: passed over"
        )),
        given => Ok(Answer {
            decision,
            term: given,
        }),
    }
}
