//! Assembles the coordinator's gRPC server: the Coordinator service behind the access
//! interceptor (every call authenticated once), reflection and health, on a listener
//! the caller bound (tests bind `127.0.0.1:0` and never race for ports), over TLS unless
//! `--insecure`, until the shutdown future resolves.

use lockstep::{
    edge::{self, ServeError},
    limits::MAX_MESSAGE_BYTES,
    pb::coordinator_server::CoordinatorServer,
    tls::ServerTls,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::{service::interceptor::InterceptedService, transport::server::Connected};

use crate::{access::Access, coordinator::Coordinator, service::CoordinatorService};

/// Serves `coordinator` on `listener` until `shutdown` resolves: over `tls` when given
/// (then `access` must be built on the same TLS), plaintext otherwise.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    coordinator: Coordinator,
    access: Access,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tcp = edge::incoming(listener);
    match tls {
        Some(tls) => serve_incoming(tls.incoming(tcp), coordinator, access, shutdown).await,
        None => serve_incoming(tcp, coordinator, access, shutdown).await,
    }
}

/// Serves `coordinator` on any stream of connections (the simulation passes its
/// simulated TCP listener's) until `shutdown` resolves.
pub async fn serve_incoming<I, IO, IE>(
    incoming: I,
    coordinator: Coordinator,
    access: Access,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>> + Send,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = CoordinatorServer::new(CoordinatorService::new(coordinator, access.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    edge::serve(InterceptedService::new(service, access), incoming, shutdown).await
}
