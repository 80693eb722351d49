//! Target-versus-source comparison that is independent of the copy path and
//! of godwit's own check: row counts and a digest of the sorted per-row MD5s,
//! both computed by each database.

use anyhow::{Context, ensure};
use tokio_postgres::Client;

/// Every user table (schema-qualified, quoted) of a database, sorted.
pub async fn user_tables(client: &Client) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'godwit') \
               AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
            &[],
        )
        .await
        .context("listing user tables")?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// (row count, digest of the sorted row hashes) of one table.
pub async fn table_digest(client: &Client, table: &str) -> anyhow::Result<(i64, String)> {
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET extra_float_digits = 1; SET DateStyle = 'ISO, YMD'",
        )
        .await?;
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), md5(coalesce(string_agg(h, ',' ORDER BY h), '')) \
                 FROM (SELECT md5(t::text) AS h FROM ONLY {table} AS t) AS hashed"
            ),
            &[],
        )
        .await
        .with_context(|| format!("digesting {table}"))?;
    Ok((row.get(0), row.get(1)))
}

/// Asserts both databases hold the same tables with the same rows; returns
/// the total row count compared.
pub async fn assert_same_tables(source: &Client, target: &Client) -> anyhow::Result<i64> {
    let tables = user_tables(source).await?;
    ensure!(
        !tables.is_empty(),
        "the source has no tables: nothing was compared"
    );
    let target_tables = user_tables(target).await?;
    ensure!(
        tables == target_tables,
        "table sets differ: source {tables:?}, target {target_tables:?}"
    );
    let mut total = 0;
    for table in &tables {
        let at_source = table_digest(source, table).await?;
        let at_target = table_digest(target, table).await?;
        ensure!(
            at_source == at_target,
            "{table} differs: source {at_source:?}, target {at_target:?}"
        );
        total += at_source.0;
    }
    Ok(total)
}

/// Rows of the source missing from the target and rows of the target in
/// excess of the source, over every user table, matching whole rows by
/// their text form (a row present twice at the target counts once as
/// duplicated).
pub async fn lost_and_duplicated(source: &Client, target: &Client) -> anyhow::Result<(u64, u64)> {
    use std::collections::HashMap;

    async fn row_hashes(client: &Client, table: &str) -> anyhow::Result<HashMap<String, i64>> {
        client
            .batch_execute(
                "SET TimeZone = 'UTC'; SET extra_float_digits = 1; SET DateStyle = 'ISO, YMD'",
            )
            .await?;
        let rows = client
            .query(
                &format!("SELECT md5(t::text), count(*) FROM ONLY {table} AS t GROUP BY 1"),
                &[],
            )
            .await
            .with_context(|| format!("hashing the rows of {table}"))?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    let (mut lost, mut duplicated) = (0u64, 0u64);
    for table in user_tables(source).await? {
        let at_source = row_hashes(source, &table).await?;
        let at_target = row_hashes(target, &table).await.unwrap_or_default();
        for (hash, &count) in &at_source {
            let there = at_target.get(hash).copied().unwrap_or(0);
            lost += u64::try_from(count - there).unwrap_or(0);
        }
        for (hash, &count) in &at_target {
            let here = at_source.get(hash).copied().unwrap_or(0);
            duplicated += u64::try_from(count - here).unwrap_or(0);
        }
    }
    Ok((lost, duplicated))
}

/// The `CopyData` bytes one uninterrupted read of the job's tables takes,
/// with the statements the workers use: what a [`crate::FaultProxy`] in
/// front of the source counts when no byte is read twice.
pub async fn clean_read_bytes(source: &Client, spec_path: &std::path::Path) -> anyhow::Result<u64> {
    use futures::StreamExt;
    use godwit_common::pg::catalog;
    use godwit_common::spec::JobSpec;

    let spec = JobSpec::from_file(spec_path)?;
    let mut total = 0u64;
    for table in catalog::resolve_tables(source, &spec).await? {
        let statement = format!(
            "COPY (SELECT ctid{} FROM {}) TO STDOUT {}",
            table
                .copy_columns
                .iter()
                .map(|c| format!(", {c}"))
                .collect::<String>(),
            table.name.only(),
            table.format.options()
        );
        let stream = source.copy_out(statement.as_str()).await?;
        futures::pin_mut!(stream);
        while let Some(data) = stream.next().await {
            total += data?.len() as u64;
        }
    }
    Ok(total)
}

/// Lines one schema dump has and the other lacks (as multisets), for an
/// assertion message; empty when the dumps hold the same lines.
pub fn schema_difference(source: &str, target: &str) -> String {
    use std::collections::HashMap;
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for line in source.lines() {
        *counts.entry(line).or_default() += 1;
    }
    for line in target.lines() {
        *counts.entry(line).or_default() -= 1;
    }
    let mut only: Vec<String> = counts
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(line, n)| {
            let side = if n > 0 {
                "only on the source"
            } else {
                "only on the target"
            };
            format!("{side}: {line}")
        })
        .collect();
    only.sort();
    only.join("\n")
}
