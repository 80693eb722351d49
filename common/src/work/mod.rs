//! The leased-work engine. Every unit of work a worker leases — a copy
//! partition, a verification range, a job's change stream — is a [`WorkItem`] kept at
//! `ROOT/jobs/JOB/work/KIND/items/NNNNNN`, leased through
//! `ROOT/jobs/JOB/work/KIND/leases/NNNNNN`. This module owns the one way
//! work is published, found, claimed, finished and awaited, and the one
//! rule for attempts and backoff. It never knows what a unit of work does,
//! and holds no SQL.

mod items;
mod metrics;
mod queue;

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::keyspace::WorkKind;
pub use items::{MappedRange, PartitionRecord, StageTimings, StreamItem, VerifyRange};
pub use queue::{Claimed, Settled, Stopped, await_done, claim, list, pending, publish};

use crate::Error;
use crate::state::{backoff, now_unix_ms};

/// Where a unit of work stands. Older records said `copied` or `compared`
/// for done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkState {
    Pending,
    #[serde(alias = "copied", alias = "compared")]
    Done,
    Failed,
}

/// The failed attempts at a unit of work, and when it may be tried again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    pub attempts: u32,
    pub error: Option<String>,
    /// After a retryable failure: not to be taken again before this time.
    #[serde(default)]
    pub retry_after_unix_ms: Option<u64>,
}

impl Attempts {
    pub fn backing_off(&self, now_unix_ms: u64) -> bool {
        self.retry_after_unix_ms.is_some_and(|at| at > now_unix_ms)
    }

    /// Counts a failed attempt and schedules the retry; returns whether to
    /// give up instead (the error cannot pass, or the attempts are spent).
    pub fn fail(&mut self, error: &Error, retry: &RetryPolicy) -> bool {
        self.attempts += 1;
        self.error = Some(error.to_string());
        if !error.is_retryable() || self.attempts >= retry.max_attempts {
            self.retry_after_unix_ms = None;
            return true;
        }
        let wait = backoff(self.attempts, retry.base, retry.cap, rand::random::<f64>());
        self.retry_after_unix_ms = Some(now_unix_ms() + wait.as_millis() as u64);
        false
    }
}

/// How failed work is retried: full-jitter backoff doubling from `base`
/// up to `cap`, at most `max_attempts` tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(30),
        max_attempts: 5,
    };
}

/// A unit of leased work, as stored.
pub trait WorkItem: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    const KIND: WorkKind;
    /// Its number within the job and kind.
    fn number(&self) -> u32;
    fn state(&self) -> WorkState;
    fn set_state(&mut self, state: WorkState);
    fn attempts(&self) -> &Attempts;
    fn attempts_mut(&mut self) -> &mut Attempts;
    /// How errors name it: `table public.orders partition 3`.
    fn describe(&self) -> String;
    /// Items of a wave are open only once every item of the lower waves
    /// is done (rows that others' keys reference load first).
    fn wave(&self) -> u32 {
        0
    }
}

#[cfg(test)]
mod tests;
