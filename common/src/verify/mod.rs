//! Verification of a target against its source that is independent of the
//! copy path: everything is computed by the two databases from their tables
//! and catalogs, nothing from what the copier staged or recorded. Four
//! layers, reported separately: schema, row counts, content (per key range
//! and bucket, narrowed down to the differing primary keys) and referential
//! integrity of the target; large objects are compared by content digest.
//!
//! `report` owns the report and its summary, `schema` the catalog layer,
//! `content` the row comparison of a key range, `integrity` the orphan
//! counts and `store` the sealed copies kept in staging. The coordinator
//! plans and merges ranges; workers compare them.

mod changed;
mod content;
mod integrity;
mod masked;
mod report;
mod sample;
mod schema;
pub(crate) mod store;
mod view;

pub use changed::{CHANGED_KEYS, compare_changed};
pub use content::{
    Options, ROW_LEVEL_LIMIT, RangeFinding, absent_table, compare_range, compare_views,
    merge_table, method,
};
pub use integrity::{mapped_orphans, orphans};
pub use masked::{MaskedColumn, compare_masked};
pub use report::{
    ContentLayer, ForeignKeyReport, LargeObjectsReport, MappingLineage, Report, RowDifference,
    SchemaLayer, SequenceBehind, SkippedRows, TableReport, all_matched,
};

/// Large objects compared by both databases' own digests of every OID and
/// content; None when neither side has any.
pub async fn compare_large_objects(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
) -> crate::Result<Option<LargeObjectsReport>> {
    let (at_source, at_target) = tokio::try_join!(
        crate::pg::large_objects::fingerprint(source),
        crate::pg::large_objects::fingerprint(target)
    )?;
    if at_source.rows == 0 && at_target.rows == 0 {
        return Ok(None);
    }
    Ok(Some(LargeObjectsReport {
        source: at_source.rows,
        target: at_target.rows,
        matched: at_source == at_target,
    }))
}
pub use sample::{Sample, SampleReport};
pub use schema::{compare_schema, primary_key, primary_key_types};
pub use store::{load_finding, load_report, store_finding, store_report};
pub use view::{Value, View};
