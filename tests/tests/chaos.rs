//! Network faults injected by a TCP proxy between godwit and the target
//! database or the S3 server: every connection through it reset mid-copy.
//! The job must retry, resume from the ledger and end with target == source.

use std::process::{Command, Stdio};
use std::time::Duration;

use godwit_tests::{
    FaultProxy, Job, S3Server, assert_same_tables, bin, source_and_target, spec_body, wait_until,
};

/// Runs `godwit run` in the background, resets the proxy's connections
/// `resets` times once the events table has loaded some chunks, and returns
/// the run's exit code and stderr.
async fn run_with_resets(
    job: &Job,
    env: &[(String, String)],
    ledger: &tokio_postgres::Client,
    proxy: &FaultProxy,
    resets: usize,
) -> anyhow::Result<(Option<i32>, String)> {
    let stderr_path = job.dir.path().join("run.stderr");
    let mut run = Command::new(bin("godwit")?)
        .args(["run", job.spec()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("GODWIT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()?;
    let mut reset_connections = 0;
    for round in 1..=resets {
        let at_least = 3 * round as i64;
        wait_until(
            "chunks of the events table to load",
            Duration::from_secs(120),
            || async {
                let chunks: i64 = ledger
                .query_one(
                    "SELECT count(*) FROM godwit.applied_chunks WHERE table_name = 'public.events'",
                    &[],
                )
                .await
                .map(|row| row.get(0))
                .unwrap_or(0);
                Ok((chunks >= at_least).then_some(()))
            },
        )
        .await?;
        reset_connections += proxy.reset_all();
    }
    assert!(
        reset_connections > 0,
        "the proxy had no connection to reset: the fault was not injected"
    );
    let status = wait_until("godwit run to end", Duration::from_secs(300), || {
        let done = run.try_wait().map(|status| status.map(|s| s.code()));
        async move { Ok(done?) }
    })
    .await?;
    Ok((status, std::fs::read_to_string(&stderr_path)?))
}

#[tokio::test(flavor = "multi_thread")]
async fn target_connections_reset_mid_copy_are_retried_without_loss_or_duplicates()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(12).await?;
    let proxy = FaultProxy::start(target.port).await?;
    let through_proxy = format!("postgres://postgres@127.0.0.1:{}/shop", proxy.port);
    let job = Job::create(|staging| {
        spec_body("target-resets", &source, &target, staging)
            .replace(&target.url("shop"), &through_proxy)
            .replace("partition_size: 512KiB", "partition_size: 4MiB")
            .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
    })?;
    let ledger = target.client("shop").await?;
    let (code, stderr) = run_with_resets(&job, &[], &ledger, &proxy, 2).await?;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("partition copy failed"),
        "no load failed: the resets hit nothing\n{stderr}"
    );
    let src = source.client("shop").await?;
    assert_same_tables(&src, &ledger).await?;
    let gaps: i64 = ledger
        .query_one(
            "SELECT count(*) FROM (SELECT partition, count(*) AS n, max(seq) AS top FROM godwit.applied_chunks \
             GROUP BY partition) AS p WHERE n <> top + 1",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        gaps, 0,
        "a partition's chunks are not numbered without gaps"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_connections_reset_mid_copy_are_retried() -> anyhow::Result<()> {
    let (source, target) = source_and_target(12).await?;
    let s3 = S3Server::start()?;
    s3.create_bucket("godwit-chaos")?;
    let s3_port: u16 = s3.endpoint.rsplit(':').next().unwrap_or_default().parse()?;
    let proxy = FaultProxy::start(s3_port).await?;
    let env: Vec<(String, String)> = s3
        .env()
        .into_iter()
        .map(|(k, v)| {
            let v = v.replace(&format!(":{s3_port}"), &format!(":{}", proxy.port));
            (k, v)
        })
        .collect();
    let job = Job::create(|_| {
        spec_body("s3-resets", &source, &target, "s3://godwit-chaos/staged")
            .replace("partition_size: 512KiB", "partition_size: 4MiB")
            .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
    })?;
    let ledger = target.client("shop").await?;
    let (code, stderr) = run_with_resets(&job, &env, &ledger, &proxy, 2).await?;
    assert_eq!(code, Some(0), "{stderr}");
    let src = source.client("shop").await?;
    assert_same_tables(&src, &ledger).await?;
    Ok(())
}
