//! Replay: loads a finished job's staged chunks into a target without
//! connecting to the source. Every staged object is authenticated before
//! anything is written, so a tampered, truncated or foreign chunk leaves the
//! target untouched; loads go through the same ledger as a copy.

use bytes::Bytes;
use godwit_common::chunk::{self, ChunkId};
use godwit_common::job::PlannedTable;
use godwit_common::keys::DataKey;
use godwit_common::pg::ledger;
use godwit_common::pg::loader::{Chunk, PartitionLoader};
use godwit_common::pg::schema::SchemaDump;
use godwit_common::pg::{self, Side, catalog, large_objects};
use godwit_common::sealed::SealedStaging;
use godwit_common::spec::{JobSpec, TableName};
use godwit_common::staging::{ObjectPath, Staging};
use godwit_common::state::{Manifest, StagedPartition};
use godwit_common::{Error, Result};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, Default)]
pub struct ReplaySummary {
    pub tables: usize,
    pub chunks: u64,
    pub rows: u64,
    pub bytes_staged: u64,
}

/// Why a replay could not start; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Rejected(Error),
    #[error("{0}")]
    Failed(Error),
}

/// Replays `spec`'s staged copy into `target` (the spec's own target unless given).
pub async fn replay(spec: &JobSpec, target: &str) -> Result<ReplaySummary, ReplayError> {
    let rejected = ReplayError::Rejected;
    let failed = ReplayError::Failed;
    let job = &spec.job;
    spec.refuse_unapplied_mapping("a replay")
        .map_err(rejected)?;
    let sealed = SealedStaging::open(spec).await.map_err(rejected)?;
    let (staging, key) = (sealed.staging(), sealed.key());
    let manifest = sealed.get_manifest().await.map_err(rejected)?.ok_or_else(|| {
        rejected(Error::Spec(format!(
            "staging {} holds no manifest for job {job}: only a job whose copy finished can be replayed",
            staging.url()
        )))
    })?;

    let mut client = pg::connect(target, Side::Target).await.map_err(rejected)?;
    let names: Vec<TableName> = manifest.tables.iter().map(|t| t.name.clone()).collect();
    let existing = catalog::existing_tables(&client, &names)
        .await
        .map_err(rejected)?;
    if !existing.is_empty() {
        let list: Vec<String> = existing.iter().map(ToString::to_string).collect();
        return Err(rejected(Error::Precondition(format!(
            "the target {} already has table(s) {}: replay only into a database without them",
            pg::describe(target),
            list.join(", ")
        ))));
    }

    // Authenticate everything first: a bad object must not leave a half-loaded target.
    let schema_dir = tempfile::tempdir().map_err(|source| {
        failed(Error::Io {
            what: "cannot create a temporary directory",
            path: std::env::temp_dir(),
            source,
        })
    })?;
    for name in &manifest.schema_files {
        let object = staging.schema_path(job, name);
        let id = ChunkId::schema_file(job.as_str(), name);
        let (_, plain, _) = open_object(staging, &object, &id, key)
            .await
            .map_err(failed)?;
        let path = schema_dir.path().join(name);
        std::fs::write(&path, plain).map_err(|source| {
            failed(Error::Io {
                what: "cannot write schema dump",
                path,
                source,
            })
        })?;
    }
    let mut summary = ReplaySummary {
        tables: manifest.tables.len(),
        ..ReplaySummary::default()
    };
    for partition in &manifest.partitions {
        for seq in 0..partition.chunks {
            let path =
                staging.chunk_path(job, &partition.table.to_string(), partition.partition, seq);
            let (header, _, _) =
                open_object(staging, &path, &chunk_id(job.as_str(), partition, seq), key)
                    .await
                    .map_err(failed)?;
            if header.rows == 0 {
                return Err(failed(Error::ChunkRejected {
                    object: staging.describe(&path),
                    reason: "holds no rows".into(),
                }));
            }
        }
    }

    ledger::ensure_schema(&client).await.map_err(failed)?;
    let dump = SchemaDump::from_dir(schema_dir.path());
    dump.restore_pre_data(target).await.map_err(failed)?;
    let carries_large_objects = manifest
        .tables
        .iter()
        .any(|t| large_objects::is_load_table(&t.name));
    if carries_large_objects {
        large_objects::prepare_target(&client, job)
            .await
            .map_err(failed)?;
    }
    let fence = i64::from(std::process::id());
    for partition in &manifest.partitions {
        let table = planned(&manifest, &partition.table).map_err(failed)?;
        let mut loader = PartitionLoader::take(target, job, table, partition.partition, fence)
            .await
            .map_err(failed)?;
        for seq in 0..partition.chunks {
            let path =
                staging.chunk_path(job, &partition.table.to_string(), partition.partition, seq);
            let (header, plain, staged) =
                open_object(staging, &path, &chunk_id(job.as_str(), partition, seq), key)
                    .await
                    .map_err(failed)?;
            summary.bytes_staged += staged;
            let digest = Sha256::digest(&plain).to_vec();
            loader
                .load(Chunk {
                    seq,
                    rows: header.rows,
                    sha256: &digest,
                    last_ctid: None,
                    tuples: Bytes::from(plain),
                })
                .await
                .map_err(failed)?;
            summary.chunks += 1;
            summary.rows += header.rows;
        }
    }
    dump.restore_post_data(target).await.map_err(failed)?;
    if carries_large_objects {
        large_objects::materialize(&mut client, job)
            .await
            .map_err(failed)?;
    }
    godwit_common::pg::schema::refresh_materialized_views(&client, &manifest.materialized_views)
        .await
        .map_err(failed)?;
    catalog::set_sequences(&client, &manifest.sequences)
        .await
        .map_err(failed)?;
    ledger::mark_job(&client, job.as_str(), true, true)
        .await
        .map_err(failed)?;

    for table in &manifest.tables {
        let expected: u64 = manifest
            .partitions
            .iter()
            .filter(|p| p.table == table.name)
            .map(|p| p.rows)
            .sum();
        let loaded = large_objects::fingerprint_of(&client, &table.name)
            .await
            .map_err(failed)?
            .rows;
        if loaded != expected {
            return Err(failed(Error::Verification(format!(
                "{} holds {loaded} rows after the replay, the staged copy has {expected}",
                table.name
            ))));
        }
    }
    Ok(summary)
}

fn chunk_id(job: &str, partition: &StagedPartition, seq: u64) -> ChunkId {
    ChunkId {
        job_id: job.to_owned(),
        table: partition.table.to_string(),
        partition: partition.partition,
        seq,
    }
}

fn planned<'a>(manifest: &'a Manifest, name: &TableName) -> Result<&'a PlannedTable> {
    manifest
        .tables
        .iter()
        .find(|t| &t.name == name)
        .ok_or_else(|| Error::Corrupt {
            what: format!("manifest of job {}", manifest.job),
            reason: format!("partition of unplanned table {name}"),
        })
}

async fn open_object(
    staging: &Staging,
    path: &ObjectPath,
    id: &ChunkId,
    key: &DataKey,
) -> Result<(godwit_proto::v1::ChunkHeader, Vec<u8>, u64)> {
    let object = staging.describe(path);
    let frame = staging.get(path).await?;
    let (header, plain) = chunk::open(&object, &frame, id, key)?;
    Ok((header, plain, frame.len() as u64))
}
