//! `godwit plan JOB.yaml`: the mapping resolved against both catalogs,
//! the conversions that can fail with today's values as evidence, and a
//! forecast of the run, before anything is written. Exit 2 lists every
//! problem of the mapping at once.

use std::path::Path;

use godwit_common::mapping::evidence::{self, Finding};
use godwit_common::mapping::forecast::{self, Capacity, Forecast};
use godwit_common::mapping::on_target::{self, OnTarget, Wait};
use godwit_common::mapping::refusals::refusals;
use godwit_common::mapping::resolve::{self, ColumnLanding, Conversion, Landing, Resolved};
use godwit_common::mapping::{Mask, MaskScope, OnError};
use godwit_common::pg::{self, Side, access, catalog};
use godwit_common::spec::{JobSpec, TableName};
use serde::Serialize;

use crate::render;

/// What `godwit plan --output json` prints.
#[derive(Serialize)]
struct Plan {
    job: String,
    mapping_version: Option<String>,
    resolved: Resolved,
    /// Source tables loading after others', by the platform's keys.
    waits: std::collections::BTreeMap<TableName, Wait>,
    can_fail: Vec<Finding>,
    forecast: Forecast,
}

pub struct Options {
    pub readers: usize,
    pub reader_bytes_per_sec: u64,
    pub json: bool,
}

pub async fn plan(spec_path: &Path, options: Options) -> i32 {
    let spec = match JobSpec::from_file(spec_path) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match build(&spec, &options).await {
        Ok(Err(problems)) => {
            eprintln!(
                "error: the mapping of job {} cannot be carried out ({} problem{}):",
                spec.job,
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
            for problem in problems {
                eprintln!("  - {problem}");
            }
            2
        }
        Ok(Ok(plan)) => {
            if options.json {
                match serde_json::to_string_pretty(&plan) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: cannot write the plan as JSON: {e}");
                        return 1;
                    }
                }
            } else {
                print!("{}", text(&plan));
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.kind().exit_code()
        }
    }
}

async fn build(
    spec: &JobSpec,
    options: &Options,
) -> godwit_common::Result<Result<Plan, Vec<String>>> {
    let source = pg::connect(&spec.source, Side::Source).await?;
    let target = pg::connect(&spec.target, Side::Target).await?;
    let tables: Vec<TableName> = catalog::resolve_tables(&source, spec)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let unreadable = access::unreadable_tables(&source, &tables).await?;
    let role = access::current_role(&source).await?;
    if let Some(refusal) = access::refusal(&role, &unreadable) {
        return Err(refusal);
    }
    let mapping = spec.mapping.clone().unwrap_or_default();
    let mut resolved = resolve::resolve(&mapping, &source, &target, &tables, false).await?;
    let mut problems = resolved.problems.clone();
    let mut on_target = OnTarget::default();
    if problems.is_empty() {
        // What a run would refuse, said now rather than at the run.
        problems.extend(refusals(&mapping, &resolved, spec.changes.is_some()));
        let carried: Vec<_> = resolved.landings.iter().filter(|l| l.carried).collect();
        on_target = on_target::review(&target, &carried, spec.changes.is_some()).await?;
        problems.extend(on_target.problems.iter().cloned());
    }
    if !problems.is_empty() {
        return Ok(Err(problems));
    }
    // The run's copy order: by wave, then as the mapping orders them.
    resolved
        .landings
        .sort_by_key(|l| on_target.wave_of(&l.source));
    let mut can_fail = Vec::new();
    for landing in &resolved.landings {
        can_fail.extend(evidence::gather(&source, landing).await?);
    }
    let capacity = Capacity {
        readers: options.readers,
        reader_bytes_per_sec: options.reader_bytes_per_sec,
        throttle_bytes_per_sec: spec
            .throttle
            .as_ref()
            .and_then(|t| t.bytes_per_sec)
            .map(|b| b.0),
    };
    let forecast = forecast::forecast(&source, &resolved.landings, capacity).await?;
    Ok(Ok(Plan {
        job: spec.job.to_string(),
        mapping_version: spec.mapping.as_ref().map(|m| m.version()),
        resolved,
        waits: on_target.waits,
        can_fail,
        forecast,
    }))
}

fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let version = plan.mapping_version.as_ref().map_or_else(
        || "no mapping: every table lands under its own name".to_owned(),
        |v| format!("mapping version {v}"),
    );
    out.push_str(&format!("plan for job {} ({version})\n\n", plan.job));
    out.push_str("where each table lands, in copy order:\n");
    for landing in &plan.resolved.landings {
        out.push_str(&landing_text(landing));
        if let Some(wait) = plan.waits.get(&landing.source) {
            out.push_str(&format!(
                "      loads once the tables before it are loaded: {}\n",
                wait.keys.join("; ")
            ));
        }
    }
    out.push_str("\nconversions that can fail, against today's values on the source:\n");
    if plan.can_fail.is_empty() {
        out.push_str("  none\n");
    }
    for finding in &plan.can_fail {
        let on_error = plan
            .resolved
            .landings
            .iter()
            .filter(|l| l.source.to_string() == finding.table)
            .flat_map(|l| &l.columns)
            .find(|c| c.source == finding.column)
            .map_or(OnError::Fail, |c| c.on_error);
        let outcome = match (finding.failing, on_error) {
            (Some(0), _) => "none today".to_owned(),
            (Some(_), OnError::Fail) => "the job would fail on them (on_error: fail)".to_owned(),
            (Some(_), OnError::Null) => "they would land as NULL (on_error: null)".to_owned(),
            (Some(_), OnError::Default) => "they would take the column's default".to_owned(),
            (Some(_), OnError::SkipRow) => "their rows would be skipped and listed".to_owned(),
            (None, _) => "unknown until the run".to_owned(),
        };
        let conversion = &finding.conversion;
        let detail = &finding.detail;
        out.push_str(&format!(
            "  {}.{}  {conversion}: {detail} — {outcome}\n",
            finding.table, finding.column
        ));
    }
    out.push_str(&forecast_text(&plan.forecast));
    out
}

fn landing_text(landing: &Landing) -> String {
    let mut out = String::new();
    let how = match (landing.exists, landing.holds_rows) {
        (false, _) => "created by the job".to_owned(),
        (true, false) => "exists, empty".to_owned(),
        (true, true) => "exists, holds other rows".to_owned(),
    };
    let slice = landing
        .tenant
        .as_ref()
        .map(|(column, value)| format!("; this job's rows: {column} = {value}"))
        .unwrap_or_default();
    out.push_str(&format!(
        "  {} → {}  ({how}{slice})\n",
        landing.source, landing.target
    ));
    for column in &landing.columns {
        out.push_str(&format!("      {}\n", column_text(column)));
    }
    for dropped in &landing.dropped {
        out.push_str(&format!("      {dropped}: dropped\n"));
    }
    for (column, value) in &landing.added {
        out.push_str(&format!("      + {column} = {value}\n"));
    }
    if let Some(creation) = &landing.creates {
        let count = |sql: &str| sql.matches("; ").count();
        out.push_str(&format!(
            "      created from the source's definition under the mapped names: its primary key, then after \
             the copy {} unique constraints, checks and indexes, {} foreign keys\n",
            count(&creation.keys),
            count(&creation.references)
        ));
    }
    out
}

fn column_text(column: &ColumnLanding) -> String {
    let mut notes = Vec::new();
    match column.conversion {
        Conversion::None => {}
        Conversion::Widening => notes.push("converted, never fails".to_owned()),
        Conversion::CanFail => notes.push("converted, can fail".to_owned()),
    }
    if column.nulls_refused {
        notes.push("NOT NULL on the target only".to_owned());
    }
    if let Some(offset) = column.offset {
        notes.push(match &column.follows {
            Some(key) => format!("offset {offset:+} (follows {key})"),
            None => format!("offset {offset:+}"),
        });
    }
    if let Some(key) = &column.remap_key {
        let numbered_by = format!("numbered by {}", key.new_id);
        notes.push(match &column.follows {
            Some(followed) => format!("new ids of {followed} (godwit.key_map)"),
            None => format!("new ids, {numbered_by} (godwit.key_map)"),
        });
    }
    if let Some(mask) = column.mask.filter(|m| *m != Mask::Keep) {
        let scope = match column.masked_for {
            MaskScope::Always => "always",
            MaskScope::Review => "in review copies",
        };
        notes.push(format!("{} {scope}", mask_name(mask)));
    }
    let types = if column.source_type == column.target_type {
        column.source_type.clone()
    } else {
        format!("{} → {}", column.source_type, column.target_type)
    };
    let name = if column.source == column.target {
        column.source.clone()
    } else {
        format!("{} → {}", column.source, column.target)
    };
    if notes.is_empty() {
        format!("{name}: {types}")
    } else {
        format!("{name}: {types}; {}", notes.join("; "))
    }
}

fn mask_name(mask: Mask) -> &'static str {
    match mask {
        Mask::Keep => "kept",
        Mask::Redact => "redacted",
        Mask::Tokenise => "tokenised",
        Mask::TokeniseEmail => "tokenised (domain kept)",
        Mask::TokenisePhone => "tokenised (last four kept)",
        Mask::TokeniseCard => "tokenised (last four kept)",
        Mask::Fake => "faked",
        Mask::Hash => "hashed",
    }
}

fn forecast_text(forecast: &Forecast) -> String {
    let mut out = String::from("\nforecast (an estimate):\n");
    for table in &forecast.tables {
        out.push_str(&format!(
            "  {} → {}: {} to read; a sample of {} rows compresses to {:.0}%\n",
            table.table,
            table.lands_in,
            render::bytes(table.bytes),
            table.sampled_rows,
            table.compressed_ratio * 100.0
        ));
    }
    let throttle = forecast.throttle_bytes_per_sec.map_or_else(
        || "no throttle".to_owned(),
        |t| format!("throttle {}/s", render::bytes(t)),
    );
    out.push_str(&format!(
        "  total {} to read, about {} staged; {} readers at {}/s each, {throttle}: limited by the {}; \
         copy about {}\n",
        render::bytes(forecast.bytes),
        render::bytes(forecast.staged_bytes),
        forecast.readers,
        render::bytes(forecast.reader_bytes_per_sec),
        forecast.limited_by,
        render::duration_ms((forecast.copy_seconds * 1000.0) as u64)
    ));
    out
}
