//! One coordinator leads at a time. Leadership is a key held on a lease
//! (`ROOT/leader`): campaign by creating it, keep it alive at TTL/3, stop
//! writing the moment a renewal fails or times out, which is before the
//! TTL can expire and let another coordinator win. Only the leader takes
//! jobs to their end (see `dispatch`), splits throttle budgets and sweeps
//! retention; every coordinator serves the API. Every job record the
//! leader writes is fenced by its lease, so a coordinator that lost
//! leadership without knowing it yet cannot overwrite its successor's.
//!
//! Losing the lease is not always losing the lead: when etcd itself went
//! away, nobody could have won meanwhile. The leader then suspends (record
//! writes wait), campaigns again and, if the term it wins follows its own
//! (`ROOT/leader-term` names who won last), goes on with its jobs where
//! they were. If another coordinator holds the key, or led in between, its
//! jobs stop at once and the new leader takes them over.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use godwit_common::ids::JobId;
use godwit_common::job::JobRecord;
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::{HeldLease, LeaseStore, LeaseTiming, Wakeups};
use godwit_common::state;
use godwit_common::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How a coordinator waits for the leader key to come free when it is not
/// told (a lost watch).
const CAMPAIGN_FALLBACK: Duration = Duration::from_secs(1);

/// Where this coordinator's leadership stands, as its record writers see it.
#[derive(Clone)]
enum Standing {
    Leading(Arc<HeldLease>),
    /// The lease was lost and it is not known yet whether someone else leads.
    Suspended,
    /// Someone else leads: every write of this term's drivers fails.
    Deposed,
}

/// Who won the last election, and which election it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Term {
    term: u64,
    identity: String,
}

/// Reads and writes job records. Every write is a compare-and-swap
/// against the version this process last read or wrote, so a record that
/// changed under its driver is a conflict, never silently overwritten; and
/// while leading, a write happens only while the leadership is held.
#[derive(Clone)]
pub struct JobRecords {
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    standing: Option<watch::Receiver<Standing>>,
    /// Each job's record as this process last read or wrote it.
    versions: Arc<Mutex<HashMap<JobId, Vec<u8>>>>,
}

impl JobRecords {
    /// Unfenced: for the one process of an embedded run.
    pub fn unfenced(store: Arc<dyn LeaseStore>, keyspace: Keyspace) -> Self {
        Self {
            store,
            keyspace,
            standing: None,
            versions: Arc::default(),
        }
    }

    fn remember(&self, job: &JobId, bytes: Vec<u8>) {
        if let Ok(mut versions) = self.versions.lock() {
            versions.insert(job.clone(), bytes);
        }
    }

    /// The job's record as stored now; later writes compare against it.
    pub async fn load(&self, job: &JobId) -> Result<Option<JobRecord>> {
        let key = self.keyspace.job_record(job);
        let Some(bytes) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let record = state::decode(&key, &bytes)?;
        self.remember(job, bytes);
        Ok(Some(record))
    }

    /// The version to compare against: the last one seen, else the stored one.
    async fn expected(&self, job: &JobId) -> Result<Vec<u8>> {
        let known = self
            .versions
            .lock()
            .ok()
            .and_then(|versions| versions.get(job).cloned());
        match known {
            Some(bytes) => Ok(bytes),
            None => Ok(self
                .store
                .get(&self.keyspace.job_record(job))
                .await?
                .unwrap_or_default()),
        }
    }

    /// One compare-and-swap of the record.
    async fn swap(&self, record: &JobRecord, guard: Option<&HeldLease>) -> Result<bool> {
        let job = &record.spec.job;
        let bytes = state::encode(record)?;
        let expected = self.expected(job).await?;
        let leader = self.keyspace.leader();
        let fence = guard.map(|lease| (leader.as_str(), lease.lease_id()));
        if let Some(lease) = guard {
            lease.check()?;
        }
        let swapped = self
            .store
            .swap(
                &self.keyspace.job_record(job),
                &expected,
                bytes.clone(),
                fence,
            )
            .await?;
        if swapped {
            self.remember(job, bytes);
        }
        Ok(swapped)
    }

    fn conflict(&self, job: &JobId) -> Error {
        Error::Conflict(format!(
            "the record of job {job} changed under its driver (another coordinator drives it); this one stops"
        ))
    }

    /// Writes the record while this coordinator leads; waits while its
    /// leadership is suspended; fails once another coordinator leads or
    /// the record changed since this process last saw it.
    pub async fn save(&self, record: &JobRecord) -> Result<()> {
        let job = &record.spec.job;
        let Some(standing) = &self.standing else {
            return match self.swap(record, None).await? {
                true => Ok(()),
                false => Err(self.conflict(job)),
            };
        };
        let mut standing = standing.clone();
        loop {
            let now = standing.borrow_and_update().clone();
            match now {
                Standing::Leading(lease) => match self.swap(record, Some(&lease)).await {
                    Ok(true) => return Ok(()),
                    // Refused: the lease is gone (wait for the standing to
                    // change), or the record moved on.
                    Ok(false) if lease.check().is_ok() => return Err(self.conflict(job)),
                    Ok(false) | Err(Error::LeaseLost { .. }) => {}
                    Err(e) => return Err(e),
                },
                Standing::Suspended => {}
                Standing::Deposed => {
                    return Err(Error::LeaseLost {
                        key: self.keyspace.leader(),
                        reason: "another coordinator leads now; it drives this job".into(),
                    });
                }
            }
            if standing.changed().await.is_err() {
                return Err(Error::LeaseLost {
                    key: self.keyspace.leader(),
                    reason: "this coordinator stopped leading".into(),
                });
            }
        }
    }
}

/// The outcome of one campaign.
struct Won {
    lease: Arc<HeldLease>,
    /// Nobody else led since this coordinator's previous term.
    continues: bool,
}

/// Campaigns until this coordinator holds the leader key. `deposed` is
/// called as soon as another coordinator is seen holding it.
async fn campaign(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    identity: &str,
    timing: LeaseTiming,
    mut deposed: impl FnMut(),
) -> Won {
    let key = keyspace.leader();
    let mut wakeups = Wakeups::open(store.clone(), &key, CAMPAIGN_FALLBACK).await;
    let mut announced = false;
    loop {
        match HeldLease::try_acquire(store.clone(), &key, identity.as_bytes().to_vec(), timing)
            .await
        {
            Ok(Some(lease)) => match next_term(store.as_ref(), keyspace, identity, &lease).await {
                Ok(continues) => {
                    return Won {
                        lease: Arc::new(lease),
                        continues,
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the leadership term; campaigning again");
                    let _ = lease.release().await;
                }
            },
            Ok(None) => {
                // The key may still be this coordinator's own, on the lease
                // it stopped renewing: that one runs out by itself.
                let holder = store.get(&key).await.ok().flatten();
                if let Some(holder) = holder.filter(|h| h.as_slice() != identity.as_bytes()) {
                    deposed();
                    if !announced {
                        tracing::info!(leader = %String::from_utf8_lossy(&holder), "another coordinator leads; following");
                        announced = true;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot campaign for leadership yet"),
        }
        wakeups.wait().await;
    }
}

/// Opens the next term under the held leader key; returns whether the
/// previous term was this coordinator's own.
async fn next_term(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    identity: &str,
    lease: &HeldLease,
) -> Result<bool> {
    let key = keyspace.leader_term();
    let last: Option<Term> = state::load(store, &key).await?;
    let continues = last.as_ref().is_some_and(|t| t.identity == identity);
    let next = Term {
        term: last.map_or(1, |t| t.term + 1),
        identity: identity.to_owned(),
    };
    lease.put_fenced(&key, state::encode(&next)?).await?;
    tracing::info!(
        term = next.term,
        identity,
        continues,
        "leading the deployment"
    );
    Ok(continues)
}

/// Leads whenever this coordinator can: campaigns, runs `duties` while
/// leading and campaigns again when the lease is lost. Duties go on across
/// a lapse nobody else used (see the module doc) and stop (dropped, which
/// ends every job driver they started) as soon as another coordinator
/// leads. Returns on `shutdown`, resigning if leading.
pub async fn lead<D, F>(
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    identity: String,
    timing: LeaseTiming,
    duties: D,
    shutdown: impl Future<Output = ()>,
) where
    D: Fn(JobRecords) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    let mut running: Option<(tokio::task::JoinHandle<()>, watch::Sender<Standing>)> = None;
    let stop = |running: &mut Option<(tokio::task::JoinHandle<()>, watch::Sender<Standing>)>| {
        if let Some((task, standing)) = running.take() {
            standing.send_replace(Standing::Deposed);
            task.abort();
            tracing::warn!("another coordinator leads: this one's jobs stop here and go to it");
        }
    };
    loop {
        let won = tokio::select! {
            won = campaign(&store, &keyspace, &identity, timing, || stop(&mut running)) => won,
            () = &mut shutdown => {
                stop(&mut running);
                return;
            }
        };
        match &running {
            Some((task, standing)) if won.continues && !task.is_finished() => {
                standing.send_replace(Standing::Leading(won.lease.clone()));
                tracing::info!("leadership regained with no other leader in between: going on");
            }
            _ => {
                stop(&mut running);
                let (standing, watcher) = watch::channel(Standing::Leading(won.lease.clone()));
                let records = JobRecords {
                    store: store.clone(),
                    keyspace: keyspace.clone(),
                    standing: Some(watcher),
                    versions: Arc::default(),
                };
                running = Some((tokio::spawn(duties(records)), standing));
            }
        }
        tokio::select! {
            e = won.lease.lost() => {
                tracing::warn!(error = %e, "leadership lease lost: suspended until it is known who leads");
                if let Some((_, standing)) = &running {
                    standing.send_replace(Standing::Suspended);
                }
            }
            () = &mut shutdown => {
                if let Some((task, standing)) = running.take() {
                    standing.send_replace(Standing::Deposed);
                    task.abort();
                }
                if let Ok(lease) = Arc::try_unwrap(won.lease) {
                    // Resigning lets a follower lead at once, not after the TTL.
                    let _ = lease.release().await;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use godwit_common::lease::MemoryStore;

    use super::*;

    const TIMING: LeaseTiming = LeaseTiming {
        ttl: Duration::from_secs(1),
    };

    /// Runs `lead` for `identity`, counting how often its duties start.
    fn contender(
        store: &Arc<dyn LeaseStore>,
        identity: &str,
        started: Arc<AtomicUsize>,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(lead(
            store.clone(),
            Keyspace::new("/t"),
            identity.to_owned(),
            TIMING,
            move |_records| {
                started.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>()
            },
            async {
                let _ = stopped.await;
            },
        ));
        (task, stop)
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..100 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what} did not happen within 5 s");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn one_leads_and_the_other_takes_over_when_it_dies_or_resigns() {
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
        let (a_started, b_started, c_started) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (a, _a_stop) = contender(&store, "a", a_started.clone());
        until("a leading", || a_started.load(Ordering::SeqCst) == 1).await;
        let (_b, b_stop) = contender(&store, "b", b_started.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(b_started.load(Ordering::SeqCst), 0, "two leaders at once");

        // a dies without resigning: b leads once a's lease ran out.
        a.abort();
        until("b leading after a's TTL", || {
            b_started.load(Ordering::SeqCst) == 1
        })
        .await;
        let term: Term = state::load(store.as_ref(), &Keyspace::new("/t").leader_term())
            .await
            .expect("store")
            .expect("term");
        assert_eq!((term.term, term.identity.as_str()), (2, "b"));

        // b resigns on shutdown: c leads without waiting for a TTL.
        let (_c, _c_stop) = contender(&store, "c", c_started.clone());
        let _ = b_stop.send(());
        until("c leading after b resigned", || {
            c_started.load(Ordering::SeqCst) == 1
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_deposed_leader_cannot_write_a_job_record() {
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
        let keyspace = Keyspace::new("/t");
        let (standing, watcher) = watch::channel(Standing::Deposed);
        let records = JobRecords {
            store: store.clone(),
            keyspace: keyspace.clone(),
            standing: Some(watcher),
            versions: Arc::default(),
        };
        let spec = crate::test_support::spec("j1", "acme");
        let record = JobRecord::submitted(spec, 0);
        assert!(matches!(
            records.save(&record).await,
            Err(Error::LeaseLost { .. })
        ));
        drop(standing);
        assert_eq!(
            store
                .get(&keyspace.job_record(&record.spec.job))
                .await
                .expect("get"),
            None
        );
    }
}
