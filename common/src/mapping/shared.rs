//! Several source tables landing in one target table (a customer's
//! `orders_2024` and `orders_2025` into the platform's `orders`): their
//! rows share the job's slice, so each is copied and streamed as its own
//! mapped table while the check compares the union of the sources as
//! mapped with the slice. Owns what the sharers must agree on (one slice,
//! the same target columns, no new ids, a table the platform has) and the
//! union view. SQL text only; runs nothing.

use std::collections::BTreeSet;

use super::carry::Carried;
use super::resolve::Landing;
use crate::spec::quote_ident;
use crate::verify::{MaskedColumn, Value, View};

/// What sharing `target` refuses, one line per problem; `sharers` are
/// the landings into it.
pub fn refusals(sharers: &[&Landing]) -> Vec<String> {
    let Some(first) = sharers.first() else {
        return Vec::new();
    };
    let target = &first.target;
    let names = sharers
        .iter()
        .map(|l| l.source.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut problems = Vec::new();
    if !first.exists {
        problems.push(format!(
            "{names} all land in {target}, which the target does not have: create it on the target first \
             (several tables are not created as one)"
        ));
    }
    let columns = |l: &Landing| -> BTreeSet<String> {
        l.columns
            .iter()
            .map(|c| c.target.clone())
            .chain(l.added.iter().map(|(c, _)| c.clone()))
            .collect()
    };
    for other in &sharers[1..] {
        if other.tenant != first.tenant {
            problems.push(format!(
                "{} and {} land in {target} with different slices ({} and {}): their rows are one job's, \
                 give them the same `tenant:` column and value",
                first.source,
                other.source,
                slice_text(first),
                slice_text(other)
            ));
        }
        let (mine, theirs) = (columns(first), columns(other));
        if mine != theirs {
            let differ: Vec<String> = mine.symmetric_difference(&theirs).cloned().collect();
            problems.push(format!(
                "{} and {} land in {target} filling different columns ({}): the check compares their rows \
                 as one table, so map the same columns from each (`add:` a value, or `drop:` one)",
                first.source,
                other.source,
                differ.join(", ")
            ));
        }
        if other.source_key.len() != first.source_key.len() {
            problems.push(format!(
                "{} and {} land in {target} with keys of different widths: map tables of one key shape",
                first.source, other.source
            ));
        }
    }
    for landing in sharers {
        if landing.columns.iter().any(|c| c.remap_key.is_some()) {
            problems.push(format!(
                "{} → {target}: new ids (`remap`) are kept per target key and slice, which the tables landing \
                 there with it ({names}) would share: give each an `offset` that keeps their ids apart",
                landing.source
            ));
        }
    }
    problems
}

fn slice_text(landing: &Landing) -> String {
    landing
        .tenant
        .as_ref()
        .map_or_else(|| "no tenant".to_owned(), |(c, v)| format!("{c} = {v}"))
}

/// The check's views of a shared target: the union of the sharers'
/// sources as mapped (each its own rows kept), against the target's
/// slice; and the masked columns, compared over the union. Err says why
/// the sharers cannot be compared as one.
pub fn union_views(parts: &[&Carried]) -> Result<((View, View), Vec<MaskedColumn>), String> {
    let Some(first) = parts.first() else {
        return Err("no table lands there".into());
    };
    let names: Vec<&str> = first
        .views
        .1
        .values
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    let masked: Vec<&str> = first.masked.iter().map(|m| m.name.as_str()).collect();
    let mut branches = Vec::new();
    for part in parts {
        let mut select = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let value = part
                .views
                .0
                .values
                .iter()
                .find(|v| v.name == *name)
                .ok_or_else(|| {
                    format!("{} does not fill {name} of {}", part.source, part.target)
                })?;
            select.push(format!(
                "{} AS {}",
                value.expr,
                quote_ident(&format!("v{i}"))
            ));
        }
        if part.views.0.key.len() != first.views.0.key.len() {
            return Err(format!("{} has a key of another width", part.source));
        }
        for (i, key) in part.views.0.key.iter().enumerate() {
            select.push(format!("{key} AS {}", quote_ident(&format!("k{i}"))));
        }
        for (i, name) in masked.iter().enumerate() {
            let column = part
                .masked
                .iter()
                .find(|m| m.name == *name)
                .ok_or_else(|| format!("{} does not mask {name} as the others do", part.source))?;
            select.push(format!(
                "{} AS {}",
                column.source_expr,
                quote_ident(&format!("m{i}"))
            ));
        }
        branches.push(format!(
            "SELECT {} FROM {} WHERE {}",
            select.join(", "),
            part.views.0.from,
            part.views.0.slice
        ));
    }
    let source = View {
        table: first.target.clone(),
        from: format!("({}) AS t", branches.join(" UNION ALL ")),
        slice: "true".into(),
        values: first
            .views
            .0
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| Value {
                name: v.name.clone(),
                expr: format!("t.{}", quote_ident(&format!("v{i}"))),
                type_name: v.type_name.clone(),
            })
            .collect(),
        key: (0..first.views.0.key.len())
            .map(|i| format!("t.{}", quote_ident(&format!("k{i}"))))
            .collect(),
    };
    let masked = first
        .masked
        .iter()
        .enumerate()
        .map(|(i, m)| MaskedColumn {
            source_expr: format!("t.{}", quote_ident(&format!("m{i}"))),
            ..m.clone()
        })
        .collect();
    Ok(((source, first.views.1.clone()), masked))
}
