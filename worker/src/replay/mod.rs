//! Replay: loads a finished job's staged chunks into a target without
//! connecting to the source. Every staged object is authenticated before
//! anything is written, so a tampered, truncated or foreign chunk leaves the
//! target untouched; loads go through the same ledger as a copy. A job
//! with a mapping replays through it: its tables land in the platform's
//! existing tables (an empty slice of them), under the mapping the copy
//! ran with, optionally masked and sampled for review ([`review`]).

pub mod review;

use bytes::Bytes;
use godwit_common::chunk::{self, ChunkId};
use godwit_common::job::PlannedTable;
use godwit_common::keys::DataKey;
use godwit_common::pg::ledger;
use godwit_common::pg::loader::{Chunk, PartitionLoader};
use godwit_common::pg::schema::SchemaDump;
use godwit_common::pg::{self, Side, catalog, large_objects};
use godwit_common::sealed::SealedStaging;
use godwit_common::spec::{JobSpec, TableName, unquote_ident};
use godwit_common::staging::{ObjectPath, Staging};
use godwit_common::state::{Manifest, StagedPartition};
use godwit_common::{Error, Result};
use sha2::{Digest, Sha256};

pub use review::ReviewOptions;
use review::TableReview;

#[derive(Debug, Clone, Copy, Default)]
pub struct ReplaySummary {
    pub tables: usize,
    pub chunks: u64,
    pub rows: u64,
    pub bytes_staged: u64,
    /// Columns masked on their way in (review masks).
    pub masked_columns: usize,
    /// Tables thinned by the sample.
    pub sampled_tables: usize,
}

/// Why a replay could not start; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Rejected(Error),
    #[error("{0}")]
    Failed(Error),
}

/// Replays `spec`'s staged copy into `target` (the spec's own target unless
/// given), as `options` ask for a review copy.
/// `progress` is told the chunks loaded so far and the staged copy's
/// chunks, after each chunk.
pub async fn replay(
    spec: &JobSpec,
    target: &str,
    options: ReviewOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ReplaySummary, ReplayError> {
    let rejected = ReplayError::Rejected;
    let failed = ReplayError::Failed;
    let job = &spec.job;
    let sealed = SealedStaging::open(spec).await.map_err(rejected)?;
    let (staging, key) = (sealed.staging(), sealed.key());
    let manifest = sealed.get_manifest().await.map_err(rejected)?.ok_or_else(|| {
        rejected(Error::Spec(format!(
            "staging {} holds no manifest for job {job}: only a job whose copy finished can be replayed",
            staging.url()
        )))
    })?;

    refuse_another_mapping(spec, &manifest).map_err(rejected)?;
    let token_key = review_key(spec, &manifest, options).map_err(rejected)?;

    let mut client = pg::connect(target, Side::Target).await.map_err(rejected)?;
    refuse_occupied_target(&client, target, &manifest)
        .await
        .map_err(rejected)?;

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
    ledger::record_mapping(&client, job.as_str(), manifest.mapping.as_deref())
        .await
        .map_err(failed)?;
    let dump = SchemaDump::from_dir(schema_dir.path());
    let restores_schema = !manifest.schema_for_record_only;
    if restores_schema {
        dump.restore_pre_data(target).await.map_err(failed)?;
    }
    let (created_tables, created_keys) = godwit_common::mapping::create::in_order(
        manifest.tables.iter().filter_map(|t| t.creates.as_ref()),
    );
    if !created_tables.is_empty() {
        client.batch_execute(&created_tables).await.map_err(|e| {
            failed(Error::postgres(
                "cannot create the mapped tables the job created under new names",
                e,
            ))
        })?;
    }
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
    let mut landed: std::collections::BTreeMap<&TableName, u64> = std::collections::BTreeMap::new();
    if token_key.is_some() {
        summary.masked_columns = manifest.tables.iter().map(|t| t.review_masks.len()).sum();
    }
    if options.sample.is_some() {
        summary.sampled_tables = manifest
            .tables
            .iter()
            .filter(|t| review::thinned(t))
            .count();
    }
    let staged_chunks: u64 = manifest.partitions.iter().map(|p| p.chunks).sum();
    for partition in &manifest.partitions {
        let table = planned(&manifest, partition).map_err(failed)?;
        let review = TableReview::new(options, table, token_key.as_ref(), spec.customer.as_str());
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
            let (tuples, rows) = if review.keeps_everything() {
                (plain, header.rows)
            } else {
                review
                    .apply(partition.partition, seq, &plain)
                    .map_err(failed)?
            };
            *landed.entry(&partition.table).or_default() += rows;
            if rows == 0 {
                continue;
            }
            let digest = Sha256::digest(&tuples).to_vec();
            loader
                .load(Chunk {
                    seq,
                    rows,
                    sha256: &digest,
                    last_ctid: None,
                    tuples: Bytes::from(tuples),
                })
                .await
                .map_err(failed)?;
            summary.chunks += 1;
            progress(summary.chunks, staged_chunks);
            summary.rows += rows;
        }
    }
    if restores_schema {
        dump.restore_post_data(target).await.map_err(failed)?;
    }
    if !created_keys.is_empty() {
        client.batch_execute(&created_keys).await.map_err(|e| {
            failed(Error::postgres(
                "cannot add the keys and indexes of the mapped tables created under new names",
                e,
            ))
        })?;
    }
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
    for table in manifest.tables.iter().filter(|t| t.slice.is_some()) {
        let columns: Vec<String> = table
            .copy_columns
            .iter()
            .map(|c| unquote_ident(c))
            .collect();
        catalog::raise_sequences_past_values(&client, &table.name, &columns)
            .await
            .map_err(failed)?;
    }
    ledger::mark_job(&client, job.as_str(), true, true)
        .await
        .map_err(failed)?;

    for table in &manifest.tables {
        let expected = landed.get(&table.name).copied().unwrap_or(0);
        let loaded = match &table.slice {
            Some(slice) => rows_in_slice(&client, table, slice).await.map_err(failed)?,
            None => {
                large_objects::fingerprint_of(&client, &table.name)
                    .await
                    .map_err(failed)?
                    .rows
            }
        };
        if loaded != expected {
            return Err(failed(Error::Verification(format!(
                "{} holds {loaded} rows after the replay, the staged copy has {expected}",
                table.name
            ))));
        }
    }
    Ok(summary)
}

/// Refuses a replay under another mapping than the copy ran with: the
/// staged rows are as that mapping made them.
fn refuse_another_mapping(spec: &JobSpec, manifest: &Manifest) -> Result<()> {
    let current = spec.mapping.as_ref().map(|m| m.canonical());
    if current == manifest.mapping {
        return Ok(());
    }
    let differences = godwit_common::mapping::MappingSpec::differences(
        manifest.mapping.as_deref(),
        spec.mapping.as_ref(),
    );
    Err(Error::Precondition(format!(
        "job {}'s staged copy was made under another mapping than the spec's; a replay carries the rows as \
         that mapping made them: put the mapping back as it was, or run the job again under the new one:\n  - {}",
        spec.job,
        differences.join("\n  - ")
    )))
}

/// The customer's token key, when the replay masks columns with it; a
/// masked replay of a job whose mapping masks nothing is refused.
fn review_key(
    spec: &JobSpec,
    manifest: &Manifest,
    options: ReviewOptions,
) -> Result<Option<godwit_common::mapping::mask::TokenKey>> {
    if !options.masked {
        return Ok(None);
    }
    let reviewed = manifest.tables.iter().any(|t| !t.review_masks.is_empty());
    let masked = manifest.tables.iter().any(|t| !t.masks.is_empty());
    if !reviewed && !masked {
        return Err(Error::Spec(format!(
            "--masked: job {}'s mapping masks no column, so this copy would hold every value as the source \
             has it: add `mask:` rules (`masked_for: review` masks only review copies) and run the job, or \
             replay without --masked",
            spec.job
        )));
    }
    if !reviewed {
        return Ok(None);
    }
    Ok(Some(
        godwit_common::keyring::CustomerKeys::for_spec(spec)?.token_key(),
    ))
}

/// Refuses a target that holds any of the tables a replay creates, lacks
/// a platform table the mapping lands in, or holds rows in the job's
/// slice of one: nothing is written then.
async fn refuse_occupied_target(
    client: &tokio_postgres::Client,
    target: &str,
    manifest: &Manifest,
) -> Result<()> {
    // Tables the replay creates (from the dump, or, landing under a new
    // name, as the copy created them) must be absent; the platform's
    // tables present.
    let (landed, created): (Vec<&PlannedTable>, Vec<&PlannedTable>) = manifest
        .tables
        .iter()
        .partition(|t| t.slice.is_some() && t.creates.is_none());
    let names: Vec<TableName> = created.iter().map(|t| t.name.clone()).collect();
    let existing = catalog::existing_tables(client, &names).await?;
    if !existing.is_empty() {
        let list: Vec<String> = existing.iter().map(ToString::to_string).collect();
        return Err(Error::Precondition(format!(
            "the target {} already has table(s) {}: replay only into a database without them",
            pg::describe(target),
            list.join(", ")
        )));
    }
    let names: Vec<TableName> = landed.iter().map(|t| t.name.clone()).collect();
    let present = catalog::existing_tables(client, &names).await?;
    for table in landed {
        if !present.contains(&table.name) {
            return Err(Error::Precondition(format!(
                "the target {} has no table {}, where the mapping lands rows: a replay does not create the \
                 platform's tables; create the platform's schema there first",
                pg::describe(target),
                table.name
            )));
        }
        let shape = format!(
            "SELECT {} FROM {} LIMIT 0",
            table.copy_columns.join(", "),
            table.name.quoted()
        );
        if let Err(e) = client.prepare(&shape).await {
            return Err(Error::Precondition(format!(
                "{} on the target {} cannot take the mapped columns ({}): {}; give it the platform's \
                 definition",
                table.name,
                pg::describe(target),
                table.copy_columns.join(", "),
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned())
            )));
        }
        let slice = table.slice.as_deref().unwrap_or("true");
        let held = rows_in_slice(client, table, slice).await?;
        if held > 0 {
            return Err(Error::Precondition(format!(
                "{} on the target {} already holds {held} rows in the job's slice ({slice}): a replay \
                 loads only into an empty slice; delete them there, or replay into another database",
                table.name,
                pg::describe(target)
            )));
        }
    }
    Ok(())
}

/// Rows of `table` in the job's slice.
async fn rows_in_slice(
    client: &tokio_postgres::Client,
    table: &PlannedTable,
    slice: &str,
) -> Result<u64> {
    let count: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} AS t WHERE {slice}",
                table.name.quoted()
            ),
            &[],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot count the job's rows in {}", table.name), e))?
        .get(0);
    Ok(u64::try_from(count).unwrap_or(0))
}

fn chunk_id(job: &str, partition: &StagedPartition, seq: u64) -> ChunkId {
    ChunkId {
        job_id: job.to_owned(),
        table: partition.table.to_string(),
        partition: partition.partition,
        seq,
    }
}

/// The planned table a partition belongs to (several source tables may
/// land in one table).
fn planned<'a>(manifest: &'a Manifest, partition: &StagedPartition) -> Result<&'a PlannedTable> {
    let name = &partition.table;
    manifest
        .tables
        .iter()
        .find(|t| &t.name == name && t.partitions.contains(&partition.partition))
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
