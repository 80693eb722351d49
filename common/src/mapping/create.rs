//! A mapped table the job creates because the target has none of that
//! name (a tenant's own schema the platform leaves to the migration): the
//! source's definition under the mapping's table and column names and
//! types. Before the copy, the table with its columns (identity for a
//! serial or identity key, defaults, generated columns, collations, NOT
//! NULL) and primary key; after it, unique constraints, checks, plain
//! indexes, then foreign keys to the job's other created tables. What such
//! a definition cannot carry under new names (a trigger, a policy, a rule,
//! an expression or partial index, a check or generated column over a
//! renamed, converted or masked column, a foreign key to a table landing in
//! the platform's) is refused by name before anything is written. Reads the
//! source's catalog; builds SQL text; never writes.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::Mask;
use super::resolve::{ColumnLanding, Conversion, Landing};
use crate::spec::{TableName, quote_ident};
use crate::{Error, Result};

/// The statements that create a mapped table on the target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creation {
    /// Before the copy: its schema if missing, the table, its primary key.
    pub table: String,
    /// After the copy: unique constraints, checks and indexes.
    pub keys: String,
    /// After every created table's keys: its foreign keys.
    pub references: String,
}

/// One column of the source table as its definition has it.
struct SourceColumn {
    name: String,
    default: Option<String>,
    /// Numbered by a sequence of its own (serial) or an identity.
    numbered: bool,
    generated: Option<String>,
    collation: Option<String>,
    not_null: bool,
    data_type: String,
    /// The columns a generated column is computed from.
    depends_on: Vec<String>,
}

/// The definition of `landing`'s table on the target, or why it cannot be
/// created there. `landings`: every table of the job (where foreign keys
/// point).
pub async fn creation(
    source: &Client,
    landing: &Landing,
    landings: &[Landing],
) -> Result<std::result::Result<Creation, Vec<String>>> {
    let at = format!("{} → {}", landing.source, landing.target);
    let fix = format!(
        "create {} on the target first (a mapped table lands in the platform's definition), or land {} \
         under its own name",
        landing.target, landing.source
    );
    let oid = landing.source.quoted();
    let mut problems = Vec::new();
    for refusal in objects_not_carried(source, &oid).await? {
        problems.push(format!(
            "{at}: {refusal}, which a table created under another name does not carry: {fix}"
        ));
    }
    if !landing.added.is_empty() {
        problems.push(format!(
            "{at}: `add:` gives the table columns of no known type, and {} does not exist: {fix}",
            landing.target
        ));
    }
    let columns = source_columns(source, &oid).await?;
    let carried = |name: &str| landing.columns.iter().find(|c| c.source == name);
    // A value kept as it is, under its own name: what a check or a
    // generation expression written over the source's names still means.
    let unchanged = |name: &str| {
        carried(name).is_some_and(|c| {
            c.target == c.source
                && c.conversion == Conversion::None
                && c.offset.is_none()
                && c.remap_key.is_none()
                && c.mask.is_none_or(|m| m == Mask::Keep)
        })
    };
    let mut definitions = Vec::new();
    for column in &columns {
        if let Some(expr) = &column.generated {
            if landing.dropped.contains(&column.name) {
                continue;
            }
            if let Some(changed) = column.depends_on.iter().find(|c| !unchanged(c)) {
                problems.push(format!(
                    "{at}: the generated column {} is computed from {changed}, which the mapping renames, \
                     converts, moves or masks: drop it (`drop: true`) or {fix}",
                    column.name
                ));
                continue;
            }
            definitions.push(format!(
                "{} {}{} GENERATED ALWAYS AS ({expr}) STORED",
                quote_ident(&column.name),
                column.data_type,
                collate(column)
            ));
            continue;
        }
        let Some(landed) = carried(&column.name) else {
            continue;
        };
        definitions.push(column_definition(column, landed, &at, &mut problems));
    }
    let key: Vec<String> = landing
        .source_key
        .iter()
        .filter_map(|k| carried(k).map(|c| quote_ident(&c.target)))
        .collect();
    if !key.is_empty() {
        definitions.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    let target = landing.target.quoted();
    let table = format!(
        "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE {target} ({}); ",
        quote_ident(&landing.target.schema),
        definitions.join(", ")
    );
    let mapped_names = |names: &[String]| -> Option<Vec<String>> {
        names
            .iter()
            .map(|n| carried(n).map(|c| quote_ident(&c.target)))
            .collect()
    };
    let mut keys = String::new();
    for (name, kind, columns, definition) in constraints(source, &oid).await? {
        match kind.as_str() {
            // Deferral, NULLS NOT DISTINCT or included columns would be
            // lost by a plain UNIQUE over the mapped names.
            "u" if ["DEFERRABLE", "NULLS NOT DISTINCT", "INCLUDE"]
                .iter()
                .any(|option| definition.contains(option)) =>
            {
                problems.push(format!(
                    "{at}: the unique constraint {name} ({definition}) is not a plain one over carried columns: {fix}"
                ));
            }
            "u" => match mapped_names(&columns) {
                Some(mapped) => keys.push_str(&format!(
                    "ALTER TABLE {target} ADD UNIQUE ({}); ",
                    mapped.join(", ")
                )),
                None => problems.push(format!(
                    "{at}: the unique constraint {name} is over a dropped column: keep its columns, or {fix}"
                )),
            },
            "c" if columns.iter().all(|c| unchanged(c)) => {
                keys.push_str(&format!("ALTER TABLE {target} ADD {definition}; "));
            }
            "c" => problems.push(format!(
                "{at}: the check constraint {name} is written over columns the mapping renames, converts, \
                 moves or masks ({}): {fix}",
                columns.join(", ")
            )),
            // An exclusion or constraint trigger: named, never dropped silently.
            _ => problems.push(format!(
                "{at}: the constraint {name} ({definition}) is not carried to a table created under another \
                 name: {fix}"
            )),
        }
    }
    for (name, unique, columns, plain) in indexes(source, &oid).await? {
        match (plain, mapped_names(&columns)) {
            (true, Some(mapped)) => keys.push_str(&format!(
                "CREATE {}INDEX ON {target} ({}); ",
                if unique { "UNIQUE " } else { "" },
                mapped.join(", ")
            )),
            _ => problems.push(format!(
                "{at}: the index {name} is not a plain index over carried columns (an expression, a \
                 predicate, an operator class, an order or included columns): {fix}"
            )),
        }
    }
    let mut references = String::new();
    for (columns, parent, parent_columns, actions) in foreign_keys(source, &oid).await? {
        let parent_landing = landings.iter().find(|l| l.source == parent);
        let created_parent = parent_landing.filter(|p| !p.exists || p.source == p.target);
        let mapped = mapped_names(&columns);
        let parent_mapped = created_parent.and_then(|p| {
            parent_columns
                .iter()
                .map(|c| {
                    p.columns
                        .iter()
                        .find(|pc| &pc.source == c)
                        .map(|pc| quote_ident(&pc.target))
                })
                .collect::<Option<Vec<String>>>()
        });
        match (created_parent, mapped, parent_mapped) {
            (Some(p), Some(mapped), Some(parent_mapped)) => references.push_str(&format!(
                "ALTER TABLE {target} ADD FOREIGN KEY ({}) REFERENCES {} ({}){actions}; ",
                mapped.join(", "),
                p.target.quoted(),
                parent_mapped.join(", ")
            )),
            _ => problems.push(format!(
                "{at}: its foreign key ({}) references {parent}, which the job does not create with it: \
                 {fix}",
                columns.join(", ")
            )),
        }
    }
    if !problems.is_empty() {
        return Ok(Err(problems));
    }
    Ok(Ok(Creation {
        table,
        keys,
        references,
    }))
}

fn collate(column: &SourceColumn) -> String {
    column
        .collation
        .as_ref()
        .map(|c| format!(" COLLATE {c}"))
        .unwrap_or_default()
}

/// A carried column's definition: the landed name and type, and what the
/// source's column gives itself.
fn column_definition(
    column: &SourceColumn,
    landed: &ColumnLanding,
    at: &str,
    problems: &mut Vec<String>,
) -> String {
    let mut out = format!("{} {}", quote_ident(&landed.target), landed.target_type);
    if landed.conversion == Conversion::None {
        out.push_str(&collate(column));
    }
    if column.numbered {
        // Its own sequence does not come along: the target numbers the
        // rows after the copied ones (moved past them after the copy).
        out.push_str(" GENERATED BY DEFAULT AS IDENTITY");
    } else if let Some(default) = &column.default {
        if default.contains("nextval(") {
            problems.push(format!(
                "{at}: {} takes its default from a sequence it does not own ({default}), which does not \
                 come along: give it a default of its own on the source, or create the table on the target \
                 first",
                column.name
            ));
        } else {
            out.push_str(&format!(" DEFAULT {default}"));
        }
    }
    // A value that does not convert may land as NULL.
    if column.not_null && landed.on_error != super::OnError::Null {
        out.push_str(" NOT NULL");
    }
    out
}

async fn source_columns(source: &Client, table: &str) -> Result<Vec<SourceColumn>> {
    let rows = source
        .query(
            "SELECT a.attname, CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END, \
                    a.attidentity <> '' OR pg_get_serial_sequence($1, a.attname) IS NOT NULL, \
                    CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END, \
                    CASE WHEN a.attcollation <> t.typcollation THEN \
                         (SELECT format('%I.%I', cn.nspname, co.collname) FROM pg_collation co \
                          JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) END, \
                    a.attnotnull, format_type(a.atttypid, a.atttypmod), \
                    coalesce((SELECT array_agg(r.attname::text ORDER BY r.attnum) FROM pg_depend dep \
                              JOIN pg_attribute r ON r.attrelid = dep.refobjid AND r.attnum = dep.refobjsubid \
                              WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid \
                                AND dep.refobjid = a.attrelid \
                                AND dep.refobjsubid > 0 AND dep.refobjsubid <> a.attnum), '{}') \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the definition of {table}"), e))?;
    Ok(rows
        .iter()
        .map(|r| SourceColumn {
            name: r.get(0),
            default: r.get(1),
            numbered: r.get(2),
            generated: r.get(3),
            collation: r.get(4),
            not_null: r.get(5),
            data_type: r.get(6),
            depends_on: r.get(7),
        })
        .collect())
}

/// What a table created under another name does not carry, named: its
/// triggers, policies and rules, and its being partitioned or inherited.
async fn objects_not_carried(source: &Client, table: &str) -> Result<Vec<String>> {
    let rows = source
        .query(
            "SELECT format('the trigger %I', tgname) FROM pg_trigger \
             WHERE tgrelid = to_regclass($1) AND NOT tgisinternal \
             UNION ALL SELECT format('the row-level security policy %I', polname) FROM pg_policy \
             WHERE polrelid = to_regclass($1) \
             UNION ALL SELECT format('the rule %I', rulename) FROM pg_rewrite \
             WHERE ev_class = to_regclass($1) AND rulename <> '_RETURN' \
             UNION ALL SELECT 'its partitions' FROM pg_class WHERE oid = to_regclass($1) AND relkind = 'p' \
             UNION ALL SELECT 'its inheritance' FROM pg_inherits \
             WHERE inhrelid = to_regclass($1) OR inhparent = to_regclass($1) \
             ORDER BY 1",
            &[&table],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the objects of {table}"), e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Unique, check and exclusion constraints and constraint triggers: name,
/// kind, columns, definition.
async fn constraints(
    source: &Client,
    table: &str,
) -> Result<Vec<(String, String, Vec<String>, String)>> {
    let rows = source
        .query(
            "SELECT quote_ident(con.conname), con.contype::text, \
                    coalesce((SELECT array_agg(a.attname::text ORDER BY u.i) \
                              FROM unnest(con.conkey) WITH ORDINALITY u(n, i) \
                              JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = u.n), '{}'), \
                    pg_get_constraintdef(con.oid) \
             FROM pg_constraint con WHERE con.conrelid = to_regclass($1) AND con.contype IN ('u', 'c', 'x', 't') \
             ORDER BY con.conname",
            &[&table],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the constraints of {table}"), e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// Indexes not behind a constraint: name, unique, columns, and whether it
/// is plain (key columns only, default operator classes and order, no
/// expression, predicate or included column; any access method but
/// btree is not plain either).
async fn indexes(source: &Client, table: &str) -> Result<Vec<(String, bool, Vec<String>, bool)>> {
    let rows = source
        .query(
            "SELECT quote_ident(c.relname), ix.indisunique, \
                    coalesce((SELECT array_agg(a.attname::text ORDER BY u.i) \
                              FROM unnest(ix.indkey) WITH ORDINALITY u(n, i) \
                              JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = u.n), '{}'), \
                    split_part(pg_get_indexdef(ix.indexrelid), ' USING ', 2) = \
                    'btree (' || (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY u.i) \
                                  FROM unnest(ix.indkey) WITH ORDINALITY u(n, i) \
                                  JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = u.n) || ')' \
             FROM pg_index ix JOIN pg_class c ON c.oid = ix.indexrelid \
             WHERE ix.indrelid = to_regclass($1) \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = ix.indexrelid) \
             ORDER BY c.relname",
            &[&table],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the indexes of {table}"), e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let plain: Option<bool> = r.get(3);
            (r.get(0), r.get(1), r.get(2), plain.unwrap_or(false))
        })
        .collect())
}

/// Foreign keys: columns, referenced table and columns, and their
/// actions and deferral as SQL.
async fn foreign_keys(
    source: &Client,
    table: &str,
) -> Result<Vec<(Vec<String>, TableName, Vec<String>, String)>> {
    let rows = source
        .query(
            "SELECT array(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY u(n, i) \
                          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = u.n ORDER BY u.i), \
                    pn.nspname, p.relname, \
                    array(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY u(n, i) \
                          JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = u.n ORDER BY u.i), \
                    con.confupdtype::text, con.confdeltype::text, con.condeferrable, con.condeferred \
             FROM pg_constraint con JOIN pg_class p ON p.oid = con.confrelid \
             JOIN pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE con.conrelid = to_regclass($1) AND con.contype = 'f' ORDER BY con.conname",
            &[&table],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the foreign keys of {table}"), e))?;
    let action = |code: &str| match code {
        "r" => "RESTRICT",
        "c" => "CASCADE",
        "n" => "SET NULL",
        "d" => "SET DEFAULT",
        _ => "NO ACTION",
    };
    Ok(rows
        .iter()
        .map(|r| {
            let (update, delete): (String, String) = (r.get(4), r.get(5));
            let deferral = match (r.get::<_, bool>(6), r.get::<_, bool>(7)) {
                (true, true) => " DEFERRABLE INITIALLY DEFERRED",
                (true, false) => " DEFERRABLE",
                _ => "",
            };
            (
                r.get(0),
                TableName {
                    schema: r.get(1),
                    name: r.get(2),
                },
                r.get(3),
                format!(
                    " ON UPDATE {} ON DELETE {}{deferral}",
                    action(&update),
                    action(&delete)
                ),
            )
        })
        .collect())
}

/// Each created table's statements, in the order they run: every table,
/// then every table's keys, then every foreign key.
pub fn in_order<'a>(creations: impl Iterator<Item = &'a Creation> + Clone) -> (String, String) {
    let tables: String = creations.clone().map(|c| c.table.as_str()).collect();
    let after: String = creations
        .clone()
        .map(|c| c.keys.as_str())
        .chain(creations.map(|c| c.references.as_str()))
        .collect();
    (tables, after)
}
