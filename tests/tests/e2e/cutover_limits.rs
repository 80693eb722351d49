//! The cutover's limits: refused while the job is paused, and rolled back
//! once the source has been frozen for `changes.max_frozen_ms`, whatever
//! step is running, with the source taking writes again and the stream
//! going on.

use std::process::{Command, Stdio};
use std::time::Duration;

use godwit_tests::{
    Job, Running, bin, describe, free_port, run_godwit, source_and_target, spec_body,
    wait_for_streaming,
};

fn godwit(args: &[&str]) -> anyhow::Result<std::process::Output> {
    run_godwit(args, &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cutover_is_refused_while_paused_and_rolled_back_past_its_frozen_deadline()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let src = source.client("shop").await?;
    // Enough rows that the final verification outlasts the deadline below.
    src.batch_execute(
        "ALTER TABLE events REPLICA IDENTITY FULL; \
         CREATE TABLE bulk (id integer PRIMARY KEY, v text); \
         INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 200000) g",
    )
    .await?;
    source.hand_tables_to_migrator("shop").await?;
    let job = Job::create(|staging| {
        spec_body("limits", &source, &target, staging) + "\nchanges: { max_frozen_ms: 100 }"
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

    src.batch_execute("UPDATE bulk SET v = 'changed' WHERE id = 1")
        .await?;
    let rolled_back = godwit(&["cutover", "--coordinator", &url, "limits"])?;
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
    Ok(())
}
