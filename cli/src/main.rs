//! `godwit`: the operator CLI. `run` executes a job in this process
//! (embedded coordinator and workers, in-process lease store); the other
//! commands talk to a coordinator over gRPC.

mod bars;
mod debrief;
mod embedded;
mod lifecycle;
mod plan;
mod remote;
mod render;

use godwit_common::telemetry::traces::SpanRef;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// The report as a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportFormat {
    /// The verification's findings, for people.
    Summary,
    /// The debrief's material (report, manifest, history, audit head).
    Json,
    Html,
    Pdf,
    /// The verification report alone (`--json`, `--output json`).
    #[value(skip)]
    Report,
}

/// How a command prints what it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Text,
    /// For automation: one JSON document (`watch`: one per update, a line each).
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "godwit",
    version,
    about = "Moves a PostgreSQL database into another, provably"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// PEM CA that signed the coordinator's certificate (for https://
    /// coordinators); with `run --listen`, the CA of callers' certificates.
    #[arg(long, global = true, env = "GODWIT__TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate presented to the coordinator (mTLS); with
    /// `run --listen`, the certificate the API is served with.
    #[arg(long, global = true, env = "GODWIT__TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "GODWIT__TLS_KEY")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a job in this process: coordinator, workers and lease store embedded.
    Run {
        /// The job spec (YAML).
        spec: PathBuf,
        /// Workers to run in this process.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Partitions each worker copies at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Serve the godwit.v1 API here while the job runs (status, verify,
        /// throttle, cutover with --coordinator http://ADDR). A job that
        /// streams changes always serves it, by default on 127.0.0.1:7400.
        #[arg(long)]
        listen: Option<String>,
        /// Access policy for the API served with --listen over TLS
        /// (--tls-cert, --tls-key, --tls-ca as the client CA).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Serve the API without TLS on a non-loopback --listen address.
        #[arg(long)]
        insecure_plaintext: bool,
    },
    /// Resolve the job's mapping against both catalogs and forecast the
    /// run, writing nothing: where each table lands, what each column
    /// becomes, which conversions can fail (with today's values on the
    /// source as evidence), bytes, compressibility and copy time. Exit 2
    /// lists every problem of the mapping.
    Plan {
        /// The job spec (YAML).
        spec: PathBuf,
        /// Workers the deployment runs.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Partitions each worker copies at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// What one reader copies per second unthrottled on this
        /// deployment (the benchmark's figure by default).
        #[arg(long, default_value = "25MiB", value_parser = parse_rate)]
        reader_rate: u64,
        /// The plan as JSON, for automation.
        #[arg(long)]
        json: bool,
    },
    /// Load a finished job's staged copy into a target without touching the source.
    Replay {
        /// The job spec (its staging, key file and, unless --target is given, target).
        spec: PathBuf,
        /// Load into this database instead of the spec's target (e.g. a dry run first).
        #[arg(long)]
        target: Option<String>,
        /// A review copy: mask the columns the mapping masks for review
        /// copies (`masked_for: review`) with the customer's key.
        #[arg(long)]
        masked: bool,
        /// Keep this share of the rows (`1%`) of every table no foreign key
        /// references; referenced tables are carried whole.
        #[arg(long)]
        sample: Option<String>,
        /// The sample's seed: the same seed keeps the same rows.
        #[arg(long, requires = "sample", default_value_t = 0)]
        seed: u64,
    },
    /// Compare the target with the source, computed by both databases:
    /// schema, row counts, content (key ranges leased to workers, down to
    /// the differing primary keys) and foreign keys. Exit 0 only when
    /// everything matches, 1 when something differs, 2 when the comparison
    /// could not run.
    Verify {
        /// The job spec (embedded), or the job id with --coordinator.
        job: String,
        /// Ask this coordinator to verify the job it ran.
        #[arg(long)]
        coordinator: Option<String>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Compare differing key buckets row by row once they hold at most
        /// this many rows; larger ones are split further first.
        #[arg(long, default_value_t = godwit_common::verify::ROW_LEVEL_LIMIT)]
        compare_rows_below: i64,
        /// A spot check: compare only this share of each table's key ranges
        /// (e.g. `5%`), picked at random; the seed is in the report.
        #[arg(long)]
        sample: Option<String>,
        /// The seed that picks a spot check's ranges: the same seed picks
        /// the same ranges again.
        #[arg(long, requires = "sample")]
        seed: Option<u64>,
        /// Workers to run in this process (embedded).
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Key ranges each worker compares at once (embedded).
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
    },
    /// Show the last verification report stored with the job.
    Report {
        /// The job spec (embedded), or the job id with --coordinator.
        job: String,
        /// Ask this coordinator for the report of a job it ran.
        #[arg(long)]
        coordinator: Option<String>,
        /// Print the JSON report instead of the summary (as `--output json`).
        #[arg(long)]
        json: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// `html`, `pdf`, `json`: the customer's debrief as one document on
        /// stdout (`pdf` only into a file or a pipe).
        #[arg(long, value_enum)]
        format: Option<ReportFormat>,
    },
    /// Submit a job spec to a coordinator; prints the job id.
    Submit {
        #[arg(long, env = "GODWIT_COORDINATOR")]
        coordinator: String,
        spec: PathBuf,
    },
    /// Follow a job until it ends; exit 0 only if it succeeded.
    Watch {
        #[arg(long, env = "GODWIT_COORDINATOR")]
        coordinator: String,
        job_id: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show one job, or every job of the coordinator.
    Status {
        #[arg(long, env = "GODWIT_COORDINATOR")]
        coordinator: String,
        job_id: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Cancel a running job.
    Cancel {
        #[arg(long, env = "GODWIT_COORDINATOR")]
        coordinator: String,
        job_id: String,
    },
    /// Set a customer's limits while its jobs run: every worker follows
    /// within a second. Unset options keep their current value.
    Throttle {
        #[arg(long, env = "GODWIT_COORDINATOR")]
        coordinator: String,
        #[arg(long)]
        customer: String,
        /// Most bytes per second read from the customer's source, over all
        /// workers (e.g. 20MiB); `unlimited` lifts the limit.
        #[arg(long, value_parser = parse_rate)]
        bytes_per_sec: Option<u64>,
        /// Most sessions on the customer's source at once, the coordinator's
        /// snapshot session included; 0 lifts the cap.
        #[arg(long)]
        max_connections: Option<u32>,
    },
    /// Stop reading a job's source; partitions are handed back after their
    /// current chunk and progress is kept.
    Pause {
        #[arg(long, env = "GODWIT_COORDINATOR")]
        coordinator: String,
        job_id: String,
    },
    /// End a job that streams changes: freeze the source's tables (writes
    /// wait), apply the last changes, sync sequences and verify; the source's
    /// tables then refuse writes. On any failure the source is unfrozen and
    /// the job goes on streaming. Exit 0 only when the cutover succeeded.
    Cutover {
        #[arg(long, env = "GODWIT_COORDINATOR")]
        coordinator: String,
        job_id: String,
        /// Also write the final verification report as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Approve an action another identity requested and the coordinator's
    /// policy holds for a second person's sign-off.
    Approve {
        #[arg(long, env = "GODWIT_COORDINATOR")]
        coordinator: String,
        job_id: String,
        /// `cutover` or `cancel`.
        action: String,
    },
    /// Resume reading a paused job where it stopped.
    Resume {
        #[arg(long, env = "GODWIT_COORDINATOR")]
        coordinator: String,
        job_id: String,
    },
    /// Delete every staged object of a job and shred its data key.
    /// Irreversible.
    Purge {
        /// The job spec, or the job id with --coordinator.
        job: String,
        /// Ask this coordinator to do it (subject to its sign-off rules).
        #[arg(long)]
        coordinator: Option<String>,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// A job's tamper-evident audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print the job's audit records (checked first).
    Show {
        /// The job spec (its staging, target and keys).
        spec: PathBuf,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
    /// Check the whole chain: exit 0 when intact, 1 naming the first bad
    /// record.
    Verify { spec: PathBuf },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Write a new key-encryption key to a file readable by its owner only.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-wrap a job's data key under another key-encryption key (--to, or
    /// the customer's current key in the keyring), without re-encrypting
    /// any staged data; the old key can be deleted afterwards.
    Rotate {
        /// The job spec (its staging, customer and keys).
        spec: PathBuf,
        /// The new key-encryption key file.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Destroy a job's data key: its staged chunks, change batches and
    /// reports can never be opened again. Irreversible.
    Shred {
        /// The job spec, or the job id with --coordinator.
        job: String,
        /// Ask this coordinator to do it (subject to its sign-off rules).
        #[arg(long)]
        coordinator: Option<String>,
        /// Confirms the destruction.
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> ExitCode {
    godwit_common::telemetry::init("warn");
    let cli = Cli::parse();
    let tls = remote::ClientTlsFiles {
        ca: cli.tls_ca.clone(),
        cert: cli.tls_cert.clone(),
        key: cli.tls_key.clone(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let traces = match godwit_common::telemetry::init_traces("godwit") {
            Ok(traces) => traces,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        };
        // `run` and `submit` start a job's trace: the job's spans, from
        // every process, hang under this command's.
        let command = CommandSpan::of(&cli.command);
        let code = command_code(cli.command, &tls, command.as_ref()).await;
        if let Some(command) = command {
            command.emit(code);
        }
        drop(traces);
        code
    });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The span of a command that starts a job's trace.
struct CommandSpan {
    name: &'static str,
    span: SpanRef,
    start: std::time::SystemTime,
}

impl CommandSpan {
    fn of(command: &Command) -> Option<Self> {
        let name = match command {
            Command::Run { .. } => "godwit run",
            Command::Submit { .. } => "godwit submit",
            _ => return None,
        };
        Some(Self {
            name,
            span: SpanRef::root(),
            start: std::time::SystemTime::now(),
        })
    }

    fn emit(self, code: i32) {
        godwit_common::telemetry::traces::emit(godwit_common::telemetry::traces::Done {
            name: self.name,
            span: self.span,
            parent: None,
            start: self.start,
            end: std::time::SystemTime::now(),
            attributes: vec![opentelemetry::KeyValue::new("exit_code", i64::from(code))],
            error: (code != 0).then(|| format!("exit code {code}")),
        });
    }
}

/// Runs one command; its exit code.
async fn command_code(
    command: Command,
    tls: &remote::ClientTlsFiles,
    span: Option<&CommandSpan>,
) -> i32 {
    let at = |url: String| remote::Coordinator {
        url,
        tls: tls.clone(),
    };
    let trace = span.map(|s| s.span);
    match command {
        Command::Run {
            spec,
            workers,
            concurrency,
            listen,
            policy,
            insecure_plaintext,
        } => {
            let api = embedded::ApiOptions {
                listen,
                tls: (tls.cert.clone(), tls.key.clone(), tls.ca.clone()),
                policy,
                insecure_plaintext,
            };
            embedded::run(&spec, workers, concurrency, api, trace).await
        }
        Command::Plan {
            spec,
            workers,
            concurrency,
            reader_rate,
            json,
        } => {
            let options = plan::Options {
                readers: workers * concurrency,
                reader_bytes_per_sec: reader_rate,
                json,
            };
            plan::plan(&spec, options).await
        }
        Command::Replay {
            spec,
            target,
            masked,
            sample,
            seed,
        } => {
            let sample = match sample
                .map(|text| godwit_common::verify::Sample::parse_percent(&text))
                .transpose()
            {
                Ok(percent) => {
                    percent.map(|percent| godwit_common::verify::Sample { percent, seed })
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return 2;
                }
            };
            let options = godwit_worker::replay::ReviewOptions { masked, sample };
            embedded::replay(&spec, target.as_deref(), options).await
        }
        Command::Verify {
            job,
            coordinator: Some(coordinator),
            report,
            compare_rows_below,
            sample,
            seed,
            ..
        } => {
            let options = match verify_options(compare_rows_below, sample, seed) {
                Ok(options) => options,
                Err(code) => return code,
            };
            remote::verify(&at(coordinator), &job, report.as_deref(), options).await
        }
        Command::Verify {
            job,
            coordinator: None,
            report,
            compare_rows_below,
            sample,
            seed,
            workers,
            concurrency,
        } => {
            let options = match verify_options(compare_rows_below, sample, seed) {
                Ok(options) => options,
                Err(code) => return code,
            };
            embedded::verify(
                Path::new(&job),
                report.as_deref(),
                options,
                workers,
                concurrency,
            )
            .await
        }
        Command::Report {
            job,
            coordinator,
            json,
            output,
            format,
        } => {
            let format = match format {
                Some(format) => format,
                None if json || output == Output::Json => ReportFormat::Report,
                None => ReportFormat::Summary,
            };
            match coordinator {
                Some(coordinator) => remote::report(&at(coordinator), &job, format).await,
                None => embedded::report(Path::new(&job), format).await,
            }
        }
        Command::Submit { coordinator, spec } => {
            remote::submit(&at(coordinator), &spec, trace).await
        }
        Command::Watch {
            coordinator,
            job_id,
            output,
        } => remote::watch(&at(coordinator), &job_id, output).await,
        Command::Status {
            coordinator,
            job_id,
            output,
        } => remote::status(&at(coordinator), job_id.as_deref(), output).await,
        Command::Cancel {
            coordinator,
            job_id,
        } => remote::cancel(&at(coordinator), &job_id).await,
        Command::Throttle {
            coordinator,
            customer,
            bytes_per_sec,
            max_connections,
        } => remote::throttle(&at(coordinator), &customer, bytes_per_sec, max_connections).await,
        Command::Pause {
            coordinator,
            job_id,
        } => remote::pause(&at(coordinator), &job_id, true).await,
        Command::Resume {
            coordinator,
            job_id,
        } => remote::pause(&at(coordinator), &job_id, false).await,
        Command::Approve {
            coordinator,
            job_id,
            action,
        } => remote::approve(&at(coordinator), &job_id, &action).await,
        Command::Cutover {
            coordinator,
            job_id,
            report,
        } => remote::cutover(&at(coordinator), &job_id, report.as_deref()).await,
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => match godwit_common::keys::Kek::generate_file(&out) {
            Ok(id) => {
                println!("wrote key-encryption key {id} to {}", out.display());
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
        Command::Keys {
            command: KeysCommand::Rotate { spec, to },
        } => lifecycle::rotate(&spec, to.as_deref()).await,
        Command::Keys {
            command:
                KeysCommand::Shred {
                    job,
                    coordinator: Some(coordinator),
                    yes,
                },
        } => remote::purge(&at(coordinator), &job, true, yes).await,
        Command::Keys {
            command:
                KeysCommand::Shred {
                    job,
                    coordinator: None,
                    yes,
                },
        } => lifecycle::shred(Path::new(&job), yes).await,
        Command::Purge {
            job,
            coordinator: Some(coordinator),
            yes,
        } => remote::purge(&at(coordinator), &job, false, yes).await,
        Command::Purge {
            job,
            coordinator: None,
            yes,
        } => lifecycle::purge(Path::new(&job), yes).await,
        Command::Audit {
            command: AuditCommand::Show { spec, json },
        } => lifecycle::audit(&spec, Some(json)).await,
        Command::Audit {
            command: AuditCommand::Verify { spec },
        } => lifecycle::audit(&spec, None).await,
    }
}

/// A rate in bytes per second (`20MiB`, `5000000`), 0 for `unlimited`.
fn parse_rate(raw: &str) -> Result<u64, String> {
    if raw == "unlimited" {
        return Ok(0);
    }
    godwit_common::spec::ByteSize::parse(raw)
        .map(|b| b.0)
        .ok_or_else(|| format!("{raw:?} is not a rate: write e.g. 20MiB, 500KiB or unlimited"))
}

/// The options of `godwit verify`; a bad `--sample` is refused (exit 2)
/// before anything is read. A spot check without `--seed` draws one.
fn verify_options(
    compare_rows_below: i64,
    sample: Option<String>,
    seed: Option<u64>,
) -> Result<godwit_common::verify::Options, i32> {
    let sample = match sample {
        Some(text) => {
            let percent = godwit_common::verify::Sample::parse_percent(&text).map_err(|e| {
                eprintln!("error: {e}");
                2
            })?;
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
            Some(godwit_common::verify::Sample { percent, seed })
        }
        None => None,
    };
    Ok(godwit_common::verify::Options {
        compare_rows_below,
        sample,
    })
}
