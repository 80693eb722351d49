//! Changes to a mapped table applied as the copy landed its rows. Each
//! row's values, as the source sent them (text), become a one-row derived
//! table `t` with the source's column names and types, from which the
//! target computes the carried expressions (renames, strict conversions
//! and their guards, offsets, added values) exactly as the copy's source
//! did; a masked column arrives masked, by this process with the
//! customer's key, before it is sent. Updates and deletes find their row
//! by its key as landed, in the job's slice only, so another tenant's rows
//! are never touched. SQL text and parameters only.

use std::sync::Arc;

use tokio_postgres::Client;

use super::super::pgoutput::{Relation, Value};
use crate::mapping::carry::{Carried, MaskedConversion};
use crate::mapping::mask::{ColumnMask, Masker, TokenKey};
use crate::spec::quote_ident;
use crate::{Error, Result};

/// The customer's token key, for masked columns.
#[derive(Clone, Debug)]
pub struct StreamMasks {
    pub key: TokenKey,
    pub customer: String,
}

/// A relation of the stream that lands through the mapping.
pub(super) struct MappedTable {
    pub(super) carried: Arc<Carried>,
    /// Per relation column: its quoted name and the type its text is read
    /// as (the source's; text for a masked column).
    columns: Vec<(String, String)>,
    /// Per relation column: the mask its text gets before it is sent,
    /// and the conversion before the mask.
    masks: Vec<Option<ColumnMask>>,
    conversions: Vec<Option<MaskedConversion>>,
    /// Positions of the source's key columns among the relation's, in the
    /// key's order.
    key: Vec<usize>,
    masker: Option<StreamMasks>,
}

/// A statement and its parameters (`$n`, text).
pub(super) type Sql = (String, Vec<Option<String>>);

impl MappedTable {
    /// Reads the relation's column types from the source.
    pub(super) async fn describe(
        source: &Client,
        relation: &Relation,
        carried: Arc<Carried>,
        masker: Option<StreamMasks>,
    ) -> Result<Self> {
        let mut columns = Vec::with_capacity(relation.columns.len());
        let mut masks = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            let mask = carried
                .masks
                .iter()
                .find(|m| m.column == column.name)
                .cloned();
            let type_sql: String = if mask.is_some() {
                "text".to_owned()
            } else {
                source
                    .query_one(
                        "SELECT format_type($1::oid, $2)",
                        &[&column.type_oid, &column.type_modifier],
                    )
                    .await
                    .map_err(|e| {
                        Error::postgres(
                            format!("cannot read the type of {}.{}", carried.source, column.name),
                            e,
                        )
                    })?
                    .get(0)
            };
            columns.push((quote_ident(&column.name), type_sql));
            masks.push(mask);
        }
        let key = carried
            .keys
            .iter()
            .map(|k| {
                relation
                    .columns
                    .iter()
                    .position(|c| c.name == k.source)
                    .ok_or_else(|| {
                        Error::Diverged(format!(
                            "the source's changes of {} lack its key column {}",
                            carried.source, k.source
                        ))
                    })
            })
            .collect::<Result<Vec<usize>>>()?;
        if !carried.masks.is_empty() && masker.is_none() {
            return Err(Error::Internal(format!(
                "{} has masked columns and the stream has no token key",
                carried.source
            )));
        }
        let conversions = relation
            .columns
            .iter()
            .map(|c| {
                carried
                    .masked_conversions
                    .iter()
                    .find(|m| m.column == c.name)
                    .cloned()
            })
            .collect();
        Ok(Self {
            carried,
            columns,
            masks,
            conversions,
            key,
            masker,
        })
    }

    /// The positions of the source's key columns.
    pub(super) fn key_positions(&self) -> Vec<usize> {
        self.key.clone()
    }

    /// The relation's columns the mapping reads: the carried ones and the
    /// key. A dropped column's value is never sent to the target.
    pub(super) fn read_positions(&self, values: &[Value]) -> Vec<usize> {
        let mut read: Vec<usize> = (0..self.columns.len())
            .filter(|&p| !matches!(values[p], Value::Unchanged))
            .filter(|&p| {
                self.carried
                    .column_targets
                    .iter()
                    .any(|(source, _)| quote_ident(source) == self.columns[p].0)
            })
            .collect();
        for &k in &self.key {
            if !read.contains(&k) {
                read.push(k);
            }
        }
        read
    }

    /// The quoted name and the type the text of the relation's column `p`
    /// is read as.
    pub(super) fn read_as(&self, p: usize) -> (&str, &str) {
        let (name, type_sql) = &self.columns[p];
        (name, type_sql)
    }

    /// Masks the masked columns of a row in place, as they will be sent.
    pub(super) fn mask(&self, values: &mut [Value]) -> Result<()> {
        for (p, value) in values.iter_mut().enumerate() {
            let text = match value {
                Value::Text(text) => Some(text.clone()),
                Value::Null => None,
                Value::Unchanged | Value::Binary(_) => continue,
            };
            if self.masks[p].is_none() {
                continue;
            }
            *value = match self.masked_text(p, text)? {
                Some(masked) => Value::Text(masked),
                None => Value::Null,
            };
        }
        Ok(())
    }

    /// The text of the relation's column `p` as sent: converted, then
    /// masked, where the mapping says so.
    fn masked_text(&self, p: usize, text: Option<String>) -> Result<Option<String>> {
        let (Some(mask), Some(masker)) = (&self.masks[p], &self.masker) else {
            return Ok(text);
        };
        let text = match &self.conversions[p] {
            Some(conversion) => conversion.apply(text.as_deref()).map_err(Error::Diverged)?,
            None => text,
        };
        Ok(Masker {
            key: &masker.key,
            customer: &masker.customer,
        }
        .apply(mask.mask, mask.redact_with.as_deref(), text.as_deref()))
    }

    /// The insert of a gathered run: its derived table reads `arrays`
    /// (`$1…`, one per read column at `positions`) row by row.
    pub(super) fn insert_rows(&self, positions: &[usize]) -> String {
        let exprs: Vec<String> = (0..self.carried.select.len())
            .map(|i| self.typed(i))
            .collect();
        format!(
            "INSERT INTO {} ({}){} SELECT {} FROM {}",
            self.carried.target.quoted(),
            self.carried.copy_columns.join(", "),
            self.overriding(),
            exprs.join(", "),
            self.unnested(positions, &[])
        )
    }

    /// The copy columns (by index) a change reading the relation's
    /// `columns` sets: those they feed, never a `GENERATED ALWAYS` id.
    pub(super) fn sets_for(&self, columns: &[usize]) -> Vec<usize> {
        self.carried
            .column_targets
            .iter()
            .enumerate()
            .filter(|(_, (source, _))| {
                columns
                    .iter()
                    .any(|&p| self.columns[p].0 == quote_ident(source))
            })
            .map(|(i, _)| i)
            .filter(|&i| {
                !self
                    .carried
                    .always_identity
                    .contains(&self.carried.copy_columns[i])
            })
            .collect()
    }

    /// The update of a gathered run: `$1…` are one array per read column
    /// at `columns`, then one per key column at `keys`; each row is found
    /// by its key as landed, in the job's slice.
    pub(super) fn update_rows(&self, columns: &[usize], keys: &[usize]) -> String {
        let sets = self.sets_for(columns);
        let targets: Vec<&str> = sets
            .iter()
            .map(|&i| self.carried.copy_columns[i].as_str())
            .collect();
        let mut exprs: Vec<String> = sets
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("{} AS s{n}", self.typed(i)))
            .collect();
        let (target_key, source_key) = self.carried.row_key();
        exprs.extend(
            source_key
                .iter()
                .enumerate()
                .map(|(n, expr)| format!("{expr} AS key{n}")),
        );
        let assigned: Vec<String> = (0..sets.len()).map(|n| format!("n.s{n}")).collect();
        let matched: Vec<String> = (0..source_key.len()).map(|n| format!("n.key{n}")).collect();
        // One column is set from `ROW(…)`: PostgreSQL reads `(x)` there as
        // a plain expression.
        let assigned = if assigned.len() == 1 {
            format!("ROW({})", assigned[0])
        } else {
            assigned.join(", ")
        };
        format!(
            "UPDATE {} AS t SET ({}) = ({assigned}) FROM (SELECT {} FROM {}) AS n WHERE ({}) = ({}) AND {}",
            self.carried.target.quoted(),
            targets.join(", "),
            exprs.join(", "),
            self.unnested(columns, keys),
            target_key.join(", "),
            matched.join(", "),
            self.carried.views.1.slice
        )
    }

    /// The delete of a gathered run: `$1…` are one array per key column
    /// at `keys`; each row is found by its key as landed, in the job's slice.
    pub(super) fn delete_rows(&self, keys: &[usize]) -> String {
        let (target_key, source_key) = self.carried.row_key();
        let exprs: Vec<String> = source_key
            .iter()
            .enumerate()
            .map(|(n, expr)| format!("{expr} AS key{n}"))
            .collect();
        let matched: Vec<String> = (0..source_key.len()).map(|n| format!("n.key{n}")).collect();
        format!(
            "DELETE FROM {} AS t USING (SELECT {} FROM {}) AS n WHERE ({}) = ({}) AND {}",
            self.carried.target.quoted(),
            exprs.join(", "),
            self.unnested(&[], keys),
            target_key.join(", "),
            matched.join(", "),
            self.carried.views.1.slice
        )
    }

    /// `(SELECT v.c0::type AS col, …, v.k0::type AS key, … FROM
    /// unnest($1::text[], …) AS v(…)) AS t`: a gathered run's rows, the
    /// relation's `columns` then its `keys`, one array each.
    fn unnested(&self, columns: &[usize], keys: &[usize]) -> String {
        let named = columns
            .iter()
            .enumerate()
            .map(|(i, &p)| (format!("c{i}"), p))
            .chain(keys.iter().enumerate().map(|(i, &p)| (format!("k{i}"), p)));
        let (mut names, mut read) = (Vec::new(), Vec::new());
        for (name, p) in named {
            let (column, type_sql) = self.read_as(p);
            read.push(format!("v.{name}::{type_sql} AS {column}"));
            names.push(name);
        }
        let inputs: Vec<String> = (1..=names.len()).map(|n| format!("${n}::text[]")).collect();
        format!(
            "(SELECT {} FROM unnest({}) AS v({})) AS t",
            read.join(", "),
            inputs.join(", "),
            names.join(", ")
        )
    }

    /// The landed ids are the customer's, moved: the platform's own
    /// numbering is overridden, as the copy's COPY did.
    fn overriding(&self) -> &'static str {
        if self.carried.always_identity.is_empty() {
            ""
        } else {
            " OVERRIDING SYSTEM VALUE"
        }
    }

    /// `(SELECT $n::text::type AS col, …) AS t` over the columns at
    /// `positions`, their texts appended to `params`.
    fn derived(
        &self,
        values: &[Value],
        positions: &[usize],
        params: &mut Vec<Option<String>>,
    ) -> Result<String> {
        let mut selected = Vec::with_capacity(positions.len());
        for &p in positions {
            let text = match &values[p] {
                Value::Null => None,
                Value::Text(text) => Some(text.clone()),
                Value::Unchanged | Value::Binary(_) => {
                    return Err(Error::Internal(format!(
                        "change stream: column {} of {} arrived without its text",
                        self.columns[p].0, self.carried.source
                    )));
                }
            };
            let text = self.masked_text(p, text)?;
            params.push(text);
            let (name, type_sql) = &self.columns[p];
            selected.push(format!("${}::text::{type_sql} AS {name}", params.len()));
        }
        Ok(format!("(SELECT {}) AS t", selected.join(", ")))
    }

    /// The target's key columns and the source's key as landed, over a
    /// derived table of the key columns of `identity`.
    fn find_row(&self, identity: &[Value], params: &mut Vec<Option<String>>) -> Result<String> {
        let (target_key, source_key) = self.carried.row_key();
        let derived = self.derived(identity, &self.key, params)?;
        Ok(format!(
            "({}) = (SELECT {} FROM {derived}) AND {}",
            target_key.join(", "),
            source_key.join(", "),
            self.carried.views.1.slice
        ))
    }

    /// The `i`th carried expression, its text read as the target column's
    /// type; a remapped one through the key map (numbered there when new).
    fn typed(&self, i: usize) -> String {
        // A masked value converted here arrives converted: the target
        // only takes it as its column's type.
        if let Some(mask) = self.carried.masks.iter().find(|m| m.index == i)
            && self
                .carried
                .masked_conversions
                .iter()
                .any(|c| c.column == mask.column)
        {
            return format!(
                "(t.{})::{}",
                quote_ident(&mask.column),
                self.carried.copy_types[i]
            );
        }
        match self.carried.remaps.iter().find(|r| r.index == i) {
            Some(remapped) => remapped
                .key
                .numbered(&self.carried.select[i], &self.carried.copy_types[i]),
            None => format!(
                "({})::{}",
                self.carried.select[i], self.carried.copy_types[i]
            ),
        }
    }

    /// Rows whose values do not convert are left out (`on_error:
    /// skip-row`): a change may then find no row, or make one leave or
    /// join the copy.
    pub(super) fn skips(&self) -> bool {
        self.carried.keep.is_some()
    }

    pub(super) fn insert(&self, new: &[Value]) -> Result<Sql> {
        let mut params = Vec::new();
        let derived = self.derived(new, &self.read_positions(new), &mut params)?;
        let exprs: Vec<String> = (0..self.carried.select.len())
            .map(|i| self.typed(i))
            .collect();
        let kept = self
            .carried
            .keep
            .as_ref()
            .map(|keep| format!(" WHERE {keep}"))
            .unwrap_or_default();
        let sql = format!(
            "INSERT INTO {} ({}){} SELECT {} FROM {derived}{kept}",
            self.carried.target.quoted(),
            self.carried.copy_columns.join(", "),
            self.overriding(),
            exprs.join(", ")
        );
        Ok((sql, params))
    }

    /// An update of a table whose rows the copy may have skipped: the row
    /// is updated while its new values convert, deleted when they no
    /// longer do, inserted when they now do and it was skipped before.
    /// Every carried value is needed to insert it: one the source did not
    /// resend (an unchanged TOASTed value) is taken from the old row when
    /// the table sends whole old rows (`REPLICA IDENTITY FULL`).
    fn update_skipping(&self, old: Option<&[Value]>, new: &[Value]) -> Result<Sql> {
        let mut row = new.to_vec();
        for (p, value) in row.iter_mut().enumerate() {
            if matches!(value, Value::Unchanged)
                && let Some(before) = old.and_then(|o| o.get(p))
                && !matches!(before, Value::Unchanged)
            {
                *value = before.clone();
            }
        }
        let read = self.read_positions(&row);
        let missing: Vec<&str> = self
            .carried
            .column_targets
            .iter()
            .filter(|(source, _)| {
                !read
                    .iter()
                    .any(|&p| self.columns[p].0 == quote_ident(source))
            })
            .map(|(source, _)| source.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Diverged(format!(
                "an update of {} did not resend {} (unchanged TOASTed values), and a row its copy skipped \
                 (`on_error: skip-row`) may need inserting whole: set REPLICA IDENTITY FULL on {} and \
                 migrate again",
                self.carried.source,
                missing.join(", "),
                self.carried.source
            )));
        }
        let keep = self.carried.keep.as_deref().unwrap_or("true");
        let mut params = Vec::new();
        let derived = self.derived(&row, &read, &mut params)?;
        let every = self.carried.select.len();
        let exprs: Vec<String> = (0..every)
            .map(|i| format!("{} AS s{i}", self.typed(i)))
            .collect();
        let sets = self.sets_for(&read);
        let targets: Vec<&str> = sets
            .iter()
            .map(|&i| self.carried.copy_columns[i].as_str())
            .collect();
        let assigned: Vec<String> = sets.iter().map(|i| format!("n.s{i}")).collect();
        let assigned = if assigned.len() == 1 {
            format!("ROW({})", assigned[0])
        } else {
            assigned.join(", ")
        };
        let identity = old.unwrap_or(new);
        let found_for_delete = self.find_row(identity, &mut params)?;
        let found_for_update = self.find_row(identity, &mut params)?;
        let target = self.carried.target.quoted();
        let inserted: Vec<String> = (0..every).map(|i| format!("n.s{i}")).collect();
        let sql = format!(
            "WITH n AS (SELECT {}, ({keep}) AS kept FROM {derived}), \
                  gone AS (DELETE FROM {target} AS t WHERE {found_for_delete} \
                           AND NOT (SELECT kept FROM n)), \
                  changed AS (UPDATE {target} AS t SET ({}) = (SELECT {assigned} FROM n) \
                              WHERE {found_for_update} AND (SELECT kept FROM n) RETURNING 1) \
             INSERT INTO {target} ({}){} SELECT {} FROM n WHERE n.kept AND NOT EXISTS (SELECT 1 FROM changed)",
            exprs.join(", "),
            targets.join(", "),
            self.carried.copy_columns.join(", "),
            self.overriding(),
            inserted.join(", ")
        );
        Ok((sql, params))
    }

    /// None when the change sets nothing the mapping carries.
    pub(super) fn update(&self, old: Option<&[Value]>, new: &[Value]) -> Result<Option<Sql>> {
        // Target columns fed by a source column the change carries (an
        // unchanged TOASTed value is not resent, and stays as it is); the
        // key columns come along, the guards name the row by them.
        let read = self.read_positions(new);
        let mut sets = Vec::new();
        let mut exprs = Vec::new();
        for (i, (source_column, _)) in self.carried.column_targets.iter().enumerate() {
            let fed = read
                .iter()
                .any(|&p| self.columns[p].0 == quote_ident(source_column));
            let target = &self.carried.copy_columns[i];
            if !fed {
                continue;
            }
            if self.carried.always_identity.contains(target) {
                // The platform refuses to change such a column: a key the
                // source changed is a difference the stream cannot carry.
                let moved = match old {
                    Some(old) => self.key.iter().any(|&k| {
                        quote_ident(source_column) == self.columns[k].0 && old[k] != new[k]
                    }),
                    None => false,
                };
                if moved {
                    return Err(Error::Diverged(format!(
                        "the source changed a key of {} that lands in {}.{target}, which the platform numbers \
                         GENERATED ALWAYS and never lets change: the stream stops; cancel the job and \
                         migrate again",
                        self.carried.source, self.carried.target
                    )));
                }
                continue;
            }
            sets.push(target.clone());
            exprs.push(self.typed(i));
        }
        if sets.is_empty() {
            return Ok(None);
        }
        if self.skips() {
            return self.update_skipping(old, new).map(Some);
        }
        let mut params = Vec::new();
        let derived = self.derived(new, &read, &mut params)?;
        let filter = self.find_row(old.unwrap_or(new), &mut params)?;
        let sql = format!(
            "UPDATE {} AS t SET ({}) = (SELECT {} FROM {derived}) WHERE {filter}",
            self.carried.target.quoted(),
            sets.join(", "),
            exprs.join(", ")
        );
        Ok(Some((sql, params)))
    }

    pub(super) fn delete(&self, old: &[Value]) -> Result<Sql> {
        let mut params = Vec::new();
        let filter = self.find_row(old, &mut params)?;
        Ok((
            format!(
                "DELETE FROM {} AS t WHERE {filter}",
                self.carried.target.quoted()
            ),
            params,
        ))
    }

    /// The table keeps its name: the job created it (in replica mode while
    /// changes stream, like any table it created).
    pub(super) fn created_by_job(&self) -> bool {
        self.carried.created_by_job()
    }

    /// A truncate of the source table empties the job's slice only; one
    /// the slice shares with other source tables' rows stops the stream.
    pub(super) fn truncate(&self) -> Result<String> {
        if !self.carried.shares_target_with.is_empty() {
            return Err(Error::Diverged(format!(
                "{} was truncated on the source, and its rows share {}'s slice with those of {}: the stream \
                 cannot empty only its own; cancel the job and migrate again",
                self.carried.source,
                self.carried.target,
                self.carried
                    .shares_target_with
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(format!(
            "DELETE FROM {} AS t WHERE {}",
            self.carried.target.quoted(),
            self.carried.views.1.slice
        ))
    }
}

impl std::fmt::Debug for MappedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedTable")
            .field("source", &self.carried.source)
            .field("target", &self.carried.target)
            .finish()
    }
}
