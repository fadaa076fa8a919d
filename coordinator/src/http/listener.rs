//! The HTTP listener: plain TCP with `--insecure`, else TLS with the server's
//! certificate (HTTP/2 or HTTP/1.1 by ALPN), keeping each connection's client certificate so a
//! call can be authenticated by it exactly as over gRPC.

use std::{net::SocketAddr, pin::Pin};

use axum::serve::{IncomingStream, Listener};
use lockstep::tls::ServerTls;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::mpsc,
};
use tokio_stream::StreamExt;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// A connection of either kind.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Who is at the other end of a connection: its TLS session (with its client
/// certificate, if it presented one), or nothing over plain TCP.
#[derive(Clone, Default)]
pub struct Peer(pub Option<TlsConnectInfo<TcpConnectInfo>>);

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(tls) => write!(f, "{:?} over TLS", tls.get_ref().remote_addr()),
            None => f.write_str("a plain TCP peer"),
        }
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, Accepted>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Accepted>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Connections accepted (and, with TLS, handshaken) by a background task.
pub struct Accepted {
    ready: mpsc::Receiver<(Pin<Box<dyn Io>>, Peer)>,
}

impl Listener for Accepted {
    type Io = Pin<Box<dyn Io>>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone: serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer::default())
    }
}

/// Binds `addr`; returns the listener and the bound address.
pub async fn bind(
    addr: SocketAddr,
    tls: Option<ServerTls>,
) -> std::io::Result<(Accepted, SocketAddr)> {
    let tcp = TcpListener::bind(addr).await?;
    let bound = tcp.local_addr()?;
    let (send, ready) = mpsc::channel(64);
    let incoming = lockstep::edge::incoming(tcp);
    tokio::spawn(async move {
        match tls {
            Some(tls) => {
                let mut secured = std::pin::pin!(tls.incoming_http(incoming));
                while let Some(Ok(stream)) = secured.next().await {
                    let peer = Peer(Some(stream.connect_info()));
                    if send
                        .send((Box::pin(stream) as Pin<Box<dyn Io>>, peer))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            None => {
                let mut plain = std::pin::pin!(incoming);
                while let Some(next) = plain.next().await {
                    let Ok(stream) = next else { continue };
                    if send
                        .send((Box::pin(stream) as Pin<Box<dyn Io>>, Peer(None)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    Ok((Accepted { ready }, bound))
}
