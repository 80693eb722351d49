//! Per-job data keys, unwrapped once per job and data key and kept in
//! memory only. The wrapped key is read again for every use, so a job whose
//! key was replaced or shredded is never sealed with a stale one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use godwit_common::ids::JobId;
use godwit_common::keyring::CustomerKeys;
use godwit_common::keys::DataKey;
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
    pub async fn data_key(&self, spec: &JobSpec, staging: &Staging) -> Result<Arc<DataKey>> {
        let wrapped = staging.get_wrapped_key(&spec.job).await?.ok_or_else(|| {
            Error::Key(format!(
                "job {} has no data key in staging {}: it was never planned there, or its key was shredded",
                spec.job,
                staging.url()
            ))
        })?;
        let cached = (spec.job.clone(), wrapped.key_id.clone());
        if let Some(key) = self.keys.lock().map_err(|_| poisoned())?.get(&cached) {
            return Ok(key.clone());
        }
        let key = Arc::new(CustomerKeys::for_spec(spec)?.unwrap(&spec.job, &wrapped)?);
        self.keys
            .lock()
            .map_err(|_| poisoned())?
            .insert(cached, key.clone());
        Ok(key)
    }
}

fn poisoned() -> Error {
    Error::Key("key cache poisoned by a panic".into())
}
