//! Per-customer throttling as kept in the lease store: the limits an
//! operator set for a customer, and the coordinator's allocation of that
//! customer's read budget among the leases reading its source right now.
//! Workers only follow allocations; the coordinator alone decides them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::ByteSize;

/// Source sessions the coordinator itself keeps open during a job (the one
/// holding the exported snapshot); workers share the rest of the cap.
pub const COORDINATOR_SESSIONS: u32 = 1;

/// `throttle:` in a job spec: the customer's limits as the job starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSpec {
    /// Most bytes per second read from the customer's source, over all of
    /// godwit's sessions together.
    pub bytes_per_sec: Option<ByteSize>,
    /// Most sessions godwit holds on the customer's source at once.
    pub max_connections: Option<u32>,
}

impl ThrottleSpec {
    /// What is wrong with the limits, as a sentence naming the field.
    pub fn problem(&self) -> Option<String> {
        if self.bytes_per_sec.is_some_and(|b| b.0 < MIN_BYTES_PER_SEC) {
            return Some(format!(
                "`throttle.bytes_per_sec` is below the minimum of {}",
                ByteSize(MIN_BYTES_PER_SEC)
            ));
        }
        if self
            .bytes_per_sec
            .is_some_and(|b| b.0 > u64::from(u32::MAX))
        {
            return Some(format!(
                "`throttle.bytes_per_sec` is above the maximum of {}; leave it out for no limit",
                ByteSize(u64::from(u32::MAX))
            ));
        }
        if self
            .max_connections
            .is_some_and(|c| c <= COORDINATOR_SESSIONS)
        {
            return Some(format!(
                "`throttle.max_connections` must be at least {}: one session holds the job's snapshot, \
                 at least one more reads",
                COORDINATOR_SESSIONS + 1
            ));
        }
        None
    }
}

/// Below this a chunk would take minutes to read and leases would need
/// very long TTLs to be safe.
pub const MIN_BYTES_PER_SEC: u64 = 64 * 1024;

/// The limits in force for a customer, and who set them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerLimits {
    pub bytes_per_sec: Option<u64>,
    pub max_connections: Option<u32>,
    /// `job <id>` when a job spec set them, `operator` for a live change.
    pub set_by: String,
    pub set_at_unix_ms: u64,
}

impl CustomerLimits {
    /// Sessions workers may hold on the source at once, if capped.
    pub fn worker_sessions(&self) -> Option<u32> {
        self.max_connections
            .map(|c| c.saturating_sub(COORDINATOR_SESSIONS).max(1))
    }
}

/// The coordinator's split of a customer's budget among the leases reading
/// its source. A lease missing from `shares` waits until it is included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The customer's budget; None: unlimited.
    pub bytes_per_sec: Option<u64>,
    /// Lease key → bytes per second for that lease.
    pub shares: BTreeMap<String, u64>,
    /// Why the budget is what it is (the last throttle decision).
    pub reason: String,
    pub decided_at_unix_ms: u64,
}

impl Allocation {
    /// What the holder of `lease` may read per second: None without limit,
    /// Some(0) to wait.
    pub fn share(&self, lease: &str) -> Option<u64> {
        self.bytes_per_sec?;
        Some(self.shares.get(lease).copied().unwrap_or(0))
    }
}

/// Splits `budget` bytes per second equally among `leases`; the shares sum
/// to the budget exactly (the remainder goes one byte each to the first).
pub fn split(budget: u64, leases: &[String]) -> BTreeMap<String, u64> {
    let mut sorted: Vec<&String> = leases.iter().collect();
    sorted.sort();
    sorted.dedup();
    let n = sorted.len() as u64;
    if n == 0 {
        return BTreeMap::new();
    }
    let (each, remainder) = (budget / n, budget % n);
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, lease)| (lease.clone(), each + u64::from((i as u64) < remainder)))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_budget_is_shared_equally() {
        let leases: Vec<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
        let shares = split(10, &leases);
        assert_eq!(shares.values().copied().collect::<Vec<_>>(), [4, 3, 3]);
        assert!(split(10, &[]).is_empty());
    }

    #[test]
    fn a_lease_without_a_share_waits_and_no_budget_means_no_limit() {
        let allocation = Allocation {
            bytes_per_sec: Some(100),
            shares: split(100, &["x".to_owned()]),
            reason: String::new(),
            decided_at_unix_ms: 0,
        };
        assert_eq!(allocation.share("x"), Some(100));
        assert_eq!(allocation.share("new"), Some(0));
        let unlimited = Allocation {
            bytes_per_sec: None,
            ..allocation
        };
        assert_eq!(unlimited.share("x"), None);
    }

    #[test]
    fn limits_below_the_floor_are_refused_with_the_field_named() {
        let low = ThrottleSpec {
            bytes_per_sec: Some(ByteSize(1000)),
            max_connections: None,
        };
        assert!(low.problem().is_some_and(|p| p.contains("bytes_per_sec")));
        let one = ThrottleSpec {
            bytes_per_sec: None,
            max_connections: Some(1),
        };
        assert!(one.problem().is_some_and(|p| p.contains("max_connections")));
        let fine = ThrottleSpec {
            bytes_per_sec: Some(ByteSize(20 << 20)),
            max_connections: Some(4),
        };
        assert_eq!(fine.problem(), None);
    }

    proptest! {
        #[test]
        fn shares_add_up_to_the_budget_and_differ_by_at_most_one(
            budget in 0u64..(1 << 40),
            leases in proptest::collection::vec("[a-z]{1,6}", 0..40),
        ) {
            let shares = split(budget, &leases);
            let distinct: std::collections::BTreeSet<&String> = leases.iter().collect();
            prop_assert_eq!(shares.len(), distinct.len());
            if !shares.is_empty() {
                prop_assert_eq!(shares.values().sum::<u64>(), budget);
                let (min, max) = (shares.values().min(), shares.values().max());
                prop_assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1));
            }
        }

        #[test]
        fn a_departed_lease_returns_its_share_to_the_others(
            budget in 1u64..(1 << 40),
            leases in proptest::collection::btree_set("[a-z]{1,6}", 2..20),
        ) {
            let all: Vec<String> = leases.into_iter().collect();
            let before = split(budget, &all);
            let remaining = &all[1..];
            let after = split(budget, remaining);
            prop_assert_eq!(after.values().sum::<u64>(), budget);
            for lease in remaining {
                prop_assert!(after[lease] >= before[lease]);
            }
        }
    }
}
