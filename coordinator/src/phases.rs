//! The job's phases. Each step starts from the phase the record holds and
//! ends by writing the next one (a compare-and-swap, see `JobRecords`):
//! planning (snapshot, schema, plan) → copying → finalizing → streaming →
//! cutting over. What a step needs beyond the record lives in [`Run`], which
//! dies with the process; that is why a job taken over while planning,
//! copying or finalizing plans again (its snapshot died with its holder),
//! while one taken over streaming simply streams on.

use std::sync::Arc;

use crate::timeline;
use std::time::{Duration, Instant, SystemTime};

use godwit_common::job::{JobPhase, JobRecord, Phase, PlannedTable, SnapshotAt};
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::LeaseStore;
use godwit_common::pg::catalog::{self, SourceTable};

use godwit_common::pg::schema::SchemaDump;
use godwit_common::pg::snapshot::{self, SnapshotHolder};
use godwit_common::pg::{self, Side, join_snapshot, large_objects, ledger, stream};
use godwit_common::sealed::SealedStaging;
use godwit_common::spec::TableName;
use godwit_common::work::{self, PartitionRecord};
use godwit_common::{Error, Result};

use crate::changes;
use crate::error::JobError;
use crate::leadership::JobRecords;
use crate::planner::split_table;
use crate::preflight::Prepared;
use crate::staged::{stage_schema, write_manifest};
use crate::summary::{CopyTotals, JobSummary};

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
pub(crate) fn planned_table(table: &SourceTable, partitions: Vec<u32>) -> PlannedTable {
    PlannedTable {
        name: table.name.clone(),
        copy_columns: table.copy_columns.clone(),
        format: table.format,
        estimated_bytes: table.bytes,
        partitions,
        source_rows: None,
        checked: false,
        source_relation: table.source_relation.clone(),
        masks: table
            .mapped
            .as_ref()
            .map(|m| m.masks.clone())
            .unwrap_or_default(),
        review_masks: table
            .mapped
            .as_ref()
            .map(|m| m.review_masks.clone())
            .unwrap_or_default(),
        // A table the job creates is replayed as it is created: from the
        // schema dump, into a database without it.
        slice: table
            .mapped
            .as_ref()
            .filter(|m| !m.keeps_source_definition())
            .map(|m| m.views.1.slice.clone()),
        referenced: table.referenced,
        remaps: table
            .mapped
            .as_ref()
            .map(|m| m.remaps.clone())
            .unwrap_or_default(),
        creates: table.mapped.as_ref().and_then(|m| m.creates.clone()),
    }
}

/// The statements creating the mapped tables the job lands under names
/// the target did not have: the tables, then what follows the copy.
fn creations(prepared: &Prepared) -> (String, String) {
    godwit_common::mapping::create::in_order(
        prepared
            .tables
            .iter()
            .filter_map(|t| t.mapped.as_ref().and_then(|m| m.creates.as_ref())),
    )
}

/// What one run of a job holds between its phases, in this process only.
pub(crate) struct Run {
    /// Taken by the change stream when the copy hands over to it.
    sealed: Option<SealedStaging>,
    /// The session that exported the snapshot, while partitions need it.
    pub(crate) holder: Option<SnapshotHolder>,
    /// A source session under the snapshot holding the tables' locks.
    guard: Option<tokio_postgres::Client>,
    dump: Option<(tempfile::TempDir, SchemaDump)>,
    /// Whether rows are copied (false when an earlier run's copy finished).
    copy_data: bool,
    totals: CopyTotals,
}

impl Run {
    /// Opens the job's staging area and its data key (created on first use).
    pub(crate) async fn open(prepared: &Prepared) -> Result<Self> {
        Ok(Self {
            sealed: Some(SealedStaging::open_or_create(&prepared.spec).await?),
            holder: None,
            guard: None,
            dump: None,
            copy_data: !prepared.marks.post_data_done,
            totals: CopyTotals::default(),
        })
    }

    fn sealed(&self) -> Result<&SealedStaging> {
        self.sealed
            .as_ref()
            .ok_or_else(|| Error::Internal("the job's staging went to its stream".into()))
    }
}

/// The customer's tables on the source (a mapped table by its source
/// name; large objects are not a table of theirs).
fn customer_tables(prepared: &Prepared) -> Vec<TableName> {
    prepared
        .tables
        .iter()
        .filter_map(|t| match (&t.mapped, &t.source_relation) {
            (Some(mapped), _) => Some(mapped.source.clone()),
            (None, None) => Some(t.name.clone()),
            (None, Some(_)) => None,
        })
        .collect()
}

/// Whether the job creates tables from the source's schema: not when every
/// table it copies lands, through a mapping, in one the platform has.
fn restores_schema(prepared: &Prepared) -> bool {
    prepared.tables.iter().any(created_from_source)
}

/// A table the job creates from the source's definition: copied as it is,
/// or keeping its name with columns masked.
fn created_from_source(table: &SourceTable) -> bool {
    match &table.mapped {
        Some(mapped) => mapped.keeps_source_definition(),
        None => table.source_relation.is_none(),
    }
}

/// What the phases work with: the lease store, its keyspace and the job
/// records' writer of the process driving the job.
pub(crate) struct Phases<'a> {
    pub(crate) store: &'a Arc<dyn LeaseStore>,
    pub(crate) keyspace: &'a Keyspace,
    pub(crate) records: &'a JobRecords,
}

impl Phases<'_> {
    pub(crate) async fn put_record(&self, record: &JobRecord) -> Result<()> {
        self.records.save(record).await
    }

    /// Runs the job from the phase its record holds to its end.
    pub(crate) async fn drive(
        &self,
        prepared: &Prepared,
        record: &mut JobRecord,
        run: &mut Run,
    ) -> Result<JobSummary, JobError> {
        loop {
            match record.current().clone() {
                Phase::Planning => self.plan(prepared, record, run).await?,
                Phase::Copying(at) => self.copy(prepared, record, run, at).await?,
                Phase::Finalizing(at) => {
                    self.finalize(prepared, record, run, &at).await?;
                    let cutover = match prepared.spec.changes {
                        Some(_) => Some(self.stream_from_copy(record, run, &at).await?),
                        None => None,
                    };
                    return Ok(self.summary(record, run, cutover));
                }
                Phase::Streaming { .. } | Phase::CuttingOver { .. } => {
                    let cutover = self.stream_on(prepared, record).await?;
                    return Ok(self.summary(record, run, Some(cutover)));
                }
                Phase::Done | Phase::Failed | Phase::Cancelled => {
                    return Err(JobError::Failed(Error::Internal(format!(
                        "job {} has already ended ({:?})",
                        prepared.spec.job,
                        record.phase()
                    ))));
                }
            }
        }
    }

    fn summary(
        &self,
        record: &JobRecord,
        run: &Run,
        cutover: Option<godwit_common::job::CutoverRecord>,
    ) -> JobSummary {
        JobSummary {
            tables: record.tables.len(),
            rows: run.totals.rows,
            bytes_read: run.totals.bytes_read,
            bytes_staged: run.totals.bytes_staged,
            duration: Duration::ZERO,
            phases: record.phases,
            stages: run.totals.stages,
            cutover,
        }
    }

    /// Planning: the snapshot held, the schema dumped and created on the
    /// target, the partitions published; ends copying.
    async fn plan(
        &self,
        prepared: &Prepared,
        record: &mut JobRecord,
        run: &mut Run,
    ) -> Result<(), JobError> {
        let failed = JobError::Failed;
        let spec = &prepared.spec;
        let job = &spec.job;
        let phase_start = Instant::now();
        timeline::begin(record, "planning");
        let step_start = SystemTime::now();
        let slot = snapshot::slot_name(job);
        snapshot::drop_slot(&spec.source, &slot)
            .await
            .map_err(failed)?;
        if spec.changes.is_some() {
            let source = pg::connect(&spec.source, Side::Source)
                .await
                .map_err(failed)?;
            // A mapped table's changes are its source table's.
            let names: Vec<TableName> = prepared
                .tables
                .iter()
                .map(|t| t.mapped.as_ref().map_or(&t.name, |m| &m.source).clone())
                .collect();
            stream::create_publication(&source, &stream::publication_name(&slot), &names)
                .await
                .map_err(failed)?;
        }
        let holder = SnapshotHolder::create(&spec.source, &slot, spec.changes.is_none())
            .await
            .map_err(failed)?;
        let at = SnapshotAt {
            snapshot: holder.snapshot.clone(),
            consistent_lsn: holder.consistent_lsn.clone(),
        };
        run.holder = Some(holder);
        tracing::info!(job_id = %job, slot = %slot, snapshot = %at.snapshot, "holding exported snapshot");
        // One source session under the snapshot holds the tables' locks
        // through the copy, then reads the sequences and runs the check:
        // with the snapshot holder, two coordinator sessions on the source.
        run.guard = Some(
            guard_session(&spec.source, &at.snapshot, &customer_tables(prepared))
                .await
                .map_err(failed)?,
        );
        let target = pg::connect(&spec.target, Side::Target)
            .await
            .map_err(failed)?;
        ledger::ensure_schema(&target).await.map_err(failed)?;
        if prepared
            .tables
            .iter()
            .any(|t| large_objects::is_load_table(&t.name))
        {
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
        // Mapped tables land in the platform's own tables: their source
        // definitions are dumped for the record only when nothing else is.
        let restores_schema = restores_schema(prepared);
        let selection: Option<Vec<TableName>> = if spec.mapping.is_some() {
            Some(if restores_schema {
                prepared
                    .tables
                    .iter()
                    .filter(|t| created_from_source(t))
                    .map(|t| t.name.clone())
                    .collect()
            } else {
                customer_tables(prepared)
            })
        } else {
            (!spec.all_tables()).then(|| prepared.tables.iter().map(|t| t.name.clone()).collect())
        };
        let dump = SchemaDump::create(
            &spec.source,
            &at.snapshot,
            selection.as_deref(),
            schema_dir.path(),
        )
        .await
        .map_err(failed)?;
        stage_schema(run.sealed().map_err(failed)?, &dump)
            .await
            .map_err(failed)?;
        record.phases.snapshot_ms = millis_since(phase_start);
        timeline::step(record, "planning", "snapshot", step_start);

        let phase_start = Instant::now();
        let step_start = SystemTime::now();
        if !prepared.marks.pre_data_done {
            // Recorded before anything else is written: a later run under
            // another mapping is refused against it (see preflight).
            let mapping = spec.mapping.as_ref().map(|m| m.canonical());
            ledger::record_mapping(&target, job.as_str(), mapping.as_deref())
                .await
                .map_err(failed)?;
            if restores_schema {
                dump.restore_pre_data(&spec.target).await.map_err(failed)?;
            }
            let (tables, _) = creations(prepared);
            if !tables.is_empty() {
                target.batch_execute(&tables).await.map_err(|e| {
                    failed(Error::postgres(
                        "cannot create the mapped tables the job lands under new names",
                        e,
                    ))
                })?;
            }
            ledger::mark_job(&target, job.as_str(), true, false)
                .await
                .map_err(failed)?;
        } else if run.copy_data {
            // A half-finished earlier run: its snapshot is gone, so its rows may not
            // match this run's snapshot. Reload those tables from scratch.
            self.reset_partial_tables(&target, prepared)
                .await
                .map_err(failed)?;
        }
        run.dump = Some((schema_dir, dump));
        record.phases.schema_ms = millis_since(phase_start);
        timeline::step(record, "planning", "schema", step_start);
        record.tables = self
            .publish_plan(prepared, run.copy_data)
            .await
            .map_err(failed)?;
        timeline::end(record, "planning", None);
        // Open before the workers can see the plan: their partitions' spans
        // hang under this run of the copy.
        timeline::begin(record, "copying");
        record.advance(Phase::Copying(at)).map_err(failed)?;
        self.put_record(record).await.map_err(failed)?;
        self.store
            .put(&self.keyspace.active(job), Vec::new())
            .await
            .map_err(failed)
    }

    /// Copying: workers copy the partitions; ends finalizing once all are.
    async fn copy(
        &self,
        prepared: &Prepared,
        record: &mut JobRecord,
        run: &mut Run,
        at: SnapshotAt,
    ) -> Result<(), JobError> {
        let failed = JobError::Failed;
        let job = &prepared.spec.job;
        let phase_start = Instant::now();
        let partitions = self.wait_for_partitions(job, record).await?;
        run.totals = CopyTotals::of(&partitions);
        timeline::copied(record, &partitions);
        self.store
            .delete(&self.keyspace.active(job))
            .await
            .map_err(failed)?;
        record.phases.copy_ms = millis_since(phase_start);
        tracing::info!(job_id = %job, copy_ms = record.phases.copy_ms, rows = run.totals.rows, "all partitions copied");
        timeline::end(record, "copying", None);
        timeline::begin(record, "finalizing");
        record.advance(Phase::Finalizing(at)).map_err(failed)?;
        self.put_record(record).await.map_err(failed)
    }

    /// Finalizing: indexes and constraints, large objects, materialized
    /// views, sequences, the final check and the staged manifest.
    async fn finalize(
        &self,
        prepared: &Prepared,
        record: &mut JobRecord,
        run: &mut Run,
        at: &SnapshotAt,
    ) -> Result<(), JobError> {
        let failed = JobError::Failed;
        let spec = &prepared.spec;
        let job = &spec.job;
        let Some((_dir, dump)) = run.dump.take() else {
            return Err(failed(Error::Internal(format!(
                "job {job} reached finalizing without its schema dump"
            ))));
        };
        // The copy can take hours; a fresh session does not depend on the one
        // opened before it surviving every network hiccup in between.
        let target = pg::connect(&spec.target, Side::Target)
            .await
            .map_err(failed)?;
        let phase_start = Instant::now();
        // A job taken over while it finalized plans and copies again.
        timeline::begin(record, "finalizing");
        let step_start = SystemTime::now();
        if run.copy_data {
            tracing::info!(job_id = %job, "building indexes and constraints");
            if restores_schema(prepared) {
                dump.restore_post_data(&spec.target).await.map_err(failed)?;
            }
            let (_, after) = creations(prepared);
            if !after.is_empty() {
                target.batch_execute(&after).await.map_err(|e| {
                    failed(Error::postgres(
                        "cannot add the keys and indexes of the mapped tables the job created",
                        e,
                    ))
                })?;
            }
            ledger::mark_job(&target, job.as_str(), true, true)
                .await
                .map_err(failed)?;
        }
        if prepared
            .tables
            .iter()
            .any(|t| large_objects::is_load_table(&t.name))
        {
            let mut target = pg::connect(&spec.target, Side::Target)
                .await
                .map_err(failed)?;
            let created = large_objects::materialize(&mut target, job)
                .await
                .map_err(failed)?;
            tracing::info!(job_id = %job, created, "large objects created on the target");
        }
        record.phases.indexes_ms = millis_since(phase_start);
        timeline::step(record, "finalizing", "indexes", step_start);
        let source = self.relock(prepared, run, at).await.map_err(failed)?;
        let views = godwit_common::pg::schema::populated_views(&source)
            .await
            .map_err(failed)?;
        if run.copy_data {
            let refreshed = godwit_common::pg::schema::refresh_materialized_views(&target, &views)
                .await
                .map_err(failed)?;
            tracing::info!(job_id = %job, refreshed, "materialized views refreshed on the target");
        }
        let phase_start = Instant::now();
        let step_start = SystemTime::now();
        let names: Vec<TableName> = record.tables.iter().map(|t| t.name.clone()).collect();
        let sequences = catalog::sequences(&source, &names, spec.all_tables())
            .await
            .map_err(failed)?;
        catalog::set_sequences(&target, &sequences)
            .await
            .map_err(failed)?;
        for mapped in prepared.tables.iter().filter_map(|t| t.mapped.as_ref()) {
            let raised = catalog::raise_sequences_past_values(
                &target,
                &mapped.target,
                &mapped.target_columns(),
            )
            .await
            .map_err(failed)?;
            for (sequence, value) in raised {
                tracing::info!(job_id = %job, sequence, value, "sequence moved past the mapped ids");
            }
        }
        record.phases.sequences_ms = millis_since(phase_start);
        timeline::step(record, "finalizing", "sequences", step_start);
        // Ends the snapshot's transaction: its locks, and the horizon it
        // holds back on the source, are not kept through the check and the
        // stream; and the check's own source session takes its place within
        // the customer's session cap. A rewrite of a table from here on
        // leaves the check's source side empty: a difference, never a match.
        drop(source);
        let phase_start = Instant::now();
        let step_start = SystemTime::now();
        self.final_check(prepared, record, at).await?;
        record.phases.check_ms = millis_since(phase_start);
        timeline::step(record, "finalizing", "check", step_start);
        timeline::end(record, "finalizing", None);
        write_manifest(
            run.sealed().map_err(failed)?,
            &target,
            record,
            &dump,
            sequences,
            views,
            restores_schema(prepared),
        )
        .await
        .map_err(failed)?;
        crate::staged::stage_history(Some(run.sealed().map_err(failed)?), record).await;
        tracing::info!(job_id = %job, phases = ?record.phases, stages = ?run.totals.stages, "job timings");
        Ok(())
    }

    /// The source session holding the tables' locks, looked at again for
    /// a rewrite since the snapshot. The guard may have lost its session
    /// during a long copy, and its locks with it: a new one locks again,
    /// and the same look finds any rewrite since the snapshot, however long
    /// ago.
    async fn relock(
        &self,
        prepared: &Prepared,
        run: &mut Run,
        at: &SnapshotAt,
    ) -> Result<tokio_postgres::Client> {
        let tables = customer_tables(prepared);
        let relocked = match &run.guard {
            Some(guard) if !guard.is_closed() => snapshot::lock_tables(guard, &tables).await,
            _ => Err(Error::Unreachable(
                "the session holding the locks ended".into(),
            )),
        };
        match relocked {
            Ok(()) => {}
            Err(e) if e.is_retryable() => {
                tracing::warn!(job_id = %prepared.spec.job, error = %e, "the source session holding the tables' locks was lost; locking again");
                run.guard =
                    Some(guard_session(&prepared.spec.source, &at.snapshot, &tables).await?);
            }
            Err(e) => return Err(e),
        }
        run.guard
            .take()
            .ok_or_else(|| Error::Internal("no session holds the tables' locks".into()))
    }

    /// Streaming, right after the copy: from the slot's consistent point.
    async fn stream_from_copy(
        &self,
        record: &mut JobRecord,
        run: &mut Run,
        at: &SnapshotAt,
    ) -> Result<godwit_common::job::CutoverRecord, JobError> {
        // The slot cannot be read while the session that exported the
        // snapshot still holds it.
        if let Some(holder) = run.holder.take() {
            holder.release().await;
        }
        record
            .advance(Phase::Streaming {
                from_lsn: at.consistent_lsn.clone(),
            })
            .map_err(JobError::Failed)?;
        self.stream(record).await
    }

    /// Streaming, for a job taken over while it streamed: its stream goes
    /// on (on whichever worker holds it) from the target ledger's position,
    /// which the slot still holds every change after.
    async fn stream_on(
        &self,
        prepared: &Prepared,
        record: &mut JobRecord,
    ) -> Result<godwit_common::job::CutoverRecord, JobError> {
        let spec = &prepared.spec;
        let slot = snapshot::slot_name(&spec.job);
        if !changes::slot_exists(spec, &slot)
            .await
            .map_err(JobError::Failed)?
        {
            return Err(JobError::Failed(Error::Precondition(format!(
                "job {} was streaming changes, but its slot {slot} is gone from the source: the target \
                 misses changes it cannot get back; migrate again into an empty target",
                spec.job
            ))));
        }
        tracing::warn!(job_id = %spec.job, "resuming the change stream of a job taken over");
        if record.tables.is_empty() {
            record.tables = prepared
                .tables
                .iter()
                .map(|t| PlannedTable {
                    checked: true,
                    ..planned_table(t, Vec::new())
                })
                .collect();
        }
        if record.phase() == JobPhase::CuttingOver {
            // A cutover that was running when its coordinator was lost
            // ended with it: its freeze was that coordinator's session.
            let from_lsn = match record.current() {
                Phase::CuttingOver { from_lsn } => from_lsn.clone(),
                _ => String::new(),
            };
            record
                .advance(Phase::Streaming { from_lsn })
                .map_err(JobError::Failed)?;
        }
        self.stream(record).await
    }

    /// Empties the tables an unfinished earlier run (or a coordinator that
    /// died) had started, in one transaction. Ownership goes first: a worker
    /// still loading under the old plan is waited for, then fenced out, so
    /// no old chunk can land after the tables were emptied.
    pub(crate) async fn reset_partial_tables(
        &self,
        target: &tokio_postgres::Client,
        prepared: &Prepared,
    ) -> Result<()> {
        let names: Vec<String> = prepared
            .tables
            .iter()
            .filter(|t| t.mapped.is_none())
            .map(|t| t.name.quoted())
            .collect();
        // A mapped table may hold other tenants' rows: only the job's slice
        // goes, and only if it holds no more rows than the job loaded into
        // it (rows the platform or another job put there since stay, and
        // stop the run instead).
        for mapped in prepared.tables.iter().filter_map(|t| t.mapped.as_ref()) {
            let row = target
                .query_one(
                    &format!(
                        "SELECT (SELECT count(*) FROM {} AS t WHERE {}), \
                                (SELECT coalesce(sum(rows), 0)::bigint FROM godwit.applied_chunks \
                                 WHERE job_id = $1 AND table_name = $2)",
                        mapped.target.quoted(),
                        mapped.views.1.slice
                    ),
                    &[&prepared.spec.job.as_str(), &mapped.target.to_string()],
                )
                .await
                .map_err(|e| {
                    Error::postgres(
                        format!("cannot count the job's rows in {}", mapped.target),
                        e,
                    )
                })?;
            let (held, loaded): (i64, i64) = (row.get(0), row.get(1));
            if held > loaded {
                return Err(Error::Precondition(format!(
                    "{} holds {held} rows in job {}'s slice ({}), but the job loaded {loaded}: the others were \
                     not written by it, and a re-run would delete them; move them out of the slice, or run \
                     the job under a new id into an empty slice",
                    mapped.target, prepared.spec.job, mapped.views.1.slice
                )));
            }
        }
        // Rows referencing others' go first: the tables are in copy order.
        let slices: String = prepared
            .tables
            .iter()
            .rev()
            .filter_map(|t| t.mapped.as_ref())
            .map(|m| {
                format!(
                    "DELETE FROM {} AS t WHERE {}; ",
                    m.target.quoted(),
                    m.views.1.slice
                )
            })
            .collect();
        // A re-run numbers the slice's rows again.
        let remapped: std::collections::BTreeSet<&godwit_common::mapping::remap::RemapKey> =
            prepared
                .tables
                .iter()
                .filter_map(|t| t.mapped.as_ref())
                .flat_map(|m| m.remaps.iter().map(|r| &r.key))
                .collect();
        let slices = slices + &remapped.iter().map(|k| k.forget()).collect::<String>();
        let truncate = if names.is_empty() {
            String::new()
        } else {
            format!("TRUNCATE {}; ", names.join(", "))
        };
        tracing::warn!(job_id = %prepared.spec.job, tables = prepared.tables.len(), "earlier run unfinished: reloading its tables");
        let job = prepared.spec.job.as_str().replace('\'', "''");
        target
            .batch_execute(&format!(
                "BEGIN; \
                 DELETE FROM godwit.partition_owners WHERE job_id = '{job}'; \
                 DELETE FROM godwit.applied_chunks WHERE job_id = '{job}'; \
                 DELETE FROM godwit.applied_changes WHERE job_id = '{job}'; \
                 {truncate}{slices}COMMIT"
            ))
            .await
            .map_err(|e| {
                Error::postgres("cannot reset the tables of the unfinished earlier run", e)
            })
    }

    pub(crate) async fn publish_plan(
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
                    .with_wave(table.wave)
                })
                .collect();
            work::publish(self.store.as_ref(), self.keyspace, &spec.job, &items).await?;
            let partitions = items.iter().map(|p| p.partition).collect();
            planned.push(planned_table(table, partitions));
        }
        tracing::info!(job_id = %spec.job, tables = planned.len(), partitions = next_partition, "plan published");
        Ok(planned)
    }

    /// Waits until every partition is copied; what they are then.
    pub(crate) async fn wait_for_partitions(
        &self,
        job: &godwit_common::ids::JobId,
        record: &JobRecord,
    ) -> Result<Vec<PartitionRecord>, JobError> {
        let expected: usize = record.tables.iter().map(|t| t.partitions.len()).sum();
        let partitions = work::await_done::<PartitionRecord, _, _>(
            self.store.clone(),
            self.keyspace,
            job,
            expected,
            || self.cancel_requested(job),
        )
        .await
        .map_err(|stopped| match stopped {
            work::Stopped::Cancelled => JobError::Cancelled(job.to_string()),
            work::Stopped::Failed(e) => JobError::Failed(e),
        })?;
        Ok(partitions)
    }

    pub(crate) async fn cancel_requested(&self, job: &godwit_common::ids::JobId) -> Result<bool> {
        Ok(self
            .store
            .get(&self.keyspace.job_control(job))
            .await?
            .as_deref()
            == Some(b"cancel".as_slice()))
    }
}
