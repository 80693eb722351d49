//! Referential integrity of the target: orphan rows per foreign key.

use tokio_postgres::Client;

use super::report::ForeignKeyReport;
use super::schema::table_filter;
use crate::spec::TableName;
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
        let not_null = from
            .iter()
            .map(|c| format!("c.{c} IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let joined = from
            .iter()
            .zip(&to)
            .map(|(f, t)| format!("p.{t} = c.{f}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let parent_rows = if referenced_partitioned {
            parent.clone()
        } else {
            format!("ONLY {parent}")
        };
        let sql = format!(
            "SELECT count(*) FROM ONLY {child} AS c WHERE {not_null} \
             AND NOT EXISTS (SELECT 1 FROM {parent_rows} AS p WHERE {joined})"
        );
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
