//! The backend-neutral lease store suite against a real etcd process, and
//! the holder's step-down when etcd goes away.

use std::sync::Arc;
use std::time::Duration;

use godwit_common::lease::{EtcdAccess, EtcdStore, HeldLease, LeaseStore, LeaseTiming, suite};
use godwit_tests::{Etcd, Named, Pki};

/// The backend-neutral suite against a real etcd, one test per case.
mod etcd_store {
    use std::sync::Arc;

    use godwit_common::lease::{EtcdStore, LeaseStore};
    use godwit_tests::Etcd;

    async fn started() -> (Arc<dyn LeaseStore>, Etcd) {
        let etcd = Etcd::start().expect("etcd starts");
        let store = EtcdStore::connect(&[etcd.url()])
            .await
            .expect("etcd reachable");
        (Arc::new(store), etcd)
    }

    godwit_common::lease_store_suite!(started());
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

/// etcd serving TLS only, with `--client-cert-auth`: the store works with
/// the client certificate, and nothing gets in without one or with a
/// certificate of another CA.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_store_passes_the_suite_over_tls_with_a_client_certificate() -> anyhow::Result<()> {
    let pki = Pki::new("etcd")?;
    let etcd = Etcd::start_tls(&pki)?;
    let store: Arc<dyn LeaseStore> =
        Arc::new(EtcdStore::connect_with(&[etcd.url()], &etcd.access()).await?);
    suite::run_all(store, "/suite").await;

    let without_certificate = EtcdAccess {
        cert: None,
        key: None,
        ..etcd.access()
    };
    let stranger = Pki::new("stranger")?.client("lookalike", Named::CommonName("godwit"))?;
    let other_ca = EtcdAccess {
        cert: Some(stranger.cert),
        key: Some(stranger.key),
        ..etcd.access()
    };
    for (what, access) in [
        ("no client certificate", without_certificate),
        ("another CA's certificate", other_ca),
    ] {
        let refused = match EtcdStore::connect_with(&[etcd.url()], &access).await {
            Ok(store) => store.get("/suite/anything").await.err(),
            Err(e) => Some(e),
        };
        assert!(refused.is_some(), "etcd served a client with {what}");
    }
    // Plain http to a TLS-only etcd is refused before any request.
    let plain =
        EtcdStore::connect_with(&[etcd.url().replace("https", "http")], &etcd.access()).await;
    assert!(
        plain
            .err()
            .is_some_and(|e| e.to_string().contains("https://"))
    );
    Ok(())
}

/// etcd with `auth enable`: the store signs in with a user whose password
/// comes from a file, and may touch only its prefix; a wrong password is
/// refused.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_store_passes_the_suite_with_user_authentication() -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let password_file = etcd.enable_auth("godwit", "/suite").await?;
    let access = EtcdAccess {
        user: Some("godwit".into()),
        password_file: Some(password_file.clone()),
        ..EtcdAccess::default()
    };
    let store: Arc<dyn LeaseStore> =
        Arc::new(EtcdStore::connect_with(&[etcd.url()], &access).await?);
    suite::run_all(store.clone(), "/suite").await;
    assert!(
        store.put("/elsewhere/key", b"x".to_vec()).await.is_err(),
        "the user wrote outside its prefix"
    );

    let anonymous = EtcdStore::connect(&[etcd.url()]).await?;
    assert!(
        anonymous.get("/suite/kv/a").await.is_err(),
        "etcd served an anonymous client"
    );
    let wrong = etcd.wrong_password_file()?;
    let refused = match EtcdStore::connect_with(
        &[etcd.url()],
        &EtcdAccess {
            password_file: Some(wrong),
            ..access
        },
    )
    .await
    {
        Ok(store) => store.get("/suite/kv/a").await.err(),
        Err(e) => Some(e),
    };
    assert!(refused.is_some(), "etcd accepted a wrong password");
    Ok(())
}
