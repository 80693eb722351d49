//! Logging, tracing and metrics setup shared by the binaries.

use opentelemetry_sdk::metrics::SdkMeterProvider;
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

/// The process's metrics pipeline; dropping it sends what is pending.
pub struct Metrics(SdkMeterProvider);

impl Drop for Metrics {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Metrics over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set (the standard variables,
/// `OTEL_METRIC_EXPORT_INTERVAL` too); without them instruments record
/// nothing. Call from inside the tokio runtime: the exporter's channel
/// lives on it.
pub fn init_metrics(service: &'static str) -> Option<Metrics> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    if !configured {
        return None;
    }
    let exporter = match opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            tracing::warn!(error = %e, "metrics not exported: cannot build the OTLP exporter");
            return None;
        }
    };
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    tracing::info!("exporting metrics over OTLP");
    Some(Metrics(provider))
}
