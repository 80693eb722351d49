//! Reading and writing records in the lease store (one encoding, one
//! clock), and the records shared by the coordinator and the workers that
//! are neither a job's record (`job`) nor leased work (`work`): the staged
//! manifest, verification runs, and the row ranges work items name.

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, PartitionNo};
use crate::job::{JobRecord, PlannedTable};
use crate::keyspace::Keyspace;
use crate::spec::{JobSpec, TableName};
use crate::{Error, Result};

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
    /// The mapping the copy ran under (canonical form): a replay under
    /// another is refused, the difference shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<String>,
    /// Every table landed through the mapping in the platform's tables:
    /// the schema dump holds the source's definitions for the record only,
    /// and a replay does not restore it.
    #[serde(default)]
    pub schema_for_record_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedPartition {
    pub partition: PartitionNo,
    pub table: TableName,
    pub chunks: u64,
    pub rows: u64,
}

/// A block range of a table, `start` included, `end` not; the last
/// partition of a table is open-ended. Its SQL is `pg::ranges`'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRange {
    pub start: u32,
    pub end: Option<u32>,
}

/// A range of a table's rows by its first primary-key column, as each
/// database orders that column: `lower <= column < upper`, either end open.
/// Bounds are the column's text forms, cast back to its type in SQL
/// (`pg::ranges`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// Quoted column name.
    pub column: String,
    /// `format_type` of the column, e.g. `bigint`, `text`.
    pub type_name: String,
    pub lower: Option<String>,
    pub upper: Option<String>,
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
}
