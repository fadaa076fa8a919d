//! W3C trace context between Lockstep processes: a caller writes its current span's
//! context into the gRPC metadata (`traceparent`), and every server starts the span of
//! a call as a child of the context the call carries, so one release is one trace
//! across the CLI, the coordinator and every agent. Without an OTLP endpoint nothing is
//! exported, no trace context is written, and the spans made only for traces are not
//! made ([`exporting`]).

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use tonic::{codegen::http, metadata::MetadataMap};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether this process exports spans (an OTLP endpoint is set).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Marks this process as exporting spans; `logging` calls it once it installs the
/// export. Until then the spans that exist only for traces (one per call, one per
/// order) are not made, nor is a trace context written into a call: with log lines
/// alone (the default) they cost ~5% of a release's instructions, for nothing a log
/// line shows (stop 55, `make instructions`).
pub fn export_on() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether this process exports spans: where it does not, a span made only for traces
/// is [`tracing::Span::none`].
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        if let (Ok(key), Ok(value)) = (key, value.parse()) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes the current span's trace context into `metadata`.
pub fn inject(metadata: &mut MetadataMap) {
    if !exporting() {
        return;
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// `message` as a request carrying the current span's trace context.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    inject(request.metadata_mut());
    request
}

/// The span of one incoming call (`otel.name`: its method), a child of the trace
/// context the call carries, if any.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let method = request.uri().path().rsplit('/').next().unwrap_or_default();
    incoming(method, request.headers())
}

/// The span of one incoming call named `name` (a gRPC method, or an HTTP API route), a
/// child of the trace context its `headers` carry, if any.
pub fn incoming(name: &str, headers: &http::HeaderMap) -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "rpc",
        otel.name = %name,
        rpc.method = %name,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
    record_ids(&span);
    span
}

/// Records `span`'s trace and span ids as its `trace_id` and `span_id` fields (declared
/// empty), so every log line written inside it names them (`--log-format json` lists
/// the spans of a line with their fields). Nothing when it is not traced.
pub fn record_ids(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", ids.trace_id().to_string());
        span.record("span_id", ids.span_id().to_string());
    }
}

/// The current span's context as a W3C `traceparent` value ("" when not traced).
pub fn current_traceparent() -> String {
    if !exporting() {
        return String::new();
    }
    struct One(String);
    impl Injector for One {
        fn set(&mut self, key: &str, value: String) {
            if key == "traceparent" {
                self.0 = value;
            }
        }
    }
    let context = tracing::Span::current().context();
    let mut one = One(String::new());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut one));
    one.0
}

/// Makes `span` a child of the context a stored `traceparent` value names: for work
/// that goes on in another process than the call that began it (a transaction that
/// recovery resumes after a restart stays in its release's trace). Nothing for "".
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    struct One<'a>(&'a str);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0)
        }

        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    if traceparent.is_empty() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&One(traceparent)));
    let _ = span.set_parent(parent);
}

/// The trace id a `traceparent` value names ("" for none).
pub fn trace_id_of(traceparent: &str) -> String {
    let id = traceparent.split('-').nth(1).unwrap_or_default();
    id.to_string()
}

/// The trace id of the current span, if it is traced ("" otherwise).
pub fn current_trace_id() -> String {
    use opentelemetry::trace::TraceContextExt;
    let context = tracing::Span::current().context();
    let id = context.span().span_context().trace_id();
    if id == opentelemetry::trace::TraceId::INVALID {
        return String::new();
    }
    id.to_string()
}
