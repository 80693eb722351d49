//! Row changes of one table gathered into one statement over arrays
//! (`unnest`): inserts become one `INSERT … SELECT`, updates of distinct
//! keys one `UPDATE … FROM`, deletes one `DELETE … USING`. A table's changes
//! keep their order (a run ends where the kind or the columns change);
//! across tables none is needed, since in replica mode the target checks
//! its foreign keys at commit and none of them acts by itself. Updates are
//! gathered only on tables whose one unique index is the primary key, so a
//! statement that changes several rows at once can never meet a uniqueness
//! conflict the source's row-by-row order avoided.
//!
//! A mapped table's changes are gathered too, into statements over the
//! mapping's expressions of the rows (see `mapped`).
//!
//! Owns which changes may be gathered and the statements' text; never runs
//! them, never decides when to commit.

use std::collections::HashMap;
use std::sync::Arc;

use super::{TargetTable, Value};

/// The most rows a run gathers before it is sent.
const MAX_RUN_ROWS: usize = 2_000;
/// The most value bytes a run, and all runs together, hold before sent.
const MAX_RUN_BYTES: usize = 1 << 20;
const MAX_PENDING_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Insert,
    Update,
    Delete,
}

/// One table's consecutive changes of one kind over the same columns.
pub struct Run {
    pub(super) kind: Kind,
    pub(super) table: Arc<TargetTable>,
    /// Stream positions of the columns written (insert: every column the
    /// change carries; update: the columns it sets; delete: none).
    pub(super) columns: Vec<usize>,
    /// Stream positions of the key columns (update, delete).
    pub(super) keys: Vec<usize>,
    /// One array per written column, then one per key column.
    pub(super) arrays: Vec<Vec<Option<String>>>,
    /// Where each key's row sits: a later update of a key replaces the
    /// earlier one's values (it sets the same columns, and its row stays).
    by_key: HashMap<Vec<String>, usize>,
    pub(super) rows: usize,
    bytes: usize,
    /// The first source transaction whose change the run holds.
    pub(super) first_xid: u32,
}

impl Run {
    /// The first source transaction whose change it holds.
    pub fn first_xid(&self) -> u32 {
        self.first_xid
    }

    /// The statement's text: parameters `$1…` are the arrays, in order.
    pub(super) fn sql(&self) -> String {
        let table = &self.table;
        if let Some(mapped) = &table.mapped {
            return match self.kind {
                Kind::Insert => mapped.insert_rows(&self.columns),
                Kind::Update => mapped.update_rows(&self.columns, &self.keys),
                Kind::Delete => mapped.delete_rows(&self.keys),
            };
        }
        let column = |p: usize| &table.columns[p];
        let mut inputs = Vec::new();
        let mut names = Vec::new();
        for (i, _) in self.columns.iter().enumerate() {
            inputs.push(format!("${}::text[]", inputs.len() + 1));
            names.push(format!("c{i}"));
        }
        for (i, _) in self.keys.iter().enumerate() {
            inputs.push(format!("${}::text[]", inputs.len() + 1));
            names.push(format!("k{i}"));
        }
        let from = format!("unnest({}) AS v({})", inputs.join(", "), names.join(", "));
        let matches = || {
            self.keys
                .iter()
                .enumerate()
                .map(|(i, &p)| format!("t.{} = v.k{i}::{}", column(p).quoted, column(p).type_sql))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        match self.kind {
            Kind::Insert => {
                let overriding = if table.columns.iter().any(|c| c.always_identity) {
                    " OVERRIDING SYSTEM VALUE"
                } else {
                    ""
                };
                let targets: Vec<&str> = self
                    .columns
                    .iter()
                    .map(|&p| column(p).quoted.as_str())
                    .collect();
                let values: Vec<String> = self
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| format!("v.c{i}::{}", column(p).type_sql))
                    .collect();
                format!(
                    "INSERT INTO {} ({}){overriding} SELECT {} FROM {from}",
                    table.name.quoted(),
                    targets.join(", "),
                    values.join(", ")
                )
            }
            Kind::Update => {
                let sets: Vec<String> = self
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| format!("{} = v.c{i}::{}", column(p).quoted, column(p).type_sql))
                    .collect();
                format!(
                    "UPDATE {} AS t SET {} FROM {from} WHERE {}",
                    table.name.only(),
                    sets.join(", "),
                    matches()
                )
            }
            Kind::Delete => format!(
                "DELETE FROM {} AS t USING {from} WHERE {}",
                table.name.only(),
                matches()
            ),
        }
    }
}

/// One change to gather: its table, kind, the columns it writes and its
/// key's columns (stream positions), and its values.
pub(super) struct Gather {
    pub kind: Kind,
    pub table: Arc<TargetTable>,
    pub columns: Vec<usize>,
    pub keys: Vec<usize>,
    pub values: Vec<Value>,
    pub xid: u32,
}

/// A table the mapping lands in that the platform owns (not one the job
/// created).
fn platform(table: &TargetTable) -> bool {
    table.mapped.as_ref().is_some_and(|m| !m.created_by_job())
}

/// The runs being gathered, at most one per table, in the order they began.
#[derive(Default)]
pub(super) struct Pending {
    runs: Vec<Run>,
    bytes: usize,
}

impl Pending {
    fn position(&self, table: &Arc<TargetTable>) -> Option<usize> {
        self.runs.iter().position(|r| Arc::ptr_eq(&r.table, table))
    }

    /// The run of `table`, if one is being gathered: to send before a
    /// change of that table that is applied on its own.
    pub fn take_table(&mut self, table: &Arc<TargetTable>) -> Option<Run> {
        let run = self.runs.remove(self.position(table)?);
        self.bytes -= run.bytes;
        Some(run)
    }

    /// Every run being gathered, in the order they began.
    pub fn take_all(&mut self) -> Vec<Run> {
        self.bytes = 0;
        std::mem::take(&mut self.runs)
    }

    /// Adds a change; returns the runs now to send, in order (its table's
    /// run it does not fit, a run that is full, all when too much is held).
    pub fn add(&mut self, change: Gather) -> Vec<Run> {
        // Keys are read before the values are moved out: a key column is
        // also among the columns an update sets.
        let mut ready = Vec::new();
        let key: Vec<String> = change
            .keys
            .iter()
            .map(|&p| match &change.values[p] {
                Value::Text(text) => text.clone(),
                _ => String::new(),
            })
            .collect();
        let fits = self.position(&change.table).is_some_and(|i| {
            let run = &self.runs[i];
            run.kind == change.kind
                && run.columns == change.columns
                && !(change.kind == Kind::Delete && run.by_key.contains_key(&key))
        });
        // A platform table is not in replica mode: its foreign keys are
        // checked per statement, so its changes and every other table's
        // keep their exact order, and only consecutive changes of one kind
        // to it are gathered.
        let ordered = platform(&change.table) || self.runs.iter().any(|r| platform(&r.table));
        if ordered && !(fits && self.runs.len() == 1) {
            ready.extend(self.take_all());
        } else if !fits {
            ready.extend(self.take_table(&change.table));
        }
        let i = match self.position(&change.table) {
            Some(i) => i,
            None => {
                self.runs.push(Run {
                    kind: change.kind,
                    table: change.table.clone(),
                    arrays: vec![Vec::new(); change.columns.len() + change.keys.len()],
                    columns: change.columns.clone(),
                    keys: change.keys.clone(),
                    by_key: HashMap::new(),
                    rows: 0,
                    bytes: 0,
                    first_xid: change.xid,
                });
                self.runs.len() - 1
            }
        };
        let run = &mut self.runs[i];
        let mut source = change.values;
        let mut values: Vec<Option<String>> = change
            .columns
            .iter()
            .map(|&p| match std::mem::replace(&mut source[p], Value::Null) {
                Value::Text(text) => Some(text),
                _ => None,
            })
            .chain(key.iter().cloned().map(Some))
            .collect();
        let bytes: usize = values
            .iter()
            .map(|v| v.as_ref().map_or(0, String::len))
            .sum();
        let row = match change.kind {
            Kind::Insert => None,
            _ => run.by_key.get(&key).copied(),
        };
        match row {
            Some(row) => {
                for (array, value) in run.arrays.iter_mut().zip(values.drain(..)) {
                    array[row] = value;
                }
            }
            None => {
                if change.kind != Kind::Insert {
                    run.by_key.insert(key, run.rows);
                }
                for (array, value) in run.arrays.iter_mut().zip(values.drain(..)) {
                    array.push(value);
                }
                run.rows += 1;
            }
        }
        run.bytes += bytes;
        self.bytes += bytes;
        if run.rows >= MAX_RUN_ROWS || run.bytes >= MAX_RUN_BYTES {
            ready.extend(self.take_table(&change.table));
        }
        if self.bytes >= MAX_PENDING_BYTES {
            ready.extend(self.take_all());
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::super::TargetColumn;
    use super::*;
    use crate::spec::{TableName, quote_ident};

    fn table(name: &str) -> Arc<TargetTable> {
        let column = |name: &str, key, type_sql: &str| TargetColumn {
            quoted: quote_ident(name),
            type_sql: type_sql.into(),
            key,
            always_identity: false,
        };
        Arc::new(TargetTable {
            name: TableName {
                schema: "public".into(),
                name: name.into(),
            },
            columns: vec![column("id", true, "integer"), column("v", false, "text")],
            full_identity: false,
            primary_key: Some(vec![0]),
            gathers_updates: true,
            mapped: None,
        })
    }

    fn change(kind: Kind, table: &Arc<TargetTable>, id: &str, v: Option<&str>) -> Gather {
        let value = v.map_or(Value::Null, |v| Value::Text(v.into()));
        Gather {
            kind,
            table: table.clone(),
            columns: match kind {
                Kind::Delete => Vec::new(),
                _ => vec![0, 1],
            },
            keys: match kind {
                Kind::Insert => Vec::new(),
                _ => vec![0],
            },
            values: vec![Value::Text(id.into()), value],
            xid: 7,
        }
    }

    #[test]
    fn runs_keep_each_table_s_order_and_end_where_the_kind_changes() {
        let (a, b) = (table("a"), table("b"));
        let mut pending = Pending::default();
        assert!(
            pending
                .add(change(Kind::Insert, &a, "1", Some("x")))
                .is_empty()
        );
        assert!(
            pending
                .add(change(Kind::Update, &b, "5", Some("y")))
                .is_empty()
        );
        assert!(pending.add(change(Kind::Insert, &a, "2", None)).is_empty());
        // An update of a's rows ends a's run of inserts, not b's run.
        let ready = pending.add(change(Kind::Update, &a, "1", Some("z")));
        assert_eq!(ready.len(), 1);
        assert_eq!((ready[0].kind, ready[0].rows), (Kind::Insert, 2));
        assert_eq!(
            ready[0].arrays,
            vec![
                vec![Some("1".into()), Some("2".into())],
                vec![Some("x".into()), None]
            ]
        );
        // A second update of a key replaces the first's values.
        assert!(
            pending
                .add(change(Kind::Update, &a, "1", Some("w")))
                .is_empty()
        );
        let rest = pending.take_all();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].table.name.name, "b");
        assert_eq!(rest[1].rows, 1);
        assert_eq!(
            rest[1].arrays,
            vec![
                vec![Some("1".into())],
                vec![Some("w".into())],
                vec![Some("1".into())]
            ]
        );
        // A key deleted twice in a run is two statements: the second must
        // find nothing, and say so.
        let mut pending = Pending::default();
        assert!(pending.add(change(Kind::Delete, &a, "3", None)).is_empty());
        assert_eq!(pending.add(change(Kind::Delete, &a, "3", None)).len(), 1);
    }

    #[test]
    fn statements_read_their_rows_from_arrays_cast_to_the_target_s_types() {
        let a = table("a");
        let mut pending = Pending::default();
        pending.add(change(Kind::Insert, &a, "1", Some("x")));
        pending.add(change(Kind::Update, &a, "1", Some("y")));
        pending.add(change(Kind::Delete, &a, "1", None));
        let mut sql: Vec<String> = Vec::new();
        sql.extend(pending.take_all().iter().map(Run::sql));
        assert_eq!(
            sql,
            vec![
                "DELETE FROM ONLY \"public\".\"a\" AS t USING unnest($1::text[]) AS v(k0) \
                  WHERE t.\"id\" = v.k0::integer"
            ]
        );
        let mut pending = Pending::default();
        pending.add(change(Kind::Insert, &a, "1", Some("x")));
        let insert = pending.add(change(Kind::Update, &a, "1", Some("y")));
        assert_eq!(
            insert[0].sql(),
            "INSERT INTO \"public\".\"a\" (\"id\", \"v\") SELECT v.c0::integer, v.c1::text \
             FROM unnest($1::text[], $2::text[]) AS v(c0, c1)"
        );
        assert_eq!(
            pending.take_all()[0].sql(),
            "UPDATE ONLY \"public\".\"a\" AS t SET \"id\" = v.c0::integer, \"v\" = v.c1::text \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS v(c0, c1, k0) WHERE t.\"id\" = v.k0::integer"
        );
    }
}
