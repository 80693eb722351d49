//! The coordinator's side of per-customer throttling: it records the limits
//! a job spec or an operator sets, and keeps each customer's budget split
//! among the leases reading that customer's source right now, rebalancing
//! as leases come and go (a lease that expires with its dead worker drops
//! out, and its share returns to the others).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use godwit_common::ids::JobId;
use godwit_common::lease::LeaseStore;
use godwit_common::spec::{ByteSize, JobSpec};
use godwit_common::state::{self, JobRecord, Keyspace, VerifyRun, now_unix_ms};
use godwit_common::throttle::{Allocation, CustomerLimits, split};
use godwit_common::{Error, Result};

/// How often budgets are split again. Workers re-read their shares as
/// often, so a change reaches every reader within about half a second.
pub const ALLOCATE_INTERVAL: Duration = Duration::from_millis(200);

/// Records the limits of the spec's `throttle:` for its customer, if any.
pub async fn apply_spec_limits(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    spec: &JobSpec,
) -> Result<()> {
    let Some(throttle) = &spec.throttle else {
        return Ok(());
    };
    let limits = CustomerLimits {
        bytes_per_sec: throttle.bytes_per_sec.map(|b| b.0),
        max_connections: throttle.max_connections,
        set_by: format!("job {}", spec.job),
        set_at_unix_ms: now_unix_ms(),
    };
    set_limits(store, keyspace, spec.customer.as_str(), &limits).await
}

pub async fn set_limits(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    customer: &str,
    limits: &CustomerLimits,
) -> Result<()> {
    tracing::info!(
        customer,
        bytes_per_sec = ?limits.bytes_per_sec,
        max_connections = ?limits.max_connections,
        set_by = %limits.set_by,
        "customer limits set"
    );
    store
        .put(&keyspace.customer_limits(customer), state::encode(limits))
        .await
}

pub async fn limits(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    customer: &str,
) -> Result<Option<CustomerLimits>> {
    let key = keyspace.customer_limits(customer);
    store
        .get(&key)
        .await?
        .map(|bytes| state::decode(&key, &bytes))
        .transpose()
}

pub async fn allocation(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    customer: &str,
) -> Result<Option<Allocation>> {
    let key = keyspace.customer_allocation(customer);
    store
        .get(&key)
        .await?
        .map(|bytes| state::decode(&key, &bytes))
        .transpose()
}

/// Why a budget is what it is, for `godwit status` and the logs.
pub fn reason(limits: Option<&CustomerLimits>) -> String {
    match limits {
        Some(CustomerLimits {
            bytes_per_sec: Some(rate),
            set_by,
            ..
        }) => format!("limit {}/s set by {set_by}", ByteSize(*rate)),
        Some(CustomerLimits { set_by, .. }) => format!("no rate limit (set by {set_by})"),
        None => "no rate limit".to_owned(),
    }
}

pub struct Allocator {
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    /// What was last written per customer, to write only on change.
    written: BTreeMap<String, Allocation>,
}

impl Allocator {
    pub fn new(store: Arc<dyn LeaseStore>, keyspace: Keyspace) -> Self {
        Self {
            store,
            keyspace,
            written: BTreeMap::new(),
        }
    }

    /// Splits budgets every [`ALLOCATE_INTERVAL`] until `shutdown`.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.allocate().await {
                tracing::warn!(error = %e, "cannot split customer budgets; workers keep their shares");
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(ALLOCATE_INTERVAL) => {}
            }
        }
    }

    /// One round: every customer with limits or with work reading its source.
    pub async fn allocate(&mut self) -> Result<()> {
        let mut leases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, _) in self.store.list(&self.keyspace.active_prefix()).await? {
            let Some(job) = key.rsplit('/').next().and_then(|id| JobId::parse(id).ok()) else {
                continue;
            };
            let record_key = self.keyspace.job_record(&job);
            let Some(bytes) = self.store.get(&record_key).await? else {
                continue;
            };
            let record: JobRecord = state::decode(&record_key, &bytes)?;
            let held = self.lease_keys(&self.keyspace.leases_prefix(&job)).await?;
            leases
                .entry(record.spec.customer.to_string())
                .or_default()
                .extend(held);
        }
        for (key, bytes) in self.store.list(&self.keyspace.verifying_prefix()).await? {
            let run: VerifyRun = state::decode(&key, &bytes)?;
            let held = self
                .lease_keys(&self.keyspace.verify_leases_prefix(&run.spec.job))
                .await?;
            leases
                .entry(run.spec.customer.to_string())
                .or_default()
                .extend(held);
        }
        let prefix = self.keyspace.customers_prefix();
        for (key, _) in self.store.list(&prefix).await? {
            if let Some(customer) = key
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix("/limits"))
            {
                leases.entry(customer.to_owned()).or_default();
            }
        }
        for (customer, held) in leases {
            let limits = limits(self.store.as_ref(), &self.keyspace, &customer).await?;
            let budget = limits.as_ref().and_then(|l| l.bytes_per_sec);
            let allocation = Allocation {
                bytes_per_sec: budget,
                shares: budget.map(|b| split(b, &held)).unwrap_or_default(),
                reason: reason(limits.as_ref()),
                decided_at_unix_ms: now_unix_ms(),
            };
            let unchanged = self.written.get(&customer).is_some_and(|last| {
                last.bytes_per_sec == allocation.bytes_per_sec
                    && last.shares == allocation.shares
                    && last.reason == allocation.reason
            });
            if unchanged {
                continue;
            }
            tracing::debug!(customer = %customer, leases = allocation.shares.len(), budget = ?budget, "customer budget split");
            self.store
                .put(
                    &self.keyspace.customer_allocation(&customer),
                    state::encode(&allocation),
                )
                .await?;
            self.written.insert(customer, allocation);
        }
        Ok(())
    }

    async fn lease_keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .store
            .list(prefix)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }
}

/// Pauses or resumes reading for a job: its partitions are handed back
/// after their current chunk and not taken again until it resumes.
pub async fn set_paused(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    job: &JobId,
    paused: bool,
) -> Result<()> {
    let key = keyspace.job_paused(job);
    if paused {
        store
            .put(&key, now_unix_ms().to_string().into_bytes())
            .await
    } else {
        store.delete(&key).await
    }
}

pub async fn is_paused(store: &dyn LeaseStore, keyspace: &Keyspace, job: &JobId) -> Result<bool> {
    Ok(store.get(&keyspace.job_paused(job)).await?.is_some())
}

/// Guards against a nonsensical live change.
pub fn check_limits(bytes_per_sec: Option<u64>, max_connections: Option<u32>) -> Result<()> {
    let spec = godwit_common::throttle::ThrottleSpec {
        bytes_per_sec: bytes_per_sec.map(ByteSize),
        max_connections,
    };
    match spec.problem() {
        Some(problem) => Err(Error::Spec(problem.replace("`throttle.", "`"))),
        None => Ok(()),
    }
}
