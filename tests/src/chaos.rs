//! The figures every failure scenario reports: rows lost and duplicated
//! (whole rows compared between the databases), source bytes read more than
//! once (counted on the wire by a proxy in front of the source) and the time
//! from each fault to the next chunk the target ledger accepted.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::Client;

use crate::{FaultProxy, PgCluster, clean_read_bytes, lost_and_duplicated};

/// A moment on the target database's clock, when a fault was injected,
/// and the partition it interrupted if it hit one.
#[derive(Debug, Clone, Copy)]
pub struct FaultAt {
    epoch: f64,
    partition: Option<i32>,
}

impl FaultAt {
    pub async fn now(target: &Client) -> anyhow::Result<Self> {
        let row = target
            .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
            .await
            .context("reading the target's clock")?;
        Ok(Self {
            epoch: row.get(0),
            partition: None,
        })
    }

    /// Recovery is then timed to that partition's next chunk.
    pub fn on_partition(self, partition: i32) -> Self {
        Self {
            partition: Some(partition),
            ..self
        }
    }
}

/// Where a measured job ran: its clusters (database `shop`), the counting
/// tap in front of the source, its spec and id, its chunk size.
pub struct MeasuredRun<'a> {
    pub source: &'a PgCluster,
    pub target: &'a PgCluster,
    pub tap: &'a FaultProxy,
    pub spec: &'a Path,
    pub job_id: &'a str,
    pub chunk_size: u64,
}

#[derive(Debug)]
pub struct Figures {
    pub scenario: String,
    pub faults: String,
    pub lost: u64,
    pub duplicated: u64,
    /// Source bytes read beyond one clean read of the job's tables.
    pub reread_bytes: i64,
    pub chunk_size: u64,
    /// For each fault, until the ledger accepted a chunk begun after it (of
    /// the partition it interrupted, if known).
    pub recovered_in: Vec<Duration>,
}

impl Figures {
    /// Measures a finished job and asserts its copy is exact (no row lost or
    /// duplicated): `run.tap` must have been in front of the source for the
    /// whole job and nothing else read through it.
    pub async fn measure(
        run: &MeasuredRun<'_>,
        scenario: &str,
        faults: &str,
        fault_times: &[FaultAt],
    ) -> anyhow::Result<Self> {
        let source = run.source.client("shop").await?;
        let target = run.target.client("shop").await?;
        let (source, target) = (&source, &target);
        let (tap, spec, job_id, chunk_size) = (run.tap, run.spec, run.job_id, run.chunk_size);
        let read = tap.copy_bytes();
        let clean = clean_read_bytes(source, spec).await?;
        let (lost, duplicated) = lost_and_duplicated(source, target).await?;
        let mut recovered_in = Vec::new();
        for fault in fault_times {
            let row = target
                .query_one(
                    "SELECT extract(epoch FROM min(applied_at))::float8 - $1 \
                     FROM godwit.applied_chunks WHERE job_id = $2 AND applied_at > to_timestamp($1) \
                       AND ($3::integer IS NULL OR partition = $3)",
                    &[&fault.epoch, &job_id, &fault.partition],
                )
                .await
                .context("reading the ledger's chunk times")?;
            let seconds: Option<f64> = row.get(0);
            let seconds = seconds.context("no chunk was loaded after the fault")?;
            recovered_in.push(Duration::from_secs_f64(seconds.max(0.0)));
        }
        let figures = Self {
            scenario: scenario.to_owned(),
            faults: faults.to_owned(),
            lost,
            duplicated,
            reread_bytes: read as i64 - clean as i64,
            chunk_size,
            recovered_in,
        };
        // One line per scenario, collected into the README's table.
        eprintln!("{}", figures.table_row());
        figures.assert_exact();
        Ok(figures)
    }

    pub fn table_row(&self) -> String {
        let recovered = self
            .recovered_in
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "| {} | {} | {} | {} | {} B ({:.1} chunks) | {} |",
            self.scenario,
            self.faults,
            self.lost,
            self.duplicated,
            self.reread_bytes,
            self.reread_bytes as f64 / self.chunk_size as f64,
            recovered
        )
    }

    /// The source was read again for at most `chunks` chunks' worth: the
    /// interrupted work resumed where the ledger says, not from the start.
    pub fn assert_reread_at_most(&self, chunks: u64) {
        assert!(
            self.reread_bytes <= (chunks * self.chunk_size) as i64,
            "{}: {} bytes of the source read twice, more than {chunks} chunks",
            self.scenario,
            self.reread_bytes
        );
    }

    /// Nothing lost, nothing duplicated.
    pub fn assert_exact(&self) {
        assert_eq!(
            (self.lost, self.duplicated),
            (0, 0),
            "rows lost and duplicated in {}",
            self.scenario
        );
    }
}
