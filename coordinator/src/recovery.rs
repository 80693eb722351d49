//! Coordinator start-up: every job the lease store shows unfinished is
//! taken over and driven to its end again (see `JobDriver::take_over` for
//! the rule), so a coordinator restart is a pause, not a loss.

use std::sync::Arc;

use godwit_common::Result;
use godwit_common::lease::LeaseStore;
use godwit_common::state::{self, JobPhase, JobRecord, Keyspace, now_unix_ms};

use crate::driver::{JobDriver, preflight};

/// Takes over unfinished jobs; returns how many were resumed.
pub async fn resume_unfinished(store: Arc<dyn LeaseStore>, keyspace: &Keyspace) -> Result<usize> {
    let mut resumed = 0;
    for (key, bytes) in store.list(&keyspace.jobs_prefix()).await? {
        if !key.ends_with("/record") {
            continue;
        }
        let mut record: JobRecord = state::decode(&key, &bytes)?;
        if record.phase.is_final() {
            continue;
        }
        let job = record.spec.job.clone();
        let driver = JobDriver::new(store.clone(), keyspace.clone());
        let prepared = match preflight(record.spec.clone()).await {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::error!(job_id = %job, error = %e, "cannot resume job");
                record.phase = JobPhase::Failed;
                record.error = Some(format!(
                    "could not be resumed after a coordinator restart: {e}"
                ));
                record.finished_at_unix_ms = Some(now_unix_ms());
                store.put(&key, state::encode(&record)).await?;
                continue;
            }
        };
        if let Err(e) = driver.take_over(&prepared).await {
            tracing::error!(job_id = %job, error = %e, "cannot take over job");
            continue;
        }
        tokio::spawn(async move {
            let _ = driver.execute(prepared).await;
        });
        resumed += 1;
    }
    Ok(resumed)
}
