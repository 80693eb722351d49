//! The metrics pipeline: OTLP export and the `/metrics` endpoint Prometheus
//! scrapes. Owns no instrument: each module keeps its own.

use opentelemetry_sdk::metrics::SdkMeterProvider;

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
/// `tls`: the certificate and key (PEM files) `/metrics` is served with;
/// plain HTTP without. A certificate or key that does not load is an
/// error: metrics asked for over TLS are never served in the clear.
pub async fn init_metrics(
    service: &'static str,
    prometheus: Option<std::net::SocketAddr>,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> crate::Result<Option<Metrics>> {
    let acceptor = match (prometheus, tls) {
        (Some(_), Some((cert, key))) => Some(acceptor(cert, key)?),
        _ => None,
    };
    let otlp = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    if !otlp && prometheus.is_none() {
        return Ok(None);
    }
    let mut builder = SdkMeterProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build(),
    );
    if otlp {
        let mut exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic();
        // Its TLS material is the operator's to fix: a start-up error.
        if let Some(tls) = super::otlp_tls::config("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")? {
            exporter = opentelemetry_otlp::WithTonicConfig::with_tls_config(exporter, tls);
        }
        match exporter.build() {
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
                        tracing::info!(%address, tls = acceptor.is_some(), "serving metrics for Prometheus at /metrics");
                        scrapes = Some(tokio::spawn(serve_scrapes(listener, registry, acceptor)));
                    }
                    Err(e) => {
                        tracing::warn!(%address, error = %e, "metrics not served: cannot listen");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics not served: cannot build the exporter"),
        }
    }
    Ok(finish(builder, scrapes))
}

fn finish(
    builder: opentelemetry_sdk::metrics::MeterProviderBuilder,
    scrapes: Option<tokio::task::JoinHandle<()>>,
) -> Option<Metrics> {
    let provider = builder.build();
    opentelemetry::global::set_meter_provider(provider.clone());
    Some(Metrics { provider, scrapes })
}

/// A TLS acceptor for `/metrics` with the process's own certificate.
fn acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> crate::Result<tokio_rustls::TlsAcceptor> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            crate::Error::Spec(format!(
                "cannot read the metrics TLS file {}: {e}",
                path.display()
            ))
        })
    };
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            crate::Error::Spec(format!("{}: not a PEM certificate: {e}", cert.display()))
        })?;
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| crate::Error::Spec(format!("{}: not a PEM key: {e}", key.display())))?
        .ok_or_else(|| crate::Error::Spec(format!("{}: holds no private key", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| crate::Error::Spec(format!("the metrics TLS versions: {e}")))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| crate::Error::Spec(format!("the metrics TLS certificate: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Answers `GET /metrics` with the registry in Prometheus' text format;
/// anything else with 404.
async fn serve_scrapes(
    listener: tokio::net::TcpListener,
    registry: prometheus::Registry,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;

    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        let tls = tls.clone();
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
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), answer)
                            .await;
                    }
                }
                None => {
                    let _ = http
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), answer)
                        .await;
                }
            }
        });
    }
}
