//! The HTTP/JSON API and the web console (`--http-listen`), beside gRPC on a listener
//! of their own. Every route is a gRPC call made in-process through the same service:
//! the caller's bearer token or client certificate is authenticated by the same
//! [`Access`], and the handler checks the same permission table, so HTTP can never do
//! what gRPC would refuse. Bodies are the proto3 JSON mapping (`-o json`, grpcurl);
//! errors carry the gRPC code and its field-naming message (docs/http-api.md).

mod caller;
mod console;
mod encoded;
mod events;
mod listener;
mod routes;
mod views;

use std::net::SocketAddr;

use lockstep::tls::ServerTls;

use crate::{access::Access, coordinator::Coordinator, service::CoordinatorService};

pub use listener::Peer;

/// What every route works through.
#[derive(Clone)]
pub struct Api {
    service: CoordinatorService,
    access: Access,
    /// Event JSON shared by the SSE streams.
    encoded: encoded::EncodedEvents,
}

/// Binds `addr` and serves the API and console in the background, over `tls` when
/// given; returns the bound address (port 0 picks a free one).
pub async fn start(
    addr: SocketAddr,
    tls: Option<ServerTls>,
    coordinator: Coordinator,
    access: Access,
) -> std::io::Result<SocketAddr> {
    let api = Api {
        service: CoordinatorService::new(coordinator, access.clone()),
        access,
        encoded: encoded::EncodedEvents::default(),
    };
    let (listener, bound) = listener::bind(addr, tls).await?;
    let app = routes::router(api).into_make_service_with_connect_info::<Peer>();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the HTTP API stopped: {e}");
        }
    });
    Ok(bound)
}
