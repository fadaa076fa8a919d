//! What every Lockstep gRPC server adds around its own service, so the coordinator and
//! every agent behave the same for operators: server reflection (grpcurl `list` and
//! `describe` work without .proto files), `grpc.health.v1.Health`, and the message-size
//! limit answered with the status the gRPC spec gives it.

use std::{convert::Infallible, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::{
    body::Body,
    codegen::{self, http},
    server::NamedService,
    transport::{Endpoint, Server, server::Connected},
};
use tower::util::MapResponseLayer;

use crate::FILE_DESCRIPTOR_SET;

/// Why a server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection descriptors are broken (a build problem).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `service` on any stream of connections (a TCP listener's, through
/// [`incoming`], or the simulation's) until `shutdown` resolves, with what every
/// Lockstep server adds around it: reflection, health reporting it SERVING, `TCP_NODELAY`
/// and the message-size status. One function, so the coordinator and every agent look
/// the same to grpcurl and probes.
pub async fn serve<S, B, I, IO, IE>(
    service: S,
    incoming: I,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: codegen::Body<Data = codegen::Bytes> + Send + 'static,
    B::Error: Into<codegen::StdError>,
    I: Stream<Item = Result<IO, IE>> + Send,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<S>().await;
    let (reflection_v1, reflection_v1alpha) = reflection(S::NAME)?;
    Server::builder()
        .tcp_nodelay(true)
        .trace_fn(crate::trace::server_span)
        .layer(MapResponseLayer::new(oversize_is_resource_exhausted))
        .add_service(service)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Reflection services (v1 and v1alpha, for older grpcurl builds) serving the
/// `lockstep.v1` descriptors (with comments) and the health service's, advertising only
/// the services this server runs: `service` (e.g. `lockstep.v1.Coordinator`), health
/// and reflection itself.
pub fn reflection(
    service: &str,
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        [
            service,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        .into_iter()
        .fold(tonic_reflection::server::Builder::configure(), |b, name| {
            b.with_service_name(name)
        })
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Accepted connections of `listener`, with `TCP_NODELAY` set: gRPC messages are small
/// and latency-bound, and without it Nagle's algorithm and delayed ACKs add tens of
/// milliseconds to a round trip. (tonic sets it only on listeners it binds itself.)
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            // Best effort: a socket without TCP_NODELAY still works, only slower.
            let _ = stream.set_nodelay(true);
        })
    })
}

/// How often an idle connection is pinged, and how long a ping may go unanswered before
/// the connection is dropped and redialled.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// The endpoint every Lockstep client uses (coordinator to agents, agents to the
/// coordinator, the CLI): HTTP/2 keepalive pings, so a connection left half-open by a
/// network partition is detected and redialled instead of swallowing retries forever.
pub fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true))
}

/// `endpoint` with TLS when `tls` is given (an `https://` URL needs it; an `http://` one
/// must not have it): the one place every client decides how it dials, so a mismatch is
/// refused with the reason instead of failing later as a broken connection.
pub fn secured(
    endpoint: Endpoint,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Endpoint, String> {
    let https = endpoint.uri().scheme_str() == Some("https");
    match (tls, https) {
        (Some(tls), true) => endpoint.tls_config(tls.clone()).map_err(|e| e.to_string()),
        (None, false) => Ok(endpoint),
        (None, true) => Err(format!(
            "{}: an https:// URL needs the CA that signed its certificate (--ca, or the server's --tls-client-ca)",
            endpoint.uri()
        )),
        (Some(_), false) => Err(format!(
            "{}: TLS is configured, so use an https:// URL (plaintext would send credentials in the clear)",
            endpoint.uri()
        )),
    }
}

/// The endpoint the coordinator uses towards agents, which may run any gRPC stack on
/// its default server settings: no keepalive pings (gRPC's default server policy,
/// in grpcio, grpc-go and grpc-java, allows one ping per 5 minutes and none on an idle
/// connection, and closes connections that ping more with GOAWAY "too many pings").
/// Liveness comes from TCP keepalive and the calls instead: a Commit or Abort has a
/// timeout, a Prepare lives until the phase 1 deadline (a staging may take longer than
/// any fixed timeout), and a call that fails to get through drops its connection so the
/// next one dials afresh.
pub fn agent_endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    // TCP keepalive (invisible to gRPC's ping policy, which grpcio agents enforce)
    // finds a half-open connection within about 10 + 3 x 5 s, so a long Prepare is
    // never cut by a timeout of its own: it lives until the phase 1 deadline.
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(10)))
        .tcp_keepalive_interval(Some(Duration::from_secs(5)))
        .tcp_keepalive_retries(Some(3)))
}

/// gRPC says a message above the receiver's limit is RESOURCE_EXHAUSTED; tonic answers
/// OUT_OF_RANGE. This response mapper (used with `tower::util::MapResponseLayer`) puts
/// the spec's code back, keeping tonic's message (which gives the size and the limit).
pub fn oversize_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    let too_large = response.headers().get("grpc-message").is_some_and(|v| {
        let text = String::from_utf8_lossy(v.as_bytes()).replace("%20", " ");
        text.contains("message length too large")
    });
    if out_of_range && too_large {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
