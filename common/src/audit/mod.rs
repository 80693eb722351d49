//! The tamper-evident audit trail of a job: every action on it, as a
//! hash-chained record authenticated with the job's audit key. Records are
//! stored one object each in the job's staging area (`audit/NNNNNNNN.json`);
//! the head of the chain (last sequence number and hash) is anchored in the
//! target's `godwit.audit_head`, so whoever can write to one store cannot
//! also rewrite the other. The audit key is random per job and stored only
//! wrapped by the customer's key-encryption key (`audit-key.pb`): rotation
//! re-wraps it, and shredding the data key leaves the trail verifiable.
//! Never records a row value or a secret.

pub(crate) mod chain;

use std::sync::Arc;

use aws_lc_rs::hmac;
use object_store::path::Path as ObjectPath;

pub use chain::{AuditEvent, AuditRecord, Broken, Head};

use crate::ids::JobId;
use crate::keyring::CustomerKeys;
use crate::keys::DataKey;
use crate::pg::{self, Side};
use crate::spec::JobSpec;
use crate::staging::Staging;
use crate::state::now_unix_ms;
use crate::{Error, Result};

const HEAD_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS godwit;
CREATE TABLE IF NOT EXISTS godwit.audit_head (
    job_id text   PRIMARY KEY,
    seq    bigint NOT NULL,
    hash   text   NOT NULL
);
";

/// A job's audit trail, open for appending.
#[derive(Clone)]
pub struct AuditLog {
    spec: Arc<JobSpec>,
    staging: Staging,
    key: Arc<hmac::Key>,
}

impl AuditLog {
    /// Opens the trail of `spec`'s job, creating its audit key on first use.
    pub async fn open(spec: &JobSpec) -> Result<Self> {
        let staging = Staging::open(&spec.staging)?;
        let keys = CustomerKeys::for_spec(spec)?;
        let path = key_path(&staging, &spec.job);
        let key = match staging.get_key_object(&path).await? {
            Some(wrapped) => keys.unwrap(&spec.job, &wrapped)?,
            None => {
                // Another process may create it at the same moment: the
                // key that landed is the one every record is sealed with.
                let wrapped = keys.wrap(&spec.job, &DataKey::generate()?)?;
                let kept = staging.put_key_object_if_absent(&path, &wrapped).await?;
                keys.unwrap(&spec.job, &kept)?
            }
        };
        Ok(Self::with_key(spec, staging, &key))
    }

    /// The trail of `spec`'s job under an audit key already unwrapped (a
    /// rotation holds it while the spec still names the old keys).
    pub(crate) fn with_key(spec: &JobSpec, staging: Staging, key: &DataKey) -> Self {
        Self {
            spec: Arc::new(spec.clone()),
            staging,
            key: Arc::new(key.hmac_key()),
        }
    }

    /// Appends `events` in order. The target's head row is locked while the
    /// records are written, so concurrent writers (the coordinator, an
    /// operator's `godwit keys` command) extend one chain.
    pub async fn record(&self, events: Vec<AuditEvent>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let job = self.spec.job.as_str();
        let mut target = pg::connect(&self.spec.target, Side::Target).await?;
        target
            .batch_execute(HEAD_SQL)
            .await
            .map_err(|e| Error::postgres("cannot create the audit head table on the target", e))?;
        let tx = target
            .transaction()
            .await
            .map_err(|e| Error::postgres("cannot begin an audit append", e))?;
        tx.execute(
            "INSERT INTO godwit.audit_head (job_id, seq, hash) VALUES ($1, 0, $2) ON CONFLICT DO NOTHING",
            &[&job, &chain::GENESIS],
        )
        .await
        .map_err(|e| Error::postgres("cannot anchor the audit trail", e))?;
        let row = tx
            .query_one(
                "SELECT seq, hash FROM godwit.audit_head WHERE job_id = $1 FOR UPDATE",
                &[&job],
            )
            .await
            .map_err(|e| Error::postgres("cannot read the audit head", e))?;
        let mut head = Head {
            seq: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            hash: row.get(1),
        };
        for event in events {
            let record = chain::seal(
                &self.key,
                &head,
                now_unix_ms(),
                self.spec.customer.as_str(),
                job,
                event,
            );
            let bytes = chain::stored_bytes(&record);
            self.staging
                .put(
                    &record_path(&self.staging, &self.spec.job, record.seq),
                    bytes.clone(),
                )
                .await?;
            head = Head {
                seq: record.seq,
                hash: chain::link(&bytes),
            };
        }
        tx.execute(
            "UPDATE godwit.audit_head SET seq = $2, hash = $3 WHERE job_id = $1",
            &[
                &job,
                &i64::try_from(head.seq).unwrap_or(i64::MAX),
                &head.hash,
            ],
        )
        .await
        .map_err(|e| Error::postgres("cannot move the audit head", e))?;
        tx.commit()
            .await
            .map_err(|e| Error::postgres("cannot commit the audit head", e))
    }

    /// Records, logging instead of failing: an action already taken is not
    /// undone because its record could not be written, but it is said.
    pub async fn note(&self, events: Vec<AuditEvent>) {
        if let Err(e) = self.record(events).await {
            tracing::error!(job_id = %self.spec.job, error = %e, "audit record not written");
        }
    }

    /// The whole trail, checked: records in order when intact.
    pub async fn verify(&self) -> Result<std::result::Result<Vec<AuditRecord>, Broken>> {
        let stored = self
            .staging
            .list_objects(&records_root(&self.staging, &self.spec.job))
            .await?;
        let mut named = Vec::with_capacity(stored.len());
        for path in stored {
            let bytes = self.staging.get(&path).await?;
            named.push((self.staging.describe(&path), bytes.to_vec()));
        }
        let target = pg::connect(&self.spec.target, Side::Target).await?;
        let head = target
            .query_opt(
                "SELECT seq, hash FROM godwit.audit_head WHERE job_id = $1",
                &[&self.spec.job.as_str()],
            )
            .await
            .ok()
            .flatten()
            .map(|row| Head {
                seq: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                hash: row.get(1),
            })
            .unwrap_or_else(Head::empty);
        Ok(chain::verify(&self.key, &named, &head))
    }
}

/// Opens `spec`'s trail and records `events`, logging a failure.
pub async fn note(spec: &JobSpec, events: Vec<AuditEvent>) {
    match AuditLog::open(spec).await {
        Ok(log) => log.note(events).await,
        Err(e) => tracing::error!(job_id = %spec.job, error = %e, "audit trail not opened"),
    }
}

/// Where the job's wrapped audit key is staged (kept by a purge).
pub fn key_path(staging: &Staging, job: &JobId) -> ObjectPath {
    staging.audit_key_path(job)
}

/// Where the job's audit records are staged (kept by a purge).
pub fn records_root(staging: &Staging, job: &JobId) -> ObjectPath {
    staging.audit_records_root(job)
}

fn record_path(staging: &Staging, job: &JobId, seq: u64) -> ObjectPath {
    records_root(staging, job).join(format!("{seq:08}.json"))
}
