//! Evidence, from the source's rows, of the values a mapping's conversions
//! would refuse: for each column that can fail, how many of today's values
//! do not convert (too long for a `varchar(n)`, out of an integer's range,
//! more decimals than a `numeric(p,s)` keeps, not a number at all, NULL
//! into NOT NULL). One read-only query per table; never writes.

use serde::Serialize;
use tokio_postgres::Client;

use super::resolve::{ColumnLanding, Conversion, Landing};
use crate::spec::quote_ident;
use crate::{Error, Result};

/// What today's values say of one conversion.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub table: String,
    pub column: String,
    pub conversion: String,
    /// Values that would not convert; None when the source cannot tell.
    pub failing: Option<i64>,
    /// What was checked, in words (`longest 80 characters`).
    pub detail: String,
    /// The same without anything read from the values (counts only): what
    /// may reach an error that is logged.
    pub counted: String,
}

/// The checks of one column: SQL aggregates over `t`, read in order.
struct Check {
    column: String,
    conversion: String,
    /// The condition over `t` of a value that does not convert.
    fails: String,
    detail: Option<(String, &'static str)>,
    what: String,
}

fn integer_range(data_type: &str) -> Option<(&'static str, &'static str)> {
    match data_type {
        "smallint" => Some(("-32768", "32767")),
        "integer" => Some(("-2147483648", "2147483647")),
        "bigint" => Some(("-9223372036854775808", "9223372036854775807")),
        _ => None,
    }
}

fn is_numeric_type(data_type: &str) -> bool {
    matches!(
        data_type,
        "smallint" | "integer" | "bigint" | "real" | "double precision"
    ) || data_type.starts_with("numeric")
}

const INTEGER_TEXT: &str = r"'^\s*[-+]?[0-9]+\s*$'";
const NUMBER_TEXT: &str = r"'^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$'";

/// `c` as a numeric (NULL where its text is not a number matching
/// `pattern`), and the condition of a value that is not one.
fn as_number(c: &str, from: &str, pattern: &str) -> (String, String) {
    if is_numeric_type(from) {
        (format!("{c}::numeric"), "false".to_owned())
    } else {
        (
            format!("(CASE WHEN {c}::text ~ {pattern} THEN {c}::text::numeric END)"),
            format!("({c} IS NOT NULL AND {c}::text !~ {pattern})"),
        )
    }
}

/// The condition over `t` of a value of `column` that does not convert to
/// its target type; None when no check is known for the pair.
pub fn failing_value(column: &ColumnLanding) -> Option<String> {
    check_for(column).map(|check| check.fails)
}

/// The failing values of `c` (source type `from`) in target type `to`;
/// None when no check is known for the pair.
fn check_for(column: &ColumnLanding) -> Option<Check> {
    // The value as the copy converts it: after its offset, if any.
    let c = match column.offset {
        Some(offset) => format!("(t.{}::numeric + {offset})", quote_ident(&column.source)),
        None => format!("t.{}", quote_ident(&column.source)),
    };
    let (from, to) = (column.source_type.as_str(), column.target_type.as_str());
    let conversion = format!("{from} → {to}");
    if let Some(n) = to
        .strip_prefix("character varying(")
        .or_else(|| to.strip_prefix("character("))
        .or_else(|| to.strip_prefix("varchar("))
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|n| n.parse::<u32>().ok())
    {
        return Some(Check {
            column: column.source.clone(),
            conversion,
            fails: format!("char_length({c}::text) > {n}"),
            detail: Some((format!("max(char_length({c}::text))::text"), "longest")),
            what: format!("values longer than {n} characters"),
        });
    }
    if let Some((low, high)) = integer_range(to) {
        let (number, not_number) = as_number(&c, from, INTEGER_TEXT);
        return Some(Check {
            column: column.source.clone(),
            conversion,
            fails: format!(
                "{not_number} OR {number} < {low} OR {number} > {high} OR {number} <> trunc({number})"
            ),
            detail: Some((
                format!("min({number})::text || ' … ' || max({number})::text"),
                "range",
            )),
            what: format!("values that are not integers within {low} … {high}"),
        });
    }
    if let Some((precision, scale)) = to
        .strip_prefix("numeric(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| {
            let (p, s) = r.split_once(',').unwrap_or((r, "0"));
            Some((p.trim().parse::<u32>().ok()?, s.trim().parse::<u32>().ok()?))
        })
    {
        let (number, not_number) = as_number(&c, from, NUMBER_TEXT);
        let digits = precision.saturating_sub(scale);
        return Some(Check {
            column: column.source.clone(),
            conversion,
            fails: format!(
                "{not_number} OR {number} <> round({number}, {scale}) \
                 OR abs(round({number}, {scale})) >= 1e{digits}"
            ),
            detail: None,
            what: if is_numeric_type(from) {
                format!("values with more than {scale} decimals or {digits} integer digits")
            } else {
                format!(
                    "values that are not numbers, or have more than {scale} decimals or {digits} integer digits"
                )
            },
        });
    }
    None
}

/// The evidence for every conversion of `landing` that can fail; reads the
/// whole source table once when there is any.
pub async fn gather(source: &Client, landing: &Landing) -> Result<Vec<Finding>> {
    let table = landing.source.to_string();
    let mut checks = Vec::new();
    let mut findings = Vec::new();
    for column in &landing.columns {
        if column.conversion == Conversion::CanFail {
            match check_for(column) {
                Some(check) => checks.push(check),
                None => findings.push(Finding {
                    table: table.clone(),
                    column: column.source.clone(),
                    conversion: format!("{} → {}", column.source_type, column.target_type),
                    failing: None,
                    detail: "can fail; no check of today's values is known for this pair of types"
                        .into(),
                    counted: "can fail; not checked".into(),
                }),
            }
        }
        if let (Some(offset), Some((low, high))) =
            (column.offset, integer_range(&column.target_type))
        {
            let c = format!("t.{}", quote_ident(&column.source));
            let moved = format!("({c}::numeric + {offset})");
            checks.push(Check {
                column: column.source.clone(),
                conversion: format!("offset {offset:+} in {}", column.target_type),
                fails: format!("{moved} < {low} OR {moved} > {high}"),
                detail: Some((
                    format!("min({moved})::text || ' … ' || max({moved})::text"),
                    "new range",
                )),
                what: format!("ids pushed out of {low} … {high}"),
            });
        }
        if column.nulls_refused {
            let c = format!("t.{}", quote_ident(&column.source));
            checks.push(Check {
                column: column.source.clone(),
                conversion: "NULL → NOT NULL".into(),
                fails: format!("{c} IS NULL"),
                detail: None,
                what: "NULLs, which the target column refuses".into(),
            });
        }
    }
    if checks.is_empty() {
        return Ok(findings);
    }
    let mut aggregates = Vec::new();
    for check in &checks {
        aggregates.push(format!("count(*) FILTER (WHERE {})", check.fails));
        aggregates.push(
            check
                .detail
                .as_ref()
                .map_or_else(|| "NULL::text".to_owned(), |(expr, _)| expr.clone()),
        );
    }
    let row = source
        .query_one(
            &format!(
                "SELECT {} FROM {} AS t",
                aggregates.join(", "),
                landing.source.quoted()
            ),
            &[],
        )
        .await
        .map_err(|e| {
            Error::postgres(
                format!("cannot look at the values of {table} on the source"),
                e,
            )
        })?;
    for (i, check) in checks.into_iter().enumerate() {
        let failing: i64 = row.get(2 * i);
        let masked = landing
            .columns
            .iter()
            .any(|c| c.source == check.column && c.mask.is_some_and(|m| m != super::Mask::Keep));
        // A masked column's values are what the mask hides: never shown.
        let detail: Option<String> = if masked { None } else { row.get(2 * i + 1) };
        let seen = match (detail, &check.detail) {
            (Some(value), Some((_, label))) => format!("; {label} {value}"),
            _ => String::new(),
        };
        findings.push(Finding {
            table: table.clone(),
            column: check.column,
            conversion: check.conversion,
            failing: Some(failing),
            counted: format!("{failing} {}", check.what),
            detail: format!("{failing} {}{seen}", check.what),
        });
    }
    Ok(findings)
}
