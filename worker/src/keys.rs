//! Per-job data keys, unwrapped once per job and kept in memory only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use godwit_common::ids::JobId;
use godwit_common::keys::DataKey;
use godwit_common::spec::JobSpec;
use godwit_common::staging::Staging;
use godwit_common::{Error, Result};

#[derive(Default, Clone)]
pub struct KeyCache {
    keys: Arc<Mutex<HashMap<JobId, Arc<DataKey>>>>,
}

impl KeyCache {
    pub async fn data_key(&self, spec: &JobSpec, staging: &Staging) -> Result<Arc<DataKey>> {
        if let Some(key) = self.keys.lock().map_err(|_| poisoned())?.get(&spec.job) {
            return Ok(key.clone());
        }
        let key = Arc::new(godwit_common::keys::job_data_key(spec, staging).await?);
        self.keys
            .lock()
            .map_err(|_| poisoned())?
            .insert(spec.job.clone(), key.clone());
        Ok(key)
    }
}

fn poisoned() -> Error {
    Error::Key("key cache poisoned by a panic".into())
}
