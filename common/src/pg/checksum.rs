//! Table fingerprints computed by the databases themselves: the row count and
//! an order-independent sum of a 64-bit hash of each row. Independent of the
//! copy path: it reads the tables, not the chunks, and each side builds its
//! row hash from its own catalog.
//!
//! The row hash is PostgreSQL's own record hash (`hash_record_extended`) over
//! the row's columns. A column is hashed in its stored form only where the
//! type's hash is exact identity (two values hash alike only if they are the
//! same bytes): integers, booleans, text under the "C" collation, bytea,
//! uuid, dates and times. Every other type is hashed through its text form,
//! because its hash follows its equality (numeric 1.0 = 1.00, interval
//! '1 day' = '24 hours', float -0 = 0), or hashes an OID that differs
//! between clusters (enums), or does not exist (json). Skipping the text
//! form of bytea and TOASTed text is what makes the check cheap: it used to
//! hash `t::text`, which renders every bytea as hex. The record hash is
//! hashed once more so that a sum over rows stays sensitive to values
//! moving between rows.

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
    let stored = hashes_stored_forms(client).await?;
    fingerprint_where(client, table, "true", stored).await
}

/// Whether the server has the record hash (`hash_record_extended`,
/// PostgreSQL 14 and later). Two sides compare fingerprints only when both
/// hash rows the same way: with `stored` false, each row's text form.
pub async fn hashes_stored_forms(client: &Client) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 140000",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the server's version", e))?;
    Ok(row.get(0))
}

/// The fingerprint of the rows `filter` selects; the filter refers to the
/// table as `t`.
pub async fn fingerprint_where(
    client: &Client,
    table: &TableName,
    filter: &str,
    stored: bool,
) -> Result<TableFingerprint> {
    let hash = row_hash(client, table, stored).await?;
    let sql = format!(
        "SELECT count(*)::bigint, coalesce(sum({hash}::numeric), 0)::text \
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

/// Types whose hash function is exact identity, so their stored form can be
/// hashed without rendering it as text.
const HASHED_AS_STORED: &[&str] = &[
    "smallint",
    "integer",
    "bigint",
    "oid",
    "boolean",
    "text",
    "character varying",
    "bytea",
    "uuid",
    "date",
    "timestamp without time zone",
    "timestamp with time zone",
    "time without time zone",
];

/// The expression hashing one row of `table` (aliased `t`), built from the
/// catalog of the database `client` is connected to; without `stored`
/// (a side older than PostgreSQL 14), the hash of the row's text form.
pub async fn row_hash(client: &Client, table: &TableName, stored: bool) -> Result<String> {
    if !stored {
        return Ok("hashtextextended(t::text, 0)".into());
    }
    let columns: Vec<(String, String)> = typed_columns(client, table)
        .await?
        .into_iter()
        .map(|(name, type_name)| (format!("t.{name}"), type_name))
        .collect();
    Ok(row_hash_of(&columns))
}

/// A table's columns in order: quoted name and `format_type(type, NULL)`
/// (what decides how a value is hashed).
pub async fn typed_columns(client: &Client, table: &TableName) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT quote_ident(a.attname), format_type(a.atttypid, NULL) \
             FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the columns of {table}"), e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `expr` as an operand: a column of `t` as it is, anything else in
/// parentheses.
pub(crate) fn operand(expr: &str) -> String {
    let simple = expr.strip_prefix("t.").is_some_and(|name| {
        (name.len() >= 2 && name.starts_with('"') && name.ends_with('"'))
            || (!name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
    });
    if simple {
        expr.to_owned()
    } else {
        format!("({expr})")
    }
}

/// The row hash over (expression over `t`, type name) pairs in order.
pub fn row_hash_of(values: &[(String, String)]) -> String {
    let hashed: Vec<String> = values
        .iter()
        .map(|(expr, type_name)| {
            let value = operand(expr);
            match type_name.as_str() {
                // The column's own collation could make its hash ignore case.
                "text" | "character varying" => format!("{value} COLLATE \"C\""),
                t if HASHED_AS_STORED.contains(&t) => value,
                _ => format!("{value}::text COLLATE \"C\""),
            }
        })
        .collect();
    // The record hash is linear in its columns' hashes (31·h + next), so a
    // sum of record hashes would not see two rows swap a column's values;
    // hashing it once more breaks the linearity. Not `hashint8extended`: it
    // folds 64 bits into 32 first.
    format!(
        "hashtextextended(hash_record_extended(ROW({}), 0)::text, 0)",
        hashed.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_types_are_hashed_as_stored_and_the_rest_as_text() {
        let columns = [
            ("id", "bigint"),
            ("\"Name\"", "text"),
            ("amount", "numeric"),
            ("mood", "mood"),
            ("blob", "bytea"),
            ("doc", "jsonb"),
        ]
        .map(|(c, t)| (format!("t.{c}"), t.to_owned()));
        assert_eq!(
            row_hash_of(&columns),
            "hashtextextended(hash_record_extended(ROW(t.id, t.\"Name\" COLLATE \"C\", \
             t.amount::text COLLATE \"C\", t.mood::text COLLATE \"C\", t.blob, \
             t.doc::text COLLATE \"C\"), 0)::text, 0)"
        );
    }
}
