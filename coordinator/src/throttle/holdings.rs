//! What the allocator splits budgets over: the leases reading each
//! customer's source right now, the customers' limits and a source to probe
//! each. Listed once, then kept current from the lease store's changes, so
//! a round of splitting reads nothing: what the allocator costs etcd grows
//! with leases taken and released, not with time or the number of jobs.
//! Never decides a budget (see [`super::Allocator`]).

use std::collections::{BTreeMap, BTreeSet};

use godwit_common::Result;
use godwit_common::ids::JobId;
use godwit_common::job::JobRecord;
use godwit_common::keyspace::{Keyspace, WorkKind};
use godwit_common::lease::{Change, LeaseStore};
use godwit_common::state::{self, VerifyRun};
use godwit_common::throttle::CustomerLimits;

/// Whose source a job reads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reader {
    customer: String,
    source: String,
}

#[derive(Debug, Default)]
pub struct Holdings {
    /// Jobs open for leasing (their copy leases read the source).
    copying: BTreeMap<String, Reader>,
    /// Jobs being verified (their verify leases read the source).
    verifying: BTreeMap<String, Reader>,
    /// Held work leases by job and kind.
    leases: BTreeMap<(String, &'static str), BTreeSet<String>>,
    limits: BTreeMap<String, CustomerLimits>,
}

/// What a change did to the holdings.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Something a split depends on changed.
    Changed,
    Unchanged,
    /// Changes were missed: list again.
    Missed,
}

impl Holdings {
    /// Everything, listed now.
    pub async fn list(store: &dyn LeaseStore, keyspace: &Keyspace) -> Result<Self> {
        let mut holdings = Self::default();
        for (key, value) in store.list(&keyspace.active_prefix()).await? {
            holdings
                .apply(store, keyspace, &Change::Put { key, value })
                .await?;
        }
        for (key, value) in store.list(&keyspace.verifying_prefix()).await? {
            holdings
                .apply(store, keyspace, &Change::Put { key, value })
                .await?;
        }
        for (key, value) in store.list(&keyspace.customers_prefix()).await? {
            holdings
                .apply(store, keyspace, &Change::Put { key, value })
                .await?;
        }
        Ok(holdings)
    }

    /// Takes in one change of the keyspace. A job opening for work is read
    /// once (its record, for whose source it reads, and the leases already
    /// held on it).
    pub async fn apply(
        &mut self,
        store: &dyn LeaseStore,
        keyspace: &Keyspace,
        change: &Change,
    ) -> Result<Applied> {
        let (key, value) = match change {
            Change::Put { key, value } => (key.as_str(), Some(value.as_slice())),
            Change::Delete { key } => (key.as_str(), None),
            Change::Missed => return Ok(Applied::Missed),
        };
        let changed = if let Some((job, kind)) = keyspace.parse_work_lease(key) {
            let entry = (job.to_string(), kind.segment());
            match value {
                Some(_) => self.leases.entry(entry).or_default().insert(key.to_owned()),
                None => {
                    let held = self.leases.get_mut(&entry);
                    let removed = held.is_some_and(|held| held.remove(key));
                    // Ended jobs leave nothing behind.
                    if self.leases.get(&entry).is_some_and(BTreeSet::is_empty) {
                        self.leases.remove(&entry);
                    }
                    removed
                }
            }
        } else if let Some(job) = key.strip_prefix(&keyspace.active_prefix()) {
            match value {
                Some(_) => self.open(store, keyspace, job, WorkKind::Copy).await?,
                None => self.copying.remove(job).is_some(),
            }
        } else if let Some(job) = key.strip_prefix(&keyspace.verifying_prefix()) {
            match value {
                Some(bytes) => {
                    let run: VerifyRun = state::decode(key, bytes)?;
                    let reader = Reader {
                        customer: run.spec.customer.to_string(),
                        source: run.spec.source,
                    };
                    let known = self.verifying.insert(job.to_owned(), reader.clone());
                    self.list_leases(store, keyspace, job, WorkKind::Verify)
                        .await?;
                    known != Some(reader)
                }
                None => self.verifying.remove(job).is_some(),
            }
        } else if let Some(customer) = key
            .strip_prefix(&keyspace.customers_prefix())
            .and_then(|rest| rest.strip_suffix("/limits"))
        {
            match value {
                Some(bytes) => {
                    let limits = state::decode(key, bytes)?;
                    self.limits.insert(customer.to_owned(), limits);
                    true
                }
                None => self.limits.remove(customer).is_some(),
            }
        } else {
            false
        };
        Ok(if changed {
            Applied::Changed
        } else {
            Applied::Unchanged
        })
    }

    async fn open(
        &mut self,
        store: &dyn LeaseStore,
        keyspace: &Keyspace,
        job: &str,
        kind: WorkKind,
    ) -> Result<bool> {
        if self.copying.contains_key(job) {
            return Ok(false);
        }
        let Ok(id) = JobId::parse(job) else {
            return Ok(false);
        };
        let Some(record) = state::load::<JobRecord>(store, &keyspace.job_record(&id)).await? else {
            return Ok(false);
        };
        self.copying.insert(
            job.to_owned(),
            Reader {
                customer: record.spec.customer.to_string(),
                source: record.spec.source,
            },
        );
        self.list_leases(store, keyspace, job, kind).await?;
        Ok(true)
    }

    /// The leases already held on a job's work when it is first seen.
    async fn list_leases(
        &mut self,
        store: &dyn LeaseStore,
        keyspace: &Keyspace,
        job: &str,
        kind: WorkKind,
    ) -> Result<()> {
        let Ok(id) = JobId::parse(job) else {
            return Ok(());
        };
        let held = state::keys_under(store, &keyspace.work_leases_prefix(&id, kind)).await?;
        self.leases
            .insert((job.to_owned(), kind.segment()), held.into_iter().collect());
        Ok(())
    }

    /// Leases reading each customer's source (every customer with limits
    /// appears, with or without), and a source of each to probe.
    pub fn by_customer(&self) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, String>) {
        let mut leases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut sources = BTreeMap::new();
        let readers = [
            (&self.copying, WorkKind::Copy),
            (&self.verifying, WorkKind::Verify),
        ];
        for (jobs, kind) in readers {
            for (job, reader) in jobs {
                sources
                    .entry(reader.customer.clone())
                    .or_insert_with(|| reader.source.clone());
                let held = self.leases.get(&(job.clone(), kind.segment()));
                leases
                    .entry(reader.customer.clone())
                    .or_default()
                    .extend(held.into_iter().flatten().cloned());
            }
        }
        for customer in self.limits.keys() {
            leases.entry(customer.clone()).or_default();
        }
        (leases, sources)
    }

    pub fn limits(&self, customer: &str) -> Option<&CustomerLimits> {
        self.limits.get(customer)
    }

    /// Whether some customer's budget follows probes of its source, so
    /// splits are due on a clock as well as on changes.
    pub fn any_adaptive(&self) -> bool {
        self.limits.values().any(|l| l.adaptive.is_some())
    }
}
