//! How every Lockstep process logs and traces: logs to stderr, filtered by `RUST_LOG`
//! (default `info`), as text (coloured only on a terminal) or, with `--log-format json`,
//! one JSON object per line (timestamp, level, target, fields, and the spans it
//! happened in); and, when an OTLP endpoint is given (`--otlp-endpoint`, or the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT`), every span exported to it as OpenTelemetry
//! traces over gRPC, W3C trace context carried between processes ([`crate::trace`]).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// How long [`Telemetry::flush`] waits for the spans still buffered to be exported.
pub const FLUSH_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// The `--log-format` flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What [`init`] installed; [`Telemetry::flush`] exports the spans still buffered
/// (call it before the process exits).
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every buffered span and stops the exporter, waiting at most
    /// [`FLUSH_FOR`]: a process that stops (a coordinator that lost its lease, a CLI
    /// command done) must not linger on a collector that does not answer.
    pub fn flush(&self) {
        let Some(provider) = self.provider.clone() else {
            return;
        };
        let (done, flushed) = std::sync::mpsc::channel();
        // The exporter's channel runs on the caller's runtime, if any: left free to.
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::spawn(move || {
            let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
            let _ = provider.force_flush();
            let _ = provider.shutdown();
            let _ = done.send(());
        });
        let _ = flushed.recv_timeout(FLUSH_FOR);
    }
}

/// The OTLP endpoint: `flag`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn endpoint(flag: Option<&str>) -> Option<String> {
    let from_env = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok();
    flag.map(str::to_string)
        .or(from_env)
        .filter(|e| !e.is_empty())
}

/// The tracer provider exporting `service`'s spans to `endpoint` (OTLP over gRPC).
/// Must run inside a tokio runtime (the exporter's channel lives on it).
fn provider(service: &'static str, endpoint: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The layer that turns spans into OpenTelemetry spans, keeping what a trace is read
/// for (names, parents, times, Lockstep's own fields) and nothing it costs to keep at
/// every poll of an instrumented future: no busy/idle counters (two clock reads per
/// poll), no OpenTelemetry context attached on entry (Lockstep reads a span's context
/// from the span itself, [`crate::trace`]), and no thread or source-location
/// attributes (a task moves between threads; a span's name says what it is).
fn span_layer<S>(
    provider: &SdkTracerProvider,
    service: &'static str,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_threads(false)
        .with_location(false)
}

/// For a client that prints its own output (the CLI): no log lines, only trace export
/// as `service` when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (nothing otherwise).
pub fn init_traces_only(service: &'static str) -> Result<Telemetry, String> {
    match endpoint(None) {
        Some(endpoint) => init_traces_to(service, &endpoint, Arc::new(AtomicBool::new(true))),
        None => Ok(Telemetry::default()),
    }
}

/// Trace export as `service` to `endpoint`, with no log lines, while `on` is set (the
/// benchmark, which measures the same process traced and not in alternate rounds).
pub fn init_traces_to(
    service: &'static str,
    endpoint: &str,
    on: Arc<AtomicBool>,
) -> Result<Telemetry, String> {
    let provider = provider(service, endpoint)?;
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let traces = span_layer(&provider, service);
    crate::trace::export_on();
    let filter = tracing_subscriber::EnvFilter::new("info");
    // A dynamic filter: asked at every span, never cached per callsite.
    let switch =
        tracing_subscriber::filter::dynamic_filter_fn(move |_, _| on.load(Ordering::Relaxed));
    tracing_subscriber::registry()
        .with(filter)
        .with(switch)
        .with(traces)
        .init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Installs the process's log subscriber and, with an OTLP endpoint, its trace
/// export as `service`. Call once, first thing in `main` (inside the runtime).
pub fn init(
    service: &'static str,
    format: LogFormat,
    otlp: Option<&str>,
) -> Result<Telemetry, String> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let provider = endpoint(otlp).map(|e| provider(service, &e)).transpose()?;
    let traces = provider.as_ref().map(|p| {
        crate::trace::export_on();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        span_layer(p, service)
    });
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
        // Colour only on a terminal: a log written to a file stays plain text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(traces)
        .with(logs)
        .init();
    Ok(Telemetry { provider })
}
