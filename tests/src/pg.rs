//! Throwaway PostgreSQL clusters, started with `scripts/pg-cluster` (the same
//! script the demo and the benchmark use): logical WAL, trust auth on
//! 127.0.0.1, a free port, run by the `postgres` user when tests run as root.

use std::process::Command;

use anyhow::{Context, bail};
use tokio_postgres::{Client, NoTls};

use crate::{free_port, repo_root, shared_tempdir};

pub struct PgCluster {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PgCluster {
    pub fn start() -> anyhow::Result<Self> {
        Self::launch(false)
    }

    /// A cluster that accepts TLS connections only; its CA is at `ca_cert()`.
    pub fn start_tls() -> anyhow::Result<Self> {
        Self::launch(true)
    }

    fn launch(tls: bool) -> anyhow::Result<Self> {
        let dir = shared_tempdir("godwit-pg-")?;
        let port = free_port()?;
        let status = Command::new(repo_root().join("scripts/pg-cluster"))
            .arg("start")
            .arg(dir.path().join("cluster"))
            .arg(port.to_string())
            .args(tls.then_some("--tls"))
            .status()
            .context("running scripts/pg-cluster (is PostgreSQL installed? run scripts/setup)")?;
        if !status.success() {
            let log = std::fs::read_to_string(dir.path().join("cluster/log")).unwrap_or_default();
            bail!("PostgreSQL cluster did not start on port {port}: {status}\n{log}");
        }
        Ok(Self { dir, port })
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn ca_cert(&self) -> std::path::PathBuf {
        self.dir.path().join("cluster/ca.crt")
    }

    /// A client over the cluster's Unix socket (works for TLS-only clusters too).
    pub async fn client(&self, db: &str) -> anyhow::Result<Client> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.dir.path().join("cluster"))
            .port(self.port)
            .user("postgres")
            .dbname(db);
        let (client, connection) = config
            .connect(NoTls)
            .await
            .with_context(|| format!("connecting to {}", self.url(db)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        self.client("postgres")
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))
    }

    /// Loads `tests/fixtures/awkward.sql` at `scale` into `db`.
    pub fn load_fixture(&self, db: &str, scale: u32) -> anyhow::Result<()> {
        let output = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
            .arg(format!("scale={scale}"))
            .arg("-d")
            .arg(format!(
                "host={} port={} user=postgres dbname={db}",
                self.dir.path().join("cluster").display(),
                self.port
            ))
            .arg("-f")
            .arg(repo_root().join("tests/fixtures/awkward.sql"))
            .output()
            .context("running psql")?;
        if !output.status.success() {
            bail!(
                "loading the fixture failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/pg-cluster"))
            .arg("stop")
            .arg(self.dir.path().join("cluster"))
            .status();
    }
}
