//! A real etcd (Debian's `etcd-server`) on free loopback ports, in its own
//! data directory; stoppable and restartable for failure tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use godwit_common::lease::EtcdAccess;

use crate::{CertFiles, Named, Pki, free_port};

pub struct Etcd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdTls>,
}

/// What an etcd with `--client-cert-auth` was started with, and what a
/// client presents to it.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server: CertFiles,
    pub client: CertFiles,
}

impl Etcd {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// An etcd serving TLS only and requiring client certificates signed
    /// by `pki` (`--client-cert-auth --trusted-ca-file`).
    pub fn start_tls(pki: &Pki) -> anyhow::Result<Self> {
        let tls = EtcdTls {
            ca: pki.ca_cert(),
            server: pki.server("etcd")?,
            client: pki.client("etcd-client", Named::CommonName("godwit"))?,
        };
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<EtcdTls>) -> anyhow::Result<Self> {
        let mut etcd = Self {
            dir: tempfile::tempdir()?,
            child: None,
            client_port: free_port()?,
            peer_port: free_port()?,
            tls,
        };
        // A free port can be taken by a parallel test between being found
        // and etcd binding it: fresh ports, a few times.
        let mut attempts = 0;
        loop {
            match etcd.launch() {
                Err(e) if attempts < 5 && e.to_string().contains("address already in use") => {
                    attempts += 1;
                    etcd.stop();
                    let _ = std::fs::remove_dir_all(etcd.dir.path().join("data"));
                    etcd.client_port = free_port()?;
                    etcd.peer_port = free_port()?;
                }
                other => return other.map(|()| etcd),
            }
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// The client side of `--client-cert-auth`, as a godwit process takes it.
    pub fn access(&self) -> EtcdAccess {
        self.tls
            .as_ref()
            .map_or_else(EtcdAccess::default, |tls| EtcdAccess {
                ca: Some(tls.ca.clone()),
                cert: Some(tls.client.cert.clone()),
                key: Some(tls.client.key.clone()),
                ..EtcdAccess::default()
            })
    }

    /// The environment that points a godwit binary (`COORDINATOR` or
    /// `WORKER`) at this etcd's TLS.
    pub fn env(&self, binary: &str) -> Vec<(String, String)> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        [
            ("ETCD_CA", &tls.ca),
            ("ETCD_CERT", &tls.client.cert),
            ("ETCD_KEY", &tls.client.key),
        ]
        .iter()
        .map(|(name, path)| {
            (
                format!("GODWIT__{binary}__{name}"),
                path.display().to_string(),
            )
        })
        .collect()
    }

    /// Turns on etcd's user authentication: `root` (needed to enable it)
    /// and `user`, who may read and write keys under `prefix` only. Returns
    /// a 0600 file holding `user`'s password.
    pub async fn enable_auth(&self, user: &str, prefix: &str) -> anyhow::Result<PathBuf> {
        use etcd_client::{Client, Permission};
        let password = uuid::Uuid::new_v4().simple().to_string();
        let mut client = Client::connect([self.url()], None).await?;
        client
            .user_add("root", format!("root-{password}"), None)
            .await?;
        client.user_grant_role("root", "root").await?;
        client.role_add(user).await?;
        client
            .role_grant_permission(user, Permission::read_write(prefix).with_prefix())
            .await?;
        client.user_add(user, password.clone(), None).await?;
        client.user_grant_role(user, user).await?;
        client.auth_enable().await?;
        let file = self.dir.path().join(format!("{user}.password"));
        std::fs::write(&file, format!("{password}\n"))?;
        Ok(file)
    }

    /// A password file holding a password nobody was given.
    pub fn wrong_password_file(&self) -> anyhow::Result<PathBuf> {
        let file = self.dir.path().join("wrong.password");
        std::fs::write(&file, "not-the-password\n")?;
        Ok(file)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log"))?;
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server.cert)
                .arg("--key-file")
                .arg(&tls.server.key)
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca);
        }
        let child = command
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (install Debian's etcd-server: scripts/setup)")?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut curl = Command::new("curl");
            if let Some(tls) = &self.tls {
                curl.arg("--cacert")
                    .arg(&tls.ca)
                    .arg("--cert")
                    .arg(&tls.client.cert)
                    .arg("--key")
                    .arg(&tls.client.key);
            }
            let healthy = curl
                .args(["-sf", &format!("{client}/health")])
                .output()
                .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("true"))
                .unwrap_or(false);
            if healthy {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                bail!("etcd exited ({status}) before becoming healthy at {client}\n{log}");
            }
            if std::time::Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                bail!("etcd did not become healthy at {client} within 20s\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
