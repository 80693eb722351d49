//! Keeping a lease's reads within the customer's limits. The coordinator
//! allocates each lease a share of the customer's bytes per second; the
//! [`ReadPacer`] holds the reader to that share (governor's GCRA, on the
//! tokio clock), and [`follow`] keeps the share current (from the worker's [`LimitsView`]) and says when the
//! lease must hand its work back (the job paused, the session cap lowered
//! below the slot it holds, the worker stopping).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use godwit_common::ids::JobId;
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::{HeldLease, LeaseId, LeaseStore};
use godwit_common::state;
use godwit_common::throttle::{Allocation, CustomerLimits};
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use view::LimitsView;

mod view;

/// Pacing granularity: reads are paid for in pieces of at least this.
pub const PACE_PIECE: u64 = 32 * 1024;

/// The tokio clock, so paced reads follow paused time in tests.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// Holds a reader to its share: None is no limit, Some(0) waits for a
/// share, Some(n) allows n bytes per second.
pub struct ReadPacer {
    share: watch::Receiver<Option<u64>>,
    limiter: Option<(u64, u32, Limiter)>,
    clock: TokioClock,
}

/// The most a limiter lets through at once: a tenth of a second's worth
/// (credit a reader builds up while its chunk loads).
fn burst(rate: u64) -> u32 {
    u32::try_from((rate / 10).clamp(PACE_PIECE.min(rate), rate)).unwrap_or(u32::MAX)
}

impl ReadPacer {
    pub fn new(share: watch::Receiver<Option<u64>>) -> Self {
        Self {
            share,
            limiter: None,
            clock: TokioClock::default(),
        }
    }

    /// No limit, ever.
    pub fn unlimited() -> Self {
        Self::new(watch::channel(None).1)
    }

    /// Waits until `bytes` more may be read.
    pub async fn consume(&mut self, bytes: u64) {
        let mut left = bytes;
        while left > 0 {
            let share = *self.share.borrow_and_update();
            let rate = match share {
                None => return,
                Some(0) => {
                    if self.share.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(rate) => rate,
            };
            if self.limiter.as_ref().is_none_or(|(r, _, _)| *r != rate) {
                let cap = burst(rate);
                let per_second = NonZeroU32::new(u32::try_from(rate).unwrap_or(u32::MAX))
                    .unwrap_or(NonZeroU32::MIN);
                let quota = Quota::per_second(per_second)
                    .allow_burst(NonZeroU32::new(cap).unwrap_or(NonZeroU32::MIN));
                let limiter = RateLimiter::direct_with_clock(quota, self.clock.clone());
                // A new limiter starts with a full burst of credit. Shares
                // change whenever leases come and go, and a fresh burst
                // each time would add up to reading past the budget, so it
                // starts empty instead.
                if let Some(burst) = NonZeroU32::new(cap) {
                    let _ = limiter.check_n(burst);
                }
                self.limiter = Some((rate, cap, limiter));
            }
            let Some((_, cap, limiter)) = &self.limiter else {
                return;
            };
            let piece = left.min(u64::from(*cap)) as u32;
            let Some(cells) = NonZeroU32::new(piece) else {
                return;
            };
            match limiter.check_n(cells) {
                Ok(Ok(())) => left -= u64::from(piece),
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = self.share.changed() => {}
                    }
                }
                // Cannot happen (pieces never exceed the burst); pay nothing
                // rather than spin.
                Err(_) => return,
            }
        }
    }
}

/// Shares of this worker's finished leases, per customer, each with the
/// split it came from. A new lease of the same customer reads at one of
/// them until a split includes it, instead of idling until the next one:
/// the budget is unchanged, the finished lease no longer reads. A spare is
/// only good while its split is the current one.
#[derive(Debug, Default)]
pub struct Spares {
    by_customer: Mutex<HashMap<String, Vec<(u64, u64)>>>,
}

impl Spares {
    fn put(&self, customer: &str, decided_at: u64, share: u64) {
        if let Ok(mut spares) = self.by_customer.lock() {
            spares
                .entry(customer.to_owned())
                .or_default()
                .push((decided_at, share));
        }
    }

    /// A spare share from the split decided at `decided_at`; stale ones
    /// are dropped on the way.
    fn take(&self, customer: &str, decided_at: u64) -> Option<u64> {
        let mut spares = self.by_customer.lock().ok()?;
        let list = spares.get_mut(customer)?;
        list.retain(|(at, _)| *at == decided_at);
        list.pop().map(|(_, share)| share)
    }
}

/// What a lease follows while it works: its share of the customer's budget
/// and whether to hand its work back.
pub struct Following {
    /// The source session slot the work was admitted in.
    pub session: godwit_common::pg::SessionSlot,
    pub share: watch::Receiver<Option<u64>>,
    pub hand_back: watch::Receiver<bool>,
    task: JoinHandle<()>,
    /// The share in use and the split it came from, left to the worker's
    /// next lease of the customer when this one's work is done.
    in_use: Arc<Mutex<Option<(u64, u64)>>>,
    /// Only completed work lends its share: work handed back or failed can
    /// be leased again at once, by anyone, under the same split.
    completed: AtomicBool,
    spares: Arc<Spares>,
    customer: String,
}

impl Following {
    /// The lease's work is done for good (copied, compared).
    pub fn completed(&self) {
        self.completed.store(true, Ordering::SeqCst);
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.task.abort();
        if !self.completed.load(Ordering::SeqCst) {
            return;
        }
        if let Some((decided_at, share)) = self.in_use.lock().ok().and_then(|mut s| s.take())
            && share > 0
        {
            self.spares.put(&self.customer, decided_at, share);
        }
    }
}

/// Where a lease's work stands in the customer's limits.
pub struct Place<'a> {
    pub customer: &'a str,
    pub job: &'a JobId,
    pub lease_key: &'a str,
    /// The work lease, which any session slot taken is attached to.
    pub lease: LeaseId,
    pub owner: &'a str,
    /// The session slot held, when sessions were capped at admission.
    pub slot: Option<u32>,
}

/// The lease's share under `split`. A lease not in the split yet reads at a
/// spare share of the same split (kept from an earlier round, or taken from
/// `spares` now), or waits; `in_use` records what it reads at.
fn lease_share(
    split: &Allocation,
    lease_key: &str,
    in_use: &Mutex<Option<(u64, u64)>>,
    spares: &Spares,
    customer: &str,
) -> Option<u64> {
    let at = split.decided_at_unix_ms;
    let Ok(mut current) = in_use.lock() else {
        return Some(0);
    };
    if split.bytes_per_sec.is_some() && !split.shares.contains_key(lease_key) {
        let taken = current
            .filter(|(from, _)| *from == at)
            .or_else(|| spares.take(customer, at).map(|share| (at, share)));
        *current = taken;
        return Some(taken.map_or(0, |(_, share)| share));
    }
    let share = split.share(lease_key);
    *current = share.map(|share| (at, share));
    share
}

/// Follows the allocation and limits for one lease, as the worker's
/// [`LimitsView`] sees them change, until dropped. Until the view has
/// listed them once, the share stays as it starts: zero.
pub fn follow(
    store: Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    view: &LimitsView,
    place: Place<'_>,
    spares: Arc<Spares>,
    mut worker_stopping: watch::Receiver<bool>,
) -> Following {
    let in_use = Arc::new(Mutex::new(None));
    let using = in_use.clone();
    let lender = spares.clone();
    let customer = place.customer.to_owned();
    let (share_tx, share) = watch::channel(Some(0));
    let (hand_back_tx, hand_back) = watch::channel(false);
    let mut seen = view.subscribe();
    let job = place.job.clone();
    let lease_key = place.lease_key.to_owned();
    let (lease, owner) = (place.lease, place.owner.to_owned());
    let session = godwit_common::pg::SessionSlot::taken(place.slot);
    let mut slot = place.slot;
    let slots = keyspace.clone();
    let task = {
        let customer = customer.clone();
        tokio::spawn(async move {
            let (mut view_open, mut stopping_open) = (true, true);
            loop {
                let looked = {
                    let seen = seen.borrow_and_update();
                    seen.ready.then(|| {
                        (
                            seen.allocation(&customer).cloned(),
                            seen.limits(&customer).cloned(),
                            seen.paused(&job),
                        )
                    })
                };
                if let Some((split, limits, paused)) = looked {
                    let share = match &split {
                        Some(split) => lease_share(split, &lease_key, &using, &lender, &customer),
                        // Limits set but nothing allocated yet: wait for it.
                        None if limits.is_some() => Some(0),
                        None => None,
                    };
                    share_tx.send_if_modified(|current| {
                        let changed = *current != share;
                        *current = share;
                        changed
                    });
                    // A cap lowered below the slot held, or set while none
                    // is held and none is free: the work goes back.
                    let over_cap = match (limits.and_then(|l| l.worker_sessions()), slot) {
                        (Some(cap), Some(held)) => held >= cap,
                        (Some(cap), None) => {
                            slot = take_slot(&store, &slots, &customer, lease, &owner, cap)
                                .await
                                .ok()
                                .flatten();
                            slot.is_none()
                        }
                        (None, _) => false,
                    };
                    if over_cap || paused {
                        hand_back_tx.send_replace(true);
                    }
                }
                if *worker_stopping.borrow() {
                    hand_back_tx.send_replace(true);
                }
                tokio::select! {
                    changed = seen.changed(), if view_open => view_open = changed.is_ok(),
                    changed = worker_stopping.changed(), if stopping_open => {
                        stopping_open = changed.is_ok();
                    }
                    // Neither can change any more: nothing left to follow.
                    () = std::future::ready(()), if !view_open && !stopping_open => return,
                }
            }
        })
    };
    Following {
        session,
        share,
        hand_back,
        task,
        in_use,
        completed: AtomicBool::new(false),
        spares,
        customer,
    }
}

/// Takes one of `sessions` session slots of the customer for `lease` (the
/// slot is released with it); None when every one is taken.
async fn take_slot(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    customer: &str,
    lease: LeaseId,
    owner: &str,
    sessions: u32,
) -> godwit_common::Result<Option<u32>> {
    for n in 0..sessions {
        let key = keyspace.session_slot(customer, n);
        if store
            .create_leased(&key, owner.as_bytes().to_vec(), lease)
            .await?
        {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// Takes a free session slot of the customer for the lease (it is released
/// with the lease). `Ok(None)` when every slot is taken; `Ok(Some(None))`
/// when sessions are not capped.
pub async fn take_session_slot(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    customer: &str,
    lease: &HeldLease,
    owner: &str,
) -> godwit_common::Result<Option<Option<u32>>> {
    let limits: Option<CustomerLimits> =
        state::load(store.as_ref(), &keyspace.customer_limits(customer)).await?;
    let Some(sessions) = limits.and_then(|l| l.worker_sessions()) else {
        return Ok(Some(None));
    };
    Ok(
        take_slot(store, keyspace, customer, lease.lease_id(), owner, sessions)
            .await?
            .map(Some),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `total` bytes in `piece`-sized reads through a pacer at `rate`,
    /// on paused time; returns the virtual time it took.
    async fn paced(rate: u64, total: u64, piece: u64) -> Duration {
        let (_tx, rx) = watch::channel(Some(rate));
        let mut pacer = ReadPacer::new(rx);
        let start = tokio::time::Instant::now();
        let mut read = 0;
        while read < total {
            pacer.consume(piece).await;
            read += piece;
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_held_to_the_share() {
        // 10 MiB at 1 MiB/s: ten seconds (no initial burst).
        let took = paced(1 << 20, 10 << 20, 64 * 1024).await;
        assert!(
            took >= Duration::from_millis(9_900) && took <= Duration::from_millis(10_100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_share_applies_to_the_next_read() {
        let (tx, rx) = watch::channel(Some(1 << 20));
        let mut pacer = ReadPacer::new(rx);
        let start = tokio::time::Instant::now();
        for _ in 0..32 {
            pacer.consume(64 * 1024).await; // 2 MiB at 1 MiB/s
        }
        let first = start.elapsed();
        tx.send_replace(Some(4 << 20));
        let start = tokio::time::Instant::now();
        for _ in 0..64 {
            pacer.consume(64 * 1024).await; // 4 MiB at 4 MiB/s
        }
        let second = start.elapsed();
        assert!(first >= Duration::from_millis(1_800), "{first:?}");
        assert!(
            second >= Duration::from_millis(800) && second <= Duration::from_millis(1_100),
            "{second:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_share_waits_until_a_share_arrives() {
        let (tx, rx) = watch::channel(Some(0));
        let mut pacer = ReadPacer::new(rx);
        let reader = tokio::spawn(async move {
            pacer.consume(1024).await;
            tokio::time::Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!reader.is_finished(), "read while its share was zero");
        let released_at = tokio::time::Instant::now();
        tx.send_replace(Some(1 << 20));
        let read_at = reader.await.expect("reader task");
        assert!(read_at >= released_at);
    }

    #[test]
    fn a_spare_share_serves_only_its_own_split() {
        let spares = Spares::default();
        spares.put("acme", 100, 5 << 20);
        spares.put("acme", 90, 7 << 20);
        assert_eq!(spares.take("beta", 100), None);
        // Only the share of the current split is lent; a stale one is gone.
        assert_eq!(spares.take("acme", 100), Some(5 << 20));
        assert_eq!(spares.take("acme", 100), None);
        assert_eq!(spares.take("acme", 90), None);
    }

    /// Follows a lease that the current split gives 4 MiB/s; returns the
    /// following once it has read its share, with the split's time.
    async fn following_with_share(
        store: &Arc<dyn LeaseStore>,
        keyspace: &Keyspace,
        spares: &Arc<Spares>,
    ) -> (Following, u64) {
        let split = Allocation {
            bytes_per_sec: Some(8 << 20),
            shares: [
                ("lease-a".to_owned(), 4 << 20),
                ("lease-b".to_owned(), 4 << 20),
            ]
            .into_iter()
            .collect(),
            reason: String::new(),
            decided_at_unix_ms: 42,
        };
        state::save(
            store.as_ref(),
            &keyspace.customer_allocation("acme"),
            &split,
        )
        .await
        .expect("allocation");
        let job = JobId::parse("j").expect("job id");
        let view = LimitsView::start(store.clone(), keyspace);
        let mut following = follow(
            store.clone(),
            keyspace,
            &view,
            Place {
                customer: "acme",
                job: &job,
                lease_key: "lease-a",
                lease: LeaseId(1),
                owner: "w",
                slot: None,
            },
            spares.clone(),
            watch::channel(false).1,
        );
        let _ = following.share.wait_for(|s| *s == Some(4 << 20)).await;
        (following, 42)
    }

    #[tokio::test]
    async fn only_completed_work_lends_its_share() {
        let store: Arc<dyn LeaseStore> = Arc::new(godwit_common::lease::MemoryStore::new());
        let keyspace = Keyspace::new("/t");
        let spares = Arc::new(Spares::default());

        // Handed back (or failed): the same lease may be taken again under
        // this split, by anyone, so its share is not lent.
        let (handed_back, at) = following_with_share(&store, &keyspace, &spares).await;
        drop(handed_back);
        assert_eq!(spares.take("acme", at), None);

        let (done, at) = following_with_share(&store, &keyspace, &spares).await;
        done.completed();
        drop(done);
        assert_eq!(spares.take("acme", at), Some(4 << 20));
    }

    #[tokio::test(start_paused = true)]
    async fn no_share_means_no_wait() {
        let mut pacer = ReadPacer::unlimited();
        let start = tokio::time::Instant::now();
        pacer.consume(1 << 30).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
