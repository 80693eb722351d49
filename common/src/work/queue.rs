//! Publishing, finding, claiming, finishing and awaiting leased work. The
//! coordinator publishes and awaits; a worker finds, claims and finishes.
//! Every progress write of a claimed item is fenced by its lease.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{RetryPolicy, WorkItem, WorkState};
use crate::ids::JobId;
use crate::keyspace::Keyspace;
use crate::lease::{HeldLease, LeaseStore, LeaseTiming, Wakeups};
use crate::state::{self, now_unix_ms};
use crate::{Error, Result};

/// How long an awaiting coordinator goes without looking, whatever its
/// watch says: a lost watch costs this much latency at most.
const AWAIT_FALLBACK: Duration = Duration::from_secs(2);

/// Writes the items of a job's new plan.
pub async fn publish<T: WorkItem>(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    job: &JobId,
    items: &[T],
) -> Result<()> {
    for item in items {
        state::save(
            store,
            &keyspace.work_item(job, T::KIND, item.number()),
            item,
        )
        .await?;
    }
    Ok(())
}

/// Every item of the kind the job has, in number order.
pub async fn list<T: WorkItem>(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    job: &JobId,
) -> Result<Vec<T>> {
    store
        .list(&keyspace.work_items_prefix(job, T::KIND))
        .await?
        .into_iter()
        .map(|(key, bytes)| state::decode(&key, &bytes))
        .collect()
}

/// The items open for the taking: pending, of the lowest wave not done,
/// nobody's lease on them, not waiting out a backoff.
pub async fn pending<T: WorkItem>(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    job: &JobId,
) -> Result<Vec<T>> {
    let leased = state::keys_under(store, &keyspace.work_leases_prefix(job, T::KIND)).await?;
    let now = now_unix_ms();
    let items = list::<T>(store, keyspace, job).await?;
    let open_wave = items
        .iter()
        .filter(|item| item.state() != WorkState::Done)
        .map(WorkItem::wave)
        .min()
        .unwrap_or(0);
    Ok(items
        .into_iter()
        .filter(|item| {
            item.state() == WorkState::Pending
                && item.wave() <= open_wave
                && !item.attempts().backing_off(now)
                && !leased.contains(&keyspace.work_lease(job, T::KIND, item.number()))
        })
        .collect())
}

/// A unit of work whose lease this process holds.
pub struct Claimed<T: WorkItem> {
    pub item: T,
    lease: HeldLease,
    key: String,
}

/// How a claimed item's attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Done,
    /// Stopped on purpose (shutdown, throttle hand-back): nothing counted.
    HandedBack,
    /// Failed; tried again after its backoff.
    Retrying,
    GaveUp,
}

/// Takes the lease of `listed` as `owner`. None: someone else holds it, or
/// the item is no longer pending now that its lease is ours (the listing
/// may be stale), or the plan it came from is gone.
pub async fn claim<T: WorkItem>(
    store: Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    job: &JobId,
    listed: T,
    owner: &str,
    timing: LeaseTiming,
) -> Result<Option<Claimed<T>>> {
    let lease_key = keyspace.work_lease(job, T::KIND, listed.number());
    let key = keyspace.work_item(job, T::KIND, listed.number());
    let Some(lease) =
        HeldLease::try_acquire(store.clone(), &lease_key, owner.as_bytes().to_vec(), timing)
            .await?
    else {
        return Ok(None);
    };
    let item = match state::load::<T>(store.as_ref(), &key).await {
        Ok(Some(current)) if current.state() == WorkState::Pending => Some(current),
        Ok(_) => None,
        Err(e @ Error::Corrupt { .. }) => {
            let _ = lease.release().await;
            return Err(e);
        }
        // The store is away for a moment: the listing was read under this
        // very lease's key being free, and every write from here is fenced.
        Err(_) => Some(listed),
    };
    match item {
        Some(item) => Ok(Some(Claimed { item, lease, key })),
        None => {
            let _ = lease.release().await;
            Ok(None)
        }
    }
}

impl<T: WorkItem> Claimed<T> {
    pub fn lease(&self) -> &HeldLease {
        &self.lease
    }

    /// Where the item's progress is written (fenced by the lease).
    pub fn item_key(&self) -> &str {
        &self.key
    }

    /// The item to update, with the lease and key its progress writes need.
    pub fn parts(&mut self) -> (&mut T, &HeldLease, &str) {
        (&mut self.item, &self.lease, &self.key)
    }

    /// Records how the attempt ended in the item (not yet in the store).
    pub fn settle(&mut self, outcome: &Result<()>, retry: &RetryPolicy) -> Settled {
        match outcome {
            Ok(()) => {
                self.item.set_state(WorkState::Done);
                self.item.attempts_mut().error = None;
                Settled::Done
            }
            Err(Error::Cancelled) => Settled::HandedBack,
            Err(e) => {
                let gave_up = self.item.attempts_mut().fail(e, retry);
                super::metrics::record_failure::<T>(e, gave_up);
                if gave_up {
                    self.item.set_state(WorkState::Failed);
                    Settled::GaveUp
                } else {
                    Settled::Retrying
                }
            }
        }
    }

    /// Publishes the item as it now stands, while the lease is still ours,
    /// and lets the lease go. A write refused because the lease was lost is
    /// an error: the item's next holder does it again.
    pub async fn finish(self) -> Result<()> {
        let written = match state::encode(&self.item) {
            Ok(bytes) => self.lease.put_fenced(&self.key, bytes).await,
            Err(e) => Err(e),
        };
        self.release().await;
        written
    }

    /// Lets the lease go without recording anything.
    pub async fn release(self) {
        if let Err(e) = self.lease.release().await {
            tracing::warn!(error = %e, "cannot release lease; it expires with its TTL");
        }
    }
}

/// Why awaiting a job's work stopped short.
#[derive(Debug)]
pub enum Stopped {
    /// The caller's cancel check said so.
    Cancelled,
    /// An item failed for good.
    Failed(Error),
}

/// Waits until the job's `expected` items of the kind are all done, woken
/// by changes under the job's keys rather than polling them. Stops at the
/// first item that failed for good, naming it, or when `cancelled` says so.
/// A lease store that is away for a while is waited for.
pub async fn await_done<T, F, Fut>(
    store: Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    job: &JobId,
    expected: usize,
    mut cancelled: F,
) -> std::result::Result<Vec<T>, Stopped>
where
    T: WorkItem,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let mut wakeups = Wakeups::open(store.clone(), &keyspace.job_prefix(job), AWAIT_FALLBACK).await;
    loop {
        let observed = async {
            Ok::<_, Error>((
                cancelled().await?,
                list::<T>(store.as_ref(), keyspace, job).await?,
            ))
        };
        match observed.await {
            Ok((true, _)) => return Err(Stopped::Cancelled),
            Ok((false, items)) => {
                super::metrics::record_items(job, &items);
                if let Some(failed) = items.iter().find(|i| i.state() == WorkState::Failed) {
                    let attempts = failed.attempts();
                    return Err(Stopped::Failed(Error::Exhausted(format!(
                        "{} failed after {} attempt(s): {}",
                        failed.describe(),
                        attempts.attempts,
                        attempts.error.as_deref().unwrap_or("no error recorded")
                    ))));
                }
                let done = items
                    .iter()
                    .filter(|i| i.state() == WorkState::Done)
                    .count();
                if done == expected {
                    return Ok(items);
                }
            }
            Err(e @ Error::Corrupt { .. }) => return Err(Stopped::Failed(e)),
            Err(e) => {
                tracing::warn!(job_id = %job, error = %e, "lease store unavailable; waiting for it");
            }
        }
        wakeups.wait().await;
    }
}
