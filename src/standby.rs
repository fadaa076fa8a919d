//! A coordinator that does not lead (a standby on etcd) still answers on its port: every
//! call of `lockstep.v1.Coordinator` it does not answer itself (the coordinator crate's
//! standby answers reads from etcd) gets UNAVAILABLE naming the leader (in the message
//! and in the `lockstep-leader` metadata), and health reports the service NOT_SERVING,
//! so a client given several coordinators finds the leader by asking health, and one
//! given only this one is told where to go. The same probe is here for clients.

use std::{
    convert::Infallible,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::{
    body::Body,
    codegen::http,
    metadata::MetadataMap,
    server::NamedService,
    transport::{Channel, Server, server::Connected},
};

use crate::edge::ServeError;

/// The name of the metadata entry that carries the leader's address.
pub const LEADER_HEADER: &str = "lockstep-leader";

/// The coordinator service of a standby: who leads, as last seen.
#[derive(Clone, Default)]
pub struct Standby {
    leader: Arc<RwLock<String>>,
}

impl Standby {
    /// Records who leads now (the campaign hears it).
    pub fn set_leader(&self, leader: &str) {
        *self.leader.write().unwrap_or_else(|p| p.into_inner()) = leader.to_string();
    }

    /// Who leads, as last seen (empty: not known yet).
    fn leader(&self) -> String {
        let leader = self.leader.read().unwrap_or_else(|p| p.into_inner());
        leader.clone()
    }

    /// UNAVAILABLE saying `message`, with the leader in the metadata.
    fn unavailable(&self, message: String) -> tonic::Status {
        let mut metadata = MetadataMap::new();
        if let Ok(value) = self.leader().parse() {
            metadata.insert(LEADER_HEADER, value);
        }
        tonic::Status::with_metadata(tonic::Code::Unavailable, message, metadata)
    }

    /// A read this standby could not answer from the store (`why`), naming the leader.
    pub fn unable(&self, why: &str) -> tonic::Status {
        let leader = self.leader();
        self.unavailable(format!(
            "this coordinator is a standby and could not read the store ({why}); the leader is at {leader}"
        ))
    }

    /// What a call the standby does not answer gets: UNAVAILABLE naming the leader.
    pub fn refusal(&self) -> tonic::Status {
        let leader = self.leader();
        let message = match leader.is_empty() {
            true => "this coordinator is a standby and does not know the leader yet; ask another instance".to_string(),
            false => format!(
                "this coordinator is a standby; the leader is at {leader}: call it (`lockstep --coordinator {leader}`, or list every instance comma-separated)"
            ),
        };
        self.unavailable(message)
    }
}

impl NamedService for Standby {
    const NAME: &'static str = "lockstep.v1.Coordinator";
}

impl tower::Service<http::Request<Body>> for Standby {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        std::future::ready(Ok(self.refusal().into_http()))
    }
}

/// Serves `standby` (a [`Standby`], or one that answers some calls itself) and health
/// saying NOT_SERVING for it, until `shutdown`.
pub async fn serve<S, I, IO, IE>(
    standby: S,
    incoming: I,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    I: Stream<Item = Result<IO, IE>> + Send,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<S>().await;
    // A stop waits for every open call, and a health Watch never ends on its own: its
    // statuses go first, which ends the Watch streams (a standby that won must serve).
    let mut statuses = health.clone();
    let shutdown = async move {
        shutdown.await;
        statuses.clear_service_status("").await;
        statuses.clear_service_status(S::NAME).await;
    };
    Server::builder()
        .add_service(standby)
        .add_service(health_service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Whether the coordinator behind `channel` leads (its health says SERVING), asked
/// within `within`.
pub async fn leads(channel: Channel, within: Duration) -> bool {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let request = HealthCheckRequest {
        service: <Standby as NamedService>::NAME.to_string(),
    };
    let asked = tokio::time::timeout(within, HealthClient::new(channel).check(request)).await;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    matches!(asked, Ok(Ok(r)) if r.get_ref().status == serving)
}
