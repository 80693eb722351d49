//! The backend-neutral lease store suite. Every implementation must pass it:
//! the in-process store in this crate's unit tests, etcd in `tests/` against
//! a real etcd process. Each call takes a fresh key prefix so runs never meet.

use std::sync::Arc;
use std::time::Duration;

use super::{HeldLease, LeaseStore, LeaseTiming};
use crate::Error;

/// Waits at most this long for an expiry the store promised.
const EXPIRY_GRACE: Duration = Duration::from_secs(5);

pub async fn run_all(store: Arc<dyn LeaseStore>, prefix: &str) {
    key_value_round_trip(store.as_ref(), &format!("{prefix}/kv/")).await;
    only_one_creator_wins(store.as_ref(), &format!("{prefix}/create/")).await;
    a_key_is_created_once(store.as_ref(), &format!("{prefix}/create-once/")).await;
    revoked_lease_frees_its_keys(store.as_ref(), &format!("{prefix}/revoke/")).await;
    unrenewed_lease_expires(store.as_ref(), &format!("{prefix}/expiry/")).await;
    renewed_lease_outlives_its_ttl(store.as_ref(), &format!("{prefix}/renew/")).await;
    fenced_writes_stop_with_the_lease(store.as_ref(), &format!("{prefix}/fence/")).await;
    holder_steps_down_when_lease_is_gone(store.clone(), &format!("{prefix}/holder/")).await;
    a_watch_sees_every_change_under_its_prefix(store.as_ref(), &format!("{prefix}/watch/")).await;
    a_swap_writes_only_over_what_it_read(store.as_ref(), &format!("{prefix}/swap/")).await;
}

pub async fn key_value_round_trip(store: &dyn LeaseStore, prefix: &str) {
    let key = |name: &str| format!("{prefix}{name}");
    assert_eq!(store.get(&key("a")).await.expect("get"), None);
    store.put(&key("b"), b"2".to_vec()).await.expect("put");
    store.put(&key("a"), b"1".to_vec()).await.expect("put");
    store
        .put(&key("a"), b"1bis".to_vec())
        .await
        .expect("overwrite");
    store
        .put(&format!("{prefix}x"), b"out".to_vec())
        .await
        .expect("put");
    assert_eq!(
        store.get(&key("a")).await.expect("get"),
        Some(b"1bis".to_vec())
    );
    let listed = store.list(&key("")).await.expect("list");
    let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec![key("a"), key("b"), format!("{prefix}x")]);
    store.delete(&key("a")).await.expect("delete");
    assert_eq!(store.get(&key("a")).await.expect("get"), None);
    store.delete_prefix(prefix).await.expect("delete prefix");
    assert!(store.list(prefix).await.expect("list").is_empty());
}

pub async fn only_one_creator_wins(store: &dyn LeaseStore, prefix: &str) {
    let key = format!("{prefix}partition-0");
    let first = store.grant(Duration::from_secs(10)).await.expect("grant");
    let second = store.grant(Duration::from_secs(10)).await.expect("grant");
    assert!(
        store
            .create_leased(&key, b"w1".to_vec(), first)
            .await
            .expect("create")
    );
    assert!(
        !store
            .create_leased(&key, b"w2".to_vec(), second)
            .await
            .expect("create")
    );
    assert_eq!(store.get(&key).await.expect("get"), Some(b"w1".to_vec()));
    store.revoke(first).await.expect("revoke");
    store.revoke(second).await.expect("revoke");
}

pub async fn a_key_is_created_once(store: &dyn LeaseStore, prefix: &str) {
    let key = format!("{prefix}job");
    let attempts = futures::future::join_all(
        (0..8).map(|i| store.create(&key, format!("submission {i}").into_bytes())),
    )
    .await;
    let created: Vec<usize> = attempts
        .iter()
        .enumerate()
        .filter(|(_, created)| matches!(created, Ok(true)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(created.len(), 1, "{attempts:?}");
    assert_eq!(
        store.get(&key).await.expect("get"),
        Some(format!("submission {}", created[0]).into_bytes())
    );
    assert!(!store.create(&key, b"again".to_vec()).await.expect("create"));
}

pub async fn revoked_lease_frees_its_keys(store: &dyn LeaseStore, prefix: &str) {
    let key = format!("{prefix}partition-0");
    let lease = store.grant(Duration::from_secs(10)).await.expect("grant");
    assert!(
        store
            .create_leased(&key, b"w1".to_vec(), lease)
            .await
            .expect("create")
    );
    store.revoke(lease).await.expect("revoke");
    assert_eq!(store.get(&key).await.expect("get"), None);
    assert!(
        store.keep_alive(lease).await.is_err(),
        "a revoked lease renewed"
    );
    let next = store.grant(Duration::from_secs(10)).await.expect("grant");
    assert!(
        store
            .create_leased(&key, b"w2".to_vec(), next)
            .await
            .expect("create")
    );
    store.revoke(next).await.expect("revoke");
}

pub async fn unrenewed_lease_expires(store: &dyn LeaseStore, prefix: &str) {
    let key = format!("{prefix}partition-0");
    let lease = store.grant(Duration::from_secs(1)).await.expect("grant");
    assert!(
        store
            .create_leased(&key, b"w1".to_vec(), lease)
            .await
            .expect("create")
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1) + EXPIRY_GRACE;
    while store.get(&key).await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "key attached to an unrenewed 1s lease still present after {EXPIRY_GRACE:?} of grace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(Error::LeaseLost { .. })
    ));
}

pub async fn renewed_lease_outlives_its_ttl(store: &dyn LeaseStore, prefix: &str) {
    let key = format!("{prefix}partition-0");
    let lease = store.grant(Duration::from_secs(2)).await.expect("grant");
    assert!(
        store
            .create_leased(&key, b"w1".to_vec(), lease)
            .await
            .expect("create")
    );
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        store
            .keep_alive(lease)
            .await
            .expect("renewal of a live lease");
    }
    assert_eq!(store.get(&key).await.expect("get"), Some(b"w1".to_vec()));
    store.revoke(lease).await.expect("revoke");
}

pub async fn fenced_writes_stop_with_the_lease(store: &dyn LeaseStore, prefix: &str) {
    let guard = format!("{prefix}lease");
    let progress = format!("{prefix}progress");
    let lease = store.grant(Duration::from_secs(10)).await.expect("grant");
    assert!(
        store
            .create_leased(&guard, b"w1".to_vec(), lease)
            .await
            .expect("create")
    );
    assert!(
        store
            .put_if_held(&guard, lease, &progress, b"1".to_vec())
            .await
            .expect("fenced put")
    );
    store.revoke(lease).await.expect("revoke");
    let other = store.grant(Duration::from_secs(10)).await.expect("grant");
    assert!(
        store
            .create_leased(&guard, b"w2".to_vec(), other)
            .await
            .expect("create")
    );
    assert!(
        !store
            .put_if_held(&guard, lease, &progress, b"2".to_vec())
            .await
            .expect("fenced put")
    );
    assert_eq!(
        store.get(&progress).await.expect("get"),
        Some(b"1".to_vec())
    );
    store.revoke(other).await.expect("revoke");
}

pub async fn holder_steps_down_when_lease_is_gone(store: Arc<dyn LeaseStore>, prefix: &str) {
    let key = format!("{prefix}partition-0");
    let timing = LeaseTiming {
        ttl: Duration::from_secs(3),
    };
    let held = HeldLease::try_acquire(store.clone(), &key, b"w1".to_vec(), timing)
        .await
        .expect("acquire")
        .expect("free key");
    assert!(
        HeldLease::try_acquire(store.clone(), &key, b"w2".to_vec(), timing)
            .await
            .expect("acquire")
            .is_none()
    );
    held.check().expect("fresh lease");
    // Someone (an operator, an etcd compaction of a lost lease) ends the lease under the holder.
    store.revoke(held.lease_id()).await.expect("revoke");
    let bound = timing.keep_alive_interval() + timing.renew_timeout() + Duration::from_secs(1);
    let lost = tokio::time::timeout(bound, held.lost()).await;
    assert!(
        lost.is_ok(),
        "holder did not step down within {bound:?} of losing its lease"
    );
    assert!(held.check().is_err());
    assert!(
        held.put_fenced(&format!("{prefix}progress"), b"late".to_vec())
            .await
            .is_err()
    );
    let retaken = HeldLease::try_acquire(store.clone(), &key, b"w2".to_vec(), timing)
        .await
        .expect("acquire");
    let retaken = retaken.expect("key free after the holder stepped down");
    retaken.release().await.expect("release");
    assert_eq!(
        store.get(&key).await.expect("get"),
        None,
        "release left the key behind"
    );
}

pub async fn a_watch_sees_every_change_under_its_prefix(store: &dyn LeaseStore, prefix: &str) {
    use futures::StreamExt;

    use super::Change;
    let key = |name: &str| format!("{prefix}{name}");
    let mut watch = store.watch_prefix(&key("in/")).await.expect("watch");
    store.put(&key("in/a"), b"1".to_vec()).await.expect("put");
    store.put(&key("out"), b"x".to_vec()).await.expect("put");
    assert!(
        store
            .create(&key("in/b"), b"2".to_vec())
            .await
            .expect("create")
    );
    store.delete(&key("in/a")).await.expect("delete");
    let lease = store.grant(Duration::from_secs(10)).await.expect("grant");
    assert!(
        store
            .create_leased(&key("in/held"), b"w".to_vec(), lease)
            .await
            .expect("create")
    );
    // A key leaving with its lease is a change like any other.
    store.revoke(lease).await.expect("revoke");
    store
        .delete_prefix(&key("in/"))
        .await
        .expect("delete prefix");
    let expected = vec![
        Change::Put {
            key: key("in/a"),
            value: b"1".to_vec(),
        },
        Change::Put {
            key: key("in/b"),
            value: b"2".to_vec(),
        },
        Change::Delete { key: key("in/a") },
        Change::Put {
            key: key("in/held"),
            value: b"w".to_vec(),
        },
        Change::Delete {
            key: key("in/held"),
        },
        Change::Delete { key: key("in/b") },
    ];
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        match tokio::time::timeout(EXPIRY_GRACE, watch.next()).await {
            Ok(Some(change)) => seen.push(change.expect("change")),
            Ok(None) => panic!("watch ended after {seen:?}"),
            Err(_) => panic!("only {seen:?} seen within {EXPIRY_GRACE:?}"),
        }
    }
    assert_eq!(seen, expected);
    // Quiet now: nothing more arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.next())
            .await
            .is_err(),
        "a change nobody made was reported"
    );
    // A watch outlives any per-request timeout of the store's client.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    store
        .put(&key("in/late"), b"3".to_vec())
        .await
        .expect("put");
    let late = tokio::time::timeout(EXPIRY_GRACE, watch.next()).await;
    assert!(
        matches!(late, Ok(Some(Ok(Change::Put { ref key, .. }))) if key.ends_with("in/late")),
        "a change 3.5 s after the watch opened: {late:?}"
    );
    store.delete(&key("in/late")).await.expect("delete");
    store.delete(&key("out")).await.expect("delete");
}

pub async fn a_swap_writes_only_over_what_it_read(store: &dyn LeaseStore, prefix: &str) {
    let key = format!("{prefix}record");
    let guard = format!("{prefix}leader");
    store.put(&key, b"v1".to_vec()).await.expect("put");
    assert!(
        store
            .swap(&key, b"v1", b"v2".to_vec(), None)
            .await
            .expect("swap")
    );
    // Someone read v1 too and writes after: refused, v2 stays.
    assert!(
        !store
            .swap(&key, b"v1", b"v3".to_vec(), None)
            .await
            .expect("swap")
    );
    assert_eq!(store.get(&key).await.expect("get"), Some(b"v2".to_vec()));
    // Fenced as well: only while the guard is held on that lease.
    let lease = store.grant(Duration::from_secs(10)).await.expect("grant");
    assert!(
        store
            .create_leased(&guard, b"me".to_vec(), lease)
            .await
            .expect("create")
    );
    assert!(
        store
            .swap(&key, b"v2", b"v4".to_vec(), Some((&guard, lease)))
            .await
            .expect("swap")
    );
    store.revoke(lease).await.expect("revoke");
    assert!(
        !store
            .swap(&key, b"v4", b"v5".to_vec(), Some((&guard, lease)))
            .await
            .expect("swap")
    );
    assert_eq!(store.get(&key).await.expect("get"), Some(b"v4".to_vec()));
    // A key that is not there holds nothing to compare with.
    assert!(
        !store
            .swap(&format!("{prefix}absent"), b"", b"x".to_vec(), None)
            .await
            .expect("swap")
    );
    store.delete_prefix(prefix).await.expect("clean up");
}

/// One test per case of the suite against the store `make` (an async
/// block yielding `(Arc<dyn LeaseStore>, guard)`, the guard keeping its
/// server alive), so a failure names its case and backend.
#[macro_export]
macro_rules! lease_store_suite {
    ($make:expr) => {
        $crate::lease_store_suite!(@case $make, key_value_round_trip, "/suite/kv/");
        $crate::lease_store_suite!(@case $make, only_one_creator_wins, "/suite/create/");
        $crate::lease_store_suite!(@case $make, a_key_is_created_once, "/suite/create-once/");
        $crate::lease_store_suite!(@case $make, revoked_lease_frees_its_keys, "/suite/revoke/");
        $crate::lease_store_suite!(@case $make, unrenewed_lease_expires, "/suite/expiry/");
        $crate::lease_store_suite!(@case $make, renewed_lease_outlives_its_ttl, "/suite/renew/");
        $crate::lease_store_suite!(@case $make, fenced_writes_stop_with_the_lease, "/suite/fence/");
        $crate::lease_store_suite!(@case $make, a_watch_sees_every_change_under_its_prefix, "/suite/watch/");
        $crate::lease_store_suite!(@case $make, a_swap_writes_only_over_what_it_read, "/suite/swap/");
        #[tokio::test(flavor = "multi_thread")]
        async fn holder_steps_down_when_lease_is_gone() {
            let (store, _guard) = $make.await;
            $crate::lease::suite::holder_steps_down_when_lease_is_gone(store, "/suite/holder/").await;
        }
    };
    (@case $make:expr, $case:ident, $prefix:literal) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $case() {
            let (store, _guard) = $make.await;
            $crate::lease::suite::$case(store.as_ref(), $prefix).await;
        }
    };
}

#[cfg(test)]
mod memory_store {
    use std::sync::Arc;

    use crate::lease::{LeaseStore, MemoryStore};

    crate::lease_store_suite!(async {
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
        (store, ())
    });
}
