//! The leased-work engine's figures as metrics (see
//! `crate::telemetry::init_metrics`): items by state as the coordinator
//! sees them while it awaits a job's work, and failed attempts by kind of
//! work and of error, as the worker that made them settles them. Records;
//! never decides anything.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge};

use super::{WorkItem, WorkState};
use crate::Error;
use crate::ids::JobId;

struct Instruments {
    items: Gauge<u64>,
    failures: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("godwit");
        Instruments {
            items: meter
                .u64_gauge("godwit.work.items")
                .with_description(
                    "A job's units of work (copy partitions, verification ranges, its stream) by state",
                )
                .build(),
            failures: meter
                .u64_counter("godwit.work.failures")
                .with_description(
                    "Failed attempts at a unit of work, by kind of work, kind of error and whether it is retried",
                )
                .build(),
        }
    })
}

/// The job's items of one kind, counted by state.
pub(super) fn record_items<T: WorkItem>(job: &JobId, items: &[T]) {
    let mut counts = [0u64; 4];
    for item in items {
        let slot = match (item.state(), item.attempts().attempts) {
            (WorkState::Done, _) => 0,
            (WorkState::Failed, _) => 1,
            (WorkState::Pending, 0) => 2,
            (WorkState::Pending, _) => 3,
        };
        counts[slot] += 1;
    }
    for (state, count) in ["done", "failed", "pending", "retrying"]
        .into_iter()
        .zip(counts)
    {
        instruments().items.record(
            count,
            &[
                KeyValue::new("job", job.to_string()),
                KeyValue::new("kind", T::KIND.segment()),
                KeyValue::new("state", state),
            ],
        );
    }
}

/// A failed attempt at an item of kind `T`.
pub(super) fn record_failure<T: WorkItem>(error: &Error, gave_up: bool) {
    instruments().failures.add(
        1,
        &[
            KeyValue::new("kind", T::KIND.segment()),
            KeyValue::new("error", format!("{:?}", error.kind()).to_lowercase()),
            KeyValue::new("outcome", if gave_up { "gave_up" } else { "retrying" }),
        ],
    );
}
