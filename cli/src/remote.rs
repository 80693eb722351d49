//! Commands that talk to a coordinator over gRPC.

use std::path::{Path, PathBuf};

use godwit_proto::v1::godwit_client::GodwitClient;
use godwit_proto::v1::{
    ApproveRequest, CancelJobRequest, CutoverRequest, GetJobRequest, GetReportRequest, JobState,
    ListJobsRequest, PauseJobRequest, PurgeJobRequest, SetThrottleRequest, SubmitJobRequest,
    VerifyJobRequest, WatchJobRequest,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::render;

/// A coordinator to talk to, and the TLS material to talk to it with.
pub struct Coordinator {
    pub url: String,
    pub tls: ClientTlsFiles,
}

/// `--tls-ca`, `--tls-cert`, `--tls-key`: the CA that signed the
/// coordinator's certificate, and this caller's certificate and key.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTlsFiles {
    fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// tonic's client TLS for `host`, from the files given.
    fn config(&self, host: &str) -> Result<ClientTlsConfig, String> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path)
                .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
        };
        let Some(ca) = &self.ca else {
            return Err("an https:// coordinator needs --tls-ca (or GODWIT__TLS_CA): the CA that signed its \
                        certificate"
                .into());
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?))
            .domain_name(host.to_owned());
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read(cert, "client certificate")?,
                    read(key, "client key")?,
                ));
            }
            (None, None) => {}
            _ => return Err("--tls-cert and --tls-key go together: give both, or neither".into()),
        }
        Ok(config)
    }
}

async fn connect(coordinator: &Coordinator) -> Result<GodwitClient<Channel>, i32> {
    let url = coordinator.url.as_str();
    let refused = |why: String| {
        eprintln!("error: {why}");
        2
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| refused(format!("coordinator URL {url} is not a URL: {e}")))?;
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("https") => {
            let host = endpoint.uri().host().unwrap_or_default().to_owned();
            let tls = coordinator.tls.config(&host).map_err(refused)?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| refused(format!("unusable TLS material: {e}")))?;
        }
        Some("http") if coordinator.tls.any() => {
            return Err(refused(format!(
                "TLS files were given but the coordinator URL {url} is plain http://; use https://"
            )));
        }
        Some("http") => {}
        _ => {
            return Err(refused(format!(
                "coordinator URL {url} must start with https:// or http://"
            )));
        }
    }
    let channel = endpoint.connect().await.map_err(|e| {
        use std::error::Error as _;
        let cause = e.source().map(|s| format!(": {s}")).unwrap_or_default();
        eprintln!("error: cannot reach the coordinator at {url}: {e}{cause}; check --coordinator, the TLS files and that it is running");
        1
    })?;
    Ok(GodwitClient::new(channel))
}

/// Prints a gRPC error; rejected input and refused callers exit 2 (so a
/// refused `verify` never reads as "differences found"), everything else 1.
fn failed(status: &tonic::Status) -> i32 {
    eprintln!("error: {}", status.message());
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::Unauthenticated
        | Code::PermissionDenied => 2,
        _ => 1,
    }
}

/// Submits a job; its trace hangs under `trace`, the command's span.
pub async fn submit(
    coordinator: &Coordinator,
    spec_path: &Path,
    trace: Option<godwit_common::telemetry::traces::SpanRef>,
) -> i32 {
    let spec_yaml = match std::fs::read_to_string(spec_path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: cannot read job spec {}: {e}", spec_path.display());
            return 2;
        }
    };
    let mut client = match connect(coordinator).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let mut request = tonic::Request::new(SubmitJobRequest { spec_yaml });
    if let Some(Ok(header)) = trace.map(|t| t.traceparent().parse()) {
        request.metadata_mut().insert("traceparent", header);
    }
    match client.submit_job(request).await {
        Ok(response) => {
            println!("{}", response.into_inner().job_id);
            0
        }
        Err(status) => failed(&status),
    }
}

pub async fn watch(coordinator: &Coordinator, job_id: &str, output: crate::Output) -> i32 {
    let mut client = match connect(coordinator).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let mut stream = match client
        .watch_job(WatchJobRequest {
            job_id: job_id.to_owned(),
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return failed(&status),
    };
    let mut last = None;
    let mut bars = match output {
        crate::Output::Text => crate::bars::Bars::for_terminal(),
        crate::Output::Json => None,
    };
    loop {
        match stream.message().await {
            Ok(Some(status)) => {
                match (output, bars.as_mut()) {
                    (crate::Output::Text, Some(bars)) => bars.update(&status),
                    (crate::Output::Text, None) => {
                        eprint!("{}", render::progress_update(last.as_ref(), &status));
                    }
                    (crate::Output::Json, _) => println!("{}", render::status_json(&status)),
                }
                last = Some(status);
            }
            Ok(None) => break,
            Err(status) => {
                eprintln!(
                    "error: lost the watch of job {job_id}: {}; run `godwit watch` again to resume following it",
                    status.message()
                );
                return 1;
            }
        }
    }
    if let Some(bars) = bars {
        bars.finish();
    }
    let Some(status) = last else { return 1 };
    if output == crate::Output::Text {
        print!("{}", render::table_report(&status));
    }
    if status.state == JobState::Done as i32 {
        0
    } else {
        1
    }
}

pub async fn status(coordinator: &Coordinator, job_id: Option<&str>, output: crate::Output) -> i32 {
    let mut client = match connect(coordinator).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let jobs = match job_id {
        Some(job_id) => client
            .get_job(GetJobRequest {
                job_id: job_id.to_owned(),
            })
            .await
            .map(|r| vec![r.into_inner()]),
        None => client
            .list_jobs(ListJobsRequest {})
            .await
            .map(|r| r.into_inner().jobs),
    };
    match jobs {
        Ok(jobs) => {
            match (output, job_id) {
                (crate::Output::Text, _) => {
                    for job in &jobs {
                        print!("{}", render::table_report(job));
                    }
                }
                (crate::Output::Json, Some(_)) => {
                    for job in &jobs {
                        println!("{:#}", render::status_json(job));
                    }
                }
                (crate::Output::Json, None) => {
                    let all: Vec<serde_json::Value> =
                        jobs.iter().map(render::status_json).collect();
                    println!("{:#}", serde_json::Value::Array(all));
                }
            }
            0
        }
        Err(status) => failed(&status),
    }
}

pub async fn cancel(coordinator: &Coordinator, job_id: &str) -> i32 {
    let mut client = match connect(coordinator).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    match client
        .cancel_job(CancelJobRequest {
            job_id: job_id.to_owned(),
        })
        .await
    {
        Ok(response) => {
            println!(
                "cancellation of {job_id} requested (state was {})",
                render::state_name(response.into_inner().state)
            );
            0
        }
        Err(status) => failed(&status),
    }
}

/// Sets a customer's limits on the coordinator; prints them as in force.
pub async fn throttle(
    coordinator: &Coordinator,
    customer: &str,
    bytes_per_sec: Option<u64>,
    max_connections: Option<u32>,
) -> i32 {
    let mut client = match connect(coordinator).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    match client
        .set_throttle(SetThrottleRequest {
            customer: customer.to_owned(),
            bytes_per_sec,
            max_connections,
        })
        .await
    {
        Ok(response) => {
            if let Some(throttle) = response.into_inner().throttle {
                println!("{}", render::throttle_line(&throttle));
            }
            0
        }
        Err(status) => failed(&status),
    }
}

/// Pauses or resumes reading for a job.
pub async fn pause(coordinator: &Coordinator, job_id: &str, paused: bool) -> i32 {
    let mut client = match connect(coordinator).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let request = PauseJobRequest {
        job_id: job_id.to_owned(),
    };
    let response = if paused {
        client.pause_job(request).await
    } else {
        client.resume_job(request).await
    };
    match response {
        Ok(status) => {
            println!("{}", render::progress_line(&status.into_inner()));
            0
        }
        Err(status) => failed(&status),
    }
}

/// Has the coordinator purge an ended job's staged data, or shred its
/// data key alone; waits for a sign-off when its policy asks for one.
pub async fn purge(coordinator: &Coordinator, job_id: &str, shred_only: bool, yes: bool) -> i32 {
    let what = if shred_only { "shred" } else { "purge" };
    if !yes {
        eprintln!(
            "error: to {what} job {job_id}'s staged data is irreversible; run again with --yes to do it"
        );
        return 2;
    }
    let mut client = match connect(coordinator).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let request = PurgeJobRequest {
        job_id: job_id.to_owned(),
        shred_only,
    };
    match client.purge_job(request).await {
        Ok(response) if shred_only => {
            let _ = response;
            println!("shredded job {job_id}'s data key: its staged data can no longer be opened");
            0
        }
        Ok(response) => {
            println!(
                "purged job {job_id}: {} staged object(s) deleted, data key shredded, audit trail kept",
                response.into_inner().objects_deleted
            );
            0
        }
        Err(status) => failed(&status),
    }
}

/// Releases an action another identity requested.
pub async fn approve(coordinator: &Coordinator, job_id: &str, action: &str) -> i32 {
    let mut client = match connect(coordinator).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let request = ApproveRequest {
        job_id: job_id.to_owned(),
        action: action.to_owned(),
    };
    match client.approve(request).await {
        Ok(response) => {
            println!(
                "approved the {action} of job {job_id} requested by {}",
                response.into_inner().requested_by
            );
            0
        }
        Err(status) => failed(&status),
    }
}

/// Has the coordinator verify a job; exit 0 only when everything matches.
pub async fn verify(
    coordinator: &Coordinator,
    job_id: &str,
    report_path: Option<&Path>,
    options: godwit_common::verify::Options,
) -> i32 {
    let mut client = match connect(coordinator).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let response = match client
        .verify_job(VerifyJobRequest {
            job_id: job_id.to_owned(),
            compare_rows_below: Some(options.compare_rows_below),
            sample_percent: options.sample.map(|s| s.percent),
            sample_seed: options.sample.map_or(0, |s| s.seed),
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return failed(&status),
    };
    let stored_at = if response.stored_at.is_empty() {
        Err("the coordinator could not store it".to_owned())
    } else {
        Ok(response.stored_at)
    };
    render::verification(
        &response.summary,
        stored_at,
        &response.report_json,
        report_path,
        response.matched,
    )
}

/// Has the coordinator cut a streaming job over; exit 0 only on success.
pub async fn cutover(coordinator: &Coordinator, job_id: &str, report_path: Option<&Path>) -> i32 {
    let mut client = match connect(coordinator).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let response = match client
        .cutover(CutoverRequest {
            job_id: job_id.to_owned(),
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return failed(&status),
    };
    if let Some(verification) = &response.verification {
        println!("{}", verification.summary);
        if let Some(path) = report_path
            && let Err(e) = std::fs::write(path, &verification.report_json)
        {
            eprintln!("error: cannot write the report to {}: {e}", path.display());
            return 2;
        }
    }
    let Some(cut) = response.cutover else {
        eprintln!("error: the coordinator did not say how the cutover went");
        return 1;
    };
    if cut.succeeded {
        println!(
            "cutover of job {job_id}: {}; the target is ready, the source's tables refuse writes",
            render::cutover_line(&cut)
        );
        0
    } else {
        eprintln!(
            "error: cutover of job {job_id} {}; the source is unfrozen and changes stream on",
            render::cutover_line(&cut)
        );
        1
    }
}

/// Prints the last report the coordinator stored for a job.
pub async fn report(coordinator: &Coordinator, job_id: &str, format: crate::ReportFormat) -> i32 {
    let mut client = match connect(coordinator).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    match client
        .get_report(GetReportRequest {
            job_id: job_id.to_owned(),
            debrief: matches!(
                format,
                crate::ReportFormat::Html | crate::ReportFormat::Pdf | crate::ReportFormat::Json
            ),
        })
        .await
    {
        Ok(response) => {
            let response = response.into_inner();
            match format {
                crate::ReportFormat::Report => println!("{}", response.report_json),
                crate::ReportFormat::Summary => println!("{}", response.summary),
                crate::ReportFormat::Html
                | crate::ReportFormat::Pdf
                | crate::ReportFormat::Json => {
                    match serde_json::from_str::<godwit_common::debrief::Debrief>(
                        &response.debrief_json,
                    ) {
                        Ok(debrief) => return crate::debrief::write(&debrief, format),
                        Err(e) => {
                            eprintln!(
                                "error: the coordinator's debrief does not read ({e}); is it older \
                                 than this CLI?"
                            );
                            return 1;
                        }
                    }
                }
            }
            0
        }
        Err(status) => failed(&status),
    }
}
