//! Bad input gets a precise error, exit code 2, and leaves the target
//! untouched: a malformed spec, an unreachable database, a missing table, an
//! unreadable or wrong key, a target that already holds the tables.

use godwit_tests::{
    Job, PgCluster, describe, free_port, run_godwit, source_and_target, spec_body, user_tables,
};

/// Runs the spec; asserts exit 2 and that stderr names every `expected` piece.
fn rejected(job: &Job, expected: &[&str]) -> anyhow::Result<()> {
    let output = run_godwit(&["run", job.spec()], &[])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    for piece in expected {
        assert!(stderr.contains(piece), "stderr lacks {piece:?}: {stderr}");
    }
    Ok(())
}

async fn assert_target_untouched(target: &PgCluster) -> anyhow::Result<()> {
    let client = target.client("shop").await?;
    assert!(
        user_tables(&client).await?.is_empty(),
        "tables were written to the target"
    );
    let ledger: bool = client
        .query_one("SELECT to_regnamespace('godwit') IS NOT NULL", &[])
        .await?
        .get(0);
    assert!(
        !ledger,
        "the godwit ledger schema was created on the target"
    );
    Ok(())
}

fn job_with(body: &str) -> anyhow::Result<Job> {
    let job = Job::new("")?;
    std::fs::write(
        &job.spec_path,
        format!(
            "{body}\nencryption: {{ key_file: {} }}\n",
            job.key_path.display()
        ),
    )?;
    Ok(job)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_bad_input_is_rejected_and_writes_nothing() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let staging_dir = tempfile::tempdir()?;
    let staging = format!("file://{}", staging_dir.path().display());
    let good = spec_body("bad-input", &source, &target, &staging);

    // A field the spec does not have: named, with the file it is in.
    let job = job_with(&format!("{good}\nworkerz: 3"))?;
    rejected(&job, &["unknown field `workerz`", job.spec()])?;

    // A malformed size.
    let job = job_with(&good.replace("chunk_size: 128KiB", "chunk_size: 12 parsecs"))?;
    rejected(&job, &["\"12 parsecs\" is not a size", "64MiB"])?;

    // An unreachable source database: named, without credentials.
    let closed = free_port()?;
    let unreachable = good.replace(
        &source.migrator_url("shop"),
        &format!("postgres://postgres:s3cret@127.0.0.1:{closed}/shop"),
    );
    let job = job_with(&unreachable)?;
    rejected(
        &job,
        &[
            "source",
            &format!("127.0.0.1:{closed}/shop"),
            "check `source`",
        ],
    )?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("s3cret"),
        "password in an error message"
    );

    // An unreachable target database.
    let job = job_with(&good.replace(
        &target.loader_url("shop"),
        &format!("postgres://postgres@127.0.0.1:{closed}/shop"),
    ))?;
    rejected(&job, &["cannot connect to the target", "check `target`"])?;

    // Tables that do not exist: each named.
    let job = job_with(&good.replace(
        "tables: [\"*\"]",
        "tables: [\"customers\", \"nope\", \"sales.nada\"]",
    ))?;
    rejected(
        &job,
        &["public.nope", "sales.nada", "do not exist in the source"],
    )?;

    // An unreadable key file: named, with the command that makes one.
    let job = job_with(&good)?;
    std::fs::remove_file(&job.key_path)?;
    rejected(&job, &["cannot read key file", "godwit keys generate"])?;

    // A key file that is not a key.
    let job = job_with(&good)?;
    std::fs::write(&job.key_path, "not hex\n")?;
    rejected(&job, &["does not hold a hex-encoded key"])?;

    assert_target_untouched(&target).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_for_staged_data_is_refused() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let staging_dir = tempfile::tempdir()?;
    let staging = format!("file://{}", staging_dir.path().display());
    let first = job_with(&spec_body("keyed", &source, &target, &staging))?;
    let output = run_godwit(&["run", first.spec()], &[])?;
    assert!(output.status.success(), "{}", describe(&output));

    // The same job and staging area, another target, another key.
    target.create_database("shop2").await?;
    let body = spec_body("keyed", &source, &target, &staging).replace(
        &format!("target: {}", target.loader_url("shop")),
        &format!("target: {}", target.url("shop2")),
    );
    let second = job_with(&body)?;
    rejected(&second, &["wrapped by key-encryption key", "key_file"])?;
    let client = target.client("shop2").await?;
    assert!(
        user_tables(&client).await?.is_empty(),
        "tables were written with a wrong key"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_already_has_the_tables_is_left_alone() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let client = target.client("shop").await?;
    client
        .batch_execute("CREATE TABLE customers (id int); INSERT INTO customers VALUES (42)")
        .await?;
    let staging_dir = tempfile::tempdir()?;
    let job = job_with(&spec_body(
        "occupied",
        &source,
        &target,
        &format!("file://{}", staging_dir.path().display()),
    ))?;
    rejected(
        &job,
        &[
            "already has table(s) public.customers",
            "never writes into tables it did not create",
        ],
    )?;
    let rows: Vec<i32> = client
        .query("SELECT id FROM customers", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, vec![42]);
    assert_eq!(
        user_tables(&client).await?,
        vec!["public.customers".to_owned()]
    );
    Ok(())
}
