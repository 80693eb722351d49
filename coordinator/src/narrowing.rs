//! Narrowing before the freeze: while writes go on, the rows whose keys the
//! stream changed since the last verification are compared, pinned by the
//! stream at one source transaction, and that transaction becomes the new
//! starting point. Each round compares what changed during the one before,
//! so the frozen check is left with the changes of the last moments,
//! whatever the size of the database or the length of its first
//! verification. Rounds go on until at most `changes.max_frozen_keys`
//! changed keys are left (or a few rounds have run). Never freezes
//! anything; a difference found here refuses the cutover before the freeze.

use std::time::{Duration, Instant};

use godwit_common::pg::{self, Side, apply, changed_keys};
use godwit_common::requests;
use godwit_common::spec::JobSpec;
use godwit_common::verify::Report;
use godwit_common::{Error, Result};

use crate::changes::{changed_rows_report, differing_tables};
use crate::mapped::StreamLanding;
use crate::phases::Phases;
use crate::verification::Verified;

/// Rounds at most: each compares what changed during the one before, so
/// they shrink quickly unless the source writes faster than they compare.
const MAX_ROUNDS: usize = 4;
/// A round's pin waits no longer than this for the stream.
const PIN_PATIENCE: Duration = Duration::from_secs(60);

impl Phases<'_> {
    /// Moves the verified position `from` as close to the source's present
    /// as a few rounds of comparing changed rows take it; returns it, and
    /// when the last round's pin ended (the stream had just caught up with
    /// the source then), if a round ran.
    /// A difference is refused naming its tables only; its report, which
    /// names keys, is stored sealed and handed back in `verified`.
    pub(crate) async fn narrow(
        &self,
        spec: &JobSpec,
        requester: &str,
        (from, base): (u64, &Report),
        landing: &StreamLanding,
        verified: &mut Option<Verified>,
    ) -> Result<(u64, Option<Instant>)> {
        let job = spec.job.as_str();
        let max_frozen_keys = spec.changes.clone().unwrap_or_default().max_frozen_keys;
        let mut verified_to = from;
        let mut pinned_at = None;
        for round in 1..=MAX_ROUNDS {
            let target = pg::connect(&spec.target, Side::Target).await?;
            let pending = changed_keys::since(&target, job, verified_to).await?;
            drop(target);
            if pending.keys() as u64 <= max_frozen_keys {
                break;
            }
            let (snapshots, pin) = tokio::time::timeout(
                PIN_PATIENCE,
                requests::pin(self.store, self.keyspace, &spec.job, requester),
            )
            .await
            .map_err(|_| {
                Error::Unreachable(format!(
                    "the stream of job {job} did not pin a snapshot within {PIN_PATIENCE:?}"
                ))
            })??;
            let compared = async {
                let (source, target) = tokio::try_join!(
                    pg::connect(&spec.source, Side::Source),
                    pg::connect(&spec.target, Side::Target)
                )?;
                pg::join_snapshot(&source, &snapshots.source).await?;
                pg::join_snapshot(&target, &snapshots.target).await?;
                // The ledger and the changed keys as the pinned target
                // sees them: both are written in the same transactions.
                let lsn = apply::applied_lsn(&target, job).await?.ok_or_else(|| {
                    Error::Internal(format!(
                        "the target ledger has no change position for job {job}"
                    ))
                })?;
                let touched = changed_keys::since(&target, job, verified_to).await?;
                let tables = landing
                    .compare_changed((&source, &target), &touched)
                    .await?;
                Ok::<_, Error>((lsn, touched.keys(), tables))
            }
            .await;
            pin.end().await;
            pinned_at = Some(Instant::now());
            let (lsn, keys, tables) = compared?;
            if !tables.iter().all(|t| t.counts_match && t.content.matched) {
                let report = changed_rows_report(spec, base, tables).await;
                let differing = differing_tables(&report.report);
                *verified = Some(report);
                return Err(Error::Verification(format!(
                    "comparing the rows changed since the verification, before the freeze, found \
                     differences in {differing}, so nothing was frozen and the source stays \
                     authoritative; the report names them (godwit report {job})"
                )));
            }
            tracing::info!(job_id = %job, round, keys, to = %pg::pgoutput::format_lsn(lsn), "cutover: rows changed since the last verification compared before the freeze");
            verified_to = lsn;
            if let Ok(target) = pg::connect(&spec.target, Side::Target).await
                && let Err(e) = changed_keys::forget_through(&target, job, lsn).await
            {
                tracing::warn!(job_id = %job, error = %e, "cannot prune the changed-key log");
            }
        }
        Ok((verified_to, pinned_at))
    }
}
