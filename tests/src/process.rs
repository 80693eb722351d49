//! The godwit binaries, job files and bounded waits.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::repo_root;

/// Path of a built godwit binary. Tests run the real binaries, built by the
/// test command (`scripts/test`) before the suite starts.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    ensure!(
        path.exists(),
        "binary {} is missing: build it first with `cargo build --bins` (scripts/test does)",
        path.display()
    );
    Ok(path)
}

pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Runs `godwit ARGS` to completion with extra environment.
pub fn run_godwit(args: &[&str], env: &[(String, String)]) -> anyhow::Result<Output> {
    let mut command = Command::new(bin("godwit")?);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().context("running godwit")
}

/// Runs the CLI at a terminal: a pseudo-terminal made by `script`, whose
/// stdout carries everything the CLI wrote to it (stderr included). The
/// arguments are quoted for the shell `script` runs them in.
pub fn run_godwit_at_terminal(args: &[&str]) -> anyhow::Result<Output> {
    let quoted: Vec<String> = std::iter::once(bin("godwit")?.display().to_string())
        .chain(args.iter().map(|a| (*a).to_owned()))
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    Command::new("script")
        .args(["-qefc", &quoted.join(" "), "/dev/null"])
        .output()
        .context("running godwit under script")
}

/// Polls `check` until it yields `Some`, for at most `limit`; the error says
/// what was waited for.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A staged file of a job's audit trail (its records or wrapped audit key),
/// which a purge keeps.
pub fn is_audit_trail(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "audit") || path.ends_with("audit-key.pb")
}

/// A job spec and its key file in a temporary directory.
pub struct Job {
    pub dir: tempfile::TempDir,
    pub spec_path: PathBuf,
    pub key_path: PathBuf,
}

impl Job {
    /// A job whose spec `make_body` writes, given the `file://` URL of a
    /// staging directory inside the job's directory.
    pub fn create(make_body: impl FnOnce(&str) -> String) -> anyhow::Result<Self> {
        let job = Self::new("")?;
        let staging = format!("file://{}", job.staging_dir().display());
        job.write(&make_body(&staging))?;
        Ok(job)
    }

    /// Rewrites `job.yaml` from `body` plus the `encryption` field.
    /// Rewrites the spec with `from` replaced by `to` (which must be there).
    pub fn edit(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let spec = std::fs::read_to_string(&self.spec_path)?;
        anyhow::ensure!(spec.contains(from), "the spec has no {from:?}:\n{spec}");
        std::fs::write(&self.spec_path, spec.replace(from, to))?;
        Ok(())
    }

    pub fn write(&self, body: &str) -> anyhow::Result<()> {
        std::fs::write(
            &self.spec_path,
            format!(
                "{body}\nencryption: {{ key_file: {} }}\n",
                self.key_path.display()
            ),
        )?;
        Ok(())
    }

    /// Writes `job.yaml` from `body` (the spec without its `encryption`
    /// field, which points at a freshly generated key).
    pub fn new(body: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let key_path = dir.path().join("kek");
        let output = run_godwit(
            &["keys", "generate", "--out", &key_path.display().to_string()],
            &[],
        )?;
        ensure!(output.status.success(), "key generation failed: {output:?}");
        let spec_path = dir.path().join("job.yaml");
        std::fs::write(
            &spec_path,
            format!(
                "{body}\nencryption: {{ key_file: {} }}\n",
                key_path.display()
            ),
        )?;
        Ok(Self {
            dir,
            spec_path,
            key_path,
        })
    }

    pub fn spec(&self) -> &str {
        self.spec_path.to_str().unwrap_or_default()
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.dir.path().join("staging")
    }

    /// Every file under `dir`, recursively.
    pub fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(next) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&next) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        files
    }
}

/// Text of a finished command, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Waits until `godwit status` at `url` shows `job` streaming changes; a
/// failed job ends the wait with its status.
pub async fn wait_for_streaming(url: &str, job: &str) -> anyhow::Result<()> {
    wait_until(
        "the job to stream changes",
        Duration::from_secs(120),
        || async {
            let output = run_godwit(&["status", "--coordinator", url, job], &[])?;
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            ensure!(!text.contains(" failed"), "{}", describe(&output));
            Ok(text.contains(&format!("{job} streaming:")).then_some(()))
        },
    )
    .await
}

/// A child process that is killed and reaped when dropped, so a failing
/// test leaves nothing running.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Waits at most `limit` for the process to end; says what it waited for.
    pub async fn exit_status(
        &mut self,
        what: &str,
        limit: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let child = &mut self.0;
        wait_until(what, limit, || {
            let done = child.try_wait();
            async move { Ok(done?) }
        })
        .await
    }
}
