//! The changed-key log in the target's `godwit` schema: which primary keys
//! of which tables the change stream touched, and at which source position.
//! It is written in the same transaction as the changes, so it is exactly
//! as complete as the target ledger says the stream is.
//!
//! The cutover reads it to check, while the source is frozen, only what
//! changed since the last full verification (see `verify::compare_changed`):
//! work that grows with the last moments' writes, not with the database.
//! It never decides what matches; both databases still compute that from
//! their own rows.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use super::pgoutput::format_lsn;
use crate::spec::{TableName, quote_literal};
use crate::{Error, Result};

/// A key that stands for the whole table: a truncate, a table without a
/// primary key, a key the stream could not read. Never a JSON array, so it
/// cannot collide with a row's key.
const WHOLE_TABLE: &str = "*";

/// What the stream touched in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touch {
    /// The rows of these primary keys, each a JSON array of the key's
    /// columns as text, in the key's order.
    Keys(BTreeSet<String>),
    /// Rows that cannot be named by key: the table is compared whole.
    Whole,
}

/// What the stream touched since some position, table by table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    tables: BTreeMap<TableName, Touch>,
}

impl Touched {
    /// The row of `table` whose primary key columns hold `key` (as text).
    pub fn key(&mut self, table: &TableName, key: &[&str]) {
        let entry = self
            .tables
            .entry(table.clone())
            .or_insert_with(|| Touch::Keys(BTreeSet::new()));
        if let Touch::Keys(keys) = entry {
            // serde_json writes a list of strings the same way every time.
            keys.insert(serde_json::to_string(key).unwrap_or_else(|_| WHOLE_TABLE.to_owned()));
        }
    }

    /// Rows of `table` that cannot be named by key.
    pub fn whole(&mut self, table: &TableName) {
        self.tables.insert(table.clone(), Touch::Whole);
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    pub fn tables(&self) -> impl Iterator<Item = (&TableName, &Touch)> {
        self.tables.iter()
    }

    /// Keys named, over every table.
    pub fn keys(&self) -> usize {
        self.tables
            .values()
            .map(|t| match t {
                Touch::Keys(keys) => keys.len(),
                Touch::Whole => 0,
            })
            .sum()
    }

    fn insert(&mut self, table: TableName, key: String) {
        if key == WHOLE_TABLE {
            self.tables.insert(table, Touch::Whole);
            return;
        }
        match self
            .tables
            .entry(table)
            .or_insert_with(|| Touch::Keys(BTreeSet::new()))
        {
            Touch::Keys(keys) => {
                keys.insert(key);
            }
            Touch::Whole => {}
        }
    }
}

/// One row per table per committed batch of changes, its keys in an array:
/// a row per key cost the target an index probe and an update for every
/// key of every batch, as much work again as applying the changes.
pub const SCHEMA_SQL: &str = "
DO $$ BEGIN
    -- Logs written one row per key are folded into the new layout.
    IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('godwit.changed_keys')
               AND attname = 'key' AND NOT attisdropped) THEN
        ALTER TABLE godwit.changed_keys RENAME TO changed_keys_by_row;
        ALTER TABLE godwit.changed_keys_by_row RENAME CONSTRAINT changed_keys_pkey TO changed_keys_by_row_pkey;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS godwit.changed_keys (
    job_id      text   NOT NULL,
    lsn         pg_lsn NOT NULL,
    schema_name text   NOT NULL,
    table_name  text   NOT NULL,
    keys        text[] NOT NULL,
    PRIMARY KEY (job_id, lsn, schema_name, table_name)
);
DO $$ BEGIN
    IF to_regclass('godwit.changed_keys_by_row') IS NOT NULL THEN
        INSERT INTO godwit.changed_keys
            SELECT job_id, lsn, schema_name, table_name, array_agg(key)
            FROM godwit.changed_keys_by_row GROUP BY 1, 2, 3, 4;
        DROP TABLE godwit.changed_keys_by_row;
    END IF;
END $$;
";

/// Records, inside the caller's open transaction, that the changes it
/// applies up to `lsn` touched `touched`.
pub async fn record(tx: &Client, job: &str, lsn: u64, touched: &Touched) -> Result<()> {
    if touched.is_empty() {
        return Ok(());
    }
    let (mut schemas, mut names, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for (table, touch) in touched.tables() {
        schemas.push(table.schema.as_str());
        names.push(table.name.as_str());
        // One text array per table, in the text form unnest can split.
        keys.push(match touch {
            Touch::Whole => array_literal(&[WHOLE_TABLE.to_owned()]),
            Touch::Keys(set) => array_literal_of(set.iter()),
        });
    }
    let lsn = format_lsn(lsn);
    tx.execute(
        "INSERT INTO godwit.changed_keys (job_id, lsn, schema_name, table_name, keys) \
         SELECT $1, $5::text::pg_lsn, s, t, k::text[] FROM unnest($2::text[], $3::text[], $4::text[]) AS u(s, t, k)",
        &[&job, &schemas, &names, &keys, &lsn],
    )
    .await
    .map_err(|e| Error::postgres("cannot record the keys the change stream touched", e))?;
    Ok(())
}

/// What the stream of `job` touched after `lsn`, as the target holds it now.
pub async fn since(target: &Client, job: &str, lsn: u64) -> Result<Touched> {
    let rows = target
        .query(
            "SELECT DISTINCT schema_name, table_name, unnest(keys) FROM godwit.changed_keys \
             WHERE job_id = $1 AND lsn > $2::text::pg_lsn",
            &[&job, &format_lsn(lsn)],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the keys the change stream touched", e))?;
    let mut touched = Touched::default();
    for row in rows {
        let table = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        touched.insert(table, row.get(2));
    }
    Ok(touched)
}

/// Forgets what the stream of `job` touched up to `lsn`: a full
/// verification has since compared it.
pub async fn forget_through(target: &Client, job: &str, lsn: u64) -> Result<()> {
    target
        .execute(
            "DELETE FROM godwit.changed_keys WHERE job_id = $1 AND lsn <= $2::text::pg_lsn",
            &[&job, &format_lsn(lsn)],
        )
        .await
        .map_err(|e| Error::postgres("cannot prune the keys the change stream touched", e))?;
    Ok(())
}

/// A filter on `t` selecting the rows of `keys` (JSON arrays of text, in
/// the order of `key_columns`), each column cast to its type on the side
/// the filter runs on, so the primary key's index serves it. `key_columns`
/// are quoted names with their types.
pub fn key_filter(key_columns: &[(String, String)], keys: &BTreeSet<String>) -> Result<String> {
    let mut columns: Vec<Vec<String>> = vec![Vec::with_capacity(keys.len()); key_columns.len()];
    for key in keys {
        let values: Vec<String> = serde_json::from_str(key)
            .map_err(|e| Error::Internal(format!("changed key {key:?} is not a list: {e}")))?;
        if values.len() != key_columns.len() {
            return Err(Error::Internal(format!(
                "changed key {key:?} has {} columns, the primary key {}",
                values.len(),
                key_columns.len()
            )));
        }
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    let arrays: Vec<String> = columns
        .iter()
        .zip(key_columns)
        .map(|(values, (_, type_sql))| {
            format!(
                "{}::text[]::{type_sql}[]",
                quote_literal(&array_literal(values))
            )
        })
        .collect();
    let names: Vec<&str> = key_columns.iter().map(|(name, _)| name.as_str()).collect();
    let qualified: Vec<String> = names.iter().map(|n| format!("t.{n}")).collect();
    Ok(format!(
        "({}) IN (SELECT * FROM unnest({}))",
        qualified.join(", "),
        arrays.join(", ")
    ))
}

/// PostgreSQL's text form of a one-dimensional text array.
fn array_literal(values: &[String]) -> String {
    array_literal_of(values.iter())
}

fn array_literal_of<'a>(values: impl Iterator<Item = &'a String>) -> String {
    let mut out = String::from("{");
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in v.chars() {
            if c == '\\' || c == '"' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> TableName {
        TableName {
            schema: "public".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_whole_table_absorbs_its_keys_in_either_order() {
        let mut touched = Touched::default();
        touched.key(&table("a"), &["1"]);
        touched.whole(&table("a"));
        touched.key(&table("a"), &["2"]);
        touched.insert(table("b"), "[\"3\"]".into());
        touched.insert(table("b"), WHOLE_TABLE.into());
        assert!(touched.tables().all(|(_, t)| *t == Touch::Whole));
        assert_eq!(touched.keys(), 0);
    }

    #[test]
    fn a_key_filter_quotes_what_the_values_hold() {
        let keys: BTreeSet<String> = [
            serde_json::to_string(&["1", "it's \"x\\"]).unwrap(),
            serde_json::to_string(&["2", "{a,b}"]).unwrap(),
        ]
        .into();
        let filter = key_filter(
            &[
                ("\"id\"".into(), "integer".into()),
                ("\"k\"".into(), "text".into()),
            ],
            &keys,
        )
        .unwrap();
        assert_eq!(
            filter,
            "(t.\"id\", t.\"k\") IN (SELECT * FROM unnest('{\"1\",\"2\"}'::text[]::integer[], \
             '{\"it''s \\\"x\\\\\",\"{a,b}\"}'::text[]::text[]))"
        );
    }

    #[test]
    fn a_key_of_the_wrong_width_is_refused() {
        let keys: BTreeSet<String> = [serde_json::to_string(&["1"]).unwrap()].into();
        let refused = key_filter(
            &[("a".into(), "int".into()), ("b".into(), "int".into())],
            &keys,
        );
        assert!(refused.is_err());
    }
}
