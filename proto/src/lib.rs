//! Generated types of the `godwit.v1` gRPC API and the staged chunk formats.
//! Owns no logic: everything here is produced from `proto/godwit/v1`.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("godwit.v1");
}

/// The encoded `FileDescriptorSet` of `godwit.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/godwit_descriptor.bin"));
