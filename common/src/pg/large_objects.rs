//! Large objects (`pg_largeobject`): not rows of any table, so neither the
//! schema dump nor a table copy carries them, while the `oid` columns that
//! point at them compare equal. They move as one more leased copy: workers
//! read `(oid, lo_get(oid))` from `pg_largeobject_metadata` under the job's
//! snapshot, in `ctid` ranges like any table, through the same staging and
//! exactly-once ledger, into a load table of the job in schema `godwit` on
//! the target; once every partition is in, the coordinator creates the
//! large objects from it in one transaction and empties it. Owners and
//! grants are the target's, as for every other object (`--no-owner`,
//! `--no-privileges`). The check compares every large object's digest as
//! each database computes it. Logical decoding does not carry large-object
//! writes, so a job that streams changes refuses a source that has any.

use tokio_postgres::Client;

use super::checksum::TableFingerprint;
use crate::ids::JobId;
use crate::spec::TableName;
use crate::{Error, Result};

/// Where large objects are read from on the source.
pub const SOURCE_RELATION: &str = "pg_catalog.pg_largeobject_metadata";
/// What is read for each large object, in the load table's column order.
pub const SOURCE_COLUMNS: &[&str] = &["oid", "lo_get(oid)"];
/// The load table's columns.
pub const LOAD_COLUMNS: &[&str] = &["loid", "data"];

/// The job's load table on the target.
pub fn load_table(job: &JobId) -> TableName {
    TableName {
        schema: "godwit".into(),
        name: format!("large_objects_{}", job.as_str()),
    }
}

/// Whether `table` is a job's large-object load table rather than a table
/// of the customer's.
pub fn is_load_table(table: &TableName) -> bool {
    table.schema == "godwit" && table.name.starts_with("large_objects_")
}

/// How many large objects the source has, and the size (bytes, blocks) of
/// their metadata, which their partitions are cut by.
pub async fn source_extent(client: &Client) -> Result<(u64, u64, u32)> {
    let row = client
        .query_one(
            "SELECT count(*), pg_relation_size('pg_catalog.pg_largeobject_metadata')::bigint, \
                    (pg_relation_size('pg_catalog.pg_largeobject_metadata') \
                     / current_setting('block_size')::bigint)::bigint \
             FROM pg_catalog.pg_largeobject_metadata",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot count the source's large objects", e))?;
    let number = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok((
        number(0),
        number(1),
        u32::try_from(number(2)).unwrap_or(u32::MAX),
    ))
}

/// Large objects the session's role may not read (a few, for the message)
/// and how many there are in all.
pub async fn unreadable(client: &Client) -> Result<(u64, Vec<u32>)> {
    let row = client
        .query_one(
            "WITH hidden AS ( \
               SELECT m.oid FROM pg_catalog.pg_largeobject_metadata m \
               WHERE NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
                 AND NOT current_setting('lo_compat_privileges')::boolean \
                 AND NOT pg_has_role(m.lomowner, 'USAGE') \
                 AND NOT EXISTS (SELECT 1 FROM aclexplode(m.lomacl) a \
                                 WHERE a.privilege_type = 'SELECT' \
                                   AND (a.grantee = 0 OR pg_has_role(a.grantee, 'USAGE')))) \
             SELECT (SELECT count(*) FROM hidden), \
                    coalesce((SELECT array_agg(oid ORDER BY oid) FROM (SELECT oid FROM hidden ORDER BY oid LIMIT 5) f), '{}')",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the privileges on the source's large objects", e))?;
    Ok((u64::try_from(row.get::<_, i64>(0)).unwrap_or(0), row.get(1)))
}

/// Large objects of the source whose OID the target already uses.
pub async fn taken_on_target(source: &Client, target: &Client) -> Result<Vec<u32>> {
    let oids: Vec<u32> = source
        .query_one(
            "SELECT coalesce(array_agg(oid ORDER BY oid), '{}') FROM pg_catalog.pg_largeobject_metadata",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot list the source's large objects", e))?
        .get(0);
    Ok(target
        .query_one(
            "SELECT coalesce(array_agg(oid ORDER BY oid), '{}') FROM pg_catalog.pg_largeobject_metadata \
             WHERE oid = ANY($1)",
            &[&oids],
        )
        .await
        .map_err(|e| Error::postgres("cannot list the target's large objects", e))?
        .get(0))
}

/// Creates the job's load table on the target (kept on a re-run).
pub async fn prepare_target(target: &Client, job: &JobId) -> Result<()> {
    target
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (loid oid PRIMARY KEY, data bytea NOT NULL)",
            load_table(job).quoted()
        ))
        .await
        .map_err(|e| Error::postgres("cannot create the large-object load table on the target", e))
}

/// Creates the large objects the load table holds and empties it, in one
/// transaction; returns how many were created. A table already emptied
/// creates none, so calling it again is harmless.
pub async fn materialize(target: &mut Client, job: &JobId) -> Result<u64> {
    let table = load_table(job).quoted();
    let tx = target
        .transaction()
        .await
        .map_err(|e| Error::postgres("cannot begin creating large objects on the target", e))?;
    let created = tx
        .execute(
            &format!("SELECT lo_from_bytea(loid, data) FROM {table}"),
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot create the large objects on the target", e))?;
    tx.batch_execute(&format!("TRUNCATE {table}"))
        .await
        .map_err(|e| Error::postgres("cannot empty the large-object load table", e))?;
    tx.commit()
        .await
        .map_err(|e| Error::postgres("cannot commit the large objects on the target", e))?;
    Ok(created)
}

/// The fingerprint of a planned table: its rows, or for a load table every
/// large object, each computed by the database.
pub async fn fingerprint_of(client: &Client, table: &TableName) -> Result<TableFingerprint> {
    if is_load_table(table) {
        fingerprint(client).await
    } else {
        super::checksum::fingerprint(client, table).await
    }
}

/// Count and order-independent digest of every large object (its OID and
/// the MD5 of its content), computed by the database from its own storage.
pub async fn fingerprint(client: &Client) -> Result<TableFingerprint> {
    let row = client
        .query_one(
            "SELECT count(*)::bigint, \
                    coalesce(sum(hashtextextended(oid::text || ':' || md5(lo_get(oid)), 0)::numeric), 0)::text \
             FROM pg_catalog.pg_largeobject_metadata",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot checksum the large objects", e))?;
    Ok(TableFingerprint {
        rows: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        checksum: row.get(1),
    })
}
