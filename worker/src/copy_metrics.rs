//! The copy's figures as metrics (see
//! `godwit_common::telemetry::init_metrics`): rows, bytes and chunks per
//! job and table as this worker loads them, and partitions it took over
//! from an earlier holder. Records; never measures anything itself.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;

struct Instruments {
    rows: Counter<u64>,
    read: Counter<u64>,
    staged: Counter<u64>,
    chunks: Counter<u64>,
    resumed: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("godwit");
        Instruments {
            rows: meter
                .u64_counter("godwit.copy.rows")
                .with_description("Rows loaded into the target by the copy")
                .build(),
            read: meter
                .u64_counter("godwit.copy.read")
                .with_unit("By")
                .with_description("Bytes of COPY data read from the source")
                .build(),
            staged: meter
                .u64_counter("godwit.copy.staged")
                .with_unit("By")
                .with_description("Bytes staged (compressed and encrypted)")
                .build(),
            chunks: meter
                .u64_counter("godwit.copy.chunks")
                .with_description("Chunks loaded into the target")
                .build(),
            resumed: meter
                .u64_counter("godwit.copy.takeovers")
                .with_description(
                    "Partitions taken over after another holder loaded some of their chunks",
                )
                .build(),
        }
    })
}

fn labels(job: &str, table: &str) -> [KeyValue; 2] {
    [
        KeyValue::new("job", job.to_owned()),
        KeyValue::new("table", table.to_owned()),
    ]
}

pub(crate) fn read(job: &str, table: &str, bytes: u64) {
    instruments().read.add(bytes, &labels(job, table));
}

/// A chunk loaded (not one the ledger already had).
pub(crate) fn loaded(job: &str, table: &str, rows: u64, staged: u64) {
    let labels = labels(job, table);
    instruments().rows.add(rows, &labels);
    instruments().staged.add(staged, &labels);
    instruments().chunks.add(1, &labels);
}

pub(crate) fn taken_over(job: &str, table: &str) {
    instruments().resumed.add(1, &labels(job, table));
}
