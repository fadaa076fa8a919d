//! tonic over turmoil's simulated TCP: a connector for clients and channels, an
//! incoming-connection stream for servers, and the coordinator's [`ParticipantNet`] on
//! top. Everything else (the protocol, the servers, the SDK) is the production code.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use hyper_util::{client::legacy::connect::Connected as ClientConnected, rt::TokioIo};
use lockstep::pb::participant_client::ParticipantClient;
use lockstep_coordinator::network::ParticipantNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Uri, server::TcpConnectInfo};
use turmoil::net::{TcpListener, TcpStream};

/// Connects tonic channels through the simulated network.
#[derive(Clone)]
pub struct Connector;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<SimStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            Ok(TokioIo::new(SimStream(
                TcpStream::connect(authority).await?,
            )))
        })
    }
}

/// A simulated TCP stream that tonic accepts on both sides.
pub struct SimStream(pub TcpStream);

impl hyper_util::client::legacy::connect::Connection for SimStream {
    fn connected(&self) -> ClientConnected {
        ClientConnected::new()
    }
}

impl tonic::transport::server::Connected for SimStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        TcpConnectInfo {
            local_addr: self.0.local_addr().ok(),
            remote_addr: self.0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A lazily connected channel to `http://host:port` over the simulated network.
pub fn channel(url: &str) -> Channel {
    lockstep::edge::endpoint(url)
        .expect("simulation URLs are valid")
        .connect_with_connector_lazy(Connector)
}

/// Accepted connections of a simulated listener on `port`, as tonic's servers want them.
pub fn incoming(port: u16) -> impl futures::Stream<Item = std::io::Result<SimStream>> + Send {
    futures::stream::unfold(None::<TcpListener>, move |listener| async move {
        let listener = match listener {
            Some(l) => l,
            None => match TcpListener::bind(("0.0.0.0", port)).await {
                Ok(l) => l,
                Err(e) => return Some((Err(e), None)),
            },
        };
        let next = listener.accept().await.map(|(s, _)| SimStream(s));
        Some((next, Some(listener)))
    })
}

/// The coordinator's way to reach participants in the simulation: one lazily connected
/// channel per call site (channels are cheap and reconnect after a peer restarts).
#[derive(Default)]
pub struct SimNet {
    channels: std::sync::Mutex<std::collections::BTreeMap<String, Channel>>,
}

impl ParticipantNet for SimNet {
    fn client(&self, endpoint: &str) -> Result<ParticipantClient<Channel>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = channels
            .entry(endpoint.to_string())
            .or_insert_with(|| channel(endpoint))
            .clone();
        Ok(ParticipantClient::new(channel))
    }
}
