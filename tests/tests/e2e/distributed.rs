//! The distributed deployment end to end: a real etcd, the
//! `godwit-coordinator` binary, `godwit-worker` binaries and the operator CLI.

use std::time::Duration;

use godwit_proto::v1::godwit_client::GodwitClient;
use godwit_proto::v1::{GetJobRequest, JobState};
use godwit_tests::{
    Etcd, Job, Service, assert_same_tables, describe, run_godwit, source_and_target, spec_body,
    table_digest, user_tables, wait_until,
};

/// Submits the job and waits until it holds its snapshot and publishes its
/// partitions (with no worker running, it then stays in `copying`).
async fn submit_and_wait_for_copying(coordinator: &str, job: &Job, id: &str) -> anyhow::Result<()> {
    let submitted = run_godwit(&["submit", "--coordinator", coordinator, job.spec()], &[])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    wait_until(
        "the job to reach copying",
        Duration::from_secs(60),
        || async {
            Ok((job_state(coordinator, id).await? == JobState::Copying as i32).then_some(()))
        },
    )
    .await
}

async fn job_state(coordinator: &str, job: &str) -> anyhow::Result<i32> {
    let mut client = GodwitClient::connect(coordinator.to_owned()).await?;
    let status = client
        .get_job(GetJobRequest {
            job_id: job.to_owned(),
        })
        .await?
        .into_inner();
    Ok(status.state)
}

#[tokio::test(flavor = "multi_thread")]
async fn distributed_job_runs_on_etcd_with_two_workers() -> anyhow::Result<()> {
    let (source, target) = source_and_target(4).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-distributed";
    let (coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let w1 = Service::worker(
        "worker-1",
        &etcd.url(),
        root,
        &url,
        &["--concurrency", "1"],
        &[],
    )?;
    let w2 = Service::worker(
        "worker-2",
        &etcd.url(),
        root,
        &url,
        &["--concurrency", "1"],
        &[],
    )?;
    // Small partitions: several copy partitions and verification key
    // ranges per table, for two workers to share.
    let job = Job::create(|staging| {
        spec_body("distributed", &source, &target, staging)
            .replace("partition_size: 512KiB", "partition_size: 64KiB")
    })?;

    let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    assert_eq!(
        String::from_utf8_lossy(&submitted.stdout).trim(),
        "distributed"
    );

    // The same id again, while it runs or once it is done, is refused: its
    // record and history stay as they are.
    let submit_again = || -> anyhow::Result<()> {
        let again = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
        assert_eq!(again.status.code(), Some(2), "{}", describe(&again));
        let again_err = String::from_utf8_lossy(&again.stderr);
        assert!(again_err.contains("already exists"), "{again_err}");
        Ok(())
    };
    submit_again()?;

    let watched = run_godwit(&["watch", "--coordinator", &url, "distributed"], &[])?;
    assert!(watched.status.success(), "{}", describe(&watched));
    submit_again()?;
    assert_eq!(
        job_state(&url, "distributed").await?,
        JobState::Done as i32,
        "a refused submission changed the finished job"
    );
    let report = String::from_utf8_lossy(&watched.stdout);
    assert!(
        report.contains("distributed done") && report.contains("public.events"),
        "{report}"
    );

    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    assert_same_tables(&src, &dst).await?;

    // The source's password came from its password file: it is nowhere in
    // etcd's keyspace and nowhere in staging. A spec carrying one inline is
    // refused, naming the field and the fix.
    let password = source.role_password(godwit_tests::pg::MIGRATOR);
    let mut etcd_client = etcd_client::Client::connect([etcd.url()], None).await?;
    let everything = etcd_client
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await?;
    assert!(
        everything.kvs().len() > 10,
        "etcd holds too little to prove anything"
    );
    for kv in everything.kvs() {
        assert!(
            !kv.value()
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "etcd key {} holds the source password",
            String::from_utf8_lossy(kv.key())
        );
    }
    for path in Job::files_under(&job.staging_dir()) {
        let bytes = std::fs::read(&path)?;
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "{} holds the source password",
            path.display()
        );
    }
    let inline = Job::create(|staging| {
        spec_body("inline-password", &source, &target, staging).replace(
            &source.migrator_url("shop"),
            &source.role_url_with_password(godwit_tests::pg::MIGRATOR, "shop"),
        )
    })?;
    let refused = run_godwit(&["submit", "--coordinator", &url, inline.spec()], &[])?;
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("`source` carries a password") && message.contains("passfile"),
        "{message}"
    );

    let status = run_godwit(&["status", "--coordinator", &url], &[])?;
    assert!(status.status.success(), "{}", describe(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("checked"));

    // The coordinator verifies the job it ran and stores the sealed report;
    // the content is compared in key ranges the workers lease.
    let report_path = job.dir.path().join("report.json");
    let report_arg = report_path.to_str().unwrap_or_default();
    let verify = || {
        run_godwit(
            &[
                "verify",
                "--coordinator",
                &url,
                "distributed",
                "--report",
                report_arg,
            ],
            &[],
        )
    };
    let compared = |log: String| log.matches("range compared").count();
    // The job's own final check compared the same ranges on the workers.
    let by_the_final_check = (compared(w1.log_text()) + compared(w2.log_text())) as u64;
    let verified = verify()?;
    assert!(verified.status.success(), "{}", describe(&verified));
    let summary = String::from_utf8_lossy(&verified.stdout);
    assert!(
        summary.contains("verification of job distributed: MATCH"),
        "{summary}"
    );
    assert!(summary.contains("report stored, sealed, at"), "{summary}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    let ranges: Vec<u64> = report["tables"]
        .as_array()
        .map(|tables| tables.iter().filter_map(|t| t["ranges"].as_u64()).collect())
        .unwrap_or_default();
    assert!(
        ranges.iter().any(|n| *n > 1),
        "no table was cut into several key ranges: {ranges:?}"
    );
    let total: u64 = ranges.iter().sum();
    assert_eq!(
        by_the_final_check, total,
        "the final check compared every key range once, on the workers"
    );
    assert_eq!(
        (compared(w1.log_text()) + compared(w2.log_text())) as u64 - by_the_final_check,
        total,
        "every key range is compared once, by a worker"
    );
    assert_eq!(compared(coordinator.log_text()), 0);

    let row = dst
        .query_one(
            "SELECT customer_id, order_no FROM orders ORDER BY 1, 2 LIMIT 1",
            &[],
        )
        .await?;
    let (customer, order): (i64, i32) = (row.get(0), row.get(1));
    dst.execute(
        "DELETE FROM orders WHERE customer_id = $1 AND order_no = $2",
        &[&customer, &order],
    )
    .await?;
    let deleted = format!("{customer},{order}");
    let differs = verify()?;
    assert_eq!(differs.status.code(), Some(1), "{}", describe(&differs));
    assert!(String::from_utf8_lossy(&differs.stdout).contains("public.orders"));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    let orders = report["tables"]
        .as_array()
        .and_then(|tables| tables.iter().find(|t| t["table"] == "public.orders"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        orders["content"]["missing"],
        serde_json::json!([format!("({deleted})")]),
        "{orders}"
    );
    // The ranges' findings name keys: staged sealed, never in plain text.
    let findings: Vec<_> = Job::files_under(&job.staging_dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("reports/ranges"))
        .collect();
    assert!(!findings.is_empty(), "no sealed range finding staged");
    for path in findings {
        let bytes = std::fs::read(&path)?;
        assert!(
            bytes.starts_with(b"GDWC"),
            "{} is not sealed",
            path.display()
        );
        assert!(!String::from_utf8_lossy(&bytes).contains(&format!("({deleted})")));
    }
    let unknown = run_godwit(&["verify", "--coordinator", &url, "no-such-job"], &[])?;
    assert_eq!(unknown.status.code(), Some(2), "{}", describe(&unknown));
    // The last report, as stored, handed over later.
    let shown = run_godwit(&["report", "--coordinator", &url, "distributed"], &[])?;
    assert!(shown.status.success(), "{}", describe(&shown));
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("verification of job distributed: DIFFERENT"),
        "{shown}"
    );
    assert!(shown.contains("public.orders"), "{shown}");

    // Rejected input over gRPC: a precise message and exit code 2.
    let bad = Job::create(|staging| {
        format!(
            "{}\nworkerz: 1",
            spec_body("bad", &source, &target, staging)
        )
    })?;
    let rejected = run_godwit(&["submit", "--coordinator", &url, bad.spec()], &[])?;
    assert_eq!(rejected.status.code(), Some(2), "{}", describe(&rejected));
    assert!(String::from_utf8_lossy(&rejected.stderr).contains("unknown field `workerz`"));
    let unknown = run_godwit(&["watch", "--coordinator", &url, "no-such-job"], &[])?;
    assert_eq!(unknown.status.code(), Some(2), "{}", describe(&unknown));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("job no-such-job not found"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_made_to_the_source_during_the_copy_do_not_reach_the_target() -> anyhow::Result<()> {
    let (source, target) = source_and_target(2).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-snapshot";
    let (_coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let job = Job::create(|staging| spec_body("snapshot", &source, &target, staging))?;

    let src = source.client("shop").await?;
    let tables = user_tables(&src).await?;
    let mut before = Vec::new();
    for table in &tables {
        before.push(table_digest(&src, table).await?);
    }

    // No worker yet: the job holds its snapshot and waits in `copying`.
    submit_and_wait_for_copying(&url, &job, "snapshot").await?;

    src.batch_execute(
        "INSERT INTO customers (name, email) VALUES ('late', 'late@example.com'); \
         UPDATE orders SET note = 'changed after the snapshot' WHERE order_no % 3 = 0; \
         DELETE FROM events WHERE kind = 'buy'; \
         INSERT INTO sales.invoices (customer_id, total) VALUES (1, 1.00)",
    )
    .await?;

    let _worker = Service::worker("worker-1", &etcd.url(), root, &url, &[], &[])?;
    let watched = run_godwit(&["watch", "--coordinator", &url, "snapshot"], &[])?;
    assert!(watched.status.success(), "{}", describe(&watched));

    let dst = target.client("shop").await?;
    for (table, expected) in tables.iter().zip(&before) {
        let now_at_source = table_digest(&src, table).await?;
        let at_target = table_digest(&dst, table).await?;
        assert_eq!(
            &at_target, expected,
            "{table} on the target is not the source as of the snapshot"
        );
        if [
            "public.customers",
            "public.orders",
            "public.events",
            "sales.invoices",
        ]
        .contains(&table.as_str())
        {
            assert_ne!(
                &now_at_source, expected,
                "{table} was not changed at the source: the test proves nothing"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_finished_job_rerun_adds_no_duplicates() -> anyhow::Result<()> {
    let (source, target) = source_and_target(4).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-half";
    let (mut coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let job = Job::create(|staging| spec_body("half", &source, &target, staging))?;
    submit_and_wait_for_copying(&url, &job, "half").await?;

    let mut worker = Service::worker(
        "worker-1",
        &etcd.url(),
        root,
        &url,
        &["--concurrency", "1"],
        &[],
    )?;
    let dst = target.client("shop").await?;
    wait_until(
        "some chunks in the target ledger",
        Duration::from_secs(60),
        || async {
            let chunks: i64 = dst
                .query_one("SELECT count(*) FROM godwit.applied_chunks", &[])
                .await?
                .get(0);
            Ok((chunks >= 2).then_some(()))
        },
    )
    .await?;
    worker.signal("STOP")?;
    let partial: i64 = dst
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .get(0);
    let finished: bool = dst
        .query_one(
            "SELECT post_data_done FROM godwit.jobs WHERE job_id = 'half'",
            &[],
        )
        .await?
        .get(0);
    assert!(!finished, "the job finished before it could be interrupted");
    worker.kill();
    coordinator.kill();

    // Re-run the same job, embedded this time: no row may be doubled.
    let rerun = run_godwit(&["run", job.spec()], &[])?;
    assert!(rerun.status.success(), "{}", describe(&rerun));
    let src = source.client("shop").await?;
    assert_same_tables(&src, &dst).await?;
    let events: i64 = dst
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .get(0);
    assert!(events >= partial, "rows went missing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_job_ends_cancelled_and_releases_its_slot() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-cancel";
    let (_coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let job = Job::create(|staging| spec_body("cancelled", &source, &target, staging))?;
    submit_and_wait_for_copying(&url, &job, "cancelled").await?;
    let src = source.client("shop").await?;
    let slots: i64 = src
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await?
        .get(0);
    assert_eq!(slots, 1, "a copying job holds its replication slot");

    let cancelled = run_godwit(&["cancel", "--coordinator", &url, "cancelled"], &[])?;
    assert!(cancelled.status.success(), "{}", describe(&cancelled));
    let watched = run_godwit(&["watch", "--coordinator", &url, "cancelled"], &[])?;
    assert_eq!(watched.status.code(), Some(1), "{}", describe(&watched));
    assert!(
        String::from_utf8_lossy(&watched.stdout).contains("cancelled cancelled"),
        "{}",
        describe(&watched)
    );
    wait_until(
        "the replication slot to be dropped",
        Duration::from_secs(30),
        || async {
            let slots: i64 = src
                .query_one("SELECT count(*) FROM pg_replication_slots", &[])
                .await?
                .get(0);
            Ok((slots == 0).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_differs_from_the_source_fails_the_job_naming_the_table() -> anyhow::Result<()>
{
    let (source, target) = source_and_target(1).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-check";
    let (_coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let job = Job::create(|staging| spec_body("checked", &source, &target, staging))?;
    submit_and_wait_for_copying(&url, &job, "checked").await?;

    // Something on the target alters rows as they arrive.
    let dst = target.client("shop").await?;
    dst.batch_execute(
        "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN IF NEW.order_no = 7 THEN NEW.amount := NEW.amount + 1; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER tamper BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION tamper()",
    )
    .await?;
    let _worker = Service::worker("worker-1", &etcd.url(), root, &url, &[], &[])?;
    let watched = run_godwit(&["watch", "--coordinator", &url, "checked"], &[])?;
    assert_eq!(watched.status.code(), Some(1), "{}", describe(&watched));
    let report = String::from_utf8_lossy(&watched.stdout);
    assert!(report.contains("checked failed"), "{report}");
    assert!(
        report.contains("target differs from source in public.orders")
            && report.contains("contents differ"),
        "{report}"
    );
    assert!(
        !report.contains("public.customers ("),
        "an intact table was reported: {report}"
    );
    Ok(())
}

/// A job's `retention` runs out after it ends: the coordinator deletes its
/// staged objects and shreds its data key, and says so.
#[tokio::test(flavor = "multi_thread")]
async fn staged_data_is_purged_when_the_retention_runs_out() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-retention";
    let (coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    let _worker = Service::worker("worker-1", &etcd.url(), root, &url, &[], &[])?;
    let job = Job::create(|staging| {
        spec_body("kept-briefly", &source, &target, staging) + "\nretention: 2s"
    })?;
    let submitted = run_godwit(&["submit", "--coordinator", &url, job.spec()], &[])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    let watched = run_godwit(&["watch", "--coordinator", &url, "kept-briefly"], &[])?;
    assert!(watched.status.success(), "{}", describe(&watched));
    assert!(
        !Job::files_under(&job.staging_dir()).is_empty(),
        "nothing was staged"
    );
    // Everything goes but the audit trail, which proves what happened; the
    // coordinator says so once it has recorded the purge.
    wait_until(
        "the retention to purge the staged data",
        Duration::from_secs(60),
        || async {
            let left = Job::files_under(&job.staging_dir())
                .into_iter()
                .filter(|p| !godwit_tests::is_audit_trail(p))
                .count();
            let said = coordinator.log_text().contains("retention ran out");
            Ok((left == 0 && said).then_some(()))
        },
    )
    .await?;
    // The target keeps the migrated data; only staging is gone.
    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    assert_same_tables(&src, &dst).await?;
    Ok(())
}
