//! What a job that streams changes refuses of its mapped tables because
//! of the target: the stream reads each change's values there as the
//! source's types, and applies changes to the platform's tables without
//! replica mode, where a foreign key's own action would run before the
//! source's. Reads the target's catalog; never writes.

use tokio_postgres::Client;

use super::resolve::Landing;
use crate::{Error, Result};

/// One line per problem, naming the table, column or key and the fix.
pub async fn target_refusals(target: &Client, landings: &[&Landing]) -> Result<Vec<String>> {
    let mut problems = types_missing(target, landings).await?;
    problems.extend(acting_keys(target, landings).await?);
    Ok(problems)
}

/// Carried columns (masked ones are read as text) of a type the target
/// lacks.
async fn types_missing(target: &Client, landings: &[&Landing]) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for landing in landings {
        let types: Vec<String> = landing
            .columns
            .iter()
            .filter(|c| c.copy_mask().is_none())
            .map(|c| c.source_type.clone())
            .collect();
        let missing: Vec<String> = target
            .query_one(
                "SELECT coalesce(array_agg(DISTINCT x), '{}') FROM unnest($1::text[]) AS x \
                 WHERE to_regtype(x) IS NULL",
                &[&types],
            )
            .await
            .map_err(|e| Error::postgres("cannot look up types on the target", e))?
            .get(0);
        for column in landing
            .columns
            .iter()
            .filter(|c| c.copy_mask().is_none() && missing.contains(&c.source_type))
        {
            problems.push(format!(
                "{} → {}: {} is of type {}, which the target does not have, and a streamed change is read \
                 there as the source's types: create the type on the target, or copy without `changes`",
                landing.source, landing.target, column.source, column.source_type
            ));
        }
    }
    Ok(problems)
}

/// The platform's foreign keys with an action (`ON DELETE CASCADE`, `SET
/// NULL`, `SET DEFAULT`) between the platform tables the job lands in: the
/// target would act on a streamed change by itself, and the source's own
/// following change would then find no row.
async fn acting_keys(target: &Client, landings: &[&Landing]) -> Result<Vec<String>> {
    let tables: Vec<String> = landings
        .iter()
        .filter(|l| l.source != l.target)
        .map(|l| l.target.quoted())
        .collect();
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let rows = target
        .query(
            "WITH job AS (SELECT to_regclass(x) AS oid FROM unnest($1::text[]) AS x) \
             SELECT quote_ident(con.conname), con.conrelid::regclass::text, con.confrelid::regclass::text \
             FROM pg_constraint con \
             WHERE con.contype = 'f' \
               AND (con.confdeltype IN ('c', 'n', 'd') OR con.confupdtype IN ('c', 'n', 'd')) \
               AND con.conrelid IN (SELECT oid FROM job) AND con.confrelid IN (SELECT oid FROM job) \
             ORDER BY 2, 1",
            &[&tables],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the target's foreign keys", e))?;
    Ok(rows
        .iter()
        .map(|row| {
            let (name, child, parent): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            format!(
                "the platform's foreign key {name} on {child} acts by itself (cascades or sets values) when \
                 {parent} changes, and both take this job's streamed changes: the source's own following \
                 change would find no row; migrate without `changes` (in a write freeze), or remove the \
                 key's action for the migration"
            )
        })
        .collect())
}
