//! Sign-off by a second identity for the actions the access policy holds
//! (cutover, cancel of a streaming job): the requester's call waits while
//! its request is visible in the job's status; another identity allowed to
//! do the same action releases it with `Approve`. The requester can never
//! approve its own request. Both identities go into the audit trail.

use std::time::Duration;

use godwit_common::Result;
use godwit_common::ids::JobId;
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::LeaseStore;
use godwit_common::state::{self, now_unix_ms};
use serde::{Deserialize, Serialize};

/// How long a request waits for its sign-off before it is dropped.
pub const APPROVAL_WAIT: Duration = Duration::from_secs(15 * 60);
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Request {
    requested_by: String,
    requested_at_unix_ms: u64,
    #[serde(default)]
    approved_by: Option<String>,
}

/// Why an approval could not be given.
#[derive(Debug)]
pub enum Refusal {
    NothingPending,
    OwnRequest,
}

/// Files `action` on `job` as awaiting sign-off by someone other than
/// `requester`, and waits for it. Returns the approver, or `None` when
/// `wait` ran out (the request is then withdrawn).
pub async fn request_and_wait(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    job: &JobId,
    action: &str,
    requester: &str,
    wait: Duration,
) -> Result<Option<String>> {
    let key = keyspace.approval(job, action);
    let request = Request {
        requested_by: requester.to_owned(),
        requested_at_unix_ms: now_unix_ms(),
        approved_by: None,
    };
    state::save(store, &key, &request).await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::time::sleep(POLL).await;
        let current: Option<Request> = state::load(store, &key).await?;
        match current {
            Some(Request {
                approved_by: Some(approver),
                ..
            }) => {
                store.delete(&key).await?;
                return Ok(Some(approver));
            }
            Some(_) if tokio::time::Instant::now() < deadline => {}
            _ => {
                store.delete(&key).await?;
                return Ok(None);
            }
        }
    }
}

/// Records `approver`'s sign-off of the pending `action`; returns who
/// requested it.
pub async fn approve(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    job: &JobId,
    action: &str,
    approver: &str,
) -> Result<std::result::Result<String, Refusal>> {
    let key = keyspace.approval(job, action);
    let Some(mut request): Option<Request> = state::load(store, &key).await? else {
        return Ok(Err(Refusal::NothingPending));
    };
    if request.requested_by == approver {
        return Ok(Err(Refusal::OwnRequest));
    }
    request.approved_by = Some(approver.to_owned());
    state::save(store, &key, &request).await?;
    Ok(Ok(request.requested_by))
}

/// The job's requests awaiting sign-off, as operators read them.
pub async fn pending(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    job: &JobId,
) -> Result<Vec<String>> {
    let mut waiting = Vec::new();
    for (key, bytes) in store.list(&keyspace.approvals_prefix(job)).await? {
        let request: Request = state::decode(&key, &bytes)?;
        if request.approved_by.is_none() {
            let action = key.rsplit('/').next().unwrap_or_default();
            waiting.push(format!("{action} requested by {}", request.requested_by));
        }
    }
    Ok(waiting)
}
