//! TLS to PostgreSQL on both hops, with libpq's `sslmode` meanings: the
//! servers accept TLS only, the job verifies their certificates.

use godwit_tests::{Job, PgCluster, assert_same_tables, describe, run_godwit};

fn tls_url(cluster: &PgCluster, mode: &str, root_cert: &std::path::Path) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/shop?sslmode={mode}&sslrootcert={}",
        cluster.port,
        root_cert.display()
    )
}

fn write_job(job: &Job, name: &str, source: &str, target: &str) -> anyhow::Result<()> {
    let staging = format!("file://{}", job.staging_dir().display());
    job.write(&format!(
        "job: {name}\ncustomer: acme\nsource: {source}\ntarget: {target}\nstaging: {staging}"
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_over_verified_tls_copies_exactly_and_a_wrong_ca_is_refused() -> anyhow::Result<()> {
    let source = PgCluster::start_tls()?;
    let target = PgCluster::start_tls()?;
    source.create_database("shop").await?;
    target.create_database("shop").await?;
    source.load_fixture("shop", 1)?;

    // Plain connections are refused by the servers: the job says which side.
    let job = Job::new("")?;
    let plain = format!(
        "postgres://postgres@127.0.0.1:{}/shop?sslmode=disable",
        source.port
    );
    write_job(
        &job,
        "plain",
        &plain,
        &tls_url(&target, "verify-full", &target.ca_cert()),
    )?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect to the source"));

    // A certificate signed by another CA fails verification.
    let job = Job::new("")?;
    write_job(
        &job,
        "wrong-ca",
        &tls_url(&source, "verify-full", &target.ca_cert()),
        &tls_url(&target, "verify-full", &target.ca_cert()),
    )?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect to the source"));
    let dst = target.client("shop").await?;
    assert!(godwit_tests::user_tables(&dst).await?.is_empty());

    // Verified TLS on both hops.
    let job = Job::new("")?;
    write_job(
        &job,
        "verified",
        &tls_url(&source, "verify-full", &source.ca_cert()),
        &tls_url(&target, "verify-full", &target.ca_cert()),
    )?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert!(output.status.success(), "{}", describe(&output));
    let src = source.client("shop").await?;
    assert_same_tables(&src, &dst).await?;

    // `require`: encrypted without verifying the server, as with libpq; the
    // servers accept nothing but TLS, so success means every session was encrypted.
    let job = Job::new("")?;
    target.create_database("shop2").await?;
    let target2 = tls_url(&target, "require", &target.ca_cert()).replace("/shop?", "/shop2?");
    write_job(
        &job,
        "required",
        &tls_url(&source, "require", &source.ca_cert()),
        &target2,
    )?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert!(output.status.success(), "{}", describe(&output));
    Ok(())
}
