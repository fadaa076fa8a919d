//! How both servers log: to stderr, filtered by `RUST_LOG` (default `info`), as text
//! (coloured only on a terminal) or, with `--log-format json`, one JSON object per line
//! for a log pipeline (timestamp, level, target, fields, and the spans it happened in).

use clap::ValueEnum;

/// The `--log-format` flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the process's log subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        // Colour only on a terminal: a log written to a file stays plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
