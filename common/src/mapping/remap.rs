//! New ids for remapped keys (`remap: true`): the target's own default or
//! identity numbers each source key once, `godwit.key_map` on the target
//! keeps old → new, and every column holding that key (the key itself,
//! and the job's columns referencing it by a foreign key) lands with the
//! new id. The map is filled as chunks load, in the chunk's own
//! transaction (exactly once with it), by whichever chunk meets an old key
//! first: a referencing row may arrive before the row it references. The
//! check reads old ids back through the map. Owns the map's SQL and the
//! rewriting of COPY text rows; never reads the source.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

use crate::pgcopy::{decode_text_field, encode_text_field};
use crate::spec::{quote_ident, quote_literal};
use crate::{Error, Result};

/// The map's table: one row per old key of a remapped key column, per
/// slice (the tenant's value, or empty for a table the job fills alone).
pub const SCHEMA_SQL: &str = "\
CREATE TABLE IF NOT EXISTS godwit.key_map (
    target_table  text NOT NULL,
    target_column text NOT NULL,
    tenant        text NOT NULL,
    old_key       text NOT NULL,
    new_key       text NOT NULL,
    PRIMARY KEY (target_table, target_column, tenant, old_key),
    UNIQUE (target_table, target_column, tenant, new_key)
);
-- The new id of an old key, numbered with `numbering` (the key column's
-- own identity or default, as SQL) when the map has none yet: how a
-- streamed change lands a key, in the change's own transaction. Invoker's
-- rights: it runs nothing its caller could not.
CREATE OR REPLACE FUNCTION godwit.new_id(key_table text, key_column text, key_tenant text,
                                         old text, numbering text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    found text;
BEGIN
    IF old IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT m.new_key INTO found FROM godwit.key_map m
     WHERE m.target_table = key_table AND m.target_column = key_column
       AND m.tenant = key_tenant AND m.old_key = old;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    EXECUTE format('SELECT (%s)::text', numbering) INTO found;
    INSERT INTO godwit.key_map (target_table, target_column, tenant, old_key, new_key)
    VALUES (key_table, key_column, key_tenant, old, found) ON CONFLICT DO NOTHING;
    SELECT m.new_key INTO found FROM godwit.key_map m
     WHERE m.target_table = key_table AND m.target_column = key_column
       AND m.tenant = key_tenant AND m.old_key = old;
    RETURN found;
END
$$;
";

/// A remapped key: where its rows land, and how the target numbers them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RemapKey {
    /// The key's target table and column, unquoted.
    pub table: String,
    pub column: String,
    /// The slice's tenant value; empty without one.
    pub tenant: String,
    /// SQL giving the next new id on the target (its column's identity or
    /// default).
    pub new_id: String,
}

impl RemapKey {
    /// The old key behind a landed value `value` (SQL over the target), as
    /// `source_type`; NULL for a NULL value.
    pub fn old_of(&self, value: &str, source_type: &str) -> String {
        format!(
            "(SELECT m.old_key FROM godwit.key_map m WHERE m.target_table = {} AND m.target_column = {} \
             AND m.tenant = {} AND m.new_key = ({value})::text)::{source_type}",
            quote_literal(&self.table),
            quote_literal(&self.column),
            quote_literal(&self.tenant)
        )
    }

    /// The new id of an old key `value` (SQL over the source's values),
    /// numbered now if the map has none, as `target_type`.
    pub fn numbered(&self, value: &str, target_type: &str) -> String {
        format!(
            "(godwit.new_id({}, {}, {}, ({value})::text, {}))::{target_type}",
            quote_literal(&self.table),
            quote_literal(&self.column),
            quote_literal(&self.tenant),
            quote_literal(&self.new_id)
        )
    }

    /// The new id the map holds for an old key `value` (NULL if none), as
    /// `target_type`: how a change finds its row.
    pub fn new_of(&self, value: &str, target_type: &str) -> String {
        format!(
            "(SELECT m.new_key FROM godwit.key_map m WHERE m.target_table = {} AND m.target_column = {} \
             AND m.tenant = {} AND m.old_key = ({value})::text)::{target_type}",
            quote_literal(&self.table),
            quote_literal(&self.column),
            quote_literal(&self.tenant)
        )
    }

    /// Deletes the map of this key (a re-run numbers its rows again).
    pub fn forget(&self) -> String {
        format!(
            "DELETE FROM godwit.key_map WHERE target_table = {} AND target_column = {} AND tenant = {}; ",
            quote_literal(&self.table),
            quote_literal(&self.column),
            quote_literal(&self.tenant)
        )
    }
}

/// A copied column whose values are replaced by new ids, by position in
/// the table's copy columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemappedColumn {
    pub index: usize,
    /// The source column, for messages.
    pub column: String,
    pub key: RemapKey,
}

/// The name the check gives a landed column's old value.
pub fn old_value_column(target_column: &str) -> String {
    quote_ident(&format!("godwit_old_{target_column}"))
}

/// `tuples` (COPY text rows) with each remapped field replaced by its new
/// id, numbering old keys seen for the first time; in `tx`, the chunk's
/// own load transaction.
pub async fn rewrite(
    tx: &Transaction<'_>,
    columns: &[RemappedColumn],
    tuples: &Bytes,
) -> Result<Bytes> {
    let rows: Vec<&[u8]> = tuples
        .split(|b| *b == b'\n')
        .filter(|r| !r.is_empty())
        .collect();
    let mut new_ids: Vec<HashMap<Vec<u8>, String>> = Vec::with_capacity(columns.len());
    for column in columns {
        let mut old: BTreeSet<String> = BTreeSet::new();
        for row in &rows {
            let Some(field) = row.split(|b| *b == b'\t').nth(column.index) else {
                return Err(corrupt(
                    column,
                    "a row has fewer fields than the copy's columns",
                ));
            };
            if let Some(value) = decode_text_field(field) {
                old.insert(
                    String::from_utf8(value).map_err(|_| corrupt(column, "a key is not UTF-8"))?,
                );
            }
        }
        new_ids.push(numbered(tx, &column.key, old).await?);
    }
    let mut out = Vec::with_capacity(tuples.len() + rows.len() * 8);
    for row in rows {
        for (i, field) in row.split(|b| *b == b'\t').enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            let remapped = columns.iter().position(|c| c.index == i);
            match (remapped, decode_text_field(field)) {
                (Some(at), Some(old)) => {
                    let new = new_ids[at].get(&old).ok_or_else(|| {
                        corrupt(&columns[at], "an old key was left without a new id")
                    })?;
                    encode_text_field(Some(new.as_bytes()), &mut out);
                }
                _ => out.extend_from_slice(field),
            }
        }
        out.push(b'\n');
    }
    Ok(Bytes::from(out))
}

/// The new ids of `old` keys: those the map has, and new ones numbered by
/// the target for the others. Inserted in key order, so that two chunks
/// numbering overlapping keys wait on each other instead of deadlocking.
async fn numbered(
    tx: &Transaction<'_>,
    key: &RemapKey,
    old: BTreeSet<String>,
) -> Result<HashMap<Vec<u8>, String>> {
    if old.is_empty() {
        return Ok(HashMap::new());
    }
    let old: Vec<String> = old.into_iter().collect();
    let context = || format!("cannot number the new ids of {}.{}", key.table, key.column);
    tx.execute(
        &format!(
            "INSERT INTO godwit.key_map (target_table, target_column, tenant, old_key, new_key) \
             SELECT $1, $2, $3, o, ({})::text FROM unnest($4::text[]) AS o \
             WHERE NOT EXISTS (SELECT 1 FROM godwit.key_map m WHERE m.target_table = $1 \
                               AND m.target_column = $2 AND m.tenant = $3 AND m.old_key = o) \
             ORDER BY o ON CONFLICT DO NOTHING",
            key.new_id
        ),
        &[&key.table, &key.column, &key.tenant, &old],
    )
    .await
    .map_err(|e| Error::postgres(context(), e))?;
    let rows = tx
        .query(
            "SELECT old_key, new_key FROM godwit.key_map WHERE target_table = $1 AND target_column = $2 \
             AND tenant = $3 AND old_key = ANY($4)",
            &[&key.table, &key.column, &key.tenant, &old],
        )
        .await
        .map_err(|e| Error::postgres(context(), e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0).into_bytes(), r.get::<_, String>(1)))
        .collect())
}

fn corrupt(column: &RemappedColumn, reason: &str) -> Error {
    Error::Corrupt {
        what: format!(
            "the remapped column {} of {}",
            column.column, column.key.table
        ),
        reason: reason.into(),
    }
}
