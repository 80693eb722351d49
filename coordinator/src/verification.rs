//! Verification of a job, spread over the workers like its copy. The
//! coordinator compares the schemas, cuts every table into key ranges
//! (the whole table when it has no primary key) and publishes them; workers
//! lease the ranges and have both databases compare them; the coordinator
//! merges their findings, counts foreign-key orphans and stores the sealed
//! report. Nothing here reads what the copy staged or recorded.

use std::collections::BTreeMap;
use std::sync::Arc;

use godwit_common::keyspace::Keyspace;
use godwit_common::lease::{HeldLease, LeaseStore, LeaseTiming};
use godwit_common::mapping::carry::KeyMap;
use godwit_common::pg::catalog::{self, SourceTable};
use godwit_common::pg::snapshot::slot_name;
use godwit_common::pg::{self, Side, ledger, stream};
use godwit_common::sealed::SealedStaging;
use godwit_common::spec::{JobSpec, TableName};
use godwit_common::staging::Staging;
use godwit_common::state::{self, PinnedSnapshots, VerifyRun, now_unix_ms};
use godwit_common::verify::{
    self, ContentLayer, MappingLineage, Options, RangeFinding, Report, Sample, SampleReport,
    SkippedRows, TableReport,
};
use godwit_common::work::{self, MappedRange, VerifyRange, WorkKind};
use godwit_common::{Error, Result};

use crate::error::JobError;
use crate::mapped::Purpose;
use crate::planner::{key_cuts, key_ranges};

/// The source rows each mapped table's `on_error: skip-row` left behind,
/// counted and (the first 1,000) listed by key, by the source database.
async fn skipped_rows(
    source: &tokio_postgres::Client,
    tables: &[SourceTable],
) -> Result<Vec<SkippedRows>> {
    let mut skipped = Vec::new();
    for mapped in tables.iter().filter_map(|t| t.mapped.as_ref()) {
        let Some(keep) = &mapped.keep else {
            continue;
        };
        let key = if mapped.source_key.is_empty() {
            "t.ctid".to_owned()
        } else {
            let columns: Vec<String> = mapped.source_key.iter().map(|c| format!("t.{c}")).collect();
            format!("ROW({})", columns.join(", "))
        };
        let row = source
            .query_one(
                &format!(
                    "SELECT count(*), coalesce((array_agg({key}::text ORDER BY {key}))[1:1000], '{{}}') \
                     FROM {} AS t WHERE NOT ({keep})",
                    mapped.source.only()
                ),
                &[],
            )
            .await
            .map_err(|e| Error::postgres(format!("cannot count the rows of {} left behind", mapped.source), e))?;
        skipped.push(SkippedRows {
            table: mapped.source.to_string(),
            rows: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            keys: row.get(1),
        });
    }
    Ok(skipped)
}

/// A key range cut on the source's key, on the target column that key
/// lands in (its bounds moved by the key's offset); None when the bounds
/// cannot be moved (a key that is not an integer), which compares the
/// whole slice on the target.
fn on_target(keys: &state::KeyRange, map: Option<&KeyMap>) -> Option<state::KeyRange> {
    let map = map?;
    let moved = |bound: &Option<String>| -> Option<Option<String>> {
        match bound {
            None => Some(None),
            Some(_) if map.offset == 0 => Some(bound.clone()),
            Some(value) => value
                .parse::<i128>()
                .ok()
                .map(|v| Some((v + i128::from(map.offset)).to_string())),
        }
    };
    Some(state::KeyRange {
        column: map.target_column.clone(),
        type_name: map.target_type.clone(),
        lower: moved(&keys.lower)?,
        upper: moved(&keys.upper)?,
    })
}

/// Most ranges a table is cut into, whatever its size.
const MAX_RANGES_PER_TABLE: u64 = 256;

/// A verified job: its report and where the sealed copy of it went.
pub struct Verified {
    pub report: Report,
    /// The staging object, or why it could not be stored.
    pub stored_at: std::result::Result<String, Error>,
}

pub struct Verifier {
    store: Arc<dyn LeaseStore>,
    keyspace: Keyspace,
}

/// A table's place in the run: its report when the coordinator made it
/// alone, or the ranges the workers compare.
enum Planned {
    Done(TableReport),
    Ranges(TableName, Vec<u32>),
}

impl Verifier {
    pub fn new(store: Arc<dyn LeaseStore>, keyspace: Keyspace) -> Self {
        Self { store, keyspace }
    }

    /// Verifies the job `spec` describes, as the databases are now. Refused
    /// (`JobError::Rejected`) when it cannot start: a database unreachable,
    /// a table unknown, the job already being verified, its changes being
    /// streamed (only the stream can line both sides up: see `verify_pinned`).
    pub async fn verify(&self, spec: &JobSpec, options: Options) -> Result<Verified, JobError> {
        self.run(spec, options, None).await
    }

    /// Verifies both databases as the two snapshots see them: the source
    /// and the target at the same source transaction, while changes stream.
    pub async fn verify_pinned(
        &self,
        spec: &JobSpec,
        options: Options,
        snapshots: PinnedSnapshots,
    ) -> Result<Verified, JobError> {
        self.run(spec, options, Some(snapshots)).await
    }

    async fn run(
        &self,
        spec: &JobSpec,
        options: Options,
        snapshots: Option<PinnedSnapshots>,
    ) -> Result<Verified, JobError> {
        let rejected = JobError::Rejected;
        let failed = JobError::Failed;
        let source = pg::connect(&spec.source, Side::Source)
            .await
            .map_err(rejected)?;
        let target = pg::connect(&spec.target, Side::Target)
            .await
            .map_err(rejected)?;
        match &snapshots {
            Some(pinned) => {
                pg::join_snapshot(&source, &pinned.source)
                    .await
                    .map_err(rejected)?;
                pg::join_snapshot(&target, &pinned.target)
                    .await
                    .map_err(rejected)?;
            }
            None if spec.changes.is_some() => {
                let slot = slot_name(&spec.job);
                if stream::slot_position(&source, &slot)
                    .await
                    .map_err(rejected)?
                    .is_some()
                {
                    return Err(rejected(Error::Verification(format!(
                        "job {} is streaming changes (slot {slot} on the source): compared as they are now, \
                         both sides would differ by the changes in flight; verify through a coordinator, \
                         which pins both sides first: godwit verify --coordinator URL {}",
                        spec.job, spec.job
                    ))));
                }
            }
            None => {}
        }
        let tables = catalog::resolve_tables(&source, spec)
            .await
            .map_err(rejected)?;
        // Rows written under one mapping are compared under that one only.
        let marks = ledger::job_marks(&target, spec.job.as_str())
            .await
            .map_err(rejected)?;
        if let Some(changes) = crate::mapped::changed_since_written(&marks, spec) {
            return Err(rejected(Error::Precondition(format!(
                "job {} wrote to the target under another mapping than the spec's; compared under this \
                 one, its rows would be judged by rules they were not written by:\n  - {}\nverify with \
                 the job's own mapping",
                spec.job,
                changes.join("\n  - ")
            ))));
        }
        let tables = crate::mapped::land(spec, &source, &target, tables, Purpose::Verify).await?;
        let sealed = SealedStaging::open(spec).await.map_err(rejected)?;
        let (staging, key) = (sealed.staging(), sealed.key());

        // The spec's limits apply unless the customer already has some: an
        // operator's live change stays in force.
        let limited =
            crate::throttle::limits(self.store.as_ref(), &self.keyspace, spec.customer.as_str())
                .await
                .map_err(failed)?;
        if limited.is_none() {
            crate::throttle::apply_spec_limits(self.store.as_ref(), &self.keyspace, spec)
                .await
                .map_err(failed)?;
        }
        let run = VerifyRun {
            spec: spec.clone(),
            run: format!("{}", now_unix_ms()),
            compare_rows_below: options.compare_rows_below,
            snapshots,
        };
        // Held for the whole run: one verification of a job at a time, and
        // a coordinator that dies takes its run with it (the lease expires).
        let Some(marker) = HeldLease::try_acquire(
            self.store.clone(),
            &self.keyspace.verifying(&spec.job),
            state::encode(&run).map_err(failed)?,
            LeaseTiming::DEFAULT,
        )
        .await
        .map_err(failed)?
        else {
            return Err(JobError::AlreadyExists(format!(
                "{} (a verification of it is running; wait for it to end)",
                spec.job
            )));
        };
        let ranges_prefix = self.keyspace.work_prefix(&spec.job, WorkKind::Verify);
        // Ranges a run cut short left behind would count as this run's.
        let outcome = match self.store.delete_prefix(&ranges_prefix).await {
            Ok(()) => tokio::select! {
                outcome = self.compare(&run, options.sample, (&source, &target), &tables, (staging, key)) => outcome,
                lost = marker.lost() => Err(JobError::Failed(lost)),
            },
            Err(e) => Err(JobError::Failed(e)),
        };
        let _ = self.store.delete_prefix(&ranges_prefix).await;
        if let Err(e) = marker.release().await {
            tracing::warn!(job_id = %spec.job, error = %e, "cannot end the verification run; it expires with its lease");
        }
        let report = outcome?;
        let stored_at = verify::store_report(staging, key, &spec.job, &report).await;
        tracing::info!(job_id = %spec.job, matched = report.matched, "job verified");
        crate::job_metrics::verified(spec.job.as_str(), report.matched);
        Ok(Verified { report, stored_at })
    }

    async fn compare(
        &self,
        run: &VerifyRun,
        sample: Option<Sample>,
        (source, target): (&tokio_postgres::Client, &tokio_postgres::Client),
        tables: &[SourceTable],
        (staging, key): (&Staging, &godwit_common::keys::DataKey),
    ) -> Result<Report, JobError> {
        let failed = JobError::Failed;
        let spec = &run.spec;
        // A mapped table's target is the platform's own: its schema and keys
        // are not the source's to compare, only its rows as mapped. A table
        // the job created (masked columns only) has the source's schema.
        let names: Vec<TableName> = tables
            .iter()
            .filter(|t| {
                t.mapped
                    .as_ref()
                    .is_none_or(|m| m.keeps_source_definition())
            })
            .map(|t| t.name.clone())
            .collect();
        let every_table = spec.all_tables() && spec.mapping.is_none();
        // Pinned snapshots mean changes are streaming: the target's
        // sequences are brought up to the source's as they are compared.
        let sequence_writer = match &run.snapshots {
            Some(_) => Some(
                pg::connect(&spec.target, Side::Target)
                    .await
                    .map_err(failed)?,
            ),
            None => None,
        };
        let schema = verify::compare_schema(
            source,
            target,
            &names,
            every_table,
            sequence_writer.as_ref(),
        )
        .await
        .map_err(failed)?;
        let all_names: Vec<TableName> = tables.iter().map(|t| t.name.clone()).collect();
        let present = catalog::existing_tables(target, &all_names)
            .await
            .map_err(failed)?;
        let mut plan = Vec::with_capacity(tables.len());
        let mut next = 0u32;
        let mut ranges_total = 0u64;
        let mut shared_compared = std::collections::BTreeSet::new();
        for table in tables {
            let read_from = table.mapped.as_ref().map_or(&table.name, |m| &m.source);
            // Several source tables landing in one table: their union is
            // compared with it once, as one range.
            let shared = match table
                .mapped
                .as_ref()
                .filter(|m| !m.shares_target_with.is_empty())
            {
                Some(m) if !shared_compared.insert(m.target.clone()) => continue,
                Some(m) => {
                    let parts: Vec<&godwit_common::mapping::carry::Carried> = tables
                        .iter()
                        .filter_map(|t| t.mapped.as_deref())
                        .filter(|p| p.target == m.target)
                        .collect();
                    Some(
                        godwit_common::mapping::shared::union_views(&parts).map_err(|e| {
                            failed(Error::Precondition(format!(
                                "cannot compare the tables landing in {}: {e}",
                                m.target
                            )))
                        })?,
                    )
                }
                None => None,
            };
            if !present.contains(&table.name) {
                let mut report = verify::absent_table(source, read_from)
                    .await
                    .map_err(failed)?;
                report.table = table.name.to_string();
                plan.push(Planned::Done(report));
                continue;
            }
            let mut pieces = table
                .bytes
                .div_ceil(spec.partition_size.0.max(1))
                .clamp(1, MAX_RANGES_PER_TABLE) as usize;
            if let Some(sample) = &sample {
                pieces = sample.pieces(pieces, MAX_RANGES_PER_TABLE as usize);
            }
            let mut ranges = match shared {
                Some(_) => vec![None],
                None => self
                    .key_ranges(source, read_from, pieces)
                    .await
                    .map_err(failed)?,
            };
            ranges_total += ranges.len() as u64;
            if let Some(sample) = &sample {
                let picked = sample.picks(&table.name, ranges.len());
                ranges = picked.into_iter().map(|i| ranges[i].clone()).collect();
            }
            let estimated_bytes = table.bytes / ranges.len().max(1) as u64;
            let items: Vec<VerifyRange> = ranges
                .into_iter()
                .map(|keys| {
                    next += 1;
                    let mapped = table.mapped.as_ref().map(|m| {
                        Box::new(match &shared {
                            Some((views, masked)) => MappedRange {
                                views: views.clone(),
                                masked: masked.clone(),
                                target_keys: None,
                            },
                            None => MappedRange {
                                views: m.views.clone(),
                                masked: m.masked.clone(),
                                target_keys: keys
                                    .as_ref()
                                    .and_then(|k| on_target(k, m.key_map.as_ref())),
                            },
                        })
                    });
                    VerifyRange {
                        mapped,
                        ..VerifyRange::pending(next - 1, table.name.clone(), keys, estimated_bytes)
                    }
                })
                .collect();
            work::publish(self.store.as_ref(), &self.keyspace, &spec.job, &items)
                .await
                .map_err(failed)?;
            let numbers = items.iter().map(|r| r.range).collect();
            plan.push(Planned::Ranges(table.name.clone(), numbers));
        }
        tracing::info!(job_id = %spec.job, tables = tables.len(), ranges = next, "verification ranges published");
        let ranges = self.wait_for_ranges(run, next as usize).await?;

        let mut reports = Vec::with_capacity(plan.len());
        for planned in plan {
            match planned {
                Planned::Done(report) => reports.push(report),
                Planned::Ranges(table, numbers) => {
                    let mut findings = Vec::with_capacity(numbers.len());
                    for n in numbers {
                        let Some(range) = ranges.get(&n) else {
                            continue;
                        };
                        findings.push(if range.matched {
                            RangeFinding {
                                source_rows: range.source_rows,
                                target_rows: range.target_rows,
                                content: ContentLayer {
                                    matched: true,
                                    method: verify::method(range.keys.as_ref()).into(),
                                    ..ContentLayer::default()
                                },
                            }
                        } else {
                            verify::load_finding(staging, key, run, n)
                                .await
                                .map_err(failed)?
                        });
                    }
                    reports.push(verify::merge_table(&table, findings));
                }
            }
        }
        let mut foreign_keys = verify::orphans(source, target, &names)
            .await
            .map_err(failed)?;
        let mapped: Vec<_> = tables
            .iter()
            .filter_map(|t| t.mapped.as_deref())
            .filter(|m| !m.keeps_source_definition())
            .collect();
        foreign_keys.extend(
            verify::mapped_orphans(target, &mapped)
                .await
                .map_err(failed)?,
        );
        let large_objects = verify::compare_large_objects(source, target)
            .await
            .map_err(failed)?;
        Ok(Report {
            job: spec.job.to_string(),
            verified_at_unix_ms: now_unix_ms(),
            matched: verify::all_matched(&schema, &reports, &foreign_keys)
                && large_objects.as_ref().is_none_or(|o| o.matched),
            schema,
            tables: reports,
            foreign_keys,
            large_objects,
            sample: sample.map(|s| SampleReport {
                percent: s.percent,
                seed: s.seed,
                ranges_compared: u64::from(next),
                ranges_total,
            }),
            mapping: match &spec.mapping {
                Some(m) => Some(MappingLineage {
                    version: m.version(),
                    lineage: tables
                        .iter()
                        .filter_map(|t| t.mapped.as_ref())
                        .flat_map(|m| m.lineage.clone())
                        .collect(),
                    skipped: skipped_rows(source, tables).await.map_err(failed)?,
                }),
                None => None,
            },
        })
    }

    /// The key ranges of a table, or one whole-table unit without a key.
    async fn key_ranges(
        &self,
        source: &tokio_postgres::Client,
        table: &TableName,
        pieces: usize,
    ) -> Result<Vec<Option<state::KeyRange>>> {
        let key = verify::primary_key(source, table).await?;
        let Some(leading) = key.first() else {
            return Ok(vec![None]);
        };
        let (type_name, domain) = catalog::key_domain(source, table, leading).await?;
        let cuts = key_cuts(&domain, pieces);
        Ok(key_ranges(leading, &type_name, &cuts)
            .into_iter()
            .map(Some)
            .collect())
    }

    /// Waits until every range is compared (by number); fails naming the
    /// first range that failed for good.
    async fn wait_for_ranges(
        &self,
        run: &VerifyRun,
        expected: usize,
    ) -> Result<BTreeMap<u32, VerifyRange>, JobError> {
        let ranges = work::await_done::<VerifyRange, _, _>(
            self.store.clone(),
            &self.keyspace,
            &run.spec.job,
            expected,
            || async { Ok(false) },
        )
        .await
        .map_err(|stopped| match stopped {
            work::Stopped::Cancelled => JobError::Cancelled(run.spec.job.to_string()),
            work::Stopped::Failed(e) => JobError::Failed(e),
        })?;
        Ok(ranges.into_iter().map(|r| (r.range, r)).collect())
    }
}
