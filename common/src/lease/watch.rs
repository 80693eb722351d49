//! Changes under a prefix, as the lease store reports them, and the waiter
//! built on them: what replaces polling every key of a job on a timer.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use super::LeaseStore;
use crate::Result;

/// One change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Changes were missed (the watcher fell behind, or the store compacted
    /// the history it was reading); whoever cares lists the prefix again.
    Missed,
}

impl Change {
    pub fn key(&self) -> Option<&str> {
        match self {
            Change::Put { key, .. } | Change::Delete { key } => Some(key),
            Change::Missed => None,
        }
    }
}

/// A stream of changes; it ends (or yields an error) when the store's
/// connection does, after which a new watch is needed.
pub type Watch = BoxStream<'static, Result<Change>>;

/// Wakes a waiter when something under a prefix changes, and at the
/// latest after `fallback`: a lost watch (etcd restarting, a network
/// partition) costs latency, never a missed wake-up. Open it before the
/// first look at the prefix, so nothing between that look and the first
/// wait goes unnoticed.
pub struct Wakeups {
    store: Arc<dyn LeaseStore>,
    prefix: String,
    /// Behind a mutex only so a `&Wakeups` can cross threads; `wait` takes
    /// `&mut self` and never locks it.
    watch: std::sync::Mutex<Option<Watch>>,
    fallback: Duration,
    wanted: fn(&Change) -> bool,
}

impl Wakeups {
    pub async fn open(store: Arc<dyn LeaseStore>, prefix: &str, fallback: Duration) -> Self {
        let watch = match store.watch_prefix(prefix).await {
            Ok(watch) => Some(watch),
            Err(e) => {
                tracing::debug!(prefix, error = %e, "no watch yet; looking again on a timer");
                None
            }
        };
        Self {
            store,
            prefix: prefix.to_owned(),
            watch: std::sync::Mutex::new(watch),
            fallback,
            wanted: |_| true,
        }
    }

    /// Wakes only for the changes `wanted` accepts (a missed change
    /// always wakes).
    pub fn only(self, wanted: fn(&Change) -> bool) -> Self {
        Self { wanted, ..self }
    }

    /// Returns once something under the prefix changed, or `fallback` passed.
    pub async fn wait(&mut self) {
        let slot = match self.watch.get_mut() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(watch) = slot.as_mut() else {
            tokio::time::sleep(self.fallback).await;
            *slot = self.store.watch_prefix(&self.prefix).await.ok();
            return;
        };
        let wanted = self.wanted;
        let woken = tokio::time::timeout(self.fallback, async {
            loop {
                match watch.next().await {
                    Some(Ok(change)) if change == Change::Missed || wanted(&change) => {
                        return true;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return false,
                }
            }
        })
        .await;
        if woken == Ok(false) {
            // The watch is gone; the caller looks again now, and the next
            // wait opens a new one.
            *slot = None;
            return;
        }
        // Drain what else is already queued: one look covers them all.
        while let Some(Some(Ok(_))) = watch.next().now_or_never() {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lease::MemoryStore;

    #[tokio::test]
    async fn a_change_wakes_the_waiter_before_its_fallback() {
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
        let mut wakeups = Wakeups::open(store.clone(), "/w/", Duration::from_secs(30)).await;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                store.put("/w/a", b"1".to_vec()).await.expect("put");
            })
        };
        let woken = tokio::time::timeout(Duration::from_secs(5), wakeups.wait()).await;
        assert!(
            woken.is_ok(),
            "a put under the prefix did not wake the waiter"
        );
        writer.await.expect("writer");
    }

    #[tokio::test(start_paused = true)]
    async fn without_changes_the_fallback_wakes_it_and_filtered_changes_do_not() {
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
        let mut wakeups = Wakeups::open(store.clone(), "/w/", Duration::from_secs(2))
            .await
            .only(|change| change.key().is_some_and(|key| key.ends_with("/record")));
        store.put("/w/progress", b"1".to_vec()).await.expect("put");
        let started = tokio::time::Instant::now();
        wakeups.wait().await;
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "a change the filter refuses woke the waiter"
        );
        store.put("/w/record", b"1".to_vec()).await.expect("put");
        let started = tokio::time::Instant::now();
        wakeups.wait().await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_it_missed_changes() {
        let store = MemoryStore::new();
        let mut watch = store.watch_prefix("/w/").await.expect("watch");
        for n in 0..5_000 {
            store
                .put(&format!("/w/{n}"), Vec::new())
                .await
                .expect("put");
        }
        let first = futures::StreamExt::next(&mut watch).await;
        assert!(
            matches!(first, Some(Ok(Change::Missed))),
            "a lagging watcher was not told: {first:?}"
        );
    }
}
