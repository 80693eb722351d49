//! What a run will cost, before it starts: bytes to read per table, how
//! well they compress (zstd at the staging's level, on a sample of rows),
//! and the copy time at the customer's throttle and the deployment's
//! readers. Read-only; an estimate, said as one.

use futures::StreamExt;
use serde::Serialize;
use tokio_postgres::Client;

use super::resolve::Landing;
use crate::{Error, Result};

/// Rows sampled per table for compressibility.
const SAMPLE_ROWS: u32 = 2_000;
/// Bytes of COPY text looked at per table, at most.
const SAMPLE_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct TableForecast {
    pub table: String,
    pub lands_in: String,
    /// The table's size on the source, TOAST included (what is read).
    pub bytes: u64,
    /// Rows and bytes of COPY text sampled.
    pub sampled_rows: u64,
    pub sampled_bytes: u64,
    /// Compressed size over sampled size (1.0: nothing gained).
    pub compressed_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Forecast {
    pub tables: Vec<TableForecast>,
    pub bytes: u64,
    /// Staged bytes expected, from each table's sampled ratio.
    pub staged_bytes: u64,
    pub readers: usize,
    pub reader_bytes_per_sec: u64,
    pub throttle_bytes_per_sec: Option<u64>,
    /// What limits the rate: the readers or the throttle.
    pub limited_by: &'static str,
    pub copy_seconds: f64,
}

/// The deployment the forecast assumes.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub readers: usize,
    pub reader_bytes_per_sec: u64,
    pub throttle_bytes_per_sec: Option<u64>,
}

pub async fn forecast(
    source: &Client,
    landings: &[Landing],
    capacity: Capacity,
) -> Result<Forecast> {
    let mut tables = Vec::new();
    for landing in landings {
        let quoted = landing.source.quoted();
        let bytes: i64 = source
            .query_one(
                &format!(
                    "SELECT pg_table_size('{}'::regclass)",
                    quoted.replace('\'', "''")
                ),
                &[],
            )
            .await
            .map_err(|e| {
                Error::postgres(
                    format!("cannot read the size of {} on the source", landing.source),
                    e,
                )
            })?
            .get(0);
        let bytes = u64::try_from(bytes).unwrap_or(0);
        let percent = if bytes == 0 {
            100.0
        } else {
            (100.0 * 4.0 * SAMPLE_BYTES as f64 / bytes as f64).clamp(0.01, 100.0)
        };
        let statement = format!(
            "COPY (SELECT * FROM ONLY {quoted} TABLESAMPLE SYSTEM ({percent:.4}) REPEATABLE (7) LIMIT {SAMPLE_ROWS}) TO STDOUT"
        );
        let stream = source.copy_out(statement.as_str()).await.map_err(|e| {
            Error::postgres(format!("cannot sample {} on the source", landing.source), e)
        })?;
        futures::pin_mut!(stream);
        let mut sample = Vec::new();
        while let Some(data) = stream.next().await {
            let data =
                data.map_err(|e| Error::postgres(format!("sampling {}", landing.source), e))?;
            if sample.len() < SAMPLE_BYTES {
                sample.extend_from_slice(&data);
            }
        }
        let rows = sample.iter().filter(|b| **b == b'\n').count() as u64;
        let compressed = zstd::bulk::compress(&sample, crate::chunk::ZSTD_LEVEL)
            .map_err(|e| Error::Internal(format!("cannot compress a sample: {e}")))?;
        let ratio = if sample.is_empty() {
            1.0
        } else {
            compressed.len() as f64 / sample.len() as f64
        };
        tables.push(TableForecast {
            table: landing.source.to_string(),
            lands_in: landing.target.to_string(),
            bytes,
            sampled_rows: rows,
            sampled_bytes: sample.len() as u64,
            compressed_ratio: ratio,
        });
    }
    let total: u64 = tables.iter().map(|t| t.bytes).sum();
    let staged = tables
        .iter()
        .map(|t| (t.bytes as f64 * t.compressed_ratio) as u64)
        .sum();
    let readers_rate = capacity.readers.max(1) as u64 * capacity.reader_bytes_per_sec.max(1);
    let (rate, limited_by) = match capacity.throttle_bytes_per_sec {
        Some(throttle) if throttle < readers_rate => (throttle, "throttle"),
        _ => (readers_rate, "readers"),
    };
    Ok(Forecast {
        tables,
        bytes: total,
        staged_bytes: staged,
        readers: capacity.readers,
        reader_bytes_per_sec: capacity.reader_bytes_per_sec,
        throttle_bytes_per_sec: capacity.throttle_bytes_per_sec,
        limited_by,
        copy_seconds: total as f64 / rate.max(1) as f64,
    })
}
