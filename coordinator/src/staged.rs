//! What a job leaves behind for later: its sealed schema dump and manifest
//! in staging (what a replay trusts), and the audit records of its end.
//! Never reads the source.

use godwit_common::audit::AuditEvent;
use godwit_common::chunk::{self, ChunkId};
use godwit_common::job::JobRecord;
use godwit_common::pg::schema::SchemaDump;
use godwit_common::pg::{self, Side, ledger};
use godwit_common::sealed::SealedStaging;
use godwit_common::staging::Staging;
use godwit_common::state::{Manifest, StagedPartition};
use godwit_common::{Error, Result};

use crate::error::JobError;
use crate::summary::JobSummary;

/// What the audit trail keeps of a job's end: every chunk the target ledger
/// holds (with its SHA-256 and the data key that sealed it), then the
/// outcome.
pub(crate) async fn outcome_events(
    spec: &godwit_common::spec::JobSpec,
    result: &Result<JobSummary, JobError>,
) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    let key_id = match Staging::open(&spec.staging) {
        Ok(staging) => staging
            .get_wrapped_key(&spec.job)
            .await
            .ok()
            .flatten()
            .map(|w| w.key_id)
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    if let Ok(target) = pg::connect(&spec.target, Side::Target).await
        && let Ok(chunks) = ledger::chunk_digests(&target, spec.job.as_str()).await
    {
        for (table, partition, seq, sha256, rows) in chunks {
            events.push(
                AuditEvent::new("coordinator", "chunk.loaded", "ok").object(format!(
                    "{table} partition {partition} chunk {seq}: {rows} rows, sha256 {sha256}, data key {key_id}"
                )),
            );
        }
    }
    events.push(match result {
        Ok(summary) => AuditEvent::new("coordinator", "job.end", "done").object(format!(
            "{} table(s), {} rows, every table's count and checksum matched",
            summary.tables, summary.rows
        )),
        Err(JobError::Cancelled(_)) => AuditEvent::new("coordinator", "job.end", "cancelled")
            .reason("cancelled by an operator"),
        Err(e) => AuditEvent::new("coordinator", "job.end", "failed").reason(e.to_string()),
    });
    events
}

/// Seals the schema dump into the staging area, for replays.
pub(crate) async fn stage_schema(sealed: &SealedStaging, dump: &SchemaDump) -> Result<()> {
    let (staging, job, key) = (sealed.staging(), sealed.job(), sealed.key());
    for (name, path) in dump.files() {
        let bytes = tokio::fs::read(path).await.map_err(|source| Error::Io {
            what: "cannot read schema dump",
            path: path.to_owned(),
            source,
        })?;
        let frame = chunk::seal(&ChunkId::schema_file(job.as_str(), name), 0, &bytes, key)?;
        staging.put(&staging.schema_path(job, name), frame).await?;
    }
    Ok(())
}

/// Records what the staging area holds of a finished copy, with chunk counts
/// from the target ledger (the truth about what was loaded).
pub(crate) async fn write_manifest(
    sealed: &SealedStaging,
    target: &tokio_postgres::Client,
    record: &JobRecord,
    dump: &SchemaDump,
    sequences: Vec<(String, i64, bool)>,
    materialized_views: Vec<String>,
    schema_restored: bool,
) -> Result<()> {
    let job = &record.spec.job;
    let mut partitions = Vec::new();
    for (partition, chunks, rows) in ledger::partition_totals(target, job.as_str()).await? {
        let Some(table) = record
            .tables
            .iter()
            .find(|t| t.partitions.contains(&partition))
        else {
            continue;
        };
        partitions.push(StagedPartition {
            partition,
            table: table.name.clone(),
            chunks,
            rows,
        });
    }
    sealed
        .put_manifest(&Manifest {
            job: job.clone(),
            tables: record.tables.clone(),
            partitions,
            sequences,
            schema_files: dump
                .files()
                .iter()
                .map(|(name, _)| (*name).to_owned())
                .collect(),
            materialized_views,
            mapping: record.spec.mapping.as_ref().map(|m| m.canonical()),
            schema_for_record_only: !schema_restored,
        })
        .await
}

/// Seals the job's history beside its reports, for the debrief; a job
/// whose history cannot be staged says so and goes on (its rows and
/// verification do not depend on it). `sealed`: the job's staging, opened
/// once by the caller (it unwraps the job's key); `None` if it would not
/// open, which is said once where it was opened.
pub(crate) async fn stage_history(sealed: Option<&SealedStaging>, record: &JobRecord) {
    let Some(sealed) = sealed else {
        return;
    };
    if let Err(e) = godwit_common::history::store(sealed, &record.history).await {
        tracing::warn!(job_id = %record.spec.job, error = %e, "cannot stage the job's history: its debrief shows no timeline");
    }
}

/// The job's staging for its history, opened once; `None`, said, if it
/// does not open.
pub(crate) async fn history_staging(spec: &godwit_common::spec::JobSpec) -> Option<SealedStaging> {
    SealedStaging::open(spec)
        .await
        .inspect_err(|e| {
            tracing::warn!(job_id = %spec.job, error = %e, "cannot open the job's staging: its debrief shows no timeline");
        })
        .ok()
}
