//! The coordinator and worker binaries as child processes, logging to files,
//! killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::bin;

pub struct Service {
    name: String,
    child: Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Service {
    fn spawn(name: &str, mut command: Command) -> anyhow::Result<Self> {
        let log_dir = tempfile::tempdir()?;
        let log = log_dir.path().join(format!("{name}.log"));
        let child = command
            .env("GODWIT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            _log_dir: log_dir,
        })
    }

    /// Starts `godwit-coordinator` on a free port; returns it and its URL.
    pub fn coordinator(
        etcd: &str,
        root: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<(Self, String)> {
        let mut command = Command::new(bin("godwit-coordinator")?);
        command.args(["--listen", "127.0.0.1:0", "--etcd", etcd, "--root", root]);
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let mut service = Self::spawn("coordinator", command)?;
        let stdout = service.child.stdout.take().context("coordinator stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(address) = line.trim().strip_prefix("listening on ") else {
            bail!(
                "coordinator did not start: {line:?}\n{}",
                service.log_text()
            );
        };
        Ok((service, format!("http://{address}")))
    }

    pub fn worker(
        id: &str,
        etcd: &str,
        root: &str,
        coordinator: &str,
        extra: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(bin("godwit-worker")?);
        command.args(worker_args(id, etcd, root, coordinator));
        command.args(extra);
        command.envs(env.iter().map(|(k, v)| (k, v)));
        Self::spawn(id, command)
    }

    /// Starts `godwit-worker` under a limit on its data memory (heap and
    /// private mappings, `RLIMIT_DATA`): past it, allocations fail and the
    /// worker dies.
    pub fn worker_with_memory_limit(
        id: &str,
        etcd: &str,
        root: &str,
        coordinator: &str,
        data_bytes: u64,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--data={data_bytes}"))
            .arg("--")
            .arg(bin("godwit-worker")?)
            .args(worker_args(id, etcd, root, coordinator));
        // One malloc arena per core, not per thread: the limit then bounds
        // what the worker holds, not how its allocator reserves.
        command.env("MALLOC_ARENA_MAX", "2");
        Self::spawn(id, command)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`KILL`, `TERM`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.name);
        Ok(())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn try_wait(&mut self) -> anyhow::Result<Option<Option<i32>>> {
        Ok(self.child.try_wait()?.map(|status| status.code()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the service's log says `text` (within `limit`).
    pub async fn logged(&self, text: &str, limit: std::time::Duration) -> anyhow::Result<()> {
        crate::process::wait_until(&format!("the log to say {text:?}"), limit, || async {
            Ok(self.log_text().contains(text).then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n--- log\n{}", self.log_text()))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The arguments every worker of a test deployment starts with.
fn worker_args<'a>(
    id: &'a str,
    etcd: &'a str,
    root: &'a str,
    coordinator: &'a str,
) -> [&'a str; 8] {
    [
        "--id",
        id,
        "--etcd",
        etcd,
        "--root",
        root,
        "--coordinator",
        coordinator,
    ]
}
