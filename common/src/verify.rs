//! Verification of a target against its source that is independent of the
//! copy path: everything is computed by the two databases from their tables
//! and catalogs, nothing from what the copier staged or recorded. Four
//! layers, reported separately: schema, row counts, content (per key
//! bucket, narrowed down to the differing primary keys) and referential
//! integrity of the target.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::chunk::{self, ChunkId};
use crate::keys::DataKey;
use crate::pg::checksum::fingerprint_where;
use crate::spec::{JobSpec, TableName};
use crate::staging::{ObjectPath, Staging};
use crate::state::{KeyRange, VerifyRun};
use crate::{Error, Result};

/// Buckets per narrowing level: rows are spread over them by a hash of
/// their primary key, and each level only looks into the buckets that
/// differed at the level before.
const BUCKETS: i64 = 1024;
/// Rows (the larger side) at or below which the differing buckets are
/// compared row by row, unless [`Options`] says otherwise.
pub const ROW_LEVEL_LIMIT: i64 = 20_000;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Differing buckets holding at most this many rows are compared row
    /// by row; larger ones are split further first.
    pub compare_rows_below: i64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            compare_rows_below: ROW_LEVEL_LIMIT,
        }
    }
}
const MAX_LEVELS: i32 = 6;
/// Differences listed per table; beyond it the report says how many more.
const LISTED_PER_TABLE: usize = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub job: String,
    /// When the comparison ended, milliseconds since the Unix epoch.
    pub verified_at_unix_ms: u64,
    pub matched: bool,
    pub schema: SchemaLayer,
    pub tables: Vec<TableReport>,
    pub foreign_keys: Vec<ForeignKeyReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SchemaLayer {
    pub matched: bool,
    /// `kind name`, present on the source only.
    pub missing_on_target: Vec<String>,
    /// `kind name`, present on the target only.
    pub extra_on_target: Vec<String>,
    /// `kind name`, defined differently on the two sides.
    pub different: Vec<String>,
    pub sequences_behind: Vec<SequenceBehind>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SequenceBehind {
    pub sequence: String,
    pub source: Option<i64>,
    pub target: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableReport {
    pub table: String,
    pub source_rows: u64,
    pub target_rows: Option<u64>,
    pub counts_match: bool,
    /// Key ranges the content was compared in, each leased to a worker
    /// (1 for a table without primary key; 0 when not compared).
    #[serde(default)]
    pub ranges: usize,
    pub content: ContentLayer,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContentLayer {
    pub matched: bool,
    /// `primary_key_buckets` or `whole_table`.
    pub method: String,
    /// Why rows cannot be named, when they cannot.
    pub localisation: Option<String>,
    /// Primary keys (as row literals) of rows missing from the target.
    pub missing: Vec<String>,
    /// Primary keys of rows only the target has.
    pub extra: Vec<String>,
    /// Rows present on both sides whose columns differ: names, never values.
    pub different: Vec<RowDifference>,
    /// Differences found beyond those listed.
    pub unlisted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowDifference {
    pub key: String,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForeignKeyReport {
    pub constraint: String,
    pub table: String,
    pub orphans: u64,
}

impl Report {
    /// A readable summary, one line per finding.
    pub fn summary(&self) -> String {
        let mut out = Vec::new();
        let verdict = if self.matched { "MATCH" } else { "DIFFERENT" };
        out.push(format!("verification of job {}: {verdict}", self.job));
        let s = &self.schema;
        if s.matched {
            out.push("schema: identical".into());
        } else {
            for o in &s.missing_on_target {
                out.push(format!("schema: {o} missing on the target"));
            }
            for o in &s.extra_on_target {
                out.push(format!("schema: {o} only on the target"));
            }
            for o in &s.different {
                out.push(format!("schema: {o} defined differently"));
            }
            for b in &s.sequences_behind {
                let value = |v: Option<i64>| v.map_or("unset".to_owned(), |v| v.to_string());
                out.push(format!(
                    "schema: sequence {} behind the source (source {}, target {})",
                    b.sequence,
                    value(b.source),
                    value(b.target)
                ));
            }
        }
        for t in &self.tables {
            let counts = match t.target_rows {
                Some(n) => format!("{} rows at the source, {n} at the target", t.source_rows),
                None => format!(
                    "{} rows at the source, table missing at the target",
                    t.source_rows
                ),
            };
            let content = if t.content.matched && t.content.method == "whole_table" {
                "content identical (compared as a whole table)".to_owned()
            } else if t.content.matched {
                let plural = if t.ranges == 1 { "" } else { "s" };
                format!("content identical ({} key range{plural})", t.ranges)
            } else {
                let c = &t.content;
                let mut parts = Vec::new();
                if !c.missing.is_empty() {
                    parts.push(format!("missing keys {}", c.missing.join(" ")));
                }
                if !c.extra.is_empty() {
                    parts.push(format!("extra keys {}", c.extra.join(" ")));
                }
                for d in &c.different {
                    parts.push(format!("key {} differs in {}", d.key, d.columns.join(", ")));
                }
                if c.unlisted > 0 {
                    parts.push(format!("{} more differences not listed", c.unlisted));
                }
                if let Some(why) = &c.localisation {
                    parts.push(why.clone());
                }
                format!("content DIFFERENT: {}", parts.join("; "))
            };
            out.push(format!("{}: {counts}; {content}", t.table));
        }
        for fk in &self.foreign_keys {
            if fk.orphans > 0 {
                out.push(format!(
                    "foreign key {} on {}: {} orphan rows on the target",
                    fk.constraint, fk.table, fk.orphans
                ));
            }
        }
        if self.foreign_keys.iter().all(|fk| fk.orphans == 0) {
            out.push(format!(
                "referential integrity: {} foreign keys hold on the target",
                self.foreign_keys.len()
            ));
        }
        out.join("\n")
    }
}

/// Whether everything matched: schema, counts, content and foreign keys.
pub fn all_matched(
    schema: &SchemaLayer,
    tables: &[TableReport],
    foreign_keys: &[ForeignKeyReport],
) -> bool {
    schema.matched
        && tables.iter().all(|t| t.counts_match && t.content.matched)
        && foreign_keys.iter().all(|fk| fk.orphans == 0)
}

/// What one range (or a whole table without primary key) held on each side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RangeFinding {
    pub source_rows: u64,
    pub target_rows: u64,
    pub content: ContentLayer,
}

/// Compares the rows of `table` in `keys` (the whole table when None: it
/// has no primary key) on both databases, narrowing any difference down to
/// primary keys. Both clients must have the session settings of
/// [`crate::pg::connect`]: the text forms compared depend on them.
pub async fn compare_range(
    source: &Client,
    target: &Client,
    table: &TableName,
    keys: Option<&KeyRange>,
    options: Options,
) -> Result<RangeFinding> {
    let scope = keys.map_or_else(|| "true".to_owned(), |k| k.predicate("t"));
    // Both databases read at once: each side is one scan of the range.
    let (at_source, at_target) = tokio::try_join!(
        fingerprint_where(source, table, &scope),
        fingerprint_where(target, table, &scope)
    )?;
    let method = method(keys);
    let content = if at_source == at_target {
        ContentLayer {
            matched: true,
            method: method.into(),
            ..ContentLayer::default()
        }
    } else if keys.is_none() {
        ContentLayer {
            matched: false,
            method: method.into(),
            localisation: Some(
                "the table has no primary key: the rows that differ cannot be named, only that the table differs"
                    .into(),
            ),
            ..ContentLayer::default()
        }
    } else {
        let key = primary_key(source, table).await?;
        localise(source, target, table, &key, &scope, options).await?
    };
    Ok(RangeFinding {
        source_rows: at_source.rows,
        target_rows: at_target.rows,
        content,
    })
}

/// How a range's content is compared: by key buckets, or as a whole
/// table (no primary key).
pub fn method(keys: Option<&KeyRange>) -> &'static str {
    if keys.is_some() {
        "primary_key_buckets"
    } else {
        "whole_table"
    }
}

/// One table's report from the findings of all its ranges.
pub fn merge_table(table: &TableName, findings: Vec<RangeFinding>) -> TableReport {
    let mut content = ContentLayer {
        matched: true,
        ..ContentLayer::default()
    };
    let (mut source_rows, mut target_rows) = (0, 0);
    let mut listed = 0usize;
    let ranges = findings.len();
    for finding in findings {
        source_rows += finding.source_rows;
        target_rows += finding.target_rows;
        let part = finding.content;
        content.matched &= part.matched;
        if content.method.is_empty() {
            content.method = part.method;
        }
        if let Some(why) = part.localisation
            && content.localisation.as_ref() != Some(&why)
        {
            content.localisation = Some(why);
        }
        content.unlisted += part.unlisted;
        let room = |listed: &mut usize, n: usize| {
            let taken = n.min(LISTED_PER_TABLE.saturating_sub(*listed));
            *listed += taken;
            taken
        };
        let take = room(&mut listed, part.missing.len());
        content.unlisted += (part.missing.len() - take) as u64;
        content.missing.extend(part.missing.into_iter().take(take));
        let take = room(&mut listed, part.extra.len());
        content.unlisted += (part.extra.len() - take) as u64;
        content.extra.extend(part.extra.into_iter().take(take));
        let take = room(&mut listed, part.different.len());
        content.unlisted += (part.different.len() - take) as u64;
        content
            .different
            .extend(part.different.into_iter().take(take));
    }
    TableReport {
        table: table.to_string(),
        source_rows,
        target_rows: Some(target_rows),
        counts_match: source_rows == target_rows,
        ranges,
        content,
    }
}

/// The report of a table the target lacks altogether.
pub async fn absent_table(source: &Client, table: &TableName) -> Result<TableReport> {
    let at_source = fingerprint_where(source, table, "true").await?;
    Ok(TableReport {
        table: table.to_string(),
        source_rows: at_source.rows,
        target_rows: None,
        counts_match: false,
        ranges: 0,
        content: ContentLayer {
            method: "whole_table".into(),
            localisation: Some("the table is missing on the target".into()),
            ..ContentLayer::default()
        },
    })
}

fn table_filter(tables: &[TableName]) -> Vec<String> {
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

async fn sequences(client: &Client, tables: &[TableName]) -> Result<BTreeMap<String, Option<i64>>> {
    let schemas: Vec<String> = tables
        .iter()
        .map(|t| t.schema.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = client
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences \
             WHERE schemaname = ANY($1)",
            &[&schemas],
        )
        .await
        .map_err(|e| Error::postgres("cannot read sequences", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub async fn compare_schema(
    source: &Client,
    target: &Client,
    tables: &[TableName],
) -> Result<SchemaLayer> {
    let at_source = schema_objects(source, tables).await?;
    let at_target = schema_objects(target, tables).await?;
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
    let source_sequences = sequences(source, tables).await?;
    let target_sequences = sequences(target, tables).await?;
    for (name, value) in &source_sequences {
        let there = target_sequences.get(name).copied().flatten();
        let behind = match (value, there) {
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

/// Quoted names of a table's columns, in order.
async fn columns(client: &Client, table: &TableName) -> Result<Vec<String>> {
    let row = client
        .query_one(
            "SELECT coalesce(array_agg(quote_ident(attname) ORDER BY attnum), '{}') FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the columns of {table}"), e))?;
    Ok(row.get(0))
}

pub async fn exists(client: &Client, table: &TableName) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.quoted()])
        .await
        .map_err(|e| Error::postgres(format!("cannot look up {table}"), e))?;
    Ok(row.get(0))
}

/// (count, checksum) per bucket of the rows `filter` selects.
async fn bucket_sums(
    client: &Client,
    table: &TableName,
    key: &str,
    level: i32,
    filter: &str,
) -> Result<HashMap<i64, (i64, String)>> {
    let sql = format!(
        "SELECT hashtextextended(ROW({key})::text, {level}) & {mask}, count(*), \
                sum(hashtextextended(t::text, 0)::numeric)::text \
         FROM {table} AS t WHERE {filter} GROUP BY 1",
        mask = BUCKETS - 1,
        table = table.quoted()
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot checksum the key buckets of {table}"), e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Key literal → per-column hashes (None for NULL) of the rows `filter` selects.
async fn row_hashes(
    client: &Client,
    table: &TableName,
    key: &str,
    columns: &[String],
    filter: &str,
) -> Result<HashMap<String, Vec<Option<i64>>>> {
    let hashes: Vec<String> = columns
        .iter()
        .map(|c| format!("hashtextextended(t.{c}::text, 0)"))
        .collect();
    let sql = format!(
        "SELECT ROW({key})::text, ARRAY[{}]::bigint[] FROM {} AS t WHERE {filter}",
        hashes.join(", "),
        table.quoted()
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot read the differing rows of {table}"), e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Narrows a differing table down to the primary keys that differ: buckets
/// of key hashes, then buckets within the differing buckets with another
/// seed, until few enough rows remain to compare them one by one.
async fn localise(
    source: &Client,
    target: &Client,
    table: &TableName,
    key_columns: &[String],
    scope: &str,
    options: Options,
) -> Result<ContentLayer> {
    let key = key_columns
        .iter()
        .map(|c| format!("t.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut filter = scope.to_owned();
    for level in 0..MAX_LEVELS {
        let (at_source, at_target) = tokio::try_join!(
            bucket_sums(source, table, &key, level, &filter),
            bucket_sums(target, table, &key, level, &filter)
        )?;
        let differing: BTreeSet<i64> = at_source
            .keys()
            .chain(at_target.keys())
            .filter(|b| at_source.get(b) != at_target.get(b))
            .copied()
            .collect();
        let rows = |sums: &HashMap<i64, (i64, String)>| -> i64 {
            differing
                .iter()
                .filter_map(|b| sums.get(b))
                .map(|s| s.0)
                .sum()
        };
        let buckets = differing
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        filter = format!(
            "{filter} AND (hashtextextended(ROW({key})::text, {level}) & {}) IN ({buckets})",
            BUCKETS - 1
        );
        if differing.is_empty() {
            break;
        }
        if rows(&at_source).max(rows(&at_target)) <= options.compare_rows_below
            || level == MAX_LEVELS - 1
        {
            return compare_rows(source, target, table, &key, &filter).await;
        }
    }
    // Fingerprints differed but no bucket does: only possible if the table
    // changed between the reads.
    Ok(ContentLayer {
        matched: false,
        method: "primary_key_buckets".into(),
        localisation: Some("the table changed while it was being verified; verify again".into()),
        ..ContentLayer::default()
    })
}

async fn compare_rows(
    source: &Client,
    target: &Client,
    table: &TableName,
    key: &str,
    filter: &str,
) -> Result<ContentLayer> {
    let columns = columns(source, table).await?;
    let (at_source, at_target) = tokio::try_join!(
        row_hashes(source, table, key, &columns, filter),
        row_hashes(target, table, key, &columns, filter)
    )?;
    let mut layer = ContentLayer {
        matched: false,
        method: "primary_key_buckets".into(),
        ..ContentLayer::default()
    };
    let mut found = 0u64;
    let mut keys: Vec<&String> = at_source.keys().chain(at_target.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let difference = match (at_source.get(k), at_target.get(k)) {
            (Some(_), None) => Some(Err(true)),
            (None, Some(_)) => Some(Err(false)),
            (Some(a), Some(b)) if a != b => Some(Ok(columns
                .iter()
                .zip(a.iter().zip(b.iter()))
                .filter(|(_, (x, y))| x != y)
                .map(|(c, _)| c.clone())
                .collect::<Vec<_>>())),
            _ => None,
        };
        let Some(difference) = difference else {
            continue;
        };
        found += 1;
        if found as usize > LISTED_PER_TABLE {
            layer.unlisted += 1;
            continue;
        }
        match difference {
            Err(true) => layer.missing.push(k.clone()),
            Err(false) => layer.extra.push(k.clone()),
            Ok(columns) => layer.different.push(RowDifference {
                key: k.clone(),
                columns,
            }),
        }
    }
    if found == 0 {
        layer.localisation =
            Some("the table changed while it was being verified; verify again".into());
    }
    Ok(layer)
}

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
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n) \
             FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE con.contype = 'f' AND c.oid IN (SELECT to_regclass(x) FROM unnest($1::text[]) AS x) ORDER BY 2, 1",
            &[&names],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the source's foreign keys", e))?;
    let mut reports = Vec::new();
    for row in rows {
        let (name, child, parent): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let (from, to): (Vec<String>, Vec<String>) = (row.get(3), row.get(4));
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
        let sql = format!(
            "SELECT count(*) FROM {child} AS c WHERE {not_null} \
             AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {joined})"
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

/// Seals `value` as JSON with the job's data key at `path`.
async fn put_sealed<T: Serialize>(
    staging: &Staging,
    key: &DataKey,
    path: &ObjectPath,
    id: &ChunkId,
    value: &T,
) -> Result<()> {
    let json = serde_json::to_vec(value).map_err(|e| Error::Corrupt {
        what: staging.describe(path),
        reason: e.to_string(),
    })?;
    staging.put(path, chunk::seal(id, 0, &json, key)?).await
}

async fn get_sealed<T: for<'de> Deserialize<'de>>(
    staging: &Staging,
    key: &DataKey,
    path: &ObjectPath,
    id: &ChunkId,
) -> Result<T> {
    let object = staging.describe(path);
    let frame = staging.get(path).await?;
    let (_, plain) = chunk::open(&object, &frame, id, key)?;
    serde_json::from_slice(&plain).map_err(|e| Error::Corrupt {
        what: object,
        reason: e.to_string(),
    })
}

/// Seals `report` with the job's data key into its staging area (it names
/// primary keys, which are customer data); returns where it went.
pub async fn store_report(spec: &JobSpec, report: &Report) -> Result<String> {
    let staging = Staging::open(&spec.staging)?;
    let key = crate::keys::job_data_key(spec, &staging).await?;
    let path = staging.report_path(&spec.job);
    let id = ChunkId::verification_report(spec.job.as_str());
    put_sealed(&staging, &key, &path, &id, report).await?;
    Ok(staging.describe(&path))
}

/// The job's last stored report.
pub async fn load_report(spec: &JobSpec) -> Result<Report> {
    let staging = Staging::open(&spec.staging)?;
    let key = crate::keys::job_data_key(spec, &staging).await?;
    let path = staging.report_path(&spec.job);
    let id = ChunkId::verification_report(spec.job.as_str());
    get_sealed(&staging, &key, &path, &id).await
}

/// Seals the finding of a range that differed (it names primary keys).
pub async fn store_finding(
    staging: &Staging,
    key: &DataKey,
    run: &VerifyRun,
    range: u32,
    finding: &RangeFinding,
) -> Result<()> {
    let job = &run.spec.job;
    let path = staging.finding_path(job, &run.run, range);
    let id = ChunkId::verification_finding(job.as_str(), &run.run, range);
    put_sealed(staging, key, &path, &id, finding).await
}

pub async fn load_finding(
    staging: &Staging,
    key: &DataKey,
    run: &VerifyRun,
    range: u32,
) -> Result<RangeFinding> {
    let job = &run.spec.job;
    let path = staging.finding_path(job, &run.run, range);
    let id = ChunkId::verification_finding(job.as_str(), &run.run, range);
    get_sealed(staging, key, &path, &id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(rows: (u64, u64), missing: &[&str], different: &[&str]) -> RangeFinding {
        RangeFinding {
            source_rows: rows.0,
            target_rows: rows.1,
            content: ContentLayer {
                matched: missing.is_empty() && different.is_empty(),
                method: "primary_key_buckets".into(),
                missing: missing.iter().map(|k| (*k).to_owned()).collect(),
                different: different
                    .iter()
                    .map(|k| RowDifference {
                        key: (*k).to_owned(),
                        columns: vec!["name".into()],
                    })
                    .collect(),
                ..ContentLayer::default()
            },
        }
    }

    #[test]
    fn ranges_merge_into_one_table_report() {
        let table = TableName {
            schema: "public".into(),
            name: "orders".into(),
        };
        let merged = merge_table(
            &table,
            vec![
                finding((10, 10), &[], &[]),
                finding((10, 9), &["(4)"], &[]),
                finding((5, 5), &[], &["(22)"]),
            ],
        );
        assert_eq!(merged.table, "public.orders");
        assert_eq!((merged.source_rows, merged.target_rows), (25, Some(24)));
        assert!(!merged.counts_match);
        assert_eq!(merged.ranges, 3);
        assert!(!merged.content.matched);
        assert_eq!(merged.content.missing, ["(4)"]);
        assert_eq!(merged.content.different[0].key, "(22)");
        assert_eq!(merged.content.unlisted, 0);
    }

    #[test]
    fn merged_listings_stop_at_the_limit_and_count_the_rest() {
        let table = TableName {
            schema: "public".into(),
            name: "t".into(),
        };
        let keys: Vec<String> = (0..LISTED_PER_TABLE + 5)
            .map(|k| format!("({k})"))
            .collect();
        let half: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (first, second) = half.split_at(LISTED_PER_TABLE - 2);
        let merged = merge_table(
            &table,
            vec![finding((0, 0), first, &[]), finding((0, 0), &[], second)],
        );
        let listed = merged.content.missing.len() + merged.content.different.len();
        assert_eq!(listed, LISTED_PER_TABLE);
        assert_eq!(merged.content.unlisted, 5);
    }

    #[test]
    fn a_fully_matching_table_merges_as_matched() {
        let table = TableName {
            schema: "public".into(),
            name: "t".into(),
        };
        let merged = merge_table(&table, vec![finding((3, 3), &[], &[]); 4]);
        assert!(merged.content.matched && merged.counts_match);
        assert_eq!(merged.source_rows, 12);
    }
}
