//! Loading a partition's chunks into the target: the one loader the copy
//! and `godwit replay` share. It takes the partition for a fencing token
//! first (see `ledger::take_partition`); every chunk then lands together
//! with its ledger row in one transaction, skipped when the ledger already
//! has it, refused when the partition was taken by a newer holder.

use bytes::Bytes;
use tokio_postgres::Client;

use super::ledger::{self, ChunkLoad, LoadOutcome, ResumePoint};
use super::{Side, connect};
use crate::Result;
use crate::ids::JobId;
use crate::job::PlannedTable;
use crate::pgcopy::Ctid;

pub struct PartitionLoader {
    client: Client,
    job: JobId,
    table: PlannedTable,
    partition: u32,
    fence: i64,
}

/// One sealed chunk's content, opened, as the ledger records it.
pub struct Chunk<'a> {
    pub seq: u64,
    pub rows: u64,
    pub sha256: &'a [u8],
    /// The last source row in the chunk, where a resumed copy goes on.
    pub last_ctid: Option<Ctid>,
    pub tuples: Bytes,
}

impl PartitionLoader {
    /// Connects to `target` and takes `partition` of `table` for `fence`.
    pub async fn take(
        target: &str,
        job: &JobId,
        table: &PlannedTable,
        partition: u32,
        fence: i64,
    ) -> Result<Self> {
        let client = connect(target, Side::Target).await?;
        ledger::take_partition(&client, target, job.as_str(), partition, fence).await?;
        Ok(Self {
            client,
            job: job.clone(),
            table: table.clone(),
            partition,
            fence,
        })
    }

    /// Where an earlier holder of the partition left off.
    pub async fn resume_point(&self) -> Result<ResumePoint> {
        ledger::resume_point(&self.client, self.job.as_str(), self.partition).await
    }

    pub async fn load(&mut self, chunk: Chunk<'_>) -> Result<LoadOutcome> {
        ledger::load_chunk(
            &mut self.client,
            ChunkLoad {
                job: self.job.as_str(),
                table_quoted: &self.table.name.quoted(),
                table_name: &self.table.name.to_string(),
                copy_columns: &self.table.copy_columns,
                format: self.table.format,
                partition: self.partition,
                seq: chunk.seq,
                rows: chunk.rows,
                sha256: chunk.sha256,
                last_ctid: chunk.last_ctid,
                fence: self.fence,
                tuples: chunk.tuples,
                remaps: &self.table.remaps,
            },
        )
        .await
    }
}
