//! The target-side ledger in schema `godwit`: the truth about which chunks
//! have been loaded. A chunk's rows and its ledger row commit in one
//! transaction, so a retried or resumed chunk is applied once or skipped,
//! never doubled.

use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::Client;

use crate::pgcopy::{self, CopyFormat, Ctid};
use crate::{Error, Result};

pub const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS godwit;
CREATE TABLE IF NOT EXISTS godwit.applied_chunks (
    job_id     text        NOT NULL,
    partition  integer     NOT NULL,
    seq        bigint      NOT NULL,
    table_name text        NOT NULL,
    rows       bigint      NOT NULL,
    sha256     bytea       NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, partition, seq)
);
-- Where the chunk's last row sat in the source, under the job's snapshot:
-- a resumed partition continues after it instead of re-reading the source.
ALTER TABLE godwit.applied_chunks ADD COLUMN IF NOT EXISTS last_ctid text;
-- The fencing token of each partition's current holder: a chunk loads only
-- under the token that took the partition last, so a holder that lost its
-- lease (paused, partitioned away) can never write after its successor.
CREATE TABLE IF NOT EXISTS godwit.partition_owners (
    job_id    text    NOT NULL,
    partition integer NOT NULL,
    token     bigint  NOT NULL,
    PRIMARY KEY (job_id, partition)
);
-- The end of the last source transaction a job's change stream applied;
-- written in the same transaction as the changes, so a change is applied
-- once whatever the slot's position says.
CREATE TABLE IF NOT EXISTS godwit.applied_changes (
    job_id     text        PRIMARY KEY,
    lsn        pg_lsn      NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- The fencing token of the stream's current holder, as for partitions.
ALTER TABLE godwit.applied_changes ADD COLUMN IF NOT EXISTS token bigint;
CREATE TABLE IF NOT EXISTS godwit.jobs (
    job_id         text PRIMARY KEY,
    pre_data_done  boolean NOT NULL DEFAULT false,
    post_data_done boolean NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- The canonical form of the job's mapping when it first wrote: a resumed
-- or re-run job whose mapping changed is refused against it.
ALTER TABLE godwit.jobs ADD COLUMN IF NOT EXISTS mapping text;
";

pub async fn ensure_schema(client: &Client) -> Result<()> {
    client
        .batch_execute(&format!(
            "{SCHEMA_SQL}{}{}",
            super::changed_keys::SCHEMA_SQL,
            crate::mapping::remap::SCHEMA_SQL
        ))
        .await
        .map_err(|e| Error::postgres("cannot create the godwit ledger schema on the target", e))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobMarks {
    pub known: bool,
    pub pre_data_done: bool,
    pub post_data_done: bool,
    /// The canonical mapping the job first wrote with (see
    /// [`record_mapping`]); None without one.
    pub mapping: Option<String>,
}

pub async fn job_marks(client: &Client, job: &str) -> Result<JobMarks> {
    let exists = client
        .query_one("SELECT to_regclass('godwit.jobs') IS NOT NULL", &[])
        .await
        .map_err(|e| Error::postgres("cannot read the target ledger", e))?;
    if !exists.get::<_, bool>(0) {
        return Ok(JobMarks::default());
    }
    let row = client
        .query_opt(
            // Through the row's JSON: a ledger from before the column
            // existed reads as no mapping.
            "SELECT pre_data_done, post_data_done, to_jsonb(j) ->> 'mapping' \
             FROM godwit.jobs AS j WHERE job_id = $1",
            &[&job],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the target ledger", e))?;
    Ok(row
        .map(|row| JobMarks {
            known: true,
            pre_data_done: row.get(0),
            post_data_done: row.get(1),
            mapping: row.get(2),
        })
        .unwrap_or_default())
}

pub async fn mark_job(
    client: &Client,
    job: &str,
    pre_data_done: bool,
    post_data_done: bool,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO godwit.jobs (job_id, pre_data_done, post_data_done) VALUES ($1, $2, $3) \
             ON CONFLICT (job_id) DO UPDATE SET pre_data_done = EXCLUDED.pre_data_done, \
             post_data_done = EXCLUDED.post_data_done, updated_at = now()",
            &[&job, &pre_data_done, &post_data_done],
        )
        .await
        .map_err(|e| Error::postgres("cannot update the target ledger", e))?;
    Ok(())
}

/// Records the canonical form of the job's mapping (None: without one)
/// beside its marks, before the job first writes anything else.
pub async fn record_mapping(client: &Client, job: &str, mapping: Option<&str>) -> Result<()> {
    client
        .execute(
            "INSERT INTO godwit.jobs (job_id, mapping) VALUES ($1, $2) \
             ON CONFLICT (job_id) DO UPDATE SET mapping = EXCLUDED.mapping, updated_at = now()",
            &[&job, &mapping],
        )
        .await
        .map_err(|e| Error::postgres("cannot record the job's mapping in the target ledger", e))?;
    Ok(())
}

/// How long a takeover waits for the previous holder's load to commit
/// before ending that session: its lease has expired, so it is stale.
const STALE_HOLDER_WAIT: Duration = Duration::from_secs(1);

/// Makes `token` the partition's only writer. A load in flight under the
/// previous token holds the owner row: the takeover waits briefly for it to
/// commit, then terminates that session (a holder frozen mid-load would
/// otherwise block the partition forever), so the resume point read
/// afterwards is final.
pub async fn take_partition(
    client: &Client,
    target: &str,
    job: &str,
    partition: u32,
    token: i64,
) -> Result<()> {
    let partition = i32::try_from(partition)
        .map_err(|_| Error::Internal("partition number overflows".into()))?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&job, &partition, &token];
    let upsert = client.execute(
        "INSERT INTO godwit.partition_owners (job_id, partition, token) VALUES ($1, $2, $3) \
         ON CONFLICT (job_id, partition) DO UPDATE SET token = EXCLUDED.token",
        &params,
    );
    outwait_holder(client, target, upsert).await.map_err(|e| {
        Error::postgres("cannot record the partition's new holder on the target", e)
    })?;
    Ok(())
}

/// Makes `token` the only writer of the job's change stream (its ledger
/// row exists: see `apply::start_ledger`), waiting out a previous holder's
/// transaction as `take_partition` does.
pub async fn take_stream(client: &Client, target: &str, job: &str, token: i64) -> Result<()> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&job, &token];
    let update = client.execute(
        "UPDATE godwit.applied_changes SET token = $2 WHERE job_id = $1",
        &params,
    );
    let taken = outwait_holder(client, target, update)
        .await
        .map_err(|e| Error::postgres("cannot record the stream's new holder on the target", e))?;
    if taken != 1 {
        return Err(Error::Internal(format!(
            "the target ledger has no change position for job {job}"
        )));
    }
    Ok(())
}

/// Runs `write` (which takes an owner row); while it waits on a previous
/// holder's session, that session is ended once `STALE_HOLDER_WAIT` has passed.
async fn outwait_holder(
    client: &Client,
    target: &str,
    write: impl std::future::Future<Output = std::result::Result<u64, tokio_postgres::Error>>,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let own_pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    tokio::pin!(write);
    loop {
        tokio::select! {
            done = &mut write => return done,
            () = tokio::time::sleep(STALE_HOLDER_WAIT) => {
                let Ok(other) = super::connect(target, super::Side::Target).await else {
                    continue;
                };
                let ended = other
                    .query(
                        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE pid = ANY (pg_blocking_pids($1)) AND application_name = 'godwit'",
                        &[&own_pid],
                    )
                    .await?;
                for row in ended {
                    tracing::warn!(pid = row.get::<_, i32>(0), "ended the stale holder's target session");
                }
            }
        }
    }
}

/// Where a partition continues: what the target ledger holds of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumePoint {
    /// Sequence number of the next chunk.
    pub next_seq: u64,
    /// Rows already loaded.
    pub rows: u64,
    /// The source position to continue after; `None` reads from the start.
    pub after: Option<Ctid>,
}

pub async fn resume_point(client: &Client, job: &str, partition: u32) -> Result<ResumePoint> {
    let partition = i32::try_from(partition)
        .map_err(|_| Error::Internal("partition number overflows".into()))?;
    let row = client
        .query_one(
            "SELECT count(*), coalesce(sum(rows), 0)::bigint, \
                    (SELECT last_ctid FROM godwit.applied_chunks \
                     WHERE job_id = $1 AND partition = $2 ORDER BY seq DESC LIMIT 1) \
             FROM godwit.applied_chunks WHERE job_id = $1 AND partition = $2",
            &[&job, &partition],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the target ledger", e))?;
    let chunks = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    let corrupt = |reason: String| Error::Corrupt {
        what: format!("ledger of partition {partition}"),
        reason,
    };
    let after = match row.get::<_, Option<String>>(2) {
        Some(text) => Some(
            Ctid::parse(&text)
                .ok_or_else(|| corrupt(format!("last_ctid {text:?} is not a tuple position")))?,
        ),
        None if chunks > 0 => {
            return Err(corrupt("chunks recorded without a resume position".into()));
        }
        None => None,
    };
    Ok(ResumePoint {
        next_seq: chunks,
        rows: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
        after,
    })
}

/// (partition, chunks, rows) of every partition the ledger holds for `job`.
/// Every chunk the ledger holds for `job`: table, partition, sequence
/// number, SHA-256 of its sealed frame (hex) and rows; for the audit trail.
pub async fn chunk_digests(
    client: &Client,
    job: &str,
) -> Result<Vec<(String, u32, u64, String, u64)>> {
    let rows = client
        .query(
            "SELECT table_name, partition, seq, encode(sha256, 'hex'), rows FROM godwit.applied_chunks \
             WHERE job_id = $1 ORDER BY partition, seq",
            &[&job],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the target ledger", e))?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                row.get(0),
                u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
                u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                row.get(3),
                u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
            )
        })
        .collect())
}

pub async fn partition_totals(client: &Client, job: &str) -> Result<Vec<(u32, u64, u64)>> {
    let rows = client
        .query(
            "SELECT partition, count(*), coalesce(sum(rows), 0)::bigint FROM godwit.applied_chunks \
             WHERE job_id = $1 GROUP BY partition ORDER BY partition",
            &[&job],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the target ledger", e))?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                u32::try_from(row.get::<_, i32>(0)).unwrap_or(0),
                u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            )
        })
        .collect())
}

/// One chunk to load into one table.
pub struct ChunkLoad<'a> {
    pub job: &'a str,
    pub table_quoted: &'a str,
    pub table_name: &'a str,
    pub copy_columns: &'a [String],
    pub format: CopyFormat,
    pub partition: u32,
    pub seq: u64,
    pub rows: u64,
    pub sha256: &'a [u8],
    pub last_ctid: Option<Ctid>,
    /// The holder's fencing token (see `take_partition`).
    pub fence: i64,
    pub tuples: Bytes,
    /// Fields replaced by new ids as the chunk loads (`remap: true`).
    pub remaps: &'a [crate::mapping::remap::RemappedColumn],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    Applied,
    AlreadyApplied,
}

/// Loads a chunk and records it in the ledger, atomically. The ledger row goes
/// first: a concurrent loader of the same chunk blocks on it and then skips.
pub async fn load_chunk(client: &mut Client, chunk: ChunkLoad<'_>) -> Result<LoadOutcome> {
    let context = |what: &str| {
        format!(
            "{what} chunk {} of partition {} ({})",
            chunk.seq, chunk.partition, chunk.table_name
        )
    };
    let partition = i32::try_from(chunk.partition)
        .map_err(|_| Error::Internal("partition number overflows".into()))?;
    let seq =
        i64::try_from(chunk.seq).map_err(|_| Error::Internal("chunk number overflows".into()))?;
    let rows =
        i64::try_from(chunk.rows).map_err(|_| Error::Internal("row count overflows".into()))?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::postgres(context("cannot begin loading"), e))?;
    let owner = tx
        .query_opt(
            "SELECT token FROM godwit.partition_owners WHERE job_id = $1 AND partition = $2 FOR SHARE",
            &[&chunk.job, &partition],
        )
        .await
        .map_err(|e| Error::postgres(context("cannot check the holder of"), e))?
        .map(|row| row.get::<_, i64>(0));
    if owner != Some(chunk.fence) {
        return Err(Error::LeaseLost {
            key: format!("partition {} of job {}", chunk.partition, chunk.job),
            reason: "fenced: another worker has taken the partition over".into(),
        });
    }
    let inserted = tx
        .execute(
            "INSERT INTO godwit.applied_chunks (job_id, partition, seq, table_name, rows, sha256, last_ctid) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &chunk.job,
                &partition,
                &seq,
                &chunk.table_name,
                &rows,
                &chunk.sha256,
                &chunk.last_ctid.map(|c| c.to_string()),
            ],
        )
        .await
        .map_err(|e| Error::postgres(context("cannot record"), e))?;
    if inserted == 0 {
        return Ok(LoadOutcome::AlreadyApplied);
    }
    let tuples = if chunk.remaps.is_empty() {
        chunk.tuples
    } else {
        crate::mapping::remap::rewrite(&tx, chunk.remaps, &chunk.tuples).await?
    };
    // A zero-column table takes rows of no fields, with no column list.
    let column_list = if chunk.copy_columns.is_empty() {
        String::new()
    } else {
        format!(" ({})", chunk.copy_columns.join(", "))
    };
    let statement = format!(
        "COPY {}{column_list} FROM STDIN {}",
        chunk.table_quoted,
        chunk.format.options()
    );
    let sink = tx
        .copy_in::<_, Bytes>(&statement)
        .await
        .map_err(|e| Error::postgres(context("cannot start loading"), e))?;
    futures::pin_mut!(sink);
    let pieces = match chunk.format {
        CopyFormat::Binary => vec![
            Bytes::from(pgcopy::stream_header()),
            tuples,
            Bytes::from_static(pgcopy::stream_trailer()),
        ],
        CopyFormat::Text => vec![tuples],
    };
    for piece in pieces {
        sink.feed(piece)
            .await
            .map_err(|e| Error::postgres(context("cannot load"), e))?;
    }
    let loaded = sink
        .finish()
        .await
        .map_err(|e| Error::postgres(context("cannot load"), e))?;
    if loaded != chunk.rows {
        return Err(Error::Corrupt {
            what: context("loading"),
            reason: format!(
                "target accepted {loaded} rows, the chunk holds {}",
                chunk.rows
            ),
        });
    }
    tx.commit()
        .await
        .map_err(|e| Error::postgres(context("cannot commit"), e))?;
    Ok(LoadOutcome::Applied)
}
