//! The job's final check: the same verification `godwit verify` runs,
//! spread over the workers as leased key ranges, with the source read
//! under the job's own snapshot and the target under a snapshot exported
//! for it. Independent of the copy path: each database computes its counts
//! and digests from its own tables. Never compares in the coordinator.

use std::time::Duration;

use godwit_common::Error;
use godwit_common::job::{JobRecord, SnapshotAt};
use godwit_common::pg::{self, Side, large_objects};
use godwit_common::state::PinnedSnapshots;
use godwit_common::verify::{Options, Report};

use crate::error::JobError;
use crate::phases::Phases;
use crate::preflight::Prepared;
use crate::verification::Verifier;

/// How long the final check waits for an operator's verification of the
/// same job to end before it fails the job.
const BUSY_PATIENCE: Duration = Duration::from_secs(10 * 60);
const BUSY_RETRY: Duration = Duration::from_secs(2);

impl Phases<'_> {
    /// Compares every table of the job on both databases; fails naming
    /// each one that differs. Marks the tables checked in the record.
    pub(crate) async fn final_check(
        &self,
        prepared: &Prepared,
        record: &mut JobRecord,
        at: &SnapshotAt,
    ) -> Result<(), JobError> {
        let spec = &prepared.spec;
        // Held until the ranges are compared, so workers can join it.
        let (target_snapshot, _exporter) = pg::export_snapshot(&spec.target, Side::Target)
            .await
            .map_err(JobError::Failed)?;
        let snapshots = PinnedSnapshots {
            source: at.snapshot.clone(),
            target: target_snapshot,
        };
        let verifier = Verifier::new(self.store.clone(), self.keyspace.clone());
        let started = tokio::time::Instant::now();
        let verified = loop {
            match verifier
                .verify_pinned(spec, Options::default(), snapshots.clone())
                .await
            {
                Err(JobError::AlreadyExists(what)) if started.elapsed() < BUSY_PATIENCE => {
                    tracing::info!(job_id = %spec.job, what, "waiting for a verification of the job to end");
                    tokio::time::sleep(BUSY_RETRY).await;
                }
                // A refusal at this point is the run's failure, not input.
                Err(JobError::Rejected(e)) => return Err(JobError::Failed(e)),
                other => break other?,
            }
        };
        if let Err(e) = &verified.stored_at {
            tracing::warn!(job_id = %spec.job, error = %e, "the final check's report was not stored");
        }
        note_checked(record, &verified.report);
        self.put_record(record).await.map_err(JobError::Failed)?;
        if let Some(found) = differences(&verified.report) {
            return Err(JobError::Failed(Error::Verification(format!(
                "target differs from source in {found}"
            ))));
        }
        let unchecked = unchecked(record);
        if !unchecked.is_empty() {
            return Err(JobError::Failed(Error::Verification(format!(
                "the final check did not compare {}: the job cannot vouch for them",
                unchecked.join(", ")
            ))));
        }
        Ok(())
    }
}

/// Source counts and checked flags of the record's tables, from the report.
fn note_checked(record: &mut JobRecord, report: &Report) {
    for table in &mut record.tables {
        if large_objects::is_load_table(&table.name) {
            if let Some(objects) = &report.large_objects {
                table.source_rows = Some(objects.source);
                table.checked = objects.matched;
            } else {
                table.checked = true;
            }
            continue;
        }
        let name = table.name.to_string();
        if let Some(found) = report.tables.iter().find(|t| t.table == name) {
            table.source_rows = Some(found.source_rows);
            table.checked = found.counts_match && found.content.matched;
        }
    }
}

/// The record's tables the check did not vouch for: a match says nothing
/// of a table it did not compare.
fn unchecked(record: &JobRecord) -> Vec<String> {
    record
        .tables
        .iter()
        .filter(|t| !t.checked)
        .map(|t| t.name.to_string())
        .collect()
}

/// What differs, table by table and then the other layers; None on a match.
fn differences(report: &Report) -> Option<String> {
    if report.matched {
        return None;
    }
    let mut found: Vec<String> = report
        .tables
        .iter()
        .filter(|t| !(t.counts_match && t.content.matched))
        .map(|t| {
            let target = t
                .target_rows
                .map_or("no".to_owned(), |rows| rows.to_string());
            let contents = if t.target_rows == Some(t.source_rows) {
                ", contents differ"
            } else {
                ""
            };
            format!(
                "{} (source {} rows, target {target} rows{contents})",
                t.table, t.source_rows
            )
        })
        .collect();
    let schema = &report.schema;
    if !schema.matched {
        let objects: Vec<&str> = schema
            .missing_on_target
            .iter()
            .chain(&schema.extra_on_target)
            .chain(&schema.different)
            .map(String::as_str)
            .collect();
        let behind: Vec<&str> = schema
            .sequences_behind
            .iter()
            .map(|b| b.sequence.as_str())
            .collect();
        found.push(format!(
            "the schema ({}{}{})",
            objects.join(", "),
            if objects.is_empty() || behind.is_empty() {
                ""
            } else {
                "; "
            },
            if behind.is_empty() {
                String::new()
            } else {
                format!("sequences behind: {}", behind.join(", "))
            }
        ));
    }
    let orphans: Vec<&str> = report
        .foreign_keys
        .iter()
        .filter(|fk| fk.orphans > 0)
        .map(|fk| fk.constraint.as_str())
        .collect();
    if !orphans.is_empty() {
        found.push(format!(
            "foreign keys with orphans ({})",
            orphans.join(", ")
        ));
    }
    if let Some(objects) = report.large_objects.as_ref().filter(|o| !o.matched) {
        found.push(format!(
            "large objects (source {}, target {})",
            objects.source, objects.target
        ));
    }
    Some(found.join("; "))
}

#[cfg(test)]
mod tests {
    use godwit_common::job::PlannedTable;
    use godwit_common::spec::TableName;
    use godwit_common::verify::{ContentLayer, SchemaLayer, TableReport};

    use super::*;

    fn table(name: &str) -> PlannedTable {
        PlannedTable {
            name: TableName::parse(name).expect("name"),
            copy_columns: Vec::new(),
            format: Default::default(),
            estimated_bytes: 0,
            partitions: Vec::new(),
            source_rows: None,
            checked: false,
            source_relation: None,
            masks: Vec::new(),
            review_masks: Vec::new(),
            slice: None,
            referenced: false,
            remaps: Vec::new(),
            creates: None,
        }
    }

    #[test]
    fn a_matching_report_that_skipped_a_table_leaves_it_unchecked() {
        let spec = crate::test_support::spec("j1", "acme");
        let mut record = JobRecord::submitted(spec, 0);
        record.tables = vec![table("public.orders"), table("public.invoices")];
        let report = Report {
            job: "j1".into(),
            verified_at_unix_ms: 0,
            matched: true,
            schema: SchemaLayer {
                matched: true,
                ..SchemaLayer::default()
            },
            tables: vec![TableReport {
                table: "public.orders".into(),
                source_rows: 3,
                target_rows: Some(3),
                counts_match: true,
                ranges: 1,
                content: ContentLayer {
                    matched: true,
                    ..ContentLayer::default()
                },
            }],
            foreign_keys: Vec::new(),
            large_objects: None,
            sample: None,
            mapping: None,
        };
        note_checked(&mut record, &report);
        assert_eq!(differences(&report), None);
        assert_eq!(unchecked(&record), vec!["public.invoices".to_owned()]);
        assert_eq!(record.tables[0].source_rows, Some(3));
    }
}
