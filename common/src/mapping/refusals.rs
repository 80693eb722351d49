//! What a run refuses of a resolved mapping before anything is written,
//! because it does not carry it (or not while changes stream): one line
//! per table and rule, the same for `godwit plan` and the run. Reads
//! nothing.

use super::carry::carry;
use super::resolve::{Conversion, Landing, Resolved};
use super::{MappingSpec, OnError};

/// What a run refuses of a resolved mapping because it does not carry it
/// yet, one line per table and rule (what `godwit plan` and a run both
/// say before anything is written).
/// `streams`: the job streams changes after its copy.
pub fn refusals(mapping: &MappingSpec, resolved: &Resolved, streams: bool) -> Vec<String> {
    let mut problems = Vec::new();
    // An entry that keeps the table's name would land its rules in a table
    // created from the source's own definition.
    // Only masks apply to a table that keeps its name: it is created from
    // the source's own definition, which other rules would contradict.
    for landing in resolved.landings.iter().filter(|l| l.source == l.target) {
        let entry = landing.entry.and_then(|i| mapping.tables.get(i));
        if entry.is_some_and(|e| {
            !e.masks_only() && (!e.columns.is_empty() || !e.add.is_empty() || e.tenant.is_some())
        }) {
            problems.push(format!(
                "{}: its mapping entry keeps the table's name, and on a table the job creates from the \
                 source's definition only masks are carried: map it into the platform's table with `to:` \
                 for other rules",
                landing.source
            ));
        }
    }
    let mapped: Vec<&Landing> = resolved.landings.iter().filter(|l| l.carried).collect();
    for landing in &mapped {
        let at = format!("{} → {}", landing.source, landing.target);
        let sharers: Vec<&Landing> = mapped
            .iter()
            .filter(|l| l.target == landing.target)
            .copied()
            .collect();
        // Said once per shared target, by its first sharer.
        if sharers.len() > 1 && sharers[0].source == landing.source {
            problems.extend(super::shared::refusals(&sharers));
        }
        let skips = landing
            .columns
            .iter()
            .any(|c| c.conversion == Conversion::CanFail && c.on_error == OnError::SkipRow);
        if skips && !landing.referenced_by.is_empty() {
            let referencing: Vec<String> = landing
                .referenced_by
                .iter()
                .map(ToString::to_string)
                .collect();
            problems.push(format!(
                "{at}: `on_error: skip-row` would leave rows of {} pointing at skipped rows of {}: use \
                 `on_error: null` there, or fix the values on the source",
                referencing.join(", "),
                landing.source
            ));
        }
        if let Err(e) = carry(landing) {
            problems.push(e);
        }
        if streams {
            problems.extend(stream_refusals(landing));
        }
    }
    problems
}

/// What a job that streams changes refuses of a mapped table, before
/// anything is written: its changes are applied row by row as the copy
/// landed its rows, found by key in the job's slice.
fn stream_refusals(landing: &Landing) -> Vec<String> {
    let at = format!("{} → {}", landing.source, landing.target);
    let mut problems = Vec::new();
    if landing.source_key.is_empty() {
        problems.push(format!(
            "{at}: {} has no primary key, and a streamed change to a mapped table finds its row by key: \
             give it one, or copy it without `changes`",
            landing.source
        ));
    }
    for column in &landing.columns {
        // The worker converts a streamed masked value into varchar(n)
        // before it masks it; a row it would skip, it cannot leave out.
        let converted_masked =
            column.copy_mask().is_some() && column.conversion == Conversion::CanFail;
        if converted_masked
            && (column.on_error == OnError::SkipRow
                || !column.target_type.starts_with("character varying("))
        {
            problems.push(format!(
                "{at}: {} is both masked and converted to {} with `on_error: {}`, which the stream does not \
                 carry (it converts a masked value into varchar(n) with fail, null or default): mask it \
                 as it is, or choose one of those",
                column.source,
                column.target_type,
                match column.on_error {
                    OnError::SkipRow => "skip-row",
                    OnError::Fail => "fail",
                    OnError::Null => "null",
                    OnError::Default => "default",
                }
            ));
        }
        if column.generated {
            problems.push(format!(
                "{at}: {} is generated on the source and lands in a plain column: the source does not \
                 stream generated values; make the target's column generated too, or drop it",
                column.source
            ));
        }
    }
    problems
}
