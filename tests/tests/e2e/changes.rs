//! Change streaming and cutover end to end: an application keeps writing to
//! the source through the copy, the streaming, verifications and cutover
//! attempts; the real `godwit` binary serves the API in-process.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::application::{
    application_transactions, assert_writes_arrived, start_writer, stream_leftovers,
};
use godwit_tests::{
    Etcd, FaultProxy, Job, PgCluster, Running, Service, assert_same_tables, bin, describe,
    free_port, run_godwit, source_and_target, spec_body, wait_for_streaming, wait_until,
};

/// What a command printed, stdout then stderr.
fn said(output: &std::process::Output) -> String {
    let (out, err) = (&output.stdout, &output.stderr);
    format!(
        "{}{}",
        String::from_utf8_lossy(out),
        String::from_utf8_lossy(err)
    )
}

fn godwit(args: &[&str]) -> anyhow::Result<std::process::Output> {
    run_godwit(args, &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_stream_verify_under_writes_and_cut_over() -> anyhow::Result<()> {
    let (source, target) = source_and_target(2).await?;
    let src = source.client("shop").await?;
    let dst = target.client("shop").await?;
    src.batch_execute(
        "ALTER TABLE events REPLICA IDENTITY FULL; \
         CREATE TABLE tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text); \
         INSERT INTO tickets (title) VALUES ('first')",
    )
    .await?;
    source.hand_tables_to_migrator("shop").await?;
    let job = Job::create(|staging| {
        spec_body("streaming", &source, &target, staging) + "\nchanges: { freeze_timeout_ms: 3000 }"
    })?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let (writes, writer) = start_writer(&source)?;

    let log = std::fs::File::create(job.dir.path().join("run.log"))?;
    let mut run = Running(
        Command::new(bin("godwit")?)
            .args(["run", job.spec(), "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?,
    );
    wait_for_streaming(&url, "streaming").await?;
    writes
        .commits_after(20, "the application to write while changes stream")
        .await?;

    // Compared as they are, both sides differ by the changes in flight: a
    // verification that is not lined up with the stream is refused.
    let output = godwit(&["verify", job.spec()])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--coordinator"),
        "{}",
        describe(&output)
    );

    // While the application writes, verification lines both sides up.
    let report = job.dir.path().join("streaming-report.json");
    let output = godwit(&[
        "verify",
        "--coordinator",
        &url,
        "streaming",
        "--report",
        &report.display().to_string(),
    ])?;
    assert!(
        output.status.success(),
        "verify while streaming: {}",
        describe(&output)
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    assert_eq!(json["matched"], true);

    // What operators see while the application writes (figures for the
    // record, not asserted: the machine is shared).
    let status = godwit(&["status", "--coordinator", &url, "streaming"])?;
    eprintln!("{}", String::from_utf8_lossy(&status.stdout));

    // A session holding a conflicting lock: the freeze gives up, the source
    // is left as it was.
    let blocker = source.client("shop").await?;
    blocker
        .batch_execute("BEGIN; LOCK TABLE orders IN SHARE MODE")
        .await?;
    let output = godwit(&["cutover", "--coordinator", &url, "streaming"])?;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("cannot freeze the source's tables within 3000 ms"),
        "{}",
        describe(&output)
    );
    blocker.batch_execute("ROLLBACK").await?;

    // A real difference is found while changes stream, with its key.
    dst.batch_execute("UPDATE surveys SET moods = '{}' WHERE id = 1")
        .await?;
    let output = godwit(&["verify", "--coordinator", &url, "streaming"])?;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("moods") && stdout.contains("(1)"),
        "{stdout}"
    );

    // The verification before the freeze finds the difference: refused,
    // nothing frozen, changes keep streaming.
    let output = godwit(&["cutover", "--coordinator", &url, "streaming"])?;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let text = said(&output);
    assert!(
        text.contains("rolled back")
            && text.contains("nothing was frozen")
            && text.contains("moods"),
        "{text}"
    );
    dst.batch_execute(
        "UPDATE surveys SET moods = ARRAY['sad', 'happy', NULL]::mood[] WHERE id = 1",
    )
    .await?;

    // A row the stream applies after that verification differs on the
    // target (a trigger there, armed when the cutover's verification
    // ends, alters what the stream inserts): the frozen check of the keys
    // changed since finds it, names it, and rolls back.
    dst.batch_execute(crate::armed_corruption::ARM_A_CORRUPTION)
        .await?;
    let output = godwit(&["cutover", "--coordinator", &url, "streaming"])?;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let text = said(&output);
    let corrupted = crate::armed_corruption::altered_keys(&dst).await?;
    assert!(!corrupted.is_empty(), "the trigger altered no row: {text}");
    assert!(
        text.contains("rolled back")
            && text.contains("changed since the verification")
            && text.contains(&format!("({})", corrupted[0])),
        "{text}"
    );
    writes
        .commits_after(10, "the source to take writes after the rollback")
        .await?;
    assert_eq!(
        writes.refused.load(Ordering::SeqCst),
        0,
        "{:?}",
        writes.last_error.lock().map(|e| e.clone())
    );

    // Mended, the cutover succeeds and the source refuses further writes.
    dst.batch_execute(
        "DROP TRIGGER alter_inserts ON customers; DROP TRIGGER arm ON godwit.changed_keys; \
         DROP TABLE public.armed; \
         UPDATE customers SET name = replace(name, ' altered on the target', '') \
         WHERE name LIKE '% altered on the target'",
    )
    .await?;
    let output = godwit(&["cutover", "--coordinator", &url, "streaming"])?;
    assert!(output.status.success(), "cutover: {}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(stdout.contains("source frozen"), "{stdout}");
    eprintln!("{stdout}");
    wait_until(
        "the application's writes to be refused",
        Duration::from_secs(30),
        || async { Ok((writes.refused.load(Ordering::SeqCst) > 0).then_some(())) },
    )
    .await?;
    writes.stop.store(true, Ordering::SeqCst);
    writer.await?;
    let refusal = writes
        .last_error
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    assert!(
        refusal.contains("migrated by godwit job streaming"),
        "{refusal}"
    );

    let status = run
        .exit_status(
            "godwit run to end after the cutover",
            Duration::from_secs(60),
        )
        .await?;
    assert!(status.success(), "godwit run exited {status:?}");

    // Independent of the copy path: every row the application committed,
    // nothing else, by each database's own digest.
    let rows = assert_same_tables(&src, &dst).await?;
    let written = application_transactions(&dst).await?;
    assert!(
        written >= 40,
        "only {written} application transactions streamed ({rows} rows compared)"
    );
    let moved: i64 = dst
        .query_one(
            "SELECT count(*) FROM sales.invoices WHERE id > 1000000",
            &[],
        )
        .await?
        .get(0);
    assert!(moved > 0, "no primary-key change arrived");
    let cascaded: i64 = dst
        .query_one(
            "SELECT count(*) FROM sales.invoices WHERE customer_id IS NULL AND total = 7",
            &[],
        )
        .await?
        .get(0);
    assert!(cascaded > 0, "no customer's delete reached its invoice");

    // The foreign keys the stream changed are back as the source defines
    // them, actions included, and validated.
    let keys = "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated \
                FROM pg_constraint WHERE contype = 'f' ORDER BY 1, 2";
    let defined = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String, String, bool)> {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    let at_target = defined(dst.query(keys, &[]).await?);
    assert_eq!(defined(src.query(keys, &[]).await?), at_target);
    assert!(
        at_target
            .iter()
            .any(|(_, _, d, _)| d.contains("ON DELETE CASCADE")),
        "{at_target:?}"
    );

    // The stream's slot and publication are gone from the source.
    assert_eq!(
        stream_leftovers(&src).await?,
        0,
        "slot or publication left on the source"
    );

    // Change batches were staged, sealed: no application value in plain text.
    let batches: Vec<_> = Job::files_under(&job.staging_dir())
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "changes"))
        .collect();
    assert!(!batches.is_empty(), "no change batch staged");
    for path in &batches {
        let bytes = std::fs::read(path)?;
        assert!(
            !bytes
                .windows(b"writer body".len())
                .any(|w| w == b"writer body"),
            "{} holds plaintext",
            path.display()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_without_replica_identity_is_refused_before_anything_is_written()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let job = Job::create(|staging| {
        spec_body("no-identity", &source, &target, staging) + "\nchanges: {}"
    })?;
    let output = godwit(&["run", job.spec()])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("public.events") && stderr.contains("REPLICA IDENTITY FULL"),
        "{stderr}"
    );
    let src = source.client("shop").await?;
    let dst = target.client("shop").await?;
    assert_eq!(stream_leftovers(&src).await?, 0);
    let tables: i64 = dst
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')", &[])
        .await?
        .get(0);
    assert_eq!(tables, 0, "the target was written to");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_coordinator_resumes_the_stream_when_the_leader_dies_without_copying_again()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(2).await?;
    let src = source.client("shop").await?;
    let dst = target.client("shop").await?;
    src.batch_execute(
        "ALTER TABLE events REPLICA IDENTITY FULL; \
         CREATE TABLE tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text)",
    )
    .await?;
    source.hand_tables_to_migrator("shop").await?;
    let etcd = Etcd::start()?;
    let root = "/godwit-stream-restart";
    let (mut coordinator, url) = Service::coordinator(&etcd.url(), root, &[])?;
    coordinator
        .logged("leading the deployment", Duration::from_secs(30))
        .await?;
    let (standby, standby_url) = Service::coordinator(&etcd.url(), root, &[])?;
    standby
        .logged(
            "another coordinator leads; following",
            Duration::from_secs(30),
        )
        .await?;
    let worker = Service::worker("worker-1", &etcd.url(), root, &url, &[], &[])?;
    let job =
        Job::create(|staging| spec_body("restart", &source, &target, staging) + "\nchanges: {}")?;
    // Any coordinator takes a submission; the leader drives it.
    let submitted = godwit(&["submit", "--coordinator", &standby_url, job.spec()])?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    let (writes, writer) = start_writer(&source)?;
    wait_for_streaming(&url, "restart").await?;
    let copied_before: (i64, Option<std::time::SystemTime>) = {
        let row = dst
            .query_one(
                "SELECT count(*), max(applied_at) FROM godwit.applied_chunks",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };

    // Killed while changes stream and the application writes.
    writes.commits_after(20, "writes while streaming").await?;
    assert!(
        !standby.log_text().contains("taking over"),
        "the standby drove a job while another coordinator led:\n{}",
        standby.log_text()
    );
    // A coordinator that does not stream the job still verifies it: the
    // pin travels to the stream through the keyspace.
    let output = godwit(&["verify", "--coordinator", &standby_url, "restart"])?;
    assert!(
        output.status.success(),
        "verify through the standby: {}\n{}",
        describe(&output),
        coordinator.log_text()
    );
    coordinator.kill();
    // The standby leads once the killed coordinator's lease has run out.
    let (restarted, url) = (standby, standby_url);
    restarted
        .logged("resuming the change stream", Duration::from_secs(60))
        .await?;
    wait_for_streaming(&url, "restart").await?;
    let resumed_at = writes.commits_after(20, "writes after the restart").await?;
    let output = godwit(&["verify", "--coordinator", &url, "restart"])?;
    assert!(
        output.status.success(),
        "verify after the restart: {}",
        describe(&output)
    );

    // A coordinator that joins now follows the new leader; the cutover it
    // is asked for travels to the stream through the keyspace.
    let (follower, follower_url) = Service::coordinator(&etcd.url(), root, &[])?;
    follower
        .logged(
            "another coordinator leads; following",
            Duration::from_secs(30),
        )
        .await?;
    let output = godwit(&["cutover", "--coordinator", &follower_url, "restart"])?;
    assert!(
        output.status.success(),
        "cutover through a follower: {}\n{}\n{}",
        describe(&output),
        restarted.log_text(),
        worker.log_text()
    );
    assert!(
        !follower.log_text().contains("cutover: started"),
        "the follower ran the cutover itself:\n{}",
        follower.log_text()
    );
    assert!(restarted.log_text().contains("cutover: done"));
    writes.stop.store(true, Ordering::SeqCst);
    writer.await?;
    assert_same_tables(&src, &dst).await?;
    let copied_after: (i64, Option<std::time::SystemTime>) = {
        let row = dst
            .query_one(
                "SELECT count(*), max(applied_at) FROM godwit.applied_chunks",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    assert_eq!(
        copied_before, copied_after,
        "the restart copied chunks again"
    );
    assert_writes_arrived(&dst, resumed_at).await?;
    Ok(())
}

/// A streaming job run by `godwit run`, serving the API.
struct StreamingJob {
    job: Job,
    run: Running,
    log_path: std::path::PathBuf,
    url: String,
}

/// `godwit run` of a streaming job serving the API on a free port, its log
/// in the job's directory; returns once changes stream.
async fn stream_job(
    source: &PgCluster,
    target: &PgCluster,
    job_id: &str,
) -> anyhow::Result<StreamingJob> {
    let src = source.client("shop").await?;
    src.batch_execute("ALTER TABLE events REPLICA IDENTITY FULL")
        .await?;
    source.hand_tables_to_migrator("shop").await?;
    let job = Job::create(|staging| spec_body(job_id, source, target, staging) + "\nchanges: {}")?;
    let port = free_port()?;
    let log_path = job.dir.path().join("run.log");
    let run = Running(
        Command::new(bin("godwit")?)
            .args(["run", job.spec(), "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?,
    );
    let url = format!("http://127.0.0.1:{port}");
    if let Err(e) = wait_for_streaming(&url, job_id).await {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        anyhow::bail!("{e}\n--- godwit run log\n{log}");
    }
    Ok(StreamingJob {
        job,
        run,
        log_path,
        url,
    })
}

/// Waits for a streaming job to stop on its own; asserts it failed, naming
/// each of `pieces`, and left nothing pinning the source's WAL.
async fn assert_stream_stops(
    mut run: Running,
    log_path: &std::path::Path,
    source: &tokio_postgres::Client,
    pieces: &[&str],
) -> anyhow::Result<()> {
    let status = match run
        .exit_status("the job to stop", Duration::from_secs(120))
        .await
    {
        Ok(status) => status.code(),
        Err(e) => {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            anyhow::bail!("{e}\n--- godwit run log\n{log}");
        }
    };
    let log = std::fs::read_to_string(log_path)?;
    assert_eq!(status, Some(1), "{log}");
    for piece in pieces {
        assert!(log.contains(piece), "log lacks {piece:?}:\n{log}");
    }
    assert_eq!(
        stream_leftovers(source).await?,
        0,
        "slot or publication left on the source"
    );
    Ok(())
}

/// A batch the target refuses fails the same way every time: the stream
/// stops after a few attempts, names the table and what to do, and leaves
/// no slot or publication pinning the customer's WAL.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_the_target_refuses_stops_the_job_and_frees_the_source() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let src = source.client("shop").await?;
    let dst = target.client("shop").await?;
    let StreamingJob {
        run,
        log_path,
        job: _job,
        ..
    } = stream_job(&source, &target, "refused").await?;
    // The target loses a row behind godwit's back; the source updates it.
    dst.batch_execute("DELETE FROM surveys WHERE id = 1")
        .await?;
    src.batch_execute("UPDATE surveys SET moods = '{}' WHERE id = 1")
        .await?;
    assert_stream_stops(
        run,
        &log_path,
        &src,
        &[
            "change stream stopped after 5 failed attempts",
            "public.surveys",
            "migrate again into an empty target",
        ],
    )
    .await
}

/// A column's type changed on the source (a wider scale here): applied as
/// the target's old type, `1.2345` would land rounded to `1.23`. The stream
/// stops instead, naming the column and the statement to run.
#[tokio::test(flavor = "multi_thread")]
async fn a_column_type_changed_on_the_source_stops_the_stream_by_name() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let src = source.client("shop").await?;
    let StreamingJob {
        run,
        log_path,
        job: _job,
        ..
    } = stream_job(&source, &target, "retyped").await?;
    src.batch_execute(
        "ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12, 4); \
         UPDATE orders SET amount = 1.2345 WHERE order_no = (SELECT min(order_no) FROM orders)",
    )
    .await?;
    assert_stream_stops(
        run,
        &log_path,
        &src,
        &[
            "changed the type of column amount of public.orders from numeric(12,2) to numeric(12,4)",
            "ALTER TABLE \"public\".\"orders\" ALTER COLUMN \"amount\" TYPE numeric(12,4)",
        ],
    )
    .await
}

/// A row the target refuses (a unique key the platform already holds)
/// names its constraint and SQLSTATE, but its values reach neither the
/// log, nor the status operators read, nor the audit trail.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_row_never_shows_its_values() -> anyhow::Result<()> {
    const SECRET: &str = "leak-4f2a@example.com";
    let (source, target) = source_and_target(1).await?;
    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    let StreamingJob {
        job,
        run,
        log_path,
        url,
    } = stream_job(&source, &target, "redacted").await?;
    dst.batch_execute(&format!(
        "INSERT INTO customers (name, email) VALUES ('platform', '{SECRET}')"
    ))
    .await?;
    src.batch_execute(&format!(
        "INSERT INTO customers (name, email) VALUES ('customer', '{SECRET}')"
    ))
    .await?;
    // While the stream retries, operators see what failed, not the value.
    let shown = wait_until(
        "the refusal to show in the status",
        Duration::from_secs(60),
        || async {
            let status = godwit(&["status", "--coordinator", &url, "redacted"])?;
            let text = String::from_utf8_lossy(&status.stdout).into_owned();
            Ok(text.contains("23505").then_some(text))
        },
    )
    .await?;
    assert!(
        shown.contains("customers_email_key") && !shown.contains(SECRET),
        "{shown}"
    );
    assert_stream_stops(run, &log_path, &src, &["23505", "customers_email_key"]).await?;
    let log = std::fs::read_to_string(&log_path)?;
    assert!(!log.contains(SECRET), "the log holds a row value:\n{log}");
    let trail = godwit(&["audit", "show", job.spec(), "--json"])?;
    assert!(trail.status.success(), "{}", describe(&trail));
    let trail = String::from_utf8_lossy(&trail.stdout);
    assert!(
        trail.contains("job.end") && trail.contains("failed"),
        "{trail}"
    );
    assert!(
        !trail.contains(SECRET),
        "the audit trail holds a row value:\n{trail}"
    );
    Ok(())
}

/// The reply to the cutover's COMMIT is lost on the way back (the source
/// committed: its tables refuse writes). Reporting "rolled back" would send
/// the application back to a source that no longer takes writes; the
/// outcome is read back from the source instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_cutover_whose_commit_reply_is_lost_reads_the_outcome_back() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let src = source.client("shop").await?;
    let dst = target.client("shop").await?;
    src.batch_execute("ALTER TABLE events REPLICA IDENTITY FULL")
        .await?;
    source.hand_tables_to_migrator("shop").await?;
    let tap = FaultProxy::postgres(source.port).await?;
    let job = Job::create(|staging| {
        spec_body("lost-commit", &source, &target, staging).replace(
            &source.migrator_url("shop"),
            &source.migrator_url_at(tap.port, "shop"),
        ) + "\nchanges: {}"
    })?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let log_path = job.dir.path().join("run.log");
    let mut run = Running(
        Command::new(bin("godwit")?)
            .args(["run", job.spec(), "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?,
    );
    wait_for_streaming(&url, "lost-commit").await?;
    src.batch_execute("UPDATE surveys SET moods = '{}' WHERE id = 1")
        .await?;

    // The statement that leaves the source refusing writes is delivered
    // and committed; its answer never comes back.
    tap.lose_reply_to("FUNCTION godwit.refuse_writes(");
    let output = godwit(&["cutover", "--coordinator", &url, "lost-commit"])?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(tap.replies_lost(), 1, "no reply was lost:\n{log}");
    assert!(
        output.status.success(),
        "cutover: {}\n{log}",
        describe(&output)
    );
    assert!(log.contains("the reply to COMMIT was lost"), "{log}");
    let refused = src
        .batch_execute("INSERT INTO surveys (id, moods) VALUES (424242, '{}')")
        .await
        .expect_err("the source took a write after the cutover");
    assert!(
        refused
            .as_db_error()
            .map(|db| db.message().to_owned())
            .unwrap_or_default()
            .contains("migrated by godwit job lost-commit"),
        "{refused}"
    );
    let status = run
        .exit_status(
            "godwit run to end after the cutover",
            Duration::from_secs(60),
        )
        .await?;
    assert!(status.success(), "godwit run exited {status:?}");
    assert_same_tables(&src, &dst).await?;
    assert_eq!(
        stream_leftovers(&src).await?,
        0,
        "slot or publication left on the source"
    );
    Ok(())
}
