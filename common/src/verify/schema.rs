//! The schema layer, and the catalog lookups the other layers share.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::report::{SchemaLayer, SequenceBehind};
use crate::spec::TableName;
use crate::{Error, Result};

pub(super) fn table_filter(tables: &[TableName]) -> Vec<String> {
    tables.iter().map(|t| t.quoted()).collect()
}

/// `kind name` → definition, for the tables' columns, constraints and
/// indexes, and the sequences in their schemas.
async fn schema_objects(client: &Client, tables: &[TableName]) -> Result<BTreeMap<String, String>> {
    let names = table_filter(tables);
    let rows = client
        .query(
            "WITH t AS (SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name \
                        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                        WHERE c.relkind IN ('r', 'p') AND c.oid IN (SELECT to_regclass(x) FROM unnest($1::text[]) AS x)) \
             SELECT 'table ' || t.name, '' FROM t \
             UNION ALL \
             SELECT 'column ' || t.name || '.' || quote_ident(a.attname), \
                    format_type(a.atttypid, a.atttypmod) \
                    || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END \
                    || CASE WHEN a.attgenerated = 's' THEN ' generated ' || pg_get_expr(d.adbin, d.adrelid) ELSE '' END \
             FROM t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             UNION ALL \
             SELECT CASE con.contype WHEN 'p' THEN 'primary key ' WHEN 'u' THEN 'unique constraint ' \
                      WHEN 'c' THEN 'check constraint ' WHEN 'f' THEN 'foreign key ' ELSE 'constraint ' END \
                    || t.name || '.' || quote_ident(con.conname), pg_get_constraintdef(con.oid) \
             FROM t JOIN pg_constraint con ON con.conrelid = t.oid \
             UNION ALL \
             SELECT 'index ' || t.name || '.' || quote_ident(i.relname), \
                    regexp_replace(pg_get_indexdef(i.oid), '^CREATE (UNIQUE )?INDEX \\S+ ON ', '\\1') \
             FROM t JOIN pg_index x ON x.indrelid = t.oid JOIN pg_class i ON i.oid = x.indexrelid",
            &[&names],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the schema catalog", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The job's sequences as the source defines them (see
/// `catalog::job_sequences`), each with its value in `client`'s database.
/// Each sequence's last value (None before its first use) and increment.
async fn sequences(
    client: &Client,
    names: &[String],
) -> Result<BTreeMap<String, (Option<i64>, i64)>> {
    let rows = client
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value, increment_by FROM pg_sequences \
             WHERE format('%I.%I', schemaname, sequencename) = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| Error::postgres("cannot read sequences", e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Compares the schema objects of `tables` and their sequences. With
/// `sync_sequences` (a target session that may write), the target's
/// sequences are set from the source after the source's were read: while
/// changes stream, nothing else carries them, and the application may
/// advance them at any moment, so only this order compares like with like.
pub async fn compare_schema(
    source: &Client,
    target: &Client,
    tables: &[TableName],
    every_table: bool,
    sync_sequences: Option<&Client>,
) -> Result<SchemaLayer> {
    let mut at_source = schema_objects(source, tables).await?;
    let mut at_target = schema_objects(target, tables).await?;
    for key in crate::pg::replica::altered_keys(target).await? {
        let name = format!("foreign key {}.{}", key.table, key.quoted_name);
        // Deferrable, without actions or not yet validated only while
        // changes stream and just after: compared as it is put back.
        if let Some(definition) = at_target.get_mut(&name) {
            let restored = key
                .restored_as
                .as_deref()
                .unwrap_or(definition)
                .trim_end_matches(" NOT VALID");
            *definition = if key.made_deferrable {
                restored.trim_end_matches(" DEFERRABLE")
            } else {
                restored
            }
            .to_owned();
        }
        if let Some(definition) = at_source.get_mut(&name) {
            *definition = definition.trim_end_matches(" NOT VALID").to_owned();
        }
    }
    let mut layer = SchemaLayer::default();
    for (name, definition) in &at_source {
        match at_target.get(name) {
            None => layer.missing_on_target.push(name.clone()),
            Some(other) if other != definition => layer.different.push(name.clone()),
            Some(_) => {}
        }
    }
    layer.extra_on_target = at_target
        .keys()
        .filter(|name| !at_source.contains_key(*name))
        .cloned()
        .collect();
    let job_sequences = crate::pg::catalog::job_sequences(source, tables, every_table).await?;
    let source_sequences = sequences(source, &job_sequences).await?;
    if let Some(writer) = sync_sequences {
        let current = crate::pg::catalog::sequences(source, tables, every_table).await?;
        crate::pg::catalog::set_sequences(writer, &current).await?;
    }
    let target_sequences = sequences(target, &job_sequences).await?;
    for (name, (value, increment)) in &source_sequences {
        let there = target_sequences.get(name).and_then(|(v, _)| *v);
        // Behind means not yet as far along as the source, in the
        // sequence's own direction.
        let behind = match (value, there) {
            (Some(v), Some(t)) if *increment < 0 => t > *v,
            (Some(v), Some(t)) => t < *v,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !target_sequences.contains_key(name) {
            layer.missing_on_target.push(format!("sequence {name}"));
        } else if behind {
            layer.sequences_behind.push(SequenceBehind {
                sequence: name.clone(),
                source: *value,
                target: there,
            });
        }
    }
    layer.matched = layer.missing_on_target.is_empty()
        && layer.extra_on_target.is_empty()
        && layer.different.is_empty()
        && layer.sequences_behind.is_empty();
    Ok(layer)
}

/// Quoted primary-key columns of a table, in key order; empty without one.
pub async fn primary_key(client: &Client, table: &TableName) -> Result<Vec<String>> {
    let row = client
        .query_one(
            "SELECT coalesce(array_agg(quote_ident(a.attname) ORDER BY k.ord), '{}') \
             FROM pg_index x \
             CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum \
             WHERE x.indrelid = $1::text::regclass AND x.indisprimary",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the primary key of {table}"), e))?;
    Ok(row.get(0))
}

/// A table's primary key: each column's name (unquoted) and its type as
/// SQL, in the key's order; empty when it has none.
pub async fn primary_key_types(
    client: &Client,
    table: &TableName,
) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_index x \
             CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum \
             WHERE x.indrelid = $1::text::regclass AND x.indisprimary ORDER BY k.ord",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the primary key of {table}"), e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
