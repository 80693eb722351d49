//! What the coordinator's jobs conclude, as metrics (see
//! `godwit_common::telemetry::init_metrics`): each verification's result
//! and each cutover's frozen time and outcome, for dashboards and alerts.
//! Records; never decides anything.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

struct Instruments {
    verifications: Counter<u64>,
    frozen: Histogram<f64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("godwit");
        Instruments {
            verifications: meter
                .u64_counter("godwit.verifications")
                .with_description("Verifications of a job, by result (match or difference)")
                .build(),
            frozen: meter
                .f64_histogram("godwit.cutover.frozen")
                .with_unit("s")
                .with_description("How long a cutover kept the source's tables frozen, by outcome")
                .with_boundaries(vec![0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0])
                .build(),
        }
    })
}

pub(crate) fn verified(job: &str, matched: bool) {
    instruments().verifications.add(
        1,
        &[
            KeyValue::new("job", job.to_owned()),
            KeyValue::new("result", if matched { "match" } else { "difference" }),
        ],
    );
}

pub(crate) fn cut_over(job: &str, frozen_ms: u64, succeeded: bool) {
    instruments().frozen.record(
        frozen_ms as f64 / 1000.0,
        &[
            KeyValue::new("job", job.to_owned()),
            KeyValue::new("outcome", if succeeded { "done" } else { "rolled_back" }),
        ],
    );
}
