//! What metrics cost: two fresh stacks side by side, one without metrics and one with
//! the coordinator's metrics registered (reading the event log as it is written) and
//! scraped once a second as Prometheus would, measured in turn, twice each (a stack
//! slows as its tables grow, so each is compared at the same age). Agents' instruments
//! are always on (one histogram observation per order), in both.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prometheus_client::registry::Registry;

use crate::{Figure, figure, micros, percentile, serial_releases, stack, throughput};

/// Clients of the throughput comparison (as many disjoint project sets).
const CLIENTS: usize = 8;

/// A fresh stack in `dir` with 3 + 3 x `groups` no-op participants (`p0`..`p2`, and
/// `g<N>a`..`g<N>c` for each throughput client N).
pub async fn fresh(dir: &Path, groups: usize) -> anyhow::Result<stack::Stack> {
    let mut stack = stack::coordinator(&dir.join("coordinator"), None).await?;
    let mut names: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
    for g in 0..groups {
        names.extend(["a", "b", "c"].iter().map(|m| format!("g{g}{m}")));
    }
    let mut projects = Vec::new();
    for name in names {
        let url = stack.participant(&name, &dir.join(&name), None).await?;
        projects.push((name, url));
    }
    stack.register(&projects).await?;
    Ok(stack)
}

/// Release latency p50 (µs) and throughput (committed/s) of `stack` now.
async fn measure(
    stack: &mut stack::Stack,
    tag: &str,
    count: usize,
    seconds: u64,
) -> anyhow::Result<(f64, f64)> {
    let three: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
    let mut samples = serial_releases(stack, tag, &three, count).await?;
    let p50 = micros(percentile(&mut samples, 0.5));
    let t = throughput(stack, CLIENTS, Duration::from_secs(seconds)).await?;
    Ok((p50, t.rate()))
}

/// Registers the coordinator's metrics on `stack` and scrapes them every second.
fn observe(stack: &stack::Stack) -> tokio::task::JoinHandle<()> {
    let mut registry = Registry::default();
    lockstep_coordinator::metrics::register(&mut registry, &stack.coordinator);
    let registry = Arc::new(registry);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut text = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        }
    })
}

/// The figures: each "on" value with the same round's "off" value as its floor.
pub async fn figures(dir: &Path, count: usize, seconds: u64) -> anyhow::Result<Vec<Figure>> {
    let mut off = fresh(&dir.join("metrics-off"), CLIENTS).await?;
    let mut on = fresh(&dir.join("metrics-on"), CLIENTS).await?;
    let scraper = observe(&on);
    let (mut lat, mut rate) = ((0.0, 0.0), (0.0, 0.0));
    for round in 0..2 {
        let (off_p50, off_rate) = measure(&mut off, &format!("off{round}"), count, seconds).await?;
        let (on_p50, on_rate) = measure(&mut on, &format!("on{round}"), count, seconds).await?;
        lat = (lat.0 + off_p50 / 2.0, lat.1 + on_p50 / 2.0);
        rate = (rate.0 + off_rate / 2.0, rate.1 + on_rate / 2.0);
    }
    scraper.abort();
    Ok(vec![
        Figure {
            floor: Some(lat.0),
            target: Some("<= 1.1x off".into()),
            met: Some(lat.1 <= 1.1 * lat.0),
            ..figure("metrics on: release latency p50 (floor: off)", lat.1, "us")
        },
        Figure {
            floor: Some(rate.0),
            target: Some(">= 0.9x off".into()),
            met: Some(rate.1 >= 0.9 * rate.0),
            ..figure(
                format!("metrics on: throughput, {CLIENTS} clients (floor: off)"),
                rate.1,
                "committed/s",
            )
        },
    ])
}

/// A collector that counts every span and keeps nothing (the traced run's receiver).
#[derive(Default, Clone)]
struct Discard(Arc<std::sync::atomic::AtomicU64>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Discard
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let scopes = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans);
        let spans = scopes.map(|s| s.spans.len() as u64).sum::<u64>();
        self.0.fetch_add(spans, Ordering::Relaxed);
        Ok(tonic::Response::new(Default::default()))
    }
}

/// Starts the discarding collector on a loopback port; returns its URL.
async fn collector(spans: Discard) -> anyhow::Result<String> {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(spans))
            .serve_with_incoming(incoming),
    );
    Ok(url)
}

/// What traces cost: two fresh stacks in one process with trace export installed
/// (every span of the coordinator and the agents exported over OTLP to a collector in
/// this process), measured in alternate rounds at the same age, one with spans switched
/// off and the other with them on; each figure is the median of [`ROUNDS`]. Run it
/// last: the subscriber stays installed.
pub async fn tracing_figures(
    dir: &Path,
    count: usize,
    seconds: u64,
) -> anyhow::Result<Vec<Figure>> {
    let spans = Discard::default();
    let endpoint = collector(spans.clone()).await?;
    let on = Arc::new(AtomicBool::new(false));
    let _telemetry = lockstep::logging::init_traces_to("lockstep-bench", &endpoint, on.clone())
        .map_err(anyhow::Error::msg)?;
    let mut stacks = [
        fresh(&dir.join("tracing-off"), CLIENTS).await?,
        fresh(&dir.join("tracing-on"), CLIENTS).await?,
    ];
    let (mut lat, mut rate) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for round in 0..ROUNDS {
        // Each round starts with the other one, so neither always runs on a warmer host.
        for i in [round % 2, 1 - round % 2] {
            on.store(i == 1, Ordering::Relaxed);
            let tag = format!("trace{i}-{round}");
            let (p50, committed) = measure(&mut stacks[i], &tag, count, seconds).await?;
            lat[i].push(p50);
            rate[i].push(committed);
        }
    }
    on.store(false, Ordering::Relaxed);
    eprintln!(
        "tracing: {} spans exported",
        spans.0.load(Ordering::Relaxed)
    );
    let [lat_off, lat_on] = lat.map(median);
    let [rate_off, rate_on] = rate.map(median);
    Ok(vec![
        Figure {
            floor: Some(lat_off),
            target: Some("<= 1.1x off".into()),
            met: Some(lat_on <= 1.1 * lat_off),
            ..figure("tracing on: release latency p50 (floor: off)", lat_on, "us")
        },
        Figure {
            floor: Some(rate_off),
            target: Some(">= 0.9x off".into()),
            met: Some(rate_on >= 0.9 * rate_off),
            ..figure(
                format!("tracing on: throughput, {CLIENTS} clients (floor: off)"),
                rate_on,
                "committed/s",
            )
        },
    ])
}

/// Rounds of the traced comparison.
const ROUNDS: usize = 3;

/// The middle value of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
