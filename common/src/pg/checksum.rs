//! Table fingerprints computed by the databases themselves: the row count and
//! an order-independent sum of per-row MD5 digests over each row's text
//! form. Independent of the copy path: it reads the tables, not the chunks.

use tokio_postgres::Client;

use crate::spec::TableName;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFingerprint {
    pub rows: u64,
    /// Decimal sum of the first 60 bits of each row's MD5.
    pub checksum: String,
}

pub async fn fingerprint(client: &Client, table: &TableName) -> Result<TableFingerprint> {
    let sql = format!(
        "SELECT count(*)::bigint, \
                coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint::numeric), 0)::text \
         FROM {} AS t",
        table.quoted()
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
