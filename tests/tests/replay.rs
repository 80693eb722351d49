//! Replay without the source, and tampered staged data refused before
//! anything is written.

use godwit_tests::{
    Job, assert_same_tables, describe, free_port, run_godwit, source_and_target, spec_body,
    user_tables,
};

#[tokio::test(flavor = "multi_thread")]
async fn replay_loads_the_staged_copy_without_the_source_and_refuses_tampering()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(2).await?;
    let job = Job::create(|staging| spec_body("replayed", &source, &target, staging))?;
    let output = run_godwit(&["run", job.spec()], &[])?;
    assert!(output.status.success(), "{}", describe(&output));

    // The same spec with an unreachable source: replay must not need it.
    let closed = format!("postgres://postgres@127.0.0.1:{}/shop", free_port()?);
    let spec =
        std::fs::read_to_string(&job.spec_path)?.replace(&source.migrator_url("shop"), &closed);
    std::fs::write(&job.spec_path, spec)?;

    let chunks: Vec<_> = Job::files_under(&job.staging_dir())
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().contains("public.events")
                && p.extension().is_some_and(|e| e == "gwc")
        })
        .collect();
    assert!(chunks.len() >= 2, "too few staged chunks: {chunks:?}");
    let victim = &chunks[chunks.len() / 2];
    let original = std::fs::read(victim)?;
    let victim_name = victim
        .strip_prefix(job.staging_dir())?
        .to_string_lossy()
        .into_owned();

    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let other = chunks
        .iter()
        .find(|c| *c != victim)
        .ok_or_else(|| anyhow::anyhow!("one chunk only"))?;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("flipped", flipped, "authentication failed"),
        (
            "truncated",
            original[..original.len() - 100].to_vec(),
            "chunk",
        ),
        ("misplaced", std::fs::read(other)?, "expected public.events"),
    ];
    for (n, (case, bytes, reason)) in cases.into_iter().enumerate() {
        let db = format!("tampered{n}");
        target.create_database(&db).await?;
        std::fs::write(victim, &bytes)?;
        let output = run_godwit(&["replay", job.spec(), "--target", &target.url(&db)], &[])?;
        std::fs::write(victim, &original)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{case}: {}",
            describe(&output)
        );
        assert!(
            stderr.contains(&victim_name),
            "{case}: the object is not named: {stderr}"
        );
        assert!(stderr.contains(reason), "{case}: {stderr}");
        let client = target.client(&db).await?;
        assert!(
            user_tables(&client).await?.is_empty(),
            "{case}: the target was written to"
        );
    }

    // The manifest's table, partition and column lists become SQL on
    // replay: a modified, truncated or substituted one is refused before
    // anything is written, naming it.
    let manifest = job.staging_dir().join("replayed").join("manifest.gwc");
    let original_manifest = std::fs::read(&manifest)
        .map_err(|e| anyhow::anyhow!("no sealed manifest at {}: {e}", manifest.display()))?;
    assert!(
        !original_manifest
            .windows(b"public.events".len())
            .any(|w| w == b"public.events"),
        "the manifest is staged in plain text"
    );
    let schema_frame = Job::files_under(&job.staging_dir())
        .into_iter()
        .find(|p| p.components().any(|c| c.as_os_str() == "schema"))
        .ok_or_else(|| anyhow::anyhow!("no staged schema file"))?;
    let mut modified = original_manifest.clone();
    let last = modified.len() - 1;
    modified[last] ^= 0x40;
    let forged_plain =
        br#"{"job":"replayed","tables":[],"partitions":[],"sequences":[],"schema_files":[]}"#
            .to_vec();
    let manifest_cases: [(&str, Vec<u8>); 4] = [
        ("modified", modified),
        (
            "truncated",
            original_manifest[..original_manifest.len() / 2].to_vec(),
        ),
        (
            "substituted by another sealed object",
            std::fs::read(&schema_frame)?,
        ),
        ("forged in plain text", forged_plain),
    ];
    for (n, (case, bytes)) in manifest_cases.into_iter().enumerate() {
        let db = format!("manifest{n}");
        target.create_database(&db).await?;
        std::fs::write(&manifest, &bytes)?;
        let output = run_godwit(&["replay", job.spec(), "--target", &target.url(&db)], &[])?;
        std::fs::write(&manifest, &original_manifest)?;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{case}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("manifest.gwc"),
            "{case}: the manifest is not named: {stderr}"
        );
        let client = target.client(&db).await?;
        assert!(
            user_tables(&client).await?.is_empty(),
            "{case}: the target was written to"
        );
    }

    target.create_database("replica").await?;
    let output = run_godwit(
        &["replay", job.spec(), "--target", &target.url("replica")],
        &[],
    )?;
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("no connection to the source"));
    let (src, replica) = (
        source.client("shop").await?,
        target.client("replica").await?,
    );
    assert_same_tables(&src, &replica).await?;

    // A second replay into the same database is refused, not doubled.
    let again = run_godwit(
        &["replay", job.spec(), "--target", &target.url("replica")],
        &[],
    )?;
    assert_eq!(again.status.code(), Some(2), "{}", describe(&again));
    assert_same_tables(&src, &replica).await?;
    Ok(())
}
