//! What the stream's relations are on the target: the table of the same
//! name with its column types and keys (following the source's schema
//! changes where that is exact), or, for a table the mapping lands, the
//! platform's table and the mapping's statements. Reads both catalogs;
//! applies nothing.

use std::sync::Arc;

use tokio_postgres::Client;

use super::super::follow::target_columns;
use super::super::pgoutput::Relation;
use super::mapped::MappedTable;
use super::{Applier, TargetColumn, TargetTable};
use crate::spec::{TableName, quote_ident};
use crate::{Error, Result};

impl Applier {
    /// Maps a relation of the stream to the target table of the same name,
    /// with the target's column types (what the text values are cast to).
    pub(super) async fn describe(
        &mut self,
        tx: &Client,
        source: &Client,
        relation: &Relation,
    ) -> Result<()> {
        let name = TableName {
            schema: if relation.namespace.is_empty() {
                "pg_catalog".into()
            } else {
                relation.namespace.clone()
            },
            name: relation.name.clone(),
        };
        if let Some(carried) = self.mapping.get(&name).cloned() {
            return self.describe_mapped(tx, source, relation, carried).await;
        }
        let mut types = target_columns(tx, &name).await?;
        if types.is_empty() {
            return Err(Error::Diverged(format!(
                "the source changed table {name}, which the target does not have"
            )));
        }
        if crate::pg::follow::follow_relation(source, tx, &name, relation, &types).await? {
            types = target_columns(tx, &name).await?;
        }
        let mut columns = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            let Some(attribute) = types.get(&column.name) else {
                return Err(Error::Diverged(format!(
                    "the source changed column {} of {name}, which the target table lacks",
                    column.name
                )));
            };
            columns.push(TargetColumn {
                quoted: quote_ident(&column.name),
                type_sql: attribute.type_sql.clone(),
                key: column.key,
                always_identity: attribute.always_identity,
            });
        }
        let full_identity = relation.replica_identity == b'f';
        let key: Vec<String> = crate::verify::primary_key_types(tx, &name)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let primary_key = (!key.is_empty())
            .then(|| {
                key.iter()
                    .map(|name| {
                        relation
                            .columns
                            .iter()
                            .position(|c| &c.name == name)
                            .filter(|&p| columns[p].key || full_identity)
                    })
                    .collect::<Option<Vec<usize>>>()
            })
            .flatten();
        let keyed_by_primary_key = !full_identity
            && primary_key
                .as_ref()
                .is_some_and(|pk| pk.len() == columns.iter().filter(|c| c.key).count());
        let gathers_updates = keyed_by_primary_key && !other_unique_index(tx, &name).await?;
        self.relations.insert(
            relation.id,
            Arc::new(TargetTable {
                name,
                columns,
                full_identity,
                primary_key,
                gathers_updates,
                mapped: None,
            }),
        );
        Ok(())
    }

    /// A relation that lands through the mapping: every column it sends
    /// must be one the mapping carries or drops (a column added on the
    /// source since would otherwise be lost without a word).
    async fn describe_mapped(
        &mut self,
        tx: &Client,
        source: &Client,
        relation: &Relation,
        carried: Arc<crate::mapping::carry::Carried>,
    ) -> Result<()> {
        for column in &relation.columns {
            let known = carried.target_of(&column.name).is_some()
                || carried.lineage.iter().any(|l| {
                    l.target.is_empty() && l.source == format!("{}.{}", carried.source, column.name)
                });
            if !known {
                return Err(Error::Diverged(format!(
                    "the source's {} has a column {} its mapping neither lands nor drops (added since the \
                     copy): the stream stops rather than lose its values; cancel the job, map the column, \
                     and migrate again",
                    carried.source, column.name
                )));
            }
        }
        for (source_column, _) in &carried.column_targets {
            if !relation.columns.iter().any(|c| &c.name == source_column) {
                return Err(Error::Diverged(format!(
                    "the source's {} no longer sends column {source_column}, which its mapping lands: the \
                     stream stops; cancel the job and migrate again",
                    carried.source
                )));
            }
        }
        let mapped =
            MappedTable::describe(source, relation, carried.clone(), self.masks.clone()).await?;
        let columns = relation
            .columns
            .iter()
            .map(|c| TargetColumn {
                quoted: quote_ident(&c.name),
                type_sql: "text".into(),
                key: c.key,
                always_identity: false,
            })
            .collect();
        self.relations.insert(
            relation.id,
            Arc::new(TargetTable {
                name: carried.target.clone(),
                columns,
                full_identity: relation.replica_identity == b'f',
                primary_key: Some(mapped.key_positions()),
                // As for any table: several rows updated in one statement
                // could meet a uniqueness conflict the source's order avoided.
                gathers_updates: !other_unique_index(tx, &carried.target).await?,
                mapped: Some(Arc::new(mapped)),
            }),
        );
        Ok(())
    }
}

/// Whether `table` has a unique index besides its primary key, or an
/// exclusion constraint: an update of several rows in one statement could
/// meet a conflict there that the source's order of rows avoided.
async fn other_unique_index(tx: &Client, table: &TableName) -> Result<bool> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_index WHERE indrelid = to_regclass($1) \
                            AND indisunique AND NOT indisprimary) \
                 OR EXISTS (SELECT FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'x')",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read the indexes of {table} on the target"), e))?;
    Ok(row.get(0))
}
