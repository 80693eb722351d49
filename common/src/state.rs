//! Job and partition state as kept in the lease store, and the keyspace it
//! lives in. The coordinator writes the plan; the worker holding a
//! partition's lease writes that partition's progress (fenced by the lease).

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, PartitionNo};
use crate::spec::{JobSpec, TableName};
use crate::work::WorkKind;
use crate::{Error, Result};

/// Key layout under one root per deployment (default `/godwit`): every key,
/// who writes it, and whether the write is fenced by a lease.
///
/// ```text
/// ROOT/jobs/JOB/record                 job record (spec, phase, plan)     coordinator: created by the API on submission
///                                      (create-if-absent), then written by the leader only (fenced by ROOT/leader)
/// ROOT/jobs/JOB/control                operator requests (cancel)         coordinator API
/// ROOT/jobs/JOB/paused                 reading paused                     coordinator API
/// ROOT/jobs/JOB/purged                 when staged data was purged        coordinator (retention sweep)
/// ROOT/jobs/JOB/approvals/ACTION       sign-off request and its approval  coordinator API
/// ROOT/jobs/JOB/work/KIND/items/NNNNNN   a unit of leased work (KIND: copy, verify): its state and progress
///                                        coordinator (publishes); worker (fenced by the lease)
/// ROOT/jobs/JOB/work/KIND/leases/NNNNNN  who holds the unit          worker (create-if-absent, leased)
/// ROOT/leader                          the leading coordinator's identity coordinator (create-if-absent, leased)
/// ROOT/leader-term                     the last election: term, winner    the leader (fenced by ROOT/leader)
/// ROOT/active/JOB                      job open for leasing               coordinator
/// ROOT/retention/JOB                   when an ended job's staging goes   coordinator (job end; sweep)
/// ROOT/verifying/JOB                   the one running verification       coordinator (leased)
/// ROOT/customers/C/limits              a customer's throttle limits       coordinator (spec, API)
/// ROOT/customers/C/allocation          the budget split among leases      coordinator (allocator)
/// ROOT/customers/C/sessions/NNNN       a source session slot              worker (create-if-absent, leased)
/// ```
///
/// No secret is ever written here: connection strings carry no password
/// (a coordinator refuses specs that do) and keys stay in files.
#[derive(Debug, Clone)]
pub struct Keyspace {
    root: String,
}

impl Keyspace {
    pub fn new(root: &str) -> Self {
        Self {
            root: root.trim_end_matches('/').to_owned(),
        }
    }

    /// The leading coordinator's key, held on its lease.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.root)
    }

    /// Who won the last election, and its number.
    pub fn leader_term(&self) -> String {
        format!("{}/leader-term", self.root)
    }

    /// Every key of the deployment.
    pub fn root_prefix(&self) -> String {
        format!("{}/", self.root)
    }

    pub fn jobs_prefix(&self) -> String {
        format!("{}/jobs/", self.root)
    }

    pub fn job_prefix(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}/", self.root)
    }

    pub fn job_record(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}/record", self.root)
    }

    /// Operator requests (cancel) for a job; written by the coordinator API,
    /// read by the job driver.
    pub fn job_control(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}/control", self.root)
    }

    /// When the job's staged data was purged (its retention ran out, or an
    /// operator purged it); written once by the coordinator.
    pub fn job_purged(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}/purged", self.root)
    }

    /// Actions on the job waiting for a second identity's sign-off, and
    /// their approvals; written by the coordinator API.
    pub fn approvals_prefix(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}/approvals/", self.root)
    }

    pub fn approval(&self, job: &JobId, action: &str) -> String {
        format!("{}/jobs/{job}/approvals/{action}", self.root)
    }

    /// Ended jobs with a retention, each with the time (unix ms) its staged
    /// data is due to go; what the retention sweep lists.
    pub fn retention_prefix(&self) -> String {
        format!("{}/retention/", self.root)
    }

    pub fn retention(&self, job: &JobId) -> String {
        format!("{}/retention/{job}", self.root)
    }

    /// Jobs whose partitions are open for leasing; what workers scan.
    pub fn active_prefix(&self) -> String {
        format!("{}/active/", self.root)
    }

    pub fn active(&self, job: &JobId) -> String {
        format!("{}/active/{job}", self.root)
    }

    /// Every unit of leased work of the kind the job has.
    pub fn work_prefix(&self, job: &JobId, kind: WorkKind) -> String {
        format!("{}/jobs/{job}/work/{}/", self.root, kind.segment())
    }

    pub fn work_items_prefix(&self, job: &JobId, kind: WorkKind) -> String {
        format!("{}items/", self.work_prefix(job, kind))
    }

    pub fn work_item(&self, job: &JobId, kind: WorkKind, number: u32) -> String {
        format!("{}items/{number:06}", self.work_prefix(job, kind))
    }

    pub fn work_leases_prefix(&self, job: &JobId, kind: WorkKind) -> String {
        format!("{}leases/", self.work_prefix(job, kind))
    }

    pub fn work_lease(&self, job: &JobId, kind: WorkKind, number: u32) -> String {
        format!("{}leases/{number:06}", self.work_prefix(job, kind))
    }

    /// A job's pause flag: while present, no partition of it is read.
    pub fn job_paused(&self, job: &JobId) -> String {
        format!("{}/jobs/{job}/paused", self.root)
    }

    pub fn customers_prefix(&self) -> String {
        format!("{}/customers/", self.root)
    }

    /// The limits in force for a customer ([`crate::throttle::CustomerLimits`]).
    pub fn customer_limits(&self, customer: &str) -> String {
        format!("{}/customers/{customer}/limits", self.root)
    }

    /// The coordinator's split of the customer's budget
    /// ([`crate::throttle::Allocation`]).
    pub fn customer_allocation(&self, customer: &str) -> String {
        format!("{}/customers/{customer}/allocation", self.root)
    }

    /// Source session slot `n` of a customer, held (attached to a work
    /// lease) by whoever has a session open on the source.
    pub fn session_slot(&self, customer: &str, n: u32) -> String {
        format!("{}/customers/{customer}/sessions/{n:04}", self.root)
    }

    /// Jobs being verified, each with its [`VerifyRun`]; what workers scan
    /// for key ranges to compare.
    pub fn verifying_prefix(&self) -> String {
        format!("{}/verifying/", self.root)
    }

    pub fn verifying(&self, job: &JobId) -> String {
        format!("{}/verifying/{job}", self.root)
    }
}

/// Job lifecycle: planning → copying → finalizing → done, or failed/cancelled
/// from any non-final phase. A job that streams changes goes from finalizing
/// to streaming (from planning when a job taken over resumes its stream),
/// and from there to cutting over, which ends done or (the cutover rolled
/// back) streaming again.
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
            (from, Failed | Cancelled) => !from.is_final(),
            _ => false,
        }
    }
}

/// Rows read from somewhere other than a table of the same name on the
/// source: the relation (for `FROM`) and the expressions selected, in the
/// order of the target columns (`copy_columns`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRelation {
    pub from: String,
    pub select: Vec<String>,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub spec: JobSpec,
    pub phase: JobPhase,
    pub error: Option<String>,
    /// Replication slot whose exported snapshot every partition reads under.
    pub slot: Option<String>,
    pub snapshot: Option<String>,
    pub tables: Vec<PlannedTable>,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: Option<u64>,
    #[serde(default)]
    pub phases: PhaseTimings,
    /// Change streaming, once the job has started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangeProgress>,
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
}

/// The outcome of a cutover attempt.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CutoverRecord {
    pub started_at_unix_ms: u64,
    /// How long the source's tables refused writes (they waited).
    pub frozen_ms: u64,
    /// Of which draining the last changes took.
    pub drain_ms: u64,
    /// Of which the final verification took.
    pub verify_ms: u64,
    pub succeeded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl JobRecord {
    pub fn transition(&mut self, next: JobPhase) -> Result<()> {
        if !self.phase.can_become(next) {
            return Err(Error::Internal(format!(
                "job {} cannot go from {:?} to {next:?}",
                self.spec.job, self.phase
            )));
        }
        self.phase = next;
        Ok(())
    }
}

/// What a finished copy left in the staging area, for a replay that needs
/// nothing but the staging area, the key file and a target: the plan, the
/// chunks of each partition (as the target ledger counted them), the
/// sequences' values and the staged schema files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub job: JobId,
    pub tables: Vec<PlannedTable>,
    pub partitions: Vec<StagedPartition>,
    pub sequences: Vec<(String, i64, bool)>,
    pub schema_files: Vec<String>,
    /// Materialized views the source had populated, in refresh order.
    #[serde(default)]
    pub materialized_views: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedPartition {
    pub partition: PartitionNo,
    pub table: TableName,
    pub chunks: u64,
    pub rows: u64,
}

/// A block range of a table: `ctid >= (start,0) AND ctid < (end,0)`; the last
/// partition of a table is open-ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRange {
    pub start: u32,
    pub end: Option<u32>,
}

impl BlockRange {
    pub fn predicate(&self) -> String {
        match self.end {
            Some(end) => format!(
                "ctid >= '({},0)'::tid AND ctid < '({end},0)'::tid",
                self.start
            ),
            None => format!("ctid >= '({},0)'::tid", self.start),
        }
    }
}

/// A range of a table's rows by its first primary-key column, as each
/// database orders that column: `lower <= column < upper`, either end open.
/// Bounds are the column's text forms, cast back to its type in SQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// Quoted column name.
    pub column: String,
    /// `format_type` of the column, e.g. `bigint`, `text`.
    pub type_name: String,
    pub lower: Option<String>,
    pub upper: Option<String>,
}

impl KeyRange {
    /// The SQL condition selecting the range's rows of table alias `alias`.
    pub fn predicate(&self, alias: &str) -> String {
        let literal = |v: &str| format!("'{}'::{}", v.replace('\'', "''"), self.type_name);
        let mut parts = Vec::new();
        if let Some(lower) = &self.lower {
            parts.push(format!("{alias}.{} >= {}", self.column, literal(lower)));
        }
        if let Some(upper) = &self.upper {
            parts.push(format!("{alias}.{} < {}", self.column, literal(upper)));
        }
        if parts.is_empty() {
            "true".to_owned()
        } else {
            parts.join(" AND ")
        }
    }
}

/// One verification of a job, open for workers while its ranges are
/// compared. Carries the spec: a job can be verified by a process that
/// never ran it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyRun {
    pub spec: JobSpec,
    /// Unique per run; the sealed findings of its ranges are stored under it.
    pub run: String,
    pub compare_rows_below: i64,
    /// Set while the job streams changes: both sides are read under these
    /// exported snapshots, which see the same source transactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<PinnedSnapshots>,
}

/// A source snapshot and a target snapshot that hold the same data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PinnedSnapshots {
    pub source: String,
    pub target: String,
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

/// Exponential backoff with full jitter for the `attempt`-th retry (1-based):
/// a random wait up to `base × 2^(attempt-1)`, capped at `cap`. `unit` in
/// [0, 1) is the random draw, passed in so the arithmetic stays pure.
pub fn backoff(
    attempt: u32,
    base: std::time::Duration,
    cap: std::time::Duration,
    unit: f64,
) -> std::time::Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1u32 << exponent).min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// The value at `key`, decoded; None when there is none.
pub async fn load<T: for<'de> Deserialize<'de>>(
    store: &dyn crate::lease::LeaseStore,
    key: &str,
) -> Result<Option<T>> {
    store
        .get(key)
        .await?
        .map(|bytes| decode(key, &bytes))
        .transpose()
}

/// Whether an operator paused the job's reading.
pub async fn is_paused(
    store: &dyn crate::lease::LeaseStore,
    keyspace: &Keyspace,
    job: &JobId,
) -> Result<bool> {
    Ok(store.get(&keyspace.job_paused(job)).await?.is_some())
}

/// The records of the jobs open for leasing (copying).
pub async fn active_jobs(
    store: &dyn crate::lease::LeaseStore,
    keyspace: &Keyspace,
) -> Result<Vec<JobRecord>> {
    let mut jobs = Vec::new();
    for (key, _) in store.list(&keyspace.active_prefix()).await? {
        let Some(job) = key.rsplit('/').next().and_then(|id| JobId::parse(id).ok()) else {
            continue;
        };
        if let Some(record) = load(store, &keyspace.job_record(&job)).await? {
            jobs.push(record);
        }
    }
    Ok(jobs)
}

/// The verification runs open for leasing.
pub async fn verify_runs(
    store: &dyn crate::lease::LeaseStore,
    keyspace: &Keyspace,
) -> Result<Vec<VerifyRun>> {
    let mut runs = Vec::new();
    for (key, bytes) in store.list(&keyspace.verifying_prefix()).await? {
        runs.push(decode(&key, &bytes)?);
    }
    Ok(runs)
}

/// The keys under `prefix` (the leases held there, say).
pub async fn keys_under(store: &dyn crate::lease::LeaseStore, prefix: &str) -> Result<Vec<String>> {
    Ok(store
        .list(prefix)
        .await?
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// Stores `value` at `key`, encoded as every record is.
pub async fn save<T: Serialize>(
    store: &dyn crate::lease::LeaseStore,
    key: &str,
    value: &T,
) -> Result<()> {
    store.put(key, encode(value)?).await
}

/// A record as stored; a value that cannot be encoded is an error, never
/// empty bytes that would read back as corrupt.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Corrupt {
        what: "a record to store".into(),
        reason: e.to_string(),
    })
}

pub fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        what: format!("lease store value at {key}"),
        reason: e.to_string(),
    })
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        use JobPhase::*;
        assert!(Planning.can_become(Copying));
        assert!(Copying.can_become(Failed));
        assert!(!Done.can_become(Failed));
        assert!(!Copying.can_become(Planning));
        assert!(!Planning.can_become(Done));
    }

    #[test]
    fn an_illegal_phase_change_is_a_defect_not_a_retry() {
        let spec = JobSpec::from_yaml(
            "job: j1\ncustomer: acme\nsource: postgres://s/db\ntarget: postgres://t/db\n\
             staging: file:///tmp/s\nencryption: { key_file: /tmp/k }",
            "test",
        )
        .expect("valid spec");
        let mut record = JobRecord {
            spec,
            phase: JobPhase::Done,
            error: None,
            slot: None,
            snapshot: None,
            tables: Vec::new(),
            started_at_unix_ms: 0,
            finished_at_unix_ms: None,
            phases: PhaseTimings::default(),
            changes: None,
        };
        let refused = record
            .transition(JobPhase::Copying)
            .expect_err("Done is final");
        assert_eq!(refused.kind(), crate::ErrorKind::Internal);
        assert!(!refused.is_retryable());
        assert_eq!(record.phase, JobPhase::Done);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        use std::time::Duration;
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        assert_eq!(backoff(1, base, cap, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(3, base, cap, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(30, base, cap, 1.0), cap);
        assert_eq!(backoff(3, base, cap, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(3, base, cap, 0.0), Duration::ZERO);
    }

    #[test]
    fn key_range_predicates_quote_their_bounds() {
        let range = |lower: Option<&str>, upper: Option<&str>| KeyRange {
            column: "\"Id\"".into(),
            type_name: "text".into(),
            lower: lower.map(str::to_owned),
            upper: upper.map(str::to_owned),
        };
        assert_eq!(range(None, None).predicate("t"), "true");
        assert_eq!(
            range(Some("a'b"), None).predicate("t"),
            "t.\"Id\" >= 'a''b'::text"
        );
        assert_eq!(
            range(Some("a"), Some("m")).predicate("s"),
            "s.\"Id\" >= 'a'::text AND s.\"Id\" < 'm'::text"
        );
    }

    #[test]
    fn block_range_predicates() {
        let bounded = BlockRange {
            start: 10,
            end: Some(20),
        };
        assert_eq!(
            bounded.predicate(),
            "ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid"
        );
        let open = BlockRange {
            start: 20,
            end: None,
        };
        assert_eq!(open.predicate(), "ctid >= '(20,0)'::tid");
    }
}
