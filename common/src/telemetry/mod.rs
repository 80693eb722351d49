//! Logging, metrics and traces setup shared by the binaries.

mod metrics;
mod otlp_tls;
pub mod traces;

pub use metrics::{Metrics, init_metrics};
pub use traces::{Traces, init_traces};

use tracing_subscriber::EnvFilter;

/// Structured logs to stderr, filtered by `GODWIT_LOG` (default `info`).
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_env("GODWIT_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for people: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
