//! The coordinator's GetDecision as a [`DecisionSource`]: how a participant that voted
//! PREPARED learns the decision when Commit or Abort does not come (see
//! `participant::decisions` for when it asks).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lockstep::{
    orders::Decision,
    pb::{self, coordinator_client::CoordinatorClient},
};
use tonic::transport::Channel;

use crate::participant::{Answer, DecisionSource, Pending, Question};

/// How long one instance may take to answer before the next is asked: an instance whose
/// connection is alive (it answers HTTP/2 pings) but whose handler never answers (a
/// standby stalled on its store) must not hold every later question of the vote, nor
/// hide the instance that would answer. An answer is one store read; the example
/// Python agent gives 5 s too.
pub const ASK_WITHIN: Duration = Duration::from_secs(5);

/// GetDecision over (lazily connected) channels to the coordinator's instances.
#[derive(Clone)]
pub struct GrpcDecisions {
    coordinators: Vec<Channel>,
    within: Duration,
    /// The instance that gave the answer of the highest term taken so far (the last of
    /// them), with that term: asked first next time. It is the leader, as a rule, so a
    /// stalled instance listed before it costs [`ASK_WITHIN`] once rather than on
    /// every question asked one after another. A deposed leader's answer in an older
    /// term, taken by a question that began before the newer term was seen, does not
    /// displace it.
    answered_last: Arc<Mutex<(u64, usize)>>,
}

impl GrpcDecisions {
    /// Asks the coordinator at the other end of `coordinator`.
    pub fn new(coordinator: Channel) -> Self {
        Self::asking_each(vec![coordinator])
    }

    /// Asks each instance in turn (several coordinators on etcd: standbys answer
    /// UNAVAILABLE naming the leader) until one answers, beginning with the one that
    /// answered last, then the rest in the listed order from there.
    pub fn asking_each(coordinators: Vec<Channel>) -> Self {
        Self {
            coordinators,
            within: ASK_WITHIN,
            answered_last: Arc::default(),
        }
    }

    /// The same, giving each instance `within` to answer instead of [`ASK_WITHIN`].
    pub fn answering_within(self, within: Duration) -> Self {
        Self { within, ..self }
    }

    /// Every instance with its index: the one that answered last, then the rest in
    /// the listed order from there.
    fn in_asking_order(&self) -> Vec<(usize, Channel)> {
        let first = self.answered_last().1;
        let indexed = self.coordinators.iter().cloned().enumerate();
        let (before, from) = indexed.partition::<Vec<_>, _>(|(i, _)| *i < first);
        from.into_iter().chain(before).collect()
    }

    fn answered_last(&self) -> std::sync::MutexGuard<'_, (u64, usize)> {
        self.answered_last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that instance `index` gave an answer in `term` (0: none given),
    /// unless one of a higher term was taken already.
    fn answered_by(&self, index: usize, term: Option<u64>) {
        let term = term.unwrap_or(0);
        let mut last = self.answered_last();
        if term >= last.0 {
            *last = (term, index);
        }
    }
}

impl DecisionSource for GrpcDecisions {
    fn decision(&self, question: &Question) -> Pending<Result<Answer, String>> {
        let coordinators = self.in_asking_order();
        let this = self.clone();
        let request = pb::GetDecisionRequest {
            transaction_id: question.tx.to_string(),
            project: question.project.to_string(),
            coordinator_incarnation: question.incarnation.clone(),
            environment: question.environment.to_string(),
        };
        let (term, within) = (question.term, self.within);
        Box::pin(async move {
            let mut why = Vec::new();
            for (index, channel) in coordinators {
                let mut client = CoordinatorClient::new(channel);
                let asked = client.get_decision(request.clone());
                match tokio::time::timeout(within, asked).await {
                    Ok(Ok(answer)) => match answered(answer.into_inner(), term) {
                        Ok(answer) => {
                            this.answered_by(index, answer.term);
                            return Ok(answer);
                        }
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
/// coordinator older than stop 60) is taken as before only while no term was seen
/// here: after one was, it is passed over as an order without a term is refused (until
/// stop 64 it was acted on, so an old instance's presumed ABORT could undo a vote the
/// leader of that term commits).
fn answered(answer: pb::GetDecisionResponse, term: u64) -> Result<Answer, String> {
    let decision = Decision::from(answer.decision);
    match answer.coordinator_term {
        Some(given) if given < term => Err(format!(
            "an instance answered {decision:?} in coordinator term {given}, older than term {term} seen here: passed over"
        )),
        None if term > 0 => Err(format!(
            "an instance answered {decision:?} without a coordinator term, after term {term} was seen here: passed over"
        )),
        given => Ok(Answer {
            decision,
            term: given,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        task::{Context, Poll},
        time::{Duration, Instant},
    };

    use lockstep::names::{Environment, ProjectName, TxId};
    use tonic::{
        body::Body,
        codegen::{BoxFuture, Service, http},
        server::{Grpc, NamedService, UnaryService},
    };

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A coordinator instance over real HTTP/2: answers every GetDecision with its
    /// decision in term 1, or (`None`) takes the call and never answers, while its
    /// connection stays alive. Counts the calls it took.
    #[derive(Clone)]
    struct Instance(Option<pb::Decision>, Arc<AtomicUsize>);

    impl NamedService for Instance {
        const NAME: &'static str = "lockstep.v1.Coordinator";
    }

    impl Service<http::Request<Body>> for Instance {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            self.1.fetch_add(1, Ordering::SeqCst);
            let answer = self.0;
            Box::pin(async move {
                let Some(decision) = answer else {
                    return std::future::pending().await;
                };
                let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Answers(decision), request).await)
            })
        }
    }

    struct Answers(pb::Decision);

    impl UnaryService<pb::GetDecisionRequest> for Answers {
        type Response = pb::GetDecisionResponse;
        type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

        fn call(&mut self, _: tonic::Request<pb::GetDecisionRequest>) -> Self::Future {
            std::future::ready(Ok(tonic::Response::new(pb::GetDecisionResponse {
                decision: self.0 as i32,
                coordinator_term: Some(1),
            })))
        }
    }

    /// Serves `instance` on a loopback port; a channel to it.
    async fn serving(instance: Instance) -> Channel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tonic::transport::Server::builder().add_service(instance);
        tokio::spawn(server.serve_with_incoming(incoming));
        lockstep::edge::endpoint(&url).unwrap().connect_lazy()
    }

    /// Review finding of stop 60: an instance that took GetDecision and never answered
    /// (its connection alive, so no keep-alive ended the call) held the question for
    /// good, and the next instance, which knew the decision, was never asked. Given a
    /// stalled instance listed before one that answers COMMIT, when a vote asks for
    /// its decision, then it hears COMMIT once the first instance's time is up.
    #[tokio::test]
    async fn an_instance_that_never_answers_does_not_hide_the_one_that_does() {
        let stalled = serving(Instance(None, Arc::default())).await;
        let answering = serving(Instance(Some(pb::Decision::Commit), Arc::default())).await;
        let within = Duration::from_millis(300);
        let source = GrpcDecisions::asking_each(vec![stalled, answering]).answering_within(within);
        let question = question("T1");
        let started = Instant::now();
        let asked = tokio::time::timeout(Duration::from_secs(20), source.decision(&question));
        let answer = asked.await.expect("the stalled instance held the question");
        let answer = answer.expect("the second instance answers");
        assert_eq!((answer.decision, answer.term), (Decision::Commit, Some(1)));
        assert!(
            started.elapsed() >= within,
            "the stalled instance was not asked first"
        );
    }

    /// Stop 61's list: every question asked the instances in the listed order, so a
    /// stalled instance listed first cost each question its time to answer. Given a
    /// stalled instance listed before one that answers, when a vote asks twice, then
    /// the second question goes to the instance that answered and is answered without
    /// the stalled one being asked again (asked once, or not at all should the first
    /// question's call not have reached it in its time).
    #[tokio::test]
    async fn the_instance_that_answered_is_asked_first_next_time() {
        let stalled_calls = Arc::new(AtomicUsize::new(0));
        let stalled = serving(Instance(None, stalled_calls.clone())).await;
        let answering = serving(Instance(Some(pb::Decision::Commit), Arc::default())).await;
        let within = Duration::from_secs(1);
        let source = GrpcDecisions::asking_each(vec![stalled, answering]).answering_within(within);
        let mut first_asked = Vec::new();
        for tx in ["T1", "T2"] {
            let asked =
                tokio::time::timeout(Duration::from_secs(20), source.decision(&question(tx)));
            let answer = asked
                .await
                .expect("answered")
                .expect("the second instance answers");
            assert_eq!(answer.decision, Decision::Commit);
            first_asked.push(source.in_asking_order()[0].0);
        }
        assert_eq!(first_asked, [1, 1], "the answering instance is asked first");
        let asked = stalled_calls.load(Ordering::SeqCst);
        assert!(
            asked <= 1,
            "the stalled instance was asked {asked} times: again after the other one answered"
        );
    }

    /// Review of stop 62: an answer of an older term (a deposed leader's, to a question
    /// that began before the newer term was seen) must not make its instance the first
    /// asked over the one that answered in the newer term.
    #[tokio::test]
    async fn an_answer_of_an_older_term_does_not_displace_the_newer_one() {
        let lazy = || {
            lockstep::edge::endpoint("http://127.0.0.1:9")
                .unwrap()
                .connect_lazy()
        };
        let source = GrpcDecisions::asking_each(vec![lazy(), lazy()]);
        let first = |s: &GrpcDecisions| s.in_asking_order()[0].0;
        source.answered_by(1, Some(5));
        source.answered_by(0, Some(4));
        assert_eq!(first(&source), 1, "displaced by an older term");
        source.answered_by(0, Some(5));
        assert_eq!(first(&source), 0, "the last answer of the newest term");
    }

    /// A vote's question about `tx`, seen in coordinator term 1.
    fn question(tx: &str) -> Question {
        Question {
            tx: TxId::parse("transaction_id", tx).unwrap(),
            project: ProjectName::parse("project", "A").unwrap(),
            environment: Environment::parse("environment", "default").unwrap(),
            incarnation: String::new(),
            term: 1,
        }
    }
    /// Review finding of stop 64: an answer without a term (a coordinator older than
    /// stop 60) was acted on after a term was seen here, though an order without one is
    /// refused then. Given term 5 seen, an ABORT without a term is passed over (the next
    /// instance is asked); with no term seen it is taken, and one of term 5 is taken.
    #[test]
    fn an_answer_without_a_term_is_passed_over_once_a_term_was_seen() {
        let abort = |term| pb::GetDecisionResponse {
            decision: pb::Decision::Abort as i32,
            coordinator_term: term,
        };
        let passed = answered(abort(None), 5).expect_err("no term after term 5");
        assert!(passed.contains("without a coordinator term"), "{passed}");
        assert_eq!(answered(abort(None), 0).unwrap().decision, Decision::Abort);
        assert_eq!(answered(abort(Some(5)), 5).unwrap().term, Some(5));
    }
}
