//! Test harness for end-to-end tests: real PostgreSQL clusters, a real etcd,
//! a real S3-compatible server (moto) and the real godwit binaries, each
//! started per test in its own temporary directory on free loopback ports.
//! A missing dependency fails the test loudly; nothing is skipped.

pub mod chaos;
pub mod compare;
pub mod etcd;
pub mod otlp;
pub mod pg;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod s3;
pub mod service;

use std::path::PathBuf;

pub use chaos::{FaultAt, Figures, MeasuredRun};
pub use compare::{
    assert_same_tables, clean_read_bytes, lost_and_duplicated, schema_difference, table_digest,
    user_tables,
};
pub use etcd::{Etcd, EtcdTls};
pub use pg::PgCluster;
pub use pki::{CertFiles, Named, Pki};
pub use process::{
    Job, Running, bin, describe, free_port, is_audit_trail, run_godwit, run_godwit_at_terminal,
    wait_for_streaming, wait_until,
};
pub use proxy::{FaultProxy, HttpFault, HttpFaultProxy};
pub use s3::S3Server;
pub use service::Service;

/// The repository root, for scripts and fixtures.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A temporary directory that a PostgreSQL cluster's owner can enter.
pub fn shared_tempdir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp")?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// A source cluster with the awkward fixture loaded into database `shop` at
/// `scale`, and a target cluster with an empty `shop`.
pub async fn source_and_target(scale: u32) -> anyhow::Result<(PgCluster, PgCluster)> {
    pair_with_fixture("awkward.sql", scale).await
}

/// A source cluster with `tests/fixtures/FIXTURE` loaded into database
/// `shop` at `scale` and the least-privileged `migrator` role, and a target
/// cluster with an empty `shop` owned by the non-superuser `loader`.
pub async fn pair_with_fixture(
    fixture: &str,
    scale: u32,
) -> anyhow::Result<(PgCluster, PgCluster)> {
    let (source, target) = std::thread::scope(|s| {
        let source = s.spawn(PgCluster::start);
        let target = s.spawn(PgCluster::start);
        (source.join(), target.join())
    });
    let source = source.map_err(|_| anyhow::anyhow!("source cluster start panicked"))??;
    let target = target.map_err(|_| anyhow::anyhow!("target cluster start panicked"))??;
    source.create_database("shop").await?;
    target.create_database("shop").await?;
    source.load_sql("shop", fixture, scale)?;
    source
        .least_privileged_role("shop", pg::MIGRATOR, "")
        .await?;
    target.database_owner("shop", pg::LOADER).await?;
    Ok((source, target))
}

/// The spec body (everything but `encryption`) of a job between the two
/// clusters, read by the least-privileged `migrator` role and loaded by
/// the target database's non-superuser owner `loader`.
pub fn spec_body(job: &str, source: &PgCluster, target: &PgCluster, staging: &str) -> String {
    format!(
        "job: {job}\ncustomer: acme\nsource: {}\ntarget: {}\nstaging: {staging}\ntables: [\"*\"]\n\
         partition_size: 512KiB\nchunk_size: 128KiB",
        source.migrator_url("shop"),
        target.loader_url("shop")
    )
}
