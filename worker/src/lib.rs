//! The worker: one lease loop (`runner`) over every kind of leased work
//! the coordinator publishes (see `godwit_common::work`): it copies
//! partitions from the job's source snapshot, through sealed staged
//! chunks, into the target, exactly once, and compares verification
//! ranges on both databases, and runs jobs' change streams. Opens a session on a customer's source only
//! in one of the customer's session slots. Never decides the plan: it only
//! executes what the coordinator published in the lease store.

pub mod copy;
mod copy_metrics;
pub mod keys;
pub mod replay;
pub mod runner;
mod stream;
pub mod throttle;
pub mod verify;

pub use runner::{Worker, WorkerConfig};
