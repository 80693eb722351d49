//! The coordinator: serves the `godwit.v1` gRPC API and, while it leads
//! the deployment (one coordinator at a time, see `leadership`), plans jobs
//! (catalog → partitions), publishes them as leased work and drives each
//! job through its phases. Never copies rows nor applies changes: workers do.

pub mod access;
pub mod approval;
pub mod changes;
pub mod driver;
pub mod error;
mod final_check;
mod freeze;
mod job_metrics;
mod listener;
mod mapped;
mod narrowing;
mod phases;
pub mod planner;
pub mod preflight;
pub mod service;
mod staged;
pub mod status;
mod summary;
pub mod throttle;
mod timeline;
pub mod tls;
pub mod verification;

pub mod dispatch;
pub mod leadership;
pub mod retention;

pub use driver::{JobDriver, JobSummary, Prepared, preflight};
pub use error::JobError;
pub use verification::{Verified, Verifier};

/// What the coordinator's unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use godwit_common::spec::JobSpec;

    /// A valid spec of `job` for `customer`; nothing it names is reached.
    pub(crate) fn spec(job: &str, customer: &str) -> JobSpec {
        let yaml = format!(
            "job: {job}\ncustomer: {customer}\nsource: postgres://s/db\ntarget: postgres://t/db\n\
             staging: file:///tmp/s\nencryption: {{ key_file: /tmp/k }}"
        );
        JobSpec::from_yaml(&yaml, "test").expect("valid spec")
    }
}
