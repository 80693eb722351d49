//! The worker: takes partition leases and copies each partition from the
//! job's source snapshot, through sealed staged chunks, into the target,
//! exactly once. Never decides the plan: it only executes what the
//! coordinator published in the lease store.

pub mod copy;
pub mod keys;
pub mod replay;
pub mod runner;
pub mod throttle;
pub mod verify;

pub use runner::{Worker, WorkerConfig};
