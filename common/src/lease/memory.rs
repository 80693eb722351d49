//! In-process lease store for the embedded default and unit tests. Expiry
//! follows `tokio::time`, so tests can drive it with paused time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{LeaseId, LeaseStore};
use crate::{Error, Result};

#[derive(Default)]
struct Inner {
    entries: BTreeMap<String, (Vec<u8>, Option<LeaseId>)>,
    leases: HashMap<LeaseId, (Instant, Duration)>,
    next_lease: i64,
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
        self.entries
            .retain(|_, (_, attached)| *attached != Some(lease));
    }
}

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T>) -> Result<T> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| Error::LeaseStore("in-process store poisoned by a panic".into()))?;
        inner.expire();
        f(&mut inner)
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.with(|inner| Ok(inner.entries.get(key).map(|(value, _)| value.clone())))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.with(|inner| {
            inner.entries.insert(key.to_owned(), (value, None));
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
            inner.entries.remove(key);
            Ok(())
        })
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        self.with(|inner| {
            inner.entries.retain(|key, _| !key.starts_with(prefix));
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
            inner.entries.insert(key.to_owned(), (value, Some(lease)));
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
                inner.entries.insert(key.to_owned(), (value, None));
            }
            Ok(held)
        })
    }
}
