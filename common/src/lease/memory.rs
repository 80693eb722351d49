//! In-process lease store for the embedded default and unit tests. Expiry
//! follows `tokio::time`, so tests can drive it with paused time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::Instant;

use super::{Change, LeaseId, LeaseStore, Watch};
use crate::{Error, Result};

#[derive(Default)]
struct Inner {
    entries: BTreeMap<String, (Vec<u8>, Option<LeaseId>)>,
    leases: HashMap<LeaseId, (Instant, Duration)>,
    next_lease: i64,
    /// Changes made under the lock, sent to watchers once it is released.
    changed: Vec<Change>,
}

impl Inner {
    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for lease in expired {
            self.drop_lease(lease);
        }
    }

    fn drop_lease(&mut self, lease: LeaseId) {
        self.leases.remove(&lease);
        let changed = &mut self.changed;
        self.entries.retain(|key, (_, attached)| {
            let keep = *attached != Some(lease);
            if !keep {
                changed.push(Change::Delete { key: key.clone() });
            }
            keep
        });
    }

    fn insert(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) {
        self.changed.push(Change::Put {
            key: key.to_owned(),
            value: value.clone(),
        });
        self.entries.insert(key.to_owned(), (value, lease));
    }

    fn remove(&mut self, key: &str) {
        if self.entries.remove(key).is_some() {
            self.changed.push(Change::Delete {
                key: key.to_owned(),
            });
        }
    }
}

/// How many changes a watcher may fall behind before it is told it
/// missed some.
const WATCH_BACKLOG: usize = 4096;

/// Expiry is noticed on the next call to the store (any call), and then
/// reported to watchers like any other delete.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    changes: tokio::sync::broadcast::Sender<Change>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            changes: tokio::sync::broadcast::channel(WATCH_BACKLOG).0,
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T>) -> Result<T> {
        let (result, changed) = {
            let mut inner = self
                .inner
                .lock()
                .map_err(|_| Error::LeaseStore("in-process store poisoned by a panic".into()))?;
            inner.expire();
            let result = f(&mut inner);
            (result, std::mem::take(&mut inner.changed))
        };
        for change in changed {
            // No receiver is no watcher: nothing to tell.
            let _ = self.changes.send(change);
        }
        result
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.with(|inner| Ok(inner.entries.get(key).map(|(value, _)| value.clone())))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.with(|inner| {
            inner.insert(key, value, None);
            Ok(())
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.with(|inner| {
            Ok(inner
                .entries
                .range(prefix.to_owned()..)
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(key, (value, _))| (key.clone(), value.clone()))
                .collect())
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.with(|inner| {
            inner.remove(key);
            Ok(())
        })
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        self.with(|inner| {
            let doomed: Vec<String> = inner
                .entries
                .range(prefix.to_owned()..)
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(key, _)| key.clone())
                .collect();
            for key in doomed {
                inner.remove(&key);
            }
            Ok(())
        })
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        self.with(|inner| {
            inner.next_lease += 1;
            let lease = LeaseId(inner.next_lease);
            inner.leases.insert(lease, (Instant::now() + ttl, ttl));
            Ok(lease)
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.with(|inner| match inner.leases.get_mut(&lease) {
            Some((deadline, ttl)) => {
                *deadline = Instant::now() + *ttl;
                Ok(())
            }
            None => Err(Error::LeaseLost {
                key: format!("lease {}", lease.0),
                reason: "expired or revoked".into(),
            }),
        })
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.with(|inner| {
            inner.drop_lease(lease);
            Ok(())
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<bool> {
        self.with(|inner| {
            if inner.entries.contains_key(key) {
                return Ok(false);
            }
            inner.insert(key, value, None);
            Ok(true)
        })
    }

    async fn create_leased(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<bool> {
        self.with(|inner| {
            if !inner.leases.contains_key(&lease) {
                return Err(Error::LeaseLost {
                    key: key.to_owned(),
                    reason: "lease expired before the key was created".into(),
                });
            }
            if inner.entries.contains_key(key) {
                return Ok(false);
            }
            inner.insert(key, value, Some(lease));
            Ok(true)
        })
    }

    async fn put_if_held(
        &self,
        guard: &str,
        lease: LeaseId,
        key: &str,
        value: Vec<u8>,
    ) -> Result<bool> {
        self.with(|inner| {
            let held =
                matches!(inner.entries.get(guard), Some((_, Some(attached))) if *attached == lease);
            if held {
                inner.insert(key, value, None);
            }
            Ok(held)
        })
    }

    async fn swap(
        &self,
        key: &str,
        expected: &[u8],
        value: Vec<u8>,
        guard: Option<(&str, LeaseId)>,
    ) -> Result<bool> {
        self.with(|inner| {
            let held = guard.is_none_or(|(guard, lease)| {
                matches!(inner.entries.get(guard), Some((_, Some(attached))) if *attached == lease)
            });
            let current =
                matches!(inner.entries.get(key), Some((now, _)) if now.as_slice() == expected);
            if held && current {
                inner.insert(key, value, None);
            }
            Ok(held && current)
        })
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<Watch> {
        let prefix = prefix.to_owned();
        let receiver = self.changes.subscribe();
        let changes = futures::stream::unfold(receiver, |mut receiver| async move {
            use tokio::sync::broadcast::error::RecvError;
            match receiver.recv().await {
                Ok(change) => Some((Ok(change), receiver)),
                Err(RecvError::Lagged(_)) => Some((Ok(Change::Missed), receiver)),
                Err(RecvError::Closed) => None,
            }
        })
        .filter(move |change| {
            let wanted = change
                .as_ref()
                .map(|c| c.key().is_none_or(|key| key.starts_with(&prefix)))
                .unwrap_or(true);
            std::future::ready(wanted)
        });
        Ok(Box::pin(changes))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    const TTL: Duration = Duration::from_secs(3);
    const KEY: &str = "/lease";

    #[derive(Debug, Clone)]
    enum Op {
        Acquire(usize),
        Renew(usize),
        Release(usize),
        Write(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize).prop_map(Op::Acquire),
            (0..3usize).prop_map(Op::Renew),
            (0..3usize).prop_map(Op::Release),
            (0..3usize).prop_map(Op::Write),
            (0..5_000u64).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a model of leases with deadlines: the key has at most one
        /// holder, only a holder with a live lease can take or write it, and
        /// an expired or released lease frees it.
        #[test]
        fn at_most_one_live_holder(ops in proptest::collection::vec(op(), 1..60)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
            runtime.block_on(async {
                let store = MemoryStore::new();
                // Model: each holder's lease and its deadline; who holds the key.
                let mut leases: HashMap<usize, (LeaseId, tokio::time::Instant)> = HashMap::new();
                let mut owner: Option<usize> = None;
                for op in ops {
                    let now = tokio::time::Instant::now();
                    leases.retain(|_, (_, deadline)| *deadline > now);
                    if owner.is_some_and(|h| !leases.contains_key(&h)) {
                        owner = None;
                    }
                    match op {
                        Op::Acquire(h) => {
                            let lease = store.grant(TTL).await.expect("grant");
                            let created = store.create_leased(KEY, vec![h as u8], lease).await.expect("create");
                            prop_assert_eq!(created, owner.is_none(), "create_leased disagrees with the model");
                            if created {
                                owner = Some(h);
                                leases.insert(h, (lease, now + TTL));
                            } else {
                                store.revoke(lease).await.expect("revoke");
                            }
                        }
                        Op::Renew(h) => {
                            if let Some((lease, deadline)) = leases.get_mut(&h) {
                                prop_assert!(store.keep_alive(*lease).await.is_ok(), "a live lease failed to renew");
                                *deadline = now + TTL;
                            }
                        }
                        Op::Release(h) => {
                            if let Some((lease, _)) = leases.remove(&h) {
                                store.revoke(lease).await.expect("revoke");
                                if owner == Some(h) {
                                    owner = None;
                                }
                            }
                        }
                        Op::Write(h) => {
                            if let Some((lease, _)) = leases.get(&h) {
                                let written = store.put_if_held(KEY, *lease, "/progress", vec![1]).await.expect("put");
                                prop_assert_eq!(written, owner == Some(h), "a fenced write disagrees with the model");
                            }
                        }
                        Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                    }
                    let present = store.get(KEY).await.expect("get");
                    let now = tokio::time::Instant::now();
                    let live_owner = owner.filter(|h| leases.get(h).is_some_and(|(_, d)| *d > now));
                    prop_assert_eq!(present.map(|v| v[0] as usize), live_owner, "key holder disagrees with the model");
                }
                Ok(())
            })?;
        }
    }
}
