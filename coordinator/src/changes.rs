//! Change streaming and cutover of a job. After the copy the job's slot is
//! read from where its snapshot was exported: each batch of committed source
//! transactions is sealed into staging and applied to the target together
//! with the ledger's position, and only then is the slot moved on.
//!
//! The stream also serves the two moments that need source and target
//! lined up: a verification while changes flow (the target is brought to
//! exactly the transactions a source snapshot sees, then a target snapshot
//! is exported) and the cutover (tables frozen, the last changes drained,
//! sequences synced, a final verification; the source is left refusing
//! writes on success and untouched on any failure).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_common::chunk::{self, ChunkId};
use godwit_common::ids::JobId;
use godwit_common::job::{ChangeProgress, CutoverRecord, JobRecord, Phase};
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::LeaseStore;
use godwit_common::pg::apply::{self, Applier, SourceTransaction};
use godwit_common::pg::pgoutput::{self, format_lsn};
use godwit_common::pg::snapshot::slot_name;
use godwit_common::pg::stream::{self, RawChange, SnapshotBounds};
use godwit_common::pg::{self, Side, catalog, replica};
use godwit_common::sealed::SealedStaging;
use godwit_common::spec::{JobSpec, TableName};
use godwit_common::state::{PinnedSnapshots, now_unix_ms};
use godwit_common::verify::Options;
use godwit_common::{Error, Result};
use tokio_postgres::Client;

use crate::error::JobError;
use crate::freeze::Freezer;
use crate::requests::{CutoverAnswer, Inbox, Incoming, PinAnswer};
use crate::verification::{Verified, Verifier};

/// About how many messages one read of the slot returns (whole transactions).
const BATCH_MESSAGES: i32 = 5_000;
const IDLE_POLL: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// Attempts at a batch the target refuses (a constraint, a missing row, a
/// column it lacks): the same batch fails the same way, so the stream
/// stops rather than pin the source's WAL while it retries for ever.
const MAX_REFUSED_ATTEMPTS: u32 = 5;
/// How long the stream may fail for reasons that can pass (a server away,
/// a network cut) before the job stops and frees the source's WAL.
const MAX_STALL: Duration = Duration::from_secs(15 * 60);
/// PostgreSQL stamps commits in microseconds since 2000-01-01.
const PG_EPOCH_UNIX_MS: i64 = 946_684_800_000;

/// A source and a target snapshot that hold the same data. The sessions
/// that exported them stay open as long as this lives.
pub struct Pinned {
    pub snapshots: PinnedSnapshots,
    _source: Client,
    _target: Client,
}

/// What a cutover attempt did.
pub struct CutoverOutcome {
    pub record: CutoverRecord,
    /// The final verification, when the attempt got that far.
    pub verified: Option<Verified>,
}

/// Where a stream left off, when it can go on: the target ledger holds its
/// position and the source still has its slot.
pub(crate) async fn resumable(spec: &JobSpec, slot: &str) -> Result<Option<u64>> {
    let source = pg::connect(&spec.source, Side::Source).await?;
    if stream::slot_position(&source, slot).await?.is_none() {
        return Ok(None);
    }
    let target = pg::connect(&spec.target, Side::Target).await?;
    apply::applied_lsn(&target, spec.job.as_str()).await
}

/// Drops the job's replication slot and publication on the source.
pub(crate) async fn release_source(spec: &JobSpec, slot: &str) -> Result<()> {
    godwit_common::pg::snapshot::drop_slot(&spec.source, slot).await?;
    drop_publication(spec).await
}

/// Drops the job's publication on the source, once its stream has ended.
pub(crate) async fn drop_publication(spec: &JobSpec) -> Result<()> {
    let source = pg::connect(&spec.source, Side::Source).await?;
    stream::drop_publication(&source, &stream::publication_name(&slot_name(&spec.job))).await
}

/// Puts back the target's triggers and foreign keys the job's stream changed.
pub(crate) async fn leave_replica_mode(spec: &JobSpec) -> Result<()> {
    let mut target = pg::connect(&spec.target, Side::Target).await?;
    replica::leave(&mut target, spec.job.as_str())
        .await
        .map(|_| ())
}

/// What one read of the slot did.
#[derive(Debug, Default)]
struct Polled {
    transactions: u64,
    rows: u64,
    /// More changes were waiting than one read returns.
    truncated: bool,
    /// Stopped at a transaction the pinning snapshot does not see.
    stopped: bool,
    /// Source commit time of the last transaction applied, Unix ms.
    last_commit_unix_ms: Option<u64>,
}

/// What a stream needs besides its position.
pub struct StreamSetup {
    pub records: crate::leadership::JobRecords,
    pub store: Arc<dyn LeaseStore>,
    pub keyspace: Keyspace,
    pub spec: JobSpec,
    pub tables: Vec<TableName>,
    pub slot: String,
    pub sealed: SealedStaging,
}

pub struct Streamer {
    records: crate::leadership::JobRecords,
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    spec: JobSpec,
    tables: Vec<TableName>,
    slot: String,
    publication: String,
    sealed: SealedStaging,
    source: Client,
    target: Client,
    applier: Applier,
    /// Where this run of the stream began applying.
    from_lsn: String,
    /// Set when the job's record turned out to be another coordinator's.
    disowned: Option<Error>,
    /// End of the last source transaction the target committed.
    applied: u64,
    /// Where the slot was last moved to.
    advanced: u64,
    /// Transactions the last read applied: a pinning snapshot must see them.
    recent: Vec<u32>,
}

impl Streamer {
    /// Starts the stream of a job whose copy was taken at `start` (the
    /// slot's consistent point): the ledger begins there.
    pub async fn start(setup: StreamSetup, start: u64) -> Result<Self> {
        let streamer = Self::open(setup, start).await?;
        apply::start_ledger(&streamer.target, streamer.spec.job.as_str(), start).await?;
        Ok(streamer)
    }

    /// Goes on with the stream of a job taken over, from the ledger's
    /// position `applied`.
    pub async fn resume(setup: StreamSetup, applied: u64) -> Result<Self> {
        let mut streamer = Self::open(setup, applied).await?;
        // The slot may already be past the ledger (moved on while idle): it
        // cannot be moved back.
        if let Some((confirmed, _)) =
            stream::slot_position(&streamer.source, &streamer.slot).await?
        {
            streamer.advanced = streamer.advanced.max(confirmed);
        }
        Ok(streamer)
    }

    async fn open(setup: StreamSetup, applied: u64) -> Result<Self> {
        let source = pg::connect(&setup.spec.source, Side::Source).await?;
        let mut target = pg::connect(&setup.spec.target, Side::Target).await?;
        let changed = replica::enter(&mut target, setup.spec.job.as_str(), &setup.tables).await?;
        tracing::info!(job_id = %setup.spec.job, objects = changed, "target in replica mode while changes are applied: its triggers quiet, its foreign keys checked at commit");
        Ok(Self {
            publication: stream::publication_name(&setup.slot),
            records: setup.records,
            store: setup.store,
            keyspace: setup.keyspace,
            spec: setup.spec,
            tables: setup.tables,
            slot: setup.slot,
            sealed: setup.sealed,
            source,
            target,
            applier: Applier::new(),
            from_lsn: format_lsn(applied),
            disowned: None,
            applied,
            advanced: applied,
            recent: Vec::new(),
        })
    }

    /// Streams until a cutover succeeds (Ok) or the job is cancelled.
    pub async fn run(mut self, record: &mut JobRecord) -> Result<CutoverRecord, JobError> {
        let job = self.spec.job.clone();
        let mut inbox = Inbox::open(self.store.clone(), self.keyspace.clone(), job.clone()).await;
        // Pins held for verifications in progress, by request.
        let mut pins: HashMap<String, Pinned> = HashMap::new();
        // A job taken over while streaming is streaming already.
        if record.phase() != godwit_common::job::JobPhase::Streaming {
            record
                .advance(Phase::Streaming {
                    from_lsn: self.from_lsn.clone(),
                })
                .map_err(JobError::Failed)?;
        }
        let mut progress = ChangeProgress {
            applied_lsn: format_lsn(self.applied),
            updated_at_unix_ms: now_unix_ms(),
            ..ChangeProgress::default()
        };
        record.changes = Some(progress.clone());
        self.put_record(record).await;
        tracing::info!(job_id = %job, slot = %self.slot, from = %format_lsn(self.applied), "streaming changes");

        let mut wait = Duration::ZERO;
        let mut failures = 0u32;
        let mut failing_since: Option<Instant> = None;
        let mut last_put = Instant::now();
        loop {
            let asked = tokio::select! {
                biased;
                () = inbox.changed() => true,
                _ = tokio::time::sleep(wait) => false,
            };
            if asked
                && let Some(cut) = self
                    .serve(&mut inbox, &mut pins, record, &mut progress)
                    .await
            {
                return Ok(cut);
            }
            if let Some(e) = self.disowned.take() {
                return Err(JobError::Failed(e));
            }
            if self.cancel_requested(&job).await {
                return Err(JobError::Cancelled(job.to_string()));
            }
            let flush = match stream::wal_positions(&self.source).await {
                Ok((_, flush)) => Ok(flush),
                Err(e) => Err(e),
            };
            let polled = match flush {
                Ok(flush) => self.poll(None, flush).await,
                Err(e) => Err(e),
            };
            match polled {
                Ok(polled) => {
                    failures = 0;
                    failing_since = None;
                    record.error = None;
                    wait = if polled.truncated {
                        Duration::ZERO
                    } else {
                        IDLE_POLL
                    };
                    self.account(&mut progress, &polled).await;
                }
                Err(e) => {
                    failures += 1;
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let refused = !e.is_retryable() && failures >= MAX_REFUSED_ATTEMPTS;
                    if refused || since.elapsed() >= MAX_STALL {
                        return Err(JobError::Failed(Error::Exhausted(format!(
                            "the change stream stopped after {failures} failed attempts over {:.0?}: {e}; \
                             the job's replication slot is dropped so the source keeps no WAL for it. Fix \
                             the cause, then migrate again into an empty target: the target misses the \
                             changes from {} on",
                            since.elapsed(),
                            format_lsn(self.applied)
                        ))));
                    }
                    wait = (Duration::from_millis(250) * 2u32.saturating_pow(failures.min(8)))
                        .min(MAX_BACKOFF);
                    tracing::warn!(job_id = %job, error = %e, retry_in = ?wait, "change stream interrupted");
                    record.error = Some(format!("change stream interrupted, retrying: {e}"));
                    self.reconnect().await;
                }
            }
            if last_put.elapsed() >= Duration::from_millis(500) || record.error.is_some() {
                if let Ok(Some(retained)) = stream::retained_wal(&self.source, &self.slot).await {
                    progress.retained_wal_bytes = retained;
                }
                record.changes = Some(progress.clone());
                self.put_record(record).await;
                last_put = Instant::now();
            }
        }
    }

    /// Answers the requests open for the job: pins for verifications (let
    /// go once their request is), and a cutover. Returns the cutover that
    /// succeeded, which ends the stream.
    async fn serve(
        &mut self,
        inbox: &mut Inbox,
        pins: &mut HashMap<String, Pinned>,
        record: &mut JobRecord,
        progress: &mut ChangeProgress,
    ) -> Option<CutoverRecord> {
        let job = self.spec.job.clone();
        let open = match inbox.open_requests().await {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(job_id = %job, error = %e, "cannot read the stream's requests");
                return None;
            }
        };
        pins.retain(|name, _| open.contains(&Incoming::Pin(name.clone())));
        for request in open {
            let name = match &request {
                Incoming::Pin(name) => name.clone(),
                Incoming::Cutover => "cutover".to_owned(),
            };
            if pins.contains_key(&name) || inbox.answered(&name).await.unwrap_or(true) {
                continue;
            }
            let answered = match request {
                Incoming::Pin(_) => {
                    let answer = match self.pin().await {
                        Ok(pinned) => {
                            let answer = PinAnswer::Pinned(pinned.snapshots.clone());
                            pins.insert(name.clone(), pinned);
                            answer
                        }
                        Err(e) => {
                            tracing::warn!(job_id = %job, error = %e, "cannot pin snapshots for a verification");
                            PinAnswer::Refused(e.to_string())
                        }
                    };
                    inbox.answer(&name, &answer).await
                }
                Incoming::Cutover => {
                    let outcome = self.cutover(record, progress).await;
                    let cut = outcome.record.clone();
                    let answered = inbox
                        .answer(&name, &CutoverAnswer::new(outcome.record, outcome.verified))
                        .await;
                    if let Err(e) = &answered {
                        tracing::warn!(job_id = %job, error = %e, "cannot answer the cutover request; its outcome is in the job's record");
                    }
                    if cut.succeeded {
                        return Some(cut);
                    }
                    answered
                }
            };
            if let Err(e) = answered {
                tracing::warn!(job_id = %job, error = %e, "cannot answer a request to the stream");
            }
        }
        None
    }

    /// Updates what operators see after a read of the slot.
    async fn account(&self, progress: &mut ChangeProgress, polled: &Polled) {
        progress.transactions += polled.transactions;
        progress.rows += polled.rows;
        progress.applied_lsn = format_lsn(self.applied);
        let now = now_unix_ms();
        progress.updated_at_unix_ms = now;
        if polled.truncated {
            if let Ok((insert, _)) = stream::wal_positions(&self.source).await {
                progress.lag_bytes = insert.saturating_sub(self.applied);
            }
        } else {
            progress.lag_bytes = 0;
        }
        progress.lag_ms = match polled.last_commit_unix_ms {
            Some(committed) if polled.truncated || polled.transactions > 0 => {
                now.saturating_sub(committed)
            }
            _ => 0,
        };
    }

    async fn reconnect(&mut self) {
        if let Ok(source) = pg::connect(&self.spec.source, Side::Source).await {
            self.source = source;
        }
        if let Ok(target) = pg::connect(&self.spec.target, Side::Target).await {
            self.target = target;
            // Prepared statements died with the old session.
            self.applier = Applier::new();
        }
        if let Ok(Some(lsn)) = apply::applied_lsn(&self.target, self.spec.job.as_str()).await {
            self.applied = lsn;
        }
    }

    /// Reads the slot up to `upto`, applies what the target lacks (only the
    /// transactions `visible` sees, stopping at the first it does not) and
    /// moves the slot past what is now committed on the target.
    async fn poll(&mut self, visible: Option<&SnapshotBounds>, upto: u64) -> Result<Polled> {
        let raw = stream::peek(
            &self.source,
            &self.slot,
            &self.publication,
            upto,
            BATCH_MESSAGES,
        )
        .await?;
        let truncated = raw.len() >= BATCH_MESSAGES as usize;
        let messages = raw
            .iter()
            .map(|change| pgoutput::decode(&change.data))
            .collect::<Result<Vec<_>>>()?;
        let mut polled = Polled {
            truncated,
            ..Polled::default()
        };
        // Relations are described once per read, possibly inside a
        // transaction applied before: carried over to the next one applied.
        let mut relations = Vec::new();
        let mut pending: Vec<SourceTransaction> = Vec::new();
        for mut tx in apply::transactions(messages)? {
            if tx.end_lsn <= self.applied {
                relations.extend(
                    tx.changes
                        .into_iter()
                        .filter(|m| matches!(m, pgoutput::Message::Relation(_))),
                );
                continue;
            }
            if let Some(bounds) = visible
                && !bounds.sees(tx.xid)
            {
                polled.stopped = true;
                break;
            }
            if !relations.is_empty() {
                tx.changes.splice(0..0, relations.drain(..));
            }
            pending.push(tx);
        }
        if let Some(last) = pending.last() {
            self.stage(&raw, last.end_lsn).await?;
            polled.rows = self
                .applier
                .apply(
                    &mut self.target,
                    &self.source,
                    self.spec.job.as_str(),
                    &pending,
                )
                .await?;
            self.applied = last.end_lsn;
            polled.transactions = pending.len() as u64;
            polled.last_commit_unix_ms =
                Some(((last.commit_time_us / 1000) + PG_EPOCH_UNIX_MS).max(0) as u64);
            self.recent = pending.iter().map(|tx| tx.xid).collect();
        }
        let complete = !polled.truncated && !polled.stopped;
        let confirm = if complete {
            self.applied.max(upto)
        } else {
            self.applied
        };
        if confirm > self.advanced {
            stream::advance(&self.source, &self.slot, confirm).await?;
            self.advanced = confirm;
        }
        Ok(polled)
    }

    /// Seals the batch as read from the slot into staging, so the changes
    /// applied can be accounted for later; never in plain text.
    async fn stage(&self, raw: &[RawChange], end_lsn: u64) -> Result<()> {
        let mut payload = Vec::with_capacity(raw.iter().map(|c| c.data.len() + 12).sum());
        for change in raw {
            payload.extend_from_slice(&change.lsn.to_be_bytes());
            payload.extend_from_slice(&(change.data.len() as u32).to_be_bytes());
            payload.extend_from_slice(&change.data);
        }
        let id = ChunkId::change_batch(self.spec.job.as_str(), end_lsn);
        let frame = chunk::seal(&id, raw.len() as u64, &payload, self.sealed.key())?;
        let staging = self.sealed.staging();
        staging
            .put(&staging.change_path(&self.spec.job, end_lsn), frame)
            .await
    }

    /// Waits until the source has flushed its WAL up to `lsn`: decoding
    /// reads no further than the flush position. An idle source may not
    /// flush a partial page for a while, so a tiny committed transaction
    /// forces the flush; a source that still does not flush is an error,
    /// never an endless wait (the cutover holds the freeze meanwhile).
    async fn wait_flushed(&self, lsn: u64) -> Result<()> {
        let deadline = Instant::now() + FLUSH_DEADLINE;
        let mut nudged = false;
        loop {
            let (_, flush) = stream::wal_positions(&self.source).await?;
            if flush >= lsn {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unreachable(format!(
                    "the source did not flush its WAL to {} within {FLUSH_DEADLINE:?}",
                    format_lsn(lsn)
                )));
            }
            if !nudged {
                self.source
                    .batch_execute("BEGIN; SELECT pg_current_xact_id(); COMMIT")
                    .await
                    .map_err(|e| Error::postgres("cannot make the source flush its WAL", e))?;
                nudged = true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Applies everything up to `upto` (whole batches until none is left).
    async fn drain(&mut self, upto: u64, visible: Option<&SnapshotBounds>) -> Result<()> {
        self.wait_flushed(upto).await?;
        loop {
            let polled = self.poll(visible, upto).await?;
            if !polled.truncated || polled.stopped {
                return Ok(());
            }
        }
    }

    /// A source snapshot, and the target brought to exactly the source
    /// transactions it sees before a target snapshot is exported.
    async fn pin(&mut self) -> Result<Pinned> {
        loop {
            let (snapshot, exporter) = pg::export_snapshot(&self.spec.source, Side::Source).await?;
            // The transaction's snapshot, the one exported; the insert
            // position read after it is past every commit it sees.
            let row = exporter
                .query_one(
                    "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text",
                    &[],
                )
                .await
                .map_err(|e| Error::postgres("cannot read the source snapshot's bounds", e))?;
            let bounds_text: String = row.get(0);
            let bounds = SnapshotBounds::parse(&bounds_text).ok_or_else(|| {
                Error::Internal(format!("source returned snapshot {bounds_text:?}"))
            })?;
            // A transaction applied just now whose commit the snapshot does
            // not see yet (committed, not yet visible): the target is ahead
            // of this snapshot, so take another.
            if self.recent.iter().any(|xid| !bounds.sees(*xid)) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let insert_text: String = row.get(1);
            let insert = pgoutput::parse_lsn(&insert_text)
                .ok_or_else(|| Error::Internal(format!("source returned LSN {insert_text:?}")))?;
            self.drain(insert, Some(&bounds)).await?;
            let target = pg::export_snapshot(&self.spec.target, Side::Target).await?;
            return Ok(Pinned {
                snapshots: PinnedSnapshots {
                    source: snapshot,
                    target: target.0,
                },
                _source: exporter,
                _target: target.1,
            });
        }
    }

    /// One cutover attempt; the job is streaming again unless it succeeded.
    async fn cutover(
        &mut self,
        record: &mut JobRecord,
        progress: &mut ChangeProgress,
    ) -> CutoverOutcome {
        let job = self.spec.job.clone();
        let mut cut = CutoverRecord {
            started_at_unix_ms: now_unix_ms(),
            ..CutoverRecord::default()
        };
        let mut verified = None;
        let from_lsn = self.from_lsn.clone();
        if let Err(e) = record.advance(Phase::CuttingOver {
            from_lsn: from_lsn.clone(),
        }) {
            cut.error = Some(e.to_string());
            return CutoverOutcome {
                record: cut,
                verified,
            };
        }
        self.put_record(record).await;
        tracing::info!(job_id = %job, "cutover: started");
        let result = self.cut(&mut cut, &mut verified).await;
        match result {
            Ok(()) => {
                cut.succeeded = true;
                tracing::info!(job_id = %job, frozen_ms = cut.frozen_ms, drain_ms = cut.drain_ms, verify_ms = cut.verify_ms, "cutover: done; the source's tables now refuse writes");
            }
            Err(e) => {
                tracing::warn!(job_id = %job, error = %e, "cutover rolled back; the source was unfrozen and changes stream on");
                cut.error = Some(e.to_string());
                if let Err(e) = record.advance(Phase::Streaming { from_lsn }) {
                    tracing::error!(job_id = %job, error = %e, "cannot return to streaming");
                }
            }
        }
        progress.applied_lsn = format_lsn(self.applied);
        progress.lag_bytes = 0;
        progress.lag_ms = 0;
        progress.last_cutover = Some(cut.clone());
        record.changes = Some(progress.clone());
        self.put_record(record).await;
        CutoverOutcome {
            record: cut,
            verified,
        }
    }

    async fn cut(
        &mut self,
        cut: &mut CutoverRecord,
        verified: &mut Option<Verified>,
    ) -> Result<()> {
        // Catch up first, so the frozen window holds only the last moments.
        loop {
            let (_, flush) = stream::wal_positions(&self.source).await?;
            if !self.poll(None, flush).await?.truncated {
                break;
            }
        }
        let timeout_ms = self
            .spec
            .changes
            .as_ref()
            .map_or(godwit_common::spec::DEFAULT_FREEZE_TIMEOUT_MS, |c| {
                c.freeze_timeout_ms
            });
        let freezer = Freezer::freeze(&self.spec, &self.tables, timeout_ms).await?;
        let frozen = Instant::now();
        let outcome = self.frozen_steps(cut, verified).await;
        let outcome = match outcome {
            Ok(()) => freezer.keep_frozen(&self.spec, &self.tables).await,
            Err(e) => {
                freezer.release().await;
                Err(e)
            }
        };
        cut.frozen_ms = frozen.elapsed().as_millis() as u64;
        if outcome.is_err() {
            // Streaming goes on: the target's objects go back to replica mode.
            let job = self.spec.job.as_str();
            if let Err(e) = replica::enter(&mut self.target, job, &self.tables).await {
                tracing::error!(job_id = %job, error = %e, "cannot put the target back in replica mode after a rolled-back cutover");
            }
        }
        outcome
    }

    /// Drain, sequences, final verification: everything done while the
    /// source's tables are frozen.
    async fn frozen_steps(
        &mut self,
        cut: &mut CutoverRecord,
        verified: &mut Option<Verified>,
    ) -> Result<()> {
        let started = Instant::now();
        let (insert, _) = stream::wal_positions(&self.source).await?;
        self.drain(insert, None).await?;
        // Nothing more is applied: the target's triggers and keys are the
        // source's again, and the final verification compares them so.
        replica::leave(&mut self.target, self.spec.job.as_str()).await?;
        let sequences =
            catalog::sequences(&self.source, &self.tables, self.spec.all_tables()).await?;
        catalog::set_sequences(&self.target, &sequences).await?;
        cut.drain_ms = started.elapsed().as_millis() as u64;

        let started = Instant::now();
        let source = pg::export_snapshot(&self.spec.source, Side::Source).await?;
        let target = pg::export_snapshot(&self.spec.target, Side::Target).await?;
        let result = Verifier::new(self.store.clone(), self.keyspace.clone())
            .verify_pinned(
                &self.spec,
                Options::default(),
                PinnedSnapshots {
                    source: source.0,
                    target: target.0,
                },
            )
            .await;
        drop((source.1, target.1));
        cut.verify_ms = started.elapsed().as_millis() as u64;
        let result = result.map_err(|e| Error::Verification(format!("final verification: {e}")))?;
        let matched = result.report.matched;
        let summary = result.report.summary();
        *verified = Some(result);
        if !matched {
            return Err(Error::Verification(format!(
                "the final verification found differences, so the source stays authoritative:\n{summary}"
            )));
        }
        Ok(())
    }

    async fn cancel_requested(&self, job: &JobId) -> bool {
        matches!(
            self.store.get(&self.keyspace.job_control(job)).await,
            Ok(Some(control)) if control == b"cancel"
        )
    }

    /// Records the stream's progress. A record that another coordinator
    /// now writes means the job is no longer this one's: the stream stops
    /// at its next turn (see `disowned`).
    async fn put_record(&mut self, record: &JobRecord) {
        match self.records.save(record).await {
            Ok(()) => {}
            Err(e @ (Error::Conflict(_) | Error::LeaseLost { .. })) => {
                tracing::warn!(job_id = %record.spec.job, error = %e, "the job is no longer this coordinator's: stopping its stream");
                self.disowned = Some(e);
            }
            Err(e) => {
                tracing::warn!(job_id = %record.spec.job, error = %e, "cannot record the change stream's progress");
            }
        }
    }
}
