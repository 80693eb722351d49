//! Per-job data keys, unwrapped once per job and data key and kept in
//! memory only. The wrapped key is read again for every use, so a job whose
//! key was replaced or shredded is never sealed with a stale one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use godwit_common::ids::JobId;
use godwit_common::keys::DataKey;
use godwit_common::sealed::SealedStaging;
use godwit_common::spec::JobSpec;
use godwit_common::staging::Staging;
use godwit_common::{Error, Result};

/// A job and the id of its data key.
type CachedKey = (JobId, String);

#[derive(Default, Clone)]
pub struct KeyCache {
    keys: Arc<Mutex<HashMap<CachedKey, Arc<DataKey>>>>,
}

impl KeyCache {
    /// The job's staging area with its current data key.
    pub async fn sealed(&self, spec: &JobSpec) -> Result<SealedStaging> {
        let staging = Staging::open(&spec.staging)?;
        let wrapped = SealedStaging::wrapped(&staging, &spec.job).await?;
        let cached = (spec.job.clone(), wrapped.key_id.clone());
        if let Some(key) = self.keys.lock().map_err(|_| poisoned())?.get(&cached) {
            return Ok(SealedStaging::with_key(
                staging,
                spec.job.clone(),
                key.clone(),
                wrapped.key_id,
            ));
        }
        let sealed = SealedStaging::unwrap(spec, staging, &wrapped)?;
        self.keys
            .lock()
            .map_err(|_| poisoned())?
            .insert(cached, sealed.shared_key());
        Ok(sealed)
    }
}

fn poisoned() -> Error {
    Error::Key("key cache poisoned by a panic".into())
}
