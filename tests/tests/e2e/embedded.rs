//! `godwit run` end to end on the embedded default: real PostgreSQL source
//! and target, local-directory staging, the real binary.

use godwit_tests::{Job, assert_same_tables, describe, run_godwit, source_and_target, spec_body};

/// md5('1'): the `events.body` of row 1 repeats it, so a staged object holding
/// plaintext rows would contain it.
const KNOWN_VALUE: &[u8] = b"c4ca4238a0b923820dcc509a6f75849b";

#[tokio::test(flavor = "multi_thread")]
async fn embedded_run_moves_every_awkward_type_exactly() -> anyhow::Result<()> {
    let (source, target) = source_and_target(4).await?;
    let job = Job::create(|staging| spec_body("embedded-awkward", &source, &target, staging))?;

    let output = run_godwit(&["run", job.spec(), "--workers", "2"], &[])?;
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("migrated 5 tables"), "{stdout}");

    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    let rows = assert_same_tables(&src, &dst).await?;
    assert!(rows > 10_000, "only {rows} rows compared");

    // Several partitions for the large table, several chunks per partition.
    let ledger = dst
        .query_one(
            "SELECT count(DISTINCT partition), count(*) FROM godwit.applied_chunks WHERE table_name = 'public.events'",
            &[],
        )
        .await?;
    let (partitions, chunks): (i64, i64) = (ledger.get(0), ledger.get(1));
    assert!(
        partitions >= 3 && chunks > partitions,
        "events: {partitions} partitions, {chunks} chunks"
    );

    // Schema fidelity: indexes, constraints, generated columns, sequences.
    for (what, sql) in [
        (
            "indexes",
            "SELECT string_agg(indexdef, ';' ORDER BY indexdef) FROM pg_indexes WHERE schemaname IN ('public', 'sales')",
        ),
        (
            "constraints",
            "SELECT string_agg(conname || ':' || pg_get_constraintdef(oid), ';' ORDER BY conname) FROM pg_constraint WHERE connamespace IN (SELECT oid FROM pg_namespace WHERE nspname IN ('public', 'sales'))",
        ),
        (
            "generated columns",
            "SELECT string_agg(attrelid::regclass::text || '.' || attname || '=' || attgenerated::text, ';' ORDER BY 1) FROM pg_attribute WHERE attgenerated <> ''",
        ),
        (
            "sequences",
            "SELECT string_agg(sequencename || '=' || coalesce(last_value, 0), ';' ORDER BY 1) FROM pg_sequences WHERE schemaname IN ('public', 'sales')",
        ),
        (
            "enum labels",
            "SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum",
        ),
    ] {
        let at_source: Option<String> = src.query_one(sql, &[]).await?.get(0);
        let at_target: Option<String> = dst.query_one(sql, &[]).await?.get(0);
        assert!(at_source.is_some(), "source has no {what}");
        assert_eq!(at_source, at_target, "{what} differ");
    }

    // Staged chunks hold no plaintext row data.
    let staged = Job::files_under(&job.staging_dir());
    let chunk_files: Vec<_> = staged
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "gwc"))
        .collect();
    assert!(
        chunk_files.len() as i64 >= chunks,
        "{} chunk objects for {chunks} chunks",
        chunk_files.len()
    );
    let holders: i64 = src
        .query_one(
            "SELECT count(*) FROM events WHERE strpos(body, $1) > 0",
            &[&std::str::from_utf8(KNOWN_VALUE)?],
        )
        .await?
        .get(0);
    assert!(
        holders > 0,
        "the known value is not in the source, so its absence proves nothing"
    );
    for file in &staged {
        let bytes = std::fs::read(file)?;
        assert!(
            !bytes.windows(KNOWN_VALUE.len()).any(|w| w == KNOWN_VALUE),
            "{} holds plaintext",
            file.display()
        );
        // Every customer row has an email; headers name tables, never values.
        assert!(
            !bytes.windows(12).any(|w| w == b"@example.com"),
            "{} holds plaintext",
            file.display()
        );
    }

    // The replication slot is gone once the job is done.
    let slots: i64 = src
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await?
        .get(0);
    assert_eq!(slots, 0, "replication slot left behind");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rerunning_a_finished_job_adds_no_rows() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let job = Job::create(|staging| spec_body("rerun", &source, &target, staging))?;
    for attempt in 1..=2 {
        let output = run_godwit(&["run", job.spec()], &[])?;
        assert!(
            output.status.success(),
            "run {attempt}: {}",
            describe(&output)
        );
        let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
        assert_same_tables(&src, &dst).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_table_list_moves_only_those_tables_with_their_types() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let job = Job::new("")?;
    let staging = format!("file://{}", job.staging_dir().display());
    let body = spec_body("subset", &source, &target, &staging).replace(
        "tables: [\"*\"]",
        "tables: [\"customers\", \"public.surveys\"]",
    );
    std::fs::write(
        &job.spec_path,
        format!(
            "{body}\nencryption: {{ key_file: {} }}\n",
            job.key_path.display()
        ),
    )?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert!(output.status.success(), "{}", describe(&output));
    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    let moved = godwit_tests::user_tables(&dst).await?;
    assert_eq!(
        moved,
        vec!["public.customers".to_owned(), "public.surveys".to_owned()]
    );
    for table in &moved {
        assert_eq!(
            godwit_tests::table_digest(&src, table).await?,
            godwit_tests::table_digest(&dst, table).await?,
            "{table} differs"
        );
    }
    Ok(())
}
