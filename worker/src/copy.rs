//! The partition copy pipeline: `COPY … TO STDOUT (FORMAT binary)` under the
//! job's snapshot, cut at tuple boundaries into chunks, each sealed (zstd +
//! AES-256-GCM), staged, then loaded into the target together with its
//! ledger row. The reader runs one chunk ahead of the loader: the source
//! sends the next chunk while the last one is sealed, staged and loaded,
//! and no further, so a partition holds at most two chunks and a crash
//! makes its next holder read again at most those two (and the socket's
//! bounded buffer). Other partitions run alongside.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use godwit_common::chunk::{self, ChunkId};
use godwit_common::job::PlannedTable;
use godwit_common::keys::DataKey;
use godwit_common::lease::HeldLease;
use godwit_common::mapping::mask::RowMasker;
use godwit_common::pg;
use godwit_common::pg::ledger::LoadOutcome;
use godwit_common::pg::loader::{Chunk, PartitionLoader};
use godwit_common::pgcopy::{RowCutter, TupleBatch};
use godwit_common::spec::JobSpec;
use godwit_common::staging::Staging;
use godwit_common::work::{PartitionRecord, StageTimings};
use godwit_common::{Error, Result};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant, SystemTime};

use godwit_common::telemetry::traces::{self, Done, SpanRef};
use opentelemetry::KeyValue;

use tokio::sync::{mpsc, watch};

use crate::throttle::{PACE_PIECE, ReadPacer};

/// The source session's socket receive buffer, as a share of the chunk
/// size, within bounds: small enough that a worker dying mid-chunk has made
/// the source send little beyond that chunk, large enough to keep reading
/// at full speed over a long network path.
fn reader_receive_buffer(chunk_size: u64) -> u32 {
    const FLOOR: u64 = 16 * 1024;
    const CEILING: u64 = 4 * 1024 * 1024;
    (chunk_size / 8).clamp(FLOOR, CEILING) as u32
}

pub struct PartitionJob<'a> {
    pub spec: &'a JobSpec,
    pub snapshot: &'a str,
    pub table: &'a PlannedTable,
    pub staging: &'a Staging,
    pub key: Arc<DataKey>,
    pub lease: &'a HeldLease,
    pub progress_key: &'a str,
    /// The source session slot the partition was admitted in.
    pub session: pg::SessionSlot,
    /// Turns true when the partition must be handed back (worker shutting
    /// down, job paused, session cap lowered): the copy returns
    /// `Error::Cancelled` between chunks, never inside one.
    pub stop: watch::Receiver<bool>,
    /// Holds the source reads to the lease's share of the customer's budget.
    pub pacer: ReadPacer,
    /// This attempt's span in the job's trace: its chunks' spans hang here.
    pub trace: Option<SpanRef>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    /// Rows of the partition, including those of chunks loaded before a resume.
    pub rows: u64,
    pub bytes_read: u64,
    pub bytes_staged: u64,
    /// Chunks this attempt loaded.
    pub chunks_applied: u64,
    pub timings: StageTimings,
}

/// What the reader hands the loader: a batch and what reading it cost.
struct ReadBatch {
    batch: TupleBatch,
    bytes_read: u64,
    read_time: Duration,
    /// From the end of the last batch to the cut of this one.
    read_span: (SystemTime, SystemTime),
}

/// Copies one partition; `record` is updated (and published, fenced by the
/// lease) after every chunk.
pub async fn copy_partition(
    mut job: PartitionJob<'_>,
    record: &mut PartitionRecord,
) -> Result<CopyStats> {
    let spec = job.spec;
    let session = pg::connect_source_reader(
        &spec.source,
        job.session,
        reader_receive_buffer(spec.chunk_size.0),
    )
    .await?;
    // Rows must come in physical order for `ctid` to be a resume position; a
    // synchronized scan could start mid-table.
    session
        .client
        .batch_execute("SET synchronize_seqscans = off")
        .await
        .map_err(|e| Error::postgres("cannot configure the source session", e))?;
    pg::join_snapshot(&session.client, job.snapshot).await?;
    let mut target = PartitionLoader::take(
        &spec.target,
        &spec.job,
        job.table,
        record.partition,
        job.lease.lease_id().0,
    )
    .await?;
    let resume = target.resume_point().await?;
    let (measured_job, measured_table) = (job.spec.job.to_string(), job.table.name.to_string());
    if let Some(after) = resume.after {
        tracing::info!(after = %after, next_chunk = resume.next_seq, "resuming partition after the last loaded chunk");
        crate::copy_metrics::taken_over(&measured_job, &measured_table);
    }

    // A table without columns still has rows: `ctid` alone carries them.
    let (from, selected) = match &job.table.source_relation {
        Some(relation) => (format!("ONLY {}", relation.from), &relation.select),
        None => (job.table.name.only(), &job.table.copy_columns),
    };
    let kept = job
        .table
        .source_relation
        .as_ref()
        .and_then(|r| r.filter.as_ref())
        .map(|filter| format!(" AND ({filter})"))
        .unwrap_or_default();
    let columns: String = selected.iter().map(|c| format!(", {c}")).collect();
    let resume_predicate = resume
        .after
        .map(|after| format!(" AND ctid > '{after}'::tid"))
        .unwrap_or_default();
    let statement = format!(
        "COPY (SELECT ctid{columns} FROM {} WHERE {}{kept}{resume_predicate}) TO STDOUT {}",
        from,
        godwit_common::pg::ranges::block_predicate(&record.range),
        job.table.format.options()
    );
    let format = job.table.format;
    let chunk_size = usize::try_from(spec.chunk_size.0).unwrap_or(usize::MAX);
    // Masked columns are masked here, before a chunk is sealed: what a mask
    // hides never reaches staging or the target. The token key is derived
    // in this process from the customer's key file and goes nowhere else.
    let masker = if job.table.masks.is_empty() {
        None
    } else {
        let key = godwit_common::keyring::CustomerKeys::for_spec(spec)?.token_key();
        Some(RowMasker::new(
            key,
            spec.customer.as_str(),
            job.table.masks.clone(),
        ))
    };
    // The reader hands over a chunk, then reads the next while that one
    // loads, then waits for it to be loaded before reading on: what a crash
    // makes the next holder read again is two chunks and the socket's
    // bounded buffer, never a queue of chunks. The one credit given here is
    // that chunk read ahead.
    let (batches_tx, mut batches_rx) = mpsc::channel::<Result<ReadBatch>>(1);
    let (loaded_tx, mut loaded_rx) = mpsc::channel::<()>(2);
    let _ = loaded_tx.try_send(());
    let table_name = job.table.name.to_string();
    let mut pacer = std::mem::replace(&mut job.pacer, ReadPacer::unlimited());

    let reader = async move {
        // Aborting the reader drops the session, closing the source socket.
        let stream = session
            .client
            .copy_out(statement.as_str())
            .await
            .map_err(|e| Error::postgres(format!("cannot read {table_name} from the source"), e));
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                let _ = batches_tx.send(Err(e)).await;
                return;
            }
        };
        futures::pin_mut!(stream);
        let mut cutter = match masker {
            Some(masker) => RowCutter::rewriting(
                chunk_size,
                Box::new(move |row: &[u8], out: &mut Vec<u8>| masker.rewrite(row, out)),
            ),
            None => RowCutter::new(format, chunk_size),
        };
        let mut read_since_batch = 0u64;
        let mut batch_started = SystemTime::now();
        let mut unpaced = 0u64;
        let mut waited = Duration::ZERO;
        loop {
            let asked = Instant::now();
            let next = stream.next().await;
            waited += asked.elapsed();
            let Some(data) = next else { break };
            let data = match data {
                Ok(data) => data,
                Err(e) => {
                    let _ = batches_tx
                        .send(Err(Error::postgres(
                            format!("reading {table_name} from the source"),
                            e,
                        )))
                        .await;
                    return;
                }
            };
            read_since_batch += data.len() as u64;
            // Pausing the socket reads is what slows the source: its
            // session blocks once our bounded receive buffer is full.
            unpaced += data.len() as u64;
            if unpaced >= PACE_PIECE {
                pacer.consume(std::mem::take(&mut unpaced)).await;
            }
            match cutter.feed(&data) {
                Ok(batches) => {
                    for batch in batches {
                        let read = ReadBatch {
                            batch,
                            bytes_read: std::mem::take(&mut read_since_batch),
                            read_time: std::mem::take(&mut waited),
                            read_span: (batch_started, SystemTime::now()),
                        };
                        if batches_tx.send(Ok(read)).await.is_err()
                            || loaded_rx.recv().await.is_none()
                        {
                            return;
                        }
                        // The next chunk's read starts once the one before
                        // it has loaded, not while this one waited.
                        batch_started = SystemTime::now();
                    }
                }
                Err(e) => {
                    let _ = batches_tx.send(Err(e)).await;
                    return;
                }
            }
        }
        match cutter.finish() {
            Ok(Some(batch)) => {
                let read = ReadBatch {
                    batch,
                    bytes_read: read_since_batch,
                    read_time: waited,
                    read_span: (batch_started, SystemTime::now()),
                };
                let _ = batches_tx.send(Ok(read)).await;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = batches_tx.send(Err(e)).await;
            }
        }
    };
    let reader = tokio::spawn(reader);

    let mut stats = CopyStats {
        rows: resume.rows,
        ..CopyStats::default()
    };
    let mut seq = resume.next_seq;
    let mut stop = job.stop.clone();
    let result: Result<()> = async {
        loop {
            if *stop.borrow() {
                return Err(Error::Cancelled);
            }
            let next = tokio::select! {
                next = batches_rx.recv() => next,
                lost = job.lease.lost() => return Err(lost),
                _ = stop.wait_for(|stopping| *stopping) => return Err(Error::Cancelled),
            };
            let Some(next) = next else { break };
            let ReadBatch {
                batch,
                bytes_read,
                read_time,
                read_span,
            } = next?;
            stats.bytes_read += bytes_read;
            crate::copy_metrics::read(&measured_job, &measured_table, bytes_read);
            stats.timings.read_ms += read_time.as_millis() as u64;
            job.lease.check()?;
            let staged = process_chunk(
                &job,
                &mut target,
                (record.partition, seq),
                (batch, read_span),
                &mut stats,
            )
            .await?;
            stats.bytes_staged += staged;
            seq += 1;
            record.rows = stats.rows;
            record.bytes_read = stats.bytes_read;
            record.bytes_staged = stats.bytes_staged;
            record.chunks_applied = resume.next_seq + stats.chunks_applied;
            record.timings = stats.timings;
            job.lease
                .put_fenced(job.progress_key, godwit_common::state::encode(record)?)
                .await?;
            // A stopping worker hands the partition back here; the chunk
            // read ahead is dropped and read again by the next holder.
            if *stop.borrow() {
                return Err(Error::Cancelled);
            }
            // The reader may have ended after its last batch.
            let _ = loaded_tx.try_send(());
        }
        Ok(())
    }
    .await;
    reader.abort();
    result?;
    record.bytes_read = stats.bytes_read;
    record.timings = stats.timings;
    Ok(stats)
}

async fn process_chunk(
    job: &PartitionJob<'_>,
    target: &mut PartitionLoader,
    (partition, seq): (u32, u64),
    (batch, read_span): (TupleBatch, (SystemTime, SystemTime)),
    stats: &mut CopyStats,
) -> Result<u64> {
    let table = job.table.name.to_string();
    let id = ChunkId {
        job_id: job.spec.job.to_string(),
        table: table.clone(),
        partition,
        seq,
    };
    let key = job.key.clone();
    let rows = batch.rows;
    let last_ctid = batch.last_ctid;
    let tuples = Bytes::from(batch.bytes);
    let to_seal = tuples.clone();
    let started = Instant::now();
    let mut stamps = ChunkStamps::from(read_span);
    stamps.seal_started = SystemTime::now();
    let (digest, frame) = tokio::task::spawn_blocking(move || {
        let digest = Sha256::digest(&to_seal).to_vec();
        chunk::seal(&id, rows, &to_seal, &key).map(|frame| (digest, frame))
    })
    .await
    .map_err(|e| Error::Corrupt {
        what: "chunk sealing task".into(),
        reason: e.to_string(),
    })??;
    let sealed = Instant::now();
    stamps.sealed = SystemTime::now();
    stats.timings.seal_ms += (sealed - started).as_millis() as u64;
    let staged_len = frame.len() as u64;
    let path = job
        .staging
        .chunk_path(&job.spec.job, &table, partition, seq);
    job.staging.put(&path, frame).await?;
    let staged = Instant::now();
    stamps.staged = SystemTime::now();
    stats.timings.stage_ms += (staged - sealed).as_millis() as u64;
    job.lease.check()?;
    let outcome = target
        .load(Chunk {
            seq,
            rows,
            sha256: &digest,
            last_ctid,
            tuples,
        })
        .await?;
    stats.timings.load_ms += staged.elapsed().as_millis() as u64;
    if let Some(partition_span) = job.trace {
        stamps.loaded = SystemTime::now();
        stamps.emit(partition_span, seq, rows, staged_len, outcome);
    }
    stats.rows += rows;
    if outcome == LoadOutcome::Applied {
        stats.chunks_applied += 1;
        crate::copy_metrics::loaded(
            job.spec.job.as_str(),
            &job.table.name.to_string(),
            rows,
            staged_len,
        );
    }
    Ok(staged_len)
}

/// When each stage of one chunk started or ended, for its spans.
struct ChunkStamps {
    read: (SystemTime, SystemTime),
    /// The loader took the chunk up (it waits for the one before).
    seal_started: SystemTime,
    sealed: SystemTime,
    staged: SystemTime,
    loaded: SystemTime,
}

impl From<(SystemTime, SystemTime)> for ChunkStamps {
    fn from(read: (SystemTime, SystemTime)) -> Self {
        Self {
            read,
            seal_started: read.1,
            sealed: read.1,
            staged: read.1,
            loaded: read.1,
        }
    }
}

impl ChunkStamps {
    /// The chunk's span under its partition's, and one per stage under it:
    /// read, compress+encrypt (`seal`), stage, load.
    fn emit(
        &self,
        partition: SpanRef,
        seq: u64,
        rows: u64,
        staged_bytes: u64,
        outcome: LoadOutcome,
    ) {
        let chunk = partition.new_child();
        traces::emit(Done {
            name: "chunk",
            span: chunk,
            parent: Some(partition),
            start: self.read.0,
            end: self.loaded,
            attributes: vec![
                KeyValue::new("godwit.chunk", seq as i64),
                KeyValue::new("godwit.rows", rows as i64),
                KeyValue::new("godwit.staged_bytes", staged_bytes as i64),
                KeyValue::new("godwit.applied", outcome == LoadOutcome::Applied),
            ],
            error: None,
        });
        let stages = [
            ("read", self.read.0, self.read.1),
            ("seal", self.seal_started, self.sealed),
            ("stage", self.sealed, self.staged),
            ("load", self.staged, self.loaded),
        ];
        for (name, start, end) in stages {
            traces::emit(Done {
                name,
                span: chunk.new_child(),
                parent: Some(chunk),
                start,
                end,
                attributes: Vec::new(),
                error: None,
            });
        }
    }
}
