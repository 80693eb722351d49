//! The check of what changed since a full verification: the rows of the
//! keys the change stream touched (see `pg::changed_keys`), compared on
//! both databases as each holds them now, and tables whose changed rows
//! cannot be named compared whole. With a full verification that matched
//! at an earlier position, a match here means the tables match now; the
//! work grows with what changed, not with the database.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::RangeFinding;
use super::content::{Options, compare_scope, merge_table};
use super::masked::compare_masked;
use super::report::TableReport;
use super::schema::primary_key_types;
use super::view::View;
use crate::mapping::carry::Carried;
use crate::mapping::mask::Masker;
use crate::pg::changed_keys::{Touch, Touched, key_filter};
use crate::spec::quote_ident;
use crate::{Error, Result};

/// How a table checked by its changed keys is reported.
pub const CHANGED_KEYS: &str = "changed_keys";

/// One report per table in `touched`, as both databases hold it now. The
/// source's key types cast the keys on both sides (the schemas matched).
/// A table in `mapped` is compared as mapped: the keys the stream noted
/// are the source's, found on the target where they landed (their
/// offsets added), in the job's slice; its masked columns are masked by
/// `masker` (the customer's token key) and compared apart.
pub async fn compare_changed(
    (source, target): (&Client, &Client),
    touched: &Touched,
    (mapped, masker): (&[Carried], Option<&Masker<'_>>),
    options: Options,
) -> Result<Vec<TableReport>> {
    let mut reports = Vec::new();
    for (table, touch) in touched.tables() {
        if let Some(carried) = mapped.iter().find(|m| &m.target == table) {
            let mut report = merge_table(
                table,
                vec![compare_mapped((source, target), carried, touch, masker, options).await?],
            );
            report.ranges = 1;
            reports.push(report);
            continue;
        }
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

/// The rows of a mapped table's changed keys, the source as mapped against
/// the target's slice.
async fn compare_mapped(
    (source, target): (&Client, &Client),
    carried: &Carried,
    touch: &Touch,
    masker: Option<&Masker<'_>>,
    options: Options,
) -> Result<RangeFinding> {
    let views = (&carried.views.0, &carried.views.1);
    let scopes = match touch {
        Touch::Keys(keys) if !carried.keys.is_empty() => {
            let at_source: Vec<(String, String)> = carried
                .keys
                .iter()
                .map(|k| (quote_ident(&k.source), k.source_type.clone()))
                .collect();
            // A remapped key is compared as the old id read back through
            // the map (the target view's own column).
            let at_target: Vec<(String, String)> = carried
                .keys
                .iter()
                .map(|k| match k.remap {
                    Some(_) => (
                        crate::mapping::remap::old_value_column(&k.target),
                        k.source_type.clone(),
                    ),
                    None => (quote_ident(&k.target), k.target_type.clone()),
                })
                .collect();
            let offsets: Vec<i64> = carried.keys.iter().map(|k| k.offset).collect();
            (
                key_filter(&at_source, keys)?,
                key_filter(&at_target, &shifted(keys, &offsets)?)?,
            )
        }
        _ => ("true".to_owned(), "true".to_owned()),
    };
    let mut finding = compare_scope(
        (source, target),
        views,
        (&scopes.0, &scopes.1),
        CHANGED_KEYS,
        options,
    )
    .await?;
    if !carried.masked.is_empty() {
        let masker = masker.ok_or_else(|| {
            Error::Internal(format!(
                "{} has masked columns, and no token key was given to compare them",
                carried.target
            ))
        })?;
        compare_masked(
            (source, target),
            views,
            (&scopes.0, &scopes.1),
            &carried.masked,
            masker,
            &mut finding.content,
        )
        .await?;
    }
    Ok(finding)
}

/// Source keys (JSON lists of text values) as they landed: each column's
/// offset added.
fn shifted(keys: &BTreeSet<String>, offsets: &[i64]) -> Result<BTreeSet<String>> {
    if offsets.iter().all(|o| *o == 0) {
        return Ok(keys.clone());
    }
    keys.iter()
        .map(|key| {
            let values: Vec<String> = serde_json::from_str(key)
                .map_err(|e| Error::Internal(format!("changed key {key:?} is not a list: {e}")))?;
            let moved: Vec<String> = values
                .into_iter()
                .zip(offsets)
                .map(|(value, offset)| match offset {
                    0 => Ok(value),
                    offset => value
                        .parse::<i128>()
                        .map(|n| (n + i128::from(*offset)).to_string())
                        .map_err(|_| {
                            Error::Internal(format!(
                                "changed key value {value:?} is not an integer to offset"
                            ))
                        }),
                })
                .collect::<Result<_>>()?;
            serde_json::to_string(&moved)
                .map_err(|e| Error::Internal(format!("cannot write a changed key: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_move_by_their_columns_offsets() {
        let keys: BTreeSet<String> =
            ["[\"7\",\"a\"]".to_owned(), "[\"-3\",\"b\"]".to_owned()].into();
        let moved = shifted(&keys, &[1_000_000, 0]).expect("shifted");
        assert_eq!(
            moved,
            [
                "[\"999997\",\"b\"]".to_owned(),
                "[\"1000007\",\"a\"]".to_owned()
            ]
            .into()
        );
        assert_eq!(shifted(&keys, &[0, 0]).expect("same"), keys);
        assert!(shifted(&["[\"x\"]".to_owned()].into(), &[5]).is_err());
    }
}
