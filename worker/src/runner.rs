//! The lease loop: find pending work (partitions of jobs being copied, key
//! ranges of jobs being verified), take its lease, do it, record the
//! outcome, release. On shutdown it stops taking leases and lets running
//! work finish within a grace period.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use godwit_common::audit::{AuditEvent, AuditLog};
use godwit_common::ids::JobId;
use godwit_common::lease::{HeldLease, LeaseStore, LeaseTiming};
use godwit_common::staging::Staging;
use godwit_common::state::{
    self, JobPhase, JobRecord, Keyspace, PartitionRecord, PartitionState, RangeState, VerifyRange,
    VerifyRun,
};
use godwit_common::{Error, Result};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::copy::{PartitionJob, copy_partition};
use crate::keys::KeyCache;
use crate::throttle::{Following, Place, ReadPacer, Spares, follow, take_session_slot};

/// A unit of work a worker can lease.
enum Task {
    Copy(Arc<JobRecord>, PartitionRecord),
    Verify(Arc<VerifyRun>, VerifyRange),
}

impl Task {
    fn spec(&self) -> &godwit_common::spec::JobSpec {
        match self {
            Task::Copy(job, _) => &job.spec,
            Task::Verify(run, _) => &run.spec,
        }
    }

    fn lease_key(&self, keyspace: &Keyspace) -> String {
        match self {
            Task::Copy(job, partition) => keyspace.lease(&job.spec.job, partition.partition),
            Task::Verify(run, range) => keyspace.verify_lease(&run.spec.job, range.range),
        }
    }
}

/// Backoff before failed work is retried (full jitter, doubling).
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    /// Partitions (or verification ranges) worked on at once by this
    /// worker, per customer.
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
    /// Shares of finished leases, for the next lease of their customer.
    spares: Arc<Spares>,
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
            spares: Arc::default(),
            stopping: watch::channel(false).0,
        })
    }

    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> Result<()> {
        tracing::info!(worker = %self.config.id, concurrency = self.config.concurrency, "worker started");
        // Slots per customer: one customer's throttled, slow work never
        // takes the capacity another customer's jobs need.
        let mut slots: HashMap<String, Arc<Semaphore>> = HashMap::new();
        let mut running = JoinSet::new();
        // Finished work wakes the loop at once: the next lease then starts
        // while the finished one's share can still be handed over to it.
        let finished = Arc::new(tokio::sync::Notify::new());
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.config.poll_interval) => {}
                () = finished.notified() => {}
            }
            while running.try_join_next().is_some() {}
            let candidates = match self.pending_tasks().await {
                Ok(candidates) => candidates,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list pending work");
                    continue;
                }
            };
            for task in candidates {
                let pool = slots
                    .entry(task.spec().customer.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.config.concurrency)));
                let Ok(slot) = pool.clone().try_acquire_owned() else {
                    continue;
                };
                let lease_key = task.lease_key(&self.keyspace);
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
                        let finished = finished.clone();
                        running.spawn(async move {
                            let spec = task.spec();
                            let Some(following) = worker
                                .admit(spec.customer.as_str(), &spec.job, &lease, &lease_key)
                                .await
                            else {
                                let _ = lease.release().await;
                                return;
                            };
                            match task {
                                Task::Copy(job, partition) => {
                                    worker.work_on(job, partition, lease, following).await;
                                }
                                Task::Verify(run, range) => {
                                    worker.verify_range(run, range, lease, following).await;
                                }
                            }
                            drop(slot);
                            finished.notify_one();
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

    async fn pending_tasks(&self) -> Result<Vec<Task>> {
        let mut pending = Vec::new();
        for record in state::active_jobs(self.store.as_ref(), &self.keyspace).await? {
            let job = record.spec.job.clone();
            if record.phase != JobPhase::Copying
                || self
                    .store
                    .get(&self.keyspace.job_paused(&job))
                    .await?
                    .is_some()
            {
                continue;
            }
            let record = Arc::new(record);
            let leased =
                state::keys_under(self.store.as_ref(), &self.keyspace.leases_prefix(&job)).await?;
            let prefix = self.keyspace.partitions_prefix(&job);
            for (key, bytes) in self.store.list(&prefix).await? {
                let partition: PartitionRecord = state::decode(&key, &bytes)?;
                let lease_key = self.keyspace.lease(&job, partition.partition);
                if partition.state == PartitionState::Pending
                    && !leased.contains(&lease_key)
                    && !backing_off(partition.retry_after_unix_ms)
                {
                    pending.push(Task::Copy(record.clone(), partition));
                }
            }
        }
        for run in state::verify_runs(self.store.as_ref(), &self.keyspace).await? {
            if state::is_paused(self.store.as_ref(), &self.keyspace, &run.spec.job).await? {
                continue;
            }
            let run = Arc::new(run);
            let job = &run.spec.job;
            let leased = state::keys_under(
                self.store.as_ref(),
                &self.keyspace.verify_leases_prefix(job),
            )
            .await?;
            let prefix = self.keyspace.verify_ranges_prefix(job);
            for (key, bytes) in self.store.list(&prefix).await? {
                let range: VerifyRange = state::decode(&key, &bytes)?;
                let lease_key = self.keyspace.verify_lease(job, range.range);
                if range.state == RangeState::Pending
                    && !leased.contains(&lease_key)
                    && !backing_off(range.retry_after_unix_ms)
                {
                    pending.push(Task::Verify(run.clone(), range));
                }
            }
        }
        Ok(pending)
    }

    /// Takes one of the customer's source session slots for the lease, if
    /// sessions are capped, and starts following the customer's limits.
    /// None: every slot is taken, the work waits for one.
    async fn admit(
        &self,
        customer: &str,
        job: &JobId,
        lease: &HeldLease,
        lease_key: &str,
    ) -> Option<Following> {
        let slot = match take_session_slot(
            &self.store,
            &self.keyspace,
            customer,
            lease,
            &self.config.id,
        )
        .await
        {
            Ok(Some(slot)) => slot,
            Ok(None) => {
                tracing::debug!(
                    customer,
                    "every source session slot of the customer is taken"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, customer, "cannot take a source session slot");
                return None;
            }
        };
        Some(follow(
            self.store.clone(),
            &self.keyspace,
            Place {
                customer,
                job,
                lease_key,
                lease: lease.lease_id(),
                owner: &self.config.id,
                slot,
            },
            self.spares.clone(),
            self.stopping.subscribe(),
        ))
    }

    /// The record at `key` now that its lease is ours (the listing it came
    /// from may be stale), if it is still `pending`; the listed one when
    /// the store cannot say.
    async fn still_pending<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        listed: T,
        pending: impl Fn(&T) -> bool,
    ) -> Option<T> {
        match state::load::<T>(self.store.as_ref(), key).await {
            Ok(Some(current)) => pending(&current).then_some(current),
            Ok(None) => Some(listed),
            Err(e @ Error::Corrupt { .. }) => {
                tracing::error!(error = %e, key, "unreadable work record");
                None
            }
            Err(_) => Some(listed),
        }
    }

    async fn work_on(
        &self,
        job: Arc<JobRecord>,
        partition: PartitionRecord,
        lease: HeldLease,
        following: Following,
    ) {
        let job_id = job.spec.job.clone();
        let partition_no = partition.partition;
        let progress_key = self.keyspace.partition(&job_id, partition_no);
        let Some(record) = self
            .still_pending(&progress_key, partition, |p: &PartitionRecord| {
                p.state == PartitionState::Pending
            })
            .await
        else {
            let _ = lease.release().await;
            return;
        };
        let span = tracing::info_span!("partition", job_id = %job_id, partition = partition_no, table = %record.table);
        self.finish_partition(&job, record, lease, &progress_key, following)
            .instrument(span)
            .await;
    }

    async fn finish_partition(
        &self,
        job: &JobRecord,
        mut record: PartitionRecord,
        lease: HeldLease,
        progress_key: &str,
        following: Following,
    ) {
        tracing::info!(worker = %self.config.id, "copying partition");
        let partition = format!("{} partition {}", record.table, record.partition);
        let audit = AuditLog::open(&job.spec).await;
        if let Ok(audit) = &audit {
            audit
                .note(vec![
                    AuditEvent::new(&self.config.id, "lease.taken", "ok").object(partition.clone()),
                ])
                .await;
        }
        let active = self.keyspace.active(&job.spec.job);
        let outcome = tokio::select! {
            outcome = self.copy(job, &mut record, &lease, progress_key, &following) => outcome,
            () = self.gone(&active) => {
                tracing::info!("job no longer copying: abandoning the partition");
                let _ = lease.release().await;
                return;
            }
        };
        match outcome {
            Ok(()) => {
                following.completed();
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
                let give_up = self.note_failure(
                    &e,
                    &mut record.attempts,
                    &mut record.error,
                    &mut record.retry_after_unix_ms,
                );
                if give_up {
                    record.state = PartitionState::Failed;
                }
                tracing::warn!(error = %e, attempts = record.attempts, give_up, "partition copy failed");
            }
        }
        let mut outcome = match record.state {
            PartitionState::Copied => AuditEvent::new(&self.config.id, "partition.copied", "ok")
                .object(format!(
                    "{partition}: {} chunk(s), {} rows",
                    record.chunks_applied, record.rows
                )),
            PartitionState::Failed => {
                AuditEvent::new(&self.config.id, "partition.copied", "failed")
            }
            _ => AuditEvent::new(&self.config.id, "lease.released", "handed back").object(format!(
                "{partition} after {} chunk(s)",
                record.chunks_applied
            )),
        };
        if let Some(error) = &record.error {
            outcome = outcome.reason(error.clone());
        }
        // Recorded before the partition's state is published: once the
        // coordinator sees it copied, the trail already says so.
        if let Ok(audit) = &audit {
            audit.note(vec![outcome]).await;
        }
        let written = match state::encode(&record) {
            Ok(bytes) => lease.put_fenced(progress_key, bytes).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot record partition outcome; the lease's next holder will redo it");
            if let Ok(audit) = &audit {
                let lost = AuditEvent::new(&self.config.id, "lease.lost", "fenced")
                    .object(partition)
                    .reason(e.to_string());
                audit.note(vec![lost]).await;
            }
        }
        if let Err(e) = lease.release().await {
            tracing::warn!(error = %e, "cannot release lease; it expires with its TTL");
        }
    }

    /// Counts a failed attempt at leased work and schedules its retry;
    /// returns whether to give up on it instead.
    fn note_failure(
        &self,
        error: &Error,
        attempts: &mut u32,
        last_error: &mut Option<String>,
        retry_after_unix_ms: &mut Option<u64>,
    ) -> bool {
        *attempts += 1;
        *last_error = Some(error.to_string());
        if !error.is_retryable() || *attempts >= self.config.max_attempts {
            *retry_after_unix_ms = None;
            return true;
        }
        let wait = state::backoff(*attempts, RETRY_BASE, RETRY_CAP, rand::random::<f64>());
        *retry_after_unix_ms = Some(state::now_unix_ms() + wait.as_millis() as u64);
        false
    }

    /// Resolves once `key` is gone: the job is no longer open for copying
    /// (cancelled, failed) or its verification run ended. Its work is then
    /// abandoned, which the ledger (or the run's end) makes safe.
    async fn gone(&self, key: &str) {
        loop {
            tokio::time::sleep(self.config.poll_interval * 4).await;
            if let Ok(None) = self.store.get(key).await {
                return;
            }
        }
    }

    async fn verify_range(
        &self,
        run: Arc<VerifyRun>,
        listed: VerifyRange,
        lease: HeldLease,
        following: Following,
    ) {
        let job = &run.spec.job;
        let progress_key = self.keyspace.verify_range(job, listed.range);
        let Some(mut range) = self
            .still_pending(&progress_key, listed, |r: &VerifyRange| {
                r.state == RangeState::Pending
            })
            .await
        else {
            let _ = lease.release().await;
            return;
        };
        let span = tracing::info_span!("verify_range", job_id = %job, range = range.range, table = %range.table);
        let open = self.keyspace.verifying(job);
        async {
            // The databases scan the range at their own speed; the customer's
            // budget is paid for the range's estimated size beforehand, so
            // verification keeps to the rate on average.
            let mut pacer = ReadPacer::new(following.share.clone());
            let compare = async {
                pacer.consume(range.estimated_bytes).await;
                crate::verify::compare(&run, &range, &self.keys).await
            };
            let mut hand_back = following.hand_back.clone();
            let compared = tokio::select! {
                compared = compare => compared,
                () = self.gone(&open) => {
                    tracing::info!("verification run ended: abandoning the range");
                    let _ = lease.release().await;
                    return;
                }
                () = async { let _ = hand_back.wait_for(|back| *back).await; } => {
                    tracing::info!("handing the range back");
                    let _ = lease.release().await;
                    return;
                }
            };
            match compared {
                Ok(finding) => {
                    following.completed();
                    range.state = RangeState::Compared;
                    range.source_rows = finding.source_rows;
                    range.target_rows = finding.target_rows;
                    range.matched = finding.content.matched;
                    range.error = None;
                    tracing::info!(rows = range.source_rows, matched = range.matched, "range compared");
                }
                Err(e) => {
                    let give_up = self.note_failure(
                        &e,
                        &mut range.attempts,
                        &mut range.error,
                        &mut range.retry_after_unix_ms,
                    );
                    if give_up {
                        range.state = RangeState::Failed;
                    }
                    tracing::warn!(error = %e, attempts = range.attempts, give_up, "range comparison failed");
                }
            }
            let written = match state::encode(&range) {
                Ok(bytes) => lease.put_fenced(&progress_key, bytes).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, "cannot record the range's outcome; the lease's next holder will redo it");
            }
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "cannot release lease; it expires with its TTL");
            }
        }
        .instrument(span)
        .await;
    }

    async fn copy(
        &self,
        job: &JobRecord,
        record: &mut PartitionRecord,
        lease: &HeldLease,
        progress_key: &str,
        following: &Following,
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
                stop: following.hand_back.clone(),
                pacer: ReadPacer::new(following.share.clone()),
            },
            record,
        )
        .await?;
        Ok(())
    }
}

fn backing_off(retry_after_unix_ms: Option<u64>) -> bool {
    retry_after_unix_ms.is_some_and(|at| at > state::now_unix_ms())
}
