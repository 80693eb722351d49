//! The job driver: registers a job, takes over one a previous leader left,
//! and runs a job through its phases (see `phases`) to its end, then
//! releases what it held on the source and records the outcome. Also the
//! pieces the phases share: the plan's publication, the wait for the
//! copy, the final check.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use godwit_common::audit::{AuditEvent, AuditLog};
use godwit_common::job::{JobRecord, Phase, PhaseTimings};
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::LeaseStore;
use godwit_common::pg::snapshot;
use godwit_common::state;
use godwit_common::state::now_unix_ms;
use godwit_common::work::WorkKind;
use godwit_common::{Error, Result};

use crate::changes;
use crate::error::JobError;
use crate::leadership::JobRecords;
use crate::phases::{Phases, Run};
pub use crate::preflight::{Prepared, preflight};
use crate::staged::outcome_events;
pub use crate::summary::JobSummary;

pub struct JobDriver {
    pub(crate) store: Arc<dyn LeaseStore>,
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
    /// Records a job just submitted; `trace` names the span that submitted
    /// it, when its caller sent one.
    pub async fn register(
        &self,
        prepared: &Prepared,
        trace: Option<godwit_common::telemetry::traces::SpanRef>,
    ) -> Result<(), JobError> {
        let key = self.keyspace.job_record(&prepared.spec.job);
        let mut record = JobRecord::submitted(prepared.spec.clone(), now_unix_ms());
        record.trace = Some(godwit_common::telemetry::traces::JobTrace::start(trace));
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

    /// Takes over a job a previous leader left unfinished (or starts one
    /// just submitted). A job that was streaming streams on from the target
    /// ledger: it goes back to streaming (a cutover in flight was rolled back
    /// by PostgreSQL when its session ended). Any other job is planned again
    /// under a new snapshot, since its exported snapshot died with the
    /// previous leader, and every table it had started is reloaded (without
    /// change replay, rows copied under the old snapshot cannot be brought
    /// to the new one). The old plan's work items and leases are removed,
    /// which fences progress writes of workers still busy with it; their
    /// target writes are fenced by the reset of the target ledger.
    pub async fn take_over(&self, prepared: &Prepared) -> Result<(), JobError> {
        let job = &prepared.spec.job;
        let Some(mut record) = self.records.load(job).await.map_err(JobError::Failed)? else {
            return Err(JobError::NotFound(job.to_string()));
        };
        match record.current().clone() {
            Phase::Streaming { .. } => return Ok(()),
            Phase::CuttingOver { from_lsn } => {
                record
                    .advance(Phase::Streaming { from_lsn })
                    .map_err(JobError::Failed)?;
                return self.put_record(&record).await.map_err(JobError::Failed);
            }
            Phase::Planning if record.tables.is_empty() => {}
            _ => {
                tracing::warn!(job_id = %job, "taking over an unfinished job: new snapshot, its tables reloaded");
            }
        }
        self.store
            .delete_prefix(&self.keyspace.work_prefix(job, WorkKind::Copy))
            .await
            .map_err(JobError::Failed)?;
        self.store
            .delete(&self.keyspace.active(job))
            .await
            .map_err(JobError::Failed)?;
        record.advance(Phase::Planning).map_err(JobError::Failed)?;
        record.error = None;
        record.tables = Vec::new();
        record.finished_at_unix_ms = None;
        record.phases = PhaseTimings::default();
        record.changes = None;
        self.put_record(&record).await.map_err(JobError::Failed)
    }

    /// Runs a registered job to its end.
    pub async fn execute(&self, prepared: Prepared) -> Result<JobSummary, JobError> {
        let started = Instant::now();
        let job = prepared.spec.job.clone();
        let Some(mut record) = self.records.load(&job).await.map_err(JobError::Failed)? else {
            return Err(JobError::NotFound(job.to_string()));
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
        let outcome = match Run::open(&prepared).await {
            Ok(mut run) => {
                let phases = Phases {
                    store: &self.store,
                    keyspace: &self.keyspace,
                    records: &self.records,
                };
                let outcome = phases.drive(&prepared, &mut record, &mut run).await;
                if let Some(holder) = run.holder.take() {
                    holder.release().await;
                }
                outcome
            }
            Err(e) => Err(JobError::Failed(e)),
        };
        let leader = self.keyspace.leader();
        let disowned = match &outcome {
            Err(JobError::Failed(e @ Error::Conflict(_))) => Some(e),
            Err(JobError::Failed(e @ Error::LeaseLost { key, .. })) if *key == leader => Some(e),
            _ => None,
        };
        if let Some(e) = disowned {
            // Another coordinator drives the job now: its slot, publication
            // and record are that one's to keep.
            tracing::warn!(job_id = %job, error = %e, "this coordinator no longer drives the job");
            return Err(JobError::Failed(Error::Conflict(e.to_string())));
        }
        let _ = self.store.delete(&self.keyspace.active(&job)).await;
        let slot = snapshot::slot_name(&job);
        let mut not_restored = None;
        // A worker may still be reading the slot of a stream that ended:
        // its session is ended with the slot.
        if let Err(e) =
            snapshot::drop_slot_now(&prepared.spec.source, &slot, Duration::from_secs(10)).await
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
                not_restored = Some(format!(
                    "the target's triggers and foreign keys are not all as the source defines them \
                     (godwit.replica_mode on the target lists them): {e}"
                ));
            }
        }
        record.finished_at_unix_ms = Some(now_unix_ms());
        let result = match outcome {
            Ok(summary) => {
                record.advance(Phase::Done).map_err(JobError::Failed)?;
                // The rows are carried and verified; what is left undone on
                // the target's objects is shown with the job, not only logged.
                record.error = not_restored;
                Ok(JobSummary {
                    duration: started.elapsed(),
                    ..summary
                })
            }
            Err(JobError::Cancelled(id)) => {
                let _ = record.advance(Phase::Cancelled);
                record.error = Some("cancelled by an operator".into());
                Err(JobError::Cancelled(id))
            }
            Err(e) => {
                let _ = record.advance(Phase::Failed);
                record.error = Some(e.to_string());
                Err(e)
            }
        };
        crate::timeline::finished(&mut record);
        if let Err(e) = self.put_record(&record).await {
            tracing::error!(job_id = %job, error = %e, "cannot record the job's outcome");
        }
        let staging = crate::staged::history_staging(&prepared.spec).await;
        crate::staged::stage_history(staging.as_ref(), &record).await;
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

    pub(crate) async fn put_record(&self, record: &JobRecord) -> Result<()> {
        self.records.save(record).await
    }
}

#[cfg(test)]
mod tests {
    use godwit_common::job::{JobPhase, PlannedTable, SnapshotAt};
    use godwit_common::lease::MemoryStore;
    use godwit_common::pg::ledger::JobMarks;
    use godwit_common::state::BlockRange;
    use godwit_common::work::WorkState;
    use godwit_common::work::{self, PartitionRecord};

    use super::*;

    fn prepared() -> Prepared {
        let spec = crate::test_support::spec("j1", "acme");
        Prepared {
            spec,
            tables: Vec::new(),
            marks: JobMarks {
                known: true,
                pre_data_done: true,
                post_data_done: false,
                mapping: None,
            },
        }
    }

    fn at() -> SnapshotAt {
        SnapshotAt {
            snapshot: "00000003-00000002-1".into(),
            consistent_lsn: "0/16B3748".into(),
        }
    }

    /// A registered job moved to `phases` in order, with one copy item.
    async fn job_at(phases: &[Phase]) -> (JobDriver, Prepared) {
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
        let driver = JobDriver::new(store.clone(), Keyspace::new("/t"));
        let prepared = prepared();
        driver.register(&prepared, None).await.expect("register");
        let mut record = driver
            .records
            .load(&prepared.spec.job)
            .await
            .expect("load")
            .expect("registered");
        for phase in phases {
            record.advance(phase.clone()).expect("allowed");
        }
        driver.put_record(&record).await.expect("save");
        let item = PartitionRecord::pending(
            prepared.spec.job.clone(),
            0,
            godwit_common::spec::TableName::parse("public.orders").expect("name"),
            BlockRange {
                start: 0,
                end: None,
            },
        );
        work::publish(
            store.as_ref(),
            &driver.keyspace,
            &prepared.spec.job,
            &[item],
        )
        .await
        .expect("publish");
        (driver, prepared)
    }

    async fn phase_of(driver: &JobDriver, prepared: &Prepared) -> Phase {
        let record: JobRecord = state::load(
            driver.store.as_ref(),
            &driver.keyspace.job_record(&prepared.spec.job),
        )
        .await
        .expect("store")
        .expect("record");
        record.current().clone()
    }

    #[tokio::test]
    async fn a_job_taken_over_mid_copy_plans_again_and_its_old_plan_is_gone() {
        let (driver, prepared) = job_at(&[Phase::Copying(at())]).await;
        driver.take_over(&prepared).await.expect("take over");
        assert_eq!(phase_of(&driver, &prepared).await, Phase::Planning);
        let left: Vec<PartitionRecord> =
            work::list(driver.store.as_ref(), &driver.keyspace, &prepared.spec.job)
                .await
                .expect("list");
        assert!(
            left.is_empty(),
            "the old plan's partitions stayed: {left:?}"
        );
    }

    #[tokio::test]
    async fn a_job_taken_over_while_streaming_streams_on_and_a_cutover_in_flight_is_undone() {
        let streaming = Phase::Streaming {
            from_lsn: "0/16B3748".into(),
        };
        let (driver, prepared) = job_at(&[
            Phase::Copying(at()),
            Phase::Finalizing(at()),
            streaming.clone(),
        ])
        .await;
        driver.take_over(&prepared).await.expect("take over");
        assert_eq!(phase_of(&driver, &prepared).await, streaming);

        let (driver, prepared) = job_at(&[
            Phase::Copying(at()),
            Phase::Finalizing(at()),
            streaming.clone(),
            Phase::CuttingOver {
                from_lsn: "0/16B3748".into(),
            },
        ])
        .await;
        driver.take_over(&prepared).await.expect("take over");
        assert_eq!(phase_of(&driver, &prepared).await, streaming);
    }

    #[tokio::test]
    async fn a_record_changed_under_its_driver_is_a_conflict_not_overwritten() {
        let (driver, prepared) = job_at(&[Phase::Copying(at())]).await;
        let mut mine = driver
            .records
            .load(&prepared.spec.job)
            .await
            .expect("load")
            .expect("record");
        // Another writer moves the job on behind this driver's back.
        let other = JobDriver::new(driver.store.clone(), driver.keyspace.clone());
        let mut theirs = other
            .records
            .load(&prepared.spec.job)
            .await
            .expect("load")
            .expect("record");
        theirs.advance(Phase::Failed).expect("allowed");
        other.put_record(&theirs).await.expect("first write wins");
        mine.advance(Phase::Finalizing(at())).expect("allowed");
        let refused = driver.put_record(&mine).await.expect_err("stale version");
        assert_eq!(refused.kind(), godwit_common::ErrorKind::Conflict);
        assert_eq!(phase_of(&driver, &prepared).await.kind(), JobPhase::Failed);
    }

    #[tokio::test]
    async fn the_copy_phase_ends_when_every_partition_is_done_and_sums_them() {
        let (driver, prepared) = job_at(&[Phase::Copying(at())]).await;
        let job = &prepared.spec.job;
        let mut record = driver
            .records
            .load(job)
            .await
            .expect("load")
            .expect("record");
        record.tables = vec![PlannedTable {
            name: godwit_common::spec::TableName::parse("public.orders").expect("name"),
            copy_columns: Vec::new(),
            format: Default::default(),
            estimated_bytes: 0,
            partitions: vec![0],
            source_rows: None,
            checked: false,
            source_relation: None,
            masks: Vec::new(),
            review_masks: Vec::new(),
            slice: None,
            referenced: false,
            remaps: Vec::new(),
            creates: None,
        }];
        let mut items: Vec<PartitionRecord> =
            work::list(driver.store.as_ref(), &driver.keyspace, job)
                .await
                .expect("list");
        items[0].state = WorkState::Done;
        items[0].rows = 7;
        work::publish(driver.store.as_ref(), &driver.keyspace, job, &items)
            .await
            .expect("publish");
        let phases = Phases {
            store: &driver.store,
            keyspace: &driver.keyspace,
            records: &driver.records,
        };
        let totals = crate::summary::CopyTotals::of(
            &phases
                .wait_for_partitions(job, &record)
                .await
                .expect("all done"),
        );
        assert_eq!(totals.rows, 7);
    }
}
