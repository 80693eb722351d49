//! `godwit-worker`: joins a deployment through its etcd and copies partitions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use godwit_common::config::{load_file, pick};
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::{EtcdAccess, EtcdStore, LeaseTiming};
use godwit_worker::{Worker, WorkerConfig};
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "godwit-worker",
    version,
    about = "Copies partitions leased from etcd"
)]
struct Args {
    /// YAML file with any of: coordinator, etcd, etcd_ca, etcd_cert, etcd_key,
    /// etcd_user, etcd_password_file, root, id, concurrency, lease_ttl_secs,
    /// metrics_listen.
    #[arg(long, env = "GODWIT__WORKER__CONFIG")]
    config: Option<PathBuf>,
    /// Coordinator gRPC URL of the deployment (logged for operators).
    #[arg(long, env = "GODWIT__WORKER__COORDINATOR")]
    coordinator: Option<String>,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "GODWIT__WORKER__ETCD", value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// PEM CA of etcd's certificate (https:// endpoints).
    #[arg(long, env = "GODWIT__WORKER__ETCD_CA", alias = "tls-ca")]
    etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (`--client-cert-auth`).
    #[arg(long, env = "GODWIT__WORKER__ETCD_CERT", alias = "tls-cert")]
    etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, env = "GODWIT__WORKER__ETCD_KEY", alias = "tls-key")]
    etcd_key: Option<PathBuf>,
    /// etcd user (with `auth enable`).
    #[arg(long, env = "GODWIT__WORKER__ETCD_USER")]
    etcd_user: Option<String>,
    /// File holding the etcd user's password (a mounted Secret).
    #[arg(long, env = "GODWIT__WORKER__ETCD_PASSWORD_FILE")]
    etcd_password_file: Option<PathBuf>,
    /// Key prefix of the deployment in etcd [default: /godwit].
    #[arg(long, env = "GODWIT__WORKER__ROOT")]
    root: Option<String>,
    /// Worker id [default: worker-<random>].
    #[arg(long, env = "GODWIT__WORKER__ID")]
    id: Option<String>,
    /// Partitions worked on at once, per customer [default: 2].
    #[arg(long, env = "GODWIT__WORKER__CONCURRENCY")]
    concurrency: Option<usize>,
    /// Lease TTL in seconds; keep-alives run every TTL/3 [default: 10].
    #[arg(long, env = "GODWIT__WORKER__LEASE_TTL_SECS")]
    lease_ttl_secs: Option<u64>,
    /// Address to serve Prometheus metrics on (`GET /metrics`) [default: none].
    #[arg(long, env = "GODWIT__WORKER__METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Serve `/metrics` over TLS with this certificate (PEM) [default: plain HTTP].
    #[arg(
        long,
        env = "GODWIT__WORKER__METRICS_TLS_CERT",
        requires = "metrics_tls_key"
    )]
    metrics_tls_cert: Option<PathBuf>,
    /// The key of `--metrics-tls-cert` (PEM).
    #[arg(
        long,
        env = "GODWIT__WORKER__METRICS_TLS_KEY",
        requires = "metrics_tls_cert"
    )]
    metrics_tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    coordinator: Option<String>,
    etcd: Option<Vec<String>>,
    root: Option<String>,
    id: Option<String>,
    concurrency: Option<usize>,
    lease_ttl_secs: Option<u64>,
    metrics_listen: Option<std::net::SocketAddr>,
    metrics_tls_cert: Option<PathBuf>,
    metrics_tls_key: Option<PathBuf>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    etcd_user: Option<String>,
    etcd_password_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    godwit_common::telemetry::init("info");
    let args = Args::parse();
    let file: FileConfig = match load_file(args.config.as_deref()) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let etcd = pick(args.etcd, file.etcd, Vec::new());
    let etcd_access = EtcdAccess {
        ca: args.etcd_ca.or(file.etcd_ca),
        cert: args.etcd_cert.or(file.etcd_cert),
        key: args.etcd_key.or(file.etcd_key),
        user: args.etcd_user.or(file.etcd_user),
        password_file: args.etcd_password_file.or(file.etcd_password_file),
    };
    if etcd.is_empty() {
        eprintln!(
            "error: no etcd endpoints: pass --etcd URL, set GODWIT__WORKER__ETCD or `etcd:` in the config file"
        );
        return ExitCode::from(2);
    }
    let id = pick(
        args.id,
        file.id,
        format!("worker-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    );
    let mut config = WorkerConfig::new(id);
    config.concurrency = pick(args.concurrency, file.concurrency, 2).max(1);
    config.timing = LeaseTiming {
        ttl: Duration::from_secs(pick(args.lease_ttl_secs, file.lease_ttl_secs, 10).max(1)),
    };
    let root = pick(args.root, file.root, "/godwit".to_owned());
    if let Some(coordinator) = args.coordinator.or(file.coordinator) {
        tracing::info!(%coordinator, "serving the coordinator's jobs");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = args.metrics_listen.or(file.metrics_listen);
    let metrics_tls = match (
        args.metrics_tls_cert.or(file.metrics_tls_cert),
        args.metrics_tls_key.or(file.metrics_tls_key),
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            eprintln!(
                "error: metrics_tls_cert and metrics_tls_key go together: give both, or neither"
            );
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        // The metrics pipeline runs on this runtime; kept until the worker ends.
        let tls = metrics_tls
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        let _metrics =
            godwit_common::telemetry::init_metrics("godwit-worker", metrics, tls).await?;
        let _traces = godwit_common::telemetry::init_traces("godwit-worker")?;
        let store = EtcdStore::connect_with(&etcd, &etcd_access).await?;
        let worker = Worker::new(Arc::new(store), Keyspace::new(&root), config);
        worker.run(godwit_common::shutdown::signal()).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(u8::try_from(e.kind().exit_code()).unwrap_or(1))
        }
    }
}
