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
    // A review copy of a job whose mapping masks nothing would hold every
    // value as the source has it: refused, nothing written.
    let unmasked = run_godwit(
        &[
            "replay",
            job.spec(),
            "--target",
            &target.url("replica"),
            "--masked",
        ],
        &[],
    )?;
    assert_eq!(unmasked.status.code(), Some(2), "{}", describe(&unmasked));
    assert!(
        String::from_utf8_lossy(&unmasked.stderr).contains("mapping masks no column"),
        "{}",
        describe(&unmasked)
    );
    assert!(
        user_tables(&target.client("replica").await?)
            .await?
            .is_empty()
    );
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

/// Per-customer keys from a keyring, a rotation that lets the old key go,
/// a key file others can read refused, and a job's data key shredded and
/// its staged data purged: what its end of life needs.
#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_per_customer_then_shred_and_purge_end_the_staged_data() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let (source, target) = source_and_target(1).await?;
    let job = Job::new("")?;
    let dir = job.dir.path();
    let key = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(name);
        let made = run_godwit(
            &["keys", "generate", "--out", &path.display().to_string()],
            &[],
        )?;
        anyhow::ensure!(made.status.success(), "{}", describe(&made));
        Ok(path)
    };
    let (acme_1, acme_2, globex) = (key("acme-1.kek")?, key("acme-2.kek")?, key("globex.kek")?);
    let keyring = dir.join("keyring.yaml");
    let write_keyring = |acme: &[&std::path::Path]| {
        let list: Vec<String> = acme.iter().map(|p| p.display().to_string()).collect();
        std::fs::write(
            &keyring,
            format!(
                "acme: [{}]\nglobex: [{}]\n",
                list.join(", "),
                globex.display()
            ),
        )
    };
    write_keyring(&[&acme_1])?;
    let staging = format!("file://{}", job.staging_dir().display());
    let body = |customer: &str| {
        spec_body("keyed", &source, &target, &staging)
            .replace("customer: acme", &format!("customer: {customer}"))
            + &format!("\nencryption: {{ keyring: {} }}\n", keyring.display())
    };
    std::fs::write(&job.spec_path, body("acme"))?;
    let run = run_godwit(&["run", job.spec()], &[])?;
    assert!(run.status.success(), "{}", describe(&run));
    let verified = run_godwit(&["verify", job.spec()], &[])?;
    assert!(verified.status.success(), "{}", describe(&verified));

    // Another customer's keys never open acme's data key.
    let as_globex = dir.join("as-globex.yaml");
    std::fs::write(&as_globex, body("globex"))?;
    target.create_database("globex_try").await?;
    let refused = run_godwit(
        &[
            "replay",
            as_globex.to_str().unwrap_or_default(),
            "--target",
            &target.url("globex_try"),
        ],
        &[],
    )?;
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not one of customer globex's keys"),
        "{}",
        describe(&refused)
    );

    // Rotation: the new key goes first in acme's entry, the data key is
    // re-wrapped, and the old key can be deleted.
    write_keyring(&[&acme_2, &acme_1])?;
    let rotated = run_godwit(&["keys", "rotate", job.spec()], &[])?;
    assert!(rotated.status.success(), "{}", describe(&rotated));
    assert!(
        String::from_utf8_lossy(&rotated.stdout).contains("re-wrapped"),
        "{}",
        describe(&rotated)
    );
    write_keyring(&[&acme_2])?;
    std::fs::remove_file(&acme_1)?;
    target.create_database("after_rotation").await?;
    let replayed = run_godwit(
        &[
            "replay",
            job.spec(),
            "--target",
            &target.url("after_rotation"),
        ],
        &[],
    )?;
    assert!(replayed.status.success(), "{}", describe(&replayed));
    let (src, replica) = (
        source.client("shop").await?,
        target.client("after_rotation").await?,
    );
    assert_same_tables(&src, &replica).await?;
    let report = run_godwit(&["report", job.spec()], &[])?;
    assert!(
        report.status.success(),
        "the report no longer opens: {}",
        describe(&report)
    );

    // A key file others can read is refused, saying how to fix it.
    std::fs::set_permissions(&acme_2, std::fs::Permissions::from_mode(0o644))?;
    let shared = run_godwit(&["report", job.spec()], &[])?;
    assert_eq!(shared.status.code(), Some(2), "{}", describe(&shared));
    assert!(
        String::from_utf8_lossy(&shared.stderr).contains("chmod 0600"),
        "{}",
        describe(&shared)
    );
    std::fs::set_permissions(&acme_2, std::fs::Permissions::from_mode(0o600))?;

    // Shredding needs --yes; afterwards nothing staged opens.
    let unconfirmed = run_godwit(&["keys", "shred", job.spec()], &[])?;
    assert_eq!(
        unconfirmed.status.code(),
        Some(2),
        "{}",
        describe(&unconfirmed)
    );
    let shredded = run_godwit(&["keys", "shred", job.spec(), "--yes"], &[])?;
    assert!(shredded.status.success(), "{}", describe(&shredded));
    target.create_database("after_shred").await?;
    let gone = run_godwit(
        &["replay", job.spec(), "--target", &target.url("after_shred")],
        &[],
    )?;
    assert_eq!(gone.status.code(), Some(2), "{}", describe(&gone));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("shredded"),
        "{}",
        describe(&gone)
    );
    let unreadable = run_godwit(&["report", job.spec()], &[])?;
    assert_eq!(
        unreadable.status.code(),
        Some(2),
        "{}",
        describe(&unreadable)
    );
    assert!(
        user_tables(&target.client("after_shred").await?)
            .await?
            .is_empty()
    );

    // Purging deletes every staged object of the job but its audit trail,
    // which still proves what happened, shred and purge included.
    assert!(!Job::files_under(&job.staging_dir()).is_empty());
    let purged = run_godwit(&["purge", job.spec(), "--yes"], &[])?;
    assert!(purged.status.success(), "{}", describe(&purged));
    let left: Vec<_> = Job::files_under(&job.staging_dir())
        .into_iter()
        .filter(|p| !godwit_tests::is_audit_trail(p))
        .collect();
    assert!(
        left.is_empty(),
        "staged objects left after the purge: {left:?}"
    );
    let trail = run_godwit(&["audit", "show", job.spec()], &[])?;
    assert!(trail.status.success(), "{}", describe(&trail));
    let trail = String::from_utf8_lossy(&trail.stdout);
    for action in ["keys.rotate", "keys.shred", "purge"] {
        assert!(trail.contains(action), "no {action} in the trail:\n{trail}");
    }
    Ok(())
}

/// The audit trail of an embedded job: intact after the run, its records
/// naming what happened, and each kind of tampering with the stored
/// records or the anchored head found at the first bad record.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_trail_records_a_job_and_finds_every_kind_of_tampering() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let job = Job::create(|staging| spec_body("audited", &source, &target, staging))?;
    let run = run_godwit(&["run", job.spec()], &[])?;
    assert!(run.status.success(), "{}", describe(&run));
    let new_key = job.dir.path().join("rotated.kek");
    let made = run_godwit(
        &["keys", "generate", "--out", &new_key.display().to_string()],
        &[],
    )?;
    assert!(made.status.success(), "{}", describe(&made));
    let rotated = run_godwit(
        &[
            "keys",
            "rotate",
            job.spec(),
            "--to",
            &new_key.display().to_string(),
        ],
        &[],
    )?;
    assert!(rotated.status.success(), "{}", describe(&rotated));
    let spec = std::fs::read_to_string(&job.spec_path)?.replace(
        &job.key_path.display().to_string(),
        &new_key.display().to_string(),
    );
    std::fs::write(&job.spec_path, spec)?;
    std::fs::remove_file(&job.key_path)?;

    let verified = run_godwit(&["audit", "verify", job.spec()], &[])?;
    assert!(verified.status.success(), "{}", describe(&verified));
    let shown = run_godwit(&["audit", "show", job.spec(), "--json"], &[])?;
    assert!(shown.status.success(), "{}", describe(&shown));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let actions: Vec<&str> = lines.iter().filter_map(|r| r["action"].as_str()).collect();
    for expected in [
        "job.start",
        "lease.taken",
        "partition.copied",
        "chunk.loaded",
        "job.end",
        "keys.rotate",
    ] {
        assert!(
            actions.contains(&expected),
            "no {expected} record in {actions:?}"
        );
    }
    let chunk = lines
        .iter()
        .find(|r| r["action"] == "chunk.loaded")
        .and_then(|r| r["object"].as_str())
        .unwrap_or_default();
    assert!(
        chunk.contains("sha256") && chunk.contains("data key"),
        "{chunk}"
    );
    // Never a row value: the fixture's awkward names are nowhere in it.
    assert!(!String::from_utf8_lossy(&shown.stdout).contains("toasted"));

    let records_dir = job.staging_dir().join("audited").join("audit");
    let mut records: Vec<_> = std::fs::read_dir(&records_dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    records.sort();
    assert!(records.len() >= 4, "{records:?}");
    let name = |i: usize| {
        records[i]
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let originals: Vec<Vec<u8>> = records
        .iter()
        .map(std::fs::read)
        .collect::<Result<_, _>>()?;
    let restore = || -> anyhow::Result<()> {
        for (path, bytes) in records.iter().zip(&originals) {
            std::fs::write(path, bytes)?;
        }
        Ok(())
    };
    let broken_at = |case: &str, at: &str| -> anyhow::Result<()> {
        let output = run_godwit(&["audit", "verify", job.spec()], &[])?;
        assert_eq!(
            output.status.code(),
            Some(1),
            "{case}: {}",
            describe(&output)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("BROKEN") && stdout.contains(at),
            "{case}: expected {at}: {stdout}"
        );
        Ok(())
    };
    let last = records.len() - 1;

    // A record changed.
    let changed =
        String::from_utf8_lossy(&originals[1]).replace("\"outcome\":\"", "\"outcome\":\"x");
    std::fs::write(&records[1], changed)?;
    broken_at("modified", &name(1))?;
    restore()?;
    // A record deleted from the middle.
    std::fs::remove_file(&records[1])?;
    broken_at("deleted", &name(2))?;
    restore()?;
    // A record copied in twice (inserted).
    std::fs::write(records_dir.join("00000002a.json"), &originals[1])?;
    broken_at("inserted", "00000002a.json")?;
    std::fs::remove_file(records_dir.join("00000002a.json"))?;
    // Two records swapped (reordered).
    std::fs::write(&records[1], &originals[2])?;
    std::fs::write(&records[2], &originals[1])?;
    broken_at("reordered", &name(1))?;
    restore()?;
    // The tail cut off: the head anchored in the target still names it.
    std::fs::remove_file(&records[last])?;
    broken_at("truncated", &format!("record {}", last + 1))?;
    restore()?;
    // The anchored head moved back: the records past it are found.
    let dst = target.client("shop").await?;
    dst.execute(
        "UPDATE godwit.audit_head SET seq = seq - 1 WHERE job_id = 'audited'",
        &[],
    )
    .await?;
    let output = run_godwit(&["audit", "verify", job.spec()], &[])?;
    assert_eq!(
        output.status.code(),
        Some(1),
        "head rewritten: {}",
        describe(&output)
    );
    dst.execute(
        "UPDATE godwit.audit_head SET seq = seq + 1 WHERE job_id = 'audited'",
        &[],
    )
    .await?;

    let again = run_godwit(&["audit", "verify", job.spec()], &[])?;
    assert!(again.status.success(), "restored: {}", describe(&again));
    Ok(())
}
