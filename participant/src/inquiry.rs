//! The coordinator's GetDecision as a [`DecisionSource`]: how a participant that voted
//! PREPARED learns the decision when Commit or Abort does not come (see
//! `participant::decisions` for when it asks).

use std::time::Duration;

use lockstep::{
    orders::Decision,
    pb::{self, coordinator_client::CoordinatorClient},
};
use tonic::transport::Channel;

use crate::participant::{Answer, DecisionSource, Pending, Question};

/// How long one instance may take to answer before the next is asked: an instance that
/// accepts the call and never answers (stalled on its store, or paused) must not hold
/// every later question of the vote, nor hide the instance that would answer.
pub const ASK_WITHIN: Duration = Duration::from_secs(10);

/// GetDecision over (lazily connected) channels to the coordinator's instances.
#[derive(Clone)]
pub struct GrpcDecisions {
    coordinators: Vec<Channel>,
    within: Duration,
}

impl GrpcDecisions {
    /// Asks the coordinator at the other end of `coordinator`.
    pub fn new(coordinator: Channel) -> Self {
        Self::asking_each(vec![coordinator])
    }

    /// Asks each instance in turn (several coordinators on etcd: standbys answer
    /// UNAVAILABLE naming the leader) until one answers.
    pub fn asking_each(coordinators: Vec<Channel>) -> Self {
        Self {
            coordinators,
            within: ASK_WITHIN,
        }
    }

    /// The same, giving each instance `within` to answer instead of [`ASK_WITHIN`].
    pub fn answering_within(self, within: Duration) -> Self {
        Self { within, ..self }
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
        let (term, within) = (question.term, self.within);
        Box::pin(async move {
            let mut why = Vec::new();
            for channel in coordinators {
                let mut client = CoordinatorClient::new(channel);
                let asked = client.get_decision(request.clone());
                match tokio::time::timeout(within, asked).await {
                    Ok(Ok(answer)) => match answered(answer.into_inner(), term) {
                        Ok(answer) => return Ok(answer),
                        Err(stale) => why.push(stale),
                    },
                    Ok(Err(status)) => why.push(status.message().to_string()),
                    Err(_) => why.push(format!("no answer within {within:?}")),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lockstep::names::{Environment, ProjectName, TxId};

    use super::*;

    /// Review finding of stop 60: an instance that accepted GetDecision and never
    /// answered held the question for good, so the next instance (the leader that
    /// knows the decision) was never asked. Given two instances that accept
    /// connections and never answer, when a vote asks for its decision, then the
    /// question ends, naming both.
    #[tokio::test]
    async fn an_instance_that_never_answers_does_not_hold_the_question() {
        let mut instances = Vec::new();
        let mut held = Vec::new();
        for _ in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            instances.push(lockstep::edge::endpoint(&url).unwrap().connect_lazy());
            held.push(tokio::spawn(async move {
                let mut open = Vec::new();
                while let Ok((socket, _)) = listener.accept().await {
                    open.push(socket);
                }
            }));
        }
        let source =
            GrpcDecisions::asking_each(instances).answering_within(Duration::from_millis(200));
        let question = Question {
            tx: TxId::parse("transaction_id", "T1").unwrap(),
            project: ProjectName::parse("project", "A").unwrap(),
            environment: Environment::parse("environment", "default").unwrap(),
            incarnation: String::new(),
            term: 0,
        };
        let asked = tokio::time::timeout(Duration::from_secs(10), source.decision(&question));
        let why = asked.await.expect("a silent instance held the question");
        let why = why.expect_err("nobody answered");
        assert_eq!(why.matches("no answer within 200ms").count(), 2, "{why}");
        held.iter().for_each(|h| h.abort());
    }
}
