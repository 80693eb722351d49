//! The job driver: takes a job from spec to done. After preflight (see
//! `preflight`) has checked everything the spec names, it holds the
//! job's snapshot, copies the schema, publishes the partitions for workers
//! to lease, waits for them, builds indexes and constraints, sets sequences
//! and compares every table on both databases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_common::audit::{AuditEvent, AuditLog};
use godwit_common::keyring::CustomerKeys;
use godwit_common::keys::DataKey;
use godwit_common::lease::LeaseStore;
use godwit_common::pg::catalog::{self, SourceTable};
use godwit_common::pg::ledger;
use godwit_common::pg::schema::SchemaDump;
use godwit_common::pg::snapshot::{self, SnapshotHolder};
use godwit_common::pg::{self, Side, join_snapshot, large_objects, stream};
use godwit_common::spec::TableName;
use godwit_common::staging::Staging;
use godwit_common::state::{
    self, CutoverRecord, JobPhase, JobRecord, Keyspace, PhaseTimings, PlannedTable, now_unix_ms,
};
use godwit_common::work::{self, PartitionRecord, StageTimings, WorkKind};
use godwit_common::{Error, Result};

use crate::changes::{self, StreamSetup, Streamer};
use crate::error::JobError;
use crate::leadership::JobRecords;
use crate::planner::split_table;
pub use crate::preflight::{Prepared, preflight};
use crate::staged::{outcome_events, stage_schema, write_manifest};

/// What a finished job did, for the operator's summary.
#[derive(Debug, Clone)]
pub struct JobSummary {
    pub tables: usize,
    pub rows: u64,
    pub bytes_read: u64,
    pub bytes_staged: u64,
    pub duration: Duration,
    pub phases: PhaseTimings,
    /// Summed over partitions, which run in parallel.
    pub stages: StageTimings,
    /// The cutover that ended a job streaming changes.
    pub cutover: Option<CutoverRecord>,
}

/// Copy progress summed over a job's partitions.
#[derive(Debug, Clone, Copy, Default)]
struct CopyTotals {
    rows: u64,
    bytes_read: u64,
    bytes_staged: u64,
    stages: StageTimings,
}

fn millis_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// A source session that joined the job's snapshot and locked `tables`
/// against DDL (see `snapshot::lock_tables`).
async fn guard_session(
    conn: &str,
    snapshot_name: &str,
    tables: &[TableName],
) -> Result<tokio_postgres::Client> {
    let session = pg::connect(conn, Side::Source).await?;
    join_snapshot(&session, snapshot_name).await?;
    snapshot::lock_tables(&session, tables).await?;
    Ok(session)
}

/// The plan entry of a source table.
fn planned_table(table: &SourceTable, partitions: Vec<u32>) -> PlannedTable {
    PlannedTable {
        name: table.name.clone(),
        copy_columns: table.copy_columns.clone(),
        format: table.format,
        estimated_bytes: table.bytes,
        partitions,
        source_rows: None,
        checked: false,
        source_relation: table.source_relation.clone(),
    }
}

pub struct JobDriver {
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    records: JobRecords,
}

impl JobDriver {
    pub(crate) fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    pub(crate) fn store(&self) -> &dyn LeaseStore {
        self.store.as_ref()
    }

    pub(crate) fn records(&self) -> &JobRecords {
        &self.records
    }

    /// A driver whose record writes are not fenced: the one process of an
    /// embedded run, or a submission's first record.
    pub fn new(store: Arc<dyn LeaseStore>, keyspace: Keyspace) -> Self {
        let records = JobRecords::unfenced(store.clone(), keyspace.clone());
        Self {
            store,
            keyspace,
            records,
        }
    }

    /// A driver of the leading coordinator: its record writes fail once
    /// leadership is lost.
    pub fn fenced(store: Arc<dyn LeaseStore>, keyspace: Keyspace, records: JobRecords) -> Self {
        Self {
            store,
            keyspace,
            records,
        }
    }

    /// Publishes the job's first record so it is visible (and not submitted
    /// twice) before the slower planning starts.
    pub async fn register(&self, prepared: &Prepared) -> Result<(), JobError> {
        let key = self.keyspace.job_record(&prepared.spec.job);
        let record = JobRecord {
            spec: prepared.spec.clone(),
            phase: JobPhase::Planning,
            error: None,
            slot: None,
            snapshot: None,
            tables: Vec::new(),
            started_at_unix_ms: now_unix_ms(),
            finished_at_unix_ms: None,
            phases: PhaseTimings::default(),
            changes: None,
        };
        // One step, so two submissions of one id cannot both run; an id
        // that exists, finished or not, keeps its record and history.
        let created = self
            .store
            .create(&key, state::encode(&record).map_err(JobError::Failed)?)
            .await
            .map_err(JobError::Failed)?;
        if !created {
            return Err(JobError::AlreadyExists(prepared.spec.job.to_string()));
        }
        crate::throttle::apply_spec_limits(self.store.as_ref(), &self.keyspace, &prepared.spec)
            .await
            .map_err(JobError::Failed)
    }

    /// Takes over a job a previous coordinator left unfinished. Its exported
    /// snapshot died with that coordinator, so the job is planned again under
    /// a new snapshot and every table it had started is reloaded (without
    /// change replay, rows copied under the old snapshot cannot be brought
    /// to the new one). The old plan's partition and lease keys are removed,
    /// which fences progress writes of workers still busy with it; their
    /// target writes are fenced by the reset of the target ledger.
    pub async fn take_over(&self, prepared: &Prepared) -> Result<(), JobError> {
        let job = &prepared.spec.job;
        let key = self.keyspace.job_record(job);
        let Some(bytes) = self.store.get(&key).await.map_err(JobError::Failed)? else {
            return Err(JobError::NotFound(job.to_string()));
        };
        let previous: JobRecord = state::decode(&key, &bytes).map_err(JobError::Failed)?;
        self.store
            .delete_prefix(&self.keyspace.work_prefix(job, WorkKind::Copy))
            .await
            .map_err(JobError::Failed)?;
        self.store
            .delete(&self.keyspace.active(job))
            .await
            .map_err(JobError::Failed)?;
        if previous.phase != JobPhase::Planning || previous.snapshot.is_some() {
            tracing::warn!(job_id = %job, "taking over an unfinished job: new snapshot, its tables reloaded");
        }
        let record = JobRecord {
            phase: JobPhase::Planning,
            error: None,
            snapshot: None,
            tables: Vec::new(),
            finished_at_unix_ms: None,
            phases: PhaseTimings::default(),
            changes: None,
            ..previous
        };
        self.put_record(&record).await.map_err(JobError::Failed)
    }

    /// Runs a registered job to its end.
    pub async fn execute(&self, prepared: Prepared) -> Result<JobSummary, JobError> {
        let started = Instant::now();
        let job = prepared.spec.job.clone();
        let key = self.keyspace.job_record(&job);
        let mut record: JobRecord = match self.store.get(&key).await.map_err(JobError::Failed)? {
            Some(bytes) => state::decode(&key, &bytes).map_err(JobError::Failed)?,
            None => return Err(JobError::NotFound(job.to_string())),
        };
        let audit = match AuditLog::open(&prepared.spec).await {
            Ok(audit) => Some(audit),
            Err(e) => {
                tracing::error!(job_id = %job, error = %e, "audit trail not opened: this run is not audited");
                None
            }
        };
        if let Some(audit) = &audit {
            audit
                .note(vec![
                    AuditEvent::new("coordinator", "job.start", "ok").object(format!(
                        "{} table(s): {}",
                        prepared.tables.len(),
                        prepared.spec.tables.join(", ")
                    )),
                ])
                .await;
        }
        let mut holder = None;
        let outcome = self.drive(&prepared, &mut record, &mut holder).await;
        if let Some(holder) = holder.take() {
            holder.release().await;
        }
        let _ = self.store.delete(&self.keyspace.active(&job)).await;
        if let Some(slot) = &record.slot
            && let Err(e) = snapshot::drop_slot(&prepared.spec.source, slot).await
        {
            tracing::warn!(job_id = %job, error = %e, "cannot drop replication slot; drop it by hand");
        }
        if prepared.spec.changes.is_some() {
            if let Err(e) = changes::drop_publication(&prepared.spec).await {
                tracing::warn!(job_id = %job, error = %e, "cannot drop the job's publication; drop it by hand");
            }
            // However the stream ended, the target's triggers and keys are
            // as the source defines them (a cutover already put them back).
            if let Err(e) = changes::leave_replica_mode(&prepared.spec).await {
                tracing::error!(job_id = %job, error = %e, "cannot put the target's triggers and foreign keys back; godwit.replica_mode on the target lists them");
            }
        }
        record.finished_at_unix_ms = Some(now_unix_ms());
        let result = match outcome {
            Ok(summary) => {
                record
                    .transition(JobPhase::Done)
                    .map_err(JobError::Failed)?;
                Ok(JobSummary {
                    duration: started.elapsed(),
                    ..summary
                })
            }
            Err(JobError::Cancelled(id)) => {
                record.phase = JobPhase::Cancelled;
                record.error = Some("cancelled by an operator".into());
                Err(JobError::Cancelled(id))
            }
            Err(e) => {
                record.phase = JobPhase::Failed;
                record.error = Some(e.to_string());
                Err(e)
            }
        };
        if let Err(e) = self.put_record(&record).await {
            tracing::error!(job_id = %job, error = %e, "cannot record the job's outcome");
        }
        if let Err(e) =
            crate::retention::schedule(self.store.as_ref(), &self.keyspace, &record).await
        {
            tracing::error!(job_id = %job, error = %e, "cannot schedule the job's retention; purge it with godwit purge");
        }
        if let Some(audit) = &audit {
            audit
                .note(outcome_events(&prepared.spec, &result).await)
                .await;
        }
        match &result {
            Ok(_) => tracing::info!(job_id = %job, "job done"),
            Err(e) => tracing::error!(job_id = %job, error = %e, "job ended without success"),
        }
        result
    }

    async fn drive(
        &self,
        prepared: &Prepared,
        record: &mut JobRecord,
        holder_slot: &mut Option<SnapshotHolder>,
    ) -> Result<JobSummary, JobError> {
        let failed = JobError::Failed;
        let spec = &prepared.spec;
        let job = &spec.job;

        let kek = CustomerKeys::for_spec(spec).map_err(failed)?;
        let staging = Staging::open(&spec.staging).map_err(failed)?;
        let data_key = match staging.get_wrapped_key(job).await.map_err(failed)? {
            Some(wrapped) => kek.unwrap(job, &wrapped).map_err(failed)?,
            None => {
                let data_key = DataKey::generate().map_err(failed)?;
                let wrapped = kek.wrap(job, &data_key).map_err(failed)?;
                staging
                    .put_wrapped_key(job, &wrapped)
                    .await
                    .map_err(failed)?;
                data_key
            }
        };

        let slot = snapshot::slot_name(job);
        if spec.changes.is_some()
            && prepared.marks.post_data_done
            && let Some(applied) = changes::resumable(spec, &slot).await.map_err(failed)?
        {
            // A copy finished and its stream was applied up to `applied`; the
            // slot still holds every change after it. Nothing is copied again.
            tracing::warn!(job_id = %job, from = %godwit_common::pg::pgoutput::format_lsn(applied), "resuming the change stream of a job taken over");
            record.slot = Some(slot.clone());
            record.tables = prepared
                .tables
                .iter()
                .map(|t| PlannedTable {
                    checked: true,
                    ..planned_table(t, Vec::new())
                })
                .collect();
            let setup = self.stream_setup(record, &slot, staging, data_key);
            let streamer = Streamer::resume(setup, applied).await.map_err(failed)?;
            return Ok(JobSummary {
                tables: record.tables.len(),
                rows: 0,
                bytes_read: 0,
                bytes_staged: 0,
                duration: Duration::ZERO,
                phases: record.phases,
                stages: StageTimings::default(),
                cutover: Some(streamer.run(record).await?),
            });
        }
        let phase_start = Instant::now();
        snapshot::drop_slot(&spec.source, &slot)
            .await
            .map_err(failed)?;
        if spec.changes.is_some() {
            let source = pg::connect(&spec.source, Side::Source)
                .await
                .map_err(failed)?;
            let names: Vec<TableName> = prepared.tables.iter().map(|t| t.name.clone()).collect();
            stream::create_publication(&source, &stream::publication_name(&slot), &names)
                .await
                .map_err(failed)?;
        }
        let holder = SnapshotHolder::create(&spec.source, &slot, spec.changes.is_none())
            .await
            .map_err(failed)?;
        record.slot = Some(holder.slot.clone());
        record.snapshot = Some(holder.snapshot.clone());
        let snapshot_name = holder.snapshot.clone();
        let consistent_lsn = holder.consistent_lsn.clone();
        *holder_slot = Some(holder);
        tracing::info!(job_id = %job, slot = %slot, snapshot = %snapshot_name, "holding exported snapshot");
        let customer_tables: Vec<TableName> = prepared
            .tables
            .iter()
            .filter(|t| t.source_relation.is_none())
            .map(|t| t.name.clone())
            .collect();
        // One source session under the snapshot holds the tables' locks
        // through the copy, then reads the sequences and runs the check:
        // with the snapshot holder, two coordinator sessions on the source.
        let mut source = guard_session(&spec.source, &snapshot_name, &customer_tables)
            .await
            .map_err(failed)?;

        let target = pg::connect(&spec.target, Side::Target)
            .await
            .map_err(failed)?;
        ledger::ensure_schema(&target).await.map_err(failed)?;
        let carries_large_objects = prepared
            .tables
            .iter()
            .any(|t| large_objects::is_load_table(&t.name));
        if carries_large_objects {
            large_objects::prepare_target(&target, job)
                .await
                .map_err(failed)?;
        }
        let schema_dir = tempfile::tempdir().map_err(|source| {
            failed(Error::Io {
                what: "cannot create a temporary directory",
                path: std::env::temp_dir(),
                source,
            })
        })?;
        let selection: Option<Vec<TableName>> =
            (!spec.all_tables()).then(|| prepared.tables.iter().map(|t| t.name.clone()).collect());
        let dump = SchemaDump::create(
            &spec.source,
            &snapshot_name,
            selection.as_deref(),
            schema_dir.path(),
        )
        .await
        .map_err(failed)?;
        stage_schema(&staging, job, &dump, &data_key)
            .await
            .map_err(failed)?;

        record.phases.snapshot_ms = millis_since(phase_start);
        let phase_start = Instant::now();
        let copy_data = !prepared.marks.post_data_done;
        if !prepared.marks.pre_data_done {
            dump.restore_pre_data(&spec.target).await.map_err(failed)?;
            ledger::mark_job(&target, job.as_str(), true, false)
                .await
                .map_err(failed)?;
        } else if copy_data {
            // A half-finished earlier run: its snapshot is gone, so its rows may not
            // match this run's snapshot. Reload those tables from scratch.
            self.reset_partial_tables(&target, prepared)
                .await
                .map_err(failed)?;
        }

        record.phases.schema_ms = millis_since(phase_start);
        let phase_start = Instant::now();
        record.tables = self
            .publish_plan(prepared, copy_data)
            .await
            .map_err(failed)?;
        record.transition(JobPhase::Copying).map_err(failed)?;
        self.put_record(record).await.map_err(failed)?;
        self.store
            .put(&self.keyspace.active(job), Vec::new())
            .await
            .map_err(failed)?;
        let totals = self.wait_for_partitions(job, record).await?;
        self.store
            .delete(&self.keyspace.active(job))
            .await
            .map_err(failed)?;
        record.phases.copy_ms = millis_since(phase_start);
        tracing::info!(job_id = %job, copy_ms = record.phases.copy_ms, rows = totals.rows, "all partitions copied");

        record.transition(JobPhase::Finalizing).map_err(failed)?;
        self.put_record(record).await.map_err(failed)?;
        // The copy can take hours; a fresh session does not depend on the one
        // opened before it surviving every network hiccup in between.
        let target = pg::connect(&spec.target, Side::Target)
            .await
            .map_err(failed)?;
        let phase_start = Instant::now();
        if copy_data {
            tracing::info!(job_id = %job, "building indexes and constraints");
            dump.restore_post_data(&spec.target).await.map_err(failed)?;
            ledger::mark_job(&target, job.as_str(), true, true)
                .await
                .map_err(failed)?;
        }
        if carries_large_objects {
            let mut target = pg::connect(&spec.target, Side::Target)
                .await
                .map_err(failed)?;
            let created = large_objects::materialize(&mut target, job)
                .await
                .map_err(failed)?;
            tracing::info!(job_id = %job, created, "large objects created on the target");
        }
        record.phases.indexes_ms = millis_since(phase_start);
        // Before the check, the tables are looked at again for a rewrite
        // since the snapshot. The guard may have lost its session during a
        // long copy, and its locks with it: a new one locks again, and the
        // same look finds any rewrite since the snapshot, however long ago.
        let relocked = if source.is_closed() {
            Err(Error::Unreachable(
                "the session holding the locks ended".into(),
            ))
        } else {
            snapshot::lock_tables(&source, &customer_tables).await
        };
        match relocked {
            Ok(()) => {}
            Err(e) if e.is_retryable() => {
                tracing::warn!(job_id = %job, error = %e, "the source session holding the tables' locks was lost; locking again");
                source = guard_session(&spec.source, &snapshot_name, &customer_tables)
                    .await
                    .map_err(failed)?;
            }
            Err(e) => return Err(failed(e)),
        }
        let views = godwit_common::pg::schema::populated_views(&source)
            .await
            .map_err(failed)?;
        if copy_data {
            let refreshed = godwit_common::pg::schema::refresh_materialized_views(&target, &views)
                .await
                .map_err(failed)?;
            tracing::info!(job_id = %job, refreshed, "materialized views refreshed on the target");
        }
        let phase_start = Instant::now();
        let names: Vec<TableName> = record.tables.iter().map(|t| t.name.clone()).collect();
        let sequences = catalog::sequences(&source, &names, spec.all_tables())
            .await
            .map_err(failed)?;
        catalog::set_sequences(&target, &sequences)
            .await
            .map_err(failed)?;
        record.phases.sequences_ms = millis_since(phase_start);
        let phase_start = Instant::now();
        self.check_tables(&source, &target, record).await?;
        record.phases.check_ms = millis_since(phase_start);
        write_manifest(
            &staging, &target, record, &dump, sequences, views, &data_key,
        )
        .await
        .map_err(failed)?;
        // Ends the snapshot's transaction: its locks, and the horizon it
        // holds back on the source, are not kept through the stream.
        drop(source);
        tracing::info!(job_id = %job, phases = ?record.phases, stages = ?totals.stages, "job timings");
        let cutover = if spec.changes.is_some() {
            // The slot cannot be read while the session that exported the
            // snapshot still holds it.
            if let Some(holder) = holder_slot.take() {
                holder.release().await;
            }
            let start =
                godwit_common::pg::pgoutput::parse_lsn(&consistent_lsn).ok_or_else(|| {
                    failed(Error::Internal(format!(
                        "the slot's consistent point {consistent_lsn:?} is not an LSN"
                    )))
                })?;
            let setup = self.stream_setup(record, &slot, staging, data_key);
            let streamer = Streamer::start(setup, start).await.map_err(failed)?;
            Some(streamer.run(record).await?)
        } else {
            None
        };
        Ok(JobSummary {
            tables: record.tables.len(),
            rows: totals.rows,
            bytes_read: totals.bytes_read,
            bytes_staged: totals.bytes_staged,
            duration: Duration::ZERO,
            phases: record.phases,
            stages: totals.stages,
            cutover,
        })
    }

    /// Empties the tables an unfinished earlier run (or a coordinator that
    /// died) had started, in one transaction. Ownership goes first: a worker
    /// still loading under the old plan is waited for, then fenced out, so
    /// no old chunk can land after the tables were emptied.
    async fn reset_partial_tables(
        &self,
        target: &tokio_postgres::Client,
        prepared: &Prepared,
    ) -> Result<()> {
        let names: Vec<String> = prepared.tables.iter().map(|t| t.name.quoted()).collect();
        tracing::warn!(job_id = %prepared.spec.job, tables = names.len(), "earlier run unfinished: reloading its tables");
        let job = prepared.spec.job.as_str().replace('\'', "''");
        target
            .batch_execute(&format!(
                "BEGIN; \
                 DELETE FROM godwit.partition_owners WHERE job_id = '{job}'; \
                 DELETE FROM godwit.applied_chunks WHERE job_id = '{job}'; \
                 DELETE FROM godwit.applied_changes WHERE job_id = '{job}'; \
                 TRUNCATE {}; \
                 COMMIT",
                names.join(", ")
            ))
            .await
            .map_err(|e| {
                Error::postgres("cannot reset the tables of the unfinished earlier run", e)
            })
    }

    async fn publish_plan(
        &self,
        prepared: &Prepared,
        copy_data: bool,
    ) -> Result<Vec<PlannedTable>> {
        let spec = &prepared.spec;
        let mut planned = Vec::with_capacity(prepared.tables.len());
        let mut next_partition = 0u32;
        for table in &prepared.tables {
            let ranges = if copy_data {
                split_table(table.blocks, spec.partition_size.0)
            } else {
                Vec::new()
            };
            let items: Vec<PartitionRecord> = ranges
                .into_iter()
                .map(|range| {
                    next_partition += 1;
                    PartitionRecord::pending(
                        spec.job.clone(),
                        next_partition - 1,
                        table.name.clone(),
                        range,
                    )
                })
                .collect();
            work::publish(self.store.as_ref(), &self.keyspace, &spec.job, &items).await?;
            let partitions = items.iter().map(|p| p.partition).collect();
            planned.push(planned_table(table, partitions));
        }
        tracing::info!(job_id = %spec.job, tables = planned.len(), partitions = next_partition, "plan published");
        Ok(planned)
    }

    /// Waits until every partition is copied.
    async fn wait_for_partitions(
        &self,
        job: &godwit_common::ids::JobId,
        record: &JobRecord,
    ) -> Result<CopyTotals, JobError> {
        let expected: usize = record.tables.iter().map(|t| t.partitions.len()).sum();
        let partitions = work::await_done::<PartitionRecord, _, _>(
            self.store.clone(),
            &self.keyspace,
            job,
            expected,
            || self.cancel_requested(job),
        )
        .await
        .map_err(|stopped| match stopped {
            work::Stopped::Cancelled => JobError::Cancelled(job.to_string()),
            work::Stopped::Failed(e) => JobError::Failed(e),
        })?;
        let mut totals = CopyTotals::default();
        for partition in &partitions {
            totals.rows += partition.rows;
            totals.bytes_read += partition.bytes_read;
            totals.bytes_staged += partition.bytes_staged;
            totals.stages.add(&partition.timings);
        }
        Ok(totals)
    }

    async fn cancel_requested(&self, job: &godwit_common::ids::JobId) -> Result<bool> {
        Ok(self
            .store
            .get(&self.keyspace.job_control(job))
            .await?
            .as_deref()
            == Some(b"cancel".as_slice()))
    }

    /// Compares row count and content checksum of every table, computed by
    /// each database: the source (a session under the job's snapshot), the
    /// target as is.
    async fn check_tables(
        &self,
        source: &tokio_postgres::Client,
        target: &tokio_postgres::Client,
        record: &mut JobRecord,
    ) -> Result<(), JobError> {
        let failed = JobError::Failed;
        let mut mismatches = Vec::new();
        for index in 0..record.tables.len() {
            let name = record.tables[index].name.clone();
            let (at_source, at_target) = tokio::try_join!(
                large_objects::fingerprint_of(source, &name),
                large_objects::fingerprint_of(target, &name)
            )
            .map_err(failed)?;
            record.tables[index].source_rows = Some(at_source.rows);
            if at_source == at_target {
                record.tables[index].checked = true;
            } else {
                mismatches.push(format!(
                    "{name} (source {} rows, target {} rows{})",
                    at_source.rows,
                    at_target.rows,
                    if at_source.rows == at_target.rows {
                        ", contents differ"
                    } else {
                        ""
                    }
                ));
            }
            self.put_record(record).await.map_err(failed)?;
        }
        if !mismatches.is_empty() {
            return Err(JobError::Failed(Error::Verification(format!(
                "target differs from source in {}",
                mismatches.join("; ")
            ))));
        }
        Ok(())
    }

    fn stream_setup(
        &self,
        record: &JobRecord,
        slot: &str,
        staging: Staging,
        key: DataKey,
    ) -> StreamSetup {
        StreamSetup {
            records: self.records.clone(),
            store: self.store.clone(),
            keyspace: self.keyspace.clone(),
            spec: record.spec.clone(),
            tables: record.tables.iter().map(|t| t.name.clone()).collect(),
            slot: slot.to_owned(),
            staging,
            key,
        }
    }

    async fn put_record(&self, record: &JobRecord) -> Result<()> {
        self.records.save(record).await
    }
}
