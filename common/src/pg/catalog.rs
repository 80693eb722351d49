//! Reading the source catalog: which tables to move, their columns and sizes.

use tokio_postgres::Client;

use crate::pgcopy::CopyFormat;
use crate::spec::{JobSpec, TableName};
use crate::{Error, Result};

/// Schemas that are never migrated.
const SYSTEM_SCHEMAS: &str = "('pg_catalog', 'information_schema', 'pg_toast', 'godwit')";

#[derive(Debug, Clone)]
pub struct SourceTable {
    pub name: TableName,
    pub copy_columns: Vec<String>,
    pub bytes: u64,
    pub blocks: u32,
    pub format: CopyFormat,
    /// Where the rows come from when not the table `name` itself.
    pub source_relation: Option<crate::job::SourceRelation>,
    /// Set when the table lands through a mapping: `name` is then the
    /// target table, and this says where its rows come from and which of
    /// the target's rows are the job's.
    pub mapped: Option<Box<crate::mapping::carry::Carried>>,
    /// A foreign key (of any table) references it or a table it is a
    /// partition of: a sampled replay carries it whole.
    pub referenced: bool,
    /// Its rows load once every table of a lower wave is loaded: a key of
    /// the platform's references those tables' rows.
    pub wave: u32,
}

/// Columns whose binary COPY form embeds a database-specific type OID:
/// arrays of user-defined types and composites (directly or through a domain).
const OID_BEARING_COLUMNS: &str = "EXISTS (SELECT 1 FROM pg_attribute a \
        JOIN pg_type t ON t.oid = a.atttypid \
        LEFT JOIN pg_type base ON base.oid = t.typbasetype \
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
          AND ((t.typcategory = 'A' AND t.typelem >= 16384) OR t.typtype = 'c' \
               OR (t.typtype = 'd' AND ((base.typcategory = 'A' AND base.typelem >= 16384) OR base.typtype = 'c'))))";

/// Resolves the spec's table list against the source. Every listed table
/// must exist; the error names each missing one.
pub async fn resolve_tables(client: &Client, spec: &JobSpec) -> Result<Vec<SourceTable>> {
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname, pg_relation_size(c.oid)::bigint, \
                        (pg_relation_size(c.oid) / current_setting('block_size')::bigint)::bigint, \
                        coalesce((SELECT array_agg(quote_ident(a.attname) ORDER BY a.attnum) \
                                  FROM pg_attribute a \
                                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                                    AND a.attgenerated = ''), '{{}}'), \
                        {OID_BEARING_COLUMNS}, \
                        EXISTS (SELECT 1 FROM pg_constraint con WHERE con.contype = 'f' \
                                AND (con.confrelid = c.oid \
                                     OR con.confrelid IN (SELECT relid FROM pg_partition_ancestors(c.oid)))) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' AND n.nspname NOT IN {SYSTEM_SCHEMAS} \
                   AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%' \
                 ORDER BY pg_relation_size(c.oid) DESC, n.nspname, c.relname"
            ),
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the source catalog", e))?;
    let mut all = Vec::with_capacity(rows.len());
    for row in rows {
        let blocks: i64 = row.get(3);
        all.push(SourceTable {
            name: TableName {
                schema: row.get(0),
                name: row.get(1),
            },
            bytes: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            blocks: u32::try_from(blocks).unwrap_or(u32::MAX),
            copy_columns: row.get(4),
            format: if row.get::<_, bool>(5) {
                CopyFormat::Text
            } else {
                CopyFormat::Binary
            },
            source_relation: None,
            mapped: None,
            referenced: row.get(6),
            wave: 0,
        });
    }
    if spec.all_tables() {
        return Ok(all);
    }
    let mut selected = Vec::new();
    let mut missing = Vec::new();
    for entry in &spec.tables {
        let Some(wanted) = TableName::parse(entry) else {
            missing.push(entry.clone());
            continue;
        };
        match all.iter().find(|t| t.name == wanted) {
            Some(table) if !selected.iter().any(|s: &SourceTable| s.name == wanted) => {
                selected.push(table.clone())
            }
            Some(_) => {}
            None => missing.push(wanted.to_string()),
        }
    }
    if !missing.is_empty() {
        return Err(Error::NotFound(format!(
            "table(s) {} listed in `tables` do not exist in the source (or are not ordinary tables); \
             check the names, written as \"schema.table\"",
            missing.join(", ")
        )));
    }
    Ok(selected)
}

/// Extensions the source has installed that the target's server does not
/// offer (`pg_available_extensions`): their restore would fail half-way.
pub async fn extensions_missing_on_target(source: &Client, target: &Client) -> Result<Vec<String>> {
    let installed: Vec<String> = source
        .query_one(
            "SELECT coalesce(array_agg(extname::text ORDER BY extname), '{}') FROM pg_extension",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot list the source's extensions", e))?
        .get(0);
    let offered: Vec<String> = target
        .query_one(
            "SELECT coalesce(array_agg(name::text), '{}') FROM pg_available_extensions \
             WHERE name = ANY($1)",
            &[&installed],
        )
        .await
        .map_err(|e| Error::postgres("cannot list the target's available extensions", e))?
        .get(0);
    Ok(installed
        .into_iter()
        .filter(|name| !offered.contains(name))
        .collect())
}

/// Tables of `tables` that exist in `client`'s database (one query).
pub async fn existing_tables(client: &Client, tables: &[TableName]) -> Result<Vec<TableName>> {
    let quoted: Vec<String> = tables.iter().map(TableName::quoted).collect();
    let present = existing_relations(client, &quoted).await?;
    Ok(tables
        .iter()
        .filter(|t| present.contains(&t.quoted()))
        .cloned()
        .collect())
}

/// The relations of `quoted` (quoted, schema-qualified names) that exist in
/// `client`'s database, in one query.
pub async fn existing_relations(client: &Client, quoted: &[String]) -> Result<Vec<String>> {
    Ok(client
        .query_one(
            "SELECT coalesce(array_agg(x), '{}') FROM unnest($1::text[]) AS x \
             WHERE to_regclass(x) IS NOT NULL",
            &[&quoted],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the catalog", e))?
        .get(0))
}

/// The job's sequences: those its tables own (serial and identity columns)
/// or draw defaults from, and, when the job takes every table, the
/// free-standing ones too. Never another job's or the platform's own.
pub async fn job_sequences(
    client: &Client,
    tables: &[TableName],
    every_table: bool,
) -> Result<Vec<String>> {
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    let rows = client
        .query(
            &format!(
                "WITH job AS (SELECT to_regclass(x) AS oid FROM unnest($1::text[]) AS x) \
                 SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'S' AND n.nspname NOT IN {SYSTEM_SCHEMAS} AND ( \
                   EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                           AND d.objid = c.oid AND d.deptype IN ('a', 'i') \
                           AND d.refobjid IN (SELECT oid FROM job)) \
                   OR EXISTS (SELECT 1 FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid \
                              WHERE d.classid = 'pg_attrdef'::regclass AND d.refobjid = c.oid \
                                AND ad.adrelid IN (SELECT oid FROM job)) \
                   OR ($2 AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                           AND d.objid = c.oid AND d.deptype IN ('a', 'i')))) \
                 ORDER BY 1"
            ),
            &[&names, &every_table],
        )
        .await
        .map_err(|e| Error::postgres("cannot list the job's sequences", e))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The job's sequences (see [`job_sequences`]) with their current state,
/// as seen by the caller's transaction.
pub async fn sequences(
    client: &Client,
    tables: &[TableName],
    every_table: bool,
) -> Result<Vec<(String, i64, bool)>> {
    let names = job_sequences(client, tables, every_table).await?;
    let mut sequences = Vec::with_capacity(names.len());
    for name in names {
        let state = client
            .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
            .await
            .map_err(|e| Error::postgres(format!("cannot read sequence {name}"), e))?;
        sequences.push((name, state.get(0), state.get(1)));
    }
    Ok(sequences)
}

/// Moves each sequence feeding a column of `table` (serial or identity)
/// past the largest value the column holds, never back: ids a mapping
/// offset land above what the platform's sequence would hand out next.
/// Returns the sequences moved with their new value.
pub async fn raise_sequences_past_values(
    target: &Client,
    table: &TableName,
    columns: &[String],
) -> Result<Vec<(String, i64)>> {
    let mut raised = Vec::new();
    for column in columns {
        let row = target
            .query_one(
                "SELECT pg_get_serial_sequence($1, $2)",
                &[&table.quoted(), column],
            )
            .await
            .map_err(|e| {
                Error::postgres(format!("cannot read the sequence of {table}.{column}"), e)
            })?;
        let Some(sequence) = row.get::<_, Option<String>>(0) else {
            continue;
        };
        let moved = target
            .query_opt(
                &format!(
                    "SELECT setval($1::text::regclass, m) FROM (SELECT max({})::bigint AS m FROM {}) AS x, {sequence} AS s \
                     WHERE m IS NOT NULL AND CASE WHEN s.is_called THEN m > s.last_value ELSE m >= s.last_value END",
                    crate::spec::quote_ident(column),
                    // Every row the sequence feeds, a partitioned table's too.
                    table.quoted()
                ),
                &[&sequence],
            )
            .await
            .map_err(|e| Error::postgres(format!("cannot move sequence {sequence} past {table}'s values"), e))?;
        if let Some(row) = moved {
            raised.push((sequence, row.get(0)));
        }
    }
    Ok(raised)
}

/// The value a sequence hands out next, widened so no step overflows.
fn next_value(last_value: i64, is_called: bool, increment: i64) -> i128 {
    if is_called {
        i128::from(last_value) + i128::from(increment)
    } else {
        i128::from(last_value)
    }
}

/// Brings each sequence that exists on the target up to the source's state,
/// never back: once the platform has drawn values on the target (after
/// go-live, or for rows of its own), moving a sequence back would hand out
/// those values again.
pub async fn set_sequences(target: &Client, sequences: &[(String, i64, bool)]) -> Result<()> {
    for (name, last_value, is_called) in sequences {
        let Some(state) = target
            .query_opt(
                "SELECT p.seqincrement FROM pg_sequence p WHERE p.seqrelid = to_regclass($1)",
                &[name],
            )
            .await
            .map_err(|e| Error::postgres("cannot read the target catalog", e))?
        else {
            continue;
        };
        let increment: i64 = state.get(0);
        let current = target
            .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
            .await
            .map_err(|e| {
                Error::postgres(format!("cannot read sequence {name} on the target"), e)
            })?;
        let at_target = next_value(current.get(0), current.get(1), increment);
        let at_source = next_value(*last_value, *is_called, increment);
        let ahead = if increment >= 0 {
            at_source > at_target
        } else {
            at_source < at_target
        };
        if !ahead {
            continue;
        }
        target
            .execute(
                &format!("SELECT setval('{}', $1, $2)", name.replace('\'', "''")),
                &[last_value, is_called],
            )
            .await
            .map_err(|e| Error::postgres(format!("cannot set sequence {name} on the target"), e))?;
    }
    Ok(())
}

/// What the source knows about the values of a table's leading key
/// column, for cutting it into ranges of similar size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDomain {
    /// An integer column: its least and greatest value (two index probes).
    Integer { min: i64, max: i64 },
    /// Any other column: the planner statistics' histogram bounds, in order.
    Histogram(Vec<String>),
    /// No values, or no statistics to cut by.
    Unknown,
}

/// The type (`format_type`) and value domain of `column` (quoted) of `table`.
pub async fn key_domain(
    client: &Client,
    table: &TableName,
    column: &str,
) -> Result<(String, KeyDomain)> {
    let context = || format!("cannot read the key column {column} of {table}");
    let row = client
        .query_one(
            "SELECT format_type(a.atttypid, a.atttypmod), a.atttypid IN (20, 21, 23), \
                    (SELECT s.histogram_bounds::text::text[] FROM pg_stats s \
                     WHERE s.schemaname = $2 AND s.tablename = $3 AND s.attname = a.attname) \
             FROM pg_attribute a \
             WHERE a.attrelid = $1::text::regclass AND quote_ident(a.attname) = $4",
            &[&table.quoted(), &table.schema, &table.name, &column],
        )
        .await
        .map_err(|e| Error::postgres(context(), e))?;
    let type_name: String = row.get(0);
    if row.get::<_, bool>(1) {
        let bounds = client
            .query_one(
                &format!(
                    "SELECT min({column})::bigint, max({column})::bigint FROM {}",
                    table.only()
                ),
                &[],
            )
            .await
            .map_err(|e| Error::postgres(context(), e))?;
        let domain = match (bounds.get(0), bounds.get(1)) {
            (Some(min), Some(max)) => KeyDomain::Integer { min, max },
            _ => KeyDomain::Unknown,
        };
        return Ok((type_name, domain));
    }
    let domain = match row.get::<_, Option<Vec<String>>>(2) {
        Some(bounds) if !bounds.is_empty() => KeyDomain::Histogram(bounds),
        _ => KeyDomain::Unknown,
    };
    Ok((type_name, domain))
}
