//! The `godwit.v1` gRPC service and the server that hosts it beside the
//! standard gRPC health service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use godwit_common::ids::{CustomerId, JobId};
use godwit_common::job::JobRecord;
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::LeaseStore;
use godwit_common::spec::JobSpec;
use godwit_common::state;
use godwit_common::throttle::CustomerLimits;
use godwit_proto::v1::godwit_server::{Godwit, GodwitServer};
use godwit_proto::v1::{
    ApproveRequest, ApproveResponse, CancelJobRequest, CancelJobResponse, CutoverRequest,
    CutoverResponse, GetJobRequest, GetReportRequest, JobState, JobStatus, ListJobsRequest,
    ListJobsResponse, PauseJobRequest, PurgeJobRequest, PurgeJobResponse, SetThrottleRequest,
    SetThrottleResponse, SubmitJobRequest, SubmitJobResponse, VerifyJobRequest, VerifyJobResponse,
    WatchJobRequest,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

use crate::access::{Access, Action, Caller};
use crate::driver::{JobDriver, preflight};
use crate::error::JobError;
mod streaming;

pub use crate::listener::{ListenerFlags, Security};
use crate::status;
use crate::verification::Verified;
use godwit_common::audit::{self, AuditEvent};

const WATCH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct GodwitService {
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    access: Access,
}

impl GodwitService {
    pub fn new(store: Arc<dyn LeaseStore>, keyspace: Keyspace, access: Access) -> Self {
        Self {
            store,
            keyspace,
            access,
        }
    }

    /// The caller of `request`, allowed to do `action` on job `raw`'s
    /// customer; returns the caller and the job's record. A refusal about
    /// a job that exists goes into that job's audit trail.
    async fn authorized<T>(
        &self,
        request: &Request<T>,
        raw: &str,
        action: Action,
    ) -> Result<(Caller, JobRecord), Status> {
        let caller = self.access.caller(request)?;
        let job = Self::job_id(raw)?;
        if let Err(refused) = self.access.authorize(&caller, action, None) {
            if let Ok(record) = self.record(&job).await {
                self.refusal(&caller, &record, action, &refused).await;
            }
            return Err(refused);
        }
        let record = self.record(&job).await?;
        if let Err(refused) =
            self.access
                .authorize(&caller, action, Some(record.spec.customer.as_str()))
        {
            self.refusal(&caller, &record, action, &refused).await;
            return Err(refused);
        }
        Ok((caller, record))
    }

    async fn refusal(&self, caller: &Caller, record: &JobRecord, action: Action, refused: &Status) {
        audit::note(
            &record.spec,
            vec![
                AuditEvent::new(caller.identity(), &format!("call.{action}"), "refused")
                    .reason(refused.message()),
            ],
        )
        .await;
    }

    /// Waits for a second identity's sign-off when the policy holds
    /// `action` for one; both identities go into the audit trail.
    async fn signed_off(
        &self,
        caller: &Caller,
        spec: &JobSpec,
        action: &str,
    ) -> Result<(), Status> {
        if !self.access.needs_approval(caller, action) {
            return Ok(());
        }
        self.audited(
            caller,
            spec,
            &format!("{action}.requested"),
            "awaiting approval",
            None,
        )
        .await;
        tracing::info!(job_id = %spec.job, action, requested_by = caller.identity(), "waiting for a second identity's approval");
        let approver = crate::approval::request_and_wait(
            self.store.as_ref(),
            &self.keyspace,
            &spec.job,
            action,
            caller.identity(),
            crate::approval::APPROVAL_WAIT,
        )
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
        match approver {
            Some(approver) => {
                let event = AuditEvent::new(&approver, &format!("{action}.approve"), "approved")
                    .object(format!("{action} requested by {}", caller.identity()));
                audit::note(spec, vec![event]).await;
                Ok(())
            }
            None => {
                self.audited(
                    caller,
                    spec,
                    &format!("{action}.requested"),
                    "not approved",
                    None,
                )
                .await;
                Err(Status::deadline_exceeded(format!(
                    "{action} of job {} was not approved by a second identity within {} minutes; nothing was done",
                    spec.job,
                    crate::approval::APPROVAL_WAIT.as_secs() / 60
                )))
            }
        }
    }

    /// Records what `caller` did to a job.
    async fn audited(
        &self,
        caller: &Caller,
        spec: &JobSpec,
        action: &str,
        outcome: &str,
        object: Option<String>,
    ) {
        let mut event = AuditEvent::new(caller.identity(), action, outcome);
        event.object = object;
        audit::note(spec, vec![event]).await;
    }

    fn job_id(raw: &str) -> Result<JobId, Status> {
        JobId::parse(raw).map_err(|e| Status::invalid_argument(e.to_string()))
    }

    async fn record(&self, job: &JobId) -> Result<JobRecord, Status> {
        let record: JobRecord = state::load(self.store.as_ref(), &self.keyspace.job_record(job))
            .await
            .map_err(|e| match e {
                godwit_common::Error::Corrupt { .. } => Status::internal(e.to_string()),
                e => Status::unavailable(e.to_string()),
            })?
            .ok_or_else(|| Status::not_found(format!("job {job} not found")))?;
        Ok(record)
    }

    async fn set_paused(&self, raw: &str, paused: bool) -> Result<Response<JobStatus>, Status> {
        let job = Self::job_id(raw)?;
        let current = self.status(&job).await?;
        if is_final(current.state) {
            return Err(Status::failed_precondition(format!(
                "job {job} has ended; there is nothing to {}",
                if paused { "pause" } else { "resume" }
            )));
        }
        crate::throttle::set_paused(self.store.as_ref(), &self.keyspace, &job, paused)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(job_id = %job, paused, "job reading {}", if paused { "paused" } else { "resumed" });
        Ok(Response::new(self.status(&job).await?))
    }

    async fn status(&self, job: &JobId) -> Result<JobStatus, Status> {
        status::load(self.store.as_ref(), &self.keyspace, job)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| JobError::NotFound(job.to_string()).into())
    }
}

fn verify_response(
    report: &godwit_common::verify::Report,
    stored_at: String,
) -> Result<VerifyJobResponse, Status> {
    let report_json = serde_json::to_string(report).map_err(|e| Status::internal(e.to_string()))?;
    Ok(VerifyJobResponse {
        matched: report.matched,
        summary: report.summary(),
        report_json,
        stored_at,
        debrief_json: String::new(),
    })
}

fn report_response(
    report: &godwit_common::verify::Report,
    stored_at: String,
) -> Result<Response<VerifyJobResponse>, Status> {
    verify_response(report, stored_at).map(Response::new)
}

fn stored_at(job: &JobId, verified: Verified) -> (godwit_common::verify::Report, String) {
    let stored_at = verified.stored_at.unwrap_or_else(|e| {
        tracing::warn!(job_id = %job, error = %e, "verification report not stored");
        String::new()
    });
    (verified.report, stored_at)
}

/// A submitted spec is kept in etcd: a password in it would be at rest in
/// clear there, so it must come from a password file instead.
fn refuse_stored_passwords(spec: &JobSpec) -> Result<(), Status> {
    for (field, conn) in [("source", &spec.source), ("target", &spec.target)] {
        if godwit_common::pg::carries_password(conn) {
            return Err(Status::invalid_argument(format!(
                "`{field}` carries a password, which the coordinator would keep in etcd: remove it from the \
                 connection string and put it in a password file (host:port:database:user:password, mode \
                 0600) that the coordinator and every worker can read, named by `passfile=PATH` in the \
                 connection string or by PGPASSFILE"
            )));
        }
    }
    Ok(())
}

fn is_final(state: i32) -> bool {
    [JobState::Done, JobState::Failed, JobState::Cancelled]
        .iter()
        .any(|s| *s as i32 == state)
}

#[tonic::async_trait]
impl Godwit for GodwitService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let caller = self.access.caller(&request)?;
        self.access.authorize(&caller, Action::Submit, None)?;
        // The caller's span, if it sent one: the job's trace hangs under it.
        let submitter = request
            .metadata()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(godwit_common::telemetry::traces::SpanRef::from_traceparent);
        let spec = JobSpec::from_yaml(&request.into_inner().spec_yaml, "submitted job spec")
            .map_err(JobError::Rejected)?;
        self.access
            .authorize(&caller, Action::Submit, Some(spec.customer.as_str()))?;
        refuse_stored_passwords(&spec)?;
        self.access.admit(&spec)?;
        let prepared = preflight(spec).await?;
        let driver = JobDriver::new(self.store.clone(), self.keyspace.clone());
        driver.register(&prepared, submitter).await?;
        let job_id = prepared.spec.job.to_string();
        tracing::info!(job_id = %job_id, customer = %prepared.spec.customer, "job submitted");
        self.audited(&caller, &prepared.spec, "job.submit", "accepted", None)
            .await;
        // The leading coordinator (this one or another) sees the new record
        // and drives the job.
        Ok(Response::new(SubmitJobResponse { job_id }))
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<JobStatus>, Status> {
        let (_, record) = self
            .authorized(&request, &request.get_ref().job_id, Action::Status)
            .await?;
        Ok(Response::new(self.status(&record.spec.job).await?))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let caller = self.access.caller(&request)?;
        self.access.authorize(&caller, Action::Status, None)?;
        let mut jobs = status::list(self.store.as_ref(), &self.keyspace)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        jobs.retain(|job| caller.covers(&job.customer));
        Ok(Response::new(ListJobsResponse { jobs }))
    }

    type WatchJobStream = Pin<Box<dyn Stream<Item = Result<JobStatus, Status>> + Send>>;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let job = self
            .authorized(&request, &request.get_ref().job_id, Action::Status)
            .await?
            .1
            .spec
            .job;
        let first = self.status(&job).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while !is_final(last.state) {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let next = match service.status(&job).await {
                    Ok(next) => next,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if next != last && tx.send(Ok(next.clone())).await.is_err() {
                    return;
                }
                last = next;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_report(
        &self,
        request: Request<GetReportRequest>,
    ) -> Result<Response<VerifyJobResponse>, Status> {
        let with_debrief = request.get_ref().debrief;
        let spec = self
            .authorized(&request, &request.get_ref().job_id, Action::Report)
            .await?
            .1
            .spec;
        let job = spec.job.clone();
        let report = godwit_common::verify::load_report(&spec)
            .await
            .map_err(|e| {
                Status::not_found(format!(
                    "no readable verification report for job {job}: {e}; run `godwit verify` first"
                ))
            })?;
        let mut response = verify_response(&report, String::new())?;
        if with_debrief {
            let debrief = godwit_common::debrief::gather(&spec, report).await;
            response.debrief_json = serde_json::to_string(&debrief)
                .map_err(|e| Status::internal(format!("cannot write the debrief: {e}")))?;
        }
        Ok(Response::new(response))
    }

    async fn verify_job(
        &self,
        request: Request<VerifyJobRequest>,
    ) -> Result<Response<VerifyJobResponse>, Status> {
        self.verify_through_stream(request).await
    }

    async fn cutover(
        &self,
        request: Request<CutoverRequest>,
    ) -> Result<Response<CutoverResponse>, Status> {
        self.cutover_through_stream(request).await
    }

    async fn set_throttle(
        &self,
        request: Request<SetThrottleRequest>,
    ) -> Result<Response<SetThrottleResponse>, Status> {
        let caller = self.access.caller(&request)?;
        self.access.authorize(&caller, Action::Throttle, None)?;
        let request = request.into_inner();
        let customer = CustomerId::parse(&request.customer)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.access
            .authorize(&caller, Action::Throttle, Some(customer.as_str()))?;
        let unavailable = |e: godwit_common::Error| Status::unavailable(e.to_string());
        let current =
            crate::throttle::limits(self.store.as_ref(), &self.keyspace, customer.as_str())
                .await
                .map_err(unavailable)?;
        // Unset keeps the current value; zero lifts the limit.
        let bytes_per_sec = match request.bytes_per_sec {
            Some(0) => None,
            Some(rate) => Some(rate),
            None => current.as_ref().and_then(|l| l.bytes_per_sec),
        };
        let max_connections = match request.max_connections {
            Some(0) => None,
            Some(cap) => Some(cap),
            None => current.as_ref().and_then(|l| l.max_connections),
        };
        // Adaptive thresholds come from the job spec and stay as they are.
        let adaptive = current.and_then(|l| l.adaptive);
        crate::throttle::check_limits(bytes_per_sec, max_connections, adaptive.clone())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let limits = CustomerLimits {
            bytes_per_sec,
            max_connections,
            adaptive,
            set_by: "operator".to_owned(),
        };
        crate::throttle::set_limits(
            self.store.as_ref(),
            &self.keyspace,
            customer.as_str(),
            &limits,
        )
        .await
        .map_err(unavailable)?;
        let throttle = status::throttle(self.store.as_ref(), &self.keyspace, customer.as_str())
            .await
            .map_err(unavailable)?;
        // The change bears on every running job of the customer: each
        // one's trail records it.
        let limits_text = format!(
            "bytes/s {}, sessions {}",
            limits
                .bytes_per_sec
                .map_or("unlimited".into(), |b| b.to_string()),
            limits
                .max_connections
                .map_or("uncapped".into(), |c| c.to_string())
        );
        if let Ok(jobs) = status::list(self.store.as_ref(), &self.keyspace).await {
            for job in jobs
                .iter()
                .filter(|j| j.customer == customer.as_str() && !is_final(j.state))
            {
                if let Ok(record) = self
                    .record(
                        &JobId::parse(&job.job_id).map_err(|e| Status::internal(e.to_string()))?,
                    )
                    .await
                {
                    self.audited(
                        &caller,
                        &record.spec,
                        "throttle",
                        "ok",
                        Some(limits_text.clone()),
                    )
                    .await;
                }
            }
        }
        Ok(Response::new(SetThrottleResponse {
            throttle: Some(throttle),
        }))
    }

    async fn pause_job(
        &self,
        request: Request<PauseJobRequest>,
    ) -> Result<Response<JobStatus>, Status> {
        let (caller, record) = self
            .authorized(&request, &request.get_ref().job_id, Action::Pause)
            .await?;
        let paused = self.set_paused(&request.into_inner().job_id, true).await?;
        self.audited(&caller, &record.spec, "job.pause", "ok", None)
            .await;
        Ok(paused)
    }

    async fn resume_job(
        &self,
        request: Request<PauseJobRequest>,
    ) -> Result<Response<JobStatus>, Status> {
        let (caller, record) = self
            .authorized(&request, &request.get_ref().job_id, Action::Resume)
            .await?;
        let resumed = self.set_paused(&request.into_inner().job_id, false).await?;
        self.audited(&caller, &record.spec, "job.resume", "ok", None)
            .await;
        Ok(resumed)
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        let (caller, record) = self
            .authorized(&request, &request.get_ref().job_id, Action::Cancel)
            .await?;
        let job = record.spec.job.clone();
        let current = self.status(&job).await?;
        if !is_final(current.state) && record.spec.changes.is_some() {
            self.signed_off(&caller, &record.spec, "cancel").await?;
        }
        if !is_final(current.state) {
            self.store
                .put(&self.keyspace.job_control(&job), b"cancel".to_vec())
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            tracing::info!(job_id = %job, "cancellation requested");
            self.audited(&caller, &record.spec, "job.cancel", "requested", None)
                .await;
        }
        Ok(Response::new(CancelJobResponse {
            state: current.state,
        }))
    }

    async fn approve(
        &self,
        request: Request<ApproveRequest>,
    ) -> Result<Response<ApproveResponse>, Status> {
        let action = match request.get_ref().action.as_str() {
            "cutover" => Action::Cutover,
            "cancel" => Action::Cancel,
            "purge" | "shred" => Action::Purge,
            other => {
                return Err(Status::invalid_argument(format!(
                    "{other:?} is not an action that waits for approval: use cutover, cancel, purge or shred"
                )));
            }
        };
        let (caller, record) = self
            .authorized(&request, &request.get_ref().job_id, action)
            .await?;
        let name = request.get_ref().action.clone();
        let approved = crate::approval::approve(
            self.store.as_ref(),
            &self.keyspace,
            &record.spec.job,
            &name,
            caller.identity(),
        )
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
        match approved {
            Ok(requested_by) => Ok(Response::new(ApproveResponse { requested_by })),
            Err(crate::approval::Refusal::OwnRequest) => {
                let refused = Status::permission_denied(format!(
                    "{} requested this {name} and cannot approve it: another identity allowed to {name} \
                     customer {}'s jobs must",
                    caller.identity(),
                    record.spec.customer
                ));
                self.refusal(&caller, &record, action, &refused).await;
                Err(refused)
            }
            Err(crate::approval::Refusal::NothingPending) => {
                Err(Status::failed_precondition(format!(
                    "no {name} of job {} is waiting for approval",
                    record.spec.job
                )))
            }
        }
    }

    async fn purge_job(
        &self,
        request: Request<PurgeJobRequest>,
    ) -> Result<Response<PurgeJobResponse>, Status> {
        let (caller, record) = self
            .authorized(&request, &request.get_ref().job_id, Action::Purge)
            .await?;
        let shred_only = request.get_ref().shred_only;
        let action = if shred_only { "shred" } else { "purge" };
        if !record.phase().is_final() {
            return Err(Status::failed_precondition(format!(
                "job {} has not ended: its staged data is still in use; cancel it or wait for its end first",
                record.spec.job
            )));
        }
        self.signed_off(&caller, &record.spec, action).await?;
        let staging = godwit_common::staging::Staging::open(&record.spec.staging)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let deleted = if shred_only {
            staging
                .delete_wrapped_key(&record.spec.job)
                .await
                .map(|()| 1)
        } else {
            staging.purge_job(&record.spec.job).await
        }
        .map_err(|e| Status::unavailable(e.to_string()))?;
        let what = if shred_only {
            "data key destroyed".to_owned()
        } else {
            format!("{deleted} staged object(s) deleted, data key destroyed")
        };
        self.audited(&caller, &record.spec, action, "ok", Some(what))
            .await;
        Ok(Response::new(PurgeJobResponse {
            objects_deleted: deleted as u64,
        }))
    }
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<GodwitServer<GodwitService>>()
        .await;
    // `grpcurl` and similar tools list and call `godwit.v1` without the
    // proto files; a caller still needs the listener's TLS (and client
    // certificate) to reach it, and every `godwit.v1` call its policy.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(godwit_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| {
            tracing::error!(error = %e, "the API's descriptors do not load");
            e
        });
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = security.tls {
        server = server.tls_config(tls)?;
    }
    server
        .add_optional_service(reflection.ok())
        .add_service(health_service)
        .add_service(GodwitServer::new(GodwitService::new(
            store,
            keyspace,
            security.access,
        )))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
