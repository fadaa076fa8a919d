//! Assembles an agent's gRPC server: the Participant service, reflection and health, on
//! a listener the caller bound, until the shutdown future resolves.

use lockstep::{
    edge::{self, ServeError},
    limits::MAX_MESSAGE_BYTES,
    pb::participant_server::ParticipantServer,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::{deployer::Deployer, participant::Participant, service::ParticipantService};

/// Serves `participant` on `listener` until `shutdown` resolves.
pub async fn serve<D: Deployer>(
    listener: TcpListener,
    participant: Participant<D>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_incoming(edge::incoming(listener), participant, shutdown).await
}

/// Serves `participant` on any stream of connections (the simulation passes its
/// simulated TCP listener's) until `shutdown` resolves.
pub async fn serve_incoming<D, I, IO, IE>(
    incoming: I,
    participant: Participant<D>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    D: Deployer,
    I: Stream<Item = Result<IO, IE>> + Send,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = ParticipantServer::new(ParticipantService::new(participant))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    edge::serve(service, incoming, shutdown).await
}
