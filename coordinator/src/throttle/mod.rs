//! The coordinator's side of per-customer throttling: it records the limits
//! a job spec or an operator sets, and keeps each customer's budget split
//! among the leases reading that customer's source right now, rebalancing
//! as leases come and go (a lease that expires with its dead worker drops
//! out, and its share returns to the others).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use godwit_common::ids::JobId;
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::LeaseStore;
use godwit_common::pg::{self, Side};
use godwit_common::spec::{ByteSize, JobSpec};
use godwit_common::state::{self, now_unix_ms};
use godwit_common::throttle::{
    AdaptiveSpec, Allocation, Backoff, CustomerLimits, Load, Probe, split,
};
use godwit_common::{Error, Result};

use holdings::{Applied, Holdings};

mod holdings;

/// How long to wait before watching again after the store refused.
const REWATCH_AFTER: Duration = Duration::from_millis(500);

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
        adaptive: throttle.adaptive.clone(),
        set_by: format!("job {}", spec.job),
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
    state::save(store, &keyspace.customer_limits(customer), limits).await
}

pub async fn limits(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    customer: &str,
) -> Result<Option<CustomerLimits>> {
    state::load(store, &keyspace.customer_limits(customer)).await
}

pub async fn allocation(
    store: &dyn LeaseStore,
    keyspace: &Keyspace,
    customer: &str,
) -> Result<Option<Allocation>> {
    state::load(store, &keyspace.customer_allocation(customer)).await
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

/// How often adaptive mode probes a customer's source.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe slower than this counts as a critical reading.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Adaptive mode's memory of one customer.
struct Adaptive {
    backoff: Backoff,
    decision: String,
    probed_at: Option<Instant>,
    session: Option<tokio_postgres::Client>,
}

pub struct Allocator {
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
    /// What was last written per customer, to write only on change.
    written: BTreeMap<String, Allocation>,
    adaptive: BTreeMap<String, Adaptive>,
    instruments: Instruments,
}

/// What a budget decision amounts to, as a metric attribute.
fn decision_kind(budget: Option<u64>, configured: Option<u64>) -> &'static str {
    match (budget, configured) {
        (None, _) => "unlimited",
        (Some(0), _) => "paused",
        (Some(b), Some(c)) if b < c => "backed_off",
        (Some(_), _) => "limited",
    }
}

/// Throttle decisions as metrics (exported when the process has a metrics
/// pipeline, see `godwit_common::telemetry::init_metrics`).
struct Instruments {
    /// Every change of a customer's budget or of the reason for it.
    decisions: opentelemetry::metrics::Counter<u64>,
    /// The budget in force, bytes per second (absent while unlimited).
    budget: opentelemetry::metrics::Gauge<u64>,
}

impl Instruments {
    fn new() -> Self {
        let meter = opentelemetry::global::meter("godwit");
        Self {
            decisions: meter
                .u64_counter("godwit.throttle.decisions")
                .with_description("Throttle decisions per customer, by kind")
                .build(),
            budget: meter
                .u64_gauge("godwit.throttle.budget")
                .with_unit("By/s")
                .with_description("A customer's read budget in force")
                .build(),
        }
    }

    fn record(&self, customer: &str, decision: &'static str, budget: Option<u64>) {
        let attributes = [
            opentelemetry::KeyValue::new("customer", customer.to_owned()),
            opentelemetry::KeyValue::new("decision", decision),
        ];
        self.decisions.add(1, &attributes);
        if let Some(budget) = budget {
            self.budget.record(budget, &attributes[..1]);
        }
    }
}

/// One look at the source: how long a catalog query takes, how many
/// sessions of others are running statements, and a replica's replay lag.
async fn probe(client: &tokio_postgres::Client, replica: Option<&str>) -> Result<Probe> {
    let started = Instant::now();
    let active: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND backend_type = 'client backend' AND application_name <> 'godwit' \
             AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot probe the source", e))?
        .get(0);
    let latency_ms = started.elapsed().as_millis() as u64;
    let replica_lag_ms = match replica {
        Some(name) => client
            .query_opt(
                "SELECT coalesce((extract(epoch FROM replay_lag) * 1000)::bigint, 0) \
                 FROM pg_stat_replication WHERE application_name = $1",
                &[&name],
            )
            .await
            .map_err(|e| Error::postgres("cannot read the replica's lag", e))?
            .map(|row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)),
        None => None,
    };
    Ok(Probe {
        latency_ms,
        active_sessions: u32::try_from(active).unwrap_or(u32::MAX),
        replica_lag_ms,
    })
}

impl Allocator {
    pub fn new(store: Arc<dyn LeaseStore>, keyspace: Keyspace) -> Self {
        Self {
            store,
            keyspace,
            written: BTreeMap::new(),
            adaptive: BTreeMap::new(),
            instruments: Instruments::new(),
        }
    }

    /// Probes `source` if it is time, and returns the back-off in force
    /// with the reason for it.
    async fn adapt(
        &mut self,
        customer: &str,
        spec: &AdaptiveSpec,
        source: Option<&str>,
    ) -> (Backoff, String) {
        let state = self
            .adaptive
            .entry(customer.to_owned())
            .or_insert_with(|| Adaptive {
                backoff: Backoff::FULL,
                decision: "source not probed yet".to_owned(),
                probed_at: None,
                session: None,
            });
        let due = state
            .probed_at
            .is_none_or(|at| at.elapsed() >= PROBE_INTERVAL);
        let Some(source) = source.filter(|_| due) else {
            return (state.backoff, state.decision.clone());
        };
        state.probed_at = Some(Instant::now());
        if state.session.as_ref().is_none_or(|s| s.is_closed()) {
            // Bounded like the probe: an unreachable source must not hold up
            // the budgets of every other customer.
            state.session = tokio::time::timeout(PROBE_TIMEOUT, pg::connect(source, Side::Source))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let load = match &state.session {
            Some(session) => {
                match tokio::time::timeout(PROBE_TIMEOUT, probe(session, spec.replica.as_deref()))
                    .await
                {
                    Ok(Ok(reading)) => spec.assess(&reading),
                    Ok(Err(e)) => Load::Critical(format!("probe failed: {e}")),
                    Err(_) => Load::Critical(format!(
                        "probe took longer than {} ms",
                        PROBE_TIMEOUT.as_millis()
                    )),
                }
            }
            None => Load::Critical("cannot connect to probe the source".to_owned()),
        };
        let (backoff, decision) = state.backoff.next(&load);
        if decision != state.decision {
            tracing::info!(customer, decision = %decision, level = backoff.0, "adaptive throttle decision");
        }
        state.backoff = backoff;
        state.decision = decision;
        (state.backoff, state.decision.clone())
    }

    /// Splits budgets whenever the leases reading a customer's source or
    /// its limits change, and on every probe of an adaptive customer,
    /// until `shutdown`. Reads the keyspace once, then follows one watch of
    /// it: nothing is polled.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let following = async {
                let watch = self
                    .store
                    .watch_prefix(&self.keyspace.root_prefix())
                    .await?;
                let holdings = Holdings::list(self.store.as_ref(), &self.keyspace).await?;
                Ok::<_, Error>((watch, holdings))
            };
            let (mut watch, mut holdings) = tokio::select! {
                () = &mut shutdown => return,
                started = following => match started {
                    Ok(started) => started,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read customer budgets; workers keep their shares");
                        tokio::select! {
                            () = &mut shutdown => return,
                            () = tokio::time::sleep(REWATCH_AFTER) => continue,
                        }
                    }
                },
            };
            let mut due = true;
            // A deadline, not a sleep started afresh at each change: changes
            // that split nothing (chunks' progress) must not put off probes.
            let mut next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
            loop {
                if due && let Err(e) = self.decide(&holdings).await {
                    tracing::warn!(error = %e, "cannot split customer budgets; workers keep their shares");
                }
                let probing = holdings.any_adaptive();
                let change = tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep_until(next_probe), if probing => {
                        next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
                        due = true;
                        continue;
                    }
                    change = watch.next() => change,
                };
                let mut changed = false;
                let mut relist = false;
                let mut next = change;
                // One split covers every change already queued.
                loop {
                    match next {
                        Some(Ok(change)) => {
                            match holdings
                                .apply(self.store.as_ref(), &self.keyspace, &change)
                                .await
                            {
                                Ok(Applied::Changed) => changed = true,
                                Ok(Applied::Unchanged) => {}
                                Ok(Applied::Missed) | Err(_) => relist = true,
                            }
                        }
                        Some(Err(_)) | None => relist = true,
                    }
                    if relist {
                        break;
                    }
                    match watch.next().now_or_never() {
                        Some(queued) => next = queued,
                        None => break,
                    }
                }
                if relist {
                    break;
                }
                // Nothing a split depends on: wait for the next change
                // without splitting again.
                due = changed;
            }
        }
    }

    /// One round from a fresh listing of the keyspace.
    pub async fn allocate(&mut self) -> Result<()> {
        let holdings = Holdings::list(self.store.as_ref(), &self.keyspace).await?;
        self.decide(&holdings).await
    }

    /// Splits every customer's budget over the leases it holds; writes only
    /// what changed.
    async fn decide(&mut self, holdings: &Holdings) -> Result<()> {
        let (leases, sources) = holdings.by_customer();
        // A customer with no work left needs no probe session on its source.
        self.adaptive
            .retain(|customer, _| sources.contains_key(customer));
        for (customer, held) in leases {
            let limits = holdings.limits(&customer).cloned();
            let configured = limits.as_ref().and_then(|l| l.bytes_per_sec);
            let mut why = reason(limits.as_ref());
            let budget = match limits.as_ref().and_then(|l| l.adaptive.clone()) {
                Some(spec) => {
                    let source = sources.get(&customer).map(String::as_str);
                    let (backoff, decision) = self.adapt(&customer, &spec, source).await;
                    why = format!("{why}; adaptive: {decision}");
                    match configured {
                        Some(rate) => Some(backoff.apply(rate)),
                        // Without a rate to scale, adaptive mode can only pause.
                        None => (backoff.0 == 0).then_some(0),
                    }
                }
                None => configured,
            };
            let allocation = Allocation {
                bytes_per_sec: budget,
                shares: budget.map(|b| split(b, &held)).unwrap_or_default(),
                reason: why,
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
            let decision = decision_kind(budget, configured);
            if self.written.get(&customer).is_none_or(|last| {
                decision_kind(last.bytes_per_sec, configured) != decision
                    || last.reason != allocation.reason
            }) {
                self.instruments.record(&customer, decision, budget);
            }
            self.store
                .put(
                    &self.keyspace.customer_allocation(&customer),
                    state::encode(&allocation)?,
                )
                .await?;
            self.written.insert(customer, allocation);
        }
        Ok(())
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

/// Guards against a nonsensical live change.
pub fn check_limits(
    bytes_per_sec: Option<u64>,
    max_connections: Option<u32>,
    adaptive: Option<AdaptiveSpec>,
) -> Result<()> {
    let spec = godwit_common::throttle::ThrottleSpec {
        bytes_per_sec: bytes_per_sec.map(ByteSize),
        max_connections,
        adaptive,
    };
    match spec.problem() {
        Some(problem) => Err(Error::Spec(problem.replace("`throttle.", "`"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use godwit_common::job::{JobRecord, Phase, SnapshotAt};
    use godwit_common::lease::{LeaseTiming, MemoryStore};
    use godwit_common::work::WorkKind;

    use super::*;

    fn record(job: &str, customer: &str) -> JobRecord {
        let mut record = JobRecord::submitted(crate::test_support::spec(job, customer), 0);
        record
            .advance(Phase::Copying(SnapshotAt {
                snapshot: "00000003-00000002-1".into(),
                consistent_lsn: "0/1".into(),
            }))
            .expect("planning → copying");
        record
    }

    /// Publishes a copying job and takes `leases` of its partitions.
    async fn copying(
        store: &Arc<dyn LeaseStore>,
        keyspace: &Keyspace,
        job: &str,
        customer: &str,
        leases: u32,
    ) -> Vec<godwit_common::lease::HeldLease> {
        let record = record(job, customer);
        let id = record.spec.job.clone();
        state::save(store.as_ref(), &keyspace.job_record(&id), &record)
            .await
            .expect("record");
        store
            .put(&keyspace.active(&id), Vec::new())
            .await
            .expect("active");
        let mut held = Vec::new();
        for n in 0..leases {
            let lease = godwit_common::lease::HeldLease::try_acquire(
                store.clone(),
                &keyspace.work_lease(&id, WorkKind::Copy, n),
                b"w".to_vec(),
                LeaseTiming::DEFAULT,
            )
            .await
            .expect("lease store")
            .expect("free lease");
            held.push(lease);
        }
        held
    }

    #[tokio::test]
    async fn budgets_are_per_customer_and_follow_the_leases() {
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
        let keyspace = Keyspace::new("/t");
        let mut acme = copying(&store, &keyspace, "a1", "acme", 2).await;
        acme.extend(copying(&store, &keyspace, "a2", "acme", 2).await);
        let _other = copying(&store, &keyspace, "b1", "beta", 3).await;
        let limits = CustomerLimits {
            bytes_per_sec: Some(20 << 20),
            max_connections: None,
            adaptive: None,
            set_by: "operator".into(),
        };
        set_limits(store.as_ref(), &keyspace, "acme", &limits)
            .await
            .expect("limits");
        let mut allocator = Allocator::new(store.clone(), keyspace.clone());
        allocator.allocate().await.expect("allocate");

        // Four leases over two jobs share acme's budget; beta is unlimited.
        let split = allocation(store.as_ref(), &keyspace, "acme")
            .await
            .expect("store")
            .expect("acme allocated");
        assert_eq!(split.shares.len(), 4);
        assert_eq!(split.shares.values().sum::<u64>(), 20 << 20);
        assert!(split.reason.contains("set by operator"), "{}", split.reason);
        let beta = allocation(store.as_ref(), &keyspace, "beta")
            .await
            .expect("store")
            .expect("beta allocated");
        assert_eq!(beta.bytes_per_sec, None);
        let b1 = JobId::parse("b1").expect("id");
        assert_eq!(
            beta.share(&keyspace.work_lease(&b1, WorkKind::Copy, 0)),
            None
        );

        // A worker's lease ends: its share returns to the others.
        let gone = acme.pop().expect("a lease");
        gone.release().await.expect("release");
        allocator.allocate().await.expect("allocate");
        let split = allocation(store.as_ref(), &keyspace, "acme")
            .await
            .expect("store")
            .expect("acme allocated");
        assert_eq!(split.shares.len(), 3);
        assert_eq!(split.shares.values().sum::<u64>(), 20 << 20);
        assert!(split.shares.values().all(|s| *s >= (20 << 20) / 3));
    }

    /// Waits until acme's split is one `wanted` accepts.
    async fn acme_split_until(
        store: &Arc<dyn LeaseStore>,
        keyspace: &Keyspace,
        wanted: impl Fn(&Allocation) -> bool,
    ) -> Allocation {
        let mut changes = store
            .watch_prefix(&keyspace.customer_allocation("acme"))
            .await
            .expect("watch");
        loop {
            let split = allocation(store.as_ref(), keyspace, "acme")
                .await
                .expect("store");
            if let Some(split) = split.filter(|s| wanted(s)) {
                return split;
            }
            changes.next().await.expect("a change").expect("watch");
        }
    }

    /// Waits until acme's split has `leases` shares.
    async fn acme_split_of(store: &Arc<dyn LeaseStore>, keyspace: &Keyspace, leases: usize) {
        acme_split_until(store, keyspace, |s| s.shares.len() == leases).await;
    }

    #[tokio::test]
    async fn the_running_allocator_follows_leases_and_limits_as_they_change() {
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
        let keyspace = Keyspace::new("/t");
        let limits = CustomerLimits {
            bytes_per_sec: Some(8 << 20),
            max_connections: None,
            adaptive: None,
            set_by: "operator".into(),
        };
        set_limits(store.as_ref(), &keyspace, "acme", &limits)
            .await
            .expect("limits");
        let mut held = copying(&store, &keyspace, "a1", "acme", 1).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let allocator = tokio::spawn(Allocator::new(store.clone(), keyspace.clone()).run(async {
            let _ = stopped.await;
        }));
        acme_split_of(&store, &keyspace, 1).await;

        // A job opened after the allocator started, and its leases, are
        // seen from the watch alone.
        held.extend(copying(&store, &keyspace, "a2", "acme", 2).await);
        acme_split_of(&store, &keyspace, 3).await;
        held.pop()
            .expect("a lease")
            .release()
            .await
            .expect("release");
        acme_split_of(&store, &keyspace, 2).await;

        // New limits split again at once.
        let lower = CustomerLimits {
            bytes_per_sec: Some(2 << 20),
            ..limits
        };
        set_limits(store.as_ref(), &keyspace, "acme", &lower)
            .await
            .expect("limits");
        let split = acme_split_until(&store, &keyspace, |s| s.bytes_per_sec == Some(2 << 20)).await;
        assert_eq!(split.shares.values().sum::<u64>(), 2 << 20);
        let _ = stop.send(());
        allocator.await.expect("allocator stops");
    }
}
