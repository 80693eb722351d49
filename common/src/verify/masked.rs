//! The check of masked columns: the source cannot compute what a mask
//! makes of a value (a token needs the customer's key, which never reaches
//! a database), so each side reads its own values in the range, and the
//! source's are masked here, in the process that holds the key, then
//! compared with the target's. Names the keys and columns that differ,
//! never values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::report::{ContentLayer, RowDifference};
use super::view::View;
use crate::mapping::Mask;
use crate::mapping::mask::Masker;
use crate::{Error, Result};

/// One masked column: how each side reads it, and the mask between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedColumn {
    pub name: String,
    /// Over `t` on the source: the value before the mask, as text.
    pub source_expr: String,
    /// Over `t` on the target: the masked value, as text.
    pub target_expr: String,
    pub mask: Mask,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact_with: Option<String>,
}

type Values = BTreeMap<String, Vec<Option<String>>>;

/// Rows listed at most, as the content layer lists them.
const LISTED: usize = 1000;

async fn read(client: &Client, view: &View, filter: &str, exprs: &[String]) -> Result<Values> {
    let sql = format!(
        "SELECT ROW({})::text, ARRAY[{}]::text[] FROM {}",
        view.key_list(),
        exprs.join(", "),
        view.rows(filter)
    );
    let rows = client.query(&sql, &[]).await.map_err(|e| {
        Error::postgres(
            format!("cannot read the masked columns of {}", view.table),
            e,
        )
    })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Compares `columns` of the rows both views' `scopes` select; adds the
/// rows whose masked values differ to `content`.
pub async fn compare_masked(
    (source, target): (&Client, &Client),
    views: (&View, &View),
    scopes: (&str, &str),
    columns: &[MaskedColumn],
    masker: &Masker<'_>,
    content: &mut ContentLayer,
) -> Result<()> {
    if columns.is_empty() || views.0.key.is_empty() {
        return Ok(());
    }
    let source_exprs: Vec<String> = columns
        .iter()
        .map(|c| format!("({})::text", c.source_expr))
        .collect();
    let target_exprs: Vec<String> = columns
        .iter()
        .map(|c| format!("({})::text", c.target_expr))
        .collect();
    let (at_source, at_target) = tokio::try_join!(
        read(source, views.0, scopes.0, &source_exprs),
        read(target, views.1, scopes.1, &target_exprs)
    )?;
    for (key, values) in &at_source {
        // Rows on one side only are the content layer's to report.
        let Some(landed) = at_target.get(key) else {
            continue;
        };
        let differing: Vec<String> = columns
            .iter()
            .zip(values.iter().zip(landed))
            .filter(|(column, (value, landed))| {
                masker.apply(column.mask, column.redact_with.as_deref(), value.as_deref())
                    != **landed
            })
            .map(|(column, _)| column.name.clone())
            .collect();
        if differing.is_empty() {
            continue;
        }
        content.matched = false;
        if content.different.len() >= LISTED {
            content.unlisted += 1;
            continue;
        }
        match content.different.iter_mut().find(|d| &d.key == key) {
            Some(row) => row.columns.extend(differing),
            None => content.different.push(RowDifference {
                key: key.clone(),
                columns: differing,
            }),
        }
    }
    Ok(())
}
