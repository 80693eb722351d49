//! TLS for the OTLP exporters, from the standard variables: the CA that
//! signed the collector's certificate (`OTEL_EXPORTER_OTLP_CERTIFICATE`,
//! a PEM file) and, for a collector that asks callers for a certificate,
//! this process's (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`,
//! `OTEL_EXPORTER_OTLP_CLIENT_KEY`). Without a CA, an `https://` endpoint
//! is checked against the system's roots. Never turns verification off.

use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};

fn file(var: &str) -> crate::Result<Option<Vec<u8>>> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(path) => std::fs::read(&path).map(Some).map_err(|e| {
            crate::Error::Spec(format!(
                "{var}: cannot read {}: {e}",
                std::path::Path::new(&path).display()
            ))
        }),
    }
}

/// The TLS of the exporter whose own endpoint variable is `signal_var`
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, …; else the common one): `None`
/// for a plain `http://` endpoint.
pub(super) fn config(signal_var: &str) -> crate::Result<Option<ClientTlsConfig>> {
    let endpoint = [signal_var, "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .unwrap_or_default()
        .to_ascii_lowercase();
    // As the exporter reads it: an endpoint without a scheme is https
    // unless OTEL_EXPORTER_OTLP_INSECURE says otherwise; none at all is
    // its plain default on localhost.
    let insecure =
        std::env::var("OTEL_EXPORTER_OTLP_INSECURE").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let https = endpoint.starts_with("https://")
        || (!endpoint.is_empty() && !endpoint.contains("://") && !insecure);
    if !https {
        return Ok(None);
    }
    let ca = file("OTEL_EXPORTER_OTLP_CERTIFICATE")?;
    let cert = file("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?;
    let key = file("OTEL_EXPORTER_OTLP_CLIENT_KEY")?;
    let mut config = ClientTlsConfig::new();
    config = match ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
        None => config.with_enabled_roots(),
    };
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(config.identity(Identity::from_pem(cert, key)))),
        (None, None) => Ok(Some(config)),
        _ => Err(crate::Error::Spec(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together: \
             set both, or neither"
                .into(),
        )),
    }
}
