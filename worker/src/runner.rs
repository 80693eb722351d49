//! The lease loop: find pending partitions of active jobs, take their
//! leases, copy them, record the outcome, release. On shutdown it stops
//! taking leases and lets running partitions finish within a grace period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use godwit_common::ids::JobId;
use godwit_common::lease::{HeldLease, LeaseStore, LeaseTiming};
use godwit_common::staging::Staging;
use godwit_common::state::{self, JobPhase, JobRecord, Keyspace, PartitionRecord, PartitionState};
use godwit_common::{Error, Result};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::copy::{PartitionJob, copy_partition};
use crate::keys::KeyCache;

/// Backoff before a failed partition is retried (full jitter, doubling).
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    /// Partitions copied at once by this worker.
    pub concurrency: usize,
    pub timing: LeaseTiming,
    pub poll_interval: Duration,
    /// Attempts at a partition before it is marked failed.
    pub max_attempts: u32,
    /// How long running partitions may take to finish after shutdown is asked.
    pub shutdown_grace: Duration,
}

impl WorkerConfig {
    pub fn new(id: String) -> Self {
        Self {
            id,
            concurrency: 2,
            timing: LeaseTiming::DEFAULT,
            poll_interval: Duration::from_millis(250),
            max_attempts: 5,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

pub struct Worker {
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    config: WorkerConfig,
    keys: KeyCache,
    /// Set on shutdown: running partitions stop after their current chunk.
    stopping: watch::Sender<bool>,
}

impl Worker {
    pub fn new(store: Arc<dyn LeaseStore>, keyspace: Keyspace, config: WorkerConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            keyspace,
            config,
            keys: KeyCache::default(),
            stopping: watch::channel(false).0,
        })
    }

    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> Result<()> {
        tracing::info!(worker = %self.config.id, concurrency = self.config.concurrency, "worker started");
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut running = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
            while running.try_join_next().is_some() {}
            if slots.available_permits() == 0 {
                continue;
            }
            let candidates = match self.pending_partitions().await {
                Ok(candidates) => candidates,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list pending partitions");
                    continue;
                }
            };
            for (job, partition) in candidates {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let lease_key = self.keyspace.lease(&job.spec.job, partition.partition);
                let owner = self.config.id.clone().into_bytes();
                match HeldLease::try_acquire(
                    self.store.clone(),
                    &lease_key,
                    owner,
                    self.config.timing,
                )
                .await
                {
                    Ok(Some(lease)) => {
                        let worker = self.clone();
                        running.spawn(async move {
                            worker.work_on(job, partition, lease).await;
                            drop(slot);
                        });
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, lease = %lease_key, "cannot take lease"),
                }
            }
        }
        tracing::info!(worker = %self.config.id, running = running.len(), "worker stopping: no new leases, handing partitions back after their current chunk");
        self.stopping.send_replace(true);
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            // Aborting drops the leases' keepers; their TTL then frees the partitions.
            running.abort_all();
            tracing::warn!(worker = %self.config.id, "grace period over: abandoned running partitions");
        }
        Ok(())
    }

    async fn pending_partitions(&self) -> Result<Vec<(Arc<JobRecord>, PartitionRecord)>> {
        let mut pending = Vec::new();
        for (key, _) in self.store.list(&self.keyspace.active_prefix()).await? {
            let Some(job) = key.rsplit('/').next().and_then(|id| JobId::parse(id).ok()) else {
                continue;
            };
            let record_key = self.keyspace.job_record(&job);
            let Some(bytes) = self.store.get(&record_key).await? else {
                continue;
            };
            let record: JobRecord = state::decode(&record_key, &bytes)?;
            if record.phase != JobPhase::Copying {
                continue;
            }
            let record = Arc::new(record);
            let leased: Vec<String> = self
                .store
                .list(&self.keyspace.leases_prefix(&job))
                .await?
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            let prefix = self.keyspace.partitions_prefix(&job);
            for (key, bytes) in self.store.list(&prefix).await? {
                let partition: PartitionRecord = state::decode(&key, &bytes)?;
                let lease_key = self.keyspace.lease(&job, partition.partition);
                let backing_off = partition
                    .retry_after_unix_ms
                    .is_some_and(|at| at > state::now_unix_ms());
                if partition.state == PartitionState::Pending
                    && !leased.contains(&lease_key)
                    && !backing_off
                {
                    pending.push((record.clone(), partition));
                }
            }
        }
        Ok(pending)
    }

    async fn work_on(&self, job: Arc<JobRecord>, partition: PartitionRecord, lease: HeldLease) {
        let job_id = job.spec.job.clone();
        let partition_no = partition.partition;
        let progress_key = self.keyspace.partition(&job_id, partition_no);
        // The listing may be stale: re-read the record now that the lease is ours.
        let record = match self.store.get(&progress_key).await {
            Ok(Some(bytes)) => match state::decode::<PartitionRecord>(&progress_key, &bytes) {
                Ok(record) if record.state == PartitionState::Pending => record,
                Ok(_) => {
                    let _ = lease.release().await;
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "unreadable partition record");
                    let _ = lease.release().await;
                    return;
                }
            },
            _ => partition,
        };
        let span = tracing::info_span!("partition", job_id = %job_id, partition = partition_no, table = %record.table);
        self.finish_partition(&job, record, lease, &progress_key)
            .instrument(span)
            .await;
    }

    async fn finish_partition(
        &self,
        job: &JobRecord,
        mut record: PartitionRecord,
        lease: HeldLease,
        progress_key: &str,
    ) {
        tracing::info!(worker = %self.config.id, "copying partition");
        let outcome = tokio::select! {
            outcome = self.copy(job, &mut record, &lease, progress_key) => outcome,
            () = self.job_ended(&job.spec.job) => {
                tracing::info!("job no longer copying: abandoning the partition");
                let _ = lease.release().await;
                return;
            }
        };
        match outcome {
            Ok(()) => {
                record.state = PartitionState::Copied;
                record.error = None;
                tracing::info!(
                    rows = record.rows,
                    bytes_read = record.bytes_read,
                    "partition copied"
                );
            }
            Err(Error::Cancelled) => {
                tracing::info!(chunks = record.chunks_applied, "handing the partition back");
            }
            Err(e) => {
                record.attempts += 1;
                record.error = Some(e.to_string());
                let give_up = !e.is_retryable() || record.attempts >= self.config.max_attempts;
                if give_up {
                    record.state = PartitionState::Failed;
                } else {
                    let wait = state::backoff(
                        record.attempts,
                        RETRY_BASE,
                        RETRY_CAP,
                        rand::random::<f64>(),
                    );
                    record.retry_after_unix_ms =
                        Some(state::now_unix_ms() + wait.as_millis() as u64);
                }
                tracing::warn!(error = %e, attempts = record.attempts, give_up, "partition copy failed");
            }
        }
        if let Err(e) = lease.put_fenced(progress_key, state::encode(&record)).await {
            tracing::warn!(error = %e, "cannot record partition outcome; the lease's next holder will redo it");
        }
        if let Err(e) = lease.release().await {
            tracing::warn!(error = %e, "cannot release lease; it expires with its TTL");
        }
    }

    /// Resolves once the job is no longer open for copying (cancelled,
    /// failed): its partitions are then abandoned, which the ledger makes safe.
    async fn job_ended(&self, job: &JobId) {
        let active = self.keyspace.active(job);
        loop {
            tokio::time::sleep(self.config.poll_interval * 4).await;
            if let Ok(None) = self.store.get(&active).await {
                return;
            }
        }
    }

    async fn copy(
        &self,
        job: &JobRecord,
        record: &mut PartitionRecord,
        lease: &HeldLease,
        progress_key: &str,
    ) -> Result<()> {
        let snapshot = job.snapshot.as_deref().ok_or_else(|| {
            Error::Catalog(format!(
                "job {} has no snapshot to read under",
                job.spec.job
            ))
        })?;
        let table = job
            .tables
            .iter()
            .find(|t| t.name == record.table)
            .ok_or_else(|| {
                Error::Catalog(format!(
                    "partition {} names unplanned table {}",
                    record.partition, record.table
                ))
            })?;
        let staging = Staging::open(&job.spec.staging)?;
        let key = self.keys.data_key(&job.spec, &staging).await?;
        copy_partition(
            PartitionJob {
                spec: &job.spec,
                snapshot,
                table,
                staging: &staging,
                key,
                lease,
                progress_key,
                stop: self.stopping.subscribe(),
            },
            record,
        )
        .await?;
        Ok(())
    }
}
