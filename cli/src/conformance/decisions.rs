//! The kit's GetDecision: the decisions it took for the transactions it prepared (any
//! other id: ABORT, as a coordinator presumes), served on `--serve` for agents that ask.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use lockstep::pb::{self, coordinator_server};
use tonic::{Request, Response, Status};

/// The decisions the kit took, by transaction id. Cheap to clone.
#[derive(Clone, Default)]
pub struct Decisions(Arc<Mutex<HashMap<String, pb::Decision>>>);

impl Decisions {
    /// Records `decision` for `tx`.
    pub fn decide(&self, tx: &str, decision: pb::Decision) {
        self.lock().insert(tx.to_string(), decision);
    }

    /// The map (still usable after a panic elsewhere: every change is one insert).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, pb::Decision>> {
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
        let decision = self
            .0
            .lock()
            .get(&id)
            .copied()
            .unwrap_or(pb::Decision::Abort);
        Ok(Response::new(pb::GetDecisionResponse {
            decision: decision as i32,
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
