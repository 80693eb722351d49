//! The leader's dispatcher: every job the lease store shows unfinished
//! and no driver of this process runs is driven to its end — a job just
//! submitted (to any coordinator) as well as one a previous leader left
//! behind (see `JobDriver::take_over` for that rule). A change of leader
//! is a pause, not a loss. Never runs on a coordinator that does not lead.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_common::ids::JobId;
use godwit_common::job::{JobRecord, Phase};
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::{LeaseStore, Wakeups};
use godwit_common::pg::snapshot;
use godwit_common::state::{self, now_unix_ms};
use tokio::task::JoinSet;

use crate::driver::{JobDriver, preflight};
use crate::error::JobError;
use crate::leadership::JobRecords;

/// How long a new leader waits for a job's databases to be reachable
/// again before it fails the job (and frees the source's WAL).
const RESUME_PATIENCE: Duration = Duration::from_secs(15 * 60);
const RESUME_RETRY: Duration = Duration::from_secs(5);
/// Longest time between two looks at the jobs when no change woke the
/// dispatcher.
const DISPATCH_FALLBACK: Duration = Duration::from_secs(2);

/// Drives every unfinished job but `skip`, for as long as it runs
/// (dropping it ends the drivers it started).
pub async fn drive_unfinished(
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    records: JobRecords,
    skip: Option<JobId>,
) {
    let mut wakeups = Wakeups::open(store.clone(), &keyspace.jobs_prefix(), DISPATCH_FALLBACK)
        .await
        .only(|change| change.key().is_some_and(|key| key.ends_with("/record")));
    let mut driving: HashSet<JobId> = HashSet::new();
    let mut drivers: JoinSet<JobId> = JoinSet::new();
    loop {
        while let Some(ended) = drivers.try_join_next() {
            if let Ok(job) = ended {
                driving.remove(&job);
            }
        }
        match unfinished(store.as_ref(), &keyspace).await {
            Ok(open) => {
                for record in open {
                    let job = record.spec.job.clone();
                    if skip.as_ref() == Some(&job) || !driving.insert(job.clone()) {
                        continue;
                    }
                    let driver =
                        JobDriver::fenced(store.clone(), keyspace.clone(), records.clone());
                    drivers.spawn(async move {
                        drive(driver, record).await;
                        job
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the jobs; looking again"),
        }
        tokio::select! {
            () = wakeups.wait() => {}
            Some(Ok(job)) = drivers.join_next() => { driving.remove(&job); }
        }
    }
}

async fn unfinished(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
) -> godwit_common::Result<Vec<JobRecord>> {
    let mut records = Vec::new();
    for (key, bytes) in store.list(&keyspace.jobs_prefix()).await? {
        if !key.ends_with("/record") {
            continue;
        }
        let record: JobRecord = state::decode(&key, &bytes)?;
        if !record.phase().is_final() {
            records.push(record);
        }
    }
    Ok(records)
}

/// Takes a job to its end: checks it again (the databases may have
/// changed since it was submitted or last driven), takes over what a
/// previous run left, and runs it. Its databases may be away for a while (a
/// failover often comes with a network or server incident), so a check that
/// fails for a reason that can pass is tried again. A job that cannot be
/// resumed fails, and its replication slot and publication are dropped so
/// they do not pin the customer's WAL; if they cannot be, the job's error
/// says how to drop them by hand.
async fn drive(driver: JobDriver, mut record: JobRecord) {
    let job = record.spec.job.clone();
    let started = Instant::now();
    let failure = loop {
        match preflight(record.spec.clone()).await {
            Ok(prepared) => {
                if let Err(e) = driver.take_over(&prepared).await {
                    tracing::error!(job_id = %job, error = %e, "cannot take over job");
                    return;
                }
                let _ = driver.execute(prepared).await;
                return;
            }
            Err(JobError::Rejected(e))
                if e.is_retryable() && started.elapsed() < RESUME_PATIENCE =>
            {
                tracing::warn!(job_id = %job, error = %e, "cannot resume job yet; trying again");
                record.error = Some(format!("waiting to resume after a coordinator change: {e}"));
                let _ = driver.records().save(&record).await;
                tokio::time::sleep(RESUME_RETRY).await;
            }
            Err(other) => break other,
        }
    };
    tracing::error!(job_id = %job, error = %failure, "cannot resume job");
    let slot = snapshot::slot_name(&job);
    let mut error = format!("could not be resumed after a coordinator change: {failure}");
    if let Err(e) = crate::changes::release_source(&record.spec, &slot).await {
        error.push_str(&format!(
            "; its replication slot could not be dropped ({e}): on the source, run \
             SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION IF EXISTS {slot}"
        ));
    }
    if let Err(e) = record.advance(Phase::Failed) {
        tracing::error!(job_id = %job, error = %e, "cannot fail the job");
    }
    record.error = Some(error);
    record.finished_at_unix_ms = Some(now_unix_ms());
    if let Err(e) = driver.records().save(&record).await {
        tracing::error!(job_id = %job, error = %e, "cannot record the job's failure");
    }
    if let Err(e) = crate::retention::schedule(driver.store(), driver.keyspace(), &record).await {
        tracing::error!(job_id = %job, error = %e, "cannot schedule the job's retention; purge it with godwit purge");
    }
}
