//! What one database compares of a table: the relation its rows come from
//! (aliased `t`), the slice of them that belongs to the comparison, the
//! values compared (expressions over `t` with their types, in the order
//! both sides agree on) and the key that names a row. A table compared as
//! it is reads every column of its own catalog; a mapped table (a tenant's
//! slice of a shared table, renamed or converted columns) is described by
//! the same four parts, so every layer of the content check runs unchanged
//! on either. Builds SQL text only; runs nothing but catalog reads.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::schema::primary_key;
use crate::Result;
use crate::pg::checksum::{row_hash_of, typed_columns};
use crate::spec::TableName;

/// One value compared: how reports name it, and how a side computes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    pub name: String,
    /// An expression over `t`.
    pub expr: String,
    /// `format_type(type, NULL)` of the expression: decides how it is hashed.
    pub type_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The table as reports name it.
    pub table: TableName,
    /// The `FROM` item, aliased `t`.
    pub from: String,
    /// Which of its rows are compared, over `t` (`true`: all).
    pub slice: String,
    pub values: Vec<Value>,
    /// Expressions over `t` naming a row; empty without a primary key.
    pub key: Vec<String>,
}

impl View {
    /// The table as it is: every column of the catalog of `client`'s
    /// database, keyed by `key` (quoted primary-key columns).
    pub async fn of_table(client: &Client, table: &TableName, key: &[String]) -> Result<Self> {
        let columns = typed_columns(client, table).await?;
        Ok(Self {
            table: table.clone(),
            from: format!("{} AS t", table.only()),
            slice: "true".into(),
            values: columns
                .into_iter()
                .map(|(name, type_name)| Value {
                    expr: format!("t.{name}"),
                    name,
                    type_name,
                })
                .collect(),
            key: key.iter().map(|c| format!("t.{c}")).collect(),
        })
    }

    /// Both sides of a table compared as it is, keyed by the source's
    /// primary key (the schemas matched).
    pub async fn pair(source: &Client, target: &Client, table: &TableName) -> Result<(Self, Self)> {
        let key = primary_key(source, table).await?;
        Ok((
            Self::of_table(source, table, &key).await?,
            Self::of_table(target, table, &key).await?,
        ))
    }

    /// The hash of one row; without `stored` (a side older than
    /// PostgreSQL 14), the hash of the row's text form.
    pub fn row_hash(&self, stored: bool) -> String {
        if !stored {
            let values: Vec<&str> = self.values.iter().map(|v| v.expr.as_str()).collect();
            return format!("hashtextextended(ROW({})::text, 0)", values.join(", "));
        }
        let values: Vec<(String, String)> = self
            .values
            .iter()
            .map(|v| (v.expr.clone(), v.type_name.clone()))
            .collect();
        row_hash_of(&values)
    }

    /// `FROM … WHERE` the slice and `filter` (over `t`).
    pub fn rows(&self, filter: &str) -> String {
        format!("{} WHERE ({}) AND ({filter})", self.from, self.slice)
    }

    /// The key as one list of expressions.
    pub fn key_list(&self) -> String {
        self.key.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_reads_its_slice_and_hashes_its_values() {
        let view = View {
            table: TableName::parse("platform.accounts").expect("name"),
            from: "ONLY crm.accounts AS t".into(),
            slice: "t.tenant_id = 'x'".into(),
            values: vec![
                Value {
                    name: "id".into(),
                    expr: "(t.id + 10)::bigint".into(),
                    type_name: "bigint".into(),
                },
                Value {
                    name: "name".into(),
                    expr: "t.name".into(),
                    type_name: "text".into(),
                },
            ],
            key: vec!["(t.id + 10)::bigint".into()],
        };
        assert_eq!(
            view.rows("t.id > 3"),
            "ONLY crm.accounts AS t WHERE (t.tenant_id = 'x') AND (t.id > 3)"
        );
        assert_eq!(
            view.row_hash(true),
            "hashtextextended(hash_record_extended(ROW(((t.id + 10)::bigint), t.name COLLATE \"C\"), 0)::text, 0)"
        );
        assert_eq!(
            view.row_hash(false),
            "hashtextextended(ROW((t.id + 10)::bigint, t.name)::text, 0)"
        );
        assert_eq!(view.key_list(), "(t.id + 10)::bigint");
    }
}
