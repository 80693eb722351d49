//! A job's staging area opened with its data key: the one place the data
//! key is unwrapped (by the customer's key-encryption keys) and the one
//! handle through which a job's sealed objects are named and read. Never
//! writes a key anywhere but the job's own wrapped-key object.

use std::path::Path;
use std::sync::Arc;

use crate::ids::JobId;
use crate::keyring::CustomerKeys;
use godwit_proto::v1::WrappedKey;

use crate::keys::{DataKey, Kek};
use crate::spec::JobSpec;
use crate::staging::Staging;
use crate::state::Manifest;
use crate::{Error, Result};

#[derive(Clone)]
pub struct SealedStaging {
    staging: Staging,
    job: JobId,
    key: Arc<DataKey>,
    /// Which data key this is (its id in the wrapped-key object).
    key_id: String,
}

impl SealedStaging {
    /// The job's staging area with its data key; fails when the job has
    /// none there (never planned there, or shredded).
    pub async fn open(spec: &JobSpec) -> Result<Self> {
        let staging = Staging::open(&spec.staging)?;
        let wrapped = Self::wrapped(&staging, &spec.job).await?;
        Self::unwrap(spec, staging, &wrapped)
    }

    /// As `open`, creating the job's data key on its first plan.
    pub async fn open_or_create(spec: &JobSpec) -> Result<Self> {
        let staging = Staging::open(&spec.staging)?;
        match staging.get_wrapped_key(&spec.job).await? {
            Some(wrapped) => Self::unwrap(spec, staging, &wrapped),
            None => {
                let kek = CustomerKeys::for_spec(spec)?;
                let key = DataKey::generate()?;
                let wrapped = kek.wrap(&spec.job, &key)?;
                staging.put_wrapped_key(&spec.job, &wrapped).await?;
                Ok(Self {
                    staging,
                    job: spec.job.clone(),
                    key: Arc::new(key),
                    key_id: wrapped.key_id,
                })
            }
        }
    }

    /// Checks, without keeping it, that the job's data key (if it has one
    /// yet) opens with the customer's keys.
    pub async fn check_key(spec: &JobSpec) -> Result<()> {
        // The customer's keys must load even for a job that has no data key
        // yet: its first plan wraps one with them.
        let keys = CustomerKeys::for_spec(spec)?;
        let staging = Staging::open(&spec.staging)?;
        match staging.get_wrapped_key(&spec.job).await? {
            Some(wrapped) => keys.unwrap(&spec.job, &wrapped).map(|_| ()),
            None => Ok(()),
        }
    }

    /// The job's wrapped data key as staged now.
    pub async fn wrapped(staging: &Staging, job: &JobId) -> Result<WrappedKey> {
        staging.get_wrapped_key(job).await?.ok_or_else(|| {
            Error::Key(format!(
                "job {job} has no data key in staging {}: it was never planned there, or its key was shredded \
                 (its staged data can no longer be opened)",
                staging.url()
            ))
        })
    }

    /// Opens `wrapped` (the job's wrapped data key, read from `staging`)
    /// with the customer's keys.
    pub fn unwrap(spec: &JobSpec, staging: Staging, wrapped: &WrappedKey) -> Result<Self> {
        let key = CustomerKeys::for_spec(spec)?.unwrap(&spec.job, wrapped)?;
        Ok(Self {
            staging,
            job: spec.job.clone(),
            key: Arc::new(key),
            key_id: wrapped.key_id.clone(),
        })
    }

    /// With a key already unwrapped for this job (a cache of them).
    pub fn with_key(staging: Staging, job: JobId, key: Arc<DataKey>, key_id: String) -> Self {
        Self {
            staging,
            job,
            key,
            key_id,
        }
    }

    pub fn staging(&self) -> &Staging {
        &self.staging
    }

    pub fn job(&self) -> &JobId {
        &self.job
    }

    pub fn key(&self) -> &DataKey {
        &self.key
    }

    pub fn shared_key(&self) -> Arc<DataKey> {
        self.key.clone()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<()> {
        self.staging.put_manifest(manifest, &self.key).await
    }

    pub async fn get_manifest(&self) -> Result<Option<Manifest>> {
        self.staging.get_manifest(&self.job, &self.key).await
    }
}

/// What a rotation did.
#[derive(Debug)]
pub struct Rotated {
    pub from: String,
    pub to: String,
}

/// Re-wraps the job's data key under `to` (or the customer's current key),
/// without touching anything the data key sealed. The old key-encryption
/// key can be deleted afterwards.
pub async fn rotate(spec: &JobSpec, to: Option<&Path>) -> Result<Rotated> {
    let staging = Staging::open(&spec.staging)?;
    let keys = CustomerKeys::for_spec(spec)?;
    let wrapped = staging.get_wrapped_key(&spec.job).await?.ok_or_else(|| {
        Error::Key(format!(
            "job {} has no data key in staging {}: nothing to rotate",
            spec.job,
            staging.url()
        ))
    })?;
    let data_key = keys.unwrap(&spec.job, &wrapped)?;
    let new_kek = match to {
        Some(path) => Kek::from_file(path)?,
        None => Kek::from_file(&crate::keyring::current_key_file(spec)?)?,
    };
    let rewrapped = new_kek.wrap(&spec.job, &data_key)?;
    // Proven to open before it replaces the old one.
    new_kek.unwrap(&spec.job, &rewrapped)?;
    // The audit trail's key is wrapped the same way and must follow.
    let audit_path = staging.audit_key_path(&spec.job);
    let audit_key = match staging.get_key_object(&audit_path).await? {
        Some(audit_wrapped) => {
            let audit_key = keys.unwrap(&spec.job, &audit_wrapped)?;
            let audit_rewrapped = new_kek.wrap(&spec.job, &audit_key)?;
            new_kek.unwrap(&spec.job, &audit_rewrapped)?;
            staging
                .put_key_object(&audit_path, &audit_rewrapped)
                .await?;
            Some(audit_key)
        }
        None => None,
    };
    staging.put_wrapped_key(&spec.job, &rewrapped).await?;
    if let Some(audit_key) = audit_key {
        let event = crate::audit::AuditEvent::new("cli", "keys.rotate", "ok").object(format!(
            "data and audit keys re-wrapped from key-encryption key {} to {}",
            wrapped.kek_id,
            new_kek.id()
        ));
        crate::audit::AuditLog::with_key(spec, staging.clone(), &audit_key)
            .note(vec![event])
            .await;
    }
    Ok(Rotated {
        from: wrapped.kek_id,
        to: rewrapped.kek_id,
    })
}
