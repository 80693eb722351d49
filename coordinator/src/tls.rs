//! TLS for the coordinator's listener: its certificate and key, and the CA
//! that signs its callers' certificates (mTLS), read from PEM files as
//! cert-manager writes them into a Secret; and the identity a verified
//! client certificate names. Never decides what an identity may do.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use x509_cert::der::Decode;
use x509_cert::der::asn1::PrintableStringRef;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::spki::ObjectIdentifier;

use godwit_common::{Error, Result};

/// The PEM files of a TLS listener with client certificates.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl ServerTlsFiles {
    /// All three, or none: half a TLS configuration is refused, naming
    /// what is missing.
    pub fn from_parts(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
        flags: [&str; 3],
    ) -> Result<Option<Self>> {
        match (cert, key, client_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some(Self {
                cert,
                key,
                client_ca,
            })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [cert.is_none(), key.is_none(), ca.is_none()]
                    .iter()
                    .zip(flags)
                    .filter(|(absent, _)| **absent)
                    .map(|(_, flag)| flag)
                    .collect();
                Err(Error::Spec(format!(
                    "TLS needs {} as well: the listener's certificate, its key and the CA of its \
                     callers' certificates go together",
                    missing.join(" and ")
                )))
            }
        }
    }

    /// tonic's server TLS: callers without a certificate get through the
    /// handshake so that each call can be refused as UNAUTHENTICATED with
    /// a message; a certificate not signed by the client CA fails it.
    pub fn server_config(&self) -> Result<ServerTlsConfig> {
        let identity = Identity::from_pem(
            read(&self.cert, "TLS certificate")?,
            read(&self.key, "TLS key")?,
        );
        let client_ca = Certificate::from_pem(read(&self.client_ca, "client CA")?);
        Ok(ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(client_ca)
            .client_auth_optional(true))
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        what: match what {
            "TLS certificate" => "cannot read the TLS certificate",
            "TLS key" => "cannot read the TLS key",
            _ => "cannot read the client CA",
        },
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::Spec(format!(
            "{what} {} is not PEM (expected a -----BEGIN … block)",
            path.display()
        )));
    }
    Ok(bytes)
}

const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// The identity a verified certificate names: its first SAN URI
/// (`spiffe://…`), else its subject's common name.
pub fn identity_of(der: &[u8]) -> Option<String> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    if let Ok(Some((_, names))) = cert.tbs_certificate.get::<SubjectAltName>() {
        let uri = names.0.iter().find_map(|name| match name {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
            _ => None,
        });
        if uri.is_some() {
            return uri;
        }
    }
    cert.tbs_certificate.subject.0.iter().find_map(|rdn| {
        rdn.0.iter().find_map(|attribute| {
            if attribute.oid != COMMON_NAME {
                return None;
            }
            attribute.value.decode_as::<String>().ok().or_else(|| {
                attribute
                    .value
                    .decode_as::<PrintableStringRef<'_>>()
                    .ok()
                    .map(|s| s.to_string())
            })
        })
    })
}
