//! What a job's run amounts to: the operator's summary and the copy's
//! totals. A leaf: it knows the job's record types and nothing of how a
//! job is driven.

use std::time::Duration;

use godwit_common::job::{CutoverRecord, PhaseTimings};
use godwit_common::work::StageTimings;

/// What a finished job did, for the operator's summary.
#[derive(Debug, Clone)]
pub struct JobSummary {
    pub tables: usize,
    pub rows: u64,
    pub bytes_read: u64,
    pub bytes_staged: u64,
    pub duration: Duration,
    pub phases: PhaseTimings,
    /// Summed over partitions, which run in parallel.
    pub stages: StageTimings,
    /// The cutover that ended a job streaming changes.
    pub cutover: Option<CutoverRecord>,
}

/// Copy progress summed over a job's partitions.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CopyTotals {
    pub(crate) rows: u64,
    pub(crate) bytes_read: u64,
    pub(crate) bytes_staged: u64,
    pub(crate) stages: StageTimings,
}

impl CopyTotals {
    pub(crate) fn of(partitions: &[godwit_common::work::PartitionRecord]) -> Self {
        let mut totals = Self::default();
        for partition in partitions {
            totals.rows += partition.rows;
            totals.bytes_read += partition.bytes_read;
            totals.bytes_staged += partition.bytes_staged;
            totals.stages.add(&partition.timings);
        }
        totals
    }
}
