//! A real etcd (Debian's `etcd-server`) on free loopback ports, in its own
//! data directory; stoppable and restartable for failure tests.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::free_port;

pub struct Etcd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    pub fn start() -> anyhow::Result<Self> {
        let mut etcd = Self {
            dir: tempfile::tempdir()?,
            child: None,
            client_port: free_port()?,
            peer_port: free_port()?,
        };
        etcd.launch()?;
        Ok(etcd)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log"))?;
        let child = Command::new("etcd")
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
            let healthy = Command::new("curl")
                .args(["-sf", &format!("{client}/health")])
                .output()
                .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("true"))
                .unwrap_or(false);
            if healthy {
                return Ok(());
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
