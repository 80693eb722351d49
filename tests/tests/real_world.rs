//! A real-world database (`tests/fixtures/real_world.sql`: every object kind
//! of the README's "What is migrated" table) migrated by the role the README
//! asks customers for: `REPLICATION` and `SELECT`, password authentication,
//! no superuser. Proven with both databases' own digests of every table and
//! `pg_dump --schema-only` of both sides.

use godwit_tests::{
    Job, PgCluster, assert_same_tables, describe, run_godwit, table_digest, user_tables,
};
use tokio_postgres::Client;

/// Two clusters, the fixture on the source, an empty target; returns them
/// with the least-privileged source role's URL.
async fn real_world_pair(attributes: &str) -> anyhow::Result<(PgCluster, PgCluster, String)> {
    let (source, target) = std::thread::scope(|s| {
        let source = s.spawn(PgCluster::start);
        let target = s.spawn(PgCluster::start);
        (source.join(), target.join())
    });
    let source = source.map_err(|_| anyhow::anyhow!("source cluster start panicked"))??;
    let target = target.map_err(|_| anyhow::anyhow!("target cluster start panicked"))??;
    source.create_database("shop").await?;
    target.create_database("shop").await?;
    source.load_sql("shop", "real_world.sql", 1)?;
    let url = source
        .least_privileged_role("shop", "migrator", attributes)
        .await?;
    Ok((source, target, url))
}

fn spec(job: &str, source_url: &str, target: &PgCluster, staging: &str) -> String {
    format!(
        "job: {job}\ncustomer: acme\nsource: {source_url}\ntarget: {}\nstaging: {staging}\n\
         tables: [\"*\"]\npartition_size: 256KiB\nchunk_size: 128KiB",
        target.url("shop")
    )
}

async fn one_i64(client: &Client, sql: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_world_database_arrives_whole_under_a_least_privileged_role() -> anyhow::Result<()> {
    let (source, target, migrator) = real_world_pair("").await?;
    let job = Job::create(|staging| spec("real-world", &migrator, &target, staging))?;
    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);

    // Row-level security would hide two thirds of `secrets` from the role:
    // refused before anything is written, naming the table and the fix.
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for piece in ["public.secrets", "row-level security", "BYPASSRLS"] {
        assert!(stderr.contains(piece), "stderr lacks {piece:?}: {stderr}");
    }
    assert!(
        user_tables(&dst).await?.is_empty(),
        "a refused job wrote tables to the target"
    );
    assert_eq!(
        one_i64(
            &dst,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'godwit'"
        )
        .await?,
        0,
        "a refused job created the ledger"
    );

    src.batch_execute("ALTER ROLE migrator BYPASSRLS").await?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert!(output.status.success(), "{}", describe(&output));

    // Every table (partitions and inheritance children each on its own),
    // by both databases' digests.
    let rows = assert_same_tables(&src, &dst).await?;
    assert!(rows > 8_000, "only {rows} rows compared");
    assert_eq!(
        table_digest(&dst, "public.secrets").await?.0,
        3000,
        "rows hidden by row-level security went missing"
    );
    for (what, sql, expected) in [
        (
            "a parent with its children",
            "SELECT count(*) FROM vehicles",
            600,
        ),
        (
            "the parent's own rows",
            "SELECT count(*) FROM ONLY vehicles",
            350,
        ),
        ("a zero-column table", "SELECT count(*) FROM nothing", 2),
        (
            "a partitioned table",
            "SELECT count(*) FROM measurements",
            3000,
        ),
        (
            "the default partition",
            "SELECT count(*) FROM measurements_rest",
            1000,
        ),
        (
            "a materialized view",
            "SELECT sum(n)::bigint FROM region_totals",
            3000,
        ),
        (
            "a view over a materialized view",
            "SELECT count(*) FROM region_names",
            3,
        ),
        (
            "a value of tens of MB",
            "SELECT octet_length(body)::bigint FROM blobs WHERE id = 1",
            24_000_000,
        ),
    ] {
        assert_eq!(one_i64(&src, sql).await?, expected, "source: {what}");
        assert_eq!(one_i64(&dst, sql).await?, expected, "target: {what}");
    }
    let sequences = "SELECT string_agg(sequencename || '=' || coalesce(last_value, 0), ';' ORDER BY sequencename) \
                     FROM pg_sequences WHERE schemaname NOT IN ('godwit')";
    let at_source: Option<String> = src.query_one(sequences, &[]).await?.get(0);
    let at_target: Option<String> = dst.query_one(sequences, &[]).await?.get(0);
    assert_eq!(at_source, at_target, "sequences differ");

    // The schema, as pg_dump prints it, is the source's: row security and
    // policies, triggers, views, partitions, collations, identity columns.
    let (source_schema, target_schema) = (source.schema_text("shop")?, target.schema_text("shop")?);
    assert!(
        source_schema.contains("ENABLE ROW LEVEL SECURITY"),
        "{source_schema}"
    );
    if source_schema != target_schema {
        let first = source_schema
            .lines()
            .zip(target_schema.lines())
            .find(|(a, b)| a != b);
        panic!("pg_dump --schema-only differs; first difference: {first:?}");
    }

    // After go-live the platform draws values on the target; a re-run of
    // the finished job checks again and never moves a sequence back.
    dst.batch_execute("SELECT setval('ticket_numbers', 999995); SELECT setval('countdown', -900)")
        .await?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        one_i64(&dst, "SELECT last_value FROM ticket_numbers").await?,
        999_995,
        "a re-run moved an ascending sequence back"
    );
    assert_eq!(
        one_i64(&dst, "SELECT last_value FROM countdown").await?,
        -900,
        "a re-run moved a descending sequence back"
    );
    assert_eq!(
        one_i64(&src, "SELECT count(*) FROM pg_replication_slots").await?,
        0,
        "replication slot left behind"
    );
    Ok(())
}
