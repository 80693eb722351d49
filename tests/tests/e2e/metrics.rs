//! Prometheus metrics of a distributed deployment, scraped over HTTP
//! while a job runs: the coordinator's view of the job's work items by
//! state moves from pending to done and counts one matching
//! verification; the worker's rows, bytes and chunks per job and table
//! add up to what the databases themselves count; `status`, `watch` and
//! `report` print the same job as JSON for automation; the job's trace
//! reaches the suite's OTLP collector from the CLI, the coordinator and
//! the worker as one tree.

use std::time::Duration;

use godwit_tests::otlp::OtlpReceiver;
use godwit_tests::{
    Etcd, Job, Service, describe, free_port, run_godwit, source_and_target, spec_body, user_tables,
    wait_until,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The text a `GET /metrics` answers.
async fn scrape(address: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: godwit\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "scrape of {address}: {answer}"
    );
    Ok(answer)
}

/// The sum of a metric's samples whose labels include every one of
/// `labels` (`key="value"`); None when it has none.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| l.starts_with(&format!("{name}{{"))) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if labels.iter().all(|l| series.contains(l)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    found
}

/// Every row of the source's tables, as the source counts them.
async fn total_rows(source: &godwit_tests::PgCluster) -> anyhow::Result<f64> {
    let src = source.client("shop").await?;
    let mut total = 0i64;
    for table in user_tables(&src).await? {
        let rows: i64 = src
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        total += rows;
    }
    Ok(total as f64)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_during_a_job_shows_its_work_rows_and_verification_move() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let job = Job::create(|staging| spec_body("measured", &source, &target, staging))?;
    let etcd = Etcd::start()?;
    let root = "/godwit-metrics";
    let coordinator_metrics = format!("127.0.0.1:{}", free_port()?);
    // Every process sends its spans to the suite's collector, over TLS.
    let pki = godwit_tests::pki::Pki::new("otlp")?;
    let collector = OtlpReceiver::start_tls(&pki).await?;
    let traced = |mut env: Vec<(String, String)>| {
        env.extend(collector.env());
        env
    };
    let (coordinator, url) = Service::coordinator(
        &etcd.url(),
        root,
        &traced(vec![(
            "GODWIT__COORDINATOR__METRICS_LISTEN".to_owned(),
            coordinator_metrics.clone(),
        )]),
    )?;
    let submitted = run_godwit(
        &["submit", "--coordinator", &url, job.spec()],
        &collector.env(),
    )?;
    assert!(submitted.status.success(), "{}", describe(&submitted));

    // No worker yet: the coordinator awaits the job's partitions, all
    // pending.
    let job_label = "job=\"measured\"";
    let pending = wait_until(
        "the copy's items to be pending",
        Duration::from_secs(60),
        || async {
            let text = scrape(&coordinator_metrics).await?;
            Ok(sample(
                &text,
                "godwit_work_items",
                &[job_label, "kind=\"copy\"", "state=\"pending\""],
            )
            .filter(|n| *n > 0.0))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", coordinator.log_text()))?;

    let worker_metrics = format!("127.0.0.1:{}", free_port()?);
    let _worker = Service::worker(
        "worker-1",
        &etcd.url(),
        root,
        &url,
        &[],
        &traced(vec![(
            "GODWIT__WORKER__METRICS_LISTEN".to_owned(),
            worker_metrics.clone(),
        )]),
    )?;
    let watched = run_godwit(&["watch", "--coordinator", &url, "measured"], &[])?;
    assert!(watched.status.success(), "{}", describe(&watched));
    // Not a terminal: plain progress lines, no bars.
    assert!(!String::from_utf8_lossy(&watched.stderr).contains("[=="));
    // At a terminal (a pseudo-terminal by `script`): the job's bar with
    // throughput and ETA, and a bar per table, all full.
    let at_terminal =
        godwit_tests::run_godwit_at_terminal(&["watch", "--coordinator", &url, "measured"])?;
    assert!(at_terminal.status.success(), "{}", describe(&at_terminal));
    let drawn = String::from_utf8_lossy(&at_terminal.stdout);
    assert!(
        drawn.contains(&format!("[{}]", "=".repeat(30))) && drawn.contains("eta"),
        "no job bar:\n{drawn}"
    );
    assert!(
        drawn.contains(&format!("[{}] ", "=".repeat(20))),
        "no table bars:\n{drawn}"
    );

    let text = scrape(&coordinator_metrics).await?;
    let copy = [job_label, "kind=\"copy\""];
    assert_eq!(
        sample(
            &text,
            "godwit_work_items",
            &[copy[0], copy[1], "state=\"done\""]
        ),
        Some(pending),
        "every pending partition is done:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            "godwit_work_items",
            &[copy[0], copy[1], "state=\"pending\""]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "godwit_verifications_total",
            &[job_label, "result=\"match\""]
        ),
        Some(1.0),
        "{text}"
    );

    // The same job for automation: status, every job's status, the watch
    // of a finished job and its report, each as JSON.
    let json = |args: &[&str]| -> anyhow::Result<serde_json::Value> {
        let output = run_godwit(args, &[])?;
        anyhow::ensure!(output.status.success(), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        let first = text.lines().next().unwrap_or_default();
        // `watch` prints one document per line; the others one document.
        Ok(serde_json::from_str(&text).or_else(|_| serde_json::from_str(first))?)
    };
    let one = json(&[
        "status",
        "--coordinator",
        &url,
        "measured",
        "--output",
        "json",
    ])?;
    assert_eq!(one["job_id"], "measured", "{one}");
    assert_eq!(one["state"], "done", "{one}");
    assert_eq!(
        one["total"]["rows"].as_f64(),
        Some(total_rows(&source).await?),
        "{one}"
    );
    let all = json(&["status", "--coordinator", &url, "--output", "json"])?;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    let watched = json(&[
        "watch",
        "--coordinator",
        &url,
        "measured",
        "--output",
        "json",
    ])?;
    assert_eq!(watched["state"], "done", "{watched}");
    let report = json(&[
        "report",
        "--coordinator",
        &url,
        "measured",
        "--output",
        "json",
    ])?;
    assert_eq!(report["matched"], true, "{report}");

    // The worker's rows add up to the source's, table by table.
    let text = scrape(&worker_metrics).await?;
    let src = source.client("shop").await?;
    let mut total = 0.0;
    let mut counted = std::collections::HashMap::new();
    for table in user_tables(&src).await? {
        let rows: i64 = src
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        counted.insert(table.clone(), rows);
        let label = format!("table=\"{table}\"");
        let loaded = sample(&text, "godwit_copy_rows_total", &[job_label, &label]).unwrap_or(0.0);
        assert_eq!(loaded, rows as f64, "{table}:\n{text}");
        total += loaded;
    }
    assert!(total > 0.0);
    for name in [
        "godwit_copy_read_bytes_total",
        "godwit_copy_staged_bytes_total",
        "godwit_copy_chunks_total",
    ] {
        assert!(
            sample(&text, name, &[job_label]).is_some_and(|v| v > 0.0),
            "{name} did not move:\n{text}"
        );
    }

    // One trace from `godwit submit` through the coordinator to the
    // worker's chunks, its tables' rows as the source counts them.
    let tree = crate::traces::Tree::of_job(&collector, "measured").await?;
    crate::traces::assert_copy_tree(&tree, "godwit submit", &counted)?;
    Ok(())
}
