//! Envelope encryption keys. A key-encryption key (KEK) lives in a file the
//! operator controls; each job gets a random data key (DEK) that seals its
//! chunks and is stored only wrapped by the KEK. Rotating the KEK re-wraps the
//! DEK without touching staged data. Key bytes never reach a log line.

use std::fmt;
use std::io::Write;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use godwit_proto::v1::WrappedKey;
use sha2::{Digest, Sha256};

use crate::ids::JobId;
use crate::{Error, Result};

pub const KEY_LEN: usize = 32;

/// The key-encryption key, read from a file holding 64 hex characters.
pub struct Kek {
    key: LessSafeKey,
    id: String,
    /// The key tokens are made with (see `mapping::mask`): derived, so the
    /// key-encryption key itself never keys anything but wrapping.
    tokens: aws_lc_rs::hmac::Key,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Kek {
    pub fn from_file(path: &Path) -> Result<Self> {
        refuse_if_shared(path, "key file")?;
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Key(format!(
                "cannot read key file {}: {e}; create one with `godwit keys generate --out {}`",
                path.display(),
                path.display()
            ))
        })?;
        let bytes = hex::decode(text.trim()).map_err(|_| {
            Error::Key(format!(
                "key file {} does not hold a hex-encoded key; create one with `godwit keys generate --out PATH`",
                path.display()
            ))
        })?;
        Self::from_bytes(&bytes).map_err(|_| {
            Error::Key(format!(
                "key file {} holds {} bytes, a key-encryption key has {KEY_LEN}",
                path.display(),
                bytes.len()
            ))
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEY_LEN {
            return Err(Error::Key(format!(
                "a key has {KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        let digest = Sha256::new()
            .chain_update(b"godwit/kek-id/v1")
            .chain_update(bytes)
            .finalize();
        let derived = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, bytes),
            b"godwit/token-key/v1",
        );
        Ok(Self {
            key: aead_key(bytes)?,
            id: hex::encode(&digest[..8]),
            tokens: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, derived.as_ref()),
        })
    }

    /// Writes a fresh random key to `path`, readable by its owner only. Refuses
    /// to overwrite: losing a KEK makes every staged chunk it protects unreadable.
    pub fn generate_file(path: &Path) -> Result<String> {
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&mut bytes)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|source| Error::Io {
            what: "cannot create key file",
            path: path.to_owned(),
            source,
        })?;
        writeln!(file, "{}", hex::encode(bytes)).map_err(|source| Error::Io {
            what: "cannot write key file",
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_bytes(&bytes)?.id)
    }

    /// The key masks make tokens with (HMAC-SHA-256), derived from this one.
    pub fn token_key(&self) -> crate::mapping::mask::TokenKey {
        crate::mapping::mask::TokenKey::new(self.tokens.clone())
    }

    /// Fingerprint of the key: safe to log and to store beside wrapped keys.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn wrap(&self, job: &JobId, dek: &DataKey) -> Result<WrappedKey> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let mut in_out = dek.bytes.to_vec();
        let aad = wrap_aad(job, &dek.id);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| Error::Key("sealing the data key failed".into()))?;
        Ok(WrappedKey {
            key_id: dek.id.clone(),
            kek_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext: in_out,
        })
    }

    pub fn unwrap(&self, job: &JobId, wrapped: &WrappedKey) -> Result<DataKey> {
        if wrapped.kek_id != self.id {
            return Err(Error::Key(format!(
                "job {job}'s data key was wrapped by key-encryption key {} but the key file holds {}: \
                 point `encryption.key_file` at the key the job was started with",
                wrapped.kek_id, self.id
            )));
        }
        let nonce = Nonce::try_assume_unique_for_key(&wrapped.nonce).map_err(|_| {
            Error::Key(format!(
                "job {job}'s wrapped data key has a malformed nonce"
            ))
        })?;
        let mut in_out = wrapped.ciphertext.clone();
        let aad = wrap_aad(job, &wrapped.key_id);
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut in_out)
            .map_err(|_| {
                Error::Key(format!(
                    "job {job}'s wrapped data key failed authentication"
                ))
            })?;
        DataKey::from_parts(wrapped.key_id.clone(), plain)
    }
}

/// A secret file others can read is refused, saying how to fix its mode.
/// The rule is libpq's: readable by its owner only, or also by its group
/// when root owns it (Kubernetes mounts Secret files as root, group-readable
/// by the pod's `fsGroup`).
pub(crate) fn refuse_if_shared(path: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(metadata) = std::fs::metadata(path) else {
        // Not readable at all: reading it says so, naming the file.
        return Ok(());
    };
    let mode = metadata.permissions().mode();
    let by_others = mode & 0o007 != 0;
    let by_group = mode & 0o070 != 0 && metadata.uid() != 0;
    if by_others || by_group {
        return Err(Error::Key(format!(
            "{what} {} can be read by others (mode {:o}): run chmod 0600 on it (or 0640 when root owns it, \
             as Kubernetes mounts Secrets)",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

fn wrap_aad(job: &JobId, key_id: &str) -> String {
    format!("godwit/dek/v1/{job}/{key_id}")
}

/// A job's data key. Seals chunk payloads.
pub struct DataKey {
    id: String,
    bytes: [u8; KEY_LEN],
    key: LessSafeKey,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&mut bytes)?;
        let mut id = [0u8; 8];
        fill_random(&mut id)?;
        Self::from_parts(hex::encode(id), &bytes)
    }

    fn from_parts(id: String, bytes: &[u8]) -> Result<Self> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::Key(format!(
                "a data key has {KEY_LEN} bytes, got {}",
                bytes.len()
            ))
        })?;
        Ok(Self {
            id,
            key: aead_key(&array)?,
            bytes: array,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn aead(&self) -> &LessSafeKey {
        &self.key
    }

    /// The key as an HMAC-SHA256 key (the audit trail's use of it).
    pub(crate) fn hmac_key(&self) -> aws_lc_rs::hmac::Key {
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.bytes)
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        // Best effort: keep the raw key out of freed memory.
        self.bytes.iter_mut().for_each(|b| *b = 0);
    }
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey> {
    let unbound = UnboundKey::new(&AES_256_GCM, bytes)
        .map_err(|_| Error::Key("invalid AES-256 key".into()))?;
    Ok(LessSafeKey::new(unbound))
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    aws_lc_rs::rand::fill(buf).map_err(|_| Error::Key("the system random generator failed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        JobId::parse("job-1").expect("valid id")
    }

    #[test]
    fn wrapped_key_round_trips_and_is_bound_to_job() {
        let kek = Kek::from_bytes(&[7u8; KEY_LEN]).expect("kek");
        let dek = DataKey::generate().expect("dek");
        let wrapped = kek.wrap(&job(), &dek).expect("wrap");
        let back = kek.unwrap(&job(), &wrapped).expect("unwrap");
        assert_eq!(back.bytes, dek.bytes);
        let other_job = JobId::parse("job-2").expect("valid id");
        assert!(kek.unwrap(&other_job, &wrapped).is_err());
    }

    #[test]
    fn wrong_kek_is_named_in_the_error() {
        let kek = Kek::from_bytes(&[7u8; KEY_LEN]).expect("kek");
        let other = Kek::from_bytes(&[8u8; KEY_LEN]).expect("kek");
        let wrapped = kek
            .wrap(&job(), &DataKey::generate().expect("dek"))
            .expect("wrap");
        let err = other
            .unwrap(&job(), &wrapped)
            .expect_err("wrong kek accepted")
            .to_string();
        assert!(err.contains(kek.id()) && err.contains("key_file"), "{err}");
    }

    #[test]
    fn generated_key_file_is_private_and_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kek");
        let id = Kek::generate_file(&path).expect("generate");
        assert_eq!(Kek::from_file(&path).expect("read").id(), id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(Kek::generate_file(&path).is_err());
    }

    #[test]
    fn debug_output_has_no_key_bytes() {
        let kek = Kek::from_bytes(&[0xab; KEY_LEN]).expect("kek");
        assert!(!format!("{kek:?}").contains("abab"));
    }
}
