//! Job status as operators see it: per-table and overall progress with an
//! ETA, assembled from the job and partition records in the lease store.

use godwit_common::Result;
use godwit_common::ids::JobId;
use godwit_common::job::{ChangeProgress, CutoverRecord, JobPhase, JobRecord};
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::LeaseStore;
use godwit_common::state::{self, VerifyRun, now_unix_ms};
use godwit_common::work::{self, PartitionRecord, WorkState};
use godwit_proto::v1::{Changes, Cutover, JobState, JobStatus, Progress, TableStatus, Throttle};

pub fn job_state(phase: JobPhase) -> JobState {
    match phase {
        JobPhase::Planning => JobState::Planning,
        JobPhase::Copying => JobState::Copying,
        JobPhase::Finalizing => JobState::Finalizing,
        JobPhase::Streaming => JobState::Streaming,
        JobPhase::CuttingOver => JobState::CuttingOver,
        JobPhase::Done => JobState::Done,
        JobPhase::Failed => JobState::Failed,
        JobPhase::Cancelled => JobState::Cancelled,
    }
}

pub async fn load(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    job: &JobId,
) -> Result<Option<JobStatus>> {
    let Some(record): Option<JobRecord> = state::load(store, &keyspace.job_record(job)).await?
    else {
        return Ok(None);
    };
    let partitions: Vec<PartitionRecord> = work::list(store, keyspace, job).await?;
    let mut status = assemble(&record, &partitions, now_unix_ms());
    status.paused = state::is_paused(store, keyspace, job).await?;
    status.throttle = Some(throttle(store, keyspace, record.spec.customer.as_str()).await?);
    status.awaiting_approval = crate::approval::pending(store, keyspace, job).await?;
    let running: Option<VerifyRun> = state::load(store, &keyspace.verifying(job)).await?;
    status.verifying_since_unix_ms = running.map(|run| run.run.parse().unwrap_or(0));
    Ok(Some(status))
}

/// A customer's limits and the coordinator's latest decision on them.
pub async fn throttle(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    customer: &str,
) -> Result<Throttle> {
    let limits = crate::throttle::limits(store, keyspace, customer).await?;
    let allocation = crate::throttle::allocation(store, keyspace, customer).await?;
    Ok(Throttle {
        customer: customer.to_owned(),
        bytes_per_sec: limits.as_ref().and_then(|l| l.bytes_per_sec),
        max_connections: limits.as_ref().and_then(|l| l.max_connections),
        leases: allocation.as_ref().map_or(0, |a| a.shares.len() as u32),
        reason: allocation.as_ref().map_or_else(
            || crate::throttle::reason(limits.as_ref()),
            |a| a.reason.clone(),
        ),
        decided_at_unix_ms: allocation.map_or(0, |a| a.decided_at_unix_ms),
    })
}

pub async fn list(store: &dyn LeaseStore, keyspace: &Keyspace) -> Result<Vec<JobStatus>> {
    let mut jobs = Vec::new();
    for (key, _) in store.list(&keyspace.jobs_prefix()).await? {
        let Some(id) = key
            .strip_suffix("/record")
            .and_then(|k| k.rsplit('/').next())
        else {
            continue;
        };
        let Ok(id) = JobId::parse(id) else { continue };
        if let Some(status) = load(store, keyspace, &id).await? {
            jobs.push(status);
        }
    }
    Ok(jobs)
}

/// Pure assembly, so the arithmetic is testable without a store.
pub fn assemble(record: &JobRecord, partitions: &[PartitionRecord], now_ms: u64) -> JobStatus {
    let mut total = Progress::default();
    let mut tables = Vec::with_capacity(record.tables.len());
    for table in &record.tables {
        let mut progress = Progress {
            bytes_estimated: table.estimated_bytes,
            ..Progress::default()
        };
        // By number: several source tables may land in one table.
        for partition in partitions
            .iter()
            .filter(|p| p.table == table.name && table.partitions.contains(&p.partition))
        {
            progress.partitions_total += 1;
            if partition.state == WorkState::Done {
                progress.partitions_done += 1;
            }
            progress.rows += partition.rows;
            progress.bytes_read += partition.bytes_read;
            progress.bytes_staged += partition.bytes_staged;
        }
        total.partitions_total += progress.partitions_total;
        total.partitions_done += progress.partitions_done;
        total.rows += progress.rows;
        total.bytes_read += progress.bytes_read;
        total.bytes_staged += progress.bytes_staged;
        total.bytes_estimated += progress.bytes_estimated;
        tables.push(TableStatus {
            table: table.name.to_string(),
            progress: Some(progress),
            checked: table.checked,
            source_rows: table.source_rows.unwrap_or(0),
        });
    }
    let end_ms = record.finished_at_unix_ms.unwrap_or(now_ms);
    let elapsed_ms = end_ms.saturating_sub(record.started_at_unix_ms);
    let eta_ms = eta(record.phase(), &total, elapsed_ms);
    JobStatus {
        job_id: record.spec.job.to_string(),
        customer: record.spec.customer.to_string(),
        state: job_state(record.phase()) as i32,
        error: record.error.clone().unwrap_or_default(),
        total: Some(total),
        tables,
        started_at_unix_ms: record.started_at_unix_ms,
        elapsed_ms,
        eta_ms,
        paused: false,
        throttle: None,
        changes: record.changes.as_ref().map(changes),
        awaiting_approval: Vec::new(),
        verifying_since_unix_ms: None,
    }
}

fn changes(progress: &ChangeProgress) -> Changes {
    Changes {
        applied_lsn: progress.applied_lsn.clone(),
        lag_bytes: progress.lag_bytes,
        lag_ms: progress.lag_ms,
        transactions: progress.transactions,
        rows: progress.rows,
        last_cutover: progress.last_cutover.as_ref().map(cutover),
        retained_wal_bytes: progress.retained_wal_bytes,
        catch_up_bytes_per_s: progress.catch_up_bytes_per_s,
    }
}

pub fn cutover(record: &CutoverRecord) -> Cutover {
    Cutover {
        succeeded: record.succeeded,
        error: record.error.clone().unwrap_or_default(),
        frozen_ms: record.frozen_ms,
        drain_ms: record.drain_ms,
        verify_ms: record.verify_ms,
        baseline_verify_ms: record.baseline_verify_ms,
        checked_keys: record.checked_keys,
        whole_tables: record.whole_tables,
    }
}

/// Remaining copy time at the rate seen so far; COPY's binary form is close
/// enough to the on-disk size for an estimate, and never below zero.
fn eta(phase: JobPhase, total: &Progress, elapsed_ms: u64) -> Option<u64> {
    if phase != JobPhase::Copying || total.bytes_read == 0 || elapsed_ms == 0 {
        return None;
    }
    let remaining = total.bytes_estimated.saturating_sub(total.bytes_read);
    Some((remaining as f64 * elapsed_ms as f64 / total.bytes_read as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_scales_with_rate_and_stops_when_not_copying() {
        let total = Progress {
            bytes_read: 100,
            bytes_estimated: 400,
            ..Progress::default()
        };
        assert_eq!(eta(JobPhase::Copying, &total, 1_000), Some(3_000));
        assert_eq!(eta(JobPhase::Done, &total, 1_000), None);
        let overshoot = Progress {
            bytes_read: 500,
            bytes_estimated: 400,
            ..Progress::default()
        };
        assert_eq!(eta(JobPhase::Copying, &overshoot, 1_000), Some(0));
    }
}
