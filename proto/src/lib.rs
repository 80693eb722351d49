//! Generated types of the `godwit.v1` gRPC API and the staged chunk formats.
//! Owns no logic: everything here is produced from `proto/godwit/v1`.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("godwit.v1");
}
