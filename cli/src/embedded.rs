//! `godwit run`: the embedded default. The coordinator's driver and the
//! workers run in this process over the in-process lease store: the same
//! code paths as a distributed deployment, without etcd.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use godwit_common::keyspace::Keyspace;
use godwit_common::lease::{LeaseStore, MemoryStore};
use godwit_common::spec::JobSpec;
use godwit_coordinator::service::{ListenerFlags, Security};
use godwit_coordinator::throttle::Allocator;
use godwit_coordinator::tls::ServerTlsFiles;
use godwit_coordinator::{JobDriver, Verifier, preflight, status};
use godwit_worker::{Worker, WorkerConfig};
use tokio::sync::watch;

use crate::render;

const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// Where a job that streams changes serves the API unless told otherwise.
const DEFAULT_LISTEN: &str = "127.0.0.1:7400";

/// Workers running in this process over the in-process lease store, with
/// the coordinator's allocator splitting customer budgets among them.
struct InProcessWorkers {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<godwit_common::Result<()>>>,
    allocator: tokio::task::JoinHandle<()>,
}

impl InProcessWorkers {
    fn start(
        store: &Arc<dyn LeaseStore>,
        keyspace: &Keyspace,
        workers: usize,
        concurrency: usize,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for n in 0..workers.max(1) {
            let mut config = WorkerConfig::new(format!("embedded-{n}"));
            config.concurrency = concurrency.max(1);
            let worker = Worker::new(store.clone(), keyspace.clone(), config);
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                worker
                    .run(async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    })
                    .await
            }));
        }
        let allocator = tokio::spawn(
            Allocator::new(store.clone(), keyspace.clone()).run(std::future::pending()),
        );
        Self {
            stop,
            tasks,
            allocator,
        }
    }

    async fn stop(self) {
        self.allocator.abort();
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// How `godwit run` serves the API beside its job.
pub struct ApiOptions {
    pub listen: Option<String>,
    /// Certificate, key and client CA (`--tls-cert`, `--tls-key`, `--tls-ca`).
    pub tls: (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>),
    pub policy: Option<PathBuf>,
    pub insecure_plaintext: bool,
}

const RUN_FLAGS: ListenerFlags = ListenerFlags {
    cert: "--tls-cert",
    key: "--tls-key",
    client_ca: "--tls-ca",
};

/// The API's listener, bound and secured before the job touches anything:
/// a listener that cannot be served safely refuses the run up front.
struct BoundApi {
    listener: tokio::net::TcpListener,
    security: Security,
    address: std::net::SocketAddr,
}

impl BoundApi {
    fn url(&self) -> String {
        let scheme = if self.security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.address)
    }
}

async fn bind_api(listen: &str, options: ApiOptions) -> Result<BoundApi, String> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        format!("cannot listen on {listen}: {e} (choose another address with --listen)")
    })?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the address bound for {listen}: {e}"))?;
    let (cert, key, client_ca) = options.tls;
    let tls = ServerTlsFiles::from_parts(
        cert,
        key,
        client_ca,
        [RUN_FLAGS.cert, RUN_FLAGS.key, RUN_FLAGS.client_ca],
    )
    .map_err(|e| e.to_string())?;
    let security = Security::for_listener(
        address,
        tls,
        options.policy.as_deref(),
        options.insecure_plaintext,
        &RUN_FLAGS,
    )
    .map_err(|e| e.to_string())?;
    Ok(BoundApi {
        listener,
        security,
        address,
    })
}

/// Serves the API over the in-process store, so operators reach the job
/// as they would a coordinator's.
fn serve_api(api: BoundApi, store: &Arc<dyn LeaseStore>, keyspace: &Keyspace) -> ApiServer {
    let BoundApi {
        listener, security, ..
    } = api;
    let (store, keyspace) = (store.clone(), keyspace.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) =
            godwit_coordinator::service::serve(listener, store, keyspace, security, shutdown).await
        {
            tracing::error!(error = %e, "the API server stopped");
        }
    });
    ApiServer { stop, task }
}

/// The API served beside an embedded job.
struct ApiServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Stops taking requests and lets those in flight (a cutover waiting for
    /// the job to end) answer, for a few seconds at most.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Runs the job in this process; its trace hangs under `trace`, the
/// command's span.
pub async fn run(
    spec_path: &Path,
    workers: usize,
    concurrency: usize,
    api: ApiOptions,
    trace: Option<godwit_common::telemetry::traces::SpanRef>,
) -> i32 {
    let spec = match JobSpec::from_file(spec_path) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let job = spec.job.clone();
    let streams = spec.changes.is_some();
    let listen = api
        .listen
        .clone()
        .or(streams.then(|| DEFAULT_LISTEN.to_owned()));
    let bound = match listen {
        Some(listen) => match bind_api(&listen, api).await {
            Ok(bound) => Some(bound),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
        None => None,
    };
    let prepared = match preflight(spec).await {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("error: {e}");
            return e.exit_code();
        }
    };
    let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
    let keyspace = Keyspace::new("/godwit");
    let driver = JobDriver::new(store.clone(), keyspace.clone());
    if let Err(e) = driver.register(&prepared, trace).await {
        eprintln!("error: {e}");
        return e.exit_code();
    }

    let server = bound.map(|bound| {
        let url = bound.url();
        eprintln!("serving the godwit.v1 API on {url}");
        if streams {
            eprintln!(
                "once the job streams changes: `godwit verify --coordinator {url} {job}` compares both \
                 sides; `godwit cutover --coordinator {url} {job}` ends it"
            );
        }
        serve_api(bound, &store, &keyspace)
    });

    let workers = InProcessWorkers::start(&store, &keyspace, workers, concurrency);
    // Jobs submitted through the API beside this run are driven as a
    // coordinator would; this run's own job is driven below.
    let dispatcher = {
        let (store, keyspace, own) = (store.clone(), keyspace.clone(), job.clone());
        tokio::spawn(godwit_coordinator::leadership::lead(
            store.clone(),
            keyspace.clone(),
            "embedded".into(),
            godwit_common::lease::LeaseTiming::DEFAULT,
            move |records| {
                godwit_coordinator::dispatch::drive_unfinished(
                    store.clone(),
                    keyspace.clone(),
                    records,
                    Some(own.clone()),
                )
            },
            std::future::pending(),
        ))
    };

    let reporter = {
        let store = store.clone();
        let keyspace = keyspace.clone();
        let job = job.clone();
        tokio::spawn(async move {
            let mut bars = crate::bars::Bars::for_terminal();
            // Bars move smoothly; plain lines stay sparse in logs.
            let interval = match bars {
                Some(_) => Duration::from_millis(250),
                None => PROGRESS_INTERVAL,
            };
            loop {
                tokio::time::sleep(interval).await;
                if let Ok(Some(status)) = status::load(store.as_ref(), &keyspace, &job).await {
                    match bars.as_mut() {
                        Some(bars) => bars.update(&status),
                        None => eprintln!("{}", render::progress_line(&status)),
                    }
                }
            }
        })
    };
    let canceller = {
        let store = store.clone();
        let key = keyspace.job_control(&job);
        let abort_job = job.clone();
        let abort_source = prepared.spec.source.clone();
        tokio::spawn(async move {
            godwit_common::shutdown::signal().await;
            eprintln!(
                "interrupted: cancelling the job and dropping its replication slot (interrupt again to abort at once)"
            );
            let _ = store.put(&key, b"cancel".to_vec()).await;
            godwit_common::shutdown::signal().await;
            // Aborting still frees the customer's WAL: the slot goes first.
            let slot = godwit_common::pg::snapshot::slot_name(&abort_job);
            match godwit_common::pg::snapshot::drop_slot_now(
                &abort_source,
                &slot,
                std::time::Duration::from_secs(5),
            )
            .await
            {
                Ok(()) => eprintln!("aborted: replication slot {slot} dropped"),
                Err(e) => eprintln!(
                    "aborted without dropping replication slot {slot} ({e}): on the source, run \
                     SELECT pg_drop_replication_slot('{slot}')"
                ),
            }
            std::process::exit(130);
        })
    };

    let outcome = driver.execute(prepared).await;
    dispatcher.abort();
    reporter.abort();
    canceller.abort();
    workers.stop().await;
    if let Some(server) = server {
        server.stop().await;
    }

    if let Ok(Some(status)) = status::load(store.as_ref(), &keyspace, &job).await {
        print!("{}", render::table_report(&status));
    }
    match outcome {
        Ok(summary) => {
            let secs = summary.duration.as_secs_f64().max(0.001);
            println!(
                "migrated {} tables, {} rows: {} read from the source, {} staged (compressed, encrypted) in {} ({}/s)",
                summary.tables,
                summary.rows,
                render::bytes(summary.bytes_read),
                render::bytes(summary.bytes_staged),
                render::duration_ms(summary.duration.as_millis() as u64),
                render::bytes((summary.bytes_read as f64 / secs) as u64),
            );
            let (p, st) = (summary.phases, summary.stages);
            let d = render::duration_ms;
            println!(
                "phases: snapshot {}, schema {}, copy {}, indexes and constraints {}, sequences {}, check {}",
                d(p.snapshot_ms),
                d(p.schema_ms),
                d(p.copy_ms),
                d(p.indexes_ms),
                d(p.sequences_ms),
                d(p.check_ms)
            );
            println!(
                "copy stages, summed over parallel partitions: source read {}, compress+encrypt {}, stage {}, load {}",
                d(st.read_ms),
                d(st.seal_ms),
                d(st.stage_ms),
                d(st.load_ms)
            );
            println!("every table's row count and content checksum match on source and target");
            if let Some(cut) = &summary.cutover {
                println!(
                    "cut over: {}; the source's tables refuse writes",
                    render::cutover_line(&godwit_coordinator::status::cutover(cut))
                );
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// `godwit replay`: the staged copy of a finished job into a target, with no
/// connection to the source.
pub async fn replay(
    spec_path: &Path,
    target: Option<&str>,
    options: godwit_worker::replay::ReviewOptions,
) -> i32 {
    let spec = match JobSpec::from_file(spec_path) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let target = target.unwrap_or(&spec.target).to_owned();
    let started = std::time::Instant::now();
    let bar = crate::bars::Bars::counting(&format!("replay {}", spec.job), "chunks");
    let progress = |loaded: u64, chunks: u64| {
        if let Some(bar) = &bar {
            bar.set_length(chunks);
            bar.set_position(loaded);
        }
    };
    let replayed = godwit_worker::replay::replay(&spec, &target, options, &progress).await;
    if let Some(bar) = &bar {
        bar.abandon();
    }
    match replayed {
        Ok(summary) => {
            println!(
                "replayed job {} into {}: {} tables, {} chunks, {} rows, {} staged, in {}; no connection to the source",
                spec.job,
                godwit_common::pg::describe(&target),
                summary.tables,
                summary.chunks,
                summary.rows,
                render::bytes(summary.bytes_staged),
                render::duration_ms(started.elapsed().as_millis() as u64),
            );
            if summary.masked_columns > 0 {
                println!(
                    "review copy: {} column(s) masked with the customer's key (masked_for: review)",
                    summary.masked_columns
                );
            }
            if let Some(sample) = options.sample {
                println!(
                    "sample: {}% of the rows of {} table(s) no foreign key references (seed {}); referenced tables whole",
                    sample.percent, summary.sampled_tables, sample.seed
                );
            }
            0
        }
        Err(godwit_worker::replay::ReplayError::Rejected(e)) => {
            eprintln!("error: {e}");
            2
        }
        Err(godwit_worker::replay::ReplayError::Failed(e)) => {
            eprintln!("error: replay failed: {e}");
            1
        }
    }
}

pub async fn verify(
    spec_path: &Path,
    report_path: Option<&Path>,
    options: godwit_common::verify::Options,
    workers: usize,
    concurrency: usize,
) -> i32 {
    let spec = match JobSpec::from_file(spec_path) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
    let keyspace = Keyspace::new("/godwit");
    let workers = InProcessWorkers::start(&store, &keyspace, workers, concurrency);
    let drawing =
        crate::bars::Bars::counting(&format!("verify {}", spec.job), "ranges").map(|bar| {
            let (store, keyspace, job) = (store.clone(), keyspace.clone(), spec.job.clone());
            tokio::spawn(async move {
                loop {
                    if let Ok(ranges) =
                        godwit_common::work::list::<godwit_common::work::VerifyRange>(
                            store.as_ref(),
                            &keyspace,
                            &job,
                        )
                        .await
                    {
                        let done = ranges
                            .iter()
                            .filter(|r| r.state == godwit_common::work::WorkState::Done)
                            .count();
                        bar.set_length(ranges.len() as u64);
                        bar.set_position(done as u64);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        });
    let verified = Verifier::new(store, keyspace).verify(&spec, options).await;
    if let Some(drawing) = drawing {
        drawing.abort();
    }
    workers.stop().await;
    let verified = match verified {
        Ok(verified) => verified,
        Err(e) => {
            eprintln!("error: cannot verify job {}: {e}", spec.job);
            return 2;
        }
    };
    let json = match serde_json::to_string_pretty(&verified.report) {
        Ok(json) => json,
        Err(e) => {
            eprintln!("error: cannot render the report: {e}");
            return 2;
        }
    };
    render::verification(
        &verified.report.summary(),
        verified.stored_at.map_err(|e| e.to_string()),
        &json,
        report_path,
        verified.report.matched,
    )
}

/// Shows the job's last stored verification report.
pub async fn report(spec_path: &Path, format: crate::ReportFormat) -> i32 {
    let spec = match JobSpec::from_file(spec_path) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let loaded = godwit_common::verify::load_report(&spec);
    match loaded.await {
        Ok(report) => {
            match format {
                crate::ReportFormat::Report => match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: cannot render the report: {e}");
                        return 1;
                    }
                },
                crate::ReportFormat::Summary => println!("{}", report.summary()),
                crate::ReportFormat::Html
                | crate::ReportFormat::Pdf
                | crate::ReportFormat::Json => {
                    let debrief = godwit_common::debrief::gather(&spec, report).await;
                    return crate::debrief::write(&debrief, format);
                }
            }
            0
        }
        Err(e) => {
            eprintln!(
                "error: no readable verification report for job {}: {e}; run `godwit verify` first",
                spec.job
            );
            2
        }
    }
}
