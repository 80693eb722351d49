//! Staged data kept no longer than the job's `retention`: once a job has
//! ended and its retention has run out, the coordinator deletes the job's
//! staged objects and shreds its data key, then records when. Never touches
//! a job that has not ended, or one without a retention.

use std::sync::Arc;
use std::time::Duration;

use godwit_common::Result;
use godwit_common::ids::JobId;
use godwit_common::job::JobRecord;
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::LeaseStore;
use godwit_common::staging::Staging;
use godwit_common::state::{self, now_unix_ms};

/// How often ended jobs are looked at (a listing of the jobs' keys).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Sweeps until `stop` resolves.
pub async fn run(
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        if let Err(e) = sweep(store.as_ref(), &keyspace).await {
            tracing::warn!(error = %e, "retention sweep failed; trying again");
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

/// Files an ended job for purging once its retention runs out (nothing
/// for a job without one). The sweep lists these entries only, not every
/// job's keys.
pub async fn schedule(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    record: &JobRecord,
) -> Result<()> {
    let (Some(retention), Some(finished)) = (record.spec.retention(), record.finished_at_unix_ms)
    else {
        return Ok(());
    };
    let due = finished.saturating_add(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
    store
        .put(
            &keyspace.retention(&record.spec.job),
            due.to_string().into_bytes(),
        )
        .await
}

/// Purges every ended job whose retention has run out; returns how many.
pub async fn sweep(store: &dyn LeaseStore, keyspace: &Keyspace) -> Result<usize> {
    let mut purged = 0;
    let now = now_unix_ms();
    for (key, bytes) in store.list(&keyspace.retention_prefix()).await? {
        let due: u64 = String::from_utf8_lossy(&bytes).trim().parse().unwrap_or(0);
        let Some(job) = key.rsplit('/').next().and_then(|id| JobId::parse(id).ok()) else {
            continue;
        };
        if due > now {
            continue;
        }
        match state::load::<JobRecord>(store, &keyspace.job_record(&job)).await? {
            Some(record) if record.phase().is_final() => {
                purge(store, keyspace, &job, &record).await?;
                purged += 1;
            }
            Some(_) => continue,
            None => {}
        }
        store.delete(&key).await?;
    }
    Ok(purged)
}

async fn purge(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    job: &JobId,
    record: &JobRecord,
) -> Result<()> {
    let staging = Staging::open(&record.spec.staging)?;
    let objects = staging.purge_job(job).await?;
    store
        .put(
            &keyspace.job_purged(job),
            now_unix_ms().to_string().into_bytes(),
        )
        .await?;
    tracing::info!(
        job_id = %job,
        customer = %record.spec.customer,
        objects,
        action = "retention.purge",
        "retention ran out: staged data deleted and data key shredded"
    );
    godwit_common::audit::note(
        &record.spec,
        vec![
            godwit_common::audit::AuditEvent::new("coordinator", "retention.purge", "ok").object(
                format!("{objects} staged object(s) deleted, data key destroyed"),
            ),
        ],
    )
    .await;
    Ok(())
}
