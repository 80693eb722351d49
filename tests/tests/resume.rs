//! A worker killed mid-partition: its lease expires, another worker takes the
//! partition and continues after the last chunk the target ledger confirms.

use std::time::Duration;

use godwit_tests::{
    Etcd, Job, Service, assert_same_tables, describe, run_godwit, source_and_target, spec_body,
    wait_until,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_partition_resumes_after_its_last_loaded_chunk() -> anyhow::Result<()> {
    let (source, target) = source_and_target(4).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-resume";
    let (_coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    // One partition per table, small chunks: the events partition has dozens.
    let job = Job::create(|staging| {
        spec_body("resume", &source, &target, staging)
            .replace("partition_size: 512KiB", "partition_size: 1GiB")
            .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
    })?;
    let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));

    let worker_args = ["--concurrency", "1", "--lease-ttl-secs", "2"];
    let mut first = Service::worker("worker-1", &etcd.url(), root, &url, &worker_args, &[])?;
    let dst = target.client("shop").await?;
    let (partition, loaded) = wait_until("several chunks of the events partition", Duration::from_secs(60), || async {
        let row = dst
            .query_opt(
                "SELECT partition, count(*) FROM godwit.applied_chunks \
                 WHERE job_id = 'resume' AND table_name = 'public.events' GROUP BY partition HAVING count(*) >= 3",
                &[],
            )
            .await
            .ok()
            .flatten();
        Ok(row.map(|row| (row.get::<_, i32>(0), row.get::<_, i64>(1))))
    })
    .await?;
    first.signal("KILL")?;
    first.kill();

    let second = Service::worker("worker-2", &etcd.url(), root, &url, &worker_args, &[])?;
    let watched = run_godwit(&["watch", "--coordinator", &url, "resume"], &[])?;
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
        "the second worker started the partition from scratch:\n{}",
        second.log_text()
    );

    // The ledger holds each chunk once, numbered without gaps, past the kill point.
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
    let src = source.client("shop").await?;
    assert_same_tables(&src, &dst).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_worker_hands_its_partition_back_at_once_and_exits_cleanly() -> anyhow::Result<()>
{
    use godwit_common::lease::{EtcdStore, LeaseStore};

    let (source, target) = source_and_target(4).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-term";
    let (_coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let job = Job::create(|staging| {
        spec_body("term", &source, &target, staging)
            .replace("partition_size: 512KiB", "partition_size: 1GiB")
            .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
    })?;
    let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));

    // A long TTL: a lease left to expire would still be there after the exit.
    let ttl = Duration::from_secs(30);
    let ttl_arg = ttl.as_secs().to_string();
    let worker_args = ["--concurrency", "1", "--lease-ttl-secs", ttl_arg.as_str()];
    let mut first = Service::worker("worker-1", &etcd.url(), root, &url, &worker_args, &[])?;
    let dst = target.client("shop").await?;
    wait_until("several chunks of the events partition", Duration::from_secs(60), || async {
        let chunks: i64 = dst
            .query_one(
                "SELECT count(*) FROM godwit.applied_chunks WHERE job_id = 'term' AND table_name = 'public.events'",
                &[],
            )
            .await
            .map(|row| row.get(0))
            .unwrap_or(0);
        Ok((chunks >= 3).then_some(()))
    })
    .await?;

    let stopped_at = std::time::Instant::now();
    first.signal("TERM")?;
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
    let store = EtcdStore::connect(&[etcd.url()]).await?;
    let leases = store.list(&format!("{root}/jobs/term/leases/")).await?;
    assert!(
        leases.is_empty() && stopped_at.elapsed() < ttl,
        "leases still held after a clean stop: {leases:?}"
    );
    assert!(
        first.log_text().contains("handing the partition back"),
        "{}",
        first.log_text()
    );

    let second = Service::worker("worker-2", &etcd.url(), root, &url, &worker_args, &[])?;
    let watched = run_godwit(&["watch", "--coordinator", &url, "term"], &[])?;
    assert!(
        watched.status.success(),
        "{}\n{}",
        describe(&watched),
        second.log_text()
    );
    assert!(
        second
            .log_text()
            .contains("resuming partition after the last loaded chunk")
    );
    let src = source.client("shop").await?;
    assert_same_tables(&src, &dst).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_worker_is_fenced_when_it_wakes_after_its_lease_expired() -> anyhow::Result<()> {
    use godwit_common::lease::{EtcdStore, LeaseStore};

    let (source, target) = source_and_target(4).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-fence";
    let (_coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let job = Job::create(|staging| {
        spec_body("fence", &source, &target, staging)
            .replace("partition_size: 512KiB", "partition_size: 1GiB")
            .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
    })?;
    let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    let worker_args = ["--concurrency", "1", "--lease-ttl-secs", "2"];
    let first = Service::worker("worker-1", &etcd.url(), root, &url, &worker_args, &[])?;
    let dst = target.client("shop").await?;
    let events_chunks = || async {
        dst.query_one(
            "SELECT count(*) FROM godwit.applied_chunks WHERE job_id = 'fence' AND table_name = 'public.events'",
            &[],
        )
        .await
        .map(|row| row.get::<_, i64>(0))
        .unwrap_or(0)
    };
    wait_until(
        "several chunks of the events partition",
        Duration::from_secs(60),
        || async { Ok((events_chunks().await >= 3).then_some(())) },
    )
    .await?;

    // Frozen past its TTL, as a stalled pod would be.
    first.signal("STOP")?;
    let store = EtcdStore::connect(&[etcd.url()]).await?;
    let leases = format!("{root}/jobs/fence/leases/");
    wait_until(
        "the paused worker's lease to expire",
        Duration::from_secs(30),
        || async { Ok(store.list(&leases).await?.is_empty().then_some(())) },
    )
    .await?;
    let paused_at = events_chunks().await;
    let second = Service::worker("worker-2", &etcd.url(), root, &url, &worker_args, &[])?;
    wait_until(
        "the second worker to load past the pause",
        Duration::from_secs(60),
        || async { Ok((events_chunks().await > paused_at).then_some(())) },
    )
    .await?;
    first.signal("CONT")?;

    let watched = run_godwit(&["watch", "--coordinator", &url, "fence"], &[])?;
    assert!(
        watched.status.success(),
        "{}\n{}",
        describe(&watched),
        second.log_text()
    );
    let src = source.client("shop").await?;
    assert_same_tables(&src, &dst).await?;
    let woke = first.log_text();
    assert!(
        woke.contains("fenced") || woke.contains("stepping down"),
        "the paused worker neither stepped down nor was fenced:\n{woke}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_coordinator_takes_over_its_unfinished_job() -> anyhow::Result<()> {
    let (source, target) = source_and_target(4).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-restart";
    let (mut coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let job = Job::create(|staging| {
        spec_body("restart", &source, &target, staging)
            .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
    })?;
    let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    let worker_args = ["--concurrency", "1", "--lease-ttl-secs", "2"];
    let worker = Service::worker("worker-1", &etcd.url(), root, &url, &worker_args, &[])?;
    let dst = target.client("shop").await?;
    wait_until(
        "some chunks in the target ledger",
        Duration::from_secs(60),
        || async {
            let chunks: i64 = dst
                .query_one(
                    "SELECT count(*) FROM godwit.applied_chunks WHERE job_id = 'restart'",
                    &[],
                )
                .await
                .map(|row| row.get(0))
                .unwrap_or(0);
            Ok((chunks >= 3).then_some(()))
        },
    )
    .await?;
    coordinator.signal("KILL")?;
    coordinator.kill();

    // A new coordinator on the same etcd finds the job and finishes it; the
    // running worker keeps serving.
    let (restarted, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let watched = run_godwit(&["watch", "--coordinator", &url, "restart"], &[])?;
    assert!(
        watched.status.success(),
        "{}\n{}\n{}",
        describe(&watched),
        restarted.log_text(),
        worker.log_text()
    );
    assert!(
        restarted
            .log_text()
            .contains("taking over an unfinished job")
    );
    let src = source.client("shop").await?;
    assert_same_tables(&src, &dst).await?;
    let slots: i64 = src
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await?
        .get(0);
    assert_eq!(slots, 0, "a replication slot was left behind");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_survives_etcd_going_away_and_coming_back() -> anyhow::Result<()> {
    let (source, target) = source_and_target(4).await?;
    let mut etcd = Etcd::start()?;
    let root = "/godwit-etcd-outage";
    let (_coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let job = Job::create(|staging| {
        spec_body("outage", &source, &target, staging)
            .replace("partition_size: 512KiB", "partition_size: 1GiB")
            .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
    })?;
    let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    let worker_args = ["--concurrency", "1", "--lease-ttl-secs", "3"];
    let worker = Service::worker("worker-1", &etcd.url(), root, &url, &worker_args, &[])?;
    let dst = target.client("shop").await?;
    wait_until("some chunks of the events partition", Duration::from_secs(60), || async {
        let chunks: i64 = dst
            .query_one(
                "SELECT count(*) FROM godwit.applied_chunks WHERE job_id = 'outage' AND table_name = 'public.events'",
                &[],
            )
            .await
            .map(|row| row.get(0))
            .unwrap_or(0);
        Ok((chunks >= 3).then_some(()))
    })
    .await?;

    etcd.stop();
    // Longer than the TTL: the worker must step down from every lease.
    tokio::time::sleep(Duration::from_secs(5)).await;
    etcd.restart()?;

    let watched = run_godwit(&["watch", "--coordinator", &url, "outage"], &[])?;
    assert!(
        watched.status.success(),
        "{}\n{}",
        describe(&watched),
        worker.log_text()
    );
    // The worker stopped writing for its partition when etcd went away (a
    // failed renewal or a failed fenced progress write), and retried it later.
    let log = worker.log_text();
    assert!(
        log.contains("stepping down from lease")
            || log.contains("partition copy failed error=lease store"),
        "{log}"
    );
    let src = source.client("shop").await?;
    assert_same_tables(&src, &dst).await?;
    Ok(())
}
