//! `godwit-coordinator`: the gRPC server of a distributed deployment.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use godwit_common::config::{load_file, pick};
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::{EtcdAccess, EtcdStore};
use godwit_coordinator::service::{ListenerFlags, Security};
use godwit_coordinator::tls::ServerTlsFiles;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "godwit-coordinator",
    version,
    about = "Plans migration jobs and serves the godwit.v1 API"
)]
struct Args {
    /// YAML file with any of: listen, metrics_listen, etcd, etcd_ca,
    /// etcd_cert, etcd_key, etcd_user, etcd_password_file, root, tls_cert,
    /// tls_key, client_ca, policy, insecure_plaintext.
    #[arg(long, env = "GODWIT__COORDINATOR__CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve gRPC on; port 0 picks a free port (printed at start) [default: 127.0.0.1:7400].
    #[arg(long, env = "GODWIT__COORDINATOR__LISTEN")]
    listen: Option<String>,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "GODWIT__COORDINATOR__ETCD", value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// Key prefix of the deployment in etcd [default: /godwit].
    #[arg(long, env = "GODWIT__COORDINATOR__ROOT")]
    root: Option<String>,
    /// PEM CA of etcd's certificate (https:// endpoints).
    #[arg(long, env = "GODWIT__COORDINATOR__ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (`--client-cert-auth`).
    #[arg(long, env = "GODWIT__COORDINATOR__ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, env = "GODWIT__COORDINATOR__ETCD_KEY")]
    etcd_key: Option<PathBuf>,
    /// etcd user (with `auth enable`).
    #[arg(long, env = "GODWIT__COORDINATOR__ETCD_USER")]
    etcd_user: Option<String>,
    /// File holding the etcd user's password (a mounted Secret).
    #[arg(long, env = "GODWIT__COORDINATOR__ETCD_PASSWORD_FILE")]
    etcd_password_file: Option<PathBuf>,
    /// PEM certificate (chain) the API is served with.
    #[arg(long, env = "GODWIT__COORDINATOR__TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "GODWIT__COORDINATOR__TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA that signs callers' client certificates (mTLS).
    #[arg(long, env = "GODWIT__COORDINATOR__CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// Access policy (YAML): identities, their roles and customers, and
    /// what each customer's jobs may name. Re-read when it changes.
    #[arg(long, env = "GODWIT__COORDINATOR__POLICY")]
    policy: Option<PathBuf>,
    /// Serve without TLS on a non-loopback address: anyone who can reach
    /// the port can do anything. Logged as a warning at every start.
    #[arg(long, env = "GODWIT__COORDINATOR__INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Address to serve Prometheus metrics on (`GET /metrics`) [default: none].
    #[arg(long, env = "GODWIT__COORDINATOR__METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    metrics_listen: Option<std::net::SocketAddr>,
    etcd: Option<Vec<String>>,
    root: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    policy: Option<PathBuf>,
    insecure_plaintext: Option<bool>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    etcd_user: Option<String>,
    etcd_password_file: Option<PathBuf>,
}

/// How the API is secured, as configured.
struct ListenerConfig {
    tls: Option<ServerTlsFiles>,
    policy: Option<PathBuf>,
    insecure_plaintext: bool,
}

const FLAGS: ListenerFlags = ListenerFlags {
    cert: "--tls-cert",
    key: "--tls-key",
    client_ca: "--client-ca",
};

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
    let listen = pick(args.listen, file.listen, "127.0.0.1:7400".to_owned());
    let root = pick(args.root, file.root, "/godwit".to_owned());
    let etcd = pick(args.etcd, file.etcd, Vec::new());
    let etcd_access = EtcdAccess {
        ca: args.etcd_ca.or(file.etcd_ca),
        cert: args.etcd_cert.or(file.etcd_cert),
        key: args.etcd_key.or(file.etcd_key),
        user: args.etcd_user.or(file.etcd_user),
        password_file: args.etcd_password_file.or(file.etcd_password_file),
    };
    let tls = match ServerTlsFiles::from_parts(
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
        args.client_ca.or(file.client_ca),
        [FLAGS.cert, FLAGS.key, FLAGS.client_ca],
    ) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let security = ListenerConfig {
        tls,
        policy: args.policy.or(file.policy),
        insecure_plaintext: args.insecure_plaintext || file.insecure_plaintext.unwrap_or(false),
    };
    if etcd.is_empty() {
        eprintln!(
            "error: no etcd endpoints: pass --etcd URL, set GODWIT__COORDINATOR__ETCD or `etcd:` in the config file"
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = args.metrics_listen.or(file.metrics_listen);
    match runtime.block_on(serve(listen, (etcd, etcd_access), root, security, metrics)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A configuration that cannot be served safely is the operator's
            // input, as a malformed flag is.
            match e.downcast_ref::<godwit_common::Error>() {
                Some(godwit_common::Error::Spec(_) | godwit_common::Error::Io { .. }) => {
                    ExitCode::from(2)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn serve(
    listen: String,
    (etcd, etcd_access): (Vec<String>, EtcdAccess),
    root: String,
    config: ListenerConfig,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr().context("listener address")?;
    // With TLS on the API, /metrics is served with the same certificate.
    let metrics_tls = config.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone()));
    let security = Security::for_listener(
        address,
        config.tls,
        config.policy.as_deref(),
        config.insecure_plaintext,
        &FLAGS,
    )?;
    let store: Arc<dyn godwit_common::lease::LeaseStore> = Arc::new(
        EtcdStore::connect_with(&etcd, &etcd_access)
            .await
            .context("coordinator start-up")?,
    );
    let keyspace = Keyspace::new(&root);
    let _traces = godwit_common::telemetry::init_traces("godwit-coordinator").context("traces")?;
    let _metrics = godwit_common::telemetry::init_metrics(
        "godwit-coordinator",
        metrics,
        metrics_tls
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path())),
    )
    .await
    .context("metrics")?;
    let identity = format!(
        "{}:{} (pid {})",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "coordinator".into()),
        address.port(),
        std::process::id()
    );
    let (stop_leading, leading_stopped) = tokio::sync::oneshot::channel::<()>();
    let leader = tokio::spawn(godwit_coordinator::leadership::lead(
        store.clone(),
        keyspace.clone(),
        identity,
        godwit_common::lease::LeaseTiming::DEFAULT,
        leader_duties(store.clone(), keyspace.clone()),
        async {
            let _ = leading_stopped.await;
        },
    ));
    tracing::info!(%address, tls = security.tls.is_some(), "coordinator listening");
    println!("listening on {address}");
    godwit_coordinator::service::serve(
        listener,
        store,
        keyspace,
        security,
        godwit_common::shutdown::signal(),
    )
    .await
    .context("gRPC server")?;
    // Resigning lets a follower lead at once instead of after the TTL.
    let _ = stop_leading.send(());
    let _ = leader.await;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// What only the leader does: drive every unfinished job, split the
/// customers' throttle budgets, sweep expired staging.
fn leader_duties(
    store: Arc<dyn godwit_common::lease::LeaseStore>,
    keyspace: Keyspace,
) -> impl Fn(
    godwit_coordinator::leadership::JobRecords,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    move |records| {
        let (store, keyspace) = (store.clone(), keyspace.clone());
        Box::pin(async move {
            tokio::join!(
                godwit_coordinator::dispatch::drive_unfinished(
                    store.clone(),
                    keyspace.clone(),
                    records,
                    None
                ),
                godwit_coordinator::throttle::Allocator::new(store.clone(), keyspace.clone())
                    .run(std::future::pending()),
                godwit_coordinator::retention::run(store, keyspace, std::future::pending()),
            );
        })
    }
}
