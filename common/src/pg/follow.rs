//! Schema changes the change stream follows. pgoutput describes a table
//! again (a relation message) after its columns change, and the stream
//! brings the target along in the same transaction as the changes that need
//! it, when that is exact:
//! - a column the source added: existing rows hold what PostgreSQL stored as
//!   the column's missing value when it was added (the default evaluated
//!   once), or NULL; the target's existing rows are given the same;
//! - a column the source dropped: dropped on the target too.
//!
//! Each is made on the topmost table of the inheritance or partition tree
//! that has the column, as the source's own recursive statement did.
//! Anything else (a generated or identity column added, a default that
//! filled each row with its own value, a column renamed, a type changed)
//! stops the stream with an error naming the table, the column and the
//! statement to run, because following it otherwise would make the
//! target's existing rows differ silently.

use std::collections::HashMap;

use tokio_postgres::{Client, GenericClient};

use super::pgoutput::Relation;
use crate::spec::{TableName, quote_ident, quote_literal};
use crate::{Error, Result};

/// A target column as the stream needs it.
#[derive(Debug, Clone)]
pub(super) struct TargetAttribute {
    pub type_sql: String,
    /// `GENERATED ALWAYS AS IDENTITY`: written only with OVERRIDING SYSTEM VALUE.
    pub always_identity: bool,
    /// Generated columns are computed by the target and never streamed.
    pub generated: bool,
}

/// Column name → attribute of a target table.
pub(super) async fn target_columns(
    tx: &Client,
    name: &TableName,
) -> Result<HashMap<String, TargetAttribute>> {
    let rows = tx
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity = 'a', \
                    a.attgenerated <> '' \
             FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&name.quoted()],
        )
        .await
        .map_err(|e| {
            Error::postgres(
                format!("cannot read the columns of {name} on the target"),
                e,
            )
        })?;
    Ok(rows
        .iter()
        .map(|r| {
            let attribute = TargetAttribute {
                type_sql: r.get(1),
                always_identity: r.get(2),
                generated: r.get(3),
            };
            (r.get(0), attribute)
        })
        .collect())
}

/// Brings the target's `table` to the columns `relation` describes, as far
/// as that is exact; returns whether the target changed.
pub(super) async fn follow_relation(
    source: &Client,
    target: &Client,
    table: &TableName,
    relation: &Relation,
    columns: &HashMap<String, TargetAttribute>,
) -> Result<bool> {
    let added: Vec<&str> = relation
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .filter(|c| !columns.contains_key(*c))
        .collect();
    let mut removed: Vec<&str> = columns
        .iter()
        .filter(|(name, a)| !a.generated && !relation.columns.iter().any(|c| &c.name == *name))
        .map(|(name, _)| name.as_str())
        .collect();
    removed.sort_unstable();
    if !added.is_empty() && !removed.is_empty() {
        return Err(Error::Precondition(format!(
            "the source renamed or replaced column(s) {} of {table} (it now has {}): the stream cannot \
             tell a rename from a drop and an add; run the same ALTER TABLE on the target (RENAME COLUMN, \
             or DROP COLUMN and ADD COLUMN), make the rows match (godwit verify shows where they differ), \
             then migrate again",
            removed.join(", "),
            added.join(", ")
        )));
    }
    changed_types(source, table, relation, columns).await?;
    for column in &added {
        add_column(source, target, table, column).await?;
    }
    for column in &removed {
        drop_column(source, target, table, column).await?;
    }
    Ok(!added.is_empty() || !removed.is_empty())
}

/// A column whose type differs between the stream and the target: its
/// values may have been rewritten on the source (`USING`, a narrower
/// scale), which the stream never sees, so it is never followed.
async fn changed_types(
    source: &Client,
    table: &TableName,
    relation: &Relation,
    columns: &HashMap<String, TargetAttribute>,
) -> Result<()> {
    let oids: Vec<u32> = relation.columns.iter().map(|c| c.type_oid).collect();
    let modifiers: Vec<i32> = relation.columns.iter().map(|c| c.type_modifier).collect();
    let source_types: Vec<String> = source
        .query(
            "SELECT format_type(t, m) FROM unnest($1::oid[], $2::int[]) WITH ORDINALITY AS u(t, m, i) \
             ORDER BY i",
            &[&oids, &modifiers],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the column types of {table} on the source"), e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (column, source_type) in relation.columns.iter().zip(&source_types) {
        let Some(target) = columns.get(&column.name) else {
            continue;
        };
        if &target.type_sql != source_type {
            return Err(Error::Precondition(format!(
                "the source changed the type of column {} of {table} from {} to {source_type}, which the \
                 stream cannot follow exactly (the source may have rewritten its values); run ALTER TABLE \
                 {} ALTER COLUMN {} TYPE {source_type} on the target with the source's USING clause, make \
                 the rows match (godwit verify shows where they differ), then migrate again",
                column.name,
                target.type_sql,
                table.quoted(),
                quote_ident(&column.name)
            )));
        }
    }
    Ok(())
}

/// The topmost table of `table`'s inheritance or partition tree (itself
/// included) that has `column`: where a recursive statement was made.
async fn topmost_with_column(
    client: &impl GenericClient,
    table: &TableName,
    column: &str,
) -> Result<Option<TableName>> {
    let row = client
        .query_opt(
            "WITH RECURSIVE up(relid, depth) AS ( \
                 SELECT to_regclass($1)::oid, 0 \
                 UNION SELECT i.inhparent, up.depth + 1 FROM pg_inherits i JOIN up ON i.inhrelid = up.relid) \
             SELECT n.nspname, c.relname FROM up \
             JOIN pg_class c ON c.oid = up.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = up.relid AND a.attname = $2 \
                           AND NOT a.attisdropped) \
             ORDER BY up.depth DESC LIMIT 1",
            &[&table.quoted(), &column],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the tables {table} inherits from"), e))?;
    Ok(row.map(|row| TableName {
        schema: row.get(0),
        name: row.get(1),
    }))
}

/// Adds `column` of `table` to the target as the source defines it now,
/// with the value the source's existing rows hold.
async fn add_column(
    source: &Client,
    target: &Client,
    table: &TableName,
    column: &str,
) -> Result<()> {
    let row = source
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid), \
                    a.attnotnull, a.attgenerated <> '' OR a.attidentity <> '', \
                    (SELECT collname FROM pg_collation c WHERE c.oid = a.attcollation \
                       AND a.attcollation <> (SELECT typcollation FROM pg_type WHERE oid = a.atttypid)), \
                    a.atthasmissing, (a.attmissingval::text::text[])[1] \
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped",
            &[&table.quoted(), &column],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read column {column} of {table} on the source"), e))?;
    let Some(row) = row else {
        return Err(Error::Precondition(format!(
            "the source added column {column} to {table} and has dropped it again since: add it on the \
             target by hand as it was, then migrate again"
        )));
    };
    let (type_sql, default, not_null, computed, collation): (
        String,
        Option<String>,
        bool,
        bool,
        Option<String>,
    ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    // Rows that existed when the column was added hold the default as it
    // was evaluated then (PostgreSQL keeps it as the missing value); with
    // no missing value, they hold NULL unless a default filled each row.
    let existing_rows: Option<Option<String>> = row.get::<_, bool>(5).then(|| row.get(6));
    let owner = topmost_with_column(source, table, column)
        .await?
        .unwrap_or_else(|| table.clone());
    let mut statement = format!(
        "ALTER TABLE {} ADD COLUMN {} {type_sql}",
        owner.quoted(),
        quote_ident(column)
    );
    if let Some(collation) = collation {
        statement.push_str(&format!(" COLLATE {}", quote_ident(&collation)));
    }
    let as_source = format!(
        "{statement}{}{}",
        default
            .as_deref()
            .map(|d| format!(" DEFAULT {d}"))
            .unwrap_or_default(),
        if not_null { " NOT NULL" } else { "" }
    );
    if computed || (default.is_some() && existing_rows.is_none()) {
        return Err(Error::Precondition(format!(
            "the source added column {column} to {table}, which cannot be followed exactly (a generated or \
             identity column, or a default that gave each existing row its own value, fills rows with values \
             the stream never sees): run {as_source} on the target, make the existing rows match (godwit \
             verify shows where they differ), then migrate again"
        )));
    }
    if let Some(Some(value)) = &existing_rows {
        statement.push_str(&format!(" DEFAULT {}::{type_sql}", quote_literal(value)));
    }
    if not_null {
        statement.push_str(" NOT NULL");
    }
    let column_sql = quote_ident(column);
    statement.push_str(&match &default {
        Some(default) => format!(
            "; ALTER TABLE {} ALTER COLUMN {column_sql} SET DEFAULT {default}",
            owner.quoted()
        ),
        None => format!(
            "; ALTER TABLE {} ALTER COLUMN {column_sql} DROP DEFAULT",
            owner.quoted()
        ),
    });
    run_followed(target, &statement).await?;
    tracing::warn!(table = %owner, column, "followed a column the source added");
    Ok(())
}

/// Drops `column` of `table` on the target once the source no longer has it.
async fn drop_column(
    source: &Client,
    target: &Client,
    table: &TableName,
    column: &str,
) -> Result<()> {
    if topmost_with_column(source, table, column).await?.is_some() {
        return Err(Error::Precondition(format!(
            "the source stopped sending column {column} of {table} but still has it: run the same ALTER \
             TABLE on the target as on the source, then migrate again"
        )));
    }
    let owner = topmost_with_column(target, table, column)
        .await?
        .unwrap_or_else(|| table.clone());
    let statement = format!(
        "ALTER TABLE {} DROP COLUMN {}",
        owner.quoted(),
        quote_ident(column)
    );
    run_followed(target, &statement).await?;
    tracing::warn!(table = %owner, column, "followed a column the source dropped");
    Ok(())
}

async fn run_followed(target: &Client, statement: &str) -> Result<()> {
    target.batch_execute(statement).await.map_err(|e| {
        Error::postgres(
            format!("cannot follow the source: {statement} failed on the target"),
            e,
        )
    })
}
