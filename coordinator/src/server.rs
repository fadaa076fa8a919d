//! Assembles the coordinator's gRPC server: the Coordinator service, reflection and
//! health, on a listener the caller bound (tests bind `127.0.0.1:0` and never race for
//! ports), until the shutdown future resolves.

use lockstep::{
    edge::{self, ServeError},
    limits::MAX_MESSAGE_BYTES,
    pb::coordinator_server::CoordinatorServer,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::{coordinator::Coordinator, service::CoordinatorService};

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
    let service = CoordinatorServer::new(CoordinatorService::new(coordinator))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    edge::serve(service, incoming, shutdown).await
}
