//! Assembles an agent's gRPC server: the Participant service, reflection and health, on
//! a listener the caller bound (over TLS unless `--insecure`), until the shutdown
//! future resolves.

use lockstep::{
    edge::{self, ServeError},
    limits::MAX_MESSAGE_BYTES,
    pb::participant_server::ParticipantServer,
    tls::ServerTls,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::{
    access::OnlyCoordinator, deployer::Deployer, participant::Participant,
    service::ParticipantService,
};

/// Serves `participant` on `listener` until `shutdown` resolves: over `tls` when given
/// (then `access` must be built on the same TLS), plaintext otherwise.
pub async fn serve<D: Deployer>(
    listener: TcpListener,
    tls: Option<ServerTls>,
    participant: Participant<D>,
    access: OnlyCoordinator,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tcp = edge::incoming(listener);
    match tls {
        Some(tls) => serve_incoming(tls.incoming(tcp), participant, access, shutdown).await,
        None => serve_incoming(tcp, participant, access, shutdown).await,
    }
}

/// Serves `participant` on any stream of connections (the simulation passes its
/// simulated TCP listener's) until `shutdown` resolves.
pub async fn serve_incoming<D, I, IO, IE>(
    incoming: I,
    participant: Participant<D>,
    access: OnlyCoordinator,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    D: Deployer,
    I: Stream<Item = Result<IO, IE>> + Send,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = ParticipantServer::new(ParticipantService::new(participant, access))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    edge::serve(service, incoming, shutdown).await
}
