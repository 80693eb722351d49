//! The end-to-end tests, as modules of one test binary (one link instead
//! of one per file): each runs against real PostgreSQL clusters, etcd, an
//! S3-compatible server, helm and the real `godwit` binaries.

mod access;
mod application;
mod armed_corruption;
mod bad_input;
mod changes;
mod chaos;
mod chart;
mod cutover_limits;
mod debrief;
mod distributed;
mod embedded;
mod image;
mod lease_store;
mod ledger;
mod mapping;
mod mapping_created;
mod mapping_masked;
mod mapping_remap;
mod mapping_review;
mod mapping_shared;
mod mapping_stream;
mod metrics;
mod metrics_tls;
mod real_world;
mod replay;
mod resume;
mod s3_staging;
mod signoff;
mod stream_workers;
mod throttle;
mod tls;
mod traces;
mod verify;
