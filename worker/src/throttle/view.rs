//! One worker's view of what its leases follow: every customer's budget
//! split and limits, and which jobs are paused. Two watches of the lease
//! store per worker keep it current, however many jobs and leases the
//! worker runs, so what it costs etcd does not grow with the work and
//! nothing is polled. It decides nothing: followers read it (see
//! [`super::follow`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use godwit_common::ids::JobId;
use godwit_common::keyspace::Keyspace;
use godwit_common::lease::{Change, LeaseStore};
use godwit_common::state;
use godwit_common::throttle::{Allocation, CustomerLimits};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long to wait before watching again after the store refused.
const REWATCH_AFTER: Duration = Duration::from_millis(500);

/// What the worker has seen of the limits. Until the first listing
/// (`ready`), followers keep the share they start with: none.
#[derive(Debug, Default)]
pub struct Seen {
    pub ready: bool,
    allocations: HashMap<String, Allocation>,
    limits: HashMap<String, CustomerLimits>,
    paused: HashSet<String>,
}

impl Seen {
    pub fn allocation(&self, customer: &str) -> Option<&Allocation> {
        self.allocations.get(customer)
    }

    pub fn limits(&self, customer: &str) -> Option<&CustomerLimits> {
        self.limits.get(customer)
    }

    pub fn paused(&self, job: &JobId) -> bool {
        self.paused.contains(job.as_str())
    }

    /// Takes in one change; says whether followers need to look again.
    /// A value that cannot be read leaves the last good one in place, as a
    /// failed read did when followers polled.
    fn apply(&mut self, prefixes: &Prefixes, change: &Change) -> bool {
        let (key, value) = match change {
            Change::Put { key, value } => (key.as_str(), Some(value.as_slice())),
            Change::Delete { key } => (key.as_str(), None),
            Change::Missed => return false,
        };
        if let Some(job) = key.strip_prefix(&prefixes.paused) {
            return match value {
                Some(_) => self.paused.insert(job.to_owned()),
                None => self.paused.remove(job),
            };
        }
        let Some(rest) = key.strip_prefix(&prefixes.customers) else {
            return false;
        };
        if let Some(customer) = rest.strip_suffix("/allocation") {
            return keep(&mut self.allocations, customer, key, value);
        }
        if let Some(customer) = rest.strip_suffix("/limits") {
            return keep(&mut self.limits, customer, key, value);
        }
        // Session slots come and go with every lease; they change no share.
        false
    }
}

fn keep<T: for<'de> serde::Deserialize<'de>>(
    map: &mut HashMap<String, T>,
    customer: &str,
    key: &str,
    value: Option<&[u8]>,
) -> bool {
    let Some(bytes) = value else {
        return map.remove(customer).is_some();
    };
    match state::decode(key, bytes) {
        Ok(decoded) => {
            map.insert(customer.to_owned(), decoded);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "unreadable throttle value; keeping the last one");
            false
        }
    }
}

#[derive(Debug, Clone)]
struct Prefixes {
    customers: String,
    paused: String,
}

/// The worker's view, kept current by a task of its own until dropped.
pub struct LimitsView {
    seen: watch::Receiver<Seen>,
    task: JoinHandle<()>,
}

impl Drop for LimitsView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LimitsView {
    /// Starts following; must be called within the runtime.
    pub fn start(store: Arc<dyn LeaseStore>, keyspace: &Keyspace) -> Self {
        let prefixes = Prefixes {
            customers: keyspace.customers_prefix(),
            paused: keyspace.paused_prefix(),
        };
        let (tx, seen) = watch::channel(Seen::default());
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = follow_store(store.as_ref(), &prefixes, &tx).await {
                    tracing::warn!(error = %e, "lost the watch of customers' limits; watching again");
                }
                tokio::time::sleep(REWATCH_AFTER).await;
            }
        });
        Self { seen, task }
    }

    pub fn subscribe(&self) -> watch::Receiver<Seen> {
        self.seen.clone()
    }
}

/// Watches both prefixes, lists them once the watches are in place (so
/// nothing in between is missed), then applies changes until the watches
/// end or report missed changes.
async fn follow_store(
    store: &dyn LeaseStore,
    prefixes: &Prefixes,
    tx: &watch::Sender<Seen>,
) -> godwit_common::Result<()> {
    let customers = store.watch_prefix(&prefixes.customers).await?;
    let paused = store.watch_prefix(&prefixes.paused).await?;
    let mut listed = Seen {
        ready: true,
        ..Seen::default()
    };
    for prefix in [&prefixes.customers, &prefixes.paused] {
        for (key, value) in store.list(prefix).await? {
            listed.apply(prefixes, &Change::Put { key, value });
        }
    }
    tx.send_replace(listed);
    let mut changes = futures::stream::select(customers, paused);
    while let Some(change) = changes.next().await {
        match change? {
            Change::Missed => return Ok(()),
            change => {
                tx.send_if_modified(|seen| seen.apply(prefixes, &change));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use godwit_common::lease::MemoryStore;

    use super::*;

    fn limits(rate: u64) -> CustomerLimits {
        CustomerLimits {
            bytes_per_sec: Some(rate),
            max_connections: None,
            adaptive: None,
            set_by: "test".into(),
        }
    }

    #[tokio::test]
    async fn the_view_lists_then_follows_changes() {
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryStore::new());
        let keyspace = Keyspace::new("/t");
        let job = JobId::parse("j1").expect("job id");
        // Set before the view starts: found by its listing.
        state::save(
            store.as_ref(),
            &keyspace.customer_limits("acme"),
            &limits(1 << 20),
        )
        .await
        .expect("limits");
        let view = LimitsView::start(store.clone(), &keyspace);
        let mut seen = view.subscribe();
        seen.wait_for(|s| s.ready).await.expect("listed");
        assert_eq!(
            seen.borrow().limits("acme").and_then(|l| l.bytes_per_sec),
            Some(1 << 20)
        );
        assert!(!seen.borrow().paused(&job));

        // Changed afterwards: followed.
        store
            .put(&keyspace.job_paused(&job), b"1".to_vec())
            .await
            .expect("pause");
        seen.wait_for(|s| s.paused(&job))
            .await
            .expect("paused seen");
        state::save(
            store.as_ref(),
            &keyspace.customer_limits("acme"),
            &limits(2 << 20),
        )
        .await
        .expect("limits");
        seen.wait_for(|s| s.limits("acme").and_then(|l| l.bytes_per_sec) == Some(2 << 20))
            .await
            .expect("new limits seen");
        store
            .delete(&keyspace.customer_limits("acme"))
            .await
            .expect("delete");
        store
            .delete(&keyspace.job_paused(&job))
            .await
            .expect("resume");
        seen.wait_for(|s| s.limits("acme").is_none() && !s.paused(&job))
            .await
            .expect("removals seen");
    }

    #[test]
    fn an_unreadable_value_keeps_the_last_good_one_and_slots_wake_nobody() {
        let keyspace = Keyspace::new("/t");
        let prefixes = Prefixes {
            customers: keyspace.customers_prefix(),
            paused: keyspace.paused_prefix(),
        };
        let mut seen = Seen::default();
        let key = keyspace.customer_limits("acme");
        let good = state::encode(&limits(7)).expect("encode");
        assert!(seen.apply(
            &prefixes,
            &Change::Put {
                key: key.clone(),
                value: good
            }
        ));
        let bad = Change::Put {
            key,
            value: b"not json".to_vec(),
        };
        assert!(!seen.apply(&prefixes, &bad));
        assert_eq!(seen.limits("acme").and_then(|l| l.bytes_per_sec), Some(7));
        let slot = Change::Put {
            key: keyspace.session_slot("acme", 0),
            value: b"w".to_vec(),
        };
        assert!(!seen.apply(&prefixes, &slot));
    }
}
