//! Holding a lease: take it with a create-if-absent transaction, renew it
//! every TTL/3, and step down the moment a renewal fails or times out, which
//! is before the TTL can expire and hand the key to someone else.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{LeaseId, LeaseStore};
use crate::{Error, Result};

/// All lease timings derive from the TTL, so they can never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub ttl: Duration,
}

impl LeaseTiming {
    pub const DEFAULT: LeaseTiming = LeaseTiming {
        ttl: Duration::from_secs(10),
    };

    pub fn keep_alive_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// A renewal slower than this counts as failed: with one interval spent
    /// waiting and one renewing, a third of the TTL is left to stop writing.
    pub fn renew_timeout(&self) -> Duration {
        self.ttl / 3
    }
}

pub struct HeldLease {
    store: Arc<dyn LeaseStore>,
    key: String,
    lease: LeaseId,
    lost: watch::Receiver<Option<String>>,
    keeper: JoinHandle<()>,
}

impl HeldLease {
    /// Takes `key` if nobody holds it. `Ok(None)` means someone else does.
    pub async fn try_acquire(
        store: Arc<dyn LeaseStore>,
        key: &str,
        value: Vec<u8>,
        timing: LeaseTiming,
    ) -> Result<Option<Self>> {
        let lease = store.grant(timing.ttl).await?;
        match store.create_leased(key, value, lease).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = store.revoke(lease).await;
                return Ok(None);
            }
            Err(e) => {
                let _ = store.revoke(lease).await;
                return Err(e);
            }
        }
        let (lost_tx, lost) = watch::channel(None);
        let keeper = tokio::spawn(keep_alive(
            store.clone(),
            lease,
            key.to_owned(),
            timing,
            lost_tx,
        ));
        Ok(Some(Self {
            store,
            key: key.to_owned(),
            lease,
            lost,
            keeper,
        }))
    }

    /// The key this lease holds.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn lease_id(&self) -> LeaseId {
        self.lease
    }

    /// `Err(LeaseLost)` once the lease can no longer be trusted; a holder
    /// checks this before every write it makes on the lease's behalf.
    pub fn check(&self) -> Result<()> {
        match self.lost.borrow().as_ref() {
            None => Ok(()),
            Some(reason) => Err(Error::LeaseLost {
                key: self.key.clone(),
                reason: reason.clone(),
            }),
        }
    }

    /// Resolves when the lease is lost; for `select!` against the work it guards.
    pub async fn lost(&self) -> Error {
        let mut lost = self.lost.clone();
        let reason = match lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "keep-alive task ended".to_owned(),
        };
        Error::LeaseLost {
            key: self.key.clone(),
            reason,
        }
    }

    /// Writes a progress record only while the lease is held (fencing).
    pub async fn put_fenced(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.check()?;
        if self
            .store
            .put_if_held(&self.key, self.lease, key, value)
            .await?
        {
            Ok(())
        } else {
            Err(Error::LeaseLost {
                key: self.key.clone(),
                reason: "the store no longer attaches the key to this lease".into(),
            })
        }
    }

    /// Gives the lease up at once, so another holder need not wait for the TTL.
    pub async fn release(self) -> Result<()> {
        self.keeper.abort();
        self.store.revoke(self.lease).await
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

async fn keep_alive(
    store: Arc<dyn LeaseStore>,
    lease: LeaseId,
    key: String,
    timing: LeaseTiming,
    lost: watch::Sender<Option<String>>,
) {
    let mut ticks = tokio::time::interval(timing.keep_alive_interval());
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let reason =
            match tokio::time::timeout(timing.renew_timeout(), store.keep_alive(lease)).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => format!("keep-alive failed: {e}"),
                Err(_) => format!("keep-alive timed out after {:?}", timing.renew_timeout()),
            };
        tracing::warn!(lease_key = %key, %reason, "stepping down from lease");
        let _ = lost.send(Some(reason));
        return;
    }
}
