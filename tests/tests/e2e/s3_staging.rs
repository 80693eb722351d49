//! Staging in S3-compatible storage (moto's server on loopback), including
//! chunks large enough to go up as multipart uploads.

use godwit_tests::{
    Job, S3Server, assert_same_tables, describe, run_godwit, source_and_target, spec_body,
};

#[tokio::test(flavor = "multi_thread")]
async fn s3_staging_holds_sealed_chunks_and_the_copy_is_exact() -> anyhow::Result<()> {
    let (source, target) = source_and_target(2).await?;
    let s3 = S3Server::start()?;
    s3.create_bucket("godwit-stage")?;

    // ~9.6 MiB of incompressible bytes in one row: its sealed chunk exceeds
    // the multipart threshold.
    let src = source.client("shop").await?;
    src.batch_execute(
        "CREATE TABLE blobs (id int PRIMARY KEY, data bytea); \
         INSERT INTO blobs SELECT 1, decode(string_agg(md5(random()::text), ''), 'hex') FROM generate_series(1, 600000)",
    )
    .await?;

    let job = Job::new("")?;
    let body = spec_body("s3-job", &source, &target, "s3://godwit-stage/migrations")
        .replace("chunk_size: 128KiB", "chunk_size: 16MiB");
    std::fs::write(
        &job.spec_path,
        format!(
            "{body}\nencryption: {{ key_file: {} }}\n",
            job.key_path.display()
        ),
    )?;

    let output = run_godwit(&["run", job.spec()], &s3.env())?;
    assert!(output.status.success(), "{}", describe(&output));
    let events_line = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.contains("public.events"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        !events_line.contains(" 1/1 "),
        "events should span several partitions: {events_line}"
    );
    let dst = target.client("shop").await?;
    assert_same_tables(&src, &dst).await?;

    let keys = s3.list("godwit-stage", "migrations/s3-job/")?;
    assert!(
        keys.iter().any(|k| k.ends_with("data-key.pb")),
        "no wrapped data key staged: {keys:?}"
    );
    let chunks: Vec<&String> = keys.iter().filter(|k| k.ends_with(".gwc")).collect();
    assert!(
        chunks.len() >= 5,
        "expected a chunk per table at least: {keys:?}"
    );
    let mut largest = 0;
    for key in &chunks {
        let bytes = s3.get("godwit-stage", key).await?;
        largest = largest.max(bytes.len());
        assert!(bytes.starts_with(b"GDWC"), "{key} is not a chunk frame");
        assert!(
            !bytes.windows(12).any(|w| w == b"@example.com"),
            "{key} holds plaintext"
        );
    }
    assert!(
        largest > 8 << 20,
        "no chunk exceeded the multipart threshold (largest {largest} bytes)"
    );
    Ok(())
}
