//! Untrusted staged bytes through the chunk decoder: it must reject, never
//! panic, hang or allocate without bound.
#![no_main]

use std::sync::OnceLock;

use godwit_common::chunk::{self, ChunkId};
use godwit_common::keys::DataKey;
use libfuzzer_sys::fuzz_target;

fn key() -> &'static DataKey {
    static KEY: OnceLock<DataKey> = OnceLock::new();
    KEY.get_or_init(|| DataKey::generate().expect("system randomness"))
}

fuzz_target!(|data: &[u8]| {
    let id = ChunkId {
        job_id: "fuzz".into(),
        table: "public.t".into(),
        partition: 0,
        seq: 0,
    };
    let _ = chunk::peek_header("fuzz", data);
    assert!(chunk::open("fuzz", data, &id, key()).is_err());
});
