//! Coordinator start-up: every job the lease store shows unfinished is
//! taken over and driven to its end again (see `JobDriver::take_over` for
//! the rule), so a coordinator restart is a pause, not a loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_common::Result;
use godwit_common::lease::LeaseStore;
use godwit_common::pg::snapshot;
use godwit_common::state::{self, JobPhase, JobRecord, Keyspace, now_unix_ms};

use crate::driver::{JobDriver, preflight};
use crate::error::JobError;

/// How long a restarted coordinator waits for a job's databases to be
/// reachable again before it fails the job (and frees the source's WAL).
const RESUME_PATIENCE: Duration = Duration::from_secs(15 * 60);
const RESUME_RETRY: Duration = Duration::from_secs(5);

/// Takes over an unfinished job whose first preflight failed: its databases
/// may be away for a while (a restart often comes with a network or server
/// incident), so a preflight that fails for a reason that can pass is
/// tried again. A job that cannot be resumed fails, and its replication
/// slot and publication are dropped so they do not pin the customer's WAL;
/// if they cannot be, the job's error says how to drop them by hand.
async fn resume_later(
    driver: JobDriver,
    store: &dyn LeaseStore,
    key: String,
    mut record: JobRecord,
    first: JobError,
) {
    let job = record.spec.job.clone();
    let started = Instant::now();
    let mut last = first;
    let failure = loop {
        match last {
            JobError::Rejected(e) if e.is_retryable() && started.elapsed() < RESUME_PATIENCE => {
                tracing::warn!(job_id = %job, error = %e, "cannot resume job yet; trying again");
                record.error = Some(format!(
                    "waiting to resume after a coordinator restart: {e}"
                ));
                let _ = state::save(store, &key, &record).await;
                tokio::time::sleep(RESUME_RETRY).await;
            }
            other => break other,
        }
        match preflight(record.spec.clone()).await {
            Ok(prepared) => {
                if let Err(e) = driver.take_over(&prepared).await {
                    tracing::error!(job_id = %job, error = %e, "cannot take over job");
                    return;
                }
                let _ = driver.execute(prepared).await;
                return;
            }
            Err(e) => last = e,
        }
    };
    tracing::error!(job_id = %job, error = %failure, "cannot resume job");
    let slot = record
        .slot
        .clone()
        .unwrap_or_else(|| snapshot::slot_name(&job));
    let mut error = format!("could not be resumed after a coordinator restart: {failure}");
    if let Err(e) = crate::changes::release_source(&record.spec, &slot).await {
        error.push_str(&format!(
            "; its replication slot could not be dropped ({e}): on the source, run \
             SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION IF EXISTS {slot}"
        ));
    }
    record.phase = JobPhase::Failed;
    record.error = Some(error);
    record.finished_at_unix_ms = Some(now_unix_ms());
    if let Err(e) = state::save(store, &key, &record).await {
        tracing::error!(job_id = %job, error = %e, "cannot record the job's failure");
    }
    if let Err(e) = crate::retention::schedule(store, driver.keyspace(), &record).await {
        tracing::error!(job_id = %job, error = %e, "cannot schedule the job's retention; purge it with godwit purge");
    }
}

/// Takes over unfinished jobs; returns how many were resumed.
pub async fn resume_unfinished(store: Arc<dyn LeaseStore>, keyspace: &Keyspace) -> Result<usize> {
    let mut resumed = 0;
    for (key, bytes) in store.list(&keyspace.jobs_prefix()).await? {
        if !key.ends_with("/record") {
            continue;
        }
        let record: JobRecord = state::decode(&key, &bytes)?;
        if record.phase.is_final() {
            continue;
        }
        let driver = JobDriver::new(store.clone(), keyspace.clone());
        match preflight(record.spec.clone()).await {
            Ok(prepared) => {
                // Taken over before the coordinator serves: no one reads the
                // previous coordinator's record as the job's state.
                if let Err(e) = driver.take_over(&prepared).await {
                    tracing::error!(job_id = %record.spec.job, error = %e, "cannot take over job");
                    continue;
                }
                tokio::spawn(async move {
                    let _ = driver.execute(prepared).await;
                });
            }
            Err(first) => {
                let store = store.clone();
                tokio::spawn(async move {
                    resume_later(driver, store.as_ref(), key, record, first).await;
                });
            }
        }
        resumed += 1;
    }
    Ok(resumed)
}
