//! The API over mTLS with access by policy: every RPC against every kind
//! of caller, over real TLS handshakes with certificates made for the test;
//! submissions held to the customer's allow-list; listeners that would be
//! open to anyone refused.

use std::process::Command;
use std::time::Duration;

use godwit_proto::v1::godwit_client::GodwitClient;
use godwit_proto::v1::{
    ApproveRequest, CancelJobRequest, CutoverRequest, GetJobRequest, GetReportRequest,
    ListJobsRequest, PauseJobRequest, PurgeJobRequest, SetThrottleRequest, SubmitJobRequest,
    VerifyJobRequest, WatchJobRequest,
};
use godwit_tests::{
    CertFiles, Etcd, Job, Named, PgCluster, Pki, Service, bin, describe, free_port, run_godwit,
    source_and_target, spec_body, wait_until,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const ADMIN: &str = "spiffe://godwit.test/ops/admin";
pub(crate) const ACME_OPERATOR: &str = "spiffe://godwit.test/ops/acme-operator";
const GLOBEX_OPERATOR: &str = "spiffe://godwit.test/ops/globex-operator";
const ACME_AUDITOR: &str = "acme-auditor";
const WORKER: &str = "spiffe://godwit.test/workers/w1";
pub(crate) const ACME_SECOND: &str = "spiffe://godwit.test/ops/acme-second";

/// The callers of the table, in its column order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Who {
    NoCertificate,
    UnknownIdentity,
    Admin,
    AcmeOperator,
    GlobexOperator,
    AcmeAuditor,
    Worker,
    /// A second operator of acme, for sign-offs; not a column of the table.
    AcmeSecond,
}

const EVERYONE: [Who; 7] = [
    Who::NoCertificate,
    Who::UnknownIdentity,
    Who::Admin,
    Who::AcmeOperator,
    Who::GlobexOperator,
    Who::AcmeAuditor,
    Who::Worker,
];

pub(crate) struct Callers {
    pub(crate) pki: Pki,
    certs: Vec<(Who, CertFiles)>,
}

impl Callers {
    fn new() -> anyhow::Result<Self> {
        let pki = Pki::new("godwit")?;
        let certs = vec![
            (
                Who::UnknownIdentity,
                pki.client("mallory", Named::Uri("spiffe://godwit.test/ops/mallory"))?,
            ),
            (Who::Admin, pki.client("admin", Named::Uri(ADMIN))?),
            (
                Who::AcmeOperator,
                pki.client("acme-operator", Named::Uri(ACME_OPERATOR))?,
            ),
            (
                Who::GlobexOperator,
                pki.client("globex-operator", Named::Uri(GLOBEX_OPERATOR))?,
            ),
            (
                Who::AcmeAuditor,
                pki.client("acme-auditor", Named::CommonName(ACME_AUDITOR))?,
            ),
            (Who::Worker, pki.client("worker", Named::Uri(WORKER))?),
            (
                Who::AcmeSecond,
                pki.client("acme-second", Named::Uri(ACME_SECOND))?,
            ),
        ];
        Ok(Self { pki, certs })
    }

    fn cert(&self, who: Who) -> Option<&CertFiles> {
        self.certs.iter().find(|(w, _)| *w == who).map(|(_, c)| c)
    }

    pub(crate) async fn client(
        &self,
        url: &str,
        who: Who,
    ) -> anyhow::Result<GodwitClient<Channel>> {
        Ok(GodwitClient::new(self.channel(url, who).await?))
    }

    /// An mTLS channel to the coordinator as `who`.
    pub(crate) async fn channel(&self, url: &str, who: Who) -> anyhow::Result<Channel> {
        channel_with(url, &self.pki, self.cert(who)).await
    }
}

async fn client_with(
    url: &str,
    ca: &Pki,
    cert: Option<&CertFiles>,
) -> anyhow::Result<GodwitClient<Channel>> {
    Ok(GodwitClient::new(channel_with(url, ca, cert).await?))
}

async fn channel_with(url: &str, ca: &Pki, cert: Option<&CertFiles>) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca.ca_cert())?))
        .domain_name("localhost");
    if let Some(cert) = cert {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&cert.cert)?,
            std::fs::read(&cert.key)?,
        ));
    }
    Ok(Channel::from_shared(url.to_owned())?
        .tls_config(tls)?
        .connect()
        .await?)
}

fn policy(job: &Job, source: &PgCluster, target: &PgCluster, extra_grant: &str) -> String {
    format!(
        "approvals: [cutover, purge]\n\
         identities:\n\
         - {{ identity: '{ADMIN}', role: admin }}\n\
         - {{ identity: '{ACME_OPERATOR}', role: operator, customers: [acme] }}\n\
         - {{ identity: '{ACME_SECOND}', role: operator, customers: [acme] }}\n\
         - {{ identity: '{GLOBEX_OPERATOR}', role: operator, customers: [globex{extra_grant}] }}\n\
         - {{ identity: '{ACME_AUDITOR}', role: auditor, customers: [acme] }}\n\
         - {{ identity: '{WORKER}', role: worker }}\n\
         customers:\n  acme:\n    regions: [eu]\n    key_files: ['{key}']\n    \
         staging: [{{ at: 'file://{staging}', region: eu }}]\n    \
         sources: [{{ at: '127.0.0.1:{source}/shop' }}]\n    \
         targets: [{{ at: '127.0.0.1:{target}/shop', region: eu }}]\n",
        key = job.key_path.display(),
        staging = job.staging_dir().display(),
        source = source.port,
        target = target.port,
    )
}

/// Every RPC once as `who`; the status code each answered.
async fn call_every_rpc(
    callers: &Callers,
    url: &str,
    who: Who,
    job_id: &str,
    spec_yaml: &str,
) -> anyhow::Result<Vec<(&'static str, Code)>> {
    let mut client = callers.client(url, who).await?;
    let job = || job_id.to_owned();
    let code = |result: Result<(), tonic::Status>| result.err().map_or(Code::Ok, |s| s.code());
    let mut codes = Vec::new();
    codes.push((
        "SubmitJob",
        code(
            client
                .submit_job(SubmitJobRequest {
                    spec_yaml: spec_yaml.to_owned(),
                })
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "GetJob",
        code(
            client
                .get_job(GetJobRequest { job_id: job() })
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "ListJobs",
        code(client.list_jobs(ListJobsRequest {}).await.map(drop)),
    ));
    codes.push((
        "WatchJob",
        code(
            client
                .watch_job(WatchJobRequest { job_id: job() })
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "GetReport",
        code(
            client
                .get_report(GetReportRequest {
                    job_id: job(),
                    debrief: true,
                })
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "VerifyJob",
        code(
            client
                .verify_job(VerifyJobRequest {
                    job_id: job(),
                    compare_rows_below: None,
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "SetThrottle",
        code(
            client
                .set_throttle(SetThrottleRequest {
                    customer: "acme".into(),
                    bytes_per_sec: None,
                    max_connections: None,
                })
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "PauseJob",
        code(
            client
                .pause_job(PauseJobRequest { job_id: job() })
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "ResumeJob",
        code(
            client
                .resume_job(PauseJobRequest { job_id: job() })
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "Cutover",
        code(
            client
                .cutover(CutoverRequest { job_id: job() })
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "CancelJob",
        code(
            client
                .cancel_job(CancelJobRequest { job_id: job() })
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "Approve",
        code(
            client
                .approve(ApproveRequest {
                    job_id: job(),
                    action: "cutover".into(),
                })
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "PurgeJob",
        code(
            client
                .purge_job(PurgeJobRequest {
                    job_id: job(),
                    shred_only: true,
                })
                .await
                .map(drop),
        ),
    ));
    Ok(codes)
}

/// What each caller may do: `A` allowed (any answer but a refusal), `U`
/// unauthenticated, `D` permission denied; columns in [`EVERYONE`]'s order.
const EXPECTED: [(&str, &str); 13] = [
    ("SubmitJob", "UUAADDD"),
    ("GetJob", "UUAADAD"),
    ("ListJobs", "UUAAAAD"),
    ("WatchJob", "UUAADAD"),
    ("GetReport", "UUAADAD"),
    ("VerifyJob", "UUAADDD"),
    ("SetThrottle", "UUAADDD"),
    ("PauseJob", "UUAADDD"),
    ("ResumeJob", "UUAADDD"),
    ("Cutover", "UUAADDD"),
    ("CancelJob", "UUAADDD"),
    ("Approve", "UUAADDD"),
    ("PurgeJob", "UUAADDD"),
];

fn verdict(code: Code) -> char {
    match code {
        Code::Unauthenticated => 'U',
        Code::PermissionDenied => 'D',
        _ => 'A',
    }
}

/// A coordinator serving mTLS with the test's policy, a worker, both on
/// an etcd that takes client certificates only, and a job's clusters.
pub(crate) struct Deployment {
    pub(crate) callers: Callers,
    pub(crate) source: PgCluster,
    pub(crate) target: PgCluster,
    pub(crate) job: Job,
    policy_path: std::path::PathBuf,
    _etcd: Etcd,
    pub(crate) coordinator: Service,
    _worker: Service,
    pub(crate) url: String,
    /// Where the coordinator serves its metrics (over its API's TLS).
    pub(crate) metrics: String,
    /// Where the worker serves its metrics (over TLS, its own certificate).
    pub(crate) worker_metrics: String,
}

impl Deployment {
    pub(crate) async fn start(job_id: &str, spec_extra: &str) -> anyhow::Result<Self> {
        let callers = Callers::new()?;
        let server = callers.pki.server("coordinator")?;
        let (source, target) = source_and_target(1).await?;
        let job = Job::create(|staging| spec_body(job_id, &source, &target, staging) + spec_extra)?;
        let policy_path = job.dir.path().join("policy.yaml");
        std::fs::write(&policy_path, policy(&job, &source, &target, ""))?;
        let etcd = Etcd::start_tls(&callers.pki)?;
        let tls_env =
            |name: &str, path: &std::path::Path| (name.to_owned(), path.display().to_string());
        let mut env = etcd.env("COORDINATOR");
        let metrics = format!("127.0.0.1:{}", godwit_tests::free_port()?);
        env.extend([
            (
                "GODWIT__COORDINATOR__METRICS_LISTEN".to_owned(),
                metrics.clone(),
            ),
            tls_env("GODWIT__COORDINATOR__TLS_CERT", &server.cert),
            tls_env("GODWIT__COORDINATOR__TLS_KEY", &server.key),
            tls_env("GODWIT__COORDINATOR__CLIENT_CA", &callers.pki.ca_cert()),
            tls_env("GODWIT__COORDINATOR__POLICY", &policy_path),
        ]);
        let root = format!("/godwit-{job_id}");
        let (coordinator, url) = Service::coordinator(&etcd.url(), &root, &env)?;
        let url = url.replace("http://", "https://");
        let worker_metrics = format!("127.0.0.1:{}", godwit_tests::free_port()?);
        let worker_cert = callers.pki.server("worker-metrics")?;
        let mut worker_env = etcd.env("WORKER");
        worker_env.extend([
            (
                "GODWIT__WORKER__METRICS_LISTEN".to_owned(),
                worker_metrics.clone(),
            ),
            tls_env("GODWIT__WORKER__METRICS_TLS_CERT", &worker_cert.cert),
            tls_env("GODWIT__WORKER__METRICS_TLS_KEY", &worker_cert.key),
        ]);
        let worker = Service::worker("worker-1", &etcd.url(), &root, &url, &[], &worker_env)?;
        Ok(Self {
            callers,
            source,
            target,
            job,
            policy_path,
            _etcd: etcd,
            coordinator,
            _worker: worker,
            url,
            metrics,
            worker_metrics,
        })
    }

    /// The CLI as `who`, over mTLS.
    pub(crate) fn cli(&self, who: Who, args: &[&str]) -> anyhow::Result<std::process::Output> {
        self.cli_command(who, args)?.output().map_err(Into::into)
    }

    pub(crate) fn cli_command(&self, who: Who, args: &[&str]) -> anyhow::Result<Command> {
        let cert = self
            .callers
            .cert(who)
            .ok_or_else(|| anyhow::anyhow!("no certificate for {who:?}"))?;
        let mut command = Command::new(bin("godwit")?);
        command
            .arg("--tls-ca")
            .arg(self.callers.pki.ca_cert())
            .arg("--tls-cert")
            .arg(&cert.cert)
            .arg("--tls-key")
            .arg(&cert.key)
            .args(args)
            .stdin(std::process::Stdio::null());
        Ok(command)
    }
}

/// The coordinator's server reflection, as `grpcurl` uses it, over the
/// same mTLS: the services listed, and `godwit.v1.Godwit` described with
/// its methods from the descriptors the server holds.
async fn reflection_lists_and_describes_the_api(
    url: &str,
    callers: &Callers,
) -> anyhow::Result<()> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let channel = callers.channel(url, Who::Admin).await?;
    let mut client = ServerReflectionClient::new(channel);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "godwit.v1.Godwit".into(),
            )),
        ]))
        .await?
        .into_inner();
    let mut services = Vec::new();
    let mut methods = Vec::new();
    while let Some(answer) = answers.message().await? {
        match answer.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                services.extend(list.service.into_iter().map(|s| s.name));
            }
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                for bytes in files.file_descriptor_proto {
                    let file: prost_types::FileDescriptorProto =
                        prost::Message::decode(&bytes[..])?;
                    for service in file.service.iter().filter(|s| s.name() == "Godwit") {
                        methods.extend(service.method.iter().map(|m| m.name().to_owned()));
                    }
                }
            }
            other => anyhow::bail!("unexpected reflection answer: {other:?}"),
        }
    }
    services.sort();
    for expected in [
        "godwit.v1.Godwit",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} not listed: {services:?}"
        );
    }
    for expected in ["SubmitJob", "GetJob", "WatchJob", "Cutover", "VerifyJob"] {
        assert!(
            methods.iter().any(|m| m == expected),
            "{expected} not described: {methods:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_answers_each_caller_as_the_policy_says_over_mtls() -> anyhow::Result<()> {
    let deployment = Deployment::start("secured", "").await?;
    let Deployment {
        callers,
        source,
        target,
        job,
        policy_path,
        coordinator,
        url,
        ..
    } = &deployment;
    let url = url.as_str();

    // The CLI over mTLS: the admin submits and watches the job to its end.
    let submitted = deployment.cli(Who::Admin, &["submit", "--coordinator", url, job.spec()])?;
    assert!(
        submitted.status.success(),
        "{}\n{}",
        describe(&submitted),
        coordinator.log_text()
    );
    let watched = deployment.cli(Who::Admin, &["watch", "--coordinator", url, "secured"])?;
    assert!(watched.status.success(), "{}", describe(&watched));
    reflection_lists_and_describes_the_api(url, callers).await?;
    crate::metrics_tls::only_over_tls(&deployment).await?;
    let ca = callers.pki.ca_cert().display().to_string();
    // Without a certificate the CLI is refused, saying what to present.
    let anonymous = run_godwit(
        &["--tls-ca", &ca, "status", "--coordinator", url, "secured"],
        &[],
    )?;
    assert_eq!(anonymous.status.code(), Some(2), "{}", describe(&anonymous));
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("no client certificate"),
        "{}",
        describe(&anonymous)
    );

    // The table: every RPC × every kind of caller.
    let spec_yaml = std::fs::read_to_string(&job.spec_path)?;
    let mut mismatches = Vec::new();
    for (column, who) in EVERYONE.iter().enumerate() {
        let codes = call_every_rpc(callers, url, *who, "secured", &spec_yaml).await?;
        for ((rpc, code), (expected_rpc, row)) in codes.iter().zip(EXPECTED) {
            assert_eq!(*rpc, expected_rpc);
            let expected = row.chars().nth(column).unwrap_or('?');
            if verdict(*code) != expected {
                mismatches.push(format!(
                    "{rpc} as {who:?}: expected {expected}, answered {code:?}"
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}\n{}",
        mismatches.join("\n"),
        coordinator.log_text()
    );

    // A refusal names the role, the action and the customer.
    let refusal = callers
        .client(url, Who::GlobexOperator)
        .await?
        .cutover(CutoverRequest {
            job_id: "secured".into(),
        })
        .await
        .expect_err("globex's operator cut over acme's job");
    for piece in ["operator", "cutover", "acme"] {
        assert!(refusal.message().contains(piece), "{}", refusal.message());
    }
    // Refusals about a job are in its audit trail, with the identity.
    let trail = run_godwit(&["audit", "show", job.spec(), "--json"], &[])?;
    assert!(trail.status.success(), "{}", describe(&trail));
    let trail = String::from_utf8_lossy(&trail.stdout);
    assert!(
        trail.lines().any(|r| r.contains(GLOBEX_OPERATOR)
            && r.contains("call.cutover")
            && r.contains("refused")),
        "{trail}"
    );
    assert!(
        trail
            .lines()
            .any(|r| r.contains(ADMIN) && r.contains("job.submit")),
        "{trail}"
    );
    // Lists show a caller only its customers' jobs.
    for (who, jobs) in [
        (Who::Admin, 1),
        (Who::AcmeAuditor, 1),
        (Who::GlobexOperator, 0),
    ] {
        let listed = callers
            .client(url, who)
            .await?
            .list_jobs(ListJobsRequest {})
            .await?
            .into_inner()
            .jobs;
        assert_eq!(listed.len(), jobs, "{who:?} sees {listed:?}");
    }

    // A certificate from another CA does not get through the handshake.
    let stranger_ca = Pki::new("stranger")?;
    let stranger = stranger_ca.client("admin-lookalike", Named::Uri(ADMIN))?;
    let handshake = match client_with(url, &callers.pki, Some(&stranger)).await {
        Ok(mut client) => client
            .get_job(GetJobRequest {
                job_id: "secured".into(),
            })
            .await
            .err()
            .map(|s| s.code()),
        Err(_) => Some(Code::Unavailable),
    };
    assert!(
        !matches!(
            handshake,
            None | Some(Code::Ok | Code::NotFound | Code::PermissionDenied)
        ),
        "a certificate of another CA was served: {handshake:?}"
    );

    // A submission naming a key file outside the customer's allow-list is
    // refused before anything is written, naming the file.
    let platform_key = Job::new("")?;
    let stolen = spec_yaml.replace("job: secured", "job: secured-2").replace(
        &job.key_path.display().to_string(),
        &platform_key.key_path.display().to_string(),
    );
    let refused = callers
        .client(url, Who::Admin)
        .await?
        .submit_job(SubmitJobRequest { spec_yaml: stolen })
        .await
        .expect_err("a job naming the platform's key was accepted");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused
            .message()
            .contains(&platform_key.key_path.display().to_string()),
        "{}",
        refused.message()
    );
    let absent = callers
        .client(url, Who::Admin)
        .await?
        .get_job(GetJobRequest {
            job_id: "secured-2".into(),
        })
        .await;
    assert_eq!(absent.err().map(|s| s.code()), Some(Code::NotFound));

    // The policy is re-read when its file changes.
    std::fs::write(policy_path, policy(job, source, target, ", acme"))?;
    wait_until(
        "the changed policy to take effect",
        Duration::from_secs(15),
        || async {
            let answer = callers
                .client(url, Who::GlobexOperator)
                .await?
                .get_job(GetJobRequest {
                    job_id: "secured".into(),
                })
                .await;
            Ok(answer.is_ok().then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_open_to_the_network_needs_tls_or_an_explicit_insecure_flag()
-> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let coordinator = |extra: &[&str]| {
        let mut command = Command::new(bin("godwit-coordinator")?);
        command
            .args([
                "--listen",
                "0.0.0.0:0",
                "--etcd",
                &etcd.url(),
                "--root",
                "/godwit-open",
            ])
            .args(extra)
            .stdin(std::process::Stdio::null());
        anyhow::Ok(command)
    };
    let refused = coordinator(&[])?.output()?;
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("refusing to serve the API on 0.0.0.0"),
        "{}",
        describe(&refused)
    );
    // Half a TLS configuration names what is missing.
    let pki = Pki::new("godwit")?;
    let server = pki.server("coordinator")?;
    let half = coordinator(&["--tls-cert", server.cert.to_str().unwrap_or_default()])?.output()?;
    assert_eq!(half.status.code(), Some(2), "{}", describe(&half));
    assert!(
        String::from_utf8_lossy(&half.stderr).contains("--tls-key and --client-ca"),
        "{}",
        describe(&half)
    );

    // Said explicitly, it serves, and warns.
    let log = tempfile::NamedTempFile::new()?;
    let mut open = godwit_tests::Running(
        coordinator(&["--insecure-plaintext"])?
            .env("GODWIT_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen()?)
            .spawn()?,
    );
    wait_until(
        "the insecure coordinator to warn",
        Duration::from_secs(30),
        || async {
            let text = std::fs::read_to_string(log.path())?;
            Ok(text.contains("WITHOUT TLS").then_some(()))
        },
    )
    .await?;
    assert!(
        open.0.try_wait()?.is_none(),
        "the explicitly insecure coordinator exited"
    );

    // `godwit run --listen` on a non-loopback address is refused before the
    // job touches either database.
    let (source, target) = source_and_target(1).await?;
    let job = Job::create(|staging| spec_body("open-run", &source, &target, staging))?;
    let port = free_port()?;
    let output = run_godwit(
        &["run", job.spec(), "--listen", &format!("0.0.0.0:{port}")],
        &[],
    )?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("without TLS"),
        "{}",
        describe(&output)
    );
    let dst = target.client("shop").await?;
    assert!(
        godwit_tests::user_tables(&dst).await?.is_empty(),
        "the refused run wrote to the target"
    );
    Ok(())
}
