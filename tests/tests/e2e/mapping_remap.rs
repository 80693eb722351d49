//! `remap: true`: the customer's accounts land in the shared
//! `platform.accounts` numbered by the platform's own sequence, and their
//! contacts in the tenant's schema numbered by its identity, the contacts'
//! account references rewritten through `godwit.key_map` on the target
//! (accounts and contacts load in parallel: whichever meets a key first
//! numbers it). Both databases' own digests agree once the target reads
//! its old ids back through the map; the check names a planted change by
//! the source's key; a replay into a review database numbers its rows
//! there; a streaming job with `remap` is refused before anything is
//! written.

use godwit_tests::{Job, PgCluster, describe, run_godwit, source_and_target, spec_body};

use crate::mapping::{LANDING, TENANT, crm, verified};
use crate::mapping_review::review_database;
use crate::mapping_stream::{listen, verify_and_cut_over, wait_for_landing};

fn remapped() -> String {
    LANDING.replace("id: { offset: 1000000 }", "id: { remap: true }")
        + "    - from: crm.contacts\n      to: tenant_acme.contacts\n      columns:\n        \
           id: { remap: true }\n"
}

/// The source's accounts (id, name) and contacts (id, account id, phone),
/// and the target's read back to the source's ids through the key map:
/// (count, digest) of each, computed by each database.
async fn digests(
    source: &PgCluster,
    target: &PgCluster,
    db: &str,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let src = source.client("shop").await?;
    let dst = target.client(db).await?;
    let mut out = Vec::new();
    for sql in [
        "SELECT count(*), coalesce(sum(hashtext(ROW(id, name)::text)), 0) FROM crm.accounts",
        "SELECT count(*), coalesce(sum(hashtext(ROW(id, account_id, phone)::text)), 0) FROM crm.contacts",
    ] {
        let row = src.query_one(sql, &[]).await?;
        out.push((row.get(0), row.get(1)));
    }
    let old = |table: &str, column: &str, tenant: &str, value: &str| {
        format!(
            "(SELECT m.old_key::integer FROM godwit.key_map m WHERE m.target_table = '{table}' \
             AND m.target_column = '{column}' AND m.tenant = '{tenant}' AND m.new_key = {value}::text)"
        )
    };
    for sql in [
        format!(
            "SELECT count(*), coalesce(sum(hashtext(ROW({}, a.display_name)::text)), 0) \
             FROM platform.accounts a WHERE a.tenant_id = '{TENANT}'",
            old("platform.accounts", "id", TENANT, "a.id")
        ),
        format!(
            "SELECT count(*), coalesce(sum(hashtext(ROW({}, {}, c.phone)::text)), 0) \
             FROM tenant_acme.contacts c",
            old("tenant_acme.contacts", "id", "", "c.id"),
            old("platform.accounts", "id", TENANT, "c.account_id")
        ),
    ] {
        let row = dst.query_one(&sql, &[]).await?;
        out.push((row.get(0), row.get(1)));
    }
    Ok(out)
}

/// The tenant's landed ids: lowest, highest, distinct count; and the
/// contacts whose account is not in the tenant's slice.
async fn landed_ids(target: &PgCluster, db: &str) -> anyhow::Result<(i64, i64, i64, i64)> {
    let row = target
        .client(db)
        .await?
        .query_one(
            &format!(
                "SELECT min(id), max(id), count(DISTINCT id), \
                        (SELECT count(*) FROM tenant_acme.contacts c WHERE NOT EXISTS \
                            (SELECT 1 FROM platform.accounts a WHERE a.tenant_id = '{TENANT}' \
                             AND a.id = c.account_id)) \
                 FROM platform.accounts WHERE tenant_id = '{TENANT}'"
            ),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

#[tokio::test(flavor = "multi_thread")]
async fn remapped_keys_take_the_platforms_ids_and_references_follow_through_the_key_map()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    crm(&source, &target).await?;
    let src = source.client("shop").await?;
    src.batch_execute("UPDATE crm.accounts SET name = left(name, 20)")
        .await?;
    let dst = target.client("shop").await?;
    // The platform has numbered other tenants' accounts up to 5000.
    dst.batch_execute("SELECT setval('platform.accounts_id_seq', 5000)")
        .await?;
    let job = Job::create(|staging| {
        spec_body("crm-remap", &source, &target, staging)
            .replace("tables: [\"*\"]", "tables: [crm.accounts, crm.contacts]")
            + "\n"
            + &remapped()
    })?;

    let planned = run_godwit(&["plan", job.spec()], &[])?;
    assert!(planned.status.success(), "{}", describe(&planned));
    let plan = String::from_utf8_lossy(&planned.stdout);
    for line in [
        "id: integer → bigint; new ids, numbered by nextval('platform.accounts_id_seq'::regclass) (godwit.key_map)",
        "id: integer; new ids, numbered by nextval('tenant_acme.contacts_id_seq'::regclass) (godwit.key_map)",
        "account_id: integer; new ids of crm.accounts.id (godwit.key_map)",
    ] {
        assert!(plan.contains(line), "the plan lacks {line:?}:\n{plan}");
    }

    let ran = run_godwit(&["run", job.spec()], &[])?;
    assert!(ran.status.success(), "{}", describe(&ran));
    let sides = digests(&source, &target, "shop").await?;
    assert_eq!(sides[0], sides[2], "accounts, read back through the map");
    assert_eq!(sides[1], sides[3], "contacts, read back through the map");
    assert_eq!((sides[2].0, sides[3].0), (200, 400));
    // New ids from the platform's sequence, one per account; every contact
    // points at an account of the tenant's slice.
    let (low, _, distinct, orphans) = landed_ids(&target, "shop").await?;
    assert!(low > 5000, "an id below the platform's sequence: {low}");
    assert_eq!((distinct, orphans), (200, 0));
    let mapped: i64 = dst
        .query_one("SELECT count(*) FROM godwit.key_map", &[])
        .await?
        .get(0);
    assert_eq!(mapped, 600, "200 accounts and 400 contacts in the map");

    let (code, report) = verified(&job)?;
    assert_eq!(code, Some(0), "{report}");
    let lineage = report["mapping"]["lineage"].to_string();
    for rule in [
        "new ids from the target (godwit.key_map)",
        "new ids of crm.accounts.id (godwit.key_map)",
    ] {
        assert!(
            lineage.contains(rule),
            "the lineage lacks {rule}: {lineage}"
        );
    }

    // A contact pointed at another account and an account renamed: named
    // by the source's keys, read back through the map.
    dst.batch_execute(&format!(
        "UPDATE tenant_acme.contacts SET account_id = account_id + 1 \
         WHERE id = (SELECT new_key::integer FROM godwit.key_map WHERE target_table = 'tenant_acme.contacts' \
                     AND old_key = '5'); \
         UPDATE platform.accounts SET display_name = 'planted' WHERE tenant_id = '{TENANT}' \
         AND id = (SELECT new_key::bigint FROM godwit.key_map WHERE target_table = 'platform.accounts' \
                   AND old_key = '7')"
    ))
    .await?;
    let (code, report) = verified(&job)?;
    assert_eq!(code, Some(1), "{report}");
    let different = |table: &str| {
        report["tables"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["table"] == table))
            .map(|t| t["content"]["different"].clone())
            .unwrap_or_default()
    };
    assert_eq!(
        different("tenant_acme.contacts"),
        serde_json::json!([{ "key": "(5)", "columns": ["account_id"] }]),
        "{report}"
    );
    assert_eq!(
        different("platform.accounts"),
        serde_json::json!([{ "key": "(7)", "columns": ["display_name"] }]),
        "{report}"
    );

    // A review copy numbers its rows in its own database.
    let review = review_database(&target, "review").await?;
    let replayed = run_godwit(&["replay", job.spec(), "--target", &review], &[])?;
    assert!(replayed.status.success(), "{}", describe(&replayed));
    let sides = digests(&source, &target, "review").await?;
    assert_eq!(sides[0], sides[2], "accounts of the review copy");
    assert_eq!(sides[1], sides[3], "contacts of the review copy");
    let (_, _, distinct, orphans) = landed_ids(&target, "review").await?;
    assert_eq!((distinct, orphans), (200, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_changes_number_new_keys_and_find_their_rows_through_the_key_map()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    crm(&source, &target).await?;
    let src = source.client("shop").await?;
    src.batch_execute("UPDATE crm.accounts SET name = left(name, 20)")
        .await?;
    let job = Job::create(|staging| {
        spec_body("crm-remap-stream", &source, &target, staging)
            .replace("tables: [\"*\"]", "tables: [crm.accounts, crm.contacts]")
            + "\nchanges: {}\n"
            + &remapped().replace(
                "legacy_code: { drop: true }",
                "legacy_code: { drop: true }\n        name_length: { drop: true }",
            )
    })?;
    let (_run, log_path, url) = listen(&job, "crm-remap-stream").await?;
    src.batch_execute(
        "INSERT INTO crm.accounts (id, name, email, credit) \
             SELECT g, 'new ' || g, 'n' || g || '@example.com', g FROM generate_series(201, 205) g; \
         INSERT INTO crm.contacts SELECT g, g - 200, '+1666' || lpad(g::text, 7, '0'), 'new' \
             FROM generate_series(401, 403) g; \
         UPDATE crm.accounts SET name = 'renamed 7' WHERE id = 7; \
         UPDATE crm.contacts SET account_id = 6 WHERE id = 5; \
         DELETE FROM crm.contacts WHERE account_id = 3; \
         DELETE FROM crm.accounts WHERE id = 3; \
         UPDATE crm.accounts SET id = 300 WHERE id = 205; \
         UPDATE crm.contacts SET note = 'called' WHERE id = 10",
    )
    .await?;
    let dst = target.client("shop").await?;
    wait_for_landing(
        &dst,
        "SELECT 1 FROM tenant_acme.contacts c JOIN godwit.key_map m \
                     ON m.target_table = 'tenant_acme.contacts' AND m.old_key = '10' \
                     AND m.new_key = c.id::text WHERE c.note = 'called'",
        &log_path,
    )
    .await?;
    verify_and_cut_over(&url, "crm-remap-stream", &log_path)?;

    let sides = digests(&source, &target, "shop").await?;
    assert_eq!(sides[0], sides[2], "accounts, read back through the map");
    assert_eq!(sides[1], sides[3], "contacts, read back through the map");
    assert_eq!((sides[2].0, sides[3].0), (204, 401));
    let (_, _, distinct, orphans) = landed_ids(&target, "shop").await?;
    assert_eq!((distinct, orphans), (204, 0));
    Ok(())
}
