//! A real S3-compatible server on loopback: moto's standalone server (from
//! PyPI), which implements the S3 REST API including multipart uploads.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::free_port;

pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto_server (install it with scripts/setup)")?;
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("moto_server did not listen on port {port} within 30s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let output = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{}/{bucket}", self.endpoint)])
            .output()
            .context("running curl")?;
        ensure!(
            output.status.success(),
            "creating bucket {bucket} failed: {output:?}"
        );
        Ok(())
    }

    /// Keys of every object under `prefix` in `bucket`.
    pub fn list(&self, bucket: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
        let output = Command::new("curl")
            .args([
                "-sf",
                &format!(
                    "{}/{bucket}?list-type=2&prefix={prefix}&max-keys=100000",
                    self.endpoint
                ),
            ])
            .output()
            .context("running curl")?;
        ensure!(
            output.status.success(),
            "listing bucket {bucket} failed: {output:?}"
        );
        let body = String::from_utf8_lossy(&output.stdout);
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split("</Key>").next())
            .map(str::to_owned)
            .collect())
    }

    /// Reads an object with a signed request, as any S3 client would.
    pub async fn get(&self, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
        use object_store::ObjectStoreExt;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(bucket)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_region("us-east-1")
            .with_allow_http(true)
            .build()?;
        let object = store.get(&object_store::path::Path::from(key)).await?;
        Ok(object.bytes().await?.to_vec())
    }

    /// The environment that points godwit's S3 client at this server.
    pub fn port(&self) -> anyhow::Result<u16> {
        Ok(self
            .endpoint
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .parse()?)
    }

    /// [`S3Server::env`] pointing at a proxy on `port` in front of the server.
    pub fn env_via(&self, port: u16) -> anyhow::Result<Vec<(String, String)>> {
        let own = format!(":{}", self.port()?);
        Ok(self
            .env()
            .into_iter()
            .map(|(k, v)| (k, v.replace(&own, &format!(":{port}"))))
            .collect())
    }

    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
