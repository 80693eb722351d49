//! Requests to a job's change stream, carried as records in the keyspace:
//! whichever coordinator serves `VerifyJob` or `Cutover` writes the
//! request, and the stream (wherever it runs) answers it there. A request
//! is attached to its requester's lease, so it ends with the requester; a
//! pin lasts exactly as long as its request. Never reads or writes a
//! database: the stream does that.
//!
//! ```text
//! ROOT/jobs/JOB/requests/pin-ID     a verification needs both sides pinned   requester (leased)
//! ROOT/jobs/JOB/requests/cutover    an operator asked for the cutover         requester (create-if-absent, leased)
//! ROOT/jobs/JOB/answers/KIND[-ID]   the stream's answer                       the stream
//! ```

use std::sync::Arc;
use std::time::Duration;

use godwit_common::ids::JobId;
use godwit_common::job::CutoverRecord;
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::{HeldLease, LeaseStore, LeaseTiming, Wakeups};
use godwit_common::state::{self, PinnedSnapshots, now_unix_ms};
use godwit_common::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::verification::Verified;

/// How long a verification waits for the stream to pin both sides.
const PIN_PATIENCE: Duration = Duration::from_secs(60);
/// How long a cutover request waits for its answer; the cutover itself is
/// bounded by its freeze deadline, the rest is the stream catching up.
const CUTOVER_PATIENCE: Duration = Duration::from_secs(30 * 60);
const ANSWER_FALLBACK: Duration = Duration::from_secs(1);

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

impl CutoverAnswer {
    pub fn new(record: CutoverRecord, verified: Option<Verified>) -> Self {
        let (matched, stored_at) = match verified {
            Some(v) => (
                Some(v.report.matched),
                v.stored_at.map_err(|e| e.to_string()),
            ),
            None => (None, Ok(String::new())),
        };
        Self {
            record,
            matched,
            stored_at,
        }
    }
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

async fn ask<T: for<'de> Deserialize<'de>>(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    job: &JobId,
    name: &str,
    requester: &str,
    patience: Duration,
) -> Result<(T, Pending)> {
    let answer_key = answer_key(keyspace, job, name);
    // An answer left from an earlier request of the same name is not this one's.
    store.delete(&answer_key).await?;
    let mut wakeups = Wakeups::open(store.clone(), &answer_key, ANSWER_FALLBACK).await;
    let Some(lease) = HeldLease::try_acquire(
        store.clone(),
        &request_key(keyspace, job, name),
        requester.as_bytes().to_vec(),
        LeaseTiming::DEFAULT,
    )
    .await?
    else {
        return Err(Error::Conflict(format!(
            "a {name} of job {job} is already running"
        )));
    };
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
                "the change stream of job {job} did not answer a {name} request within {patience:?}: \
                 is it streaming, and does a coordinator lead (godwit status {job})?"
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
    let (answer, pending) =
        ask::<PinAnswer>(store, keyspace, job, &name, requester, PIN_PATIENCE).await?;
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

/// Asks the job's stream to cut over; returns when it succeeded or rolled back.
pub async fn cutover(
    store: &Arc<dyn LeaseStore>,
    keyspace: &Keyspace,
    job: &JobId,
    requester: &str,
) -> Result<CutoverAnswer> {
    let (answer, pending) =
        ask::<CutoverAnswer>(store, keyspace, job, "cutover", requester, CUTOVER_PATIENCE).await?;
    pending.end().await;
    Ok(answer)
}

/// A request as the stream sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Pin(String),
    Cutover,
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
        let requests =
            state::keys_under(self.store.as_ref(), &format!("{job_prefix}requests/")).await?;
        let names: Vec<String> = requests
            .iter()
            .filter_map(|key| key.rsplit('/').next().map(str::to_owned))
            .collect();
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
                "cutover" => Some(Incoming::Cutover),
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
    use godwit_common::verify::{ContentLayer, Report, SchemaLayer, TableReport};

    use super::*;

    #[test]
    fn a_cutover_answer_carries_no_key_of_the_customer_s_rows() {
        let secret_key = "(4711,'leak@example.com')";
        let report = Report {
            job: "j1".into(),
            verified_at_unix_ms: 0,
            matched: false,
            schema: SchemaLayer::default(),
            tables: vec![TableReport {
                table: "public.customers".into(),
                source_rows: 2,
                target_rows: Some(1),
                counts_match: false,
                ranges: 1,
                content: ContentLayer {
                    missing: vec![secret_key.into()],
                    ..ContentLayer::default()
                },
            }],
            foreign_keys: Vec::new(),
            large_objects: None,
        };
        let answer = CutoverAnswer::new(
            CutoverRecord::default(),
            Some(Verified {
                report,
                stored_at: Ok("file:///staging/j1/reports/verification.gwc".into()),
            }),
        );
        let stored = String::from_utf8(state::encode(&answer).expect("encode")).expect("utf-8");
        assert!(!stored.contains("leak@example.com"), "{stored}");
        assert_eq!(answer.matched, Some(false));
    }
}
