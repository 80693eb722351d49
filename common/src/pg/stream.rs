//! The source side of change streaming: the publication that names the
//! job's tables, the check that their updates and deletes can be streamed,
//! and where the job's replication slot and the source's WAL stand. The
//! changes themselves arrive over the replication protocol (`replication`),
//! and the slot moves on only once the target has committed them, so a
//! worker that dies mid-way loses nothing.

use tokio_postgres::Client;

use super::pgoutput::parse_lsn;
use crate::spec::{TableName, quote_ident};
use crate::{Error, Result};

/// One decoded message of the slot, with the WAL position it came from.
#[derive(Debug, Clone)]
pub struct RawChange {
    pub lsn: u64,
    pub data: Vec<u8>,
}

/// The publication of a job: named after its slot.
pub fn publication_name(slot: &str) -> String {
    slot.to_owned()
}

/// Tables whose updates and deletes the source cannot stream: no replica
/// identity (no primary key and no REPLICA IDENTITY FULL or USING INDEX).
/// Publishing them would make the customer's UPDATE and DELETE fail.
pub async fn unstreamable_tables(client: &Client, tables: &[TableName]) -> Result<Vec<TableName>> {
    tables_where(
        client,
        tables,
        "c.relreplident = 'n' \
         OR (c.relreplident = 'd' AND NOT EXISTS \
             (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)) \
         OR (c.relreplident = 'i' AND NOT EXISTS \
             (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident))",
        "cannot read the replica identity of the source's tables",
    )
    .await
}

/// Unlogged tables of `tables`: they write no WAL, so no change of theirs
/// can be streamed (and a publication refuses them).
pub async fn unlogged_tables(client: &Client, tables: &[TableName]) -> Result<Vec<TableName>> {
    tables_where(
        client,
        tables,
        "c.relpersistence = 'u'",
        "cannot read the persistence of the source's tables",
    )
    .await
}

/// The tables of `tables` for which `condition` (on `pg_class c`) holds,
/// in name order.
async fn tables_where(
    client: &Client,
    tables: &[TableName],
    condition: &str,
    context: &str,
) -> Result<Vec<TableName>> {
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = ANY($1::text[]::regclass[]) AND ({condition}) ORDER BY 1, 2"
            ),
            &[&names],
        )
        .await
        .map_err(|e| Error::postgres(context, e))?;
    Ok(rows
        .iter()
        .map(|row| TableName {
            schema: row.get(0),
            name: row.get(1),
        })
        .collect())
}

/// Creates the job's publication over `tables`, replacing one a failed
/// earlier attempt left behind. It must exist before the slot is created:
/// decoding looks it up as of each change's position.
pub async fn create_publication(client: &Client, name: &str, tables: &[TableName]) -> Result<()> {
    let list: Vec<String> = tables.iter().map(TableName::quoted).collect();
    let publication = quote_ident(name);
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {publication}; CREATE PUBLICATION {publication} FOR TABLE {}",
            list.join(", ")
        ))
        .await
        .map_err(|e| {
            let hint = if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                ": the source role must own the tables (or be a superuser) to publish their changes"
            } else {
                ""
            };
            Error::postgres(format!("cannot create publication {name} on the source{hint}"), e)
        })
}

pub async fn drop_publication(client: &Client, name: &str) -> Result<()> {
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await
        .map_err(|e| Error::postgres(format!("cannot drop publication {name}"), e))
}

/// Source WAL `slot` keeps from being recycled, in bytes.
pub async fn retained_wal(client: &Client, slot: &str) -> Result<Option<u64>> {
    let row = client
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read replication slot {slot}"), e))?;
    Ok(row
        .and_then(|row| row.get::<_, Option<i64>>(0))
        .map(|bytes| u64::try_from(bytes).unwrap_or(0)))
}

/// Where the slot is confirmed to (nothing before it will be decoded again),
/// and whether a session still holds it.
pub async fn slot_position(client: &Client, slot: &str) -> Result<Option<(u64, bool)>> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read replication slot {slot}"), e))?;
    Ok(row.and_then(|row| {
        let lsn: Option<String> = row.get(0);
        Some((parse_lsn(&lsn?)?, row.get(1)))
    }))
}

/// The source's WAL insert and flush positions: a commit visible to any
/// snapshot taken before this call is at or before the first; decoding
/// reads up to the second.
pub async fn wal_positions(client: &Client) -> Result<(u64, u64)> {
    let row = client
        .query_one(
            "SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the source's WAL position", e))?;
    let parse = |i: usize| {
        let text: String = row.get(i);
        parse_lsn(&text).ok_or_else(|| Error::Internal(format!("source returned LSN {text:?}")))
    };
    Ok((parse(0)?, parse(1)?))
}

/// Which transactions a source snapshot sees, from `pg_current_snapshot()`
/// (`xmin:xmax:xip,…`, 64-bit transaction ids). A verification during
/// streaming reads the source under such a snapshot and has the target
/// brought to exactly the transactions it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotBounds {
    pub xmin: u64,
    pub xmax: u64,
    pub in_progress: Vec<u64>,
}

impl SnapshotBounds {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let in_progress = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        (xmin <= xmax).then_some(Self {
            xmin,
            xmax,
            in_progress,
        })
    }

    /// Whether the snapshot sees the committed transaction `xid`, as the
    /// 32-bit id the change stream carries: it is widened against `xmax`,
    /// which every transaction the stream can still deliver is close to.
    pub fn sees(&self, xid: u32) -> bool {
        let behind = (self.xmax as u32).wrapping_sub(xid) as i32;
        if behind <= 0 {
            return false;
        }
        let Some(full) = self.xmax.checked_sub(behind as u64) else {
            return false;
        };
        full < self.xmin || !self.in_progress.contains(&full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_bounds_parse_and_see() {
        let s = SnapshotBounds::parse("100:105:101,103").expect("valid");
        assert_eq!(s.in_progress, vec![101, 103]);
        assert!(s.sees(99));
        assert!(s.sees(100));
        assert!(!s.sees(101));
        assert!(s.sees(102));
        assert!(!s.sees(103));
        assert!(s.sees(104));
        assert!(!s.sees(105));
        assert!(!s.sees(200));
        let empty = SnapshotBounds::parse("7:7:").expect("valid");
        assert!(empty.sees(6) && !empty.sees(7));
        for bad in ["", "1", "1:2", "3:2:", "a:b:", "1:2:x"] {
            assert_eq!(SnapshotBounds::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn snapshot_bounds_widen_across_an_epoch() {
        // xmax just past a wraparound of the 32-bit counter.
        let epoch = 1u64 << 32;
        let s = SnapshotBounds::parse(&format!("{}:{}:{}", epoch - 5, epoch + 3, epoch - 2))
            .expect("valid");
        assert!(s.sees(u32::MAX - 5)); // epoch - 6 < xmin
        assert!(!s.sees(u32::MAX - 1)); // epoch - 2, in progress
        assert!(s.sees(1)); // epoch + 1
        assert!(!s.sees(3)); // epoch + 3 = xmax
    }
}
