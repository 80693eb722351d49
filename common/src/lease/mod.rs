//! The lease store: a small key-value interface with TTL leases, implemented
//! by etcd for distributed deployments and in process for the embedded
//! default. Coordinator and workers depend on the trait only, and one
//! backend-neutral suite (`suite`) runs against both implementations.

mod etcd;
mod holder;
mod memory;
pub mod suite;
mod watch;

use std::time::Duration;

use async_trait::async_trait;

pub use etcd::{EtcdAccess, EtcdStore};
pub use holder::{HeldLease, LeaseTiming};
pub use memory::MemoryStore;
pub use watch::{Change, Wakeups, Watch};

use crate::Result;

/// An etcd lease id, or its in-process equivalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()>;
    /// Every key under `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    async fn delete(&self, key: &str) -> Result<()>;
    /// Creates `key` if no such key exists, in one step (etcd: a
    /// transaction on `create_revision == 0`). Returns whether this call
    /// created it.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<bool>;
    async fn delete_prefix(&self, prefix: &str) -> Result<()>;

    /// Grants a lease that expires `ttl` after its last renewal.
    async fn grant(&self, ttl: Duration) -> Result<LeaseId>;
    /// Renews the lease; fails with `Error::LeaseLost` once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Ends the lease at once, deleting every key attached to it.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;

    /// Creates `key` attached to `lease` if no such key exists (etcd:
    /// `create_revision == 0`). Returns whether this call created it.
    async fn create_leased(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<bool>;
    /// Writes `key` only while `guard` is still attached to `lease`: the
    /// fencing rule for a lease holder's progress writes.
    async fn put_if_held(
        &self,
        guard: &str,
        lease: LeaseId,
        key: &str,
        value: Vec<u8>,
    ) -> Result<bool>;

    /// Replaces `key`'s value with `value` only if it holds `expected` now
    /// and, with a `guard`, only while that key is attached to that lease:
    /// a compare-and-swap for records one writer owns. Returns whether it
    /// wrote.
    async fn swap(
        &self,
        key: &str,
        expected: &[u8],
        value: Vec<u8>,
        guard: Option<(&str, LeaseId)>,
    ) -> Result<bool>;

    /// Every change under `prefix` from the moment this call returns
    /// (the watch is in place by then: a `list` after it misses nothing).
    /// A key removed because its lease ended shows as a `Delete`.
    async fn watch_prefix(&self, prefix: &str) -> Result<Watch>;
}
