//! Per-customer throttling end to end: the source's read rate held to the
//! customer's limit (bytes counted by a proxy that parses the PostgreSQL
//! protocol in front of the source), a live change, pause and resume, and
//! the cap on source sessions checked in `pg_stat_activity`. Bounds are on
//! bytes and on what a limit makes impossible (a run faster than its bytes
//! allow), never on how fast a machine is.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use godwit_tests::otlp::OtlpReceiver;
use godwit_tests::proxy::FaultProxy;
use godwit_tests::{
    Etcd, Job, Service, assert_same_tables, describe, run_godwit, source_and_target, spec_body,
    wait_until,
};

const KIB: u64 = 1024;

/// Samples the number of sessions on the source (client backends of the
/// database and walsenders, this sampler excluded) every 20 ms; keeps the
/// highest.
fn sample_sessions(
    client: tokio_postgres::Client,
) -> (Arc<AtomicI64>, tokio::task::JoinHandle<()>) {
    let highest = Arc::new(AtomicI64::new(0));
    let seen = highest.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(row) = client
                .query_one(
                    "SELECT count(*), string_agg(application_name || ':' || backend_type || ':' || coalesce(state, '') || ':' || left(query, 60), E'\n') FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                     AND ((datname = 'shop' AND backend_type = 'client backend') OR backend_type = 'walsender')",
                    &[],
                )
                .await
            {
                let n = row.get::<_, i64>(0);
                if n > seen.fetch_max(n, Ordering::SeqCst) {
                    eprintln!("{n} sessions:\n{}", row.get::<_, Option<String>>(1).unwrap_or_default());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (highest, task)
}

/// `godwit throttle` raising customer acme's limit to 64 MiB/s; returns
/// what it printed.
fn raise_acme_to_64mib(url: &str) -> anyhow::Result<String> {
    let raised = run_godwit(
        &[
            "throttle",
            "--coordinator",
            url,
            "--customer",
            "acme",
            "--bytes-per-sec",
            "64MiB",
        ],
        &[],
    )?;
    assert!(raised.status.success(), "{}", describe(&raised));
    Ok(String::from_utf8_lossy(&raised.stdout).into_owned())
}

/// Waits until the source has not been read for a second, then checks it
/// stays unread for a second and a half; returns the bytes read by then.
async fn reading_stops(tap: &FaultProxy) -> anyhow::Result<u64> {
    let last = AtomicU64::new(tap.copy_bytes());
    wait_until("reading to stop", Duration::from_secs(20), || async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let now = tap.copy_bytes();
        Ok((last.swap(now, Ordering::SeqCst) == now).then_some(()))
    })
    .await?;
    let stopped_at = tap.copy_bytes();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        tap.copy_bytes(),
        stopped_at,
        "the source was read while paused"
    );
    Ok(stopped_at)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_embedded_job_reads_the_source_no_faster_than_its_limit() -> anyhow::Result<()> {
    let (source, target) = source_and_target(4).await?;
    let tap = FaultProxy::postgres(source.port).await?;
    let rate = 512 * KIB;
    let job = Job::create(|staging| {
        spec_body("throttled", &source, &target, staging)
            .replace(
                &source.migrator_url("shop"),
                &source.migrator_url_at(tap.port, "shop"),
            )
            .replace("partition_size: 512KiB", "partition_size: 256KiB")
            + &format!("\nthrottle: {{ bytes_per_sec: {rate}, max_connections: 3 }}")
    })?;
    let (highest, sampler) = sample_sessions(source.client("shop").await?);
    let started = Instant::now();
    let ran = tokio::task::spawn_blocking({
        let spec = job.spec().to_owned();
        move || run_godwit(&["run", &spec, "--workers", "2", "--concurrency", "2"], &[])
    })
    .await??;
    let elapsed = started.elapsed();
    sampler.abort();
    assert!(ran.status.success(), "{}", describe(&ran));
    let read = tap.copy_bytes();
    // The limiters let a tenth of a second's worth through at once; allow
    // a whole second of it. Faster than that, the limit did not hold.
    let floor = Duration::from_secs_f64(read.saturating_sub(rate) as f64 / rate as f64);
    assert!(
        elapsed >= floor,
        "{read} bytes read in {elapsed:?}: faster than {rate} B/s allows ({floor:?})"
    );
    let sessions = highest.load(Ordering::SeqCst);
    assert!(
        sessions <= 3,
        "{sessions} sessions on the source at once, cap 3\n{}",
        describe(&ran)
    );
    assert!(
        sessions >= 2,
        "the sampler saw no reading session: {sessions}"
    );
    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    assert_same_tables(&src, &dst).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_limit_change_pause_and_resume_reach_every_worker() -> anyhow::Result<()> {
    // Large enough that what is left after the raise would take half a
    // minute at the slow limit, so the comparison below has a wide margin
    // on a loaded machine.
    let (source, target) = source_and_target(12).await?;
    let tap = FaultProxy::postgres(source.port).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-throttle";
    let (_coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let mut workers = Vec::new();
    for name in ["worker-1", "worker-2"] {
        workers.push(Service::worker(
            name,
            &etcd.url(),
            root,
            &url,
            &["--concurrency", "2"],
            &[],
        )?);
    }
    let slow = 256 * KIB;
    let job = Job::create(|staging| {
        spec_body("live", &source, &target, staging)
            .replace(
                &source.migrator_url("shop"),
                &source.migrator_url_at(tap.port, "shop"),
            )
            .replace("partition_size: 512KiB", "partition_size: 256KiB")
            .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
            + &format!("\nthrottle: {{ bytes_per_sec: {slow}, max_connections: 3 }}")
    })?;
    let (highest, sampler) = sample_sessions(source.client("shop").await?);
    let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));

    // At the slow limit: the bytes of any two seconds stay within two
    // seconds' worth and a second of bursts.
    wait_until("reading to start", Duration::from_secs(60), || async {
        Ok((tap.copy_bytes() > 0).then_some(()))
    })
    .await?;
    let before = tap.copy_bytes();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = tap.copy_bytes() - before;
    assert!(
        window <= 3 * slow,
        "{window} bytes read in 2 s at a limit of {slow} B/s"
    );
    let status = run_godwit(&["status", "--coordinator", &url, "live"], &[])?;
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("rate 256.0 KiB/s") && shown.contains("set by job live"),
        "{shown}"
    );

    // Paused: every worker hands its partitions back; the source is not read.
    let paused = run_godwit(&["pause", "--coordinator", &url, "live"], &[])?;
    assert!(paused.status.success(), "{}", describe(&paused));
    assert!(String::from_utf8_lossy(&paused.stdout).contains("(paused)"));
    reading_stops(&tap).await?;

    // Resumed with a much higher limit: the job ends long before the slow
    // limit would have let it.
    let resumed = run_godwit(&["resume", "--coordinator", &url, "live"], &[])?;
    assert!(resumed.status.success(), "{}", describe(&resumed));
    let raised_at = Instant::now();
    let read_before_raise = tap.copy_bytes();
    let raised = raise_acme_to_64mib(&url)?;
    assert!(
        raised.contains("rate 64.0 MiB/s") && raised.contains("source sessions 3"),
        "{raised}"
    );
    // The copy's end is what the limit governs; the final check after it
    // reads through the databases' own scans.
    wait_until("the copy to end", Duration::from_secs(120), || async {
        let status = run_godwit(&["status", "--coordinator", &url, "live"], &[])?;
        let shown = String::from_utf8_lossy(&status.stdout).to_string();
        Ok((!shown.contains("live copying") && !shown.contains("live planning")).then_some(()))
    })
    .await?;
    let elapsed = raised_at.elapsed();
    let read = tap.copy_bytes() - read_before_raise;
    let watched = run_godwit(&["watch", "--coordinator", &url, "live"], &[])?;
    assert!(watched.status.success(), "{}", describe(&watched));
    sampler.abort();
    assert!(
        elapsed < Duration::from_secs_f64(read as f64 / slow as f64),
        "{read} bytes in {elapsed:?} after the raise: the raised limit was not followed"
    );
    let status = run_godwit(&["status", "--coordinator", &url, "live"], &[])?;
    assert!(String::from_utf8_lossy(&status.stdout).contains("set by operator"));
    let sessions = highest.load(Ordering::SeqCst);
    assert!(
        sessions <= 3,
        "{sessions} sessions on the source at once, cap 3"
    );
    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    assert_same_tables(&src, &dst).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn impossible_limits_are_refused_naming_the_field() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let job = Job::create(|staging| {
        spec_body("one-session", &source, &target, staging) + "\nthrottle: { max_connections: 1 }"
    })?;
    let refused = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("throttle.max_connections"), "{stderr}");

    let etcd = Etcd::start()?;
    let (_coordinator, url) = Service::coordinator(&etcd.url(), "/godwit-limits", &[])?;
    let low = run_godwit(
        &[
            "throttle",
            "--coordinator",
            &url,
            "--customer",
            "acme",
            "--bytes-per-sec",
            "1KiB",
        ],
        &[],
    )?;
    assert_eq!(low.status.code(), Some(2), "{}", describe(&low));
    assert!(String::from_utf8_lossy(&low.stderr).contains("bytes_per_sec"));
    let bad_name = run_godwit(
        &[
            "throttle",
            "--coordinator",
            &url,
            "--customer",
            "Acme Corp",
            "--max-connections",
            "4",
        ],
        &[],
    )?;
    assert_eq!(bad_name.status.code(), Some(2), "{}", describe(&bad_name));
    let unknown = run_godwit(&["pause", "--coordinator", &url, "no-such-job"], &[])?;
    assert_eq!(unknown.status.code(), Some(2), "{}", describe(&unknown));
    Ok(())
}

/// Starts `n` sessions on the source that each run a long statement: the
/// artificial load adaptive mode must notice.
async fn load_source(source: &godwit_tests::PgCluster, n: usize) -> anyhow::Result<()> {
    for _ in 0..n {
        let client = source.client("shop").await?;
        tokio::spawn(async move {
            let _ = client.batch_execute("SELECT pg_sleep(600)").await;
        });
    }
    Ok(())
}

async fn throttle_reason(url: &str, job: &str) -> anyhow::Result<String> {
    let status = run_godwit(&["status", "--coordinator", url, job], &[])?;
    Ok(String::from_utf8_lossy(&status.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_mode_backs_off_and_pauses_under_load_and_recovers() -> anyhow::Result<()> {
    let (source, target) = source_and_target(4).await?;

    let tap = FaultProxy::postgres(source.port).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-adaptive";
    // Decisions are also exported as metrics, to a collector of our own.
    let collector = OtlpReceiver::start().await?;
    let (_coordinator, url) = Service::coordinator(&etcd.url(), root, &collector.env())?;
    let _worker = Service::worker(
        "worker-1",
        &etcd.url(),
        root,
        &url,
        &["--concurrency", "2"],
        &[],
    )?;
    let job = Job::create(|staging| {
        spec_body("adaptive", &source, &target, staging)
            .replace(
                &source.migrator_url("shop"),
                &source.migrator_url_at(tap.port, "shop"),
            )
            .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
            + "\nthrottle: { bytes_per_sec: 256KiB, adaptive: \
               { max_active_sessions: 2, critical_active_sessions: 4 } }"
    })?;
    // Other roles' session states are hidden from the migrator role: the
    // probe would see an idle source, so the job is refused until it may.
    let refused = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
    assert!(!refused.status.success(), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("GRANT pg_read_all_stats TO migrator"),
        "{}",
        describe(&refused)
    );
    source
        .client("shop")
        .await?
        .batch_execute("GRANT pg_read_all_stats TO migrator")
        .await?;
    // Two busy sessions: at the high threshold, the rate is backed off.
    load_source(&source, 2).await?;
    let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    let shown = wait_until("a back-off decision", Duration::from_secs(30), || async {
        let shown = throttle_reason(&url, "adaptive").await?;
        Ok(shown.contains("adaptive: backed off to").then_some(shown))
    })
    .await?;
    assert!(shown.contains("active sessions 2 ≥ max 2"), "{shown}");

    // Two more: critical, reading pauses.
    load_source(&source, 2).await?;
    wait_until("a pause decision", Duration::from_secs(30), || async {
        let shown = throttle_reason(&url, "adaptive").await?;
        Ok(shown
            .contains("adaptive: paused: active sessions 4 ≥ critical 4")
            .then_some(()))
    })
    .await?;
    let stopped_at = reading_stops(&tap).await?;

    // The load ends: reading climbs back and the job completes, exactly.
    source
        .client("shop")
        .await?
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query = 'SELECT pg_sleep(600)'",
        )
        .await?;
    raise_acme_to_64mib(&url)?;
    let watched = run_godwit(&["watch", "--coordinator", &url, "adaptive"], &[])?;
    assert!(watched.status.success(), "{}", describe(&watched));
    assert!(tap.copy_bytes() > stopped_at);
    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    assert_same_tables(&src, &dst).await?;

    // Each kind of decision reached the collector, for this customer.
    for decision in ["backed_off", "paused", "limited"] {
        let points = wait_until(
            &format!("a {decision} decision exported as a metric"),
            Duration::from_secs(10),
            || async {
                let points = collector.points("godwit.throttle.decisions", "decision", decision);
                Ok((!points.is_empty()).then_some(points))
            },
        )
        .await?;
        assert!(
            points
                .iter()
                .all(|p| p.attributes.contains(&("customer".into(), "acme".into()))),
            "{points:?}"
        );
    }
    let budgets = collector.points("godwit.throttle.budget", "customer", "acme");
    assert!(budgets.iter().any(|p| p.value == 0.0), "{budgets:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_customers_limit_leaves_another_customers_job_alone() -> anyhow::Result<()> {
    let (source, target) = source_and_target(4).await?;
    target
        .client("postgres")
        .await?
        .batch_execute("CREATE DATABASE other")
        .await?;
    // One tap per job, so each customer's reads are counted apart.
    let (acme_tap, beta_tap) = (
        FaultProxy::postgres(source.port).await?,
        FaultProxy::postgres(source.port).await?,
    );
    let etcd = Etcd::start()?;
    let root = "/godwit-customers";
    let (_coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let _worker = Service::worker(
        "worker-1",
        &etcd.url(),
        root,
        &url,
        &["--concurrency", "4"],
        &[],
    )?;
    let slow = 256 * KIB;
    let through = |tap: &FaultProxy| source.migrator_url_at(tap.port, "shop");
    let acme = Job::create(|staging| {
        spec_body("acme-job", &source, &target, staging)
            .replace(&source.migrator_url("shop"), &through(&acme_tap))
            + &format!("\nthrottle: {{ bytes_per_sec: {slow} }}")
    })?;
    let beta = Job::create(|staging| {
        spec_body("beta-job", &source, &target, staging)
            .replace(&source.migrator_url("shop"), &through(&beta_tap))
            .replace(&target.loader_url("shop"), &target.url("other"))
            .replace("customer: acme", "customer: beta")
    })?;
    let started = Instant::now();
    for job in [&acme, &beta] {
        let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
        assert!(submitted.status.success(), "{}", describe(&submitted));
    }
    let watched = run_godwit(&["watch", "--coordinator", &url, "beta-job"], &[])?;
    assert!(watched.status.success(), "{}", describe(&watched));
    let beta_done = started.elapsed();
    let (beta_read, acme_read) = (beta_tap.copy_bytes(), acme_tap.copy_bytes());
    // Beta finished at its own pace; acme, meanwhile, read no more than its
    // limit allowed in that time (plus a second of bursts).
    assert!(
        beta_read > acme_read,
        "beta {beta_read} B, acme {acme_read} B"
    );
    let allowed = slow as f64 * (beta_done.as_secs_f64() + 1.0);
    assert!(
        (acme_read as f64) <= allowed,
        "acme read {acme_read} B in {beta_done:?}, limit {slow} B/s"
    );
    let status = run_godwit(&["status", "--coordinator", &url, "acme-job"], &[])?;
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("acme-job copying"),
        "acme already done: {shown}"
    );
    let beta_status = run_godwit(&["status", "--coordinator", &url, "beta-job"], &[])?;
    assert!(
        String::from_utf8_lossy(&beta_status.stdout).contains("customer beta: rate unlimited"),
        "{}",
        describe(&beta_status)
    );
    let (src, dst) = (source.client("shop").await?, target.client("other").await?);
    assert_same_tables(&src, &dst).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_keeps_to_the_customers_rate() -> anyhow::Result<()> {
    let (source, target) = source_and_target(4).await?;
    let job = Job::create(|staging| spec_body("verify-paced", &source, &target, staging))?;
    let copied = run_godwit(&["run", job.spec()], &[])?;
    assert!(copied.status.success(), "{}", describe(&copied));
    let rate = 1024 * KIB;
    // The customer's limit, set for the verification only.
    let spec = std::fs::read_to_string(job.spec())?;
    std::fs::write(
        job.spec(),
        format!("{spec}\nthrottle: {{ bytes_per_sec: {rate} }}\n"),
    )?;
    // What the ranges are charged: the tables' size at the source.
    let size: i64 = source
        .client("shop")
        .await?
        .query_one(
            "SELECT sum(pg_relation_size(c.oid))::bigint FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname IN ('public', 'sales')",
            &[],
        )
        .await?
        .get(0);
    let started = Instant::now();
    let verified = tokio::task::spawn_blocking({
        let spec = job.spec().to_owned();
        move || run_godwit(&["verify", &spec], &[])
    })
    .await??;
    let elapsed = started.elapsed();
    assert_eq!(verified.status.code(), Some(0), "{}", describe(&verified));
    let floor = Duration::from_secs_f64((size as u64).saturating_sub(rate) as f64 / rate as f64);
    assert!(
        elapsed >= floor,
        "{size} bytes of tables verified in {elapsed:?}, faster than {rate} B/s allows ({floor:?})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cap_set_on_running_work_takes_effect() -> anyhow::Result<()> {
    let (source, target) = source_and_target(4).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-cap";
    let (_coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let _workers = [
        Service::worker("w1", &etcd.url(), root, &url, &["--concurrency", "2"], &[])?,
        Service::worker("w2", &etcd.url(), root, &url, &["--concurrency", "2"], &[])?,
    ];
    // Slow and uncapped: four partitions read at once, none holds a slot.
    let job = Job::create(|staging| {
        spec_body("capped-late", &source, &target, staging)
            .replace("partition_size: 512KiB", "partition_size: 256KiB")
            .replace("chunk_size: 128KiB", "chunk_size: 64KiB")
            + "\nthrottle: { bytes_per_sec: 256KiB }"
    })?;
    let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    let (before, sampler) = sample_sessions(source.client("shop").await?);
    wait_until(
        "four partitions reading",
        Duration::from_secs(30),
        || async { Ok((before.load(Ordering::SeqCst) >= 5).then_some(())) },
    )
    .await?;
    sampler.abort();

    let capped = run_godwit(
        &[
            "throttle",
            "--coordinator",
            &url,
            "--customer",
            "acme",
            "--max-connections",
            "3",
        ],
        &[],
    )?;
    assert!(capped.status.success(), "{}", describe(&capped));
    // Work over the cap is handed back within a follow round and a chunk;
    // from then on the source never sees more than 3 sessions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, sampler) = sample_sessions(source.client("shop").await?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sampler.abort();
    let sessions = after.load(Ordering::SeqCst);
    assert!(
        sessions <= 3,
        "{sessions} sessions after a cap of 3 was set"
    );
    assert!(
        sessions >= 2,
        "reading stopped altogether: {sessions} sessions"
    );
    Ok(())
}
