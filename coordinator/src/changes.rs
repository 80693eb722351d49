//! Change streaming and cutover as the coordinator orchestrates them: the
//! job's stream is published as leased work (a worker reads the slot and
//! applies the changes, see the worker's `stream` module), its progress is
//! mirrored into the job's record, and the cutover is run from here: the
//! source's tables frozen, the stream asked through the keyspace to drain
//! up to the frozen position and hold, sequences synced, a final
//! verification spread over the workers, then the freeze kept (the stream
//! is told to stop) or released (the stream goes on).
//!
//! Never reads the slot and never applies a change.

use std::time::{Duration, Instant};

use godwit_common::ids::JobId;
use godwit_common::job::{ChangeProgress, CutoverRecord, JobRecord, Phase};
use godwit_common::lease::Wakeups;
use godwit_common::pg::changed_keys::{self, Touch};
use godwit_common::pg::pgoutput::{format_lsn, parse_lsn};
use godwit_common::pg::snapshot::{self, slot_name};
use godwit_common::pg::{self, Side, apply, catalog, replica, stream};
use godwit_common::requests::{self, CutoverAnswer, Inbox, Incoming, Pending};
use godwit_common::sealed::SealedStaging;
use godwit_common::spec::{JobSpec, TableName};
use godwit_common::state::{self, now_unix_ms};
use godwit_common::verify::Options;
use godwit_common::verify::{self, Report};
use godwit_common::work::{self, StreamItem, WorkItem, WorkState};
use godwit_common::{Error, Result};

use crate::error::JobError;
use crate::freeze::Freezer;
use crate::mapped::StreamLanding;
use crate::phases::Phases;
use crate::verification::{Verified, Verifier};

/// How long the cutover waits for the stream to come within
/// `changes.max_cutover_lag` of the source before it gives up.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(300);
/// How long the cutover waits for a worker to hold the stream.
const TAKE_PATIENCE: Duration = Duration::from_secs(30);
/// How long a frozen source waits for the stream to drain.
const DRAIN_PATIENCE: Duration = Duration::from_secs(60);
/// How long the stream has to end once told the cutover succeeded.
const STOP_PATIENCE: Duration = Duration::from_secs(60);
/// How long the slot's drop waits for the worker that reads it.
const SLOT_DROP_LIMIT: Duration = Duration::from_secs(10);
const MIRROR_FALLBACK: Duration = Duration::from_secs(1);
/// How often a streaming job's history (its lag so far) is staged for the
/// debrief.
const HISTORY_EVERY: Duration = Duration::from_secs(30);
/// How recently a narrowing round's pin had the stream caught up for the
/// freeze to follow without waiting for a progress report.
const RECENTLY_CAUGHT_UP: Duration = Duration::from_secs(1);
/// Who the leader's requests to the stream name.
const REQUESTER: &str = "the leading coordinator";

/// Drops the job's replication slot (ending the session of a worker that
/// still reads it) and its publication on the source.
pub(crate) async fn release_source(spec: &JobSpec, slot: &str) -> Result<()> {
    snapshot::drop_slot_now(&spec.source, slot, SLOT_DROP_LIMIT).await?;
    drop_publication(spec).await
}

/// Drops the job's publication on the source, once its stream has ended.
pub(crate) async fn drop_publication(spec: &JobSpec) -> Result<()> {
    let source = pg::connect(&spec.source, Side::Source).await?;
    stream::drop_publication(&source, &stream::publication_name(&slot_name(&spec.job))).await
}

/// Puts back the target's triggers and foreign keys the job's stream
/// changed, and validates the keys put back unchecked (a cutover puts them
/// back while the source is frozen, where checking every row would not fit).
pub(crate) async fn leave_replica_mode(spec: &JobSpec) -> Result<()> {
    let mut target = pg::connect(&spec.target, Side::Target).await?;
    replica::leave(&mut target, spec.job.as_str()).await?;
    let validated = replica::validate_restored(&target, spec.job.as_str()).await?;
    if validated > 0 {
        tracing::info!(job_id = %spec.job, keys = validated, "validated the target's foreign keys put back after the stream");
    }
    Ok(())
}

/// Whether the job's slot is still on the source: a stream taken over
/// can go on only from it.
pub(crate) async fn slot_exists(spec: &JobSpec, slot: &str) -> Result<bool> {
    let source = pg::connect(&spec.source, Side::Source).await?;
    Ok(stream::slot_position(&source, slot).await?.is_some())
}

impl Phases<'_> {
    /// The job's streaming phase: publishes its stream (once), follows it
    /// and serves the cutover, until a cutover succeeds (Ok) or the stream
    /// fails or the job is cancelled.
    pub(crate) async fn stream(&self, record: &mut JobRecord) -> Result<CutoverRecord, JobError> {
        let job = record.spec.job.clone();
        let start = match record.current() {
            Phase::Streaming { from_lsn } | Phase::CuttingOver { from_lsn } => from_lsn.clone(),
            other => {
                return Err(JobError::Failed(Error::Internal(format!(
                    "job {job} streams from phase {other:?}"
                ))));
            }
        };
        let start = parse_lsn(&start).ok_or_else(|| {
            JobError::Failed(Error::Internal(format!(
                "the stream's start {start:?} is not an LSN"
            )))
        })?;
        // The workers' change batches hang under this run of the stream.
        crate::timeline::begin(record, "streaming");
        if record.changes.is_none() {
            record.changes = Some(ChangeProgress {
                applied_lsn: format_lsn(start),
                updated_at_unix_ms: now_unix_ms(),
                ..ChangeProgress::default()
            });
        }
        self.put_record(record).await.map_err(JobError::Failed)?;
        let item_key = self
            .keyspace
            .work_item(&job, StreamItem::KIND, StreamItem::NUMBER);
        if state::load::<StreamItem>(self.store.as_ref(), &item_key)
            .await
            .map_err(JobError::Failed)?
            .is_none()
        {
            let tables: Vec<TableName> = record.tables.iter().map(|t| t.name.clone()).collect();
            let landing = StreamLanding::of(&record.spec, &tables)
                .await
                .map_err(JobError::Failed)?;
            let item = StreamItem {
                mapped: landing.mapped,
                ..StreamItem::pending(job.clone(), landing.created, start)
            };
            work::publish(self.store.as_ref(), self.keyspace, &job, &[item])
                .await
                .map_err(JobError::Failed)?;
            tracing::info!(job_id = %job, from = %format_lsn(start), "change stream published for the workers");
        }
        // Open for leasing again: the workers take the stream from here.
        self.store
            .put(&self.keyspace.active(&job), Vec::new())
            .await
            .map_err(JobError::Failed)?;
        let inbox = Inbox::open(self.store.clone(), self.keyspace.clone(), job.clone()).await;
        let mut served = std::collections::HashSet::new();
        let mut wakeups = Wakeups::open(
            self.store.clone(),
            &self.keyspace.job_prefix(&job),
            MIRROR_FALLBACK,
        )
        .await;
        let history_staging = crate::staged::history_staging(&record.spec).await;
        let mut history_staged: Option<Instant> = None;
        loop {
            if self.cancel_requested(&job).await.unwrap_or(false) {
                return Err(JobError::Cancelled(job.to_string()));
            }
            // A debrief asked for while the job streams shows the lag so far.
            if history_staged.is_none_or(|at| at.elapsed() >= HISTORY_EVERY) {
                crate::staged::stage_history(history_staging.as_ref(), record).await;
                history_staged = Some(Instant::now());
            }
            match state::load::<StreamItem>(self.store.as_ref(), &item_key).await {
                Ok(Some(item)) => self.mirror(record, &item).await?,
                Ok(None) => {
                    return Err(JobError::Failed(Error::Internal(format!(
                        "the change stream of job {job} is gone from the keyspace"
                    ))));
                }
                Err(e) => {
                    tracing::warn!(job_id = %job, error = %e, "cannot read the stream's progress")
                }
            }
            let asked = inbox.open_requests().await.unwrap_or_default();
            // A request served already may still be open (its requester
            // reading the answer), its answer even gone already: it is
            // known by its id, never served twice.
            let cutover = asked.iter().find_map(|r| match r {
                Incoming::Cutover(id) if !served.contains(id) => Some(id.clone()),
                _ => None,
            });
            if let Some(id) = cutover
                && !inbox.answered("cutover").await.unwrap_or(true)
            {
                served.insert(id);
                let (cut, verified) = self.cutover(record).await?;
                crate::staged::stage_history(history_staging.as_ref(), record).await;
                let answer = cutover_answer(cut.clone(), verified);
                if let Err(e) = inbox.answer("cutover", &answer).await {
                    tracing::warn!(job_id = %job, error = %e, "cannot answer the cutover request; its outcome is in the job's record");
                }
                if cut.succeeded {
                    return Ok(cut);
                }
            }
            wakeups.wait().await;
        }
    }

    /// Copies the stream's progress into the job's record; a stream that
    /// failed for good fails the job, saying why.
    async fn mirror(&self, record: &mut JobRecord, item: &StreamItem) -> Result<(), JobError> {
        if item.state == WorkState::Failed {
            return Err(JobError::Failed(Error::Exhausted(format!(
                "{} failed after {} attempt(s): {}",
                item.describe(),
                item.attempts.attempts,
                item.attempts
                    .error
                    .as_deref()
                    .unwrap_or("no error recorded")
            ))));
        }
        let Some(current) = record.changes.as_ref() else {
            return Ok(());
        };
        let mut progress = item.progress.clone();
        if progress.updated_at_unix_ms == 0 {
            return Ok(());
        }
        progress.last_cutover = current.last_cutover.clone();
        let error = progress.error.clone();
        if Some(&progress) == record.changes.as_ref() && record.error == error {
            return Ok(());
        }
        record.history.lag(godwit_common::history::LagSample {
            at_unix_ms: progress.updated_at_unix_ms,
            lag_bytes: progress.lag_bytes,
            lag_ms: progress.lag_ms,
            rows: progress.rows,
        });
        record.changes = Some(progress);
        record.error = error;
        self.put_record(record).await.map_err(JobError::Failed)
    }

    /// One cutover attempt; the job is streaming again unless it succeeded.
    async fn cutover(
        &self,
        record: &mut JobRecord,
    ) -> Result<(CutoverRecord, Option<Verified>), JobError> {
        let job = record.spec.job.clone();
        let from_lsn = match record.current() {
            Phase::Streaming { from_lsn } | Phase::CuttingOver { from_lsn } => from_lsn.clone(),
            _ => String::new(),
        };
        let mut cut = CutoverRecord {
            started_at_unix_ms: now_unix_ms(),
            ..CutoverRecord::default()
        };
        let mut verified = None;
        record
            .advance(Phase::CuttingOver {
                from_lsn: from_lsn.clone(),
            })
            .map_err(JobError::Failed)?;
        self.put_record(record).await.map_err(JobError::Failed)?;
        tracing::info!(job_id = %job, "cutover: started");
        let tables: Vec<TableName> = record.tables.iter().map(|t| t.name.clone()).collect();
        let cutting = async {
            let landing = StreamLanding::of(&record.spec, &tables).await?;
            self.cut(&record.spec, &landing, &mut cut, &mut verified)
                .await
        };
        match cutting.await {
            Ok(()) => {
                cut.succeeded = true;
                tracing::info!(job_id = %job, frozen_ms = cut.frozen_ms, drain_ms = cut.drain_ms, verify_ms = cut.verify_ms, "cutover: done; the source's tables now refuse writes");
            }
            Err(e) => {
                tracing::warn!(job_id = %job, error = %e, "cutover rolled back; the source was unfrozen and changes stream on");
                cut.error = Some(e.to_string());
                record
                    .advance(Phase::Streaming { from_lsn })
                    .map_err(JobError::Failed)?;
            }
        }
        crate::job_metrics::cut_over(job.as_str(), cut.frozen_ms, cut.succeeded);
        crate::timeline::cutover(record, &cut);
        if let Some(progress) = record.changes.as_mut() {
            progress.last_cutover = Some(cut.clone());
            if cut.succeeded {
                progress.lag_bytes = 0;
                progress.lag_ms = 0;
            }
        }
        self.put_record(record).await.map_err(JobError::Failed)?;
        Ok((cut, verified))
    }

    async fn cut(
        &self,
        spec: &JobSpec,
        landing: &StreamLanding,
        cut: &mut CutoverRecord,
        verified: &mut Option<Verified>,
    ) -> Result<()> {
        let job = &spec.job;
        // The source's own tables: what is frozen.
        let tables = landing.source_tables.as_slice();
        let stream_lease = self
            .keyspace
            .work_lease(job, StreamItem::KIND, StreamItem::NUMBER);
        let deadline = Instant::now() + TAKE_PATIENCE;
        let mut wakeups = Wakeups::open(self.store.clone(), &stream_lease, MIRROR_FALLBACK).await;
        while self.store.get(&stream_lease).await?.is_none() {
            if Instant::now() >= deadline {
                return Err(Error::Unreachable(format!(
                    "no worker has run the change stream of job {job} for {TAKE_PATIENCE:?}, so nothing \
                     would drain the last changes: start a worker, then cut over again"
                )));
            }
            wakeups.wait().await;
        }
        // Catch up first, so the frozen window holds only the last moments.
        let limits = spec.changes.clone().unwrap_or_default();
        self.await_caught_up(spec, cut.started_at_unix_ms, limits.max_cutover_lag.0)
            .await?;
        let started = Instant::now();
        let step_started = now_unix_ms();
        let mut narrowed_at = None;
        let baseline = match self.baseline(spec).await {
            // Its keys go to the sealed report, never into the error (which
            // the job record keeps in etcd).
            Ok(baseline) if !baseline.verified.report.matched => {
                let differing = differing_tables(&baseline.verified.report);
                *verified = Some(baseline.verified);
                Err(Error::Verification(format!(
                    "the verification before the freeze found differences ({differing}), so nothing \
                     was frozen and the source stays authoritative; the report names them (godwit \
                     report {job})"
                )))
            }
            // The first verification took a while the source wrote on:
            // what changed meanwhile is compared before the freeze too.
            Ok(mut baseline) => match self
                .narrow(
                    spec,
                    REQUESTER,
                    (baseline.lsn, &baseline.verified.report),
                    landing,
                    verified,
                )
                .await
            {
                Ok((lsn, pinned_at)) => {
                    baseline.lsn = lsn;
                    narrowed_at = pinned_at;
                    Ok(baseline)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        cut.baseline_verify_ms = started.elapsed().as_millis() as u64;
        cut.step("verify before the freeze", step_started);
        let baseline = baseline?;
        // Again: the verification took time while the source wrote on. A
        // narrowing round that just ended had the stream catch up for its
        // pin, and waiting for the next progress report would only let
        // more changes pile up for the frozen check.
        if narrowed_at.is_none_or(|at| at.elapsed() > RECENTLY_CAUGHT_UP) {
            let step_started = now_unix_ms();
            self.await_caught_up(spec, now_unix_ms(), limits.max_cutover_lag.0)
                .await?;
            cut.step("catch up", step_started);
        }
        let step_started = now_unix_ms();
        let freezer = Freezer::freeze(spec, tables, limits.freeze_timeout_ms).await?;
        cut.step("freeze", step_started);
        let frozen = Instant::now();
        let frozen_at = now_unix_ms();
        let mut drained: Option<Pending> = None;
        let step = std::sync::Mutex::new("draining the stream");
        let max_frozen = Duration::from_millis(limits.max_frozen_ms);
        let outcome = tokio::time::timeout(
            max_frozen,
            self.frozen_steps(spec, (landing, &baseline), cut, verified, &mut drained, &step),
        )
        .await
        .unwrap_or_else(|_| {
            let step = step.lock().map_or("a frozen step", |s| *s);
            Err(Error::Precondition(format!(
                "the source stayed frozen past changes.max_frozen_ms ({} ms) while {step}: rolled back \
                 so the application's writes go on; cut over at a quieter moment or raise \
                 changes.max_frozen_ms",
                limits.max_frozen_ms
            )))
        });
        let outcome = match outcome {
            Ok(()) => freezer.keep_frozen(spec, tables).await,
            Err(e) => {
                freezer.release().await;
                Err(e)
            }
        };
        cut.frozen_ms = frozen.elapsed().as_millis() as u64;
        cut.step("frozen", frozen_at);
        match outcome {
            Ok(()) => {
                self.stop_stream(job).await;
                if let Some(drained) = drained {
                    drained.end().await;
                }
                Ok(())
            }
            Err(e) => {
                // Ending the drain sends the stream back to streaming; one
                // cut short by the deadline is withdrawn all the same.
                match drained {
                    Some(drained) => drained.end().await,
                    None => {
                        if let Err(e) =
                            requests::withdraw(self.store, self.keyspace, job, "drain").await
                        {
                            tracing::warn!(job_id = %job, error = %e, "cannot withdraw the drain request; it ends with its lease");
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Drain, sequences, the check of what changed since the baseline:
    /// everything done while the source's tables are frozen.
    async fn frozen_steps(
        &self,
        spec: &JobSpec,
        (landing, baseline): (&StreamLanding, &Baseline),
        cut: &mut CutoverRecord,
        verified: &mut Option<Verified>,
        drained: &mut Option<Pending>,
        step: &std::sync::Mutex<&'static str>,
    ) -> Result<()> {
        let at = |now: &'static str| {
            if let Ok(mut step) = step.lock() {
                *step = now;
            }
        };
        let started = Instant::now();
        let step_started = now_unix_ms();
        let source = pg::connect(&spec.source, Side::Source).await?;
        let (insert, _) = stream::wal_positions(&source).await?;
        let (applied, request) = requests::drain(
            self.store,
            self.keyspace,
            &spec.job,
            REQUESTER,
            insert,
            DRAIN_PATIENCE,
        )
        .await?;
        *drained = Some(request);
        cut.step("drain", step_started);
        tracing::info!(job_id = %spec.job, applied = %format_lsn(applied), "cutover: the stream drained to the frozen source");
        at("syncing sequences");
        let step_started = now_unix_ms();
        let target = pg::connect(&spec.target, Side::Target).await?;
        let sequences =
            catalog::sequences(&source, &landing.source_tables, spec.all_tables()).await?;
        catalog::set_sequences(&target, &sequences).await?;
        for mapped in &landing.mapped {
            catalog::raise_sequences_past_values(&target, &mapped.target, &mapped.target_columns())
                .await?;
        }
        cut.drain_ms = started.elapsed().as_millis() as u64;
        cut.step("sequences", step_started);

        at("checking the rows changed since the verification");
        let started = Instant::now();
        let step_started = now_unix_ms();
        let touched = changed_keys::since(&target, spec.job.as_str(), baseline.lsn).await?;
        let tables = landing.compare_changed((&source, &target), &touched).await;
        cut.verify_ms = started.elapsed().as_millis() as u64;
        cut.step("check changed rows", step_started);
        let tables = tables.map_err(|e| Error::Verification(format!("final check: {e}")))?;
        cut.checked_keys = touched.keys() as u64;
        cut.whole_tables = touched
            .tables()
            .filter(|(_, t)| matches!(t, Touch::Whole))
            .count() as u64;
        *verified = Some(changed_rows_report(spec, &baseline.verified.report, tables).await);
        let differing = verified
            .as_ref()
            .map_or_else(String::new, |v| differing_tables(&v.report));
        if !differing.is_empty() {
            return Err(Error::Verification(format!(
                "the rows changed since the verification differ in {differing}, so the source stays \
                 authoritative; the report names them (godwit report {})",
                spec.job
            )));
        }
        Ok(())
    }

    /// The full verification the frozen check builds on: both sides pinned
    /// by the stream at one source transaction while writes go on. The
    /// caller refuses the cutover (nothing frozen yet) when it differs.
    async fn baseline(&self, spec: &JobSpec) -> Result<Baseline> {
        let job = spec.job.as_str();
        let (snapshots, pin) =
            requests::pin(self.store, self.keyspace, &spec.job, REQUESTER).await?;
        let verified = async {
            // The ledger as the pinned target sees it: every change up to
            // this position is in the verified rows, none after it.
            let target = pg::connect(&spec.target, Side::Target).await?;
            pg::join_snapshot(&target, &snapshots.target).await?;
            let lsn = apply::applied_lsn(&target, job).await?.ok_or_else(|| {
                Error::Internal(format!(
                    "the target ledger has no change position for job {job}"
                ))
            })?;
            drop(target);
            let verified = Verifier::new(self.store.clone(), self.keyspace.clone())
                .verify_pinned(spec, Options::default(), snapshots)
                .await
                .map_err(|e| Error::Verification(format!("verification before the freeze: {e}")))?;
            Ok::<_, Error>(Baseline { lsn, verified })
        }
        .await;
        pin.end().await;
        let baseline = verified?;
        if !baseline.verified.report.matched {
            return Ok(baseline);
        }
        // What it compared need not be compared again.
        match pg::connect(&spec.target, Side::Target).await {
            Ok(target) => {
                if let Err(e) = changed_keys::forget_through(&target, job, baseline.lsn).await {
                    tracing::warn!(job_id = %job, error = %e, "cannot prune the changed-key log");
                }
            }
            Err(e) => tracing::warn!(job_id = %job, error = %e, "cannot prune the changed-key log"),
        }
        Ok(baseline)
    }

    /// Waits until the stream is at most `max_lag` behind the source's WAL
    /// (as it reported after `since`); refuses once `CATCH_UP_PATIENCE`
    /// has passed without that.
    async fn await_caught_up(
        &self,
        spec: &JobSpec,
        since_unix_ms: u64,
        max_lag: u64,
    ) -> Result<()> {
        let job = &spec.job;
        let key = self
            .keyspace
            .work_item(job, StreamItem::KIND, StreamItem::NUMBER);
        let source = pg::connect(&spec.source, Side::Source).await?;
        let deadline = Instant::now() + CATCH_UP_PATIENCE;
        let mut wakeups = Wakeups::open(self.store.clone(), &key, MIRROR_FALLBACK).await;
        let mut lag = None;
        loop {
            if let Some(item) = state::load::<StreamItem>(self.store.as_ref(), &key).await?
                && item.progress.updated_at_unix_ms >= since_unix_ms
                && let Some(seen) = parse_lsn(&item.progress.caught_up_lsn)
            {
                let (insert, _) = stream::wal_positions(&source).await?;
                let behind = insert.saturating_sub(seen);
                if behind <= max_lag {
                    return Ok(());
                }
                lag = Some(behind);
            }
            if Instant::now() >= deadline {
                return Err(Error::Precondition(format!(
                    "the change stream of job {job} stayed {} behind the source for {CATCH_UP_PATIENCE:?}, \
                     more than changes.max_cutover_lag ({max_lag} bytes): the source writes faster than \
                     the stream applies; cut over at a quieter moment or raise changes.max_cutover_lag",
                    lag.map_or_else(|| "an unknown amount".to_owned(), |b| format!("{b} bytes"))
                )));
            }
            wakeups.wait().await;
        }
    }

    /// Tells the drained stream the cutover succeeded and waits (a bounded
    /// while) for its item to be done. The source already refuses writes:
    /// a stream slow to end delays only the job's cleanup.
    async fn stop_stream(&self, job: &JobId) {
        let stop = match requests::stop(self.store, self.keyspace, job, REQUESTER).await {
            Ok(stop) => stop,
            Err(e) => {
                tracing::warn!(job_id = %job, error = %e, "cannot tell the stream to stop");
                return;
            }
        };
        let done = tokio::time::timeout(
            STOP_PATIENCE,
            work::await_done::<StreamItem, _, _>(
                self.store.clone(),
                self.keyspace,
                job,
                1,
                || async { Ok(false) },
            ),
        )
        .await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::warn!(job_id = %job, "the change stream did not end within {STOP_PATIENCE:?} of the cutover; its slot is dropped regardless");
        }
        stop.end().await;
    }
}

/// The full verification a cutover's frozen check builds on.
struct Baseline {
    /// The target ledger's position in the verified snapshot.
    lsn: u64,
    verified: Verified,
}

/// What the requester of a cutover is told: never the report itself (it
/// names primary keys, which stay out of etcd), only where it is sealed.
fn cutover_answer(record: CutoverRecord, verified: Option<Verified>) -> CutoverAnswer {
    let (matched, stored_at) = match verified {
        Some(v) => (
            Some(v.report.matched),
            v.stored_at.map_err(|e| e.to_string()),
        ),
        None => (None, Ok(String::new())),
    };
    CutoverAnswer {
        record,
        matched,
        stored_at,
    }
}

/// The report of a check of changed rows: the tables it compared, with the
/// schema and foreign-key layers of the verification it builds on; stored
/// sealed in the job's staging (it names keys).
pub(crate) async fn changed_rows_report(
    spec: &JobSpec,
    base: &Report,
    tables: Vec<verify::TableReport>,
) -> Verified {
    let report = Report {
        job: spec.job.to_string(),
        verified_at_unix_ms: now_unix_ms(),
        matched: verify::all_matched(&base.schema, &tables, &base.foreign_keys),
        schema: base.schema.clone(),
        tables,
        foreign_keys: base.foreign_keys.clone(),
        large_objects: base.large_objects.clone(),
        sample: None,
        mapping: None,
    };
    let stored_at = match SealedStaging::open(spec).await {
        Ok(sealed) => {
            verify::store_report(sealed.staging(), sealed.key(), &spec.job, &report).await
        }
        Err(e) => Err(e),
    };
    Verified { report, stored_at }
}

/// The tables (and other layers) a report found different, by name only:
/// what an error may say, since errors are kept in the job record.
pub(crate) fn differing_tables(report: &Report) -> String {
    let mut names: Vec<&str> = report
        .tables
        .iter()
        .filter(|t| !(t.counts_match && t.content.matched))
        .map(|t| t.table.as_str())
        .collect();
    if !report.schema.matched {
        names.push("the schema");
    }
    if report.foreign_keys.iter().any(|fk| fk.orphans > 0) {
        names.push("foreign keys");
    }
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use godwit_common::verify::{ContentLayer, Report, SchemaLayer, TableReport};

    use super::*;

    #[test]
    fn a_cutover_answer_carries_no_key_of_the_customer_s_rows() {
        let secret_key = "(4711,'leak@example.com')";
        let report = Report {
            job: "j1".into(),
            verified_at_unix_ms: 0,
            matched: false,
            schema: SchemaLayer::default(),
            tables: vec![TableReport {
                table: "public.customers".into(),
                source_rows: 2,
                target_rows: Some(1),
                counts_match: false,
                ranges: 1,
                content: ContentLayer {
                    missing: vec![secret_key.into()],
                    ..ContentLayer::default()
                },
            }],
            foreign_keys: Vec::new(),
            large_objects: None,
            sample: None,
            mapping: None,
        };
        let answer = cutover_answer(
            CutoverRecord::default(),
            Some(Verified {
                report,
                stored_at: Ok("file:///staging/j1/reports/verification.gwc".into()),
            }),
        );
        let stored = String::from_utf8(state::encode(&answer).expect("encode")).expect("utf-8");
        assert!(!stored.contains("leak@example.com"), "{stored}");
        assert_eq!(answer.matched, Some(false));
    }
}
