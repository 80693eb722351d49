//! The calls that need a job's change stream (a verification while it
//! streams, the cutover): whichever coordinator serves them asks the
//! stream through the keyspace (see `requests`), so any coordinator can.

use std::time::Duration;

use godwit_common::job::JobPhase;
use godwit_proto::v1::{CutoverRequest, CutoverResponse, VerifyJobRequest, VerifyJobResponse};
use tonic::{Request, Response, Status};

use super::{GodwitService, report_response, stored_at, verify_response};
use crate::access::Action;
use crate::status;
use crate::verification::Verifier;
use godwit_common::requests;
use godwit_common::verify::Sample;

impl GodwitService {
    pub(super) async fn verify_through_stream(
        &self,
        request: Request<VerifyJobRequest>,
    ) -> Result<Response<VerifyJobResponse>, Status> {
        let (caller, record) = self
            .authorized(&request, &request.get_ref().job_id, Action::Verify)
            .await?;
        let request = request.into_inner();
        let job = record.spec.job.clone();
        let sample = match request.sample_percent {
            Some(percent) if percent > 0.0 && percent <= 100.0 => Some(Sample {
                percent,
                seed: request.sample_seed,
            }),
            Some(percent) => {
                return Err(Status::invalid_argument(format!(
                    "sample_percent {percent}: give the share of key ranges to compare, above 0 and at most 100"
                )));
            }
            None => None,
        };
        let options = godwit_common::verify::Options {
            compare_rows_below: request
                .compare_rows_below
                .unwrap_or(godwit_common::verify::ROW_LEVEL_LIMIT),
            sample,
        };
        let verifier = Verifier::new(self.store.clone(), self.keyspace.clone());
        let verified = match record.phase() {
            JobPhase::Streaming => {
                // Held until the comparison ends: both snapshots stay importable.
                let (snapshots, pin) =
                    requests::pin(&self.store, &self.keyspace, &job, caller.identity())
                        .await
                        .map_err(|e| crate::error::status(e.kind(), e.to_string()))?;
                let verified = verifier
                    .verify_pinned(&record.spec, options, snapshots)
                    .await;
                pin.end().await;
                verified?
            }
            JobPhase::CuttingOver => {
                return Err(Status::failed_precondition(format!(
                    "job {job} is cutting over; its final verification is part of the cutover"
                )));
            }
            _ => verifier.verify(&record.spec, options).await?,
        };
        let (report, stored_at) = stored_at(&job, verified);
        let outcome = if report.matched { "matched" } else { "differs" };
        self.audited(
            &caller,
            &record.spec,
            "verify",
            outcome,
            Some(report.summary()),
        )
        .await;
        report_response(&report, stored_at)
    }

    pub(super) async fn cutover_through_stream(
        &self,
        request: Request<CutoverRequest>,
    ) -> Result<Response<CutoverResponse>, Status> {
        let (caller, record) = self
            .authorized(&request, &request.get_ref().job_id, Action::Cutover)
            .await?;
        let job = record.spec.job.clone();
        if record.spec.changes.is_none() {
            return Err(Status::failed_precondition(format!(
                "job {job} does not stream changes (its spec has no `changes`): it is complete when its copy is"
            )));
        }
        match record.phase() {
            JobPhase::Streaming => {}
            JobPhase::CuttingOver => {
                return Err(Status::failed_precondition(format!(
                    "a cutover of job {job} is already running"
                )));
            }
            phase => {
                return Err(Status::failed_precondition(format!(
                    "job {job} is {phase:?}: a cutover needs it streaming changes (wait for state streaming)"
                )));
            }
        }
        self.cutover_allowed(&job).await?;
        self.signed_off(&caller, &record.spec, "cutover").await?;
        let outcome =
            match requests::cutover(&self.store, &self.keyspace, &job, caller.identity()).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    self.audited(
                        &caller,
                        &record.spec,
                        "cutover",
                        "failed",
                        Some(e.to_string()),
                    )
                    .await;
                    return Err(crate::error::status(e.kind(), e.to_string()));
                }
            };
        let cut = status::cutover(&outcome.record);
        self.audited(
            &caller,
            &record.spec,
            "cutover",
            if outcome.record.succeeded {
                "done"
            } else {
                "rolled back"
            },
            Some(format!("source frozen {} ms", cut.frozen_ms)),
        )
        .await;
        if outcome.record.succeeded {
            // The job ends right after: answer with its final state.
            for _ in 0..100 {
                if self.record(&job).await?.phase().is_final() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let verification = match (outcome.matched, &outcome.stored_at) {
            (None, _) => None,
            (Some(_), Ok(stored_at)) => {
                let report = godwit_common::verify::load_report(&record.spec)
                    .await
                    .map_err(|e| crate::error::status(e.kind(), e.to_string()))?;
                Some(verify_response(&report, stored_at.clone())?)
            }
            (Some(matched), Err(e)) => {
                tracing::warn!(job_id = %job, error = %e, "verification report not stored");
                Some(VerifyJobResponse {
                    matched,
                    summary: format!(
                        "the final verification {}; its report could not be stored: {e}",
                        if matched {
                            "matched"
                        } else {
                            "found differences"
                        }
                    ),
                    debrief_json: String::new(),
                    report_json: String::new(),
                    stored_at: String::new(),
                })
            }
        };
        Ok(Response::new(CutoverResponse {
            status: Some(self.status(&job).await?),
            cutover: Some(status::cutover(&outcome.record)),
            verification,
        }))
    }
}

impl GodwitService {
    /// A cutover is refused while the job is paused (its operators asked
    /// that it move no data) or while a verification of it runs (the
    /// cutover's own final verification would compete with it).
    async fn cutover_allowed(&self, job: &godwit_common::ids::JobId) -> Result<(), Status> {
        let unavailable = |e: godwit_common::Error| crate::error::status(e.kind(), e.to_string());
        if self
            .store
            .get(&self.keyspace.job_paused(job))
            .await
            .map_err(unavailable)?
            .is_some()
        {
            return Err(Status::failed_precondition(format!(
                "job {job} is paused: resume it (godwit resume {job}) and let the stream catch up, \
                 then cut over"
            )));
        }
        if self
            .store
            .get(&self.keyspace.verifying(job))
            .await
            .map_err(unavailable)?
            .is_some()
        {
            return Err(Status::failed_precondition(format!(
                "a verification of job {job} is running (`godwit status {job}` shows it): wait for \
                 it to end, then cut over; the cutover runs its own verification before it freezes \
                 the source"
            )));
        }
        Ok(())
    }
}
