//! A job's mapping applied before anything is written: each source table
//! the mapping lands elsewhere becomes a copy into its target table (rows
//! read through the mapped expressions), after the refusals this version
//! owes the operator (what it cannot carry yet, values that would not
//! convert). Never writes.

use godwit_common::Error;
use godwit_common::job::SourceRelation;
use godwit_common::mapping::carry::{Carried, carry};
use godwit_common::mapping::refusals::refusals;
use godwit_common::mapping::resolve::{self, Landing};
use godwit_common::mapping::{evidence, on_target};
use godwit_common::pg::catalog::SourceTable;
use godwit_common::pgcopy::CopyFormat;
use godwit_common::spec::{JobSpec, TableName};

use crate::error::JobError;

/// What changed from the mapping the job first wrote under (recorded in
/// the target's ledger) to the spec's; None when it has not written yet or
/// the mapping is the same.
pub(crate) fn changed_since_written(
    marks: &godwit_common::pg::ledger::JobMarks,
    spec: &JobSpec,
) -> Option<Vec<String>> {
    let current = spec.mapping.as_ref().map(|m| m.canonical());
    (marks.known && marks.pre_data_done && marks.mapping != current).then(|| {
        godwit_common::mapping::MappingSpec::differences(
            marks.mapping.as_deref(),
            spec.mapping.as_ref(),
        )
    })
}

/// What the mapping is applied for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A run: values that would not convert are looked for first.
    Copy { resumed: bool },
    /// A comparison of what a run carried.
    Verify,
}

/// `tables` with those the mapping lands elsewhere turned into copies into
/// their target tables; the others as they were.
pub(crate) async fn land(
    spec: &JobSpec,
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    tables: Vec<SourceTable>,
    purpose: Purpose,
) -> Result<Vec<SourceTable>, JobError> {
    let resumed = purpose != (Purpose::Copy { resumed: false });
    let rejected = JobError::Rejected;
    let Some(mapping) = &spec.mapping else {
        return Ok(tables);
    };
    let names: Vec<TableName> = tables.iter().map(|t| t.name.clone()).collect();
    let resolved = resolve::resolve(mapping, source, target, &names, resumed)
        .await
        .map_err(rejected)?;
    let mut problems = resolved.problems.clone();
    let mapped: Vec<&Landing> = resolved.landings.iter().filter(|l| l.carried).collect();
    problems.extend(refusals(mapping, &resolved, spec.changes.is_some()));
    // What the target refuses concerns writing to it: a comparison of what
    // a run carried (or a stream resolving its tables) is not refused for
    // a key the platform added since.
    let on_target = if matches!(purpose, Purpose::Copy { .. }) {
        on_target::review(target, &mapped, spec.changes.is_some())
            .await
            .map_err(rejected)?
    } else {
        on_target::OnTarget::default()
    };
    problems.extend(on_target.problems.iter().cloned());
    if problems.is_empty() && matches!(purpose, Purpose::Copy { .. }) {
        for landing in &mapped {
            for finding in evidence::gather(source, landing).await.map_err(rejected)? {
                let fails = finding.failing.unwrap_or(0) > 0;
                let column = landing.columns.iter().find(|c| c.source == finding.column);
                if fails
                    && column.is_some_and(|c| c.on_error == godwit_common::mapping::OnError::Fail)
                {
                    problems.push(format!(
                        "{}.{} ({}): {}; say what they become (`on_error: null`) or fix them on the source",
                        finding.table, finding.column, finding.conversion, finding.counted
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(rejected(Error::Precondition(format!(
            "the mapping of job {} (version {}) cannot be carried out:\n  - {}",
            spec.job,
            resolved.version,
            problems.join("\n  - ")
        ))));
    }
    // Copy order: by wave, then as the mapping orders the tables.
    let rank = |name: &TableName| {
        (
            on_target.wave_of(name),
            resolved.landings.iter().position(|l| &l.source == name),
        )
    };
    let mut tables = tables;
    tables.sort_by_key(|t| rank(&t.name));
    let mut landed = Vec::with_capacity(tables.len());
    for table in tables {
        let wave = on_target.wave_of(&table.name);
        let Some(landing) = mapped.iter().find(|l| l.source == table.name) else {
            landed.push(table);
            continue;
        };
        let mut carried = carry(landing).map_err(|e| rejected(Error::Precondition(e)))?;
        carried.shares_target_with = mapped
            .iter()
            .filter(|l| l.target == landing.target && l.source != landing.source)
            .map(|l| l.source.clone())
            .collect();
        landed.push(SourceTable {
            name: carried.target.clone(),
            copy_columns: carried.copy_columns.clone(),
            format: CopyFormat::Text,
            source_relation: Some(SourceRelation {
                from: format!("{} AS t", table.name.quoted()),
                select: carried.select.clone(),
                filter: carried.keep.clone(),
            }),
            mapped: Some(Box::new(carried)),
            wave,
            ..table
        });
    }
    Ok(landed)
}

/// What the change stream and the cutover need of a job's mapping: the
/// source tables (published, frozen, their sequences read), the target
/// tables the job created, the mapped ones as carried, and the token key
/// their masked columns are compared with.
pub(crate) struct StreamLanding {
    pub(crate) source_tables: Vec<TableName>,
    /// The target tables the job created (copied as they are, or keeping
    /// their names with masks): in replica mode while changes stream.
    pub(crate) created: Vec<TableName>,
    pub(crate) mapped: Vec<Carried>,
    token_key: Option<godwit_common::mapping::mask::TokenKey>,
    customer: String,
}

impl StreamLanding {
    /// For the job's planned (target) tables.
    pub(crate) async fn of(spec: &JobSpec, planned: &[TableName]) -> godwit_common::Result<Self> {
        let mut landing = Self {
            source_tables: planned.to_vec(),
            created: planned.to_vec(),
            mapped: Vec::new(),
            token_key: None,
            customer: spec.customer.to_string(),
        };
        if spec.mapping.is_none() {
            return Ok(landing);
        }
        let source =
            godwit_common::pg::connect(&spec.source, godwit_common::pg::Side::Source).await?;
        let target =
            godwit_common::pg::connect(&spec.target, godwit_common::pg::Side::Target).await?;
        let tables = godwit_common::pg::catalog::resolve_tables(&source, spec).await?;
        let landed = land(spec, &source, &target, tables, Purpose::Verify)
            .await
            .map_err(|e| match e {
                JobError::Rejected(e) | JobError::Failed(e) => e,
                other => Error::Internal(other.to_string()),
            })?;
        landing.mapped = landed
            .into_iter()
            .filter_map(|t| t.mapped.map(|m| *m))
            .filter(|m| planned.contains(&m.target))
            .collect();
        landing.source_tables = planned
            .iter()
            .map(|name| {
                landing
                    .mapped
                    .iter()
                    .find(|m| &m.target == name)
                    .map_or_else(|| name.clone(), |m| m.source.clone())
            })
            .collect();
        // Tables the job created (masked ones too) go in replica mode;
        // the platform's own never do: other tenants write there.
        landing.created.retain(|name| {
            !landing
                .mapped
                .iter()
                .any(|m| &m.target == name && !m.created_by_job())
        });
        if landing.mapped.iter().any(|m| !m.masked.is_empty()) {
            landing.token_key =
                Some(godwit_common::keyring::CustomerKeys::for_spec(spec)?.token_key());
        }
        Ok(landing)
    }

    /// The rows of the keys the stream touched, compared on both sides as
    /// each holds them now (mapped tables as mapped).
    pub(crate) async fn compare_changed(
        &self,
        (source, target): (&tokio_postgres::Client, &tokio_postgres::Client),
        touched: &godwit_common::pg::changed_keys::Touched,
    ) -> godwit_common::Result<Vec<godwit_common::verify::TableReport>> {
        let masker = self.masker();
        godwit_common::verify::compare_changed(
            (source, target),
            touched,
            (&self.mapped, masker.as_ref()),
            godwit_common::verify::Options::default(),
        )
        .await
    }

    /// Masks the source's values of masked columns for a comparison.
    pub(crate) fn masker(&self) -> Option<godwit_common::mapping::mask::Masker<'_>> {
        self.token_key
            .as_ref()
            .map(|key| godwit_common::mapping::mask::Masker {
                key,
                customer: &self.customer,
            })
    }
}
