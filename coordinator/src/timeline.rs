//! The coordinator's part of a job's trace and history: each phase and
//! each step as it ends becomes a span of the job's trace and a line of
//! the debrief's timeline; the copy's tables become spans once all their
//! partitions are copied; the job's own span goes out when it ends.
//! Names, counts and times only: never a value of the customer's rows.

use std::time::SystemTime;

use godwit_common::history::{PartitionRun, TableMoved};
use godwit_common::job::{CutoverRecord, JobPhase, JobRecord};
use godwit_common::state::now_unix_ms;
use godwit_common::telemetry::traces::{self, Done, at_unix_ms};
use godwit_common::work::PartitionRecord;
use opentelemetry::KeyValue;

fn job_attribute(record: &JobRecord) -> KeyValue {
    KeyValue::new("godwit.job", record.spec.job.to_string())
}

/// Starts a run of `phase` (kept open if it runs already). Any other run
/// still open was left by a coordinator that stopped (the job starts
/// again at planning when taken over): it ends now, as interrupted.
pub(crate) fn begin(record: &mut JobRecord, phase: &str) {
    for stale in open_phases(record).into_iter().filter(|open| open != phase) {
        end(
            record,
            &stale,
            Some(
                "interrupted: the coordinator running it stopped, and another took the job over"
                    .into(),
            ),
        );
    }
    record.history.open(phase, now_unix_ms());
}

fn open_phases(record: &JobRecord) -> Vec<String> {
    record
        .history
        .phases
        .iter()
        .filter(|p| p.within.is_none() && p.ended_unix_ms == 0)
        .map(|p| p.name.clone())
        .collect()
}

/// Ends the open run of `phase`: its span goes out under the job's.
pub(crate) fn end(record: &mut JobRecord, phase: &str, error: Option<String>) {
    let Some(run) = record.history.close(phase, now_unix_ms()) else {
        return;
    };
    let Some(trace) = record.trace.as_ref() else {
        return;
    };
    let (Some(span), parent) = (trace.phase(phase, run.started_unix_ms), trace.span()) else {
        return;
    };
    traces::emit(Done {
        name: phase,
        span,
        parent,
        start: at_unix_ms(run.started_unix_ms),
        end: at_unix_ms(run.ended_unix_ms),
        attributes: vec![job_attribute(record)],
        error,
    });
}

/// A step of the open `phase` that started at `started` and ends now.
pub(crate) fn step(record: &mut JobRecord, phase: &str, step: &str, started: SystemTime) {
    record
        .history
        .step(phase, step, unix_ms(started), now_unix_ms());
    if let Some(parent) = record.phase_span(phase) {
        traces::emit(Done {
            name: step,
            span: parent.new_child(),
            parent: Some(parent),
            start: started,
            end: SystemTime::now(),
            attributes: vec![job_attribute(record)],
            error: None,
        });
    }
}

/// The copy's tables as spans under the copy's (each from its first
/// partition's start to its last one's end, with its rows and bytes), and
/// the copy's progress over time in the history.
pub(crate) fn copied(record: &mut JobRecord, partitions: &[PartitionRecord]) {
    let runs: Vec<PartitionRun> = partitions
        .iter()
        .map(|p| PartitionRun {
            started_unix_ms: p.started_unix_ms,
            finished_unix_ms: p.finished_unix_ms,
            bytes: p.bytes_read,
            rows: p.rows,
        })
        .collect();
    record.history.copy_progress(&runs, 60);
    let of_table = |table: &godwit_common::job::PlannedTable| -> Vec<&PartitionRecord> {
        partitions
            .iter()
            .filter(|p| p.table == table.name && table.partitions.contains(&p.partition))
            .collect()
    };
    record.history.moved = record
        .tables
        .iter()
        .map(|table| {
            let mine = of_table(table);
            TableMoved {
                table: table.name.to_string(),
                partitions: mine.len() as u64,
                rows: mine.iter().map(|p| p.rows).sum(),
                bytes_read: mine.iter().map(|p| p.bytes_read).sum(),
                bytes_staged: mine.iter().map(|p| p.bytes_staged).sum(),
            }
        })
        .collect();
    let Some(copying) = record.phase_span("copying") else {
        return;
    };
    for table in &record.tables {
        let name = table.name.to_string();
        let mine = of_table(table);
        let (Some(start), Some(end)) = (
            mine.iter()
                .map(|p| p.started_unix_ms)
                .filter(|t| *t > 0)
                .min(),
            mine.iter().map(|p| p.finished_unix_ms).max(),
        ) else {
            continue;
        };
        traces::emit(Done {
            name: "table",
            span: traces::table(
                copying,
                &name,
                table.partitions.first().copied().unwrap_or_default(),
            ),
            parent: Some(copying),
            start: at_unix_ms(start),
            end: at_unix_ms(end),
            attributes: vec![
                job_attribute(record),
                KeyValue::new("godwit.table", name),
                KeyValue::new("godwit.partitions", mine.len() as i64),
                KeyValue::new(
                    "godwit.rows",
                    mine.iter().map(|p| p.rows).sum::<u64>() as i64,
                ),
                KeyValue::new(
                    "godwit.bytes_read",
                    mine.iter().map(|p| p.bytes_read).sum::<u64>() as i64,
                ),
            ],
            error: None,
        });
    }
}

/// One cutover attempt, its steps below it, under the job's span.
pub(crate) fn cutover(record: &mut JobRecord, cut: &CutoverRecord) {
    record.history.cutover(cut.clone());
    let Some(job) = record.trace.as_ref().and_then(|t| t.span()) else {
        return;
    };
    let span = job.child(&["cutover", &cut.started_at_unix_ms.to_string()]);
    let end = cut
        .steps
        .iter()
        .map(|s| s.ended_unix_ms)
        .max()
        .unwrap_or_else(now_unix_ms);
    traces::emit(Done {
        name: "cutover",
        span,
        parent: Some(job),
        start: at_unix_ms(cut.started_at_unix_ms),
        end: at_unix_ms(end.max(cut.started_at_unix_ms)),
        attributes: vec![
            job_attribute(record),
            KeyValue::new("godwit.frozen_ms", cut.frozen_ms as i64),
            KeyValue::new("godwit.succeeded", cut.succeeded),
        ],
        error: cut.error.clone(),
    });
    for step in &cut.steps {
        traces::emit(Done {
            name: &step.name,
            span: span.new_child(),
            parent: Some(span),
            start: at_unix_ms(step.started_unix_ms),
            end: at_unix_ms(step.ended_unix_ms),
            attributes: vec![job_attribute(record)],
            error: None,
        });
    }
}

/// The job has ended: the phases it left open end with it (with its error
/// if it failed), then the job's own span goes out under its submitter's.
pub(crate) fn finished(record: &mut JobRecord) {
    // A job cancelled by an operator did not fail.
    let error = match record.phase() {
        JobPhase::Cancelled => None,
        _ => record.error.clone(),
    };
    for phase in open_phases(record) {
        end(record, &phase, error.clone());
    }
    let Some(trace) = record.trace.as_ref() else {
        return;
    };
    let Some(span) = trace.span() else {
        return;
    };
    traces::emit(Done {
        name: "job",
        span,
        parent: trace.caller(),
        start: at_unix_ms(record.started_at_unix_ms),
        end: at_unix_ms(record.finished_at_unix_ms.unwrap_or_else(now_unix_ms)),
        attributes: vec![
            job_attribute(record),
            KeyValue::new("godwit.customer", record.spec.customer.to_string()),
            KeyValue::new("godwit.outcome", format!("{:?}", record.phase())),
        ],
        error,
    });
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_left_open_by_a_stopped_coordinator_ends_when_the_job_starts_again() {
        let spec = crate::test_support::spec("taken-over", "acme");
        let mut record = JobRecord::submitted(spec, 1);
        record.trace = Some(godwit_common::telemetry::traces::JobTrace::start(None));
        begin(&mut record, "planning");
        end(&mut record, "planning", None);
        begin(&mut record, "copying");
        let first_copy = record.phase_span("copying");
        // Another coordinator takes the job over: it plans again.
        begin(&mut record, "planning");
        assert!(record.history.running("copying").is_none());
        assert!(record.history.running("planning").is_some());
        end(&mut record, "planning", None);
        begin(&mut record, "copying");
        assert!(record.phase_span("copying").is_some());
        assert_eq!(
            record
                .history
                .phases
                .iter()
                .filter(|p| p.name == "copying")
                .count(),
            2,
            "the second copy is a run of its own"
        );
        assert!(first_copy.is_some());
        finished(&mut record);
        assert!(
            record
                .history
                .phases
                .iter()
                .all(|p| p.ended_unix_ms >= p.started_unix_ms && p.ended_unix_ms > 0)
        );
    }
}
