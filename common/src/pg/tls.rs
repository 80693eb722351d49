//! TLS for the connections godwit opens to PostgreSQL, with libpq's
//! `sslmode` meanings, so one connection string serves the Rust driver and
//! the libpq tools (`psql`, `pg_dump`, `pg_restore`) alike:
//! `disable` (plain), `prefer` (the default: TLS when the server offers it),
//! `require` (TLS, server not authenticated), `verify-ca` and `verify-full`
//! (TLS, certificate checked against `sslrootcert` or the public web roots,
//! and the host name checked; godwit checks the host name for `verify-ca`
//! too).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::Side;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verification {
    EncryptOnly,
    Full { root_cert: Option<PathBuf> },
}

/// Driver configuration and TLS connector for a connection string.
pub fn driver_config(conn: &str, side: Side) -> Result<(Config, MakeRustlsConnect)> {
    let (config, tls) = driver_parts(conn, side)?;
    Ok((config, MakeRustlsConnect::new(tls)))
}

/// Driver configuration and the TLS client configuration it implies, for
/// sessions the driver cannot open itself (replication).
pub(crate) fn driver_parts(conn: &str, side: Side) -> Result<(Config, ClientConfig)> {
    let invalid = |detail: String| {
        Error::Spec(format!(
            "`{side}` is not a valid PostgreSQL connection string ({detail}); use postgres://user@host:port/db"
        ))
    };
    let (rewritten, verification) = split_tls_options(conn).map_err(invalid)?;
    let mut config = Config::from_str(&rewritten).map_err(|e| invalid(e.to_string()))?;
    super::passfile::fill_password(&mut config, conn)?;
    let tls = match verification {
        Verification::EncryptOnly => encrypt_only(),
        Verification::Full { root_cert } => verifying(root_cert.as_ref(), side)?,
    };
    Ok((config, tls))
}

/// The connection string without its password, and the password: libpq's
/// tools get the first on their command line (visible to every user of the
/// machine in the process list) and the second in `PGPASSWORD`.
pub fn split_password(conn: &str) -> (String, Option<String>) {
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Ok(mut url) = url::Url::parse(conn) else {
            return (conn.to_owned(), None);
        };
        // libpq takes the password from the user info or from a
        // `password=` query parameter: both leave the string.
        let mut password = url.password().map(|encoded| {
            percent_encoding::percent_decode_str(encoded)
                .decode_utf8_lossy()
                .into_owned()
        });
        if password.is_some() && url.set_password(None).is_err() {
            return (conn.to_owned(), None);
        }
        let query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some((_, value)) = query.iter().find(|(key, _)| key == "password") {
            password = Some(value.clone());
            let kept: Vec<&(String, String)> =
                query.iter().filter(|(key, _)| key != "password").collect();
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
        }
        return (url.to_string(), password);
    }
    let mut password = None;
    let kept: Vec<&str> = conn
        .split_whitespace()
        .filter(|pair| match pair.strip_prefix("password=") {
            Some(value) => {
                password = Some(value.trim_matches('\'').to_owned());
                false
            }
            None => true,
        })
        .collect();
    (kept.join(" "), password)
}

/// Takes `sslrootcert` and `passfile` out (the driver knows neither) and
/// maps the verifying `sslmode`s to the driver's `require`.
pub(crate) fn split_tls_options(conn: &str) -> std::result::Result<(String, Verification), String> {
    let mut mode = String::from("prefer");
    let mut root_cert = None;
    let rewritten = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let mut url = url::Url::parse(conn).map_err(|e| e.to_string())?;
        let mut kept = Vec::new();
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "sslmode" => mode = value.into_owned(),
                "sslrootcert" => root_cert = Some(PathBuf::from(value.as_ref())),
                "passfile" => {}
                _ => kept.push((key.into_owned(), value.into_owned())),
            }
        }
        kept.push(("sslmode".into(), driver_mode(&mode)?.into()));
        url.query_pairs_mut().clear().extend_pairs(kept);
        url.to_string()
    } else {
        let mut kept = Vec::new();
        for pair in conn.split_whitespace() {
            match pair.split_once('=') {
                Some(("sslmode", value)) => mode = value.to_owned(),
                Some(("sslrootcert", value)) => root_cert = Some(PathBuf::from(value)),
                Some(("passfile", _)) => {}
                _ => kept.push(pair.to_owned()),
            }
        }
        kept.push(format!("sslmode={}", driver_mode(&mode)?));
        kept.join(" ")
    };
    let verification = match mode.as_str() {
        "verify-ca" | "verify-full" => Verification::Full { root_cert },
        _ => Verification::EncryptOnly,
    };
    Ok((rewritten, verification))
}

fn driver_mode(mode: &str) -> std::result::Result<&'static str, String> {
    match mode {
        "disable" => Ok("disable"),
        "allow" | "prefer" => Ok("prefer"),
        "require" | "verify-ca" | "verify-full" => Ok("require"),
        other => Err(format!(
            "sslmode {other:?} is unknown: use disable, prefer, require, verify-ca or verify-full"
        )),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn verifying(root_cert: Option<&PathBuf>, side: Side) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| Error::Io {
                what: "cannot read sslrootcert",
                path: path.clone(),
                source,
            })?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    Error::Spec(format!(
                        "`{side}` sslrootcert {} is not PEM: {e}",
                        path.display()
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::Spec(format!(
                        "`{side}` sslrootcert {} holds an unusable certificate: {e}",
                        path.display()
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(Error::Spec(format!(
                    "`{side}` sslrootcert {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Spec(format!("TLS set-up failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn encrypt_only() -> ClientConfig {
    let provider = provider();
    let verifier = Arc::new(EncryptOnly(provider.clone()));
    match ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(builder) => builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
        // The built-in provider always supports the default versions.
        Err(_) => ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    }
}

/// `sslmode=require`: the session is encrypted, the server is not
/// authenticated (as with libpq). Signatures are still checked, so the
/// handshake itself cannot be forged.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_become_require_and_root_cert_is_taken_out() {
        let (url, verification) = split_tls_options(
            "postgres://u@h:5432/db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        )
        .expect("valid");
        assert!(
            url.contains("sslmode=require")
                && !url.contains("sslrootcert")
                && url.contains("application_name=x")
        );
        assert_eq!(
            verification,
            Verification::Full {
                root_cert: Some("/ca.pem".into())
            }
        );

        let (kv, verification) =
            split_tls_options("host=h dbname=db sslmode=require").expect("valid");
        assert_eq!(kv, "host=h dbname=db sslmode=require");
        assert_eq!(verification, Verification::EncryptOnly);

        let (url, _) = split_tls_options("postgres://u@h/db").expect("valid");
        assert!(url.ends_with("sslmode=prefer"), "{url}");
    }

    #[test]
    fn a_password_leaves_the_string_in_every_form() {
        for (conn, left) in [
            (
                "postgres://u:s%40cret@h:5432/db?sslmode=require",
                "postgres://u@h:5432/db?sslmode=require",
            ),
            (
                "postgres://u@h/db?password=s%40cret&sslmode=require",
                "postgres://u@h/db?sslmode=require",
            ),
            ("postgres://u@h/db?password=s%40cret", "postgres://u@h/db"),
            (
                "host=h user=u password=s@cret dbname=db",
                "host=h user=u dbname=db",
            ),
        ] {
            let (without, password) = split_password(conn);
            assert_eq!(without, left, "{conn}");
            assert_eq!(password.as_deref(), Some("s@cret"), "{conn}");
        }
        assert_eq!(split_password("postgres://u@h/db").1, None);
    }

    #[test]
    fn unknown_sslmode_is_named() {
        let err = split_tls_options("postgres://u@h/db?sslmode=sometimes").expect_err("accepted");
        assert!(
            err.contains("sometimes") && err.contains("verify-full"),
            "{err}"
        );
    }
}
