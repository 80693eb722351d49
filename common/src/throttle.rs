//! Per-customer throttling as kept in the lease store: the limits an
//! operator set for a customer, and the coordinator's allocation of that
//! customer's read budget among the leases reading its source right now.
//! Workers only follow allocations; the coordinator alone decides them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::size::ByteSize;

/// Source sessions the coordinator itself keeps open during a job: the one
/// holding the exported snapshot, the one holding the tables' locks under
/// it, and the adaptive probe's when there is one. Workers share the rest
/// of the cap.
pub fn coordinator_sessions(adaptive: bool) -> u32 {
    2 + u32::from(adaptive)
}

/// `throttle:` in a job spec: the customer's limits as the job starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSpec {
    /// Most bytes per second read from the customer's source, over all of
    /// godwit's sessions together.
    pub bytes_per_sec: Option<ByteSize>,
    /// Most sessions godwit holds on the customer's source at once.
    pub max_connections: Option<u32>,
    /// Opt-in: back off or pause when the source shows stress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveSpec>,
}

/// Thresholds on what the coordinator probes on the source, every second.
/// Crossing a `max_` one halves the rate (down to a sixteenth); crossing a
/// `critical_` one pauses reading; once all are clear the rate climbs back
/// by an eighth per probe. In the manner of gh-ost's max-load and
/// critical-load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveSpec {
    /// Round trip of the probe query, in milliseconds.
    pub max_probe_latency_ms: Option<u64>,
    pub critical_probe_latency_ms: Option<u64>,
    /// Sessions of others running a statement on the source.
    pub max_active_sessions: Option<u32>,
    pub critical_active_sessions: Option<u32>,
    /// `application_name` of a replica in the source's `pg_stat_replication`.
    pub replica: Option<String>,
    pub max_replica_lag_ms: Option<u64>,
    pub critical_replica_lag_ms: Option<u64>,
}

impl AdaptiveSpec {
    /// Whether a threshold reads what other roles' sessions do (their
    /// states, a replica's lag): PostgreSQL shows that only to superusers
    /// and members of `pg_read_all_stats`.
    pub fn reads_others_activity(&self) -> bool {
        self.max_active_sessions.is_some()
            || self.critical_active_sessions.is_some()
            || self.max_replica_lag_ms.is_some()
            || self.critical_replica_lag_ms.is_some()
    }

    fn has_threshold(&self) -> bool {
        self.max_probe_latency_ms.is_some()
            || self.critical_probe_latency_ms.is_some()
            || self.max_active_sessions.is_some()
            || self.critical_active_sessions.is_some()
            || self.max_replica_lag_ms.is_some()
            || self.critical_replica_lag_ms.is_some()
    }
}

/// What one probe of the source saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub latency_ms: u64,
    pub active_sessions: u32,
    pub replica_lag_ms: Option<u64>,
}

/// How stressed the source is, with the reading that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Load {
    Clear,
    High(String),
    Critical(String),
}

/// A reading, its high and critical thresholds, and what it is.
type Threshold<'a> = (Option<u64>, Option<u64>, Option<u64>, &'a str);

impl AdaptiveSpec {
    /// The worst threshold `probe` crosses.
    pub fn assess(&self, probe: &Probe) -> Load {
        let checks: [Threshold<'_>; 3] = [
            (
                Some(probe.latency_ms),
                self.max_probe_latency_ms,
                self.critical_probe_latency_ms,
                "probe latency (ms)",
            ),
            (
                Some(u64::from(probe.active_sessions)),
                self.max_active_sessions.map(u64::from),
                self.critical_active_sessions.map(u64::from),
                "active sessions",
            ),
            (
                probe.replica_lag_ms,
                self.max_replica_lag_ms,
                self.critical_replica_lag_ms,
                "replica lag (ms)",
            ),
        ];
        let mut load = Load::Clear;
        for (value, max, critical, what) in checks {
            let Some(value) = value else { continue };
            if let Some(limit) = critical.filter(|limit| value >= *limit) {
                return Load::Critical(format!("{what} {value} ≥ critical {limit}"));
            }
            if let Some(limit) = max.filter(|limit| value >= *limit)
                && load == Load::Clear
            {
                load = Load::High(format!("{what} {value} ≥ max {limit}"));
            }
        }
        load
    }
}

/// The share of the configured rate adaptive mode allows, in sixteenths
/// (16 = full rate, 0 = paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff(pub u32);

impl Backoff {
    pub const FULL: Backoff = Backoff(16);

    /// The next step after a probe found `load`, and the decision's reason.
    pub fn next(self, load: &Load) -> (Backoff, String) {
        match load {
            Load::Critical(why) => (Backoff(0), format!("paused: {why}")),
            Load::High(why) => {
                let next = Backoff((self.0 / 2).max(1));
                (next, format!("backed off to {}/16: {why}", next.0))
            }
            Load::Clear if self.0 >= 16 => (Backoff::FULL, "source clear".to_owned()),
            Load::Clear => {
                let next = Backoff((self.0 + 2).min(16));
                (next, format!("recovering, {}/16: source clear", next.0))
            }
        }
    }

    /// `rate` scaled down by the back-off.
    pub fn apply(self, rate: u64) -> u64 {
        rate / 16 * u64::from(self.0) + rate % 16 * u64::from(self.0) / 16
    }
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
        let reserved = coordinator_sessions(self.adaptive.is_some());
        if self.max_connections.is_some_and(|c| c <= reserved) {
            return Some(format!(
                "`throttle.max_connections` must be at least {}: the coordinator keeps {reserved} \
                 (the job's snapshot and its table locks{}), at least one more reads",
                reserved + 1,
                if reserved > 1 {
                    " and the adaptive probe"
                } else {
                    ""
                }
            ));
        }
        if let Some(adaptive) = &self.adaptive {
            if !adaptive.has_threshold() {
                return Some(
                    "`throttle.adaptive` sets no threshold: give at least one of max_/critical_ \
                     probe_latency_ms, active_sessions or replica_lag_ms"
                        .into(),
                );
            }
            let lag =
                adaptive.max_replica_lag_ms.is_some() || adaptive.critical_replica_lag_ms.is_some();
            if lag != adaptive.replica.is_some() {
                return Some(
                    "`throttle.adaptive.replica` and a replica lag threshold go together: name the \
                     replica (its application_name) and its max_ or critical_replica_lag_ms"
                        .into(),
                );
            }
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
    #[serde(default)]
    pub adaptive: Option<AdaptiveSpec>,
    /// `job <id>` when a job spec set them, `operator` for a live change.
    pub set_by: String,
}

impl CustomerLimits {
    /// Sessions workers may hold on the source at once, if capped.
    pub fn worker_sessions(&self) -> Option<u32> {
        let reserved = coordinator_sessions(self.adaptive.is_some());
        self.max_connections
            .map(|c| c.saturating_sub(reserved).max(1))
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
            adaptive: None,
        };
        assert!(low.problem().is_some_and(|p| p.contains("bytes_per_sec")));
        let one = ThrottleSpec {
            bytes_per_sec: None,
            max_connections: Some(1),
            adaptive: None,
        };
        assert!(one.problem().is_some_and(|p| p.contains("max_connections")));
        let fine = ThrottleSpec {
            bytes_per_sec: Some(ByteSize(20 << 20)),
            max_connections: Some(4),
            adaptive: None,
        };
        assert_eq!(fine.problem(), None);
        let probing = ThrottleSpec {
            max_connections: Some(3),
            adaptive: Some(AdaptiveSpec {
                max_active_sessions: Some(10),
                ..AdaptiveSpec::default()
            }),
            ..fine.clone()
        };
        assert!(probing.problem().is_some_and(|p| p.contains("at least 4")));
        let no_threshold = ThrottleSpec {
            adaptive: Some(AdaptiveSpec::default()),
            ..fine.clone()
        };
        assert!(
            no_threshold
                .problem()
                .is_some_and(|p| p.contains("no threshold"))
        );
        let lag_without_replica = ThrottleSpec {
            adaptive: Some(AdaptiveSpec {
                max_replica_lag_ms: Some(1000),
                ..AdaptiveSpec::default()
            }),
            ..fine
        };
        assert!(
            lag_without_replica
                .problem()
                .is_some_and(|p| p.contains("replica"))
        );
    }

    fn thresholds() -> AdaptiveSpec {
        AdaptiveSpec {
            max_probe_latency_ms: Some(50),
            critical_probe_latency_ms: Some(500),
            max_active_sessions: Some(10),
            critical_active_sessions: Some(40),
            ..AdaptiveSpec::default()
        }
    }

    #[test]
    fn the_worst_crossed_threshold_decides() {
        let probe = |latency_ms, active_sessions| Probe {
            latency_ms,
            active_sessions,
            replica_lag_ms: None,
        };
        let spec = thresholds();
        assert_eq!(spec.assess(&probe(5, 3)), Load::Clear);
        assert!(matches!(spec.assess(&probe(60, 3)), Load::High(why) if why.contains("latency")));
        assert!(matches!(spec.assess(&probe(5, 12)), Load::High(why) if why.contains("sessions")));
        assert!(
            matches!(spec.assess(&probe(60, 45)), Load::Critical(why) if why.contains("sessions 45"))
        );
    }

    #[test]
    fn backoff_halves_pauses_and_climbs_back() {
        let high = Load::High("x".into());
        let (step, why) = Backoff::FULL.next(&high);
        assert_eq!(step, Backoff(8));
        assert!(why.starts_with("backed off to 8/16"));
        assert_eq!(Backoff(1).next(&high).0, Backoff(1));
        let (paused, why) = Backoff(8).next(&Load::Critical("y".into()));
        assert_eq!(paused, Backoff(0));
        assert!(why.starts_with("paused"));
        assert_eq!(paused.apply(1 << 20), 0);
        let mut level = paused;
        for _ in 0..8 {
            level = level.next(&Load::Clear).0;
        }
        assert_eq!(level, Backoff::FULL);
        assert_eq!(Backoff(8).apply(1000), 500);
        assert_eq!(Backoff::FULL.apply(u64::MAX), u64::MAX);
    }

    proptest! {
        #[test]
        fn backoff_never_exceeds_the_configured_rate(rate in 0u64..(1 << 40), level in 0u32..=16) {
            prop_assert!(Backoff(level).apply(rate) <= rate);
        }

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
