//! The kit's GetDecision: the decisions it took for the transactions it prepared
//! (UNDECIDED for one prepared and not yet decided, as a coordinator answers while it
//! waits; any other id: ABORT, as a coordinator presumes), served on `--serve` for
//! agents that ask, counting the asks.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use lockstep::pb::{self, coordinator_server};
use tonic::{Request, Response, Status};

/// The decisions the kit took, and how often each was asked, by transaction id, with
/// the coordinator term the kit's orders carry now (its answers carry it too, as a
/// coordinator's do). Cheap to clone.
#[derive(Clone, Default)]
pub struct Decisions(
    Arc<Mutex<HashMap<String, (pb::Decision, usize)>>>,
    Arc<AtomicU64>,
);

impl Decisions {
    /// The term the kit's answers carry from now on.
    pub fn set_term(&self, term: u64) {
        self.1.store(term, Ordering::SeqCst);
    }

    /// Records `decision` for `tx`, unless one was taken already: as a coordinator's,
    /// a decision never changes (a refused Abort after a Commit leaves COMMIT).
    pub fn decide(&self, tx: &str, decision: pb::Decision) {
        let mut map = self.lock();
        let entry = map.entry(tx.to_string()).or_insert((decision, 0));
        if entry.0 == pb::Decision::Undecided {
            entry.0 = decision;
        }
    }

    /// Notes a transaction the kit prepares: UNDECIDED until the kit decides.
    pub fn prepared(&self, tx: &str) {
        self.decide(tx, pb::Decision::Undecided);
    }

    /// How often the agent asked about `tx`.
    pub fn asks(&self, tx: &str) -> usize {
        self.lock().get(tx).map_or(0, |e| e.1)
    }

    /// The decision for `tx` as asked now (counting the ask).
    fn ask(&self, tx: &str) -> pb::Decision {
        let mut map = self.lock();
        let entry = map
            .entry(tx.to_string())
            .or_insert((pb::Decision::Abort, 0));
        entry.1 += 1;
        entry.0
    }

    /// The map (still usable after a panic elsewhere: every change is one update).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (pb::Decision, usize)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Service(Decisions);

#[tonic::async_trait]
impl coordinator_server::Coordinator for Service {
    async fn get_decision(
        &self,
        request: Request<pb::GetDecisionRequest>,
    ) -> Result<Response<pb::GetDecisionResponse>, Status> {
        let id = request.into_inner().transaction_id;
        let decision = self.0.ask(&id);
        Ok(Response::new(pb::GetDecisionResponse {
            decision: decision as i32,
            coordinator_term: Some(self.0.1.load(Ordering::SeqCst)),
        }))
    }
}

/// Starts serving GetDecision on `addr`; every other Coordinator call is UNIMPLEMENTED.
pub async fn serve(addr: SocketAddr) -> std::io::Result<Decisions> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let decisions = Decisions::default();
    let service = coordinator_server::CoordinatorServer::new(Service(decisions.clone()));
    let incoming = lockstep::edge::incoming(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    Ok(decisions)
}
