//! The backend-neutral lease store suite against a real etcd process, and
//! the holder's step-down when etcd goes away.

use std::sync::Arc;
use std::time::Duration;

use godwit_common::lease::{EtcdStore, HeldLease, LeaseStore, LeaseTiming, suite};
use godwit_tests::Etcd;

#[tokio::test(flavor = "multi_thread")]
async fn etcd_store_passes_the_suite() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let store: Arc<dyn LeaseStore> = Arc::new(EtcdStore::connect(&[etcd.url()]).await?);
    suite::run_all(store, "/suite").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn holder_steps_down_before_its_ttl_when_etcd_is_gone() -> anyhow::Result<()> {
    let mut etcd = Etcd::start()?;
    let store: Arc<dyn LeaseStore> = Arc::new(EtcdStore::connect(&[etcd.url()]).await?);
    let timing = LeaseTiming {
        ttl: Duration::from_secs(3),
    };
    let held = HeldLease::try_acquire(store.clone(), "/outage/partition-0", b"w1".to_vec(), timing)
        .await?
        .ok_or_else(|| anyhow::anyhow!("a fresh key was already held"))?;
    let stopped_at = tokio::time::Instant::now();
    etcd.stop();
    tokio::time::timeout(timing.ttl, held.lost())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "still holding the lease {:?} after etcd stopped",
                timing.ttl
            )
        })?;
    assert!(
        stopped_at.elapsed() < timing.ttl,
        "stepped down only after the TTL"
    );
    assert!(held.check().is_err());
    Ok(())
}
