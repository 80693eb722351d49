//! `godwit-coordinator`: the gRPC server of a distributed deployment.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use godwit_common::lease::EtcdStore;
use godwit_common::state::Keyspace;

#[derive(Debug, Parser)]
#[command(
    name = "godwit-coordinator",
    version,
    about = "Plans migration jobs and serves the godwit.v1 API"
)]
struct Args {
    /// Address to serve gRPC on; port 0 picks a free port (printed at start).
    #[arg(
        long,
        env = "GODWIT__COORDINATOR__LISTEN",
        default_value = "127.0.0.1:7400"
    )]
    listen: String,
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "GODWIT__COORDINATOR__ETCD",
        value_delimiter = ',',
        required = true
    )]
    etcd: Vec<String>,
    /// Key prefix of the deployment in etcd.
    #[arg(long, env = "GODWIT__COORDINATOR__ROOT", default_value = "/godwit")]
    root: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    godwit_common::telemetry::init("info");
    let args = Args::parse();
    let store = EtcdStore::connect(&args.etcd)
        .await
        .context("coordinator start-up")?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr().context("listener address")?;
    tracing::info!(%address, "coordinator listening");
    println!("listening on {address}");
    godwit_coordinator::service::serve(
        listener,
        Arc::new(store),
        Keyspace::new(&args.root),
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await
    .context("gRPC server")?;
    Ok(())
}
