//! One read of a job's change stream, in bounded memory: the changes arrive
//! row by row and are cut into segments of at most `SEGMENT_BYTES`, each sealed
//! into staging as it fills (the record of what was applied, never in
//! plain text). A read that fits in one segment is applied from memory;
//! a larger one (a source transaction of millions of rows) is applied
//! segment by segment, read back from staging, so no more than a segment
//! or two is ever held whatever the transaction's size.
//!
//! Owns the segments' format and names; never decides what is applied.

use godwit_common::chunk::{self, ChunkId};
use godwit_common::ids::JobId;
use godwit_common::pg::apply_run::ApplyRun;
use godwit_common::pg::pgoutput;
use godwit_common::pg::replication::{Received, ReplicationStream};
use godwit_common::pg::stream::RawChange;
use godwit_common::sealed::SealedStaging;
use godwit_common::{Error, Result};
use std::time::{Duration, Instant};

/// The most raw change bytes held in memory per segment.
pub(crate) const SEGMENT_BYTES: usize = 4 << 20;

/// Where a read of the stream starts and how much it may take.
pub(crate) struct ReadAt {
    /// The read is complete once everything committed before this position
    /// has been received.
    pub upto: u64,
    /// Past this many messages the read ends at the next transaction's end.
    pub max_messages: usize,
    /// The ledger's position when the read began: names its segments.
    pub from: u64,
    /// What the target already holds: confirmed in keepalive requests.
    pub confirmed: u64,
}

/// Messages a read received but did not apply (past a transaction a
/// pinning snapshot did not see), kept for the next read of the session.
pub(crate) struct Carried {
    pub changes: Vec<RawChange>,
    /// The read's `received_through`: still true, since what it received
    /// is either applied or carried.
    pub received_through: u64,
}

/// A read of the stream: every segment but the last sealed in staging only.
pub(crate) struct Read {
    pub messages: usize,
    pub bytes: u64,
    /// Every transaction committed before this position has been received
    /// (the read ends between transactions).
    pub received_through: u64,
    /// It ended at `max_messages`, with more waiting.
    pub truncated: bool,
    /// Segments read back from staging, in order.
    spilled: Vec<u32>,
    /// The last segment, still in memory (also sealed in staging).
    tail: Vec<RawChange>,
    from: u64,
}

impl Read {
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    pub fn spilled_segments(&self) -> usize {
        self.spilled.len()
    }
}

/// Between transactions, how long the stream may stay silent before the
/// walsender is asked how far it has sent.
const QUIET: Duration = Duration::from_millis(5);
/// How long a read waits between transactions for the walsender to reach
/// `upto` before it returns what it has.
const PATIENCE: Duration = Duration::from_millis(250);

/// Reads whole transactions from the stream until everything committed
/// before `at.upto` has been received, or `at.max_messages` are read, or
/// the walsender stays short of `upto` for a while; seals each segment
/// into staging as it fills.
pub(crate) async fn read(
    changes: &mut ReplicationStream,
    at: ReadAt,
    carried: Option<Carried>,
    sealed: &SealedStaging,
    job: &JobId,
) -> Result<Read> {
    let mut read = Read {
        messages: 0,
        bytes: 0,
        received_through: 0,
        truncated: false,
        spilled: Vec::new(),
        tail: Vec::new(),
        from: at.from,
    };
    let mut held = 0usize;
    let mut inside = false;
    if let Some(carried) = carried {
        read.received_through = carried.received_through;
        for change in carried.changes {
            match change.data.first() {
                Some(b'B') => inside = true,
                Some(b'C') => inside = false,
                _ => {}
            }
            read.messages += 1;
            read.bytes += change.data.len() as u64;
            held += change.data.len() + 12;
            read.tail.push(change);
        }
    }
    let mut waiting_since: Option<Instant> = None;
    loop {
        if !inside {
            if read.received_through >= at.upto {
                break;
            }
            if read.messages >= at.max_messages {
                read.truncated = true;
                break;
            }
        }
        let received = if inside {
            changes.receive().await?
        } else {
            match tokio::time::timeout(QUIET, changes.receive()).await {
                Ok(received) => received?,
                Err(_) => {
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= PATIENCE {
                        break;
                    }
                    changes.status(at.confirmed, true).await?;
                    continue;
                }
            }
        };
        let change = match received {
            Received::Keepalive {
                sent_through,
                reply_requested,
            } => {
                if reply_requested {
                    changes.status(at.confirmed, false).await?;
                }
                if !inside {
                    read.received_through = read.received_through.max(sent_through);
                }
                continue;
            }
            Received::Change(change) => change,
        };
        waiting_since = None;
        match change.data.first() {
            Some(b'B') => inside = true,
            Some(b'C') => {
                inside = false;
                if let Some(end) = change.data.get(10..18) {
                    let end = u64::from_be_bytes(end.try_into().unwrap_or_default());
                    read.received_through = read.received_through.max(end);
                }
            }
            _ => {}
        }
        read.messages += 1;
        read.bytes += change.data.len() as u64;
        held += change.data.len() + 12;
        read.tail.push(change);
        if held >= SEGMENT_BYTES {
            let segment = read.spilled.len() as u32;
            seal(sealed, job, read.from, segment, &read.tail).await?;
            read.spilled.push(segment);
            read.tail.clear();
            held = 0;
        }
    }
    if !read.tail.is_empty() {
        seal(
            sealed,
            job,
            read.from,
            read.spilled.len() as u32,
            &read.tail,
        )
        .await?;
    }
    Ok(read)
}

/// How far a replay went.
pub(crate) enum Replayed {
    /// Every message was fed.
    Whole,
    /// The run stopped at a transaction its snapshot does not see. `rest`
    /// holds the messages from there on when they were all in memory (they
    /// are applied first by the next read of the same session); None when
    /// some were only in staging, and the session is read afresh instead.
    Stopped { rest: Option<Vec<RawChange>> },
}

/// Feeds the read to `run` in slot order, segment by segment. Stops early
/// when the run says so.
pub(crate) async fn replay(
    read: Read,
    sealed: &SealedStaging,
    job: &JobId,
    run: &mut ApplyRun<'_>,
) -> Result<Replayed> {
    for &segment in &read.spilled {
        let changes = unseal(sealed, job, read.from, segment).await?;
        if feed(changes, run).await?.is_some() {
            return Ok(Replayed::Stopped { rest: None });
        }
    }
    Ok(match feed(read.tail, run).await? {
        Some(rest) => Replayed::Stopped { rest: Some(rest) },
        None => Replayed::Whole,
    })
}

/// Feeds `changes` to `run`; the ones from where it stopped, if it did.
async fn feed(changes: Vec<RawChange>, run: &mut ApplyRun<'_>) -> Result<Option<Vec<RawChange>>> {
    let mut changes = changes.into_iter();
    while let Some(change) = changes.next() {
        if !run.feed(pgoutput::decode(&change.data)?).await? {
            let mut rest = vec![change];
            rest.extend(changes);
            return Ok(Some(rest));
        }
    }
    Ok(None)
}

async fn seal(
    sealed: &SealedStaging,
    job: &JobId,
    from: u64,
    segment: u32,
    changes: &[RawChange],
) -> Result<()> {
    let mut payload = Vec::with_capacity(changes.iter().map(|c| c.data.len() + 12).sum());
    for change in changes {
        payload.extend_from_slice(&change.lsn.to_be_bytes());
        payload.extend_from_slice(&(change.data.len() as u32).to_be_bytes());
        payload.extend_from_slice(&change.data);
    }
    let id = ChunkId::change_segment(job.as_str(), from, segment);
    let frame = chunk::seal(&id, changes.len() as u64, &payload, sealed.key())?;
    drop(payload);
    let staging = sealed.staging();
    staging
        .put(&staging.change_path(job, from, segment), frame)
        .await
}

async fn unseal(
    sealed: &SealedStaging,
    job: &JobId,
    from: u64,
    segment: u32,
) -> Result<Vec<RawChange>> {
    let staging = sealed.staging();
    let path = staging.change_path(job, from, segment);
    let frame = staging.get(&path).await?;
    let id = ChunkId::change_segment(job.as_str(), from, segment);
    let (_, payload) = chunk::open(path.as_ref(), &frame, &id, sealed.key())?;
    drop(frame);
    parse(&payload).ok_or_else(|| Error::ChunkRejected {
        object: path.to_string(),
        reason: "the segment's changes are cut short".into(),
    })
}

/// The changes of a segment's payload; None when it is cut short.
fn parse(mut payload: &[u8]) -> Option<Vec<RawChange>> {
    let mut changes = Vec::new();
    while !payload.is_empty() {
        let lsn = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
        let len = u32::from_be_bytes(payload.get(8..12)?.try_into().ok()?) as usize;
        let data = payload.get(12..12 + len)?.to_vec();
        changes.push(RawChange { lsn, data });
        payload = &payload[12 + len..];
    }
    Some(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_payload_round_trips_and_a_cut_one_is_refused() {
        let changes = [(7u64, b"abc".to_vec()), (9, Vec::new()), (12, vec![1; 300])];
        let mut payload = Vec::new();
        for (lsn, data) in &changes {
            payload.extend_from_slice(&lsn.to_be_bytes());
            payload.extend_from_slice(&(data.len() as u32).to_be_bytes());
            payload.extend_from_slice(data);
        }
        let parsed = parse(&payload).expect("whole");
        let parsed: Vec<(u64, Vec<u8>)> = parsed.into_iter().map(|c| (c.lsn, c.data)).collect();
        assert_eq!(parsed, changes.to_vec());
        assert!(parse(&payload[..payload.len() - 1]).is_none());
        assert!(parse(&payload[..5]).is_none());
    }
}
