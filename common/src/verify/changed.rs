//! The check of what changed since a full verification: the rows of the
//! keys the change stream touched (see `pg::changed_keys`), compared on
//! both databases as each holds them now, and tables whose changed rows
//! cannot be named compared whole. With a full verification that matched
//! at an earlier position, a match here means the tables match now; the
//! work grows with what changed, not with the database.

use tokio_postgres::Client;

use super::content::{Options, compare_scope, merge_table};
use super::report::TableReport;
use super::schema::primary_key_types;
use super::view::View;
use crate::Result;
use crate::pg::changed_keys::{Touch, Touched, key_filter};
use crate::spec::quote_ident;

/// How a table checked by its changed keys is reported.
pub const CHANGED_KEYS: &str = "changed_keys";

/// One report per table in `touched`, as both databases hold it now. The
/// source's key types cast the keys on both sides (the schemas matched).
pub async fn compare_changed(
    source: &Client,
    target: &Client,
    touched: &Touched,
    options: Options,
) -> Result<Vec<TableReport>> {
    let mut reports = Vec::new();
    for (table, touch) in touched.tables() {
        let key_columns: Vec<(String, String)> = primary_key_types(source, table)
            .await?
            .into_iter()
            .map(|(name, type_sql)| (quote_ident(&name), type_sql))
            .collect();
        let key: Vec<String> = key_columns.iter().map(|(name, _)| name.clone()).collect();
        let views = (
            View::of_table(source, table, &key).await?,
            View::of_table(target, table, &key).await?,
        );
        let views = (&views.0, &views.1);
        let finding = match touch {
            Touch::Keys(keys) if !key_columns.is_empty() => {
                let scope = key_filter(&key_columns, keys)?;
                compare_scope(
                    (source, target),
                    views,
                    (&scope, &scope),
                    CHANGED_KEYS,
                    options,
                )
                .await?
            }
            _ => {
                let method = if key.is_empty() {
                    "whole_table"
                } else {
                    "primary_key_buckets"
                };
                compare_scope((source, target), views, ("true", "true"), method, options).await?
            }
        };
        let mut report = merge_table(table, vec![finding]);
        report.ranges = 1;
        reports.push(report);
    }
    Ok(reports)
}
