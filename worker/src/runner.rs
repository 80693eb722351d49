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
use godwit_common::job::{JobPhase, JobRecord};
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::{Change, HeldLease, LeaseStore, LeaseTiming, Wakeups};
use godwit_common::state::{self, VerifyRun};
use godwit_common::telemetry::traces;
use godwit_common::work::{
    self, Claimed, PartitionRecord, RetryPolicy, Settled, StreamItem, VerifyRange, WorkItem,
};
use godwit_common::{Error, Result};
use opentelemetry::KeyValue;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::copy::{PartitionJob, copy_partition};
use crate::keys::KeyCache;
use crate::stream::{StreamContext, Streamer, is_stream_phase};
use crate::throttle::{Following, LimitsView, Place, ReadPacer, Spares, follow, take_session_slot};

/// Work open for the taking, as listed.
enum Open {
    Copy(Arc<JobRecord>, PartitionRecord),
    Verify(Arc<VerifyRun>, VerifyRange),
    Stream(Arc<JobRecord>, StreamItem),
}

/// Work whose lease this worker holds.
enum Task {
    Copy(Arc<JobRecord>, Claimed<PartitionRecord>),
    Verify(Arc<VerifyRun>, Claimed<VerifyRange>),
    Stream(Arc<JobRecord>, Claimed<StreamItem>),
}

impl Open {
    fn spec(&self) -> &godwit_common::spec::JobSpec {
        match self {
            Open::Copy(job, _) | Open::Stream(job, _) => &job.spec,
            Open::Verify(run, _) => &run.spec,
        }
    }
}

impl Task {
    fn spec(&self) -> &godwit_common::spec::JobSpec {
        match self {
            Task::Copy(job, _) | Task::Stream(job, _) => &job.spec,
            Task::Verify(run, _) => &run.spec,
        }
    }

    fn lease(&self) -> &HeldLease {
        match self {
            Task::Copy(_, claimed) => claimed.lease(),
            Task::Verify(_, claimed) => claimed.lease(),
            Task::Stream(_, claimed) => claimed.lease(),
        }
    }

    async fn release(self) {
        match self {
            Task::Copy(_, claimed) => claimed.release().await,
            Task::Verify(_, claimed) => claimed.release().await,
            Task::Stream(_, claimed) => claimed.release().await,
        }
    }
}

/// A stream's retries when it cannot even start (a server away): about
/// fifteen minutes of attempts before the job fails and frees the source.
const STREAM_RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(60),
    max_attempts: 20,
};

/// At most one look at the keyspace per this long, however busy it is
/// (every chunk of every partition writes progress): never more listing
/// than the fixed 250 ms poll this loop replaced, and far less when idle.
const MIN_LOOK_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    /// Partitions (or verification ranges) worked on at once by this
    /// worker, per customer.
    pub concurrency: usize,
    pub timing: LeaseTiming,
    /// Longest time between two looks for work when no change woke the
    /// worker (a lost watch, a backoff running out).
    pub poll_interval: Duration,
    pub retry: RetryPolicy,
    /// How long running partitions may take to finish after shutdown is asked.
    pub shutdown_grace: Duration,
}

impl WorkerConfig {
    pub fn new(id: String) -> Self {
        Self {
            id,
            concurrency: 2,
            timing: LeaseTiming::DEFAULT,
            poll_interval: Duration::from_secs(1),
            retry: RetryPolicy::DEFAULT,
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
    /// Customers' limits and paused jobs, as every lease here follows them.
    limits: LimitsView,
}

impl Worker {
    pub fn new(store: Arc<dyn LeaseStore>, keyspace: Keyspace, config: WorkerConfig) -> Arc<Self> {
        Arc::new(Self {
            limits: LimitsView::start(store.clone(), &keyspace),
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
        let mut wakeups = Wakeups::open(
            self.store.clone(),
            &self.keyspace.root_prefix(),
            self.config.poll_interval,
        )
        .await
        .only(|change| !is_throttle_bookkeeping(change));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = wakeups.wait() => {}
                () = finished.notified() => {}
            }
            while running.try_join_next().is_some() {}
            let candidates = match self.open_work().await {
                Ok(candidates) => candidates,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list pending work");
                    continue;
                }
            };
            for open in candidates {
                let pool = slots
                    .entry(open.spec().customer.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.config.concurrency)));
                let Ok(slot) = pool.clone().try_acquire_owned() else {
                    continue;
                };
                let task = match self.claim(open).await {
                    Ok(Some(task)) => task,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take lease");
                        continue;
                    }
                };
                let worker = self.clone();
                let finished = finished.clone();
                running.spawn(async move {
                    let spec = task.spec();
                    let lease_key = task.lease().key().to_owned();
                    let Some(following) = worker
                        .admit(spec.customer.as_str(), &spec.job, task.lease(), &lease_key)
                        .await
                    else {
                        task.release().await;
                        return;
                    };
                    match task {
                        Task::Copy(job, claimed) => worker.work_on(job, claimed, following).await,
                        Task::Verify(run, claimed) => {
                            worker.verify_range(run, claimed, following).await;
                        }
                        Task::Stream(job, claimed) => {
                            worker.run_stream(job, claimed, following).await;
                        }
                    }
                    drop(slot);
                    finished.notify_one();
                });
            }
            tokio::time::sleep(MIN_LOOK_INTERVAL).await;
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

    async fn open_work(&self) -> Result<Vec<Open>> {
        let store = self.store.as_ref();
        let mut open = Vec::new();
        for record in state::active_jobs(store, &self.keyspace).await? {
            let job = record.spec.job.clone();
            // A stream runs whether or not reading is paused: stopping it
            // would only make the source keep more WAL.
            if is_stream_phase(record.phase()) {
                let record = Arc::new(record);
                for item in work::pending::<StreamItem>(store, &self.keyspace, &job).await? {
                    open.push(Open::Stream(record.clone(), item));
                }
                continue;
            }
            if record.phase() != JobPhase::Copying
                || state::is_paused(store, &self.keyspace, &job).await?
            {
                continue;
            }
            let record = Arc::new(record);
            for partition in work::pending::<PartitionRecord>(store, &self.keyspace, &job).await? {
                open.push(Open::Copy(record.clone(), partition));
            }
        }
        for run in state::verify_runs(store, &self.keyspace).await? {
            if state::is_paused(store, &self.keyspace, &run.spec.job).await? {
                continue;
            }
            let run = Arc::new(run);
            for range in work::pending::<VerifyRange>(store, &self.keyspace, &run.spec.job).await? {
                open.push(Open::Verify(run.clone(), range));
            }
        }
        Ok(open)
    }

    async fn claim(&self, open: Open) -> Result<Option<Task>> {
        let (store, keyspace, owner, timing) = (
            self.store.clone(),
            &self.keyspace,
            self.config.id.as_str(),
            self.config.timing,
        );
        Ok(match open {
            Open::Copy(job, listed) => {
                work::claim(store, keyspace, &job.spec.job, listed, owner, timing)
                    .await?
                    .map(|claimed| Task::Copy(job, claimed))
            }
            Open::Verify(run, listed) => {
                work::claim(store, keyspace, &run.spec.job, listed, owner, timing)
                    .await?
                    .map(|claimed| Task::Verify(run, claimed))
            }
            Open::Stream(job, listed) => {
                work::claim(store, keyspace, &job.spec.job, listed, owner, timing)
                    .await?
                    .map(|claimed| Task::Stream(job, claimed))
            }
        })
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
            &self.limits,
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

    async fn work_on(
        &self,
        job: Arc<JobRecord>,
        claimed: Claimed<PartitionRecord>,
        following: Following,
    ) {
        let item = &claimed.item;
        let span = tracing::info_span!("partition", job_id = %job.spec.job, partition = item.partition, table = %item.table);
        self.finish_partition(&job, claimed, following)
            .instrument(span)
            .await;
    }

    async fn finish_partition(
        &self,
        job: &JobRecord,
        mut claimed: Claimed<PartitionRecord>,
        following: Following,
    ) {
        tracing::info!(worker = %self.config.id, "copying partition");
        let partition = claimed.item.describe();
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
            outcome = self.copy(job, &mut claimed, &following) => outcome,
            () = self.gone(&active) => {
                tracing::info!("job no longer copying: abandoning the partition");
                claimed.release().await;
                return;
            }
        };
        let settled = claimed.settle(&outcome, &self.config.retry);
        let record = &claimed.item;
        match (&outcome, settled) {
            (_, Settled::Done) => {
                following.completed();
                tracing::info!(
                    rows = record.rows,
                    bytes_read = record.bytes_read,
                    "partition copied"
                );
            }
            (_, Settled::HandedBack) => {
                tracing::info!(chunks = record.chunks_applied, "handing the partition back");
            }
            (Err(e), _) => {
                tracing::warn!(error = %e, attempts = record.attempts.attempts, give_up = settled == Settled::GaveUp, "partition copy failed");
            }
            (Ok(()), _) => {}
        }
        let mut event = match settled {
            Settled::Done => {
                AuditEvent::new(&self.config.id, "partition.copied", "ok").object(format!(
                    "{partition}: {} chunk(s), {} rows",
                    record.chunks_applied, record.rows
                ))
            }
            Settled::GaveUp => AuditEvent::new(&self.config.id, "partition.copied", "failed"),
            Settled::HandedBack | Settled::Retrying => {
                AuditEvent::new(&self.config.id, "lease.released", "handed back").object(format!(
                    "{partition} after {} chunk(s)",
                    record.chunks_applied
                ))
            }
        };
        if let Some(error) = &record.attempts.error {
            event = event.reason(error.clone());
        }
        // Recorded before the partition's state is published: once the
        // coordinator sees it copied, the trail already says so.
        if let Ok(audit) = &audit {
            audit.note(vec![event]).await;
        }
        if let Err(e) = claimed.finish().await {
            tracing::warn!(error = %e, "cannot record partition outcome; the lease's next holder will redo it");
            if let Ok(audit) = &audit {
                let lost = AuditEvent::new(&self.config.id, "lease.lost", "fenced")
                    .object(partition)
                    .reason(e.to_string());
                audit.note(vec![lost]).await;
            }
        }
    }

    /// Resolves once `key` is gone: the job is no longer open for copying
    /// (cancelled, failed) or its verification run ended. Its work is then
    /// abandoned, which the ledger (or the run's end) makes safe.
    async fn gone(&self, key: &str) {
        let mut wakeups = Wakeups::open(self.store.clone(), key, self.config.poll_interval).await;
        loop {
            if let Ok(None) = self.store.get(key).await {
                return;
            }
            wakeups.wait().await;
        }
    }

    async fn verify_range(
        &self,
        run: Arc<VerifyRun>,
        mut claimed: Claimed<VerifyRange>,
        following: Following,
    ) {
        let job = &run.spec.job;
        let span = tracing::info_span!("verify_range", job_id = %job, range = claimed.item.range, table = %claimed.item.table);
        let open = self.keyspace.verifying(job);
        async {
            // The databases scan the range at their own speed; the customer's
            // budget is paid for the range's estimated size beforehand, so
            // verification keeps to the rate on average.
            let mut pacer = ReadPacer::new(following.share.clone());
            let range = claimed.item.clone();
            let compare = async {
                pacer.consume(range.estimated_bytes).await;
                crate::verify::compare(&run, &range, &self.keys, following.session).await
            };
            let mut hand_back = following.hand_back.clone();
            let compared = tokio::select! {
                compared = compare => compared,
                () = self.gone(&open) => {
                    tracing::info!("verification run ended: abandoning the range");
                    claimed.release().await;
                    return;
                }
                () = async { let _ = hand_back.wait_for(|back| *back).await; } => {
                    tracing::info!("handing the range back");
                    claimed.release().await;
                    return;
                }
            };
            let outcome = compared.map(|finding| {
                let range = &mut claimed.item;
                range.source_rows = finding.source_rows;
                range.target_rows = finding.target_rows;
                range.matched = finding.content.matched;
            });
            let settled = claimed.settle(&outcome, &self.config.retry);
            let range = &claimed.item;
            match &outcome {
                Ok(()) => {
                    following.completed();
                    tracing::info!(rows = range.source_rows, matched = range.matched, "range compared");
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempts = range.attempts.attempts, give_up = settled == Settled::GaveUp, "range comparison failed");
                }
            }
            if let Err(e) = claimed.finish().await {
                tracing::warn!(error = %e, "cannot record the range's outcome; the lease's next holder will redo it");
            }
        }
        .instrument(span)
        .await;
    }

    /// Runs a job's change stream for as long as this worker holds it: until
    /// the cutover stops it, its retries run out, the job ends, its lease
    /// is lost or the worker shuts down (then the next holder goes on from
    /// the target ledger).
    async fn run_stream(
        &self,
        job: Arc<JobRecord>,
        mut claimed: Claimed<StreamItem>,
        following: Following,
    ) {
        let span = tracing::info_span!("stream", job_id = %job.spec.job);
        async {
            tracing::info!(worker = %self.config.id, "taking the change stream");
            let active = self.keyspace.active(&job.spec.job);
            let mut stopping = self.stopping.subscribe();
            let outcome = tokio::select! {
                outcome = self.stream(&job, &mut claimed, &following) => outcome,
                () = self.gone(&active) => {
                    tracing::info!("job ended: leaving its stream");
                    claimed.release().await;
                    return;
                }
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    tracing::info!("worker stopping: handing the stream back");
                    claimed.release().await;
                    return;
                }
            };
            if let Err(e @ Error::LeaseLost { .. }) = &outcome {
                tracing::warn!(error = %e, "lost the change stream to another worker");
                claimed.release().await;
                return;
            }
            let settled = claimed.settle(&outcome, &STREAM_RETRY);
            match &outcome {
                Ok(()) => following.completed(),
                Err(e) => {
                    tracing::warn!(error = %e, attempts = claimed.item.attempts.attempts, give_up = settled == Settled::GaveUp, "change stream stopped");
                }
            }
            if let Err(e) = claimed.finish().await {
                tracing::warn!(error = %e, "cannot record the stream's outcome; its next holder goes on");
            }
        }
        .instrument(span)
        .await;
    }

    async fn stream(
        &self,
        job: &JobRecord,
        claimed: &mut Claimed<StreamItem>,
        following: &Following,
    ) -> Result<()> {
        let context = StreamContext {
            store: self.store.clone(),
            keyspace: self.keyspace.clone(),
            spec: job.spec.clone(),
            sealed: self.keys.sealed(&job.spec).await?,
            session: following.session,
            pacer: ReadPacer::new(following.share.clone()),
            trace: job.phase_span("streaming").filter(|_| traces::exporting()),
        };
        let token = claimed.lease().lease_id().0;
        let item = claimed.item.clone();
        Streamer::open(context, &item, token)
            .await?
            .run(claimed)
            .await
    }

    async fn copy(
        &self,
        job: &JobRecord,
        claimed: &mut Claimed<PartitionRecord>,
        following: &Following,
    ) -> Result<()> {
        let (record, lease, progress_key) = claimed.parts();
        let snapshot = job
            .current()
            .snapshot()
            .map(|at| at.snapshot.as_str())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "job {} has no snapshot to read under",
                    job.spec.job
                ))
            })?;
        let table = job
            .tables
            .iter()
            // By partition: several source tables may land in one table.
            .find(|t| t.name == record.table && t.partitions.contains(&record.partition))
            .ok_or_else(|| {
                Error::Internal(format!(
                    "partition {} names unplanned table {}",
                    record.partition, record.table
                ))
            })?;
        let sealed = self.keys.sealed(&job.spec).await?;
        if record.started_unix_ms == 0 {
            record.started_unix_ms = godwit_common::state::now_unix_ms();
        }
        // This attempt's span, under its table's in the job's copy.
        let table_span = job
            .phase_span("copying")
            .filter(|_| traces::exporting())
            .map(|copying| {
                let first = table.partitions.first().copied().unwrap_or_default();
                traces::table(copying, &table.name.to_string(), first)
            });
        let span = table_span.map(|t| t.new_child());
        let started = std::time::SystemTime::now();
        let copied = copy_partition(
            PartitionJob {
                spec: &job.spec,
                snapshot,
                table,
                staging: sealed.staging(),
                key: sealed.shared_key(),
                lease,
                progress_key,
                session: following.session,
                stop: following.hand_back.clone(),
                pacer: ReadPacer::new(following.share.clone()),
                trace: span,
            },
            record,
        )
        .await;
        if copied.is_ok() {
            record.finished_unix_ms = godwit_common::state::now_unix_ms();
        }
        if let (Some(span), Some(parent)) = (span, table_span) {
            traces::emit(traces::Done {
                name: "partition",
                span,
                parent: Some(parent),
                start: started,
                end: std::time::SystemTime::now(),
                attributes: vec![
                    KeyValue::new("godwit.job", job.spec.job.to_string()),
                    KeyValue::new("godwit.table", table.name.to_string()),
                    KeyValue::new("godwit.partition", i64::from(record.partition)),
                    KeyValue::new("godwit.rows", record.rows as i64),
                    KeyValue::new("godwit.chunks", record.chunks_applied as i64),
                    KeyValue::new("godwit.worker", self.config.id.clone()),
                    KeyValue::new(
                        "godwit.outcome",
                        match &copied {
                            Ok(_) => "copied",
                            Err(Error::Cancelled) => "handed back",
                            Err(_) => "failed",
                        },
                    ),
                ],
                // Handing a partition back (a worker stopping, a job paused)
                // is no failure.
                error: copied
                    .as_ref()
                    .err()
                    .filter(|e| !matches!(e, Error::Cancelled))
                    .map(|e| e.to_string()),
            });
        }
        copied.map(|_| ())
    }
}

/// Allocation and limit updates change only how fast work runs, never
/// what is open for the taking: they do not wake the lease loop.
fn is_throttle_bookkeeping(change: &Change) -> bool {
    change.key().is_some_and(|key| {
        key.contains("/customers/") && (key.ends_with("/allocation") || key.ends_with("/limits"))
    })
}
