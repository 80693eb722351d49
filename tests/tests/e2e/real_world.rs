//! A real-world database (`tests/fixtures/real_world.sql`: every object kind
//! of the README's "What is migrated" table) migrated by the role the README
//! asks customers for: `REPLICATION` and `SELECT`, password authentication,
//! no superuser. Proven with both databases' own digests of every table and
//! `pg_dump --schema-only` of both sides.

use godwit_tests::{
    Job, PgCluster, Running, assert_same_tables, describe, run_godwit, table_digest, user_tables,
};
use tokio_postgres::Client;

/// Two clusters, the real-world fixture on the source, an empty target;
/// returns them with the least-privileged source role's URL.
async fn real_world_pair() -> anyhow::Result<(PgCluster, PgCluster, String)> {
    let (source, target) = godwit_tests::pair_with_fixture("real_world.sql", 1).await?;
    let url = source.migrator_url("shop");
    Ok((source, target, url))
}

fn spec(job: &str, source_url: &str, target: &PgCluster, staging: &str) -> String {
    format!(
        "job: {job}\ncustomer: acme\nsource: {source_url}\ntarget: {}\nstaging: {staging}\n\
         tables: [\"*\"]\npartition_size: 256KiB\nchunk_size: 128KiB",
        target.loader_url("shop")
    )
}

/// Every large object as (OID, MD5 of its content), computed by the database.
async fn large_objects(client: &Client) -> anyhow::Result<Vec<(u32, String)>> {
    let rows = client
        .query(
            "SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

async fn one_i64(client: &Client, sql: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_world_database_arrives_whole_under_a_least_privileged_role() -> anyhow::Result<()> {
    let (source, target, migrator) = real_world_pair().await?;
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

    // Large objects the role may not read: refused, naming the fix.
    src.batch_execute("ALTER ROLE migrator BYPASSRLS").await?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for piece in [
        "cannot read 3 large object(s)",
        "GRANT SELECT ON LARGE OBJECT",
    ] {
        assert!(stderr.contains(piece), "stderr lacks {piece:?}: {stderr}");
    }
    assert!(
        user_tables(&dst).await?.is_empty(),
        "a refused job wrote tables"
    );

    src.batch_execute(
        "DO $$ DECLARE o oid; BEGIN \
           FOR o IN SELECT oid FROM pg_largeobject_metadata LOOP \
             EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO migrator', o); \
           END LOOP; END $$",
    )
    .await?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        large_objects(&src).await?,
        large_objects(&dst).await?,
        "large objects differ"
    );
    assert_eq!(large_objects(&dst).await?.len(), 3);

    // A replay from staging alone carries the large objects too.
    target.create_database("replica").await?;
    let output = run_godwit(
        &["replay", job.spec(), "--target", &target.url("replica")],
        &[],
    )?;
    assert!(output.status.success(), "replay: {}", describe(&output));
    let replica = target.client("replica").await?;
    assert_eq!(
        large_objects(&src).await?,
        large_objects(&replica).await?,
        "replayed large objects differ"
    );
    assert_same_tables(&src, &replica).await?;
    let views = "SELECT sum(n)::bigint FROM region_totals";
    assert_eq!(
        one_i64(&replica, views).await?,
        3000,
        "replayed materialized view"
    );

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
    assert!(
        source_schema == target_schema,
        "pg_dump --schema-only differs:\n{}",
        godwit_tests::schema_difference(&source_schema, &target_schema)
    );

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

    // Independent verification compares the large objects too, and finds
    // one missing on the target.
    let output = run_godwit(&["verify", job.spec()], &[])?;
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("large objects: 3 at the source, 3 at the target; content identical"),
        "{stdout}"
    );
    dst.batch_execute("SELECT lo_unlink(424242)").await?;
    let output = run_godwit(&["verify", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("large objects: 3 at the source, 2 at the target; content DIFFERENT"),
        "{stdout}"
    );
    Ok(())
}

/// Application changes to the objects that can change: rows of partitioned
/// and inherited tables (a row moving partitions, a parent's own row), large
/// values, a subtree deleted in one statement through a self-referencing
/// key, rows whose source triggers stamp and audit them.
const APPLICATION_CHANGES: &str = "
    UPDATE tickets SET title = title || ' (streamed)' WHERE id <= 20;
    INSERT INTO tickets (title) VALUES ('new one');
    INSERT INTO measurements VALUES (5001, 'eu', '2025-06-01', 1), (5002, 'apac', '2024-02-02', 2);
    UPDATE measurements SET region = 'us' WHERE id = 3;
    UPDATE ONLY vehicles SET name = 'renamed parent' WHERE id = 1;
    UPDATE cars SET doors = 5 WHERE id = 1;
    DELETE FROM ONLY vehicles WHERE id = 2;
    INSERT INTO cars VALUES (9001, 'new car', 4);
    UPDATE blobs SET body = body || '\\x01'::bytea WHERE id = 1;
    INSERT INTO blobs SELECT 3, decode(string_agg(md5(i::text), ''), 'hex') FROM generate_series(1, 200000) AS i;
    UPDATE blobs SET id = 4 WHERE id = 3;
    UPDATE wide SET c7 = -1, c1200 = -2 WHERE c1 = 3;
    INSERT INTO wide (c1, c600, c1200) VALUES (-5, 6, 7);
    DELETE FROM wide WHERE c1 = 4;
    DELETE FROM staff WHERE id IN (149, 298, 299);
    UPDATE dupes SET b = 'changed' WHERE ctid = (SELECT ctid FROM dupes LIMIT 1);
    UPDATE \"Odd \"\"Schema\"\".x\".\"My Table.v1\" SET \"user\" = 'streamed' WHERE \"Select\" = 7;
    INSERT INTO secrets VALUES (9001, 'app', 'new');
";

#[tokio::test(flavor = "multi_thread")]
async fn a_real_world_database_streams_its_changes_and_cuts_over() -> anyhow::Result<()> {
    let (source, target, _) = real_world_pair().await?;
    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    // Publishing needs the tables' owner; tables without a key stream
    // their updates with a full replica identity.
    src.batch_execute(
        "ALTER TABLE vehicles REPLICA IDENTITY FULL; ALTER TABLE cars REPLICA IDENTITY FULL; \
         ALTER TABLE dupes REPLICA IDENTITY FULL; ALTER TABLE nothing REPLICA IDENTITY FULL; \
         ALTER TABLE wide REPLICA IDENTITY FULL; \
         ALTER TABLE tallies REPLICA IDENTITY USING INDEX tallies_code_key",
    )
    .await?;
    source.hand_tables_to_migrator("shop").await?;
    let job = Job::create(|staging| {
        spec(
            "real-stream",
            &source.migrator_url("shop"),
            &target,
            staging,
        ) + "\nchanges: { freeze_timeout_ms: 5000 }"
    })?;

    // An unlogged table writes no WAL: its changes could never arrive.
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for piece in ["public.scratch", "unlogged", "SET LOGGED"] {
        assert!(stderr.contains(piece), "stderr lacks {piece:?}: {stderr}");
    }
    assert!(
        user_tables(&dst).await?.is_empty(),
        "a refused job wrote to the target"
    );
    src.batch_execute("ALTER TABLE scratch SET LOGGED").await?;

    // Logical decoding carries no large-object writes: refused too.
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for piece in ["3 large object(s)", "logical decoding"] {
        assert!(stderr.contains(piece), "stderr lacks {piece:?}: {stderr}");
    }
    src.batch_execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
        .await?;

    let port = godwit_tests::free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(job.dir.path().join("run.log"))?;
    let mut run = Running(
        std::process::Command::new(godwit_tests::bin("godwit")?)
            .args(["run", job.spec(), "--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()?,
    );
    godwit_tests::wait_for_streaming(&url, "real-stream").await?;
    src.batch_execute(APPLICATION_CHANGES).await?;
    let streamed = || async {
        let arrived = one_i64(
            &dst,
            "SELECT (SELECT count(*) FROM tickets WHERE title = 'new one') + \
                    (SELECT count(*) FROM secrets WHERE id = 9001)",
        )
        .await?;
        Ok((arrived == 2).then_some(()))
    };
    let waited = godwit_tests::wait_until(
        "the application's changes to stream",
        std::time::Duration::from_secs(60),
        streamed,
    )
    .await;
    if let Err(e) = waited {
        let log = std::fs::read_to_string(job.dir.path().join("run.log")).unwrap_or_default();
        anyhow::bail!("{e}\n--- godwit run log\n{log}");
    }
    // Columns the source adds and drops are followed: without a default,
    // with a constant one, with one evaluated once when it was added (the
    // source's role, not the target's, in existing rows), through a
    // partitioned table and an inheritance parent, and a dropped column.
    src.batch_execute(
        "ALTER TABLE tickets ADD COLUMN priority integer; \
         ALTER TABLE staff ADD COLUMN level text DEFAULT 'junior' NOT NULL; \
         ALTER TABLE staff ADD COLUMN badge text DEFAULT 'b-' || current_user; \
         ALTER TABLE measurements ADD COLUMN note text DEFAULT 'n/a'; \
         ALTER TABLE vehicles ADD COLUMN color text; \
         ALTER TABLE secrets DROP COLUMN note; \
         UPDATE tickets SET priority = 3 WHERE id = 5; \
         INSERT INTO staff (id, boss, name, level) VALUES (1000, 1, 'new', 'senior'); \
         INSERT INTO measurements VALUES (6001, 'us', '2024-03-03', 1, 'fresh'); \
         UPDATE cars SET color = 'red' WHERE id = 3; \
         UPDATE secrets SET owner_name = 'app' WHERE id = 2",
    )
    .await?;
    godwit_tests::wait_until(
        "the added and dropped columns to stream",
        std::time::Duration::from_secs(60),
        || async {
            let arrived = one_i64(
                &dst,
                "SELECT (SELECT count(*) FROM staff WHERE id = 1000) \
                      + (SELECT count(*) FROM measurements WHERE id = 6001) \
                      + (SELECT count(*) FROM pg_attribute WHERE attrelid = 'cars'::regclass \
                           AND attname = 'color' AND NOT attisdropped) \
                      + (SELECT count(*) FROM pg_attribute WHERE attrelid = 'secrets'::regclass \
                           AND attname = 'note' AND NOT attisdropped)",
            )
            .await?;
            Ok((arrived == 3).then_some(()))
        },
    )
    .await?;
    let badge: String = src
        .query_one("SELECT 'b-' || current_user", &[])
        .await?
        .get(0);
    let badged = format!("SELECT count(*) FROM staff WHERE badge = '{badge}'");
    for (what, sql) in [
        ("rows that existed when a column was added", badged.as_str()),
        (
            "a partition's rows with the added default",
            "SELECT count(*) FROM measurements WHERE note = 'n/a'",
        ),
        (
            "a child's row with its parent's added column",
            "SELECT count(*) FROM cars WHERE color = 'red'",
        ),
    ] {
        let (at_source, at_target) = (one_i64(&src, sql).await?, one_i64(&dst, sql).await?);
        assert!(at_source > 0, "{what}: none at the source");
        assert_eq!(at_source, at_target, "{what}");
    }
    // What the slot keeps on the customer's server is in plain sight.
    let status = run_godwit(&["status", "--coordinator", &url, "real-stream"], &[])?;
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("slot retains") && shown.contains("of source WAL"),
        "{shown}"
    );
    // While the stream applies, the target's own triggers stay quiet: the
    // audit rows and stamps are the source's, streamed.
    assert_eq!(
        table_digest(&src, "public.ticket_audit").await?,
        table_digest(&dst, "public.ticket_audit").await?,
        "the target's triggers fired on streamed rows"
    );

    let output = run_godwit(&["cutover", "--coordinator", &url, "real-stream"], &[])?;
    assert!(output.status.success(), "cutover: {}", describe(&output));
    let status = run
        .exit_status(
            "godwit run to end after the cutover",
            std::time::Duration::from_secs(60),
        )
        .await?;
    assert!(status.success(), "godwit run exited {status:?}");

    assert_same_tables(&src, &dst).await?;
    for (what, sql) in [
        (
            "a parent with its children",
            "SELECT count(*) FROM vehicles",
        ),
        (
            "a partitioned table",
            "SELECT count(*) FROM measurements_us",
        ),
        (
            "a large value",
            "SELECT octet_length(body)::bigint FROM blobs WHERE id = 1",
        ),
        (
            "a large value left alone while its key changed",
            "SELECT octet_length(body)::bigint FROM blobs WHERE id = 4",
        ),
        (
            "a row of 1,200 columns changed",
            "SELECT c7 + c1200 + (SELECT count(*) FROM wide) FROM wide WHERE c1 = 3",
        ),
    ] {
        assert_eq!(
            one_i64(&src, sql).await?,
            one_i64(&dst, sql).await?,
            "{what}"
        );
    }
    // After the cutover the target's triggers and keys are the source's
    // again: the schema dumps match (the source's refusal trigger aside)
    // and the platform's writes fire the target's triggers.
    let without_refusal = |text: String| {
        text.lines()
            .filter(|line| !line.contains("godwit_migrated") && !line.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (source_schema, target_schema) = (
        without_refusal(source.schema_text("shop")?),
        without_refusal(target.schema_text("shop")?),
    );
    assert!(
        source_schema == target_schema,
        "pg_dump --schema-only differs after the cutover:\n{}",
        godwit_tests::schema_difference(&source_schema, &target_schema)
    );
    let audited = one_i64(&dst, "SELECT count(*) FROM ticket_audit").await?;
    dst.batch_execute("UPDATE tickets SET title = 'after go-live' WHERE id = 1")
        .await?;
    assert_eq!(
        one_i64(&dst, "SELECT count(*) FROM ticket_audit").await?,
        audited + 1,
        "the target's audit trigger does not fire after the cutover"
    );
    assert_eq!(
        one_i64(&src, "SELECT count(*) FROM pg_replication_slots").await?,
        0,
        "replication slot left behind"
    );
    Ok(())
}

/// A `TRUNCATE` committed after the job's snapshot but before godwit locks
/// the table would make it look empty under the snapshot: found, named.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_truncated_between_snapshot_and_lock_is_refused_by_name() -> anyhow::Result<()> {
    use godwit_common::pg::{self, Side, snapshot};
    let (source, _target) = godwit_tests::source_and_target(1).await?;
    let exporter = source.client("shop").await?;
    exporter
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    let exported: String = exporter
        .query_one("SELECT pg_export_snapshot()", &[])
        .await?
        .get(0);
    source
        .client("shop")
        .await?
        .batch_execute("TRUNCATE surveys")
        .await?;
    let guard = pg::connect(&source.url("shop"), Side::Source).await?;
    pg::join_snapshot(&guard, &exported).await?;
    let tables = ["public.customers", "public.surveys"]
        .iter()
        .filter_map(|t| godwit_common::spec::TableName::parse(t))
        .collect::<Vec<_>>();
    let refused = snapshot::lock_tables(&guard, &tables)
        .await
        .expect_err("a truncated table must be refused");
    let message = refused.to_string();
    assert!(
        message.contains("public.surveys") && !message.contains("public.customers"),
        "{message}"
    );
    assert!(message.contains("run the job again"), "{message}");
    Ok(())
}

/// While the copy runs, the job's tables are locked against DDL the way
/// pg_dump locks them: a `TRUNCATE` waits (here: times out) instead of
/// emptying a table not yet copied; reads and writes go on.
#[tokio::test(flavor = "multi_thread")]
async fn ddl_on_the_source_waits_for_the_copy() -> anyhow::Result<()> {
    let (source, target) = godwit_tests::source_and_target(2).await?;
    // An embedded run may take the password in the URL itself.
    let job = Job::create(|staging| {
        godwit_tests::spec_body("ddl-waits", &source, &target, staging).replace(
            &source.migrator_url("shop"),
            &source.role_url_with_password(godwit_tests::pg::MIGRATOR, "shop"),
        ) + "\nthrottle: { bytes_per_sec: 512KiB }"
    })?;
    let log = std::fs::File::create(job.dir.path().join("run.log"))?;
    let mut run = Running(
        std::process::Command::new(godwit_tests::bin("godwit")?)
            .args(["run", job.spec()])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let dst = target.client("shop").await?;
    godwit_tests::wait_until(
        "the copy to load its first chunk",
        std::time::Duration::from_secs(60),
        || async {
            let started = dst
                .query_one(
                    "SELECT to_regclass('godwit.applied_chunks') IS NOT NULL \
                     AND EXISTS (SELECT 1 FROM godwit.applied_chunks)",
                    &[],
                )
                .await
                .map(|row| row.get::<_, bool>(0))
                .unwrap_or(false);
            Ok(started.then_some(()))
        },
    )
    .await?;
    // The source role's password is on no command line: not psql's that
    // holds the snapshot, not pg_dump's, not godwit's.
    let password = format!("pw-migrator-{}", source.port);
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        assert!(
            !cmdline
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "a command line holds the source password: {}",
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        );
    }
    let psql_running = std::fs::read_dir("/proc")?.flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|c| c.windows(20).any(|w| w == b"replication=database"))
    });
    assert!(
        psql_running,
        "no snapshot-holding psql was running: the scan proved nothing"
    );
    let src = source.client("shop").await?;
    let truncated = src
        .batch_execute("SET lock_timeout = '500ms'; TRUNCATE events")
        .await;
    let error = truncated.expect_err("TRUNCATE went through during the copy");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "{error:?}"
    );
    src.batch_execute("RESET lock_timeout; INSERT INTO surveys (id) VALUES (424242)")
        .await?;
    let status = run
        .exit_status("godwit run to end", std::time::Duration::from_secs(120))
        .await?;
    let log = std::fs::read_to_string(job.dir.path().join("run.log")).unwrap_or_default();
    assert!(status.success(), "godwit run exited {status:?}\n{log}");
    // The insert committed after the snapshot is not the copy's: the copy
    // matches the snapshot, and the check proved it against the snapshot.
    let events = "SELECT count(*) FROM events";
    assert_eq!(one_i64(&src, events).await?, one_i64(&dst, events).await?);
    Ok(())
}

/// An extension the target's server does not offer is refused before
/// anything is written, by name. The extension is made for the test: its
/// files are removed once the source has installed it, so the target's
/// server (sharing this machine) no longer offers it.
#[tokio::test(flavor = "multi_thread")]
async fn an_extension_missing_on_the_target_is_refused_by_name() -> anyhow::Result<()> {
    let (source, target) = godwit_tests::source_and_target(1).await?;
    let name = format!("godwit_probe_{}", std::process::id());
    let admin = source.client("shop").await?;
    let sharedir: String = admin
        .query_one("SELECT setting FROM pg_config WHERE name = 'SHAREDIR'", &[])
        .await?
        .get(0);
    let share = std::path::Path::new(&sharedir).join("extension");
    let control = share.join(format!("{name}.control"));
    let script = share.join(format!("{name}--1.0.sql"));
    std::fs::write(
        &control,
        "comment = 'made by a godwit test'\ndefault_version = '1.0'\nrelocatable = true\n",
    )?;
    std::fs::write(
        &script,
        format!("CREATE FUNCTION {name}_answer() RETURNS integer LANGUAGE sql AS 'SELECT 42';\n"),
    )?;
    let created = admin
        .batch_execute(&format!("CREATE EXTENSION {name}"))
        .await;
    let _ = std::fs::remove_file(&control);
    let _ = std::fs::remove_file(&script);
    created?;

    let job = Job::create(|staging| godwit_tests::spec_body("no-ext", &source, &target, staging))?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("extension(s) {name}")) && stderr.contains("install"),
        "{stderr}"
    );
    let dst = target.client("shop").await?;
    assert!(
        user_tables(&dst).await?.is_empty(),
        "a refused job wrote tables"
    );
    Ok(())
}
