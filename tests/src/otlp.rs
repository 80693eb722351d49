//! An OTLP/gRPC metrics receiver, as a collector would be: keeps every
//! data point it is sent, so a test can look for a metric and its
//! attributes.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use tokio_stream::wrappers::TcpListenerStream;

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
                            .map(|kv| {
                                let text = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                    Some(Value::StringValue(s)) => s.clone(),
                                    Some(other) => format!("{other:?}"),
                                    None => String::new(),
                                };
                                (kv.key.clone(), text)
                            })
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
    points: Arc<Mutex<Vec<Point>>>,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let sink = Sink::default();
        let points = sink.points.clone();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(sink))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Ok(Self {
            port,
            points,
            server,
        })
    }

    /// The environment that makes a godwit binary export to this receiver,
    /// every 200 ms.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL".into(), "200".into()),
        ]
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

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}
