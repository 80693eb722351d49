//! Telemetry of the mTLS deployment (`access.rs`) only over TLS: the
//! coordinator's and the worker's `/metrics` answer a scrape that trusts
//! the deployment's CA and nothing in plain HTTP; a worker whose metrics
//! certificate, or whose collector's CA, does not load refuses to start.

use std::process::Command;

use godwit_tests::{bin, describe};

use crate::access::{Callers, Deployment};

/// Both processes' metrics, then the refusals.
pub(crate) async fn only_over_tls(deployment: &Deployment) -> anyhow::Result<()> {
    metrics_are_served_over_tls(
        &deployment.metrics,
        &deployment.callers,
        "godwit_verifications_total",
    )
    .await?;
    metrics_are_served_over_tls(
        &deployment.worker_metrics,
        &deployment.callers,
        "godwit_copy_rows_total",
    )
    .await?;
    // A worker whose metrics certificate does not load does not start.
    let missing = deployment.job.dir.path().join("no-such-cert.pem");
    let refused = Command::new(bin("godwit-worker")?)
        .args(["--etcd", "http://127.0.0.1:9", "--metrics-listen"])
        .arg(format!("127.0.0.1:{}", godwit_tests::free_port()?))
        .arg("--metrics-tls-cert")
        .arg(&missing)
        .arg("--metrics-tls-key")
        .arg(&missing)
        .output()?;
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no-such-cert.pem"),
        "{}",
        describe(&refused)
    );
    // Nor one told to trust a collector's CA it cannot read: its metrics
    // and spans are never sent unchecked.
    let refused = Command::new(bin("godwit-worker")?)
        .args(["--etcd", "http://127.0.0.1:9"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://localhost:4317")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &missing)
        .output()?;
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "{}",
        describe(&refused)
    );
    Ok(())
}

/// With TLS on its API, the coordinator serves `/metrics` with the same
/// certificate, a worker with its own: a scrape trusting the deployment's
/// CA reads the job's figures (`metric`); a plain-HTTP request gets no
/// answer.
async fn metrics_are_served_over_tls(
    address: &str,
    callers: &Callers,
    metric: &str,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::fs::read(callers.pki.ca_cert())?.as_slice()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let mut tls = connector
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("{metric}{{")) && answer.contains("job=\"secured\""),
        "{answer}"
    );

    let mut plain = tokio::net::TcpStream::connect(address).await?;
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut refused = Vec::new();
    let _ = plain.read_to_end(&mut refused).await;
    assert!(
        !String::from_utf8_lossy(&refused).contains("HTTP/1.1 200"),
        "metrics answered in plain HTTP"
    );
    Ok(())
}
