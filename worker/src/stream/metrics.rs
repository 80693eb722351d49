//! The change stream's figures as OpenTelemetry metrics (exported over
//! OTLP when the process has a pipeline, see
//! `godwit_common::telemetry::init_metrics`): what `godwit status` shows
//! of a stream, for dashboards and alerts. Records what the stream
//! measured; never measures anything itself.

use godwit_common::job::ChangeProgress;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge};

pub(crate) struct StreamMetrics {
    job: [KeyValue; 1],
    lag_bytes: Gauge<u64>,
    lag_seconds: Gauge<f64>,
    catch_up_seconds: Gauge<f64>,
    retained_wal_bytes: Gauge<u64>,
    rows: Counter<u64>,
    transactions: Counter<u64>,
    /// The progress last recorded: counters move by the difference.
    recorded: (u64, u64),
}

impl StreamMetrics {
    pub(crate) fn new(job: &str, progress: &ChangeProgress) -> Self {
        let meter = opentelemetry::global::meter("godwit");
        Self {
            job: [KeyValue::new("job", job.to_owned())],
            lag_bytes: meter
                .u64_gauge("godwit.stream.lag")
                .with_unit("By")
                .with_description("Source WAL written but not yet applied to the target")
                .build(),
            lag_seconds: meter
                .f64_gauge("godwit.stream.lag_time")
                .with_unit("s")
                .with_description("Age of the oldest source commit not yet applied")
                .build(),
            catch_up_seconds: meter
                .f64_gauge("godwit.stream.catch_up_eta")
                .with_unit("s")
                .with_description("Time left to catch up at the recent catch-up rate")
                .build(),
            retained_wal_bytes: meter
                .u64_gauge("godwit.stream.retained_wal")
                .with_unit("By")
                .with_description("Source WAL the job's replication slot keeps from recycling")
                .build(),
            rows: meter
                .u64_counter("godwit.stream.rows")
                .with_description("Row changes applied to the target")
                .build(),
            transactions: meter
                .u64_counter("godwit.stream.transactions")
                .with_description("Source transactions applied to the target")
                .build(),
            recorded: (progress.rows, progress.transactions),
        }
    }

    pub(crate) fn record(&mut self, progress: &ChangeProgress) {
        self.lag_bytes.record(progress.lag_bytes, &self.job);
        self.lag_seconds
            .record(progress.lag_ms as f64 / 1000.0, &self.job);
        if progress.lag_bytes == 0 {
            self.catch_up_seconds.record(0.0, &self.job);
        } else if progress.catch_up_bytes_per_s > 0 {
            self.catch_up_seconds.record(
                progress.lag_bytes as f64 / progress.catch_up_bytes_per_s as f64,
                &self.job,
            );
        }
        self.retained_wal_bytes
            .record(progress.retained_wal_bytes, &self.job);
        let (rows, transactions) = self.recorded;
        self.rows.add(progress.rows.saturating_sub(rows), &self.job);
        self.transactions.add(
            progress.transactions.saturating_sub(transactions),
            &self.job,
        );
        self.recorded = (progress.rows, progress.transactions);
    }
}
