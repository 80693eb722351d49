//! The kinds of leased work, as stored: what each carries beyond the
//! engine's state and attempts.

use serde::{Deserialize, Serialize};

use super::{Attempts, WorkItem, WorkKind, WorkState};
use crate::ids::{JobId, PartitionNo};
use crate::job::ChangeProgress;
use crate::spec::TableName;
use crate::state::{BlockRange, KeyRange};

/// The engine's view of a kind of work: its number, state and attempts
/// fields, and how errors name it (`table T NOUN N`).
macro_rules! work_item {
    ($type:ty, $kind:expr, |$it:ident| number: $number:expr, describe: $describe:expr, wave: $wave:expr) => {
        impl WorkItem for $type {
            const KIND: WorkKind = $kind;
            fn number(&self) -> u32 {
                let $it = self;
                $number
            }
            fn state(&self) -> WorkState {
                self.state
            }
            fn set_state(&mut self, state: WorkState) {
                self.state = state;
            }
            fn attempts(&self) -> &Attempts {
                &self.attempts
            }
            fn attempts_mut(&mut self) -> &mut Attempts {
                &mut self.attempts
            }
            fn describe(&self) -> String {
                let $it = self;
                $describe
            }
            fn wave(&self) -> u32 {
                #[allow(unused_variables)]
                let $it = self;
                $wave
            }
        }
    };
    ($type:ty, $kind:expr, $number:ident, $noun:literal) => {
        work_item!($type, $kind, |item| number: item.$number,
            describe: format!("table {} {} {}", item.table, $noun, item.$number), wave: 0);
    };
}

work_item!(PartitionRecord, WorkKind::Copy, |item| number: item.partition,
    describe: format!("table {} partition {}", item.table, item.partition), wave: item.wave);

impl PartitionRecord {
    /// The wave its table loads in.
    pub fn with_wave(mut self, wave: u32) -> Self {
        self.wave = wave;
        self
    }
}
work_item!(VerifyRange, WorkKind::Verify, range, "range");

/// A block range of a table to copy under the job's snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub job: JobId,
    pub partition: PartitionNo,
    pub table: TableName,
    pub range: BlockRange,
    pub state: WorkState,
    pub rows: u64,
    pub bytes_read: u64,
    pub bytes_staged: u64,
    /// Chunks the target ledger has confirmed, i.e. the resume point.
    pub chunks_applied: u64,
    #[serde(default)]
    pub timings: StageTimings,
    /// Taken only once every partition of a lower wave is done: a key of
    /// the platform's references the rows of those tables.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wave: u32,
    /// When a worker first started it, and when its copy ended.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub started_unix_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub finished_unix_ms: u64,
    #[serde(flatten)]
    pub attempts: Attempts,
}

fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl PartitionRecord {
    pub fn pending(
        job: JobId,
        partition: PartitionNo,
        table: TableName,
        range: BlockRange,
    ) -> Self {
        Self {
            job,
            partition,
            table,
            range,
            state: WorkState::Pending,
            rows: 0,
            bytes_read: 0,
            bytes_staged: 0,
            chunks_applied: 0,
            timings: StageTimings::default(),
            wave: 0,
            started_unix_ms: 0,
            finished_unix_ms: 0,
            attempts: Attempts::default(),
        }
    }
}

/// Where a partition's copy time went, in milliseconds. Summed over
/// partitions running at once, and the source keeps filling the socket
/// buffer while a chunk loads, so they do not add up to wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTimings {
    /// Waiting for the source's COPY stream.
    pub read_ms: u64,
    /// Compressing, encrypting and hashing chunks.
    pub seal_ms: u64,
    /// Writing sealed chunks to the staging area.
    pub stage_ms: u64,
    /// Loading chunks and their ledger rows into the target.
    pub load_ms: u64,
}

impl StageTimings {
    pub fn add(&mut self, other: &StageTimings) {
        self.read_ms += other.read_ms;
        self.seal_ms += other.seal_ms;
        self.stage_ms += other.stage_ms;
        self.load_ms += other.load_ms;
    }
}

/// One key range of a table (or the whole table when it has no primary
/// key), compared on both databases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyRange {
    pub range: u32,
    pub table: TableName,
    /// None: the whole table, which has no primary key to range over.
    pub keys: Option<KeyRange>,
    /// The range's share of the table's size at the source, what
    /// throttling charges for comparing it.
    #[serde(default)]
    pub estimated_bytes: u64,
    pub state: WorkState,
    pub source_rows: u64,
    pub target_rows: u64,
    /// Whether both databases hold the same rows in the range; when not,
    /// the worker stored the sealed finding in staging.
    pub matched: bool,
    /// Set for a table that landed through a mapping: what each side
    /// compares, and the range on the target's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped: Option<Box<MappedRange>>,
    #[serde(flatten)]
    pub attempts: Attempts,
}

/// The sides of a mapped table's range (see `mapping::carry`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MappedRange {
    pub views: (crate::verify::View, crate::verify::View),
    pub target_keys: Option<KeyRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<crate::verify::MaskedColumn>,
}

impl VerifyRange {
    pub fn pending(
        range: u32,
        table: TableName,
        keys: Option<KeyRange>,
        estimated_bytes: u64,
    ) -> Self {
        Self {
            range,
            table,
            keys,
            estimated_bytes,
            state: WorkState::Pending,
            source_rows: 0,
            target_rows: 0,
            matched: false,
            mapped: None,
            attempts: Attempts::default(),
        }
    }
}

/// A job's change stream as leased work: one item, which a worker holds for
/// as long as the job streams. Done once the stream was told to stop after
/// a cutover; failed once its retries ran out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamItem {
    pub job: JobId,
    /// The target tables the job created (put in replica mode while the
    /// stream runs).
    pub tables: Vec<TableName>,
    /// The tables whose changes land through the mapping (the platform's
    /// tables among them are never put in replica mode: other tenants
    /// write there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mapped: Vec<crate::mapping::carry::Carried>,
    /// Where the target ledger starts when it has no position yet: the
    /// slot's consistent point, which the copy's snapshot was taken at.
    pub start_lsn: u64,
    pub state: WorkState,
    /// What operators see; the leading coordinator mirrors it into the
    /// job's record.
    #[serde(default)]
    pub progress: ChangeProgress,
    #[serde(flatten)]
    pub attempts: Attempts,
}

impl StreamItem {
    pub const NUMBER: u32 = 0;

    pub fn pending(job: JobId, tables: Vec<TableName>, start_lsn: u64) -> Self {
        Self {
            job,
            tables,
            mapped: Vec::new(),
            start_lsn,
            state: WorkState::Pending,
            progress: ChangeProgress::default(),
            attempts: Attempts::default(),
        }
    }
}

work_item!(StreamItem, WorkKind::Stream, |item| number: {
    let _ = item;
    StreamItem::NUMBER
}, describe: format!("the change stream of job {}", item.job), wave: 0);
