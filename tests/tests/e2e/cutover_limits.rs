//! The cutover's limits: refused while the job is paused or while a
//! verification of it runs, and rolled back once the source has been frozen
//! for `changes.max_frozen_ms`, whatever step is running, with the source
//! taking writes again and the stream going on.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use godwit_tests::{
    Job, Running, bin, describe, free_port, run_godwit, source_and_target, spec_body,
    wait_for_streaming, wait_until,
};

fn godwit(args: &[&str]) -> anyhow::Result<std::process::Output> {
    run_godwit(args, &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cutover_is_refused_while_paused_and_rolled_back_past_its_frozen_deadline()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let src = source.client("shop").await?;
    // A table without a key: its changed rows cannot be named, so the
    // frozen check compares it whole, and it has enough rows for that to
    // outlast the deadline below.
    src.batch_execute(
        "ALTER TABLE events REPLICA IDENTITY FULL; \
         CREATE TABLE bulk (id integer, v text); \
         ALTER TABLE bulk REPLICA IDENTITY FULL; \
         INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 500000) g",
    )
    .await?;
    source.hand_tables_to_migrator("shop").await?;
    let job = Job::create(|staging| {
        spec_body("limits", &source, &target, staging)
            + "\nchanges: { max_frozen_ms: 100, max_frozen_keys: 0 }"
    })?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let log_path = job.dir.path().join("run.log");
    let _run = Running(
        Command::new(bin("godwit")?)
            .args(["run", job.spec(), "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?,
    );
    wait_for_streaming(&url, "limits").await?;

    let paused = godwit(&["pause", "--coordinator", &url, "limits"])?;
    assert!(paused.status.success(), "{}", describe(&paused));
    let refused = godwit(&["cutover", "--coordinator", &url, "limits"])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("is paused")
            && stderr.contains("godwit resume"),
        "{}",
        describe(&refused)
    );
    let resumed = godwit(&["resume", "--coordinator", &url, "limits"])?;
    assert!(resumed.status.success(), "{}", describe(&resumed));

    // The application keeps changing the keyless table while the cutover
    // runs, so its frozen check has that whole table to compare.
    let writer_client = source.client("shop").await?;
    let writing = Arc::new(AtomicBool::new(true));
    let still_writing = writing.clone();
    let writer = tokio::spawn(async move {
        for i in 0..2000 {
            if !still_writing.load(Ordering::SeqCst) {
                break;
            }
            let sql = format!(
                "UPDATE bulk SET v = 'changed {i}' WHERE id = {}",
                i % 100 + 1
            );
            if writer_client.batch_execute(&sql).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let rolled_back = godwit(&["cutover", "--coordinator", &url, "limits"])?;
    // Stopped between statements, so none of its updates can commit after
    // the row written below (which the test later waits for on the target).
    writing.store(false, Ordering::SeqCst);
    writer.await?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let said = describe(&rolled_back);
    assert_eq!(rolled_back.status.code(), Some(1), "{said}\n{log}");
    assert!(
        said.contains("max_frozen_ms (100 ms)") && said.contains("while "),
        "{said}"
    );
    // The source takes writes again and the job streams on.
    tokio::time::timeout(
        Duration::from_secs(10),
        src.batch_execute("INSERT INTO bulk VALUES (200001, 'after the rollback')"),
    )
    .await??;
    wait_for_streaming(&url, "limits").await?;
    let status = godwit(&["status", "--coordinator", &url, "limits"])?;
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("last cutover") && shown.contains("max_frozen_ms"),
        "{shown}"
    );

    // A verification held up by a lock on the target: while it runs, the
    // status shows it and a cutover is refused; once it ends, it matched.
    let dst = target.client("shop").await?;
    wait_until(
        "the row written after the rollback to reach the target",
        Duration::from_secs(60),
        || async {
            Ok(dst
                .query_opt("SELECT 1 FROM bulk WHERE v = 'after the rollback'", &[])
                .await?
                .map(|_| ()))
        },
    )
    .await?;
    let mut locker = target.client("shop").await?;
    let lock = locker.transaction().await?;
    lock.batch_execute("LOCK TABLE bulk IN ACCESS EXCLUSIVE MODE")
        .await?;
    let mut verifying = Running(
        Command::new(bin("godwit")?)
            .args(["verify", "--coordinator", &url, "limits"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(job.dir.path().join("verify.log"))?)
            .spawn()?,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = godwit(&["status", "--coordinator", &url, "limits"])?;
        if String::from_utf8_lossy(&status.stdout).contains("verification running for") {
            break;
        }
        let ended = verifying.0.try_wait()?;
        if ended.is_some() || std::time::Instant::now() >= deadline {
            let mut report = String::new();
            if let Some(mut stdout) = verifying.0.stdout.take() {
                std::io::Read::read_to_string(&mut stdout, &mut report)?;
            }
            let waiting: Vec<String> = dst
                .query(
                    "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                    &[],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            anyhow::bail!(
                "the status did not show the verification running (it ended: {ended:?}): {}\n{report}\nwaiting: {waiting:?}\n{}\n{}",
                describe(&status),
                std::fs::read_to_string(&log_path).unwrap_or_default(),
                std::fs::read_to_string(job.dir.path().join("verify.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = godwit(&["cutover", "--coordinator", &url, "limits"])?;
    let said = describe(&refused);
    assert!(
        !refused.status.success()
            && said.contains("a verification of job limits is running")
            && said.contains("godwit status limits"),
        "{said}"
    );
    lock.rollback().await?;
    let mut report = String::new();
    if let Some(mut stdout) = verifying.0.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut report)?;
    }
    let ended = verifying.0.wait()?;
    assert!(
        ended.success() && report.contains("MATCH"),
        "{ended:?}\n{report}"
    );

    // Rows the stream applies after the cutover's verification differ on
    // the target (a trigger there, armed when that verification prunes the
    // changed-key log, alters what the stream inserts). With
    // `max_frozen_keys: 0` the cutover compares the changed rows again
    // before it freezes: it finds them there and freezes nothing.
    dst.batch_execute(crate::armed_corruption::ARM_A_CORRUPTION)
        .await?;
    let inserter = source.client("shop").await?;
    let inserts = tokio::spawn(async move {
        for i in 0..3000 {
            let sql = format!("INSERT INTO customers (name) VALUES ('late {i}')");
            if inserter.batch_execute(&sql).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let refused = godwit(&["cutover", "--coordinator", &url, "limits"])?;
    inserts.abort();
    let said = describe(&refused);
    let corrupted = crate::armed_corruption::altered_keys(&dst).await?;
    assert!(!corrupted.is_empty(), "the trigger altered no row: {said}");
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("comparing the rows changed since the verification, before the freeze")
            && said.contains("nothing was frozen")
            && corrupted.iter().any(|k| said.contains(&format!("({k})"))),
        "{said}"
    );
    let status = godwit(&["status", "--coordinator", &url, "limits"])?;
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("frozen 0 ms"), "{shown}");
    // The keys reach the operator through the sealed report only; the
    // job record (kept in the lease store) names the table.
    assert!(
        shown.contains("public.customers")
            && !corrupted.iter().any(|k| shown.contains(&format!("({k})"))),
        "{shown}"
    );
    Ok(())
}
