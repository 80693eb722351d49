//! `on_error: default` (the target column's constant default for a value
//! that does not convert, checked and compared as such; refused where the
//! column has none), then review copies: a mapped job's staged copy
//! replayed through its mapping
//! into a review database that has the platform's schema, with the source
//! stopped: the columns masked for review copies tokenised with the
//! customer's key, a seeded sample of the tables no foreign key
//! references, referenced tables whole; the same seed and key give the
//! same copy again; a replay under a changed mapping, into an occupied
//! slice or into a database without the platform's tables is refused with
//! nothing written.

use std::collections::BTreeMap;

use godwit_tests::pg::LOADER;
use godwit_tests::{Job, PgCluster, describe, run_godwit, source_and_target, spec_body};

use crate::mapping::{LANDING, TENANT, crm, platform_schema};

/// The landing of `mapping.rs` with the legacy codes kept where they fit
/// (the column's default where they do not), and the contacts in the
/// tenant's schema with their phones masked in review copies only.
fn reviewed() -> String {
    let landing = LANDING.replace(
        "legacy_code: { drop: true }",
        "legacy_code: { to: code, type: \"varchar(4)\", on_error: default }",
    );
    format!(
        "{landing}    - from: crm.contacts
      to: tenant_acme.contacts
      columns:
        phone: {{ mask: tokenise-phone, masked_for: review }}
"
    )
}

/// A database on `cluster` holding the platform's schema, owned by the
/// loading role; its URL for that role.
pub(crate) async fn review_database(cluster: &PgCluster, name: &str) -> anyhow::Result<String> {
    let url = empty_database(cluster, name).await?;
    platform_schema(&cluster.client(name).await?).await?;
    Ok(url)
}

/// An empty database on `cluster` owned by the loading role; its URL for
/// that role.
pub(crate) async fn empty_database(cluster: &PgCluster, name: &str) -> anyhow::Result<String> {
    cluster.create_database(name).await?;
    cluster
        .client("postgres")
        .await?
        .batch_execute(&format!("ALTER DATABASE {name} OWNER TO {LOADER}"))
        .await?;
    Ok(cluster.loader_url(name))
}

/// Each database's own digest of the tenant's accounts, and its contacts
/// by id (account id, phone).
async fn landed(
    cluster: &PgCluster,
    db: &str,
) -> anyhow::Result<(i64, i64, BTreeMap<i32, (i32, String)>)> {
    let client = cluster.client(db).await?;
    let accounts = client
        .query_one(
            "SELECT count(*), coalesce(sum(hashtext(ROW(id, display_name, contact_email, credit, name_length)::text)), 0) \
             FROM platform.accounts WHERE tenant_id = $1::text::uuid",
            &[&TENANT],
        )
        .await?;
    let contacts = client
        .query(
            "SELECT id, account_id, phone FROM tenant_acme.contacts",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    Ok((accounts.get(0), accounts.get(1), contacts))
}

fn replay(job: &Job, target: &str, extra: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut args = vec!["replay", job.spec(), "--target", target];
    args.extend_from_slice(extra);
    run_godwit(&args, &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_review_copy_replays_the_mapping_masked_and_sampled_without_the_source()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    crm(&source, &target).await?;
    let src = source.client("shop").await?;
    src.batch_execute("UPDATE crm.accounts SET name = left(name, 20)")
        .await?;
    let job = Job::create(|staging| {
        spec_body("crm-review", &source, &target, staging)
            .replace("tables: [\"*\"]", "tables: [crm.accounts, crm.contacts]")
            + "\n"
            + &reviewed()
    })?;
    // Taking the default of a NOT NULL column without one: refused.
    job.edit(
        "type: \"varchar(20)\", on_error: fail",
        "type: \"varchar(20)\", on_error: default",
    )?;
    let output = run_godwit(&["plan", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(
            "name: `on_error: default`, but platform.accounts.display_name is NOT NULL without a default"
        ),
        "{}",
        describe(&output)
    );
    job.edit(
        "type: \"varchar(20)\", on_error: default",
        "type: \"varchar(20)\", on_error: fail",
    )?;

    // Eight codes are too long for varchar(4): they take the column's default.
    src.batch_execute("UPDATE crm.accounts SET legacy_code = 'LEGACY-' || id WHERE id % 25 = 0")
        .await?;
    let ran = run_godwit(&["run", job.spec()], &[])?;
    assert!(ran.status.success(), "{}", describe(&ran));
    let dst = target.client("shop").await?;
    let codes: Vec<(i64, String)> = dst
        .query(
            "SELECT id - 1000000, code FROM platform.accounts WHERE tenant_id = $1::text::uuid ORDER BY id",
            &[&TENANT],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(i64, String)> = src
        .query(
            "SELECT id::bigint, CASE WHEN char_length(legacy_code) > 4 THEN 'n/a' ELSE legacy_code END \
             FROM crm.accounts ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(codes, expected);
    assert_eq!(codes.iter().filter(|(_, c)| c == "n/a").count(), 8);
    // The check computes the same default, and finds a changed one.
    let verified = run_godwit(&["verify", job.spec()], &[])?;
    assert!(verified.status.success(), "{}", describe(&verified));
    dst.execute(
        "UPDATE platform.accounts SET code = 'L25' WHERE tenant_id = $1::text::uuid AND id = 1000025",
        &[&TENANT],
    )
    .await?;
    let verified = run_godwit(&["verify", job.spec()], &[])?;
    assert_eq!(verified.status.code(), Some(1), "{}", describe(&verified));
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("key (1000025) differs in code"),
        "{}",
        describe(&verified)
    );
    dst.execute(
        "UPDATE platform.accounts SET code = 'n/a' WHERE tenant_id = $1::text::uuid AND id = 1000025",
        &[&TENANT],
    )
    .await?;
    // A contact pointing at no account of the tenant's slice (the other
    // tenant's id 1 is not it) is an orphan of the key as landed.
    let account_of_5: i32 = dst
        .query_one(
            "SELECT account_id FROM tenant_acme.contacts WHERE id = 5",
            &[],
        )
        .await?
        .get(0);
    dst.batch_execute("UPDATE tenant_acme.contacts SET account_id = 1 WHERE id = 5")
        .await?;
    let verified = run_godwit(&["verify", job.spec()], &[])?;
    assert_eq!(verified.status.code(), Some(1), "{}", describe(&verified));
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains(
            "foreign key crm.contacts (account_id) → crm.accounts (id), as landed in tenant_acme.contacts \
             (account_id) → platform.accounts (id) on tenant_acme.contacts: 1 orphan rows on the target"
        ),
        "{}",
        describe(&verified)
    );
    dst.execute(
        "UPDATE tenant_acme.contacts SET account_id = $1 WHERE id = 5",
        &[&account_of_5],
    )
    .await?;
    let verified = run_godwit(&["verify", job.spec()], &[])?;
    assert!(verified.status.success(), "{}", describe(&verified));
    let phones: BTreeMap<i32, String> = src
        .query("SELECT id, phone FROM crm.contacts", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // The platform's copy holds the phones as they are: the mask is for
    // review copies only.
    let (count, digest, platform_contacts) = landed(&target, "shop").await?;
    assert_eq!(count, 200);
    assert_eq!(platform_contacts.len(), 400);
    assert!(
        platform_contacts
            .iter()
            .all(|(id, (_, phone))| phones.get(id) == Some(phone))
    );
    // From here on nothing may need the source.
    drop(src);
    drop(source);

    // Into a database without the platform's tables: refused, nothing written.
    target.create_database("bare").await?;
    let output = replay(&job, &target.url("bare"), &["--masked"])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(
            "where the mapping lands rows: a replay does not create the platform's tables"
        ),
        "{}",
        describe(&output)
    );
    let written: bool = target
        .client("bare")
        .await?
        .query_one("SELECT to_regnamespace('godwit') IS NOT NULL", &[])
        .await?
        .get(0);
    assert!(!written, "the refused replay created the ledger");

    // Under a changed mapping: refused, the change named.
    let review = review_database(&target, "review").await?;
    let spec = std::fs::read_to_string(&job.spec_path)?;
    std::fs::write(
        &job.spec_path,
        spec.replace("mask: tokenise-phone", "mask: redact"),
    )?;
    let output = replay(&job, &review, &["--masked"])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("mapping.tables[1].columns.phone.mask: \"tokenise-phone\" → \"redact\""),
        "{}",
        describe(&output)
    );
    std::fs::write(&job.spec_path, &spec)?;

    // A masked half sample: accounts (referenced by contacts) whole and as
    // the platform got them, contacts thinned, phones tokenised.
    let output = replay(
        &job,
        &review,
        &["--masked", "--sample", "50%", "--seed", "7"],
    )?;
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("1 column(s) masked") && stdout.contains("50% of the rows of 1 table(s)"),
        "{stdout}"
    );
    let (review_count, review_digest, contacts) = landed(&target, "review").await?;
    assert_eq!((review_count, review_digest), (count, digest));
    assert!(
        (120..=280).contains(&contacts.len()),
        "{} of 400 contacts kept at 50%",
        contacts.len()
    );
    let key = godwit_common::keys::Kek::from_file(&job.key_path)?.token_key();
    let masker = godwit_common::mapping::mask::Masker {
        key: &key,
        customer: "acme",
    };
    let account_ids: std::collections::BTreeSet<i64> = target
        .client("review")
        .await?
        .query(
            "SELECT id FROM platform.accounts WHERE tenant_id = $1::text::uuid",
            &[&TENANT],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (id, (account, phone)) in &contacts {
        let source_phone = &phones[id];
        let expected = masker.apply(
            godwit_common::mapping::Mask::TokenisePhone,
            None,
            Some(source_phone),
        );
        assert_eq!(Some(phone), expected.as_ref(), "contact {id}");
        assert_ne!(phone, source_phone, "contact {id}: the phone is not masked");
        assert_eq!(
            phone[phone.len() - 4..],
            source_phone[source_phone.len() - 4..]
        );
        assert!(
            account_ids.contains(&i64::from(*account)),
            "contact {id} points at account {account}, not in the review copy"
        );
        assert_eq!(platform_contacts[id].0, *account);
    }
    let other: i64 = target
        .client("review")
        .await?
        .query_one(
            "SELECT count(*) FROM platform.accounts WHERE tenant_id <> $1::text::uuid",
            &[&TENANT],
        )
        .await?
        .get(0);
    assert_eq!(other, 1, "the other tenant's row");

    // Again into the same database: refused, the slice is occupied.
    let output = replay(
        &job,
        &review,
        &["--masked", "--sample", "50%", "--seed", "7"],
    )?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("already holds 200 rows in the job's slice"),
        "{}",
        describe(&output)
    );
    assert_eq!(landed(&target, "review").await?.2, contacts);

    // The same seed and key elsewhere: the same rows, the same tokens.
    let again = review_database(&target, "review_again").await?;
    let output = replay(
        &job,
        &again,
        &["--masked", "--sample", "50%", "--seed", "7"],
    )?;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(landed(&target, "review_again").await?.2, contacts);
    Ok(())
}
