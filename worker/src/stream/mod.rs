//! A job's change stream, run by the worker that holds its lease: the slot
//! is read from the target ledger's position, each read sealed into
//! staging in bounded segments and applied with the ledger's position
//! under this holder's fencing token, and only then is the slot moved on.
//! A worker that is lost leaves the lease to run out; the next one goes on
//! from the ledger, so every change lands once.
//!
//! The stream also serves the requests that need it (see
//! `godwit_common::requests`): a pin for a verification while changes flow
//! (the target is brought to exactly the transactions a source snapshot
//! sees, then a target snapshot is exported), a drain for the cutover (apply
//! up to a position, put the target's triggers and keys back, hold) and a
//! stop once the cutover succeeded. It never freezes the source and never
//! verifies: the coordinator orchestrates the cutover.

mod metrics;
mod spill;

use godwit_common::telemetry::traces::{self, SpanRef};
use opentelemetry::KeyValue;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use godwit_common::job::ChangeProgress;
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::LeaseStore;
use godwit_common::pg::apply::{self, Applier, StreamMasks};
use godwit_common::pg::apply_run::ApplyRun;
use godwit_common::pg::pgoutput::{self, format_lsn};
use godwit_common::pg::replication::ReplicationStream;
use godwit_common::pg::snapshot::slot_name;
use godwit_common::pg::stream::{self, SnapshotBounds};
use godwit_common::pg::{self, SessionSlot, Side, ledger, replica};
use godwit_common::requests::{DrainAnswer, Inbox, Incoming, PinAnswer};
use godwit_common::sealed::SealedStaging;
use godwit_common::spec::{JobSpec, TableName};
use godwit_common::state::{self, PinnedSnapshots, now_unix_ms};
use godwit_common::work::{Claimed, StreamItem};
use godwit_common::{Error, Result};
use metrics::StreamMetrics;
use std::sync::Arc;
use tokio_postgres::Client;

use crate::throttle::ReadPacer;

/// About how many messages one read of the stream returns (whole transactions).
const BATCH_MESSAGES: usize = 5_000;
/// The pause between reads that found the stream caught up: short, since
/// what arrives meanwhile is what a cutover's drain has to apply, and cheap
/// (a WAL position and a keepalive).
const IDLE_POLL: Duration = Duration::from_millis(20);
/// How often requests held open (pins, a drain) are looked at again.
const HELD_REQUESTS_POLL: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Attempts at a read the target refuses (a constraint, a missing row, a
/// column it lacks): the same read fails the same way, so the stream stops
/// rather than pin the source's WAL while it retries for ever.
const MAX_REFUSED_ATTEMPTS: u32 = 5;
/// How long the stream may fail for reasons that can pass (a server away,
/// a network cut) before the job stops and frees the source's WAL.
const MAX_STALL: Duration = Duration::from_secs(15 * 60);
/// PostgreSQL stamps commits in microseconds since 2000-01-01.
const PG_EPOCH_UNIX_MS: i64 = 946_684_800_000;

/// A source and a target snapshot that hold the same data. The sessions
/// that exported them stay open as long as this lives.
struct Pinned {
    snapshots: PinnedSnapshots,
    _source: Client,
    _target: Client,
}

/// What a stream's run needs from the worker.
pub(crate) struct StreamContext {
    pub store: Arc<dyn LeaseStore>,
    pub keyspace: Keyspace,
    pub spec: JobSpec,
    pub sealed: SealedStaging,
    pub session: SessionSlot,
    pub pacer: ReadPacer,
    /// The stream's run in the job's trace: each applied batch's span
    /// hangs here.
    pub trace: Option<SpanRef>,
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
    /// Everything committed before the read's `upto` is on the target.
    reached: bool,
    /// Source commit time of the last transaction applied, Unix ms.
    last_commit_unix_ms: Option<u64>,
}

pub(crate) struct Streamer {
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    spec: JobSpec,
    tables: Vec<TableName>,
    slot: String,
    publication: String,
    sealed: SealedStaging,
    session: SessionSlot,
    pacer: ReadPacer,
    source: Client,
    target: Client,
    applier: Applier,
    /// This holder's fencing token in the target ledger.
    token: i64,
    /// The tables landing through the mapping, and the customer's token
    /// key for their masked columns: what a new applier is made with.
    mapped: Vec<godwit_common::mapping::carry::Carried>,
    masks: Option<StreamMasks>,
    /// End of the last source transaction the target committed.
    applied: u64,
    /// Where the slot was last moved to.
    advanced: u64,
    /// Transactions the last read applied: a pinning snapshot must see them.
    recent: Vec<u32>,
    /// Whether the target's triggers and keys are quiet for applying.
    replica: bool,
    /// The walsender session streaming the slot, opened on the first read
    /// and again after a failure or a read that stopped mid-stream.
    changes: Option<ReplicationStream>,
    /// What the session sent past a stop and nothing applied yet: the next
    /// read begins with it. Only ever held with `changes`.
    carried: Option<spill::Carried>,
    trace: Option<SpanRef>,
}

impl Streamer {
    /// Takes the stream over on the target (fencing out any earlier holder)
    /// and finds where it goes on: the ledger's position, or the item's
    /// starting point for a stream that never applied anything.
    pub(crate) async fn open(
        context: StreamContext,
        item: &StreamItem,
        token: i64,
    ) -> Result<Self> {
        let spec = context.spec;
        let job = spec.job.as_str();
        let slot = slot_name(&spec.job);
        let source = pg::connect_source(&spec.source, context.session).await?;
        let target = pg::connect(&spec.target, Side::Target).await?;
        // A job begun by an earlier release may lack the newer ledger tables.
        ledger::ensure_schema(&target).await?;
        apply::start_ledger(&target, job, item.start_lsn).await?;
        ledger::take_stream(&target, &spec.target, job, token).await?;
        let applied = apply::applied_lsn(&target, job)
            .await?
            .unwrap_or(item.start_lsn);
        let Some((confirmed, _)) = stream::slot_position(&source, &slot).await? else {
            return Err(Error::Precondition(format!(
                "job {job} streams changes, but its slot {slot} is gone from the source: the target \
                 misses changes it cannot get back; migrate again into an empty target"
            )));
        };
        // The key is derived here from the customer's key file, as for the
        // copy, and goes nowhere else.
        let masks = if item.mapped.iter().any(|c| !c.masks.is_empty()) {
            Some(StreamMasks {
                key: godwit_common::keyring::CustomerKeys::for_spec(&spec)?.token_key(),
                customer: spec.customer.to_string(),
            })
        } else {
            None
        };
        let mut streamer = Self {
            store: context.store,
            keyspace: context.keyspace,
            publication: stream::publication_name(&slot),
            tables: item.tables.clone(),
            slot,
            sealed: context.sealed,
            session: context.session,
            pacer: context.pacer,
            source,
            target,
            applier: Applier::with_mapping(item.mapped.clone(), masks.clone()),
            mapped: item.mapped.clone(),
            masks,
            token,
            applied,
            // The slot may already be past the ledger (moved on while
            // idle): it cannot be moved back.
            advanced: applied.max(confirmed),
            recent: Vec::new(),
            replica: false,
            changes: None,
            carried: None,
            trace: context.trace,
            spec,
        };
        streamer.enter_replica_mode().await?;
        Ok(streamer)
    }

    async fn enter_replica_mode(&mut self) -> Result<()> {
        let changed =
            replica::enter(&mut self.target, self.spec.job.as_str(), &self.tables).await?;
        self.replica = true;
        tracing::info!(job_id = %self.spec.job, objects = changed, "target in replica mode while changes are applied: its triggers quiet, its foreign keys checked at commit");
        Ok(())
    }

    async fn leave_replica_mode(&mut self) -> Result<()> {
        replica::leave(&mut self.target, self.spec.job.as_str()).await?;
        self.replica = false;
        Ok(())
    }

    /// Streams until told to stop after a cutover (Ok), or until its
    /// retries run out or its lease is lost (Err). Progress is written to
    /// the claimed item, fenced by its lease.
    pub(crate) async fn run(mut self, claimed: &mut Claimed<StreamItem>) -> Result<()> {
        let job = self.spec.job.clone();
        let mut inbox = Inbox::open(self.store.clone(), self.keyspace.clone(), job.clone()).await;
        let mut pins: HashMap<String, Pinned> = HashMap::new();
        // Requests already answered by this holder, as they were asked.
        let mut served: Vec<Incoming> = Vec::new();
        let mut progress = ChangeProgress {
            applied_lsn: format_lsn(self.applied),
            updated_at_unix_ms: now_unix_ms(),
            ..claimed.item.progress.clone()
        };
        tracing::info!(job_id = %job, slot = %self.slot, from = %format_lsn(self.applied), "streaming changes");
        let mut metrics = StreamMetrics::new(job.as_str(), &progress);
        publish(claimed, &progress).await?;

        let mut wait = Duration::ZERO;
        let mut failures = 0u32;
        let mut failing_since: Option<Instant> = None;
        let mut last_put = Instant::now();
        let mut last_served = Instant::now();
        loop {
            let asked = tokio::select! {
                biased;
                () = inbox.changed() => true,
                _ = tokio::time::sleep(wait) => false,
            };
            // Requests held open are looked at again now and then (a
            // withdrawn one also wakes the inbox), not at every read.
            // A held drain is looked at every time: nothing may be applied
            // while it holds.
            let draining = served.iter().any(|r| matches!(r, Incoming::Drain(_)));
            if asked
                || draining
                || (!served.is_empty() && last_served.elapsed() >= HELD_REQUESTS_POLL)
            {
                last_served = Instant::now();
                match self.serve(&inbox, &mut pins, &mut served).await {
                    Ok(Serving::Stopped) => {
                        progress.applied_lsn = format_lsn(self.applied);
                        progress.lag_bytes = 0;
                        progress.lag_ms = 0;
                        claimed.item.progress = progress;
                        tracing::info!(job_id = %job, applied = %format_lsn(self.applied), "change stream ended after the cutover");
                        return Ok(());
                    }
                    Ok(Serving::Holding) => {
                        wait = HELD_REQUESTS_POLL;
                        continue;
                    }
                    Ok(Serving::Streaming) => {}
                    Err(e) => {
                        tracing::warn!(job_id = %job, error = %e, "cannot serve the stream's requests")
                    }
                }
            }
            let polled = match stream::wal_positions(&self.source).await {
                Ok((_, flush)) => self.poll(None, flush).await,
                Err(e) => Err(e),
            };
            match polled {
                Ok(polled) => {
                    failures = 0;
                    failing_since = None;
                    progress.error = None;
                    wait = if polled.truncated {
                        Duration::ZERO
                    } else {
                        IDLE_POLL
                    };
                    self.account(&mut progress, &polled);
                }
                Err(e @ Error::LeaseLost { .. }) => return Err(e),
                Err(e) => {
                    failures += 1;
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let refused = !e.is_retryable() && failures >= MAX_REFUSED_ATTEMPTS;
                    if refused || since.elapsed() >= MAX_STALL {
                        return Err(Error::Exhausted(format!(
                            "the change stream stopped after {failures} failed attempts over {:.0?}: {e}; \
                             the job's replication slot is dropped so the source keeps no WAL for it. Fix \
                             the cause, then migrate again into an empty target: the target misses the \
                             changes from {} on",
                            since.elapsed(),
                            format_lsn(self.applied)
                        )));
                    }
                    wait = (Duration::from_millis(250) * 2u32.saturating_pow(failures.min(8)))
                        .min(MAX_BACKOFF);
                    tracing::warn!(job_id = %job, error = %e, retry_in = ?wait, "change stream interrupted");
                    progress.error = Some(format!("change stream interrupted, retrying: {e}"));
                    self.reconnect().await;
                }
            }
            if last_put.elapsed() >= PROGRESS_EVERY || progress.error.is_some() {
                self.measure_lag(&mut progress).await;
                if let Ok(Some(retained)) = stream::retained_wal(&self.source, &self.slot).await {
                    progress.retained_wal_bytes = retained;
                }
                publish(claimed, &progress).await?;
                metrics.record(&progress);
                last_put = Instant::now();
            }
        }
    }

    /// Answers the requests open for the job. Pins are held while their
    /// request is; a drain holds the stream while its request is.
    async fn serve(
        &mut self,
        inbox: &Inbox,
        pins: &mut HashMap<String, Pinned>,
        served: &mut Vec<Incoming>,
    ) -> Result<Serving> {
        let job = self.spec.job.clone();
        let open = inbox.open_requests().await?;
        pins.retain(|name, _| open.contains(&Incoming::Pin(name.clone())));
        served.retain(|request| open.contains(request));
        let holding = served.iter().any(|r| matches!(r, Incoming::Drain(_)));
        if !holding && !self.replica {
            // The cutover rolled back: changes stream on.
            tracing::info!(job_id = %job, "cutover withdrawn: streaming on");
            self.enter_replica_mode().await?;
        }
        if open.contains(&Incoming::Stop) && holding {
            return Ok(Serving::Stopped);
        }
        for request in open {
            if served.contains(&request) {
                continue;
            }
            let name = request.name();
            match &request {
                Incoming::Pin(_) if holding => {
                    let refused = PinAnswer::Refused("a cutover is draining the stream".into());
                    inbox.answer(&name, &refused).await?;
                }
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
                    inbox.answer(&name, &answer).await?;
                }
                Incoming::Drain(drain) => {
                    let started = Instant::now();
                    let answer = match self.drain_and_hold(drain.upto).await {
                        Ok(()) => DrainAnswer::Drained {
                            applied: self.applied,
                        },
                        Err(e) => {
                            tracing::warn!(job_id = %job, error = %e, "cannot drain the stream for the cutover");
                            DrainAnswer::Refused(e.to_string())
                        }
                    };
                    tracing::info!(job_id = %job, drained_to = %format_lsn(self.applied), took = ?started.elapsed(), "cutover: stream drained; holding");
                    inbox.answer(&name, &answer).await?;
                    if matches!(answer, DrainAnswer::Refused(_)) {
                        // Refused drains are not held: the request ends.
                        continue;
                    }
                }
                // The cutover is the leader's; a stop before any drain
                // waits for its drain.
                Incoming::Cutover(_) | Incoming::Stop => continue,
            }
            served.push(request);
        }
        Ok(if served.iter().any(|r| matches!(r, Incoming::Drain(_))) {
            Serving::Holding
        } else {
            Serving::Streaming
        })
    }

    /// Applies everything up to `upto`, then gives the target its triggers
    /// and keys back: the source is frozen, nothing more comes.
    async fn drain_and_hold(&mut self, upto: u64) -> Result<()> {
        if !self.replica {
            self.enter_replica_mode().await?;
        }
        self.drain(upto, None).await?;
        self.leave_replica_mode().await
    }

    /// Updates what operators see after a read of the slot (the lag in
    /// bytes is [`Self::measure_lag`]'s).
    fn account(&self, progress: &mut ChangeProgress, polled: &Polled) {
        progress.transactions += polled.transactions;
        progress.rows += polled.rows;
        progress.applied_lsn = format_lsn(self.applied);
        let seen = self.applied.max(self.advanced);
        let now = now_unix_ms();
        let previous = pgoutput::parse_lsn(&progress.caught_up_lsn);
        if let Some(previous) = previous {
            let elapsed = now.saturating_sub(progress.updated_at_unix_ms).max(1);
            let recent = seen.saturating_sub(previous) * 1000 / elapsed;
            // A moving average over a few seconds of reads.
            progress.catch_up_bytes_per_s = (progress.catch_up_bytes_per_s * 7 + recent) / 8;
        }
        progress.caught_up_lsn = format_lsn(seen);
        progress.updated_at_unix_ms = now;
        progress.lag_ms = match polled.last_commit_unix_ms {
            Some(committed) if polled.truncated || polled.transactions > 0 => {
                now.saturating_sub(committed)
            }
            _ => 0,
        };
    }

    /// Lag in bytes: the source's WAL beyond what the stream has seen,
    /// whatever it carried. Measured when progress is published, not at
    /// every read: it costs the source a query.
    async fn measure_lag(&self, progress: &mut ChangeProgress) {
        if let Ok((insert, _)) = stream::wal_positions(&self.source).await {
            progress.lag_bytes = insert.saturating_sub(self.applied.max(self.advanced));
        }
    }

    async fn reconnect(&mut self) {
        self.changes = None;
        self.carried = None;
        if let Ok(source) = pg::connect_source(&self.spec.source, self.session).await {
            self.source = source;
        }
        if let Ok(target) = pg::connect(&self.spec.target, Side::Target).await {
            self.target = target;
            // Prepared statements died with the old session.
            self.applier = Applier::with_mapping(self.mapped.clone(), self.masks.clone());
        }
        if let Ok(Some(lsn)) = apply::applied_lsn(&self.target, self.spec.job.as_str()).await {
            self.applied = lsn;
        }
    }

    /// Reads the stream until everything committed before `upto` has been
    /// received (or a batch is full), applies what the target lacks (only
    /// the transactions `visible` sees, stopping at the first it does not)
    /// and confirms to the source what is now committed on the target.
    async fn poll(&mut self, visible: Option<&SnapshotBounds>, upto: u64) -> Result<Polled> {
        let job = self.spec.job.clone();
        let started = std::time::SystemTime::now();
        let from = self.applied;
        let carried = self.carried.take();
        let mut changes = match self.changes.take() {
            Some(changes) => changes,
            None => {
                ReplicationStream::start(
                    &self.spec.source,
                    &self.slot,
                    &self.publication,
                    self.applied,
                )
                .await?
            }
        };
        let read = spill::read(
            &mut changes,
            spill::ReadAt {
                upto,
                max_messages: BATCH_MESSAGES,
                from: self.applied,
                confirmed: self.advanced,
            },
            carried,
            &self.sealed,
            &job,
        )
        .await?;
        self.pacer.consume(read.bytes).await;
        let mut polled = Polled {
            truncated: read.truncated,
            ..Polled::default()
        };
        let received_through = read.received_through;
        let mut carry = None;
        if !read.is_empty() {
            if read.spilled_segments() > 0 {
                tracing::info!(job_id = %job, segments = read.spilled_segments() + 1, bytes = read.bytes, "a large read of the stream spilled to staging; applying it segment by segment");
            }
            let mut run = ApplyRun::new(
                &mut self.applier,
                (&self.target, &self.source),
                (job.as_str(), self.token),
                self.applied,
                visible.cloned(),
            );
            let replayed = match spill::replay(read, &self.sealed, &job, &mut run).await {
                Ok(replayed) => replayed,
                Err(e) => {
                    run.abandon().await;
                    return Err(e);
                }
            };
            let applied = run.finish().await?;
            if let spill::Replayed::Stopped { rest: Some(rest) } = replayed {
                carry = Some(spill::Carried {
                    changes: rest,
                    received_through,
                });
            }
            self.applied = applied.applied;
            polled.transactions = applied.transactions;
            polled.rows = applied.rows;
            polled.stopped = applied.stopped;
            polled.last_commit_unix_ms = applied
                .last_commit_time_us
                .map(|us| ((us / 1000) + PG_EPOCH_UNIX_MS).max(0) as u64);
            if !applied.xids.is_empty() {
                self.recent = applied.xids;
            }
            if let Some(stream) = self.trace {
                traces::emit(traces::Done {
                    name: "change batch",
                    span: stream.new_child(),
                    parent: Some(stream),
                    start: started,
                    end: std::time::SystemTime::now(),
                    attributes: vec![
                        KeyValue::new("godwit.job", job.to_string()),
                        KeyValue::new("godwit.transactions", polled.transactions as i64),
                        KeyValue::new("godwit.rows", polled.rows as i64),
                        KeyValue::new("godwit.from_lsn", format_lsn(from)),
                        KeyValue::new("godwit.to_lsn", format_lsn(self.applied)),
                    ],
                    error: None,
                });
            }
        }
        // What was received but not applied (past a stop) is read first
        // next time; when it was not all in memory, the next read opens a
        // new session from the ledger instead.
        if polled.stopped {
            if carry.is_some() {
                self.carried = carry;
                self.changes = Some(changes);
            }
            return Ok(polled);
        }
        polled.reached = received_through >= upto;
        let confirm = self.applied.max(received_through);
        if confirm > self.advanced {
            changes.status(confirm, false).await?;
            self.advanced = confirm;
        }
        self.changes = Some(changes);
        Ok(polled)
    }

    /// Waits until the source has flushed its WAL up to `lsn`: decoding
    /// reads no further than the flush position. A source that commits
    /// asynchronously (`synchronous_commit = off`) flushes only on its WAL
    /// writer's next round, up to `wal_writer_delay` later, so a tiny
    /// transaction committed synchronously forces the flush; a source that
    /// still does not flush is an error, never an endless wait (the
    /// cutover holds the freeze meanwhile).
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
                    .batch_execute(
                        "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_current_xact_id(); COMMIT",
                    )
                    .await
                    .map_err(|e| Error::postgres("cannot make the source flush its WAL", e))?;
                nudged = true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Applies everything up to `upto` (whole reads until none is left).
    async fn drain(&mut self, upto: u64, visible: Option<&SnapshotBounds>) -> Result<()> {
        self.wait_flushed(upto).await?;
        let deadline = Instant::now() + FLUSH_DEADLINE;
        loop {
            let polled = self.poll(visible, upto).await?;
            if polled.reached || polled.stopped {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unreachable(format!(
                    "the source's change stream did not reach {} within {FLUSH_DEADLINE:?}",
                    format_lsn(upto)
                )));
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
}

/// Where serving the requests left the stream.
enum Serving {
    Streaming,
    /// Drained for a cutover: apply nothing until the drain ends.
    Holding,
    /// The cutover succeeded: the stream ends.
    Stopped,
}

/// Writes the stream's progress into its item, fenced by the lease.
async fn publish(claimed: &mut Claimed<StreamItem>, progress: &ChangeProgress) -> Result<()> {
    let (item, lease, key) = claimed.parts();
    item.progress = progress.clone();
    lease.put_fenced(key, state::encode(item)?).await
}

/// Whether the job still has its stream's item pending (for the runner).
pub(crate) fn is_stream_phase(phase: godwit_common::job::JobPhase) -> bool {
    use godwit_common::job::JobPhase;
    matches!(phase, JobPhase::Streaming | JobPhase::CuttingOver)
}
