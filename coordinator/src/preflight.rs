//! Preflight: everything a job spec names is checked against the world
//! before anything is written: the key, the staging area, the source's WAL
//! level, the tables and what the source role may read of them, what a
//! streaming job needs, the target's extensions and emptiness, and the
//! source's large objects. Every refusal names the object and the fix.
//! Never writes to either database.

use godwit_common::Error;
use godwit_common::pg::catalog::{self, SourceTable};
use godwit_common::pg::ledger::{self, JobMarks};
use godwit_common::pg::{self, Side, access, large_objects, stream};
use godwit_common::sealed::SealedStaging;
use godwit_common::spec::{JobSpec, TableName};

use crate::error::JobError;

/// Everything preflight established; the only way to start a job.
pub struct Prepared {
    pub spec: JobSpec,
    pub(crate) tables: Vec<SourceTable>,
    pub(crate) marks: JobMarks,
}

/// Checks the spec against the world; writes nothing but the job's wrapped
/// data key, and that only into an empty slot of the staging area.
pub async fn preflight(spec: JobSpec) -> Result<Prepared, JobError> {
    let rejected = JobError::Rejected;
    SealedStaging::check_key(&spec).await.map_err(rejected)?;

    let source = pg::connect(&spec.source, Side::Source)
        .await
        .map_err(rejected)?;
    let wal_level: String = source
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(|e| rejected(Error::postgres("cannot read the source's wal_level", e)))?
        .get(0);
    if wal_level != "logical" {
        return Err(rejected(Error::Precondition(format!(
            "the source {} has wal_level = {wal_level}; godwit reads under a snapshot exported by a logical \
             replication slot: set wal_level = logical on the source and restart it",
            pg::describe(&spec.source)
        ))));
    }
    if spec
        .throttle
        .as_ref()
        .and_then(|t| t.adaptive.as_ref())
        .is_some_and(|a| a.reads_others_activity())
    {
        let sees: bool = source
            .query_one(
                "SELECT rolsuper OR pg_has_role('pg_read_all_stats', 'USAGE') FROM pg_roles \
                 WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| {
                rejected(Error::postgres(
                    "cannot read the source role's attributes",
                    e,
                ))
            })?
            .get(0);
        if !sees {
            let role = access::current_role(&source).await.map_err(rejected)?;
            return Err(rejected(Error::Precondition(format!(
                "`throttle.adaptive` watches the source's active sessions or a replica's lag, which \
                 PostgreSQL hides from the source role {role} (the probe would always see an idle \
                 source): GRANT pg_read_all_stats TO {role}, or keep only the probe-latency thresholds"
            ))));
        }
    }
    let tables = catalog::resolve_tables(&source, &spec)
        .await
        .map_err(rejected)?;
    if tables.is_empty() {
        return Err(rejected(Error::Precondition(format!(
            "the source {} has no tables to migrate",
            pg::describe(&spec.source)
        ))));
    }

    let names: Vec<TableName> = tables.iter().map(|t| t.name.clone()).collect();
    let unreadable = access::unreadable_tables(&source, &names)
        .await
        .map_err(rejected)?;
    let role = access::current_role(&source).await.map_err(rejected)?;
    if let Some(refusal) = access::refusal(&role, &unreadable) {
        return Err(rejected(refusal));
    }
    if spec.changes.is_some() {
        let unlogged = stream::unlogged_tables(&source, &names)
            .await
            .map_err(rejected)?;
        if !unlogged.is_empty() {
            let list: Vec<String> = unlogged.iter().map(ToString::to_string).collect();
            return Err(rejected(Error::Precondition(format!(
                "the job streams changes, but table(s) {} on the source are unlogged, so their changes \
                 never reach the WAL and cannot be streamed: run ALTER TABLE … SET LOGGED on the source, \
                 or leave them out of `tables` and migrate them in a job without `changes`",
                list.join(", ")
            ))));
        }
        let unstreamable = stream::unstreamable_tables(&source, &names)
            .await
            .map_err(rejected)?;
        if !unstreamable.is_empty() {
            let list: Vec<String> = unstreamable.iter().map(ToString::to_string).collect();
            return Err(rejected(Error::Precondition(format!(
                "the job streams changes, but table(s) {} on the source have no replica identity, so their \
                 updates and deletes cannot be streamed (and publishing them would make those statements \
                 fail on the source): add a primary key, or run ALTER TABLE … REPLICA IDENTITY FULL, or \
                 leave them out of `tables`",
                list.join(", ")
            ))));
        }
    }
    let target = pg::connect(&spec.target, Side::Target)
        .await
        .map_err(rejected)?;
    let marks = ledger::job_marks(&target, spec.job.as_str())
        .await
        .map_err(rejected)?;
    if let Some(changes) = crate::mapped::changed_since_written(&marks, &spec) {
        return Err(rejected(Error::Precondition(format!(
            "job {} already wrote to the target {} under another mapping; its rows there follow the \
             first one, so it cannot go on under this one:\n  - {}\nrestore the job's first mapping, \
             or run this one as a new job",
            spec.job,
            pg::describe(&spec.target),
            changes.join("\n  - ")
        ))));
    }
    let purpose = crate::mapped::Purpose::Copy {
        resumed: marks.known,
    };
    let tables = crate::mapped::land(&spec, &source, &target, tables, purpose).await?;
    if !marks.known {
        let missing = catalog::extensions_missing_on_target(&source, &target)
            .await
            .map_err(rejected)?;
        if !missing.is_empty() {
            return Err(rejected(Error::Precondition(format!(
                "the source uses extension(s) {}, which the target's server {} does not offer: install \
                 them there (the PostgreSQL package that ships them) before migrating",
                missing.join(", "),
                pg::describe(&spec.target)
            ))));
        }
        // Mapped tables land in tables that exist by design; the others
        // (masked ones too) are created by the job.
        let names: Vec<TableName> = tables
            .iter()
            .filter(|t| t.mapped.as_ref().is_none_or(|m| m.created_by_job()))
            .map(|t| t.name.clone())
            .collect();
        let existing = catalog::existing_tables(&target, &names)
            .await
            .map_err(rejected)?;
        if !existing.is_empty() {
            let list: Vec<String> = existing.iter().map(ToString::to_string).collect();
            return Err(rejected(Error::Precondition(format!(
                "the target {} already has table(s) {}: godwit never writes into tables it did not create; \
                 drop them or choose an empty target database",
                pg::describe(&spec.target),
                list.join(", ")
            ))));
        }
    }
    let mut tables = tables;
    if let Some(objects) = large_object_table(&spec, &source, &target, marks.known).await? {
        tables.push(objects);
    }
    Ok(Prepared {
        spec,
        tables,
        marks,
    })
}

/// The source's large objects as one more table to copy, when the source
/// has any; refused when they cannot be carried
/// whole (the job streams, the role cannot read some, or the target already
/// uses their OIDs).
async fn large_object_table(
    spec: &JobSpec,
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    known: bool,
) -> Result<Option<SourceTable>, JobError> {
    let rejected = JobError::Rejected;
    // Carried whatever the table list: an `oid` column of any table may
    // point at any of them.
    let (count, bytes, blocks) = large_objects::source_extent(source)
        .await
        .map_err(rejected)?;
    if count == 0 {
        return Ok(None);
    }
    if spec.changes.is_some() {
        return Err(rejected(Error::Precondition(format!(
            "the source has {count} large object(s), and logical decoding does not carry their changes, so \
             streaming would lose them silently: migrate without `changes` (in a write freeze), or move \
             their content into bytea columns first"
        ))));
    }
    let (hidden, some) = large_objects::unreadable(source).await.map_err(rejected)?;
    if hidden > 0 {
        let role = access::current_role(source).await.map_err(rejected)?;
        return Err(rejected(Error::Precondition(format!(
            "the source role {role} cannot read {hidden} large object(s) (OIDs {some:?} …): GRANT SELECT ON \
             LARGE OBJECT … TO {role} for each, or migrate as their owner or a superuser"
        ))));
    }
    if !known {
        let taken = large_objects::taken_on_target(source, target)
            .await
            .map_err(rejected)?;
        if !taken.is_empty() {
            return Err(rejected(Error::Precondition(format!(
                "the target already has large object(s) with OIDs {taken:?}, which the source's large objects \
             use: unlink them on the target or choose an empty target database"
            ))));
        }
    }
    Ok(Some(SourceTable {
        name: large_objects::load_table(&spec.job),
        copy_columns: large_objects::LOAD_COLUMNS
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
        bytes,
        blocks,
        format: godwit_common::pgcopy::CopyFormat::Binary,
        source_relation: Some(godwit_common::job::SourceRelation {
            from: large_objects::SOURCE_RELATION.into(),
            select: large_objects::SOURCE_COLUMNS
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            filter: None,
        }),
        mapped: None,
        referenced: false,
        wave: 0,
    }))
}
