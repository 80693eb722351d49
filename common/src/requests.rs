//! Requests about a job's change stream, carried as records in the
//! keyspace: whoever needs something writes the request, and whoever serves
//! it (wherever it runs) answers it there. A request is attached to its
//! requester's lease, so it ends with the requester; what is held for a
//! request (a pin, a drained and paused stream) lasts exactly as long as
//! the request. Never reads or writes a database.
//!
//! ```text
//! ROOT/jobs/JOB/requests/pin-ID     a verification needs both sides pinned   any coordinator → the stream's worker
//! ROOT/jobs/JOB/requests/cutover    an operator asked for the cutover         any coordinator → the leader
//! ROOT/jobs/JOB/requests/drain      apply up to an LSN, then hold             the leader → the stream's worker
//! ROOT/jobs/JOB/requests/stop       the cutover succeeded: end the stream     the leader → the stream's worker
//! ROOT/jobs/JOB/answers/NAME        the answer                                whoever serves it
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::JobId;
use crate::job::CutoverRecord;
use crate::keyspace::Keyspace;
use crate::lease::{HeldLease, LeaseStore, LeaseTiming, Wakeups};
use crate::state::{self, PinnedSnapshots, now_unix_ms};
use crate::{Error, Result};

/// How long a verification waits for the stream to pin both sides.
const PIN_PATIENCE: Duration = Duration::from_secs(60);
/// How long a cutover request waits for its answer; the cutover itself is
/// bounded by its freeze deadline, the rest is the stream catching up.
const CUTOVER_PATIENCE: Duration = Duration::from_secs(30 * 60);
const ANSWER_FALLBACK: Duration = Duration::from_secs(1);

/// What a drain asks of the stream: apply every source transaction that
/// ends at or before `upto`, put the target's triggers and keys back, and
/// hold (apply nothing more) for as long as the request stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub upto: u64,
}

/// What the stream answers a drain with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DrainAnswer {
    /// Everything up to the request's position is on the target; the
    /// stream holds. `applied` is the ledger's position.
    Drained {
        applied: u64,
    },
    Refused(String),
}

/// What the stream answers a pin with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PinAnswer {
    Pinned(PinnedSnapshots),
    Refused(String),
}

/// What the stream answers a cutover with. Never the verification's
/// report itself: it names primary keys, which stay out of etcd; the
/// requester reads it sealed from staging.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CutoverAnswer {
    pub record: CutoverRecord,
    /// Whether the final verification matched, when the attempt got that far.
    pub matched: Option<bool>,
    /// Where the sealed report was stored, or why it was not.
    pub stored_at: std::result::Result<String, String>,
}

/// A request this process made, held open until dropped or ended.
pub struct Pending {
    lease: HeldLease,
    answer_key: String,
    store: Arc<dyn LeaseStore>,
}

impl Pending {
    /// Withdraws the request (the stream then lets go of what it held for
    /// it) and removes its answer.
    pub async fn end(self) {
        let _ = self.lease.release().await;
        let _ = self.store.delete(&self.answer_key).await;
    }
}

fn request_key(keyspace: &Keyspace, job: &JobId, name: &str) -> String {
    format!("{}requests/{name}", keyspace.job_prefix(job))
}

fn answer_key(keyspace: &Keyspace, job: &JobId, name: &str) -> String {
    format!("{}answers/{name}", keyspace.job_prefix(job))
}

/// What a request's record holds: who asked, and what for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RequestBody {
    requester: String,
    /// Tells one request from an earlier one of the same name, which its
    /// server may have answered already.
    #[serde(default)]
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    drain: Option<Drain>,
}

impl RequestBody {
    fn new(requester: &str, drain: Option<Drain>) -> Self {
        Self {
            requester: requester.to_owned(),
            id: format!("{:016x}", rand::random::<u64>()),
            drain,
        }
    }
}

/// Writes the request `name` on a lease of its own; a conflict when one
/// of that name is open already.
async fn open_request(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    job: &JobId,
    name: &str,
    body: &RequestBody,
) -> Result<HeldLease> {
    HeldLease::try_acquire(
        store.clone(),
        &request_key(keyspace, job, name),
        state::encode(body)?,
        LeaseTiming::DEFAULT,
    )
    .await?
    .ok_or_else(|| Error::Conflict(format!("a {name} of job {job} is already running")))
}

async fn ask<T: for<'de> Deserialize<'de>>(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    job: &JobId,
    name: &str,
    body: RequestBody,
    patience: Duration,
) -> Result<(T, Pending)> {
    let answer_key = answer_key(keyspace, job, name);
    // An answer left from an earlier request of the same name is not this one's.
    store.delete(&answer_key).await?;
    let mut wakeups = Wakeups::open(store.clone(), &answer_key, ANSWER_FALLBACK).await;
    let lease = open_request(store, keyspace, job, name, &body).await?;
    let pending = Pending {
        lease,
        answer_key: answer_key.clone(),
        store: store.clone(),
    };
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(answer) = state::load::<T>(store.as_ref(), &answer_key).await? {
            return Ok((answer, pending));
        }
        if tokio::time::Instant::now() >= deadline {
            pending.end().await;
            return Err(Error::Unreachable(format!(
                "job {job} did not answer a {name} request within {patience:?}: is its change \
                 stream running on a worker, and does a coordinator lead (godwit status {job})?"
            )));
        }
        wakeups.wait().await;
    }
}

/// Asks the job's stream to pin both sides for a verification; the pin
/// holds until the returned request is ended.
pub async fn pin(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    job: &JobId,
    requester: &str,
) -> Result<(PinnedSnapshots, Pending)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("pin-{}-{}-{n}", now_unix_ms(), std::process::id());
    let body = RequestBody::new(requester, None);
    let (answer, pending) =
        ask::<PinAnswer>(store, keyspace, job, &name, body, PIN_PATIENCE).await?;
    match answer {
        PinAnswer::Pinned(snapshots) => Ok((snapshots, pending)),
        PinAnswer::Refused(reason) => {
            pending.end().await;
            Err(Error::Precondition(format!(
                "cannot pin job {job}'s source and target: {reason}"
            )))
        }
    }
}

/// Asks the job's leader to cut over; returns when it succeeded or rolled back.
pub async fn cutover(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    job: &JobId,
    requester: &str,
) -> Result<CutoverAnswer> {
    let body = RequestBody::new(requester, None);
    let (answer, pending) =
        ask::<CutoverAnswer>(store, keyspace, job, "cutover", body, CUTOVER_PATIENCE).await?;
    pending.end().await;
    Ok(answer)
}

/// Asks the job's stream to apply everything up to `upto` and hold; the
/// stream holds until the returned request is ended (it then streams on)
/// or a stop is asked.
pub async fn drain(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    job: &JobId,
    requester: &str,
    upto: u64,
    patience: Duration,
) -> Result<(u64, Pending)> {
    let body = RequestBody::new(requester, Some(Drain { upto }));
    let (answer, pending) =
        ask::<DrainAnswer>(store, keyspace, job, "drain", body, patience).await?;
    match answer {
        DrainAnswer::Drained { applied } => Ok((applied, pending)),
        DrainAnswer::Refused(reason) => {
            pending.end().await;
            Err(Error::Precondition(format!(
                "the change stream of job {job} could not drain: {reason}"
            )))
        }
    }
}

/// Tells the job's stream, drained and holding, that the cutover succeeded:
/// it ends, its work item done. The request stays until the caller sees
/// the item done and ends it.
pub async fn stop(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    job: &JobId,
    requester: &str,
) -> Result<Pending> {
    let body = RequestBody::new(requester, None);
    let lease = open_request(store, keyspace, job, "stop", &body).await?;
    Ok(Pending {
        lease,
        answer_key: answer_key(keyspace, job, "stop"),
        store: store.clone(),
    })
}

/// Removes a request of this process whose `Pending` was lost (its wait
/// was cut short): without it the request would last until its lease ran out.
pub async fn withdraw(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    job: &JobId,
    name: &str,
) -> Result<()> {
    store.delete(&request_key(keyspace, job, name)).await?;
    store.delete(&answer_key(keyspace, job, name)).await
}

/// A request as the one serving it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Pin(String),
    /// A cutover, with its request's id.
    Cutover(String),
    Drain(Drain),
    Stop,
}

impl Incoming {
    /// The request's name, which its answer is stored under.
    pub fn name(&self) -> String {
        match self {
            Incoming::Pin(name) => name.clone(),
            Incoming::Cutover(_) => "cutover".into(),
            Incoming::Drain(_) => "drain".into(),
            Incoming::Stop => "stop".into(),
        }
    }
}

/// The stream's side: the requests open for its job.
pub struct Inbox {
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    job: JobId,
    wakeups: Wakeups,
}

impl Inbox {
    pub async fn open(store: Arc<dyn LeaseStore>, keyspace: Keyspace, job: JobId) -> Self {
        let prefix = format!("{}requests/", keyspace.job_prefix(&job));
        let wakeups = Wakeups::open(store.clone(), &prefix, Duration::from_secs(2)).await;
        Self {
            store,
            keyspace,
            job,
            wakeups,
        }
    }

    /// Resolves when a request may have arrived or left.
    pub async fn changed(&mut self) {
        self.wakeups.wait().await;
    }

    /// The requests open now, and removes answers nobody waits for.
    pub async fn open_requests(&self) -> Result<Vec<Incoming>> {
        let job_prefix = self.keyspace.job_prefix(&self.job);
        let requests = self.store.list(&format!("{job_prefix}requests/")).await?;
        let mut names = Vec::with_capacity(requests.len());
        let (mut drain, mut cutover) = (None, String::new());
        for (key, value) in &requests {
            let Some(name) = key.rsplit('/').next() else {
                continue;
            };
            match name {
                "drain" => drain = state::decode::<RequestBody>(key, value)?.drain,
                "cutover" => cutover = state::decode::<RequestBody>(key, value)?.id,
                _ => {}
            }
            names.push(name.to_owned());
        }
        for answer in
            state::keys_under(self.store.as_ref(), &format!("{job_prefix}answers/")).await?
        {
            let name = answer.rsplit('/').next().unwrap_or_default();
            if !names.iter().any(|n| n == name) {
                let _ = self.store.delete(&answer).await;
            }
        }
        Ok(names
            .into_iter()
            .filter_map(|name| match name.as_str() {
                "cutover" => Some(Incoming::Cutover(cutover.clone())),
                "drain" => drain.map(Incoming::Drain),
                "stop" => Some(Incoming::Stop),
                pin if pin.starts_with("pin-") => Some(Incoming::Pin(name)),
                _ => None,
            })
            .collect())
    }

    /// Whether the request `name` already has its answer.
    pub async fn answered(&self, name: &str) -> Result<bool> {
        Ok(self
            .store
            .get(&answer_key(&self.keyspace, &self.job, name))
            .await?
            .is_some())
    }

    pub async fn answer<T: Serialize>(&self, name: &str, answer: &T) -> Result<()> {
        state::save(
            self.store.as_ref(),
            &answer_key(&self.keyspace, &self.job, name),
            answer,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::MemoryStore;

    #[tokio::test]
    async fn a_drain_request_carries_its_position_and_ends_with_its_requester() {
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
        let keyspace = Keyspace::new("/t");
        let job = JobId::parse("j1").expect("job id");
        let inbox = Inbox::open(store.clone(), keyspace.clone(), job.clone()).await;
        let asking = {
            let (store, keyspace, job) = (store.clone(), keyspace.clone(), job.clone());
            tokio::spawn(async move {
                drain(
                    &store,
                    &keyspace,
                    &job,
                    "leader",
                    0x1_0000_0000,
                    Duration::from_secs(10),
                )
                .await
            })
        };
        let open = loop {
            let open = inbox.open_requests().await.expect("requests");
            if !open.is_empty() {
                break open;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            open,
            vec![Incoming::Drain(Drain {
                upto: 0x1_0000_0000
            })]
        );
        inbox
            .answer("drain", &DrainAnswer::Drained { applied: 7 })
            .await
            .expect("answer");
        let (applied, pending) = asking.await.expect("join").expect("drained");
        assert_eq!(applied, 7);
        pending.end().await;
        assert!(inbox.open_requests().await.expect("requests").is_empty());
        assert!(!inbox.answered("drain").await.expect("answered"));
    }
}
