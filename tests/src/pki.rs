//! A throwaway certificate authority for the API's mTLS tests: a CA, a
//! server certificate for loopback, and client certificates naming an
//! identity by SAN URI or by subject CN, written as PEM files as
//! cert-manager would mount them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How a client certificate names its holder.
pub enum Named<'a> {
    Uri(&'a str),
    CommonName(&'a str),
}

impl Pki {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let pki = Self {
            dir: tempfile::tempdir()?,
            ca,
        };
        std::fs::write(pki.ca_cert(), pki.ca.pem())?;
        Ok(pki)
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self, name: &str) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.distinguished_name.push(DnType::CommonName, name);
        self.issue(name, params)
    }

    /// A client certificate naming its holder as `named`.
    pub fn client(&self, file: &str, named: Named<'_>) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        match named {
            Named::Uri(uri) => {
                params
                    .subject_alt_names
                    .push(SanType::URI(uri.try_into().context("SAN URI")?));
                params
                    .distinguished_name
                    .push(DnType::CommonName, "not the identity");
            }
            Named::CommonName(cn) => params.distinguished_name.push(DnType::CommonName, cn),
        }
        self.issue(file, params)
    }

    fn issue(&self, file: &str, params: CertificateParams) -> anyhow::Result<CertFiles> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        let files = CertFiles {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}
