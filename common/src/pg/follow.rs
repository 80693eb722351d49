//! Schema changes the change stream follows. pgoutput describes a table
//! again (a relation message) after its columns change; a column the source
//! added that the target lacks is added to the target in the same
//! transaction as the changes that need it, when that is exact: the
//! source column has no default (existing rows are NULL on both sides) or a
//! constant one (existing rows take it on both sides), and is neither
//! generated nor an identity. Anything else stops the stream with an error
//! naming the table, the column and the statement to run, because adding it
//! otherwise would make the target's existing rows differ silently.

use tokio_postgres::{Client, Transaction};

use crate::spec::{TableName, quote_ident};
use crate::{Error, Result};

/// Adds `column` of `table` to the target as the source defines it now.
pub async fn add_column(
    source: &Client,
    target: &Transaction<'_>,
    table: &TableName,
    column: &str,
) -> Result<()> {
    let row = source
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid), \
                    a.attnotnull, a.attgenerated <> '' OR a.attidentity <> '', \
                    (SELECT collname FROM pg_collation c WHERE c.oid = a.attcollation \
                       AND a.attcollation <> (SELECT typcollation FROM pg_type WHERE oid = a.atttypid)) \
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped",
            &[&table.quoted(), &column],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read column {column} of {table} on the source"), e))?;
    let Some(row) = row else {
        return Err(Error::Catalog(format!(
            "the source added column {column} to {table} and has dropped it again since: add it on the \
             target by hand as it was, then run the job again"
        )));
    };
    let (type_sql, default, not_null, computed, collation): (
        String,
        Option<String>,
        bool,
        bool,
        Option<String>,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let mut statement = format!(
        "ALTER TABLE ONLY {} ADD COLUMN {} {type_sql}",
        table.quoted(),
        quote_ident(column)
    );
    if let Some(collation) = collation {
        statement.push_str(&format!(" COLLATE {}", quote_ident(&collation)));
    }
    if let Some(default) = &default {
        statement.push_str(&format!(" DEFAULT {default}"));
    }
    if not_null {
        statement.push_str(" NOT NULL");
    }
    if computed || default.as_deref().is_some_and(|d| !is_constant(d)) {
        return Err(Error::Catalog(format!(
            "the source added column {column} to {table}, which cannot be followed exactly (a generated, \
             identity or non-constant default fills existing rows with values the stream never sees): run \
             {statement} on the target as the source has it, make the existing rows match (godwit verify \
             shows where they differ), then run the job again"
        )));
    }
    target.batch_execute(&statement).await.map_err(|e| {
        Error::postgres(
            format!("cannot follow the source: {statement} failed on the target"),
            e,
        )
    })?;
    tracing::warn!(table = %table, column, "followed a column the source added");
    Ok(())
}

/// A default that is one literal (`'x'::text`, `42`, `true`, `NULL::integer`):
/// every existing row takes the same value on both sides.
fn is_constant(default: &str) -> bool {
    let literal = default.split("::").next().unwrap_or(default).trim();
    let quoted = literal.len() >= 2 && literal.starts_with('\'') && literal.ends_with('\'');
    let bare = literal
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        || ["true", "false", "NULL"].contains(&literal);
    (quoted || bare) && !literal.is_empty() && !default.contains('(')
}

#[cfg(test)]
mod tests {
    use super::is_constant;

    #[test]
    fn only_single_literals_are_constant_defaults() {
        for constant in [
            "42",
            "-1.5",
            "'x'::text",
            "true",
            "NULL::integer",
            "'{}'::jsonb",
        ] {
            assert!(is_constant(constant), "{constant}");
        }
        for volatile in [
            "now()",
            "nextval('s'::regclass)",
            "gen_random_uuid()",
            "(1 + 2)",
        ] {
            assert!(!is_constant(volatile), "{volatile}");
        }
    }
}
