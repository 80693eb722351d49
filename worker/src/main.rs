//! `godwit-worker`: joins a deployment through its etcd and copies partitions.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use godwit_common::lease::{EtcdStore, LeaseTiming};
use godwit_common::state::Keyspace;
use godwit_worker::{Worker, WorkerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "godwit-worker",
    version,
    about = "Copies partitions leased from etcd"
)]
struct Args {
    /// Coordinator gRPC URL (for operators' reference and health checks).
    #[arg(long, env = "GODWIT__WORKER__COORDINATOR")]
    coordinator: Option<String>,
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "GODWIT__WORKER__ETCD",
        value_delimiter = ',',
        required = true
    )]
    etcd: Vec<String>,
    /// Key prefix of the deployment in etcd.
    #[arg(long, env = "GODWIT__WORKER__ROOT", default_value = "/godwit")]
    root: String,
    /// Worker id; defaults to a random one.
    #[arg(long, env = "GODWIT__WORKER__ID")]
    id: Option<String>,
    /// Partitions copied at once.
    #[arg(long, env = "GODWIT__WORKER__CONCURRENCY", default_value_t = 2)]
    concurrency: usize,
    /// Lease TTL in seconds; keep-alives run every TTL/3.
    #[arg(long, env = "GODWIT__WORKER__LEASE_TTL_SECS", default_value_t = 10)]
    lease_ttl_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    godwit_common::telemetry::init("info");
    let args = Args::parse();
    let store = EtcdStore::connect(&args.etcd)
        .await
        .context("worker start-up")?;
    let id = args
        .id
        .unwrap_or_else(|| format!("worker-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let mut config = WorkerConfig::new(id);
    config.concurrency = args.concurrency.max(1);
    config.timing = LeaseTiming {
        ttl: Duration::from_secs(args.lease_ttl_secs.max(1)),
    };
    if let Some(coordinator) = &args.coordinator {
        tracing::info!(%coordinator, "serving the coordinator's jobs");
    }
    let worker = Worker::new(
        std::sync::Arc::new(store),
        Keyspace::new(&args.root),
        config,
    );
    worker.run(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
