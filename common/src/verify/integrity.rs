//! Referential integrity of the target: orphan rows per foreign key, for
//! tables copied as they are and for the slices of mapped tables.

use tokio_postgres::Client;

use super::report::ForeignKeyReport;
use super::schema::table_filter;
use crate::spec::{TableName, quote_ident};
use crate::{Error, Result};

/// Foreign keys of the tables as the source defines them, with the number
/// of target rows whose reference finds no row there (the target may lack
/// the constraint itself: the schema layer reports that).
pub async fn orphans(
    source: &Client,
    target: &Client,
    tables: &[TableName],
) -> Result<Vec<ForeignKeyReport>> {
    let names = table_filter(tables);
    let rows = source
        .query(
            "SELECT quote_ident(con.conname), format('%I.%I', n.nspname, c.relname), \
                    (SELECT format('%I.%I', pn.nspname, pc.relname) FROM pg_class pc \
                     JOIN pg_namespace pn ON pn.oid = pc.relnamespace WHERE pc.oid = con.confrelid), \
                    (SELECT array_agg(quote_ident(a.attname) ORDER BY k.ord) FROM unnest(con.conkey) WITH ORDINALITY k(n, ord) \
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n), \
                    (SELECT array_agg(quote_ident(a.attname) ORDER BY k.ord) FROM unnest(con.confkey) WITH ORDINALITY k(n, ord) \
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n), \
                    (SELECT pc.relkind = 'p' FROM pg_class pc WHERE pc.oid = con.confrelid) \
             FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE con.contype = 'f' AND c.oid IN (SELECT to_regclass(x) FROM unnest($1::text[]) AS x) \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint up \
                               WHERE up.oid = con.conparentid AND up.conrelid = con.conrelid) \
             ORDER BY 2, 1",
            &[&names],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the source's foreign keys", e))?;
    let mut reports = Vec::new();
    for row in rows {
        let (name, child, parent): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let (from, to): (Vec<String>, Vec<String>) = (row.get(3), row.get(4));
        // A key referencing a partitioned table finds its rows in the
        // partitions; any other table holds its own rows only (an
        // inheritance parent's key does not cover its children).
        let referenced_partitioned: bool = row.get(5);
        // A table missing on the target is the schema layer's finding;
        // its references cannot be checked.
        let on_target: bool = target
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
                &[&child, &parent],
            )
            .await
            .map_err(|e| Error::postgres("cannot look up tables on the target", e))?
            .get(0);
        if !on_target {
            continue;
        }
        let parent_rows = if referenced_partitioned {
            parent.clone()
        } else {
            format!("ONLY {parent}")
        };
        let sql = orphans_sql(&format!("ONLY {child}"), &parent_rows, (&from, &to));
        let count: i64 = target
            .query_one(&sql, &[])
            .await
            .map_err(|e| Error::postgres(format!("cannot count orphans of {name} on {child}"), e))?
            .get(0);
        reports.push(ForeignKeyReport {
            constraint: name,
            table: child,
            orphans: u64::try_from(count).unwrap_or(0),
        });
    }
    Ok(reports)
}

/// Counts the rows of `child_rows` whose non-null reference (`from`,
/// quoted) finds no row of `parent_rows` (by `to`, quoted).
fn orphans_sql(child_rows: &str, parent_rows: &str, (from, to): (&[String], &[String])) -> String {
    let not_null = from
        .iter()
        .map(|c| format!("c.{c} IS NOT NULL"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let joined = from
        .iter()
        .zip(to)
        .map(|(f, t)| format!("p.{t} = c.{f}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "SELECT count(*) FROM {child_rows} AS c WHERE {not_null} \
         AND NOT EXISTS (SELECT 1 FROM {parent_rows} AS p WHERE {joined})"
    )
}

/// For each foreign key a mapped table's source holds: the rows of the
/// job's slice whose reference, as landed (renamed, offset), finds no row
/// in the referenced table's slice (or in the table itself, where it
/// landed under its own name). A reference whose columns are not all
/// carried is not checked; neither is one to a table the target lacks.
pub async fn mapped_orphans(
    target: &Client,
    mapped: &[&crate::mapping::carry::Carried],
) -> Result<Vec<ForeignKeyReport>> {
    let mut reports = Vec::new();
    for child in mapped {
        for (columns, parent, parent_columns) in &child.references {
            let from: Option<Vec<&str>> = columns.iter().map(|c| child.target_of(c)).collect();
            let landed_parent = mapped.iter().find(|m| &m.source == parent);
            let (parent_table, parent_slice, to) = match landed_parent {
                Some(p) => (
                    p.target.clone(),
                    p.views.1.slice.clone(),
                    parent_columns
                        .iter()
                        .map(|c| p.target_of(c))
                        .collect::<Option<Vec<&str>>>(),
                ),
                None => (
                    parent.clone(),
                    "true".to_owned(),
                    Some(parent_columns.iter().map(String::as_str).collect()),
                ),
            };
            let (Some(from), Some(to)) = (from, to) else {
                continue;
            };
            let present: bool = target
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&parent_table.quoted()],
                )
                .await
                .map_err(|e| Error::postgres("cannot look up tables on the target", e))?
                .get(0);
            if !present {
                continue;
            }
            let quoted = |columns: &[&str]| -> Vec<String> {
                columns.iter().map(|c| quote_ident(c)).collect()
            };
            let sql = orphans_sql(
                &format!(
                    "(SELECT * FROM {} AS t WHERE {})",
                    child.target.quoted(),
                    child.views.1.slice
                ),
                &format!(
                    "(SELECT * FROM {} AS t WHERE {parent_slice})",
                    parent_table.quoted()
                ),
                (&quoted(&from), &quoted(&to)),
            );
            let count: i64 = target
                .query_one(&sql, &[])
                .await
                .map_err(|e| {
                    Error::postgres(
                        format!("cannot count orphans of {} on the target", child.target),
                        e,
                    )
                })?
                .get(0);
            reports.push(ForeignKeyReport {
                constraint: format!(
                    "{} ({}) → {parent} ({}), as landed in {} ({}) → {parent_table} ({})",
                    child.source,
                    columns.join(", "),
                    parent_columns.join(", "),
                    child.target,
                    from.join(", "),
                    to.join(", ")
                ),
                table: child.target.to_string(),
                orphans: u64::try_from(count).unwrap_or(0),
            });
        }
    }
    Ok(reports)
}
