//! Everything the coordinator and the workers share: the job spec, the
//! PostgreSQL connector, the chunk codec and its keys, the lease store and
//! its keyspace, the leased-work engine, the staging area (sealed with a
//! job's key) and the job's record. Never talks gRPC.

pub mod audit;
pub mod chunk;
pub mod config;
pub mod debrief;
pub mod error;
pub mod history;
pub mod ids;
pub mod job;
pub mod keyring;
pub mod keys;
pub mod keyspace;
pub mod lease;
pub mod mapping;
pub mod pg;
pub mod pgcopy;
pub mod requests;
pub mod sealed;
pub mod shutdown;
pub mod size;
pub mod spec;
pub mod staging;
pub mod state;
pub mod telemetry;
pub mod throttle;
pub mod verify;
pub mod work;

pub use error::{Error, ErrorKind, Result};
