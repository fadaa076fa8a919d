//! Assembles the coordinator's gRPC server: the Coordinator service, reflection and
//! health, on a listener the caller bound (tests bind `127.0.0.1:0` and never race for
//! ports), until the shutdown future resolves.

use lockstep::{edge, limits::MAX_MESSAGE_BYTES, pb::coordinator_server::CoordinatorServer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::transport::{Server, server::Connected};
use tower::util::MapResponseLayer;

use crate::{coordinator::Coordinator, service::CoordinatorService};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection descriptors are broken (a build problem).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `coordinator` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    coordinator: Coordinator,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_incoming(edge::incoming(listener), coordinator, shutdown).await
}

/// Serves `coordinator` on any stream of connections (the simulation passes its
/// simulated TCP listener's) until `shutdown` resolves.
pub async fn serve_incoming<I, IO, IE>(
    incoming: I,
    coordinator: Coordinator,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>> + Send,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = edge::reflection("lockstep.v1.Coordinator")?;
    let service = CoordinatorServer::new(CoordinatorService::new(coordinator))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    Server::builder()
        .tcp_nodelay(true)
        .layer(MapResponseLayer::new(edge::oversize_is_resource_exhausted))
        .add_service(service)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
