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

/// The process's metrics pipeline; dropping it sends what is pending and
/// stops serving `/metrics`.
pub struct Metrics {
    provider: SdkMeterProvider,
    scrapes: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Metrics {
    fn drop(&mut self) {
        if let Some(scrapes) = self.scrapes.take() {
            scrapes.abort();
        }
        let _ = self.provider.shutdown();
    }
}

/// The process's instruments, exported over OTLP/gRPC when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`
/// is set (the standard variables, `OTEL_METRIC_EXPORT_INTERVAL` too), and
/// served for Prometheus at `http://PROMETHEUS/metrics` when an address is
/// given (names `godwit_<noun>_<unit>[_total]`); with neither, instruments
/// record nothing. Call from inside the tokio runtime: the exporter's
/// channel and the endpoint live on it.
pub async fn init_metrics(
    service: &'static str,
    prometheus: Option<std::net::SocketAddr>,
) -> Option<Metrics> {
    let otlp = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    if !otlp && prometheus.is_none() {
        return None;
    }
    let mut builder = SdkMeterProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build(),
    );
    if otlp {
        match opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => {
                builder = builder.with_periodic_exporter(exporter);
                tracing::info!("exporting metrics over OTLP");
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics not exported: cannot build the OTLP exporter");
            }
        }
    }
    let mut scrapes = None;
    if let Some(address) = prometheus {
        let registry = prometheus::Registry::new();
        match opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()
        {
            Ok(reader) => {
                builder = builder.with_reader(reader);
                match tokio::net::TcpListener::bind(address).await {
                    Ok(listener) => {
                        tracing::info!(%address, "serving metrics for Prometheus at /metrics");
                        scrapes = Some(tokio::spawn(serve_scrapes(listener, registry)));
                    }
                    Err(e) => {
                        tracing::warn!(%address, error = %e, "metrics not served: cannot listen");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics not served: cannot build the exporter"),
        }
    }
    let provider = builder.build();
    opentelemetry::global::set_meter_provider(provider.clone());
    Some(Metrics { provider, scrapes })
}

/// Answers `GET /metrics` with the registry in Prometheus' text format;
/// anything else with 404.
async fn serve_scrapes(listener: tokio::net::TcpListener, registry: prometheus::Registry) {
    use http_body_util::Full;
    use hyper::body::Bytes;

    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(move |request: hyper::Request<_>| {
                let registry = registry.clone();
                async move {
                    if request.uri().path() == "/metrics" {
                        let mut body = Vec::new();
                        let encoded = prometheus::Encoder::encode(
                            &prometheus::TextEncoder::new(),
                            &registry.gather(),
                            &mut body,
                        );
                        match encoded {
                            Ok(()) => hyper::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(body))),
                            Err(e) => hyper::Response::builder()
                                .status(500)
                                .body(Full::new(Bytes::from(e.to_string()))),
                        }
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"not found: GET /metrics\n")))
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), answer)
                .await;
        });
    }
}
