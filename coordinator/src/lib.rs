//! The coordinator: plans jobs (catalog → partitions), publishes them as
//! leases, drives each job through its phases and serves the `godwit.v1`
//! gRPC API. Never copies rows: workers do.

pub mod access;
pub mod approval;
pub mod changes;
pub mod driver;
pub mod error;
mod freeze;
mod listener;
pub mod planner;
pub mod preflight;
pub mod service;
mod staged;
pub mod status;
pub mod throttle;
pub mod tls;
pub mod verification;

pub mod recovery;
pub mod retention;

pub use driver::{JobDriver, JobSummary, Prepared, preflight};
pub use error::JobError;
pub use verification::{Verified, Verifier};
