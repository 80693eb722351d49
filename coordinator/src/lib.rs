//! The coordinator: serves the `godwit.v1` gRPC API and, while it leads
//! the deployment (one coordinator at a time, see `leadership`), plans jobs
//! (catalog → partitions), publishes them as leased work and drives each
//! job through its phases. Never copies rows: workers do.

pub mod access;
pub mod approval;
pub mod changes;
pub mod driver;
pub mod error;
mod final_check;
mod freeze;
mod listener;
mod phases;
pub mod planner;
pub mod preflight;
pub mod requests;
pub mod service;
mod staged;
pub mod status;
mod summary;
pub mod throttle;
pub mod tls;
pub mod verification;

pub mod dispatch;
pub mod leadership;
pub mod retention;

pub use driver::{JobDriver, JobSummary, Prepared, preflight};
pub use error::JobError;
pub use verification::{Verified, Verifier};
