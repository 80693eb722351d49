//! A job's record: its spec, where it stands (the phase, with what the
//! next step needs), its plan and what operators see of its progress.
//! The phase changes only through [`JobRecord::advance`], along the edges
//! [`JobPhase::can_become`] allows; the coordinator writes the record with
//! a compare-and-swap against the version it read.

use serde::{Deserialize, Serialize};

use crate::ids::PartitionNo;
use crate::spec::{JobSpec, TableName};
use crate::{Error, Result};

/// Job lifecycle: planning → copying → finalizing → done, or failed/cancelled
/// from any non-final phase. A job that streams changes goes from finalizing
/// to streaming, and from there to cutting over, which ends done or (the
/// cutover rolled back) streaming again. A job taken over by a new leader
/// starts again at planning, from any phase that is not final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    Planning,
    Copying,
    Finalizing,
    Streaming,
    CuttingOver,
    Done,
    Failed,
    Cancelled,
}

impl JobPhase {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobPhase::Done | JobPhase::Failed | JobPhase::Cancelled
        )
    }

    pub fn can_become(self, next: JobPhase) -> bool {
        use JobPhase::*;
        match (self, next) {
            (Planning, Copying | Streaming)
            | (Copying, Finalizing)
            | (Finalizing, Done | Streaming)
            | (Streaming, CuttingOver)
            | (CuttingOver, Streaming | Done) => true,
            (from, Planning | Failed | Cancelled) => !from.is_final(),
            _ => false,
        }
    }
}

/// The source snapshot a copy reads under: exported by the job's
/// replication slot at `consistent_lsn`, where its change stream starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAt {
    pub snapshot: String,
    pub consistent_lsn: String,
}

/// Where a job stands, with what its next step needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Submitted, or taken over: snapshot, schema and plan come next.
    Planning,
    /// Partitions open for workers, read under the snapshot.
    Copying(SnapshotAt),
    /// Indexes, constraints, sequences and the final check, under the
    /// snapshot still.
    Finalizing(SnapshotAt),
    /// Changes stream from the job's slot; this run of the stream began
    /// applying at `from_lsn` (the target ledger holds where it is now).
    Streaming {
        from_lsn: String,
    },
    CuttingOver {
        from_lsn: String,
    },
    Done,
    Failed,
    Cancelled,
}

impl Phase {
    pub fn kind(&self) -> JobPhase {
        match self {
            Phase::Planning => JobPhase::Planning,
            Phase::Copying(_) => JobPhase::Copying,
            Phase::Finalizing(_) => JobPhase::Finalizing,
            Phase::Streaming { .. } => JobPhase::Streaming,
            Phase::CuttingOver { .. } => JobPhase::CuttingOver,
            Phase::Done => JobPhase::Done,
            Phase::Failed => JobPhase::Failed,
            Phase::Cancelled => JobPhase::Cancelled,
        }
    }

    /// The snapshot partitions are read under, while there is one.
    pub fn snapshot(&self) -> Option<&SnapshotAt> {
        match self {
            Phase::Copying(at) | Phase::Finalizing(at) => Some(at),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub spec: JobSpec,
    #[serde(flatten)]
    phase: Phase,
    pub error: Option<String>,
    pub tables: Vec<PlannedTable>,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: Option<u64>,
    #[serde(default)]
    pub phases: PhaseTimings,
    /// Change streaming, once the job has started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangeProgress>,
    /// The job's trace: every process working for it adds its spans there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::telemetry::traces::JobTrace>,
    /// What the debrief draws: when each phase ran, the copy's and the
    /// stream's progress over time, each cutover.
    #[serde(default)]
    pub history: crate::history::JobHistory,
}

impl JobRecord {
    /// A job just submitted.
    pub fn submitted(spec: JobSpec, now_unix_ms: u64) -> Self {
        Self {
            spec,
            phase: Phase::Planning,
            error: None,
            tables: Vec::new(),
            started_at_unix_ms: now_unix_ms,
            finished_at_unix_ms: None,
            phases: PhaseTimings::default(),
            changes: None,
            trace: None,
            history: crate::history::JobHistory::default(),
        }
    }

    pub fn phase(&self) -> JobPhase {
        self.phase.kind()
    }

    /// The span of the open run of `phase` (see [`crate::history`]), where
    /// the work of that phase hangs its spans.
    pub fn phase_span(&self, phase: &str) -> Option<crate::telemetry::traces::SpanRef> {
        let run = self.history.running(phase)?;
        self.trace.as_ref()?.phase(phase, run.started_unix_ms)
    }

    /// The phase with its data.
    pub fn current(&self) -> &Phase {
        &self.phase
    }

    /// Moves the job to `next`, if its lifecycle allows it from here.
    pub fn advance(&mut self, next: Phase) -> Result<()> {
        let (from, to) = (self.phase.kind(), next.kind());
        if !from.can_become(to) {
            return Err(Error::Internal(format!(
                "job {} cannot go from {from:?} to {to:?}",
                self.spec.job
            )));
        }
        self.phase = next;
        Ok(())
    }
}

/// Rows read from somewhere other than a table of the same name on the
/// source: the relation (for `FROM`) and the expressions selected, in the
/// order of the target columns (`copy_columns`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRelation {
    pub from: String,
    pub select: Vec<String>,
    /// Rows read only where this holds (over `t`): a mapping's skipped rows
    /// stay behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedTable {
    pub name: TableName,
    /// Quoted names of the columns COPY moves (generated columns excluded:
    /// the target computes them).
    pub copy_columns: Vec<String>,
    #[serde(default)]
    pub format: crate::pgcopy::CopyFormat,
    pub estimated_bytes: u64,
    pub partitions: Vec<PartitionNo>,
    pub source_rows: Option<u64>,
    pub checked: bool,
    /// Set for large objects, read from the source's catalog.
    #[serde(default)]
    pub source_relation: Option<SourceRelation>,
    /// Columns masked as they are copied (a mapped table's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masks: Vec<crate::mapping::mask::ColumnMask>,
    /// Columns masked only in a review copy (`godwit replay --masked`):
    /// staged as the platform's copy got them, masked as they are replayed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub review_masks: Vec<crate::mapping::mask::ColumnMask>,
    /// For a table the mapping lands in an existing table: which of its
    /// rows are the job's (a predicate over `t`); a replay loads into that
    /// slice only, and only while it is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// Other tables reference it by foreign key: a sampled replay carries
    /// it whole, so every reference still finds its row.
    #[serde(default)]
    pub referenced: bool,
    /// Columns whose values land as new ids (`remap: true`), by position
    /// in `copy_columns`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remaps: Vec<crate::mapping::remap::RemappedColumn>,
    /// How the job creates the table, when it lands through the mapping
    /// under a name the target did not have: a replay creates it so too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<crate::mapping::create::Creation>,
}

/// Where a job's change stream stands, as operators see it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChangeProgress {
    /// End of the last source transaction applied to the target (textual LSN).
    pub applied_lsn: String,
    /// Source WAL written but not yet applied, at the last poll.
    pub lag_bytes: u64,
    /// Age of the oldest source commit not yet applied, at the last poll.
    pub lag_ms: u64,
    pub transactions: u64,
    pub rows: u64,
    /// Source WAL the job's slot keeps from recycling (from its restart
    /// position to the current WAL position), at the last poll.
    #[serde(default)]
    pub retained_wal_bytes: u64,
    pub updated_at_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cutover: Option<CutoverRecord>,
    /// The source position up to which the stream has seen every change
    /// (applied or not published), what lag is measured from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub caught_up_lsn: String,
    /// How fast the stream has been catching up with the source's WAL
    /// lately: lag divided by it is the time left to catch up.
    #[serde(default)]
    pub catch_up_bytes_per_s: u64,
    /// What interrupts the stream while it retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome of a cutover attempt.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CutoverRecord {
    pub started_at_unix_ms: u64,
    /// How long the source's tables refused writes (they waited).
    pub frozen_ms: u64,
    /// Of which draining the last changes took.
    pub drain_ms: u64,
    /// Of which the check of the rows changed since the baseline took.
    pub verify_ms: u64,
    /// The full verification just before the freeze (the source still
    /// took writes meanwhile).
    #[serde(default)]
    pub baseline_verify_ms: u64,
    /// Keys the frozen check compared, and tables it compared whole.
    #[serde(default)]
    pub checked_keys: u64,
    #[serde(default)]
    pub whole_tables: u64,
    pub succeeded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its steps, each from its start to its end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::history::PhaseRun>,
}

impl CutoverRecord {
    /// Records the step `name` that started at `started_unix_ms` and ends now.
    pub fn step(&mut self, name: &str, started_unix_ms: u64) {
        self.steps.push(crate::history::PhaseRun {
            name: name.to_owned(),
            within: Some("cutover".to_owned()),
            started_unix_ms,
            ended_unix_ms: crate::state::now_unix_ms().max(started_unix_ms),
        });
    }
}

/// Wall time of each job phase, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTimings {
    /// Replication slot, exported snapshot and schema dump.
    pub snapshot_ms: u64,
    /// Types, tables and sequences created on the target.
    pub schema_ms: u64,
    pub copy_ms: u64,
    /// Indexes, constraints and foreign keys built on the target.
    pub indexes_ms: u64,
    pub sequences_ms: u64,
    pub check_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(phase: Phase) -> JobRecord {
        let spec = JobSpec::from_yaml(
            "job: j1\ncustomer: acme\nsource: postgres://s/db\ntarget: postgres://t/db\n\
             staging: file:///tmp/s\nencryption: { key_file: /tmp/k }",
            "test",
        )
        .expect("valid spec");
        JobRecord {
            phase,
            ..JobRecord::submitted(spec, 0)
        }
    }

    fn at() -> SnapshotAt {
        SnapshotAt {
            snapshot: "00000003-00000002-1".into(),
            consistent_lsn: "0/1A2B3C".into(),
        }
    }

    #[test]
    fn phases_only_move_forward() {
        use JobPhase::*;
        assert!(Planning.can_become(Copying));
        assert!(Copying.can_become(Failed));
        assert!(!Done.can_become(Failed));
        assert!(!Copying.can_become(Done));
        assert!(!Planning.can_become(Done));
        // A takeover plans again from wherever the job stood.
        assert!(Streaming.can_become(Planning));
        assert!(!Done.can_become(Planning));
    }

    #[test]
    fn an_illegal_phase_change_is_a_defect_not_a_retry() {
        let mut done = record(Phase::Done);
        let refused = done
            .advance(Phase::Copying(at()))
            .expect_err("Done is final");
        assert_eq!(refused.kind(), crate::ErrorKind::Internal);
        assert!(!refused.is_retryable());
        assert_eq!(done.phase(), JobPhase::Done);
    }

    #[test]
    fn the_phase_carries_its_data_through_the_store_encoding() {
        let mut job = record(Phase::Planning);
        job.advance(Phase::Copying(at()))
            .expect("planning → copying");
        let stored = serde_json::to_value(&job).expect("encode");
        assert_eq!(stored["phase"], "copying");
        assert_eq!(stored["snapshot"], "00000003-00000002-1");
        let read: JobRecord = serde_json::from_value(stored).expect("decode");
        assert_eq!(read.current(), &Phase::Copying(at()));
        assert_eq!(read.current().snapshot(), Some(&at()));
        job.advance(Phase::Finalizing(at()))
            .expect("copying → finalizing");
        job.advance(Phase::Streaming {
            from_lsn: at().consistent_lsn,
        })
        .expect("finalizing → streaming");
        assert_eq!(job.current().snapshot(), None);
    }
}
