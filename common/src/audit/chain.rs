//! The audit trail's records and the rules that make it tamper-evident:
//! each record carries its sequence number, the SHA-256 of the record
//! before it, and an HMAC over itself with the job's audit key. Pure: no
//! I/O, so every kind of tampering can be tested on lists of records.

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the chain starts from.
pub const GENESIS: &str = "genesis";

/// One action, as recorded. Never a row value or a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_unix_ms: u64,
    /// Who: a certified identity, `local`, `coordinator` or `cli`.
    pub actor: String,
    /// What: `job.submit`, `call.refused`, `chunk.loaded`, `cutover`, …
    pub action: String,
    pub customer: String,
    pub job: String,
    /// What it was done to: a table, a partition, a chunk with its SHA-256
    /// and key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// `ok`, `refused`, `failed`, `rolled back`, …
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// SHA-256 (hex) of the previous record as stored, or [`GENESIS`].
    pub prev: String,
    /// HMAC-SHA256 (hex) of this record with `mac` empty.
    pub mac: String,
}

/// An event to record; the chain fills in the rest.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    pub actor: String,
    pub action: String,
    pub object: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
}

impl AuditEvent {
    pub fn new(actor: &str, action: &str, outcome: &str) -> Self {
        Self {
            actor: actor.to_owned(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            ..Self::default()
        }
    }

    pub fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// Where a chain stands: its last sequence number and that record's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    pub fn empty() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

fn unsigned_bytes(record: &AuditRecord) -> Vec<u8> {
    let mut unsigned = record.clone();
    unsigned.mac.clear();
    serde_json::to_vec(&unsigned).unwrap_or_default()
}

/// The bytes a record is stored as.
pub fn stored_bytes(record: &AuditRecord) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

/// The hash the next record links to.
pub fn link(stored: &[u8]) -> String {
    hex::encode(Sha256::digest(stored))
}

/// The record following `head`, authenticated with `key`.
pub fn seal(
    key: &hmac::Key,
    head: &Head,
    at_unix_ms: u64,
    customer: &str,
    job: &str,
    event: AuditEvent,
) -> AuditRecord {
    let mut record = AuditRecord {
        seq: head.seq + 1,
        at_unix_ms,
        actor: event.actor,
        action: event.action,
        customer: customer.to_owned(),
        job: job.to_owned(),
        object: event.object,
        outcome: event.outcome,
        reason: event.reason,
        prev: head.hash.clone(),
        mac: String::new(),
    };
    record.mac = hex::encode(hmac::sign(key, &unsigned_bytes(&record)).as_ref());
    record
}

/// The first thing wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The object or sequence number where it breaks.
    pub at: String,
    pub why: String,
}

/// Checks stored records (`(name, bytes)` in sequence order) against the
/// anchored head; returns the records when the chain is intact.
pub fn verify(
    key: &hmac::Key,
    stored: &[(String, Vec<u8>)],
    head: &Head,
) -> Result<Vec<AuditRecord>, Broken> {
    let mut records = Vec::with_capacity(stored.len());
    let mut expected = Head::empty();
    for (name, bytes) in stored {
        let broken = |why: String| Broken {
            at: name.clone(),
            why,
        };
        let record: AuditRecord = serde_json::from_slice(bytes)
            .map_err(|e| broken(format!("not an audit record ({e})")))?;
        if record.seq != expected.seq + 1 {
            return Err(broken(format!(
                "holds record {} where record {} belongs (a record was deleted, inserted or moved)",
                record.seq,
                expected.seq + 1
            )));
        }
        let mac = hex::decode(&record.mac).map_err(|_| broken("its MAC is not hex".into()))?;
        hmac::verify(key, &unsigned_bytes(&record), &mac).map_err(|_| {
            broken(format!(
                "record {} fails authentication (it was modified)",
                record.seq
            ))
        })?;
        if record.prev != expected.hash {
            return Err(broken(format!(
                "record {} does not follow record {} (the chain was reordered or spliced)",
                record.seq, expected.seq
            )));
        }
        expected = Head {
            seq: record.seq,
            hash: link(bytes),
        };
        records.push(record);
    }
    if expected.seq < head.seq {
        return Err(Broken {
            at: format!("record {}", expected.seq + 1),
            why: format!(
                "the anchored head is record {} but the trail ends at record {} (its tail was removed)",
                head.seq, expected.seq
            ),
        });
    }
    if expected != *head {
        return Err(Broken {
            at: format!("record {}", head.seq.max(1)),
            why: format!(
                "the trail does not end where the anchored head says (record {}, {}): records were added \
                 after it or the head was rewritten",
                head.seq, head.hash
            ),
        });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &[9u8; 32])
    }

    /// A chain of `n` records as stored, and its head.
    fn chain(n: u64) -> (Vec<(String, Vec<u8>)>, Head) {
        let key = key();
        let mut head = Head::empty();
        let mut stored = Vec::new();
        for i in 0..n {
            let record = seal(
                &key,
                &head,
                1_000 + i,
                "acme",
                "j1",
                AuditEvent::new("alice", "job.pause", "ok"),
            );
            let bytes = stored_bytes(&record);
            head = Head {
                seq: record.seq,
                hash: link(&bytes),
            };
            stored.push((format!("{:08}.json", record.seq), bytes));
        }
        (stored, head)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (stored, head) = chain(5);
        assert_eq!(verify(&key(), &stored, &head).expect("intact").len(), 5);
    }

    #[test]
    fn every_kind_of_tampering_is_found_at_the_first_bad_record() {
        let (stored, head) = chain(5);
        let mut modified = stored.clone();
        modified[2].1 = String::from_utf8_lossy(&modified[2].1)
            .replace("alice", "mallory")
            .into_bytes();
        let mut deleted = stored.clone();
        deleted.remove(1);
        let mut inserted = stored.clone();
        inserted.insert(2, stored[1].clone());
        let mut reordered = stored.clone();
        reordered.swap(1, 2);
        let truncated = stored[..3].to_vec();
        let wrong_key = hmac::Key::new(hmac::HMAC_SHA256, &[1u8; 32]);
        for (case, records, at, key) in [
            ("modified", modified, "00000003.json", key()),
            ("deleted", deleted, "00000003.json", key()),
            ("inserted", inserted, "00000002.json", key()),
            ("reordered", reordered, "00000003.json", key()),
            ("truncated", truncated, "record 4", key()),
            ("another key", stored.clone(), "00000001.json", wrong_key),
        ] {
            let broken = verify(&key, &records, &head).expect_err(case);
            assert_eq!(broken.at, at, "{case}: {broken:?}");
        }
        // A record added past the anchored head is found too.
        let (longer, _) = chain(6);
        assert!(verify(&key(), &longer, &head).is_err());
    }
}
