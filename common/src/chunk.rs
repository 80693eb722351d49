//! The staged chunk frame: `magic | version | header length | header | sealed payload`.
//! The header (job, table, partition, seq, rows, key id, nonce) is the AEAD
//! associated data, so a flipped byte anywhere, a truncation or a chunk from
//! another job fails authentication and is never loaded. Owns the bytes on
//! disk; never decides where they are stored.

use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
use godwit_proto::v1::{ChunkHeader, Codec};
use prost::Message;

use crate::keys::{DataKey, fill_random};
use crate::{Error, Result};

pub const MAGIC: &[u8; 4] = b"GDWC";
pub const VERSION: u8 = 1;
const PREFIX_LEN: usize = MAGIC.len() + 1 + 4;
/// Headers are a few hundred bytes; anything larger is an attack or corruption.
const MAX_HEADER_LEN: usize = 64 * 1024;
pub(crate) const ZSTD_LEVEL: i32 = 1;

/// What a chunk is, before sealing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkId {
    pub job_id: String,
    pub table: String,
    pub partition: u32,
    pub seq: u64,
}

impl ChunkId {
    /// The identity a staged schema dump file is sealed under.
    pub fn schema_file(job_id: &str, name: &str) -> Self {
        Self {
            job_id: job_id.to_owned(),
            table: format!("schema/{name}"),
            partition: 0,
            seq: 0,
        }
    }

    /// The identity a job's staged manifest is sealed under.
    pub fn manifest(job_id: &str) -> Self {
        Self {
            job_id: job_id.to_owned(),
            table: "manifest".to_owned(),
            partition: 0,
            seq: 0,
        }
    }

    /// The identity the finding of one verification range is sealed under.
    pub fn verification_finding(job_id: &str, run: &str, range: u32) -> Self {
        Self {
            job_id: job_id.to_owned(),
            table: format!("reports/ranges/{run}"),
            partition: range,
            seq: 0,
        }
    }

    /// The identity a segment of streamed source changes is sealed under:
    /// where its read of the slot began, and its number within the read.
    pub fn change_segment(job_id: &str, read_from: u64, segment: u32) -> Self {
        Self {
            job_id: job_id.to_owned(),
            table: "changes".to_owned(),
            partition: segment,
            seq: read_from,
        }
    }

    /// The identity a job's stored verification report is sealed under.
    /// The identity the job's history is sealed under.
    pub fn history(job_id: &str) -> Self {
        Self {
            job_id: job_id.to_owned(),
            table: "reports/history".to_owned(),
            partition: 0,
            seq: 0,
        }
    }

    pub fn verification_report(job_id: &str) -> Self {
        Self {
            job_id: job_id.to_owned(),
            table: "reports/verification".to_owned(),
            partition: 0,
            seq: 0,
        }
    }
}

/// Compresses and seals `plaintext` (COPY binary tuples) into a frame.
pub fn seal(id: &ChunkId, rows: u64, plaintext: &[u8], key: &DataKey) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let header = ChunkHeader {
        job_id: id.job_id.clone(),
        table: id.table.clone(),
        partition: id.partition,
        seq: id.seq,
        rows,
        codec: Codec::PgBinaryZstdAes256gcm as i32,
        key_id: key.id().to_owned(),
        nonce: nonce.to_vec(),
        plaintext_len: plaintext.len() as u64,
    };
    let header_bytes = header.encode_to_vec();
    let mut payload = zstd::bulk::compress(plaintext, ZSTD_LEVEL).map_err(|e| Error::Corrupt {
        what: "chunk".into(),
        reason: format!("compression failed: {e}"),
    })?;
    key.aead()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&header_bytes),
            &mut payload,
        )
        .map_err(|_| Error::Key("sealing a chunk failed".into()))?;

    let mut frame = Vec::with_capacity(PREFIX_LEN + header_bytes.len() + payload.len());
    frame.extend_from_slice(MAGIC);
    frame.push(VERSION);
    frame.extend_from_slice(&(header_bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(&header_bytes);
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Reads only the header, unauthenticated: for listing and routing, never for loading.
pub fn peek_header(object: &str, frame: &[u8]) -> Result<ChunkHeader> {
    split_frame(object, frame).map(|(header, _, _)| header)
}

/// Authenticates and opens a frame. `expected` pins the chunk's identity so a
/// valid frame staged under the wrong name, or from another job, is refused.
pub fn open(
    object: &str,
    frame: &[u8],
    expected: &ChunkId,
    key: &DataKey,
) -> Result<(ChunkHeader, Vec<u8>)> {
    let reject = |reason: String| Error::ChunkRejected {
        object: object.to_owned(),
        reason,
    };
    let (header, header_bytes, sealed) = split_frame(object, frame)?;
    if header.job_id != expected.job_id {
        return Err(reject(format!(
            "it belongs to job {:?}, not {:?}",
            header.job_id, expected.job_id
        )));
    }
    if header.table != expected.table
        || header.partition != expected.partition
        || header.seq != expected.seq
    {
        return Err(reject(format!(
            "its header says {} partition {} chunk {}, expected {} partition {} chunk {}",
            header.table,
            header.partition,
            header.seq,
            expected.table,
            expected.partition,
            expected.seq
        )));
    }
    if header.codec != Codec::PgBinaryZstdAes256gcm as i32 {
        return Err(reject(format!("unknown codec {}", header.codec)));
    }
    if header.key_id != key.id() {
        return Err(reject(format!(
            "sealed with data key {}, but the job's data key is {}",
            header.key_id,
            key.id()
        )));
    }
    let nonce = Nonce::try_assume_unique_for_key(&header.nonce)
        .map_err(|_| reject("malformed nonce".to_owned()))?;
    let mut payload = sealed.to_vec();
    let compressed = key
        .aead()
        .open_in_place(nonce, Aad::from(header_bytes), &mut payload)
        .map_err(|_| reject("authentication failed: the object was altered, truncated or sealed with another key".into()))?;
    let limit = usize::try_from(header.plaintext_len)
        .map_err(|_| reject("plaintext length overflows".into()))?;
    let plaintext = zstd::bulk::decompress(compressed, limit)
        .map_err(|e| reject(format!("decompression failed: {e}")))?;
    if plaintext.len() != limit {
        return Err(reject(format!(
            "expected {limit} bytes of rows, got {}",
            plaintext.len()
        )));
    }
    Ok((header, plaintext))
}

fn split_frame<'a>(object: &str, frame: &'a [u8]) -> Result<(ChunkHeader, &'a [u8], &'a [u8])> {
    let reject = |reason: &str| Error::ChunkRejected {
        object: object.to_owned(),
        reason: reason.to_owned(),
    };
    if frame.len() < PREFIX_LEN || &frame[..4] != MAGIC {
        return Err(reject("not a godwit chunk (bad magic or truncated)"));
    }
    if frame[4] != VERSION {
        return Err(reject(&format!(
            "unsupported chunk format version {}",
            frame[4]
        )));
    }
    let header_len = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) as usize;
    if header_len > MAX_HEADER_LEN || frame.len() < PREFIX_LEN + header_len {
        return Err(reject(
            "header length exceeds the object (truncated or corrupt)",
        ));
    }
    let header_bytes = &frame[PREFIX_LEN..PREFIX_LEN + header_len];
    let header =
        ChunkHeader::decode(header_bytes).map_err(|_| reject("header is not decodable"))?;
    Ok((header, header_bytes, &frame[PREFIX_LEN + header_len..]))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id() -> ChunkId {
        ChunkId {
            job_id: "job-1".into(),
            table: "public.orders".into(),
            partition: 3,
            seq: 7,
        }
    }

    #[test]
    fn frame_round_trips() {
        let key = DataKey::generate().expect("key");
        let frame = seal(&id(), 2, b"row bytes row bytes", &key).expect("seal");
        let (header, plain) = open("obj", &frame, &id(), &key).expect("open");
        assert_eq!(plain, b"row bytes row bytes");
        assert_eq!(header.rows, 2);
        assert_eq!(peek_header("obj", &frame).expect("peek"), header);
    }

    #[test]
    fn frame_holds_no_plaintext() {
        let key = DataKey::generate().expect("key");
        let secret = b"customer-secret-value-0123456789".repeat(50);
        let frame = seal(&id(), 1, &secret, &key).expect("seal");
        assert!(!frame.windows(21).any(|w| w == b"customer-secret-value"));
    }

    #[test]
    fn misplaced_or_foreign_chunks_are_rejected() {
        let key = DataKey::generate().expect("key");
        let frame = seal(&id(), 1, b"x", &key).expect("seal");
        let mut elsewhere = id();
        elsewhere.seq = 8;
        let err = open("obj", &frame, &elsewhere, &key)
            .expect_err("misplaced chunk opened")
            .to_string();
        assert!(err.contains("obj") && err.contains("chunk 7"), "{err}");
        let mut foreign = id();
        foreign.job_id = "job-2".into();
        assert!(open("obj", &frame, &foreign, &key).is_err());
        let other_key = DataKey::generate().expect("key");
        assert!(open("obj", &frame, &id(), &other_key).is_err());
    }

    proptest! {
        #[test]
        fn any_payload_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..4096), rows in 0u64..1000) {
            let key = DataKey::generate().expect("key");
            let frame = seal(&id(), rows, &payload, &key).expect("seal");
            let (header, plain) = open("obj", &frame, &id(), &key).expect("open");
            prop_assert_eq!(plain, payload);
            prop_assert_eq!(header.rows, rows);
        }

        #[test]
        fn any_flipped_bit_is_rejected(payload in proptest::collection::vec(any::<u8>(), 1..512), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let key = DataKey::generate().expect("key");
            let mut frame = seal(&id(), 1, &payload, &key).expect("seal");
            let at = pos.index(frame.len());
            frame[at] ^= 1 << bit;
            prop_assert!(open("obj", &frame, &id(), &key).is_err());
        }

        #[test]
        fn any_truncation_is_rejected(payload in proptest::collection::vec(any::<u8>(), 1..512), cut in any::<prop::sample::Index>()) {
            let key = DataKey::generate().expect("key");
            let frame = seal(&id(), 1, &payload, &key).expect("seal");
            let keep = cut.index(frame.len());
            prop_assert!(open("obj", &frame[..keep], &id(), &key).is_err());
        }
    }
}
