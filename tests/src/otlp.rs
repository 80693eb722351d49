//! An OTLP/gRPC receiver, as a collector would be: keeps every metric data
//! point and every span it is sent, so a test can look for a metric and
//! its attributes, or walk a trace's tree.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use tokio_stream::wrappers::TcpListenerStream;

/// One span as received: ids in hex, the sending service's name.
#[derive(Debug, Clone)]
pub struct SpanSeen {
    pub service: String,
    pub name: String,
    pub trace: String,
    pub span: String,
    /// Empty for a root span.
    pub parent: String,
    pub attributes: Vec<(String, String)>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// The span's status says it failed.
    pub failed: bool,
}

impl SpanSeen {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn text_of(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[derive(Default, Clone)]
struct SpanSink {
    spans: Arc<Mutex<Vec<SpanSeen>>>,
}

#[tonic::async_trait]
impl TraceService for SpanSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = Vec::new();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(|kv| text_of(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    seen.push(SpanSeen {
                        service: service.clone(),
                        name: span.name,
                        trace: hex::encode(&span.trace_id),
                        span: hex::encode(&span.span_id),
                        parent: hex::encode(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text_of(kv.value.as_ref())))
                            .collect(),
                        start_unix_nano: span.start_time_unix_nano,
                        end_unix_nano: span.end_time_unix_nano,
                        // STATUS_CODE_ERROR
                        failed: span.status.is_some_and(|s| s.code == 2),
                    });
                }
            }
        }
        if let Ok(mut all) = self.spans.lock() {
            all.extend(seen);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One data point: metric name, its attributes as text, its value.
#[derive(Debug, Clone)]
pub struct Point {
    pub metric: String,
    pub attributes: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Default)]
struct Sink {
    points: Arc<Mutex<Vec<Point>>>,
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut points = Vec::new();
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    let number_points = match metric.data {
                        Some(Data::Sum(sum)) => sum.data_points,
                        Some(Data::Gauge(gauge)) => gauge.data_points,
                        _ => Vec::new(),
                    };
                    for point in number_points {
                        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as N;
                        let value = match point.value {
                            Some(N::AsInt(v)) => v as f64,
                            Some(N::AsDouble(v)) => v,
                            None => 0.0,
                        };
                        let attributes = point
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text_of(kv.value.as_ref())))
                            .collect();
                        points.push(Point {
                            metric: metric.name.clone(),
                            attributes,
                            value,
                        });
                    }
                }
            }
        }
        if let Ok(mut all) = self.points.lock() {
            all.extend(points);
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

pub struct OtlpReceiver {
    pub port: u16,
    /// For a receiver over TLS: the CA that signed its certificate.
    ca: Option<std::path::PathBuf>,
    points: Arc<Mutex<Vec<Point>>>,
    spans: Arc<Mutex<Vec<SpanSeen>>>,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> anyhow::Result<Self> {
        Self::serve(None).await
    }

    /// A receiver over TLS, as a collector outside the cluster is reached:
    /// its certificate (for `localhost`) signed by `pki`'s CA.
    pub async fn start_tls(pki: &crate::pki::Pki) -> anyhow::Result<Self> {
        let cert = pki.server("otlp-collector")?;
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(&cert.cert)?,
            std::fs::read(&cert.key)?,
        );
        let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        let mut receiver = Self::serve(Some(tls)).await?;
        receiver.ca = Some(pki.ca_cert());
        Ok(receiver)
    }

    async fn serve(tls: Option<tonic::transport::ServerTlsConfig>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let sink = Sink::default();
        let points = sink.points.clone();
        let span_sink = SpanSink::default();
        let spans = span_sink.spans.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let server = tokio::spawn(async move {
            let _ = builder
                .add_service(MetricsServiceServer::new(sink))
                .add_service(TraceServiceServer::new(span_sink))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Ok(Self {
            port,
            ca: None,
            points,
            spans,
            server,
        })
    }

    /// The environment that makes a godwit binary export to this receiver,
    /// metrics and spans every 200 ms.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("OTEL_METRIC_EXPORT_INTERVAL".into(), "200".into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ];
        match &self.ca {
            Some(ca) => env.extend([
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    format!("https://localhost:{}", self.port),
                ),
                (
                    "OTEL_EXPORTER_OTLP_CERTIFICATE".into(),
                    ca.display().to_string(),
                ),
            ]),
            None => env.push((
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://127.0.0.1:{}", self.port),
            )),
        }
        env
    }

    /// Data points of `metric` carrying attribute `key` = `value`.
    pub fn points(&self, metric: &str, key: &str, value: &str) -> Vec<Point> {
        self.points
            .lock()
            .map(|all| {
                all.iter()
                    .filter(|p| {
                        p.metric == metric
                            && p.attributes.iter().any(|(k, v)| k == key && v == value)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl OtlpReceiver {
    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanSeen> {
        self.spans.lock().map(|all| all.clone()).unwrap_or_default()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}
