//! The content layer: both databases checksum a key range of a table (or a
//! whole table without primary key); a difference is narrowed through key
//! buckets down to the primary keys and columns that differ. Also merges
//! the ranges of a table into its report.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::report::{ContentLayer, RowDifference, TableReport};
use super::view::View;
use crate::pg::checksum::{
    TableFingerprint, fingerprint as table_fingerprint, hashes_stored_forms, operand,
};
use crate::spec::TableName;
use crate::state::KeyRange;
use crate::{Error, Result};

/// Buckets per narrowing level: rows are spread over them by a hash of
/// their primary key, and each level only looks into the buckets that
/// differed at the level before.
const BUCKETS: i64 = 1024;
/// Rows (the larger side) at or below which the differing buckets are
/// compared row by row, unless [`Options`] says otherwise.
pub const ROW_LEVEL_LIMIT: i64 = 20_000;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Differing buckets holding at most this many rows are compared row
    /// by row; larger ones are split further first.
    pub compare_rows_below: i64,
    /// A spot check of some key ranges instead of all of them.
    pub sample: Option<super::Sample>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            compare_rows_below: ROW_LEVEL_LIMIT,
            sample: None,
        }
    }
}
const MAX_LEVELS: i32 = 6;
/// Differences listed per table; beyond it the report says how many more.
const LISTED_PER_TABLE: usize = 1000;

/// What one range (or a whole table without primary key) held on each side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RangeFinding {
    pub source_rows: u64,
    pub target_rows: u64,
    pub content: ContentLayer,
}

/// Compares the rows of `table` in `keys` (the whole table when None: it
/// has no primary key) on both databases, narrowing any difference down to
/// primary keys. Both clients must have the session settings of
/// [`crate::pg::connect`]: the text forms compared depend on them.
pub async fn compare_range(
    source: &Client,
    target: &Client,
    table: &TableName,
    keys: Option<&KeyRange>,
    options: Options,
) -> Result<RangeFinding> {
    let scope = keys.map_or_else(
        || "true".to_owned(),
        |k| crate::pg::ranges::key_predicate(k, "t"),
    );
    let (at_source, at_target) = View::pair(source, target, table).await?;
    compare_scope(
        (source, target),
        (&at_source, &at_target),
        (&scope, &scope),
        method(keys),
        options,
    )
    .await
}

/// Compares a range of a table that landed through a mapping: each side
/// reads its own view (the source as mapped, the target's slice), within
/// its own key range.
pub async fn compare_views(
    (source, target): (&Client, &Client),
    views: (&View, &View),
    keys: (Option<&KeyRange>, Option<&KeyRange>),
    options: Options,
) -> Result<RangeFinding> {
    let scope = |k: Option<&KeyRange>| {
        k.map_or_else(
            || "true".to_owned(),
            |k| crate::pg::ranges::key_predicate(k, "t"),
        )
    };
    let scopes = (scope(keys.0), scope(keys.1));
    compare_scope(
        (source, target),
        views,
        (&scopes.0, &scopes.1),
        method(keys.0),
        options,
    )
    .await
}

/// Compares the rows each view's `scopes` (filters on `t`) select on
/// both databases; with a key, a difference is narrowed down to keys,
/// else only reported.
pub(super) async fn compare_scope(
    (source, target): (&Client, &Client),
    views: (&View, &View),
    scopes: (&str, &str),
    method: &str,
    options: Options,
) -> Result<RangeFinding> {
    let stored = hashes_stored_forms(source).await? && hashes_stored_forms(target).await?;
    // Both databases read at once: each side is one scan of the scope.
    let (at_source, at_target) = tokio::try_join!(
        fingerprint(source, views.0, scopes.0, stored),
        fingerprint(target, views.1, scopes.1, stored)
    )?;
    let content = if at_source == at_target {
        ContentLayer {
            matched: true,
            method: method.into(),
            ..ContentLayer::default()
        }
    } else if views.0.key.is_empty() {
        ContentLayer {
            matched: false,
            method: method.into(),
            localisation: Some(
                "the table has no primary key: the rows that differ cannot be named, only that the table differs"
                    .into(),
            ),
            ..ContentLayer::default()
        }
    } else {
        let mut content = localise((source, target), views, stored, scopes, options).await?;
        content.method = method.into();
        content
    };
    Ok(RangeFinding {
        source_rows: at_source.rows,
        target_rows: at_target.rows,
        content,
    })
}

/// Count and checksum of the rows of `view` that `filter` selects.
async fn fingerprint(
    client: &Client,
    view: &View,
    filter: &str,
    stored: bool,
) -> Result<TableFingerprint> {
    let sql = format!(
        "SELECT count(*)::bigint, coalesce(sum({}::numeric), 0)::text FROM {}",
        view.row_hash(stored),
        view.rows(filter)
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot checksum {}", view.table), e))?;
    Ok(TableFingerprint {
        rows: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        checksum: row.get(1),
    })
}

/// How a range's content is compared: by key buckets, or as a whole
/// table (no primary key).
pub fn method(keys: Option<&KeyRange>) -> &'static str {
    if keys.is_some() {
        "primary_key_buckets"
    } else {
        "whole_table"
    }
}

/// One table's report from the findings of all its ranges.
pub fn merge_table(table: &TableName, findings: Vec<RangeFinding>) -> TableReport {
    let mut content = ContentLayer {
        matched: true,
        ..ContentLayer::default()
    };
    let (mut source_rows, mut target_rows) = (0, 0);
    let mut listed = 0usize;
    let ranges = findings.len();
    for finding in findings {
        source_rows += finding.source_rows;
        target_rows += finding.target_rows;
        let part = finding.content;
        content.matched &= part.matched;
        if content.method.is_empty() {
            content.method = part.method;
        }
        if let Some(why) = part.localisation
            && content.localisation.as_ref() != Some(&why)
        {
            content.localisation = Some(why);
        }
        content.unlisted += part.unlisted;
        let room = |listed: &mut usize, n: usize| {
            let taken = n.min(LISTED_PER_TABLE.saturating_sub(*listed));
            *listed += taken;
            taken
        };
        let take = room(&mut listed, part.missing.len());
        content.unlisted += (part.missing.len() - take) as u64;
        content.missing.extend(part.missing.into_iter().take(take));
        let take = room(&mut listed, part.extra.len());
        content.unlisted += (part.extra.len() - take) as u64;
        content.extra.extend(part.extra.into_iter().take(take));
        let take = room(&mut listed, part.different.len());
        content.unlisted += (part.different.len() - take) as u64;
        content
            .different
            .extend(part.different.into_iter().take(take));
    }
    TableReport {
        table: table.to_string(),
        source_rows,
        target_rows: Some(target_rows),
        counts_match: source_rows == target_rows,
        ranges,
        content,
    }
}

/// The report of a table the target lacks altogether.
pub async fn absent_table(source: &Client, table: &TableName) -> Result<TableReport> {
    let at_source = table_fingerprint(source, table).await?;
    Ok(TableReport {
        table: table.to_string(),
        source_rows: at_source.rows,
        target_rows: None,
        counts_match: false,
        ranges: 0,
        content: ContentLayer {
            method: "whole_table".into(),
            localisation: Some("the table is missing on the target".into()),
            ..ContentLayer::default()
        },
    })
}

/// (count, checksum) per bucket of the rows `filter` selects.
async fn bucket_sums(
    client: &Client,
    view: &View,
    stored: bool,
    level: i32,
    filter: &str,
) -> Result<HashMap<i64, (i64, String)>> {
    let sql = format!(
        "SELECT hashtextextended(ROW({key})::text, {level}) & {mask}, count(*), \
                sum({hash}::numeric)::text \
         FROM {rows} GROUP BY 1",
        key = view.key_list(),
        mask = BUCKETS - 1,
        hash = view.row_hash(stored),
        rows = view.rows(filter),
    );
    let rows = client.query(&sql, &[]).await.map_err(|e| {
        Error::postgres(
            format!("cannot checksum the key buckets of {}", view.table),
            e,
        )
    })?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Key literal → per-value hashes (None for NULL) of the rows `filter` selects.
async fn row_hashes(
    client: &Client,
    view: &View,
    filter: &str,
) -> Result<HashMap<String, Vec<Option<i64>>>> {
    let hashes: Vec<String> = view
        .values
        .iter()
        .map(|v| format!("hashtextextended({}::text, 0)", operand(&v.expr)))
        .collect();
    let sql = format!(
        "SELECT ROW({})::text, ARRAY[{}]::bigint[] FROM {}",
        view.key_list(),
        hashes.join(", "),
        view.rows(filter)
    );
    let rows = client.query(&sql, &[]).await.map_err(|e| {
        Error::postgres(
            format!("cannot read the differing rows of {}", view.table),
            e,
        )
    })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Narrows a differing table down to the keys that differ: buckets of key
/// hashes, then buckets within the differing buckets with another seed,
/// until few enough rows remain to compare them one by one.
async fn localise(
    clients: (&Client, &Client),
    views: (&View, &View),
    stored: bool,
    scopes: (&str, &str),
    options: Options,
) -> Result<ContentLayer> {
    let (source, target) = clients;
    let mut filters = (scopes.0.to_owned(), scopes.1.to_owned());
    for level in 0..MAX_LEVELS {
        let (at_source, at_target) = tokio::try_join!(
            bucket_sums(source, views.0, stored, level, &filters.0),
            bucket_sums(target, views.1, stored, level, &filters.1)
        )?;
        let differing: BTreeSet<i64> = at_source
            .keys()
            .chain(at_target.keys())
            .filter(|b| at_source.get(b) != at_target.get(b))
            .copied()
            .collect();
        let rows = |sums: &HashMap<i64, (i64, String)>| -> i64 {
            differing
                .iter()
                .filter_map(|b| sums.get(b))
                .map(|s| s.0)
                .sum()
        };
        let buckets = differing
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let narrowed = |filter: &str, view: &View| {
            format!(
                "{filter} AND (hashtextextended(ROW({})::text, {level}) & {}) IN ({buckets})",
                view.key_list(),
                BUCKETS - 1
            )
        };
        filters = (narrowed(&filters.0, views.0), narrowed(&filters.1, views.1));
        if differing.is_empty() {
            break;
        }
        if rows(&at_source).max(rows(&at_target)) <= options.compare_rows_below
            || level == MAX_LEVELS - 1
        {
            return compare_rows(clients, views, (&filters.0, &filters.1)).await;
        }
    }
    // Fingerprints differed but no bucket does: only possible if the table
    // changed between the reads.
    Ok(ContentLayer {
        matched: false,
        method: "primary_key_buckets".into(),
        localisation: Some("the table changed while it was being verified; verify again".into()),
        ..ContentLayer::default()
    })
}

async fn compare_rows(
    (source, target): (&Client, &Client),
    views: (&View, &View),
    filters: (&str, &str),
) -> Result<ContentLayer> {
    let columns: Vec<String> = views.0.values.iter().map(|v| v.name.clone()).collect();
    let (at_source, at_target) = tokio::try_join!(
        row_hashes(source, views.0, filters.0),
        row_hashes(target, views.1, filters.1)
    )?;
    let mut layer = ContentLayer {
        matched: false,
        method: "primary_key_buckets".into(),
        ..ContentLayer::default()
    };
    let mut found = 0u64;
    let mut keys: Vec<&String> = at_source.keys().chain(at_target.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let difference = match (at_source.get(k), at_target.get(k)) {
            (Some(_), None) => Some(Err(true)),
            (None, Some(_)) => Some(Err(false)),
            (Some(a), Some(b)) if a != b => Some(Ok(columns
                .iter()
                .zip(a.iter().zip(b.iter()))
                .filter(|(_, (x, y))| x != y)
                .map(|(c, _)| c.clone())
                .collect::<Vec<_>>())),
            _ => None,
        };
        let Some(difference) = difference else {
            continue;
        };
        found += 1;
        if found as usize > LISTED_PER_TABLE {
            layer.unlisted += 1;
            continue;
        }
        match difference {
            Err(true) => layer.missing.push(k.clone()),
            Err(false) => layer.extra.push(k.clone()),
            Ok(columns) => layer.different.push(RowDifference {
                key: k.clone(),
                columns,
            }),
        }
    }
    if found == 0 {
        layer.localisation =
            Some("the table changed while it was being verified; verify again".into());
    }
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(rows: (u64, u64), missing: &[&str], different: &[&str]) -> RangeFinding {
        RangeFinding {
            source_rows: rows.0,
            target_rows: rows.1,
            content: ContentLayer {
                matched: missing.is_empty() && different.is_empty(),
                method: "primary_key_buckets".into(),
                missing: missing.iter().map(|k| (*k).to_owned()).collect(),
                different: different
                    .iter()
                    .map(|k| RowDifference {
                        key: (*k).to_owned(),
                        columns: vec!["name".into()],
                    })
                    .collect(),
                ..ContentLayer::default()
            },
        }
    }

    #[test]
    fn ranges_merge_into_one_table_report() {
        let table = TableName {
            schema: "public".into(),
            name: "orders".into(),
        };
        let merged = merge_table(
            &table,
            vec![
                finding((10, 10), &[], &[]),
                finding((10, 9), &["(4)"], &[]),
                finding((5, 5), &[], &["(22)"]),
            ],
        );
        assert_eq!(merged.table, "public.orders");
        assert_eq!((merged.source_rows, merged.target_rows), (25, Some(24)));
        assert!(!merged.counts_match);
        assert_eq!(merged.ranges, 3);
        assert!(!merged.content.matched);
        assert_eq!(merged.content.missing, ["(4)"]);
        assert_eq!(merged.content.different[0].key, "(22)");
        assert_eq!(merged.content.unlisted, 0);
    }

    #[test]
    fn merged_listings_stop_at_the_limit_and_count_the_rest() {
        let table = TableName {
            schema: "public".into(),
            name: "t".into(),
        };
        let keys: Vec<String> = (0..LISTED_PER_TABLE + 5)
            .map(|k| format!("({k})"))
            .collect();
        let half: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (first, second) = half.split_at(LISTED_PER_TABLE - 2);
        let merged = merge_table(
            &table,
            vec![finding((0, 0), first, &[]), finding((0, 0), &[], second)],
        );
        let listed = merged.content.missing.len() + merged.content.different.len();
        assert_eq!(listed, LISTED_PER_TABLE);
        assert_eq!(merged.content.unlisted, 5);
    }

    #[test]
    fn a_fully_matching_table_merges_as_matched() {
        let table = TableName {
            schema: "public".into(),
            name: "t".into(),
        };
        let merged = merge_table(&table, vec![finding((3, 3), &[], &[]); 4]);
        assert!(merged.content.matched && merged.counts_match);
        assert_eq!(merged.source_rows, 12);
    }
}
