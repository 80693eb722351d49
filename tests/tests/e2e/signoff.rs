//! Sign-off by a second identity, over the mTLS deployment of `access`:
//! a cutover and then a purge each wait, visible in the job's status,
//! until another operator of the customer approves.

use std::time::Duration;

use godwit_proto::v1::GetJobRequest;
use godwit_tests::{describe, run_godwit, wait_until};

use crate::access::{ACME_OPERATOR, ACME_SECOND, Deployment, Who};

/// A cutover the policy holds for sign-off waits, shown in the status,
/// until a second identity approves it; the requester cannot approve its
/// own request; both identities are in the audit trail.
#[tokio::test(flavor = "multi_thread")]
async fn a_cutover_waits_for_a_second_identity() -> anyhow::Result<()> {
    let deployment = Deployment::start("signed", "\nchanges: {}").await?;
    let src = deployment.source.client("shop").await?;
    src.batch_execute("ALTER TABLE events REPLICA IDENTITY FULL")
        .await?;
    deployment.source.hand_tables_to_migrator("shop").await?;
    let url = deployment.url.as_str();
    let submitted = deployment.cli(
        Who::AcmeOperator,
        &["submit", "--coordinator", url, deployment.job.spec()],
    )?;
    assert!(submitted.status.success(), "{}", describe(&submitted));
    let mut admin = deployment.callers.client(url, Who::Admin).await?;
    wait_until("the job to stream", Duration::from_secs(60), || {
        let mut admin = admin.clone();
        async move {
            let state = admin
                .get_job(GetJobRequest {
                    job_id: "signed".into(),
                })
                .await?
                .into_inner()
                .state;
            Ok((state == godwit_proto::v1::JobState::Streaming as i32).then_some(()))
        }
    })
    .await?;

    let mut cutover = godwit_tests::Running(
        deployment
            .cli_command(
                Who::AcmeOperator,
                &["cutover", "--coordinator", url, "signed"],
            )?
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?,
    );
    let status = wait_until(
        "the request to show in the status",
        Duration::from_secs(30),
        || async {
            let status = deployment.cli(
                Who::AcmeAuditor,
                &["status", "--coordinator", url, "signed"],
            );
            let text = String::from_utf8_lossy(&status?.stdout).into_owned();
            Ok(text.contains("awaiting approval").then_some(text))
        },
    )
    .await?;
    assert!(
        status.contains(&format!("cutover requested by {ACME_OPERATOR}")),
        "{status}"
    );
    assert!(
        cutover.0.try_wait()?.is_none(),
        "the cutover went ahead without approval"
    );

    let own = deployment.cli(
        Who::AcmeOperator,
        &["approve", "--coordinator", url, "signed", "cutover"],
    )?;
    assert_eq!(own.status.code(), Some(2), "{}", describe(&own));
    assert!(
        String::from_utf8_lossy(&own.stderr).contains("cannot approve it"),
        "{}",
        describe(&own)
    );
    let auditor = deployment.cli(
        Who::AcmeAuditor,
        &["approve", "--coordinator", url, "signed", "cutover"],
    )?;
    assert_eq!(
        auditor.status.code(),
        Some(2),
        "an auditor approved: {}",
        describe(&auditor)
    );

    let approved = deployment.cli(
        Who::AcmeSecond,
        &["approve", "--coordinator", url, "signed", "cutover"],
    )?;
    assert!(approved.status.success(), "{}", describe(&approved));
    let finished = cutover
        .exit_status("the approved cutover to finish", Duration::from_secs(120))
        .await?;
    assert!(
        finished.success(),
        "cutover exited {finished:?}\n{}",
        deployment.coordinator.log_text()
    );
    let state = admin
        .get_job(GetJobRequest {
            job_id: "signed".into(),
        })
        .await?
        .into_inner()
        .state;
    assert_eq!(state, godwit_proto::v1::JobState::Done as i32);
    let dst = deployment.target.client("shop").await?;
    godwit_tests::assert_same_tables(&src, &dst).await?;

    // Purging the ended job's staged data waits for a sign-off too.
    let mut purge = godwit_tests::Running(
        deployment
            .cli_command(
                Who::AcmeOperator,
                &["purge", "--coordinator", url, "signed", "--yes"],
            )?
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?,
    );
    wait_until(
        "the purge request to show",
        Duration::from_secs(30),
        || async {
            let status = deployment.cli(
                Who::AcmeAuditor,
                &["status", "--coordinator", url, "signed"],
            );
            let text = String::from_utf8_lossy(&status?.stdout).into_owned();
            Ok(text.contains("purge requested by").then_some(()))
        },
    )
    .await?;
    let staged_data = || {
        godwit_tests::Job::files_under(&deployment.job.staging_dir())
            .into_iter()
            .filter(|p| !godwit_tests::is_audit_trail(p))
            .count()
    };
    assert!(staged_data() > 0, "purged before the approval");
    let approved = deployment.cli(
        Who::AcmeSecond,
        &["approve", "--coordinator", url, "signed", "purge"],
    )?;
    assert!(approved.status.success(), "{}", describe(&approved));
    let purged = purge
        .exit_status("the approved purge to finish", Duration::from_secs(60))
        .await?;
    assert!(purged.success(), "purge exited {purged:?}");
    assert_eq!(staged_data(), 0, "staged data left after the purge");

    let trail = run_godwit(&["audit", "show", deployment.job.spec(), "--json"], &[])?;
    let trail = String::from_utf8_lossy(&trail.stdout);
    for (who, action) in [
        (ACME_OPERATOR, "cutover.requested"),
        (ACME_OPERATOR, "call.cutover"),
        (ACME_SECOND, "cutover.approve"),
        (ACME_SECOND, "purge.approve"),
        (ACME_OPERATOR, "\"purge\""),
        (ACME_OPERATOR, "\"cutover\""),
    ] {
        assert!(
            trail.lines().any(|r| r.contains(who) && r.contains(action)),
            "no {action} by {who} in the trail:\n{trail}"
        );
    }
    Ok(())
}
