//! Failures of the distributed deployment: workers killed, stopped and
//! frozen, the coordinator killed, etcd going away. Each ends with the target
//! compared to the source.

use std::time::Duration;

use godwit_tests::{
    Etcd, FaultAt, FaultProxy, Figures, Job, MeasuredRun, PgCluster, Service, assert_same_tables,
    describe, run_godwit, source_and_target, spec_body, wait_until,
};

const CHUNK_SIZE: u64 = 64 * 1024;

/// Coordinator, etcd and a submitted job whose `events` table is one
/// partition of about a hundred 64 KiB chunks (unless `partition_size` splits
/// it): long enough for a fault to land mid-partition.
struct Deployment {
    source: PgCluster,
    target: PgCluster,
    etcd: Etcd,
    coordinator: Service,
    url: String,
    root: String,
    job_id: &'static str,
    ledger: tokio_postgres::Client,
    /// Every source connection goes through it: it counts what was read.
    tap: FaultProxy,
    job: Job,
}

impl Deployment {
    async fn start(job_id: &'static str, partition_size: &str) -> anyhow::Result<Self> {
        Self::start_with(job_id, partition_size, "").await
    }

    /// A deployment whose job spec ends with `extra`.
    async fn start_with(
        job_id: &'static str,
        partition_size: &str,
        extra: &str,
    ) -> anyhow::Result<Self> {
        let (source, target) = source_and_target(12).await?;
        let etcd = Etcd::start()?;
        let root = format!("/godwit-{job_id}");
        let (coordinator, url) = Service::coordinator(&etcd.url(), &root, &[])?;
        let tap = FaultProxy::postgres(source.port).await?;
        let job = Job::create(|staging| {
            spec_body(job_id, &source, &target, staging)
                .replace(
                    &source.migrator_url("shop"),
                    &source.migrator_url_at(tap.port, "shop"),
                )
                .replace(
                    "partition_size: 512KiB",
                    &format!("partition_size: {partition_size}"),
                )
                .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
                + extra
        })?;
        let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
        assert!(submitted.status.success(), "{}", describe(&submitted));
        let ledger = target.client("shop").await?;
        Ok(Self {
            source,
            target,
            etcd,
            coordinator,
            url,
            root,
            job_id,
            ledger,
            tap,
            job,
        })
    }

    fn worker(&self, id: &str, args: &[&str]) -> anyhow::Result<Service> {
        Service::worker(id, &self.etcd.url(), &self.root, &self.url, args, &[])
    }

    /// (partition, chunks) of the events table's most advanced partition.
    async fn events_progress(&self) -> anyhow::Result<(i32, i64)> {
        let row = self
            .ledger
            .query_opt(
                "SELECT partition, count(*) FROM godwit.applied_chunks \
                 WHERE job_id = $1 AND table_name = 'public.events' GROUP BY partition ORDER BY 2 DESC LIMIT 1",
                &[&self.job_id],
            )
            .await
            .ok()
            .flatten();
        Ok(row.map(|row| (row.get(0), row.get(1))).unwrap_or((-1, 0)))
    }

    async fn wait_for_events_chunks(&self, at_least: i64) -> anyhow::Result<(i32, i64)> {
        wait_until(
            "chunks of the events table in the target ledger",
            Duration::from_secs(60),
            || async {
                let progress = self.events_progress().await?;
                Ok((progress.1 >= at_least).then_some(progress))
            },
        )
        .await
    }

    /// `godwit watch` to the end; asserts success and target == source.
    async fn finish(&self, logs: &[&Service]) -> anyhow::Result<()> {
        let watched = run_godwit(&["watch", "--coordinator", &self.url, self.job_id], &[])?;
        let logs: Vec<String> = logs.iter().map(|s| s.log_text()).collect();
        assert!(
            watched.status.success(),
            "{}\n{}",
            describe(&watched),
            logs.join("\n")
        );
        let (src, dst) = (
            self.source.client("shop").await?,
            self.target.client("shop").await?,
        );
        assert_same_tables(&src, &dst).await?;
        Ok(())
    }

    /// The scenario's figures, once the job has finished; asserts that no
    /// row was lost or duplicated.
    async fn figures(
        &self,
        scenario: &str,
        faults: &str,
        fault_times: &[FaultAt],
    ) -> anyhow::Result<Figures> {
        let run = MeasuredRun {
            source: &self.source,
            target: &self.target,
            tap: &self.tap,
            spec: &self.job.spec_path,
            job_id: self.job_id,
            chunk_size: CHUNK_SIZE,
        };
        Figures::measure(&run, scenario, faults, fault_times).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_partition_resumes_after_its_last_loaded_chunk() -> anyhow::Result<()> {
    let deployment = Deployment::start("resume", "1GiB").await?;
    let worker_args = ["--concurrency", "1", "--lease-ttl-secs", "2"];
    let mut first = deployment.worker("worker-1", &worker_args)?;
    let (partition, loaded) = deployment.wait_for_events_chunks(10).await?;
    first.signal("KILL")?;
    let killed_at = FaultAt::now(&deployment.ledger)
        .await?
        .on_partition(partition);
    first.kill();

    let second = deployment.worker("worker-2", &worker_args)?;
    deployment.finish(&[&second]).await?;
    assert!(
        second
            .log_text()
            .contains("resuming partition after the last loaded chunk"),
        "the second worker started the partition from scratch:\n{}",
        second.log_text()
    );
    // The ledger holds each chunk once, numbered without gaps, past the kill point.
    let dst = deployment.target.client("shop").await?;
    let row = dst
        .query_one(
            "SELECT count(*), count(DISTINCT seq), max(seq) FROM godwit.applied_chunks \
             WHERE job_id = 'resume' AND partition = $1",
            &[&partition],
        )
        .await?;
    let (chunks, distinct, max_seq): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(chunks, distinct);
    assert_eq!(max_seq + 1, chunks);
    assert!(chunks > loaded, "nothing was loaded after the kill");
    let figures = deployment
        .figures(
            "worker killed",
            "SIGKILL mid-partition, TTL 2 s",
            &[killed_at],
        )
        .await?;
    // Resumed, not restarted: ten chunks were loaded before the fault.
    figures.assert_reread_at_most(5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_worker_hands_its_partition_back_at_once_and_exits_cleanly() -> anyhow::Result<()>
{
    use godwit_common::lease::{EtcdStore, LeaseStore};

    // Read at a bounded rate, so the events partition is still being
    // copied when the signal lands, however fast the machine is.
    let deployment =
        Deployment::start_with("term", "1GiB", "\nthrottle: { bytes_per_sec: 4MiB }").await?;
    // A long TTL: a lease left to expire would still be there after the exit.
    let ttl = Duration::from_secs(30);
    let ttl_arg = ttl.as_secs().to_string();
    let worker_args = ["--concurrency", "1", "--lease-ttl-secs", ttl_arg.as_str()];
    let mut first = deployment.worker("worker-1", &worker_args)?;
    deployment.wait_for_events_chunks(10).await?;

    let stopped_at = std::time::Instant::now();
    first.signal("TERM")?;
    let terminated_at = FaultAt::now(&deployment.ledger)
        .await?
        .on_partition(deployment.events_progress().await?.0);
    let code = wait_until(
        "the worker to exit after SIGTERM",
        Duration::from_secs(20),
        || {
            let status = first.try_wait();
            async move { status }
        },
    )
    .await?;
    assert_eq!(code, Some(0), "{}", first.log_text());
    let store = EtcdStore::connect(&[deployment.etcd.url()]).await?;
    let leases = store
        .list(&format!("{}/jobs/term/leases/", deployment.root))
        .await?;
    assert!(
        leases.is_empty() && stopped_at.elapsed() < ttl,
        "leases still held after a clean stop: {leases:?}"
    );
    assert!(
        first.log_text().contains("handing the partition back"),
        "{}",
        first.log_text()
    );

    let second = deployment.worker("worker-2", &worker_args)?;
    deployment.finish(&[&second]).await?;
    assert!(
        second
            .log_text()
            .contains("resuming partition after the last loaded chunk")
    );
    let figures = deployment
        .figures(
            "worker stopped",
            "SIGTERM mid-partition, successor started after the exit",
            &[terminated_at],
        )
        .await?;
    // Resumed, not restarted: ten chunks were loaded before the fault.
    figures.assert_reread_at_most(5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_worker_is_fenced_when_it_wakes_after_its_lease_expired() -> anyhow::Result<()> {
    use godwit_common::lease::{EtcdStore, LeaseStore};

    let deployment = Deployment::start("fence", "1GiB").await?;
    let worker_args = ["--concurrency", "1", "--lease-ttl-secs", "2"];
    let first = deployment.worker("worker-1", &worker_args)?;
    deployment.wait_for_events_chunks(10).await?;

    // Frozen past its TTL, as a stalled pod would be.
    first.signal("STOP")?;
    let paused = FaultAt::now(&deployment.ledger)
        .await?
        .on_partition(deployment.events_progress().await?.0);
    let store = EtcdStore::connect(&[deployment.etcd.url()]).await?;
    let leases = format!("{}/jobs/fence/leases/", deployment.root);
    wait_until(
        "the paused worker's lease to expire",
        Duration::from_secs(30),
        || async { Ok(store.list(&leases).await?.is_empty().then_some(())) },
    )
    .await?;
    let (_, paused_at) = deployment.events_progress().await?;
    let second = deployment.worker("worker-2", &worker_args)?;
    deployment.wait_for_events_chunks(paused_at + 1).await?;
    first.signal("CONT")?;

    deployment.finish(&[&second]).await?;
    // The woken worker may only get to it after the job has ended.
    let stepped_down = wait_until(
        "the woken worker to step down or be fenced",
        Duration::from_secs(30),
        || async {
            let woke = first.log_text();
            Ok((woke.contains("fenced") || woke.contains("stepping down")).then_some(()))
        },
    )
    .await;
    assert!(
        stepped_down.is_ok(),
        "the paused worker neither stepped down nor was fenced:\n{}",
        first.log_text()
    );
    let figures = deployment
        .figures(
            "worker frozen past its TTL",
            "SIGSTOP, TTL 2 s, successor started, then SIGCONT",
            &[paused],
        )
        .await?;
    // Resumed, not restarted: ten chunks were loaded before the fault.
    figures.assert_reread_at_most(5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_coordinator_takes_over_its_unfinished_job() -> anyhow::Result<()> {
    let mut deployment = Deployment::start("restart", "512KiB").await?;
    let worker = deployment.worker("worker-1", &["--concurrency", "1", "--lease-ttl-secs", "2"])?;
    deployment.wait_for_events_chunks(3).await?;
    deployment.coordinator.signal("KILL")?;
    let killed_at = FaultAt::now(&deployment.ledger).await?;
    deployment.coordinator.kill();

    // A new coordinator on the same etcd finds the job and finishes it; the
    // running worker keeps serving.
    let (restarted, url) = Service::coordinator(&deployment.etcd.url(), &deployment.root, &[])?;
    deployment.url = url;
    deployment.finish(&[&restarted, &worker]).await?;
    assert!(
        restarted
            .log_text()
            .contains("taking over an unfinished job")
    );
    let src = deployment.source.client("shop").await?;
    let slots: i64 = src
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await?
        .get(0);
    assert_eq!(slots, 0, "a replication slot was left behind");
    deployment.coordinator = restarted;
    deployment
        .figures(
            "coordinator killed and restarted",
            "SIGKILL mid-copy, new coordinator started at once",
            &[killed_at],
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_coordinator_takes_over_when_the_leader_dies_mid_copy() -> anyhow::Result<()> {
    let mut deployment = Deployment::start("standby", "512KiB").await?;
    let (standby, standby_url) =
        Service::coordinator(&deployment.etcd.url(), &deployment.root, &[])?;
    standby
        .logged(
            "another coordinator leads; following",
            Duration::from_secs(30),
        )
        .await?;
    let worker = deployment.worker("worker-1", &["--concurrency", "1", "--lease-ttl-secs", "2"])?;
    deployment.wait_for_events_chunks(3).await?;
    assert!(
        !standby.log_text().contains("taking over"),
        "the standby drove a job while another coordinator led:\n{}",
        standby.log_text()
    );
    deployment.coordinator.signal("KILL")?;
    let killed_at = FaultAt::now(&deployment.ledger).await?;
    deployment.coordinator.kill();

    standby
        .logged("taking over an unfinished job", Duration::from_secs(60))
        .await?;
    deployment.url = standby_url;
    deployment.finish(&[&standby, &worker]).await?;
    deployment.coordinator = standby;
    deployment
        .figures(
            "leader killed, standby takes over",
            "SIGKILL of the leading coordinator mid-copy; a standby on the same etcd",
            &[killed_at],
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_survives_etcd_going_away_and_coming_back() -> anyhow::Result<()> {
    let mut deployment = Deployment::start("outage", "1GiB").await?;
    let worker = deployment.worker("worker-1", &["--concurrency", "1", "--lease-ttl-secs", "3"])?;
    deployment.wait_for_events_chunks(10).await?;

    deployment.etcd.stop();
    let stopped_at = FaultAt::now(&deployment.ledger).await?;
    // Longer than the TTL: the worker must step down from every lease.
    tokio::time::sleep(Duration::from_secs(5)).await;
    deployment.etcd.restart()?;

    deployment.finish(&[&worker]).await?;
    // The worker stopped writing for its partition when etcd went away (a
    // failed renewal or a failed fenced progress write), and retried it later.
    let log = worker.log_text();
    assert!(
        log.contains("stepping down from lease")
            || log.contains("partition copy failed error=lease store"),
        "{log}"
    );
    let figures = deployment
        .figures(
            "etcd unavailable",
            "etcd stopped for 5 s (TTL 3 s), then restarted",
            &[stopped_at],
        )
        .await?;
    // Resumed, not restarted: ten chunks were loaded before the fault.
    figures.assert_reread_at_most(5);
    Ok(())
}

/// Tokens are the same whoever masks a row: a copy whose worker is killed
/// mid-partition, its partition resumed by another worker from the last
/// loaded chunk, lands every event body as the customer's key gives it.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_the_same_after_a_resumed_partition() -> anyhow::Result<()> {
    let mapping = "\nmapping:\n  tables:\n    - from: public.events\n      columns:\n        \
                   body: { mask: tokenise }\n";
    let deployment = Deployment::start_with("tokens", "1GiB", mapping).await?;
    let worker_args = ["--concurrency", "1", "--lease-ttl-secs", "2"];
    let mut first = deployment.worker("worker-1", &worker_args)?;
    deployment.wait_for_events_chunks(10).await?;
    first.signal("KILL")?;
    first.kill();
    let second = deployment.worker("worker-2", &worker_args)?;
    let watched = run_godwit(
        &["watch", "--coordinator", &deployment.url, deployment.job_id],
        &[],
    )?;
    assert!(
        watched.status.success(),
        "{}\n{}",
        describe(&watched),
        second.log_text()
    );
    assert!(
        second
            .log_text()
            .contains("resuming partition after the last loaded chunk"),
        "{}",
        second.log_text()
    );
    // Rows without a key: the tokens of the source's bodies, as a
    // multiset, are the target's bodies.
    let key = godwit_common::keys::Kek::from_file(&deployment.job.key_path)?.token_key();
    let masker = godwit_common::mapping::mask::Masker {
        key: &key,
        customer: "acme",
    };
    let bodies = |client: tokio_postgres::Client| async move {
        let rows = client.query("SELECT body FROM public.events", &[]).await?;
        Ok::<_, anyhow::Error>(
            rows.iter()
                .map(|r| r.get::<_, Option<String>>(0))
                .collect::<Vec<_>>(),
        )
    };
    let mut expected: Vec<Option<String>> = bodies(deployment.source.client("shop").await?)
        .await?
        .into_iter()
        .map(|b| masker.apply(godwit_common::mapping::Mask::Tokenise, None, b.as_deref()))
        .collect();
    let mut landed = bodies(deployment.target.client("shop").await?).await?;
    expected.sort();
    landed.sort();
    assert_eq!(expected.len(), landed.len());
    assert!(
        expected == landed,
        "the target's bodies are not the key's tokens"
    );
    Ok(())
}
