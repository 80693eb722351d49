//! Throwaway PostgreSQL clusters, started with `scripts/pg-cluster` (the same
//! script the demo and the benchmark use): logical WAL, trust auth on
//! 127.0.0.1, a free port, run by the `postgres` user when tests run as root.

use std::process::Command;

use anyhow::{Context, bail};
use tokio_postgres::{Client, NoTls};

use crate::{free_port, repo_root, shared_tempdir};

/// The least-privileged source role of the end-to-end tests.
pub const MIGRATOR: &str = "migrator";
/// The target role the end-to-end tests load as: no superuser, the owner
/// of the target database.
pub const LOADER: &str = "loader";

/// A throwaway role's password: per cluster, never reused elsewhere.
fn role_password(role: &str, port: u16) -> String {
    format!("pw-{role}-{port}")
}

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

    /// Another test (or process) may take the free port between its pick
    /// and the server's bind: a fresh cluster on a fresh port is tried then.
    fn launch(tls: bool) -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = shared_tempdir("godwit-pg-")?;
            let port = free_port()?;
            let status = Command::new(repo_root().join("scripts/pg-cluster"))
                .arg("start")
                .arg(dir.path().join("cluster"))
                .arg(port.to_string())
                .args(tls.then_some("--tls"))
                .status()
                .context(
                    "running scripts/pg-cluster (is PostgreSQL installed? run scripts/setup)",
                )?;
            if status.success() {
                return Ok(Self { dir, port });
            }
            let log = std::fs::read_to_string(dir.path().join("cluster/log")).unwrap_or_default();
            if attempt < 3 && log.contains("Address already in use") {
                continue;
            }
            bail!("PostgreSQL cluster did not start on port {port}: {status}\n{log}");
        }
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

    /// Creates the role the README asks customers for, `REPLICATION` and
    /// `SELECT` on every table and sequence of `db` (no superuser), that
    /// must log in with a password (SCRAM) over TCP; `attributes` adds role
    /// attributes such as `BYPASSRLS`. Returns its connection URL.
    pub async fn least_privileged_role(
        &self,
        db: &str,
        role: &str,
        attributes: &str,
    ) -> anyhow::Result<String> {
        let password = role_password(role, self.port);
        let admin = self.client(db).await?;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN REPLICATION {attributes} PASSWORD '{password}'; \
                 DO $$ DECLARE s text; BEGIN \
                   FOR s IN SELECT quote_ident(nspname) FROM pg_namespace \
                            WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
                              AND nspname NOT LIKE 'pg_temp%' AND nspname NOT LIKE 'pg_toast_temp%' LOOP \
                     EXECUTE format('GRANT USAGE ON SCHEMA %s TO {role}', s); \
                     EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %s TO {role}', s); \
                     EXECUTE format('GRANT SELECT ON ALL SEQUENCES IN SCHEMA %s TO {role}', s); \
                   END LOOP; END $$; \
                 ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {role}; \
                 ALTER DEFAULT PRIVILEGES GRANT SELECT ON SEQUENCES TO {role}"
            ))
            .await
            .with_context(|| format!("creating role {role}"))?;
        self.allow_password_login(role, &password).await?;
        Ok(self.role_url_at(role, self.port, db))
    }

    /// A role that owns database `db` and nothing else (no superuser), as a
    /// platform's loading role would; it logs in with a SCRAM password.
    pub async fn database_owner(&self, db: &str, role: &str) -> anyhow::Result<String> {
        let password = role_password(role, self.port);
        self.client("postgres")
            .await?
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD '{password}'; ALTER DATABASE {db} OWNER TO {role}"
            ))
            .await
            .with_context(|| format!("creating role {role}"))?;
        self.allow_password_login(role, &password).await?;
        Ok(self.role_url_at(role, self.port, db))
    }

    /// Lets `role` log in over TCP with its SCRAM password only, and puts
    /// the password in the cluster's password file.
    async fn allow_password_login(&self, role: &str, password: &str) -> anyhow::Result<()> {
        let hba = self.dir.path().join("cluster/data/pg_hba.conf");
        let existing = std::fs::read_to_string(&hba).context("reading pg_hba.conf")?;
        if !existing.contains(&format!(" {role} ")) {
            let kind = if existing.contains("hostssl") {
                "hostssl"
            } else {
                "host"
            };
            std::fs::write(
                &hba,
                format!(
                    "{kind} all {role} 127.0.0.1/32 scram-sha-256\n\
                     {kind} replication {role} 127.0.0.1/32 scram-sha-256\n{existing}"
                ),
            )
            .context("writing pg_hba.conf")?;
            self.client("postgres")
                .await?
                .batch_execute("SELECT pg_reload_conf()")
                .await
                .context("reloading pg_hba.conf")?;
        }
        // Its password also goes into the cluster's password file, which
        // the URLs name instead of carrying it.
        let passfile = self.passfile();
        let mut lines = std::fs::read_to_string(&passfile).unwrap_or_default();
        lines.push_str(&format!("*:*:*:{role}:{password}\n"));
        std::fs::write(&passfile, lines).context("writing the password file")?;
        std::fs::set_permissions(
            &passfile,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        Ok(())
    }

    /// The password of `role` (made by [`Self::least_privileged_role`]), for
    /// tests that look for it where it must not be.
    pub fn role_password(&self, role: &str) -> String {
        role_password(role, self.port)
    }

    /// The cluster's password file (libpq's format, mode 0600).
    pub fn passfile(&self) -> std::path::PathBuf {
        self.dir.path().join("pgpass")
    }

    /// The URL of `role` (made by [`Self::least_privileged_role`]) reaching
    /// this cluster through `port` (its own, or a proxy's in front of it):
    /// without the password, naming the password file that holds it.
    pub fn role_url_at(&self, role: &str, port: u16, db: &str) -> String {
        format!(
            "postgres://{role}@127.0.0.1:{port}/{db}?passfile={}",
            self.passfile().display()
        )
    }

    /// Like [`Self::role_url_at`] on the cluster's own port, with the
    /// password in the URL itself (what an embedded run accepts).
    pub fn role_url_with_password(&self, role: &str, db: &str) -> String {
        format!(
            "postgres://{role}:{}@127.0.0.1:{}/{db}",
            role_password(role, self.port),
            self.port
        )
    }

    /// The URL the end-to-end tests migrate from: the least-privileged
    /// `migrator` role that [`crate::source_and_target`] creates.
    pub fn migrator_url(&self, db: &str) -> String {
        self.role_url_at(MIGRATOR, self.port, db)
    }

    /// The URL the end-to-end tests load into: the target database's
    /// owner `loader` that [`crate::source_and_target`] creates.
    pub fn loader_url(&self, db: &str) -> String {
        self.role_url_at(LOADER, self.port, db)
    }

    /// [`Self::migrator_url`] through a proxy listening on `port`.
    pub fn migrator_url_at(&self, port: u16, db: &str) -> String {
        self.role_url_at(MIGRATOR, port, db)
    }

    /// Makes `migrator` own every table of `db` and lets it create schemas
    /// there: what streaming changes and cutting over need (publishing the
    /// tables, leaving them refusing writes).
    pub async fn hand_tables_to_migrator(&self, db: &str) -> anyhow::Result<()> {
        self.client(db)
            .await?
            .batch_execute(&format!(
                "DO $$ DECLARE t text; BEGIN \
                   FOR t IN SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                            JOIN pg_namespace n ON n.oid = c.relnamespace \
                            WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                              AND n.nspname NOT LIKE 'pg_toast%' LOOP \
                     EXECUTE format('ALTER TABLE %s OWNER TO {MIGRATOR}', t); \
                   END LOOP; END $$; \
                 GRANT CREATE ON DATABASE {db} TO {MIGRATOR}"
            ))
            .await
            .context("handing the tables to the migrator role")
    }

    /// `pg_dump --schema-only` of `db` without godwit's own schema, owners
    /// and grants (the target's roles are the platform's, not the
    /// customer's), and without the dump's comment and `\restrict` lines.
    pub fn schema_text(&self, db: &str) -> anyhow::Result<String> {
        let output = Command::new("pg_dump")
            .args([
                "--schema-only",
                "--no-owner",
                "--no-privileges",
                "--exclude-schema=godwit",
            ])
            .arg(format!(
                "--dbname=host={} port={} user=postgres dbname={db}",
                self.dir.path().join("cluster").display(),
                self.port
            ))
            .output()
            .context("running pg_dump")?;
        if !output.status.success() {
            bail!(
                "pg_dump of {db} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            // `\restrict` lines carry a random key per dump.
            .filter(|line| {
                !line.starts_with("--")
                    && !line.starts_with("\\restrict")
                    && !line.starts_with("\\unrestrict")
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Loads `tests/fixtures/awkward.sql` at `scale` into `db`.
    pub fn load_fixture(&self, db: &str, scale: u32) -> anyhow::Result<()> {
        self.load_sql(db, "awkward.sql", scale)
    }

    /// Runs `tests/fixtures/FILE` with psql (`-v scale=N`) in `db`.
    pub fn load_sql(&self, db: &str, file: &str, scale: u32) -> anyhow::Result<()> {
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
            .arg(repo_root().join("tests/fixtures").join(file))
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
