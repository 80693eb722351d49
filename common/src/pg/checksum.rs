//! Table fingerprints computed by the databases themselves: the row count and
//! an order-independent sum of a 64-bit hash (`hashtextextended`, PostgreSQL's
//! own) of each row's text form. Independent of the copy path: it reads the
//! tables, not the chunks. The text form costs most of the time; the hash is
//! cheaper than MD5 and detects any accidental difference just as well.

use tokio_postgres::Client;

use crate::spec::TableName;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFingerprint {
    pub rows: u64,
    /// Decimal sum of each row's 64-bit hash.
    pub checksum: String,
}

pub async fn fingerprint(client: &Client, table: &TableName) -> Result<TableFingerprint> {
    fingerprint_where(client, table, "true").await
}

/// The fingerprint of the rows `filter` selects; the filter refers to the
/// table as `t`.
pub async fn fingerprint_where(
    client: &Client,
    table: &TableName,
    filter: &str,
) -> Result<TableFingerprint> {
    let sql = format!(
        "SELECT count(*)::bigint, \
                coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text \
         FROM {} AS t WHERE {filter}",
        table.only()
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot checksum {table}"), e))?;
    Ok(TableFingerprint {
        rows: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        checksum: row.get(1),
    })
}
