//! A mapping resolved against both catalogs: where each source table
//! lands, what each column becomes, which conversions can fail, and every
//! problem in one list (each naming the table and column and the fix).
//! Reads both databases' catalogs and nothing else (the evidence of
//! failing values is [`super::evidence`]); never writes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tokio_postgres::Client;

use super::new_ids::{self, KeyRules};
use super::{ColumnRule, MappingSpec, Mask, MaskScope, OnError};
use crate::spec::{TableName, quote_literal};
use crate::{Error, Result};

/// One column as a catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type`: `character varying(50)`, `bigint`.
    pub data_type: String,
    pub not_null: bool,
    /// A default, an identity or a generation expression: the target fills
    /// it when nothing is given.
    pub fills_itself: bool,
    /// `GENERATED ALWAYS AS … STORED`: never carried, the target computes it.
    pub generated: bool,
    /// The column's default expression (`pg_get_expr`), and whether it
    /// gives the same value every time (it calls only immutable functions).
    pub default: Option<(String, bool)>,
    /// An identity column (the target numbers it).
    pub identity: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: a value is taken only with
    /// `OVERRIDING SYSTEM VALUE`, and never changed.
    pub always_identity: bool,
    /// The sequence of an identity column.
    pub identity_sequence: Option<String>,
}

impl Column {
    /// SQL giving the column's next value when it numbers rows itself (an
    /// identity, or a default that is not one value for every row).
    pub fn new_ids(&self) -> Option<String> {
        if let Some(sequence) = &self.identity_sequence {
            return Some(format!("nextval({}::regclass)", quote_literal(sequence)));
        }
        match &self.default {
            Some((expr, false)) => Some(expr.clone()),
            _ => None,
        }
    }
}

/// A table's columns in order, its primary key, and the foreign keys it
/// holds (columns → referenced table and columns).
#[derive(Debug, Clone, Default)]
pub struct TableShape {
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    pub references: Vec<(Vec<String>, TableName, Vec<String>)>,
}

impl TableShape {
    pub(super) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Reads the shape of each of `tables` that exists; missing ones are left out.
pub async fn shapes(
    client: &Client,
    tables: &[TableName],
) -> Result<BTreeMap<TableName, TableShape>> {
    // Matched by name in the catalog, which any role may read: a table in
    // a schema the role may not use still has a shape.
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', a.attgenerated <> '', \
                    CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END, \
                    d.adbin::text !~ '\\{(SQLVALUEFUNCTION|COERCEVIAIO|NEXTVALUEEXPR) ' \
                    AND coalesce((SELECT bool_and(p.provolatile = 'i') \
                              FROM regexp_matches(d.adbin::text, ':(?:func|opfunc)id (\\d+)', 'g') AS f(id) \
                              JOIN pg_proc p ON p.oid = f.id[1]::oid), true), \
                    a.attidentity <> '', a.attidentity = 'a', \
                    CASE WHEN a.attidentity <> '' THEN \
                         pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname) END \
             FROM unnest($1::text[], $2::text[]) AS wanted(schema, name) \
             JOIN pg_namespace n ON n.nspname = wanted.schema \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = wanted.name \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             ORDER BY n.nspname, c.relname, a.attnum",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the tables' columns", e))?;
    let mut shapes: BTreeMap<TableName, TableShape> = BTreeMap::new();
    for row in rows {
        let table = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        shapes.entry(table).or_default().columns.push(Column {
            name: row.get(2),
            data_type: row.get(3),
            not_null: row.get(4),
            fills_itself: row.get(5),
            generated: row.get(6),
            default: row
                .get::<_, Option<String>>(7)
                .map(|expr| (expr, row.get(8))),
            identity: row.get(9),
            always_identity: row.get(10),
            identity_sequence: row.get(11),
        });
    }
    let keys = client
        .query(
            "SELECT n.nspname, c.relname, k.contype::text, \
                    array(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, i) \
                          JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i), \
                    rn.nspname, r.relname, \
                    array(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(n, i) \
                          JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i) \
             FROM unnest($1::text[], $2::text[]) AS wanted(schema, name) \
             JOIN pg_namespace n ON n.nspname = wanted.schema \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = wanted.name \
             JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype IN ('p', 'f') \
             LEFT JOIN pg_class r ON r.oid = k.confrelid \
             LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the tables' keys", e))?;
    for row in keys {
        let table = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        let Some(shape) = shapes.get_mut(&table) else {
            continue;
        };
        let columns: Vec<String> = row.get(3);
        if row.get::<_, String>(2) == "p" {
            shape.primary_key = columns;
        } else if let (Some(schema), Some(name)) = (
            row.get::<_, Option<String>>(4),
            row.get::<_, Option<String>>(5),
        ) {
            shape
                .references
                .push((columns, TableName { schema, name }, row.get(6)));
        }
    }
    Ok(shapes)
}

/// How a value gets from the source column's type to the target's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conversion {
    None,
    /// Every value of the source type has one in the target's.
    Widening,
    /// Some values may not convert (or lose precision): the mapping says
    /// what happens to them.
    CanFail,
}

/// Types a value always converts into without loss.
fn widens(from: &str, to: &str) -> bool {
    let varchar_len = |t: &str| {
        t.strip_prefix("character varying(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|n| n.parse::<u32>().ok())
    };
    match (from, to) {
        ("smallint", "integer" | "bigint" | "numeric")
        | ("integer", "bigint" | "numeric" | "double precision")
        | ("bigint", "numeric")
        | ("real", "double precision")
        | ("text" | "character varying", "text" | "character varying") => true,
        (f, "text" | "character varying") if varchar_len(f).is_some() => true,
        (f, t) => matches!((varchar_len(f), varchar_len(t)), (Some(a), Some(b)) if a <= b),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ColumnLanding {
    pub source: String,
    pub source_type: String,
    pub target: String,
    pub target_type: String,
    pub conversion: Conversion,
    pub on_error: OnError,
    /// The target column is NOT NULL and the source's is not.
    pub nulls_refused: bool,
    pub offset: Option<i64>,
    /// The key column whose offset or new ids this one follows by a
    /// foreign key.
    pub follows: Option<String>,
    pub remap: bool,
    /// The key whose new ids this column lands with (its own, under
    /// `remap: true`, or the one it references).
    pub remap_key: Option<super::remap::RemapKey>,
    pub mask: Option<Mask>,
    pub redact_with: Option<String>,
    pub masked_for: MaskScope,
    /// With `on_error: default`: what a value that does not convert
    /// becomes, as SQL (the target column's default, evaluated, or NULL).
    pub fallback: Option<String>,
    /// Generated on the source, carried as a value.
    pub generated: bool,
    /// The target column is `GENERATED ALWAYS AS IDENTITY`.
    pub target_always_identity: bool,
}

impl ColumnLanding {
    /// The mask the platform's copy gets (None: the value is carried).
    pub fn copy_mask(&self) -> Option<Mask> {
        self.mask
            .filter(|m| *m != Mask::Keep && self.masked_for == MaskScope::Always)
    }

    /// The mask only review copies get (`godwit replay --masked`).
    pub fn review_mask(&self) -> Option<Mask> {
        self.mask
            .filter(|m| *m != Mask::Keep && self.masked_for == MaskScope::Review)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Landing {
    pub source: TableName,
    pub target: TableName,
    /// The target table exists already (else the job creates it).
    pub exists: bool,
    /// The target table already holds rows (of other tenants).
    pub holds_rows: bool,
    /// The column and value telling this job's rows in a shared table.
    pub tenant: Option<(String, String)>,
    pub columns: Vec<ColumnLanding>,
    pub dropped: Vec<String>,
    pub added: Vec<(String, String)>,
    /// The target types of the added columns (of an existing target table).
    pub added_types: BTreeMap<String, String>,
    /// The source's primary key, unquoted; empty without one.
    pub source_key: Vec<String>,
    /// The job's source tables holding a foreign key to this one.
    pub referenced_by: Vec<TableName>,
    /// The foreign keys this source table holds: its columns, the
    /// referenced table and its columns (source names).
    pub references: Vec<(Vec<String>, TableName, Vec<String>)>,
    /// The `mapping.tables` entry used, if any.
    pub entry: Option<usize>,
    /// Its rows go through the mapping's rules: it lands elsewhere, or it
    /// keeps its name and has columns masked.
    pub carried: bool,
    /// How the job creates its target table, when it lands elsewhere and
    /// the target has no table of that name.
    pub creates: Option<super::create::Creation>,
}

/// The mapping against both catalogs.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    pub version: String,
    /// In copy order: `mapping.order` first.
    pub landings: Vec<Landing>,
    pub problems: Vec<String>,
}

/// Resolves `mapping` for the source tables `tables` (the job's selection).
/// `resumed`: the job ran before, so the rows a target table holds may be
/// its own.
pub async fn resolve(
    mapping: &MappingSpec,
    source: &Client,
    target: &Client,
    tables: &[TableName],
    resumed: bool,
) -> Result<Resolved> {
    let mut problems = mapping.problems();
    let source_shapes = shapes(source, tables).await?;
    for (i, entry) in mapping.tables.iter().enumerate() {
        if !tables.iter().any(|t| entry.matches(t)) {
            problems.push(format!(
                "`mapping.tables[{i}]`: `from: {}` matches no table the job copies from the source: \
                 check the name, and that `tables` selects it",
                entry.from
            ));
        }
    }
    let landings_of: Vec<(TableName, Option<usize>, TableName)> = tables
        .iter()
        .map(|t| match mapping.entry_for(t) {
            Some((i, entry)) => (t.clone(), Some(i), entry.landing(t)),
            None => (t.clone(), None, t.clone()),
        })
        .collect();
    let target_names: Vec<TableName> = landings_of.iter().map(|(_, _, t)| t.clone()).collect();
    let target_shapes = shapes(target, &target_names).await?;
    let keys = KeyRules {
        offsets: new_ids::key_offsets(mapping, tables, &source_shapes),
        remaps: new_ids::remapped_keys(mapping, tables, &source_shapes, &mut problems),
    };

    let mut by_target: BTreeMap<&TableName, Vec<&TableName>> = BTreeMap::new();
    for (source_name, _, target_name) in &landings_of {
        by_target.entry(target_name).or_default().push(source_name);
    }
    let mut landings = Vec::new();
    for (source_name, entry_at, target_name) in &landings_of {
        let entry = entry_at.map(|i| &mapping.tables[i]);
        let Some(shape) = source_shapes.get(source_name) else {
            continue;
        };
        let existing = target_shapes.get(target_name);
        let at = format!("{source_name} → {target_name}");
        let sharers = &by_target[target_name];
        let tenant = entry.and_then(|e| e.tenant.clone());
        if sharers.len() > 1 && tenant.is_none() {
            problems.push(format!(
                "{at}: {} all land in {target_name} and nothing tells their rows apart: give each a \
                 `tenant:` column fed by `add:`, or map them to different tables",
                sharers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ));
        }
        let rules = entry.map(|e| &e.columns);
        for column in rules.into_iter().flat_map(BTreeMap::keys) {
            if shape.column(column).is_none() {
                problems.push(format!(
                    "{at}: `columns.{column}`: {source_name} has no column {column:?} (it has {})",
                    shape
                        .columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let mut columns = Vec::new();
        let mut dropped = Vec::new();
        for column in &shape.columns {
            let none = ColumnRule::default();
            let rule = rules.and_then(|r| r.get(&column.name)).unwrap_or(&none);
            // A generated value is computed again by a target column that is
            // generated too; a plain target column of that name needs it
            // carried, or it would land empty.
            if column.generated {
                let landed = rule.to.as_deref().unwrap_or(&column.name);
                let plain_on_target = existing
                    .and_then(|t| t.column(landed))
                    .is_some_and(|t| !t.generated);
                if !plain_on_target {
                    if rule.drop {
                        dropped.push(column.name.clone());
                    }
                    continue;
                }
            }
            if rule.drop {
                if shape.primary_key.contains(&column.name) {
                    problems.push(format!(
                        "{at}: dropping {:?} drops part of {source_name}'s primary key: the target could not \
                         tell its rows apart (keep it, or rename it)",
                        column.name
                    ));
                }
                dropped.push(column.name.clone());
                continue;
            }
            let mut landing = land_column(
                &at,
                column,
                rule,
                existing,
                &keys,
                source_name,
                &mut problems,
            );
            if landing.on_error == OnError::Default
                && let Some(target_column) = existing.and_then(|t| t.column(&landing.target))
            {
                match super::fallback::fallback(target, target_name, target_column).await? {
                    Ok(fallback) => landing.fallback = Some(fallback),
                    Err(problem) => problems.push(format!("{at}: {}: {problem}", column.name)),
                }
            }
            columns.push(landing);
        }
        let mut added = Vec::new();
        let mut added_types = BTreeMap::new();
        let mut invalid_adds: Vec<String> = Vec::new();
        for (column, raw) in entry.map(|e| &e.add).into_iter().flatten() {
            let Ok(value) = mapping.value_of(raw) else {
                continue;
            };
            if columns.iter().any(|c| &c.target == column) {
                problems.push(format!(
                    "{at}: `add.{column}` and a source column both land in {column:?}: drop or rename one"
                ));
            }
            match existing.map(|t| t.column(column)) {
                Some(None) => problems.push(format!(
                    "{at}: `add.{column}`: {target_name} has no column {column:?}"
                )),
                Some(Some(target_column)) => {
                    added_types.insert(column.clone(), target_column.data_type.clone());
                    if let Some(problem) =
                        check_value(target, &value, &target_column.data_type).await?
                    {
                        problems.push(format!("{at}: `add.{column}`: {problem}"));
                        invalid_adds.push(column.clone());
                    }
                }
                None => {}
            }
            added.push((column.clone(), value));
        }
        if let Some(target_shape) = existing {
            for column in &target_shape.columns {
                let fed = columns.iter().any(|c| c.target == column.name)
                    || added.iter().any(|(name, _)| name == &column.name);
                if !fed && column.not_null && !column.fills_itself {
                    problems.push(format!(
                        "{at}: {target_name}.{} is NOT NULL without a default and nothing feeds it: map a \
                         source column to it (`to: {}`) or give it a value under `add:`",
                        column.name, column.name
                    ));
                }
            }
        }
        let holds_rows = match existing {
            Some(_) => target
                .query_one(
                    &format!("SELECT EXISTS (SELECT 1 FROM {})", target_name.quoted()),
                    &[],
                )
                .await
                .map_err(|e| {
                    Error::postgres(format!("cannot look into {target_name} on the target"), e)
                })?
                .get(0),
            None => false,
        };
        if holds_rows && tenant.is_none() && !resumed {
            problems.push(format!(
                "{at}: {target_name} already holds rows, and without a `tenant:` column godwit cannot tell \
                 them from this job's: name the column that does (fed by `add:`), or choose an empty table"
            ));
        }
        let tenant = tenant.and_then(|column| {
            added
                .iter()
                .find(|(name, _)| name == &column)
                .map(|(_, value)| (column, value.clone()))
        });
        // The job's own slice starts empty: what a re-run deletes and what
        // the check compares must be the job's rows only.
        if let (Some((column, value)), Some(_), false) = (&tenant, existing, resumed)
            && !invalid_adds.contains(column)
        {
            let data_type = added_types
                .get(column)
                .cloned()
                .unwrap_or_else(|| "text".into());
            let taken: bool = target
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM {} AS t WHERE t.{} = {}::{data_type})",
                        target_name.quoted(),
                        crate::spec::quote_ident(column),
                        quote_literal(value)
                    ),
                    &[],
                )
                .await
                .map_err(|e| {
                    Error::postgres(format!("cannot look into {target_name} on the target"), e)
                })?
                .get(0);
            if taken {
                problems.push(format!(
                    "{at}: {target_name} already holds rows with {column} = {value}: the job's slice must \
                     start empty (another job of this tenant, or rows the platform made for it); choose \
                     another value, or move those rows first"
                ));
            }
        }
        landings.push(Landing {
            source: source_name.clone(),
            target: target_name.clone(),
            exists: existing.is_some(),
            holds_rows,
            tenant,
            columns,
            dropped,
            added,
            added_types,
            source_key: shape.primary_key.clone(),
            references: shape.references.clone(),
            referenced_by: source_shapes
                .iter()
                .filter(|(_, other)| other.references.iter().any(|(_, r, _)| r == source_name))
                .map(|(name, _)| name.clone())
                .collect(),
            entry: *entry_at,
            carried: entry.is_some_and(|e| source_name != target_name || e.masks_only()),
            creates: None,
        });
    }
    // A table landing under its own name keeps its foreign keys, which
    // cannot point at a table that lands elsewhere.
    for landing in landings.iter().filter(|l| l.source == l.target) {
        let Some(shape) = source_shapes.get(&landing.source) else {
            continue;
        };
        for (columns, referenced, _) in &shape.references {
            if let Some(moved) = landings
                .iter()
                .find(|l| &l.source == referenced && l.source != l.target)
            {
                problems.push(format!(
                    "{}: its foreign key ({}) references {referenced}, which lands in {}: map {} too (its \
                     key columns follow an offset), or leave it out of `tables`",
                    landing.source,
                    columns.join(", "),
                    moved.target,
                    landing.source
                ));
            }
        }
    }
    new_ids::place_remaps(&mut landings, &keys.remaps, &target_shapes, &mut problems);
    for i in 0..landings.len() {
        let landing = &landings[i];
        if landing.exists || landing.source == landing.target || !landing.carried {
            continue;
        }
        match super::create::creation(source, landing, &landings).await? {
            Ok(creation) => landings[i].creates = Some(creation),
            Err(refused) => problems.extend(refused),
        }
    }
    order_landings(mapping, &mut landings, &mut problems);
    Ok(Resolved {
        version: mapping.version(),
        landings,
        problems,
    })
}

fn land_column(
    at: &str,
    column: &Column,
    rule: &ColumnRule,
    existing: Option<&TableShape>,
    keys: &KeyRules,
    source_name: &TableName,
    problems: &mut Vec<String>,
) -> ColumnLanding {
    let target_name = rule.to.clone().unwrap_or_else(|| column.name.clone());
    let target_column = existing.and_then(|t| t.column(&target_name));
    if existing.is_some() && target_column.is_none() {
        problems.push(format!(
            "{at}: {:?} lands in column {target_name:?}, which the target table does not have: rename it \
             (`to:`), drop it (`drop: true`), or add the column on the target",
            column.name
        ));
    }
    let target_type = match (target_column, &rule.convert_to) {
        (Some(t), Some(wanted)) if !same_type(&t.data_type, wanted) => {
            problems.push(format!(
                "{at}: `columns.{}.type: {wanted}` but the target column {target_name:?} is {}: write the \
                 target's type",
                column.name, t.data_type
            ));
            t.data_type.clone()
        }
        (Some(t), _) => t.data_type.clone(),
        (None, Some(wanted)) => wanted.clone(),
        (None, None) => column.data_type.clone(),
    };
    let remapped = keys.remaps.get(&(source_name.clone(), column.name.clone()));
    // A remapped value is replaced by the target's own new id.
    let conversion = if remapped.is_some() || same_type(&column.data_type, &target_type) {
        Conversion::None
    } else if widens(&column.data_type, &target_type) {
        Conversion::Widening
    } else {
        Conversion::CanFail
    };
    if conversion == Conversion::CanFail && rule.convert_to.is_none() {
        problems.push(format!(
            "{at}: {}.{} is {} and lands in {target_name:?} as {target_type}, and a value may not convert: \
             say so in the mapping (`columns: {{{}: {{type: \"{target_type}\", on_error: fail}}}}`, or \
             null, default, skip-row)",
            source_name, column.name, column.data_type, column.name
        ));
    }
    let (offset, follows) = match (
        remapped,
        keys.offsets
            .get(&(source_name.clone(), column.name.clone())),
    ) {
        (Some((table, key)), _) => (
            None,
            (table != source_name || key != &column.name).then(|| format!("{table}.{key}")),
        ),
        (None, Some((offset, follows))) => (Some(*offset), follows.clone()),
        (None, None) => (None, None),
    };
    if offset.is_some() && !matches!(column.data_type.as_str(), "smallint" | "integer" | "bigint") {
        problems.push(format!(
            "{at}: an offset applies to integer keys, and {}.{} is {}: use `remap: true` for other keys",
            source_name, column.name, column.data_type
        ));
    }
    ColumnLanding {
        source: column.name.clone(),
        source_type: column.data_type.clone(),
        target: target_name,
        target_type,
        conversion,
        on_error: rule.on_error.unwrap_or(OnError::Fail),
        nulls_refused: target_column.is_some_and(|t| t.not_null) && !column.not_null,
        offset,
        follows,
        remap: rule.remap,
        remap_key: None,
        mask: rule.mask,
        redact_with: rule.redact_with.clone(),
        masked_for: rule.masked_for.unwrap_or(MaskScope::Always),
        fallback: None,
        generated: column.generated,
        target_always_identity: target_column.is_some_and(|t| t.always_identity),
    }
}

/// `format_type` spells types one way; a mapping may use their aliases.
fn same_type(a: &str, b: &str) -> bool {
    fn canonical(t: &str) -> String {
        let t = t.trim().to_ascii_lowercase();
        let (base, args) = match t.split_once('(') {
            Some((base, args)) => (
                base.trim().to_owned(),
                format!("({}", args.replace(' ', "")),
            ),
            None => (t.clone(), String::new()),
        };
        let base = match base.as_str() {
            "int" | "int4" => "integer",
            "int2" => "smallint",
            "int8" => "bigint",
            "varchar" => "character varying",
            "char" | "bpchar" => "character",
            "bool" => "boolean",
            "float8" => "double precision",
            "float4" => "real",
            "decimal" => "numeric",
            "timestamptz" => "timestamp with time zone",
            "timestamp" => "timestamp without time zone",
            other => other,
        };
        format!("{base}{args}")
    }
    canonical(a) == canonical(b)
}

/// Whether `value` is valid input for `data_type` on the target; a
/// problem names both.
async fn check_value(target: &Client, value: &str, data_type: &str) -> Result<Option<String>> {
    let probe = format!("SELECT {}::{data_type}", quote_literal(value));
    Ok(match target.simple_query(&probe).await {
        Ok(_) => None,
        Err(e) => Some(format!(
            "{value:?} is not a value of the target column's type {data_type} ({})",
            e.as_db_error()
                .map_or_else(|| e.to_string(), |db| db.message().to_owned())
        )),
    })
}

/// `mapping.order` first, in its order; the rest as they were.
fn order_landings(mapping: &MappingSpec, landings: &mut Vec<Landing>, problems: &mut Vec<String>) {
    let mut first = Vec::new();
    let mut seen = BTreeSet::new();
    for wanted in &mapping.order {
        let Some(name) = TableName::parse(wanted) else {
            continue;
        };
        match landings.iter().position(|l| l.source == name) {
            Some(at) if seen.insert(name.clone()) => first.push(landings.remove(at)),
            Some(_) => problems.push(format!("`mapping.order` names {name} twice")),
            None => problems.push(format!(
                "`mapping.order` names {name}, which the job does not copy from the source"
            )),
        }
    }
    first.append(landings);
    *landings = first;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_never_fails_and_narrowing_can() {
        assert!(widens("integer", "bigint"));
        assert!(widens("character varying(20)", "character varying(50)"));
        assert!(widens("character varying(20)", "text"));
        assert!(!widens("character varying(80)", "character varying(50)"));
        assert!(!widens("text", "character varying(50)"));
        assert!(!widens("bigint", "integer"));
        assert!(!widens("numeric", "numeric(10,2)"));
    }

    #[test]
    fn type_aliases_are_the_same_type() {
        assert!(same_type("character varying(50)", "varchar(50)"));
        assert!(same_type("numeric(12,2)", "NUMERIC(12, 2)"));
        assert!(same_type("timestamp with time zone", "timestamptz"));
        assert!(!same_type("integer", "bigint"));
    }
}
