//! What a mapped job refuses because of the target, before anything is
//! written: a foreign key of the platform's between two tables the job
//! lands rows in (the copy loads tables in parallel, and while changes
//! stream a key's own action would run before the source's), and, for a
//! job that streams changes, carried columns of types the target lacks
//! (each change's values are read there as the source's types). Reads the
//! target's catalog; never writes.

use tokio_postgres::Client;

use super::resolve::Landing;
use crate::{Error, Result};

/// One line per problem, naming the table, column or key and the fix.
/// `streams`: the job streams changes after its copy.
pub async fn refusals(
    target: &Client,
    landings: &[&Landing],
    streams: bool,
) -> Result<Vec<String>> {
    let mut problems = keys_between(target, landings).await?;
    if streams {
        problems.extend(types_missing(target, landings).await?);
    }
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

/// The platform's foreign keys between the platform tables the job lands
/// rows in (a table and itself included).
async fn keys_between(target: &Client, landings: &[&Landing]) -> Result<Vec<String>> {
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
             WHERE con.contype = 'f' AND con.conparentid = 0 \
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
                "the platform's foreign key {name} on {child} references {parent}, and the job lands rows in \
                 both: the copy loads tables in parallel, so rows could arrive before the rows they \
                 reference (and while changes stream, the key's own action would run before the \
                 source's); drop the key for the migration and add it back after (NOT VALID, then \
                 VALIDATE CONSTRAINT), or land {parent} in a job of its own first"
            )
        })
        .collect())
}
