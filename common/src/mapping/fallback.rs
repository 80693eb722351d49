//! `on_error: default`: what a value that does not convert becomes, the
//! target column's default, taken only when it is the same value for every
//! row (a constant, or immutable functions of constants), evaluated once
//! by the target. A default that numbers or stamps rows (a sequence, an
//! identity, `now()`, `gen_random_uuid()`) would not be the target's
//! default for each row if computed once: refused, naming it. Reads the
//! target; never writes.

use tokio_postgres::Client;

use super::resolve::Column;
use crate::spec::{TableName, quote_literal};
use crate::{Error, Result};

/// The SQL a failed value of `column` becomes, or why it cannot take the
/// column's default.
pub async fn fallback(
    target: &Client,
    table: &TableName,
    column: &Column,
) -> Result<std::result::Result<String, String>> {
    if column.identity || column.generated {
        return Ok(Err(format!(
            "`on_error: default` lands in {table}.{}, which the target numbers or computes itself: use \
             `on_error: null` or skip-row",
            column.name
        )));
    }
    let Some((expr, immutable)) = &column.default else {
        if column.not_null {
            return Ok(Err(format!(
                "`on_error: default`, but {table}.{} is NOT NULL without a default: give it one on the \
                 target, or use skip-row",
                column.name
            )));
        }
        return Ok(Ok("NULL".to_owned()));
    };
    if !immutable {
        return Ok(Err(format!(
            "`on_error: default`, but the default of {table}.{} ({expr}) is not the same value for every \
             row: use `on_error: null` or skip-row, or give the column a constant default",
            column.name
        )));
    }
    let value: Option<String> = target
        .query_one(&format!("SELECT ({expr})::text"), &[])
        .await
        .map_err(|e| {
            Error::postgres(
                format!(
                    "cannot evaluate the default of {table}.{} on the target",
                    column.name
                ),
                e,
            )
        })?
        .get(0);
    Ok(Ok(
        value.map_or_else(|| "NULL".to_owned(), |v| quote_literal(&v))
    ))
}
