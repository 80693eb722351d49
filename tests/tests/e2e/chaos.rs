//! Network and storage faults injected by proxies between `godwit run` and
//! the target database or the S3 server: connections reset, S3 answering
//! 503 or not answering at all, the target gone for longer than the retry
//! budget. The source is read through a counting proxy, so each scenario
//! reports (and bounds) how much of it was read twice.

use std::process::{Command, Stdio};
use std::time::Duration;

use godwit_tests::{
    FaultAt, FaultProxy, Figures, HttpFault, HttpFaultProxy, Job, MeasuredRun, PgCluster, S3Server,
    assert_same_tables, bin, source_and_target, spec_body, wait_until,
};

const CHUNK_SIZE: u64 = 64 * 1024;

/// Source and target clusters, and a counting proxy in front of the source.
struct Pair {
    source: PgCluster,
    target: PgCluster,
    tap: FaultProxy,
    ledger: tokio_postgres::Client,
}

impl Pair {
    async fn start() -> anyhow::Result<Self> {
        let (source, target) = source_and_target(12).await?;
        let tap = FaultProxy::postgres(source.port).await?;
        let ledger = target.client("shop").await?;
        Ok(Self {
            source,
            target,
            tap,
            ledger,
        })
    }

    /// A spec reading the source through the tap, writing the target at
    /// `target_url`, with the events table in one partition of 64 KiB chunks.
    fn spec(&self, job: &str, target_url: &str, staging: &str) -> String {
        spec_body(job, &self.source, &self.target, staging)
            .replace(
                &self.source.migrator_url("shop"),
                &self.source.migrator_url_at(self.tap.port, "shop"),
            )
            .replace(&self.target.loader_url("shop"), target_url)
            .replace("partition_size: 512KiB", "partition_size: 4MiB")
            .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
    }

    async fn figures(
        &self,
        scenario: &str,
        faults: &str,
        job: &Job,
        job_id: &str,
        fault_times: &[FaultAt],
    ) -> anyhow::Result<Figures> {
        let run = MeasuredRun {
            source: &self.source,
            target: &self.target,
            tap: &self.tap,
            spec: &job.spec_path,
            job_id,
            chunk_size: CHUNK_SIZE,
        };
        Figures::measure(&run, scenario, faults, fault_times).await
    }

    /// A partition's chunks are numbered without gaps: none was skipped.
    async fn assert_contiguous_ledger(&self) -> anyhow::Result<()> {
        let gaps: i64 = self
            .ledger
            .query_one(
                "SELECT count(*) FROM (SELECT partition, count(*) AS n, max(seq) AS top \
                 FROM godwit.applied_chunks GROUP BY partition) AS p WHERE n <> top + 1",
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

    async fn events_chunks(&self) -> i64 {
        self.ledger
            .query_one(
                "SELECT count(*) FROM godwit.applied_chunks WHERE table_name = 'public.events'",
                &[],
            )
            .await
            .map(|row| row.get(0))
            .unwrap_or(0)
    }
}

/// Runs `godwit run` in the background; for each of `rounds` rounds, once
/// the events table has loaded three more chunks, calls `inject`. Returns
/// the run's exit code, its stderr and when each fault was injected.
async fn run_with_faults(
    pair: &Pair,
    job: &Job,
    env: &[(String, String)],
    rounds: usize,
    mut inject: impl FnMut(),
) -> anyhow::Result<(Option<i32>, String, Vec<FaultAt>)> {
    let stderr_path = job.dir.path().join("run.stderr");
    let mut run = Command::new(bin("godwit")?)
        .args(["run", job.spec()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("GODWIT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()?;
    let mut fault_times = Vec::new();
    for round in 1..=rounds {
        let at_least = 3 * round as i64;
        wait_until(
            "chunks of the events table to load",
            Duration::from_secs(120),
            || async { Ok((pair.events_chunks().await >= at_least).then_some(())) },
        )
        .await?;
        inject();
        fault_times.push(FaultAt::now(&pair.ledger).await?);
    }
    let status = wait_until("godwit run to end", Duration::from_secs(300), || {
        let done = run.try_wait().map(|status| status.map(|s| s.code()));
        async move { Ok(done?) }
    })
    .await?;
    Ok((status, std::fs::read_to_string(&stderr_path)?, fault_times))
}

/// An S3 server behind an HTTP fault proxy, and the environment that points
/// godwit at the proxy.
async fn s3_behind_proxy(
    bucket: &str,
) -> anyhow::Result<(S3Server, HttpFaultProxy, Vec<(String, String)>)> {
    let s3 = S3Server::start()?;
    s3.create_bucket(bucket)?;
    let proxy = HttpFaultProxy::start(s3.port()?).await?;
    let env = s3.env_via(proxy.port)?;
    Ok((s3, proxy, env))
}

#[tokio::test(flavor = "multi_thread")]
async fn target_connections_reset_mid_copy_are_retried_without_loss_or_duplicates()
-> anyhow::Result<()> {
    let pair = Pair::start().await?;
    let proxy = FaultProxy::start(pair.target.port).await?;
    let through_proxy = pair
        .target
        .role_url_at(godwit_tests::pg::LOADER, proxy.port, "shop");
    let job = Job::create(|staging| pair.spec("target-resets", &through_proxy, staging))?;
    let mut reset = 0;
    let (code, stderr, faults) = run_with_faults(&pair, &job, &[], 2, || {
        reset += proxy.reset_all();
    })
    .await?;
    assert!(
        reset > 0,
        "the proxy had no connection to reset: no fault was injected"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("partition copy failed"),
        "no load failed: the resets hit nothing\n{stderr}"
    );
    pair.assert_contiguous_ledger().await?;
    pair.figures(
        "target connections reset",
        &format!("every target connection reset twice mid-copy ({reset} resets)"),
        &job,
        "target-resets",
        &faults,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_connections_reset_mid_copy_are_retried() -> anyhow::Result<()> {
    let pair = Pair::start().await?;
    let s3 = S3Server::start()?;
    s3.create_bucket("godwit-chaos")?;
    let proxy = FaultProxy::start(s3.port()?).await?;
    let env = s3.env_via(proxy.port)?;
    let target_url = pair.target.loader_url("shop");
    let job = Job::create(|_| pair.spec("s3-resets", &target_url, "s3://godwit-chaos/staged"))?;
    let mut reset = 0;
    let (code, stderr, faults) = run_with_faults(&pair, &job, &env, 2, || {
        // Between two requests the client may hold no connection open: the
        // fault lands on the next one it opens.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut now_reset = proxy.reset_all();
        while now_reset == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            now_reset = proxy.reset_all();
        }
        reset += now_reset;
    })
    .await?;
    assert!(
        reset > 0,
        "the proxy had no connection to reset: no fault was injected"
    );
    assert_eq!(code, Some(0), "{stderr}");
    pair.assert_contiguous_ledger().await?;
    pair.figures(
        "object storage connections reset",
        &format!("every S3 connection reset twice mid-copy ({reset} resets)"),
        &job,
        "s3-resets",
        &faults,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_answering_503_is_retried_with_backoff() -> anyhow::Result<()> {
    let pair = Pair::start().await?;
    let (_s3, proxy, env) = s3_behind_proxy("godwit-503").await?;
    let target_url = pair.target.loader_url("shop");
    let job = Job::create(|_| pair.spec("s3-503", &target_url, "s3://godwit-503/staged"))?;
    let (code, stderr, faults) = run_with_faults(&pair, &job, &env, 2, || {
        proxy.inject(HttpFault::Unavailable, 4);
    })
    .await?;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        proxy.injected(),
        8,
        "not every injected 503 was met by a request"
    );
    pair.assert_contiguous_ledger().await?;
    pair.figures(
        "object storage answers 503",
        "4 consecutive S3 requests answered 503 SlowDown, twice",
        &job,
        "s3-503",
        &faults,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_requests_left_unanswered_time_out_and_are_retried() -> anyhow::Result<()> {
    let pair = Pair::start().await?;
    let (_s3, proxy, mut env) = s3_behind_proxy("godwit-stall").await?;
    // The object-store client's request timeout (30 s by default).
    env.push(("AWS_TIMEOUT".to_owned(), "2s".to_owned()));
    let target_url = pair.target.loader_url("shop");
    let job = Job::create(|_| pair.spec("s3-stall", &target_url, "s3://godwit-stall/staged"))?;
    let hold = Duration::from_secs(20);
    let (code, stderr, faults) = run_with_faults(&pair, &job, &env, 1, || {
        proxy.inject(HttpFault::Stall { hold }, 2);
    })
    .await?;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(proxy.injected(), 2, "not every stalled request was met");
    pair.assert_contiguous_ledger().await?;
    pair.figures(
        "object storage times out",
        "2 consecutive S3 requests never answered (client timeout 2 s)",
        &job,
        "s3-stall",
        &faults,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_gone_past_the_retry_budget_fails_the_job_cleanly_and_a_rerun_completes()
-> anyhow::Result<()> {
    let pair = Pair::start().await?;
    let proxy = FaultProxy::start(pair.target.port).await?;
    let through_proxy = pair
        .target
        .role_url_at(godwit_tests::pg::LOADER, proxy.port, "shop");
    let job = Job::create(|staging| pair.spec("target-gone", &through_proxy, staging))?;
    let (code, stderr, _) = run_with_faults(&pair, &job, &[], 1, || {
        proxy.refuse_connections(true);
    })
    .await?;
    assert_ne!(
        code,
        Some(0),
        "the job succeeded without its target\n{stderr}"
    );
    assert!(
        stderr.contains("failed after 5 attempt(s)"),
        "the failure does not say the retries ran out:\n{stderr}"
    );
    assert!(
        stderr.contains("error: table ") && stderr.contains(" partition "),
        "the failure does not name the table and partition:\n{stderr}"
    );
    // What was loaded stays loaded and accounted for.
    pair.assert_contiguous_ledger().await?;
    let staged = Job::files_under(&job.staging_dir());
    assert!(!staged.is_empty(), "the failed job left no staged chunks");

    proxy.refuse_connections(false);
    let rerun = godwit_tests::run_godwit(&["run", job.spec()], &[])?;
    assert!(rerun.status.success(), "{}", godwit_tests::describe(&rerun));
    let (src, dst) = (
        pair.source.client("shop").await?,
        pair.target.client("shop").await?,
    );
    assert_same_tables(&src, &dst).await?;
    let (lost, duplicated) = godwit_tests::lost_and_duplicated(&src, &dst).await?;
    assert_eq!((lost, duplicated), (0, 0));
    Ok(())
}
