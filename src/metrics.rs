//! The `/metrics` endpoint both servers offer with `--metrics-listen ADDR`: OpenMetrics
//! text from a `prometheus-client` registry, on a plain HTTP listener beside gRPC. Off
//! unless asked: a scrape reads nothing a caller could not read with a token, but the
//! listener has no authentication, so it belongs on an address only Prometheus reaches.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus_client::registry::Registry;

/// The content type of an OpenMetrics scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram buckets for durations: 100 µs to about 112 minutes, doubling. A release
/// waits in the queue, for approvals and for slow agents, and a quantile never says
/// more than the largest finite bucket: at 65 s (before stop 54) an alert on a p95
/// of five minutes could never fire. A decision's fsync mostly takes under 1 ms, the
/// smallest bucket before stop 58, which left its quantiles saying nothing.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 27)
}

/// Binds `addr` and serves `registry` at `GET /metrics` in the background; returns the
/// bound address (port 0 picks a free one).
pub async fn start(addr: SocketAddr, registry: Registry) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(scrape(&registry))),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the metrics listener stopped: {e}");
        }
    });
    Ok(bound)
}

/// One scrape: every metric and collector of `registry`, encoded now.
fn scrape(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
