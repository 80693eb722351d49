//! Applying decoded source changes to the target: row changes are gathered
//! per table into statements over arrays where that is exact (see
//! `batch`), the others each become one parameterised statement, all
//! against the target's own column types. Which changes to apply, and when
//! to commit, is `apply_run`'s.

mod batch;
mod describe;
mod mapped;
mod stream_ledger;

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::changed_keys::Touched;
use super::pgoutput::{Message, OldRow, Value};
use crate::spec::TableName;
use crate::{Error, Result};
pub use batch::Run;
use batch::{Gather, Kind, Pending};
use mapped::MappedTable;
pub use mapped::StreamMasks;
pub use stream_ledger::{applied_lsn, start_ledger};
pub(super) use stream_ledger::{lock_ledger, record_ledger};

#[derive(Debug, Clone)]
struct TargetColumn {
    quoted: String,
    type_sql: String,
    key: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: the target accepts a value for it
    /// only with OVERRIDING SYSTEM VALUE, and never in an UPDATE's SET.
    always_identity: bool,
}

#[derive(Debug, Clone)]
struct TargetTable {
    name: TableName,
    columns: Vec<TargetColumn>,
    full_identity: bool,
    /// Where the target's primary key sits among the stream's columns, in
    /// the key's order; None when the stream's rows do not carry it whole
    /// (no primary key, or a replica identity of other columns).
    primary_key: Option<Vec<usize>>,
    /// Updates may be gathered: the stream finds rows by the primary key,
    /// the table's one unique index (nor has it an exclusion constraint).
    gathers_updates: bool,
    /// Set when the relation lands through the mapping: `name` is then the
    /// target table, and its changes are applied row by row as mapped.
    mapped: Option<Arc<MappedTable>>,
}

impl TargetTable {
    /// Notes which row `row` names: by its primary key where it carries
    /// one, else the whole table.
    fn touch(&self, touched: &mut Touched, row: &[Value]) {
        let key: Option<Vec<&str>> = self.primary_key.as_ref().and_then(|positions| {
            positions
                .iter()
                .map(|&p| match row.get(p) {
                    Some(Value::Text(text)) => Some(text.as_str()),
                    _ => None,
                })
                .collect()
        });
        match key {
            Some(key) => touched.key(&self.name, &key),
            None => touched.whole(&self.name),
        }
    }
}

/// Applies changes to one target connection; remembers the relations the
/// stream described and the statements it prepared.
#[derive(Default)]
pub struct Applier {
    relations: HashMap<u32, Arc<TargetTable>>,
    statements: HashMap<String, (Statement, Arc<str>)>,
    /// Rows changed by what was applied since the last `take_touched`.
    touched: Touched,
    /// Whether the session may plan sequential scans (None: not known, as
    /// after a rollback, which undoes a `SET` made inside it).
    seqscan: Option<bool>,
    /// Row changes gathered, not yet sent.
    pending: Pending,
    /// The mapped tables, by source name.
    mapping: HashMap<TableName, Arc<crate::mapping::carry::Carried>>,
    masks: Option<StreamMasks>,
}

/// Where a row change went.
pub enum Gathered {
    /// Into its table's run; these runs are to be sent now, in order.
    Held { ready: Vec<Run> },
    /// Nowhere: it is applied on its own, after these runs.
    Alone { ready: Vec<Run>, change: Message },
}

impl Applier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the changes of `mapped` tables as the mapping lands them,
    /// masking their masked columns with `masks`.
    pub fn with_mapping(
        mapped: Vec<crate::mapping::carry::Carried>,
        masks: Option<StreamMasks>,
    ) -> Self {
        Self {
            mapping: mapped
                .into_iter()
                .map(|c| (c.source.clone(), Arc::new(c)))
                .collect(),
            masks,
            ..Self::default()
        }
    }

    /// The rows changed since the last call: what the transaction being
    /// committed touched.
    pub fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
    }

    /// The session's planner setting is no longer known (its transaction
    /// rolled back), nor is what was gathered to send in it.
    pub fn forget_session_settings(&mut self) {
        self.seqscan = None;
        self.pending.take_all();
    }

    /// Every run gathered and not sent, in the order they began: before a
    /// commit, a relation described or a truncate.
    pub fn take_runs(&mut self) -> Vec<Run> {
        self.pending.take_all()
    }

    /// Gathers a row change into its table's run where that is exact
    /// (see `batch`), or hands it back to be applied on its own after its
    /// table's run. `xid`: its source transaction, for errors.
    pub fn gather(&mut self, change: Message, xid: u32) -> Result<Gathered> {
        let (relation, kind, values) = match &change {
            Message::Insert { relation, new } => (*relation, Kind::Insert, new.as_slice()),
            Message::Update {
                relation,
                old: None,
                new,
            } => (*relation, Kind::Update, new.as_slice()),
            Message::Delete { relation, old } => (*relation, Kind::Delete, old_values(old)),
            // A key changed: applied on its own, after its table's run.
            Message::Update { relation, .. } => {
                let table = self.table(*relation)?.clone();
                let ready = self.pending.take_table(&table).into_iter().collect();
                return Ok(Gathered::Alone { ready, change });
            }
            _ => {
                return Ok(Gathered::Alone {
                    ready: self.pending.take_all(),
                    change,
                });
            }
        };
        let table = self.table_for(relation, values)?;
        let Some((columns, keys)) = gatherable(&table, kind, values) else {
            // A platform table is not in replica mode: its foreign keys are
            // checked per statement, so every change gathered before this
            // one goes first, whatever its table.
            let ready = if table.mapped.as_ref().is_some_and(|m| !m.created_by_job()) {
                self.pending.take_all()
            } else {
                self.pending.take_table(&table).into_iter().collect()
            };
            return Ok(Gathered::Alone { ready, change });
        };
        table.touch(&mut self.touched, values);
        let mut values = match change {
            Message::Insert { new, .. } | Message::Update { new, .. } => new,
            Message::Delete {
                old: OldRow::Key(values) | OldRow::Full(values),
                ..
            } => values,
            _ => {
                return Err(Error::Internal(
                    "change stream: a row change changed kind".into(),
                ));
            }
        };
        if let Some(mapped) = &table.mapped {
            mapped.mask(&mut values)?;
        }
        let ready = self.pending.add(Gather {
            kind,
            table,
            columns,
            keys,
            values,
            xid,
        });
        Ok(Gathered::Held { ready })
    }

    /// A gathered run as a statement to send, prepared once per session.
    pub async fn run_statement(&mut self, tx: &Client, run: Run) -> Result<RowStatement> {
        let sql = run.sql();
        let (what, setting) = match run.kind {
            Kind::Insert => (None, None),
            Kind::Update => (Some("UPDATE"), self.planner_for(false)),
            Kind::Delete => (Some("DELETE"), self.planner_for(false)),
        };
        let expect = what.map(|what| (what, run.table.name.clone(), run.rows as u64));
        let statement = self.prepared(tx, &sql).await?;
        Ok(RowStatement {
            statement: statement.0,
            sql: statement.1,
            params: Params::Arrays(run.arrays),
            expect,
            setting,
        })
    }

    /// The `SET` that lets the planner scan (a row found by equality in
    /// every column) or makes it use the key's index (a row found by its
    /// key: on a table of a few rows the planner would scan, however many
    /// dead versions a stream of updates leaves in it, and every change
    /// would read the table's whole churn; PostgreSQL's own subscriber
    /// finds rows by the replica-identity index the same way), when the
    /// session is not set so already.
    fn planner_for(&mut self, scan: bool) -> Option<&'static str> {
        if self.seqscan == Some(scan) {
            return None;
        }
        self.seqscan = Some(scan);
        Some(if scan {
            "SET enable_seqscan = on"
        } else {
            "SET enable_seqscan = off"
        })
    }

    /// Turns one decoded message into what the target must run inside the
    /// transaction the caller holds open on `tx`: a relation is described
    /// (and a truncate run) at once; a row change becomes a statement the
    /// caller runs, in order, possibly pipelined behind others.
    pub async fn apply_change(
        &mut self,
        tx: &Client,
        source: &Client,
        change: &Message,
    ) -> Result<Applying> {
        match change {
            Message::Relation(relation) => {
                self.describe(tx, source, relation).await?;
                Ok(Applying::Done)
            }
            Message::Insert { relation, new } => {
                let table = self.table_for(*relation, new)?;
                table.touch(&mut self.touched, new);
                if let Some(mapped) = &table.mapped {
                    let (sql, params) = mapped.insert(new)?;
                    return self.owned_statement(tx, &sql, params, None).await;
                }
                let mut columns = Vec::new();
                let mut values = Vec::new();
                let mut params: Vec<Option<&str>> = Vec::new();
                for (column, value) in table.columns.iter().zip(new) {
                    let Some(param) = text(value, &table, column)? else {
                        continue;
                    };
                    params.push(param);
                    columns.push(column.quoted.clone());
                    values.push(format!("${}::text::{}", params.len(), column.type_sql));
                }
                let overriding = if table.columns.iter().any(|c| c.always_identity) {
                    " OVERRIDING SYSTEM VALUE"
                } else {
                    ""
                };
                let sql = format!(
                    "INSERT INTO {} ({}){overriding} VALUES ({})",
                    table.name.quoted(),
                    columns.join(", "),
                    values.join(", ")
                );
                self.statement(tx, &sql, &params, None).await
            }
            Message::Update { relation, old, new } => {
                let table = self.table_for(*relation, new)?;
                if let Some(old) = old {
                    table.touch(&mut self.touched, old_values(old));
                }
                table.touch(&mut self.touched, new);
                if let Some(mapped) = &table.mapped {
                    let Some((sql, params)) = mapped.update(old.as_ref().map(old_values), new)?
                    else {
                        return Ok(Applying::Done);
                    };
                    // A row the copy skipped is not there to find.
                    let expect = (!mapped.skips()).then(|| ("UPDATE", table.name.clone()));
                    return self.owned_statement(tx, &sql, params, expect).await;
                }
                let mut sets = Vec::new();
                let mut params: Vec<Option<&str>> = Vec::new();
                for (column, value) in table.columns.iter().zip(new) {
                    if matches!(value, Value::Unchanged) || column.always_identity {
                        continue;
                    }
                    params.push(text(value, &table, column)?.flatten());
                    sets.push(format!(
                        "{} = ${}::text::{}",
                        column.quoted,
                        params.len(),
                        column.type_sql
                    ));
                }
                if sets.is_empty() {
                    return Ok(Applying::Done);
                }
                let identity = old.as_ref().map_or(new.as_slice(), old_values);
                let filter = identify(&table, identity, &mut params)?;
                let sql = format!(
                    "UPDATE {} SET {} WHERE {filter}",
                    table.name.only(),
                    sets.join(", ")
                );
                let setting = self.planner_for(table.full_identity);
                self.statement(tx, &sql, &params, Some(("UPDATE", table.name.clone())))
                    .await
                    .map(|applying| applying.after(setting))
            }
            Message::Delete { relation, old } => {
                let table = self.table_for(*relation, old_values(old))?;
                table.touch(&mut self.touched, old_values(old));
                if let Some(mapped) = &table.mapped {
                    let (sql, params) = mapped.delete(old_values(old))?;
                    let expect = (!mapped.skips()).then(|| ("DELETE", table.name.clone()));
                    return self.owned_statement(tx, &sql, params, expect).await;
                }
                let mut params: Vec<Option<&str>> = Vec::new();
                let filter = identify(&table, old_values(old), &mut params)?;
                let sql = format!("DELETE FROM {} WHERE {filter}", table.name.only());
                let setting = self.planner_for(table.full_identity);
                self.statement(tx, &sql, &params, Some(("DELETE", table.name.clone())))
                    .await
                    .map(|applying| applying.after(setting))
            }
            Message::Truncate {
                relations,
                cascade,
                restart_identity,
            } => {
                let mut names = Vec::new();
                for relation in relations {
                    // Each truncated relation is listed, children too.
                    let table = self.table(*relation)?.clone();
                    self.touched.whole(&table.name);
                    // A mapped table's slice goes; the platform's other
                    // rows stay.
                    if let Some(mapped) = table.mapped.as_ref().filter(|m| !m.created_by_job()) {
                        let sql = mapped.truncate()?;
                        tx.batch_execute(&sql)
                            .await
                            .map_err(|e| Error::postgres(format!("cannot apply {sql}"), e))?;
                        continue;
                    }
                    names.push(table.name.only());
                }
                if names.is_empty() {
                    return Ok(Applying::Done);
                }
                let sql = format!(
                    "TRUNCATE {}{}{}",
                    names.join(", "),
                    if *restart_identity {
                        " RESTART IDENTITY"
                    } else {
                        ""
                    },
                    if *cascade { " CASCADE" } else { "" }
                );
                tx.batch_execute(&sql)
                    .await
                    .map_err(|e| Error::postgres(format!("cannot apply {sql}"), e))?;
                Ok(Applying::Done)
            }
            Message::Begin { .. } | Message::Commit { .. } | Message::Other(_) => {
                Ok(Applying::Done)
            }
        }
    }

    fn table(&self, relation: u32) -> Result<&Arc<TargetTable>> {
        self.relations.get(&relation).ok_or_else(|| {
            Error::Internal(format!(
                "change stream: relation {relation} was not described before its changes"
            ))
        })
    }

    /// The table a row change refers to, checked against the row's width
    /// (pgoutput cannot check it: the decoder holds no table state).
    fn table_for(&self, relation: u32, row: &[Value]) -> Result<Arc<TargetTable>> {
        let table = self.table(relation)?;
        if row.len() != table.columns.len() {
            return Err(Error::Internal(format!(
                "change stream: a row of {} has {} values for {} columns",
                table.name,
                row.len(),
                table.columns.len()
            )));
        }
        Ok(table.clone())
    }

    /// The statement for `sql`, prepared once per session, with owned values.
    async fn owned_statement(
        &mut self,
        tx: &Client,
        sql: &str,
        params: Vec<Option<String>>,
        expect_one: Option<(&'static str, TableName)>,
    ) -> Result<Applying> {
        let (statement, text) = self.prepared(tx, sql).await?;
        Ok(Applying::Statement(RowStatement {
            statement,
            sql: text,
            params: Params::Row(params),
            expect: expect_one.map(|(what, table)| (what, table, 1)),
            setting: None,
        }))
    }

    /// The statement for `sql`, prepared once per session, with its values.
    async fn statement(
        &mut self,
        tx: &Client,
        sql: &str,
        params: &[Option<&str>],
        expect_one: Option<(&'static str, TableName)>,
    ) -> Result<Applying> {
        let owned = params.iter().map(|p| p.map(str::to_owned)).collect();
        self.owned_statement(tx, sql, owned, expect_one).await
    }

    /// The statement for `sql`, prepared once per session.
    async fn prepared(&mut self, tx: &Client, sql: &str) -> Result<(Statement, Arc<str>)> {
        if let Some(prepared) = self.statements.get(sql) {
            return Ok(prepared.clone());
        }
        let statement = tx
            .prepare(sql)
            .await
            .map_err(|e| Error::postgres(format!("cannot prepare {sql}"), e))?;
        let prepared = (statement, Arc::<str>::from(sql));
        self.statements.insert(sql.to_owned(), prepared.clone());
        Ok(prepared)
    }
}

/// What one decoded message takes on the target.
pub enum Applying {
    /// Nothing more: a relation described, a table truncated.
    Done,
    /// A row change to run.
    Statement(RowStatement),
}

/// A statement's values: one row's, or a run's as one array per column.
enum Params {
    Row(Vec<Option<String>>),
    Arrays(Vec<Vec<Option<String>>>),
}

/// One row change, or a run of them, as a prepared statement and its
/// values, ready to run in the caller's open transaction.
pub struct RowStatement {
    statement: Statement,
    sql: Arc<str>,
    params: Params,
    /// An UPDATE or DELETE must change exactly this many rows of this
    /// table: one per row it names.
    expect: Option<(&'static str, TableName, u64)>,
    /// A session setting to run just before it.
    setting: Option<&'static str>,
}

impl Applying {
    /// The same, with `setting` run before the statement.
    fn after(self, setting: Option<&'static str>) -> Self {
        match self {
            Applying::Statement(statement) => Applying::Statement(RowStatement {
                setting,
                ..statement
            }),
            done => done,
        }
    }
}

impl RowStatement {
    /// The session setting to send before it, in the same pipeline.
    pub fn take_setting(&mut self) -> Option<&'static str> {
        self.setting.take()
    }

    /// The bytes of values it holds until it has run.
    pub fn held_bytes(&self) -> usize {
        let bytes = |values: &Vec<Option<String>>| -> usize {
            values
                .iter()
                .map(|v| v.as_ref().map_or(0, String::len))
                .sum()
        };
        match &self.params {
            Params::Row(values) => bytes(values),
            Params::Arrays(arrays) => arrays.iter().map(bytes).sum(),
        }
    }

    /// Runs it; returns the rows changed.
    pub async fn run(self, tx: &Client) -> Result<u64> {
        let params: Vec<&(dyn ToSql + Sync)> = match &self.params {
            Params::Row(values) => values.iter().map(|p| p as &(dyn ToSql + Sync)).collect(),
            Params::Arrays(arrays) => arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect(),
        };
        let changed = tx
            .execute(&self.statement, &params)
            .await
            .map_err(|e| Error::postgres(format!("cannot apply {}", self.sql), e))?;
        match &self.expect {
            Some((what, table, rows)) => found_each(changed, *rows, what, table),
            None => Ok(changed),
        }
    }
}

/// An UPDATE or DELETE must find its rows: one that does not means the
/// target no longer matches the source, and going on would hide that.
fn found_each(changed: u64, rows: u64, what: &str, table: &TableName) -> Result<u64> {
    if changed == rows {
        return Ok(changed);
    }
    let named = if rows == 1 {
        format!("a source {what} of {table} matched {changed} rows on the target instead of one")
    } else {
        format!(
            "source {what}s of {rows} rows of {table} matched {changed} rows on the target instead of {rows}"
        )
    };
    Err(Error::Diverged(format!(
        "change stream: {named}: the target no longer matches the source there (run godwit verify to see where)"
    )))
}

fn old_values(old: &OldRow) -> &[Value] {
    match old {
        OldRow::Key(values) | OldRow::Full(values) => values,
    }
}

/// The columns a change of `kind` writes and its key's columns (stream
/// positions), when it may be gathered into its table's run: values in
/// text, a key to find its row by, and for updates a table whose one
/// unique index is that key.
fn gatherable(
    table: &TargetTable,
    kind: Kind,
    values: &[Value],
) -> Option<(Vec<usize>, Vec<usize>)> {
    if values.iter().any(|v| matches!(v, Value::Binary(_))) {
        return None;
    }
    // A mapped table's inserts, its updates that keep the key and its
    // deletes are gathered; key changes are applied on their own.
    if let Some(mapped) = &table.mapped {
        // Rows the copy may have skipped are changed one by one.
        if mapped.skips() {
            return None;
        }
        let keys = mapped.key_positions();
        let keyed = keys.iter().all(|&p| matches!(values[p], Value::Text(_)));
        return match kind {
            Kind::Insert => values
                .iter()
                .all(|v| !matches!(v, Value::Unchanged))
                .then(|| (mapped.read_positions(values), Vec::new())),
            Kind::Update if table.gathers_updates && keyed => {
                let columns: Vec<usize> = mapped
                    .read_positions(values)
                    .into_iter()
                    .filter(|p| !keys.contains(p))
                    .collect();
                (!mapped.sets_for(&columns).is_empty()).then_some((columns, keys))
            }
            Kind::Delete if keyed => Some((Vec::new(), keys)),
            _ => None,
        };
    }
    let present = |p: &usize| !matches!(values[*p], Value::Unchanged);
    let keys: Vec<usize> = match kind {
        Kind::Insert => Vec::new(),
        _ => (0..table.columns.len())
            .filter(|&p| table.columns[p].key)
            .collect(),
    };
    if keys.iter().any(|&p| !matches!(values[p], Value::Text(_))) {
        return None;
    }
    match kind {
        Kind::Insert => Some(((0..values.len()).filter(present).collect(), keys)),
        Kind::Update => {
            let sets: Vec<usize> = (0..values.len())
                .filter(present)
                .filter(|&p| !table.columns[p].always_identity)
                .collect();
            (table.gathers_updates && !keys.is_empty() && !sets.is_empty()).then_some((sets, keys))
        }
        Kind::Delete => (!table.full_identity && !keys.is_empty()).then_some((Vec::new(), keys)),
    }
}

/// A value as a text parameter; None when the column is to be left out
/// (unchanged TOAST), Some(None) for NULL.
fn text<'v>(
    value: &'v Value,
    table: &TargetTable,
    column: &TargetColumn,
) -> Result<Option<Option<&'v str>>> {
    match value {
        Value::Null => Ok(Some(None)),
        Value::Unchanged => Ok(None),
        Value::Text(text) => Ok(Some(Some(text))),
        Value::Binary(_) => Err(Error::Internal(format!(
            "column {} of {} arrived in binary form; the stream asks for text",
            column.quoted, table.name
        ))),
    }
}

/// The WHERE clause that finds the row a change refers to: its replica
/// identity key, or with REPLICA IDENTITY FULL one row equal in every
/// column (compared as text: some types have no equality operator).
fn identify<'v>(
    table: &TargetTable,
    identity: &'v [Value],
    params: &mut Vec<Option<&'v str>>,
) -> Result<String> {
    let mut conditions = Vec::new();
    for (column, value) in table.columns.iter().zip(identity) {
        if table.full_identity {
            let Some(param) = text(value, table, column)? else {
                continue;
            };
            params.push(param);
            conditions.push(format!(
                "t.{}::text IS NOT DISTINCT FROM ${}::text",
                column.quoted,
                params.len()
            ));
        } else if column.key {
            let Some(Some(param)) = text(value, table, column)? else {
                return Err(Error::Internal(format!(
                    "change stream: key column {} of {} has no value",
                    column.quoted, table.name
                )));
            };
            params.push(Some(param));
            conditions.push(format!(
                "{} = ${}::text::{}",
                column.quoted,
                params.len(),
                column.type_sql
            ));
        }
    }
    if conditions.is_empty() {
        return Err(Error::Internal(format!(
            "change stream: no identity for a row of {}",
            table.name
        )));
    }
    if table.full_identity {
        // Without a key, duplicates are possible: change exactly one of them.
        Ok(format!(
            "ctid = (SELECT t.ctid FROM {} t WHERE {} LIMIT 1)",
            table.name.only(),
            conditions.join(" AND ")
        ))
    } else {
        Ok(conditions.join(" AND "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::quote_ident;

    #[test]
    fn a_row_is_noted_by_its_primary_key_or_its_whole_table() {
        use crate::pg::changed_keys::Touch;
        let column = |name: &str, key| TargetColumn {
            quoted: quote_ident(name),
            type_sql: "text".into(),
            key,
            always_identity: false,
        };
        let name = TableName {
            schema: "public".into(),
            name: "t".into(),
        };
        // Key (b, a): the key's order, not the table's.
        let mut table = TargetTable {
            name: name.clone(),
            columns: vec![column("a", true), column("b", true), column("v", false)],
            full_identity: false,
            primary_key: Some(vec![1, 0]),
            gathers_updates: true,
            mapped: None,
        };
        let text = |v: &str| Value::Text(v.into());
        let mut touched = Touched::default();
        table.touch(&mut touched, &[text("1"), text("x"), Value::Null]);
        table.touch(&mut touched, &[text("1"), text("x"), text("again")]);
        let keys: Vec<_> = touched.tables().collect();
        assert_eq!(
            keys,
            vec![(&name, &Touch::Keys([r#"["x","1"]"#.to_owned()].into()))]
        );
        // A key value the row does not carry: the whole table.
        table.touch(&mut touched, &[text("2"), Value::Unchanged, Value::Null]);
        assert_eq!(touched.tables().next(), Some((&name, &Touch::Whole)));
        // No primary key: the whole table.
        table.primary_key = None;
        let mut touched = Touched::default();
        table.touch(&mut touched, &[text("1"), text("x"), Value::Null]);
        assert_eq!(touched.tables().next(), Some((&name, &Touch::Whole)));
    }

    #[test]
    fn identity_uses_key_columns_or_one_equal_row() {
        let column = |name: &str, key| TargetColumn {
            quoted: quote_ident(name),
            type_sql: "integer".into(),
            key,
            always_identity: false,
        };
        let mut table = TargetTable {
            name: TableName {
                schema: "public".into(),
                name: "t".into(),
            },
            columns: vec![column("id", true), column("v", false)],
            full_identity: false,
            primary_key: Some(vec![0]),
            gathers_updates: true,
            mapped: None,
        };
        let values = vec![Value::Text("4".into()), Value::Null];
        let mut params = Vec::new();
        let filter = identify(&table, &values, &mut params).expect("key present");
        assert_eq!(filter, "\"id\" = $1::text::integer");
        assert_eq!(params, vec![Some("4")]);

        table.full_identity = true;
        let mut params = Vec::new();
        let filter = identify(&table, &values, &mut params).expect("full row");
        assert!(filter.starts_with("ctid = (SELECT t.ctid FROM ONLY \"public\".\"t\" t WHERE"));
        assert!(filter.contains("t.\"v\"::text IS NOT DISTINCT FROM $2::text"));
        assert_eq!(params, vec![Some("4"), None]);

        table.full_identity = false;
        let missing = vec![Value::Null, Value::Null];
        assert!(identify(&table, &missing, &mut Vec::new()).is_err());
    }
}
