//! The change stream as leased work on workers: a worker lost mid-stream
//! leaves the stream to another, which goes on from the target ledger
//! without applying anything twice; and a source transaction larger than a
//! worker's memory flows through it in sealed segments.

use std::sync::atomic::Ordering;
use std::time::Duration;

use godwit_tests::{
    Etcd, Job, Service, assert_same_tables, describe, run_godwit, source_and_target, spec_body,
    wait_for_streaming, wait_until,
};

use crate::application::{assert_writes_arrived, start_writer, stream_leftovers};
use godwit_tests::otlp::OtlpReceiver;

fn godwit(args: &[&str]) -> anyhow::Result<std::process::Output> {
    run_godwit(args, &[])
}

/// A deployment on etcd: one coordinator, leading.
async fn deployment(etcd: &Etcd, root: &str) -> anyhow::Result<(Service, String)> {
    traced_deployment(etcd, root, &[]).await
}

/// A deployment whose coordinator runs with `env` (an OTLP collector's).
async fn traced_deployment(
    etcd: &Etcd,
    root: &str,
    env: &[(String, String)],
) -> anyhow::Result<(Service, String)> {
    let (coordinator, url) = Service::coordinator(&etcd.url(), root, env)?;
    coordinator
        .logged("leading the deployment", Duration::from_secs(30))
        .await?;
    Ok((coordinator, url))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_worker_s_stream_goes_on_on_another_exactly_once() -> anyhow::Result<()> {
    let (source, target) = source_and_target(2).await?;
    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    src.batch_execute(
        "ALTER TABLE events REPLICA IDENTITY FULL; \
         CREATE TABLE tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text)",
    )
    .await?;
    source.hand_tables_to_migrator("shop").await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-stream-workers";
    // The stream's figures are exported as metrics, and every process's
    // spans, to a collector of our own.
    let collector = OtlpReceiver::start().await?;
    let (coordinator, url) = traced_deployment(&etcd, root, &collector.env()).await?;
    let mut workers = [
        Service::worker("worker-a", &etcd.url(), root, &url, &[], &collector.env())?,
        Service::worker("worker-b", &etcd.url(), root, &url, &[], &collector.env())?,
    ];
    let job = Job::create(|staging| {
        spec_body("lost-worker", &source, &target, staging) + "\nchanges: {}"
    })?;
    let submitted = run_godwit(
        &["submit", "--coordinator", &url, job.spec()],
        &collector.env(),
    )?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    let (writes, writer) = start_writer(&source)?;
    wait_for_streaming(&url, "lost-worker").await?;
    let holder = wait_until(
        "a worker to take the stream",
        Duration::from_secs(60),
        || async {
            Ok(workers
                .iter()
                .position(|w| w.log_text().contains("taking the change stream")))
        },
    )
    .await?;
    assert!(
        !coordinator.log_text().contains("streaming changes"),
        "the coordinator ran the stream itself:\n{}",
        coordinator.log_text()
    );
    writes.commits_after(20, "writes while streaming").await?;

    // The worker holding the stream dies mid-way, as the application writes.
    workers[holder].kill();
    let other = &workers[1 - holder];
    other
        .logged("taking the change stream", Duration::from_secs(90))
        .await?;
    let resumed_at = writes
        .commits_after(20, "writes after the takeover")
        .await?;
    // Lag, time to catch up and rows applied reach the collector, for
    // this job, from the worker that streams now.
    for metric in [
        "godwit.stream.lag",
        "godwit.stream.lag_time",
        "godwit.stream.catch_up_eta",
        "godwit.stream.retained_wal",
    ] {
        wait_until(
            &format!("{metric} exported"),
            Duration::from_secs(20),
            || async {
                Ok((!collector.points(metric, "job", "lost-worker").is_empty()).then_some(()))
            },
        )
        .await?;
    }
    wait_until("rows applied exported", Duration::from_secs(20), || async {
        let applied = collector.points("godwit.stream.rows", "job", "lost-worker");
        Ok(applied.iter().any(|p| p.value > 0.0).then_some(()))
    })
    .await?;
    // The debrief's material while the job streams: the stream's run is
    // in its staged history, not ended.
    let streaming: serde_json::Value = serde_json::from_slice(&crate::debrief::report(
        "lost-worker",
        "json",
        &["--coordinator", &url],
    )?)?;
    assert!(
        streaming["history"]["phases"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p["name"] == "streaming" && p["ended_unix_ms"] == 0)),
        "{streaming}"
    );
    let output = godwit(&["verify", "--coordinator", &url, "lost-worker"])?;
    assert!(
        output.status.success(),
        "verify after the takeover: {}\n{}",
        describe(&output),
        other.log_text()
    );
    let output = godwit(&["cutover", "--coordinator", &url, "lost-worker"])?;
    assert!(
        output.status.success(),
        "cutover: {}\n{}\n{}",
        describe(&output),
        coordinator.log_text(),
        other.log_text()
    );
    writes.stop.store(true, Ordering::SeqCst);
    writer.await?;
    // Nothing doubled, nothing missing: every table the same on both sides.
    assert_same_tables(&src, &dst).await?;
    assert_writes_arrived(&dst, resumed_at).await?;
    assert!(
        other
            .log_text()
            .contains("change stream ended after the cutover")
    );
    wait_until(
        "the job's slot and publication to go",
        Duration::from_secs(60),
        || async { Ok((stream_leftovers(&src).await? == 0).then_some(())) },
    )
    .await?;
    assert_stream_trace(&collector).await?;
    // The debrief through the coordinator, as a PDF: the stream's lag over
    // time, the cutover's frozen time and steps (staged as the job ends).
    let text = wait_until(
        "the debrief of the cutover",
        Duration::from_secs(30),
        || async {
            let pdf = crate::debrief::report("lost-worker", "pdf", &["--coordinator", &url])?;
            let text = crate::debrief::pdf_text(job.dir.path(), &pdf)?;
            Ok(text.contains("refused writes for").then_some(text))
        },
    )
    .await?;
    for expected in [
        "Migration of job lost-worker",
        "streaming",
        "Change stream: lag over time",
        "Cutover",
        "succeeded",
        "check changed rows",
        "Audit trail",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    // The lag chart has a point for each second the stream reported in,
    // not one.
    let ended: serde_json::Value = serde_json::from_slice(&crate::debrief::report(
        "lost-worker",
        "json",
        &["--coordinator", &url],
    )?)?;
    let samples = ended["history"]["lag"].as_array().map_or(0, Vec::len);
    assert!(samples >= 5, "{samples} lag sample(s): {ended}");
    Ok(())
}

/// The stream's part of the job's trace: the change batches the workers
/// applied under the stream's span, the cutover and its steps under the
/// job's.
async fn assert_stream_trace(collector: &OtlpReceiver) -> anyhow::Result<()> {
    let tree = crate::traces::Tree::of_job(collector, "lost-worker").await?;
    tree.assert_connected()?;
    let job = tree.one("job")?;
    assert_eq!(tree.one("godwit submit")?.span, job.parent);
    let streaming = tree.one("streaming")?;
    assert_eq!(streaming.parent, job.span);
    let batches = tree.children(streaming);
    assert!(
        !batches.is_empty() && batches.iter().all(|b| b.name == "change batch"),
        "{}",
        tree.outline()
    );
    let applied: i64 = batches
        .iter()
        .map(|b| b.attribute("godwit.rows").unwrap_or("0").parse::<i64>())
        .sum::<Result<i64, _>>()?;
    assert!(applied > 0, "no row in the change batches");
    assert!(
        batches.iter().all(|b| b.service == "godwit-worker"),
        "{}",
        tree.outline()
    );
    let cutover = tree.one("cutover")?;
    assert_eq!(cutover.parent, job.span);
    assert_eq!(cutover.attribute("godwit.succeeded"), Some("true"));
    let steps = tree.child_names(cutover);
    for step in [
        "check changed rows",
        "drain",
        "freeze",
        "frozen",
        "sequences",
        "verify before the freeze",
    ] {
        assert!(steps.iter().any(|s| s == step), "cutover steps: {steps:?}");
    }
    Ok(())
}

/// What the worker may hold in data memory: less than the one source
/// transaction below carries, so holding it whole would kill the worker.
const WORKER_DATA_LIMIT: u64 = 56 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_larger_than_the_worker_s_memory_streams_through_in_segments()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    src.batch_execute(
        "ALTER TABLE events REPLICA IDENTITY FULL; \
         CREATE TABLE wide (id integer PRIMARY KEY, payload text); \
         ALTER TABLE wide ALTER COLUMN payload SET STORAGE EXTERNAL",
    )
    .await?;
    source.hand_tables_to_migrator("shop").await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-stream-memory";
    let (_coordinator, url) = deployment(&etcd, root).await?;
    let worker = Service::worker_with_memory_limit(
        "worker-small",
        &etcd.url(),
        root,
        &url,
        WORKER_DATA_LIMIT,
    )?;
    let job =
        Job::create(|staging| spec_body("big-tx", &source, &target, staging) + "\nchanges: {}")?;
    let submitted = godwit(&["submit", "--coordinator", &url, job.spec()])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    wait_for_streaming(&url, "big-tx").await?;

    // One transaction writes more than the worker may hold.
    src.batch_execute(
        "INSERT INTO wide SELECT g, repeat(md5(g::text), 256) FROM generate_series(1, 9000) g",
    )
    .await?;
    let carried: i64 = src
        .query_one("SELECT sum(octet_length(payload)) FROM wide", &[])
        .await?
        .get(0);
    assert!(
        carried as u64 > WORKER_DATA_LIMIT,
        "the transaction ({carried} bytes of values) fits in the worker's limit"
    );
    let worker = std::sync::Mutex::new(worker);
    wait_until(
        "the large transaction to land on the target",
        Duration::from_secs(600),
        || async {
            {
                let mut worker = worker.lock().expect("worker");
                if let Some(exited) = worker.try_wait()? {
                    anyhow::bail!("the worker died ({exited:?}):\n{}", worker.log_text());
                }
            }
            let landed: i64 = dst
                .query_one(
                    "SELECT count(*) FROM wide WHERE payload = repeat(md5(id::text), 256)",
                    &[],
                )
                .await?
                .get(0);
            Ok((landed == 9_000).then_some(()))
        },
    )
    .await?;
    let log = worker.lock().expect("worker").log_text();
    assert!(
        log.contains("spilled to staging"),
        "the read was not spilled:\n{log}"
    );
    assert!(
        log.matches("taking the change stream").count() == 1,
        "the stream restarted:\n{log}"
    );
    let output = godwit(&["verify", "--coordinator", &url, "big-tx"])?;
    assert!(output.status.success(), "verify: {}", describe(&output));
    assert_same_tables(&src, &dst).await?;
    Ok(())
}
