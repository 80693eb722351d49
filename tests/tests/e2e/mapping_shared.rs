//! Two source tables into one: the customer's accounts and archived
//! accounts land in the platform's shared, tenant-partitioned accounts,
//! in one slice, their ids kept apart by offsets. Sharers that disagree
//! (another slice, other columns) are refused before anything is written;
//! the copy lands both, both databases' digests of the union agree, the
//! check compares the union with the slice and names a planted change in
//! an archived row by its key as landed, and a replay lands both again.
//! Streamed, changes to both land in the one slice, and changes to a
//! table the job created under a new name land there; the cutover's
//! checks match and both databases' digests agree.

use godwit_tests::{Job, PgCluster, describe, run_godwit, source_and_target, spec_body};

use crate::mapping::{LANDING, TENANT, crm, verified};
use crate::mapping_review::review_database;
use crate::mapping_stream::{listen, verify_and_cut_over, wait_for_landing};

/// The landing of `mapping.rs`, and the archived accounts by the same
/// rules, their ids offset further; `archived_credit`: how the archived
/// credit lands.
fn shared(archived_credit: &str) -> String {
    let accounts = &LANDING[LANDING.find("    - from: crm.accounts").unwrap_or(0)..];
    format!(
        "{LANDING}{}",
        accounts
            .replace("from: crm.accounts", "from: crm.archived_accounts")
            .replace("offset: 1000000", "offset: 2000000")
            .replace(
                "credit: { type: \"numeric(12,2)\", on_error: \"null\" }",
                archived_credit
            )
    )
}

const CREDIT: &str = "credit: { type: \"numeric(12,2)\", on_error: \"null\" }";

/// The union of the sources as landed, and the tenant's slice: (count,
/// digest) of each, by its own database.
async fn digests(
    source: &PgCluster,
    target: &PgCluster,
    db: &str,
) -> anyhow::Result<[(i64, i64); 2]> {
    let at_source = source
        .client("shop")
        .await?
        .query_one(
            "SELECT count(*), coalesce(sum(hashtext(ROW(i, n)::text)), 0) FROM \
             (SELECT (id + 1000000)::bigint AS i, name::varchar(20) AS n FROM crm.accounts \
              UNION ALL SELECT (id + 2000000)::bigint, name::varchar(20) FROM crm.archived_accounts) u",
            &[],
        )
        .await?;
    let at_target = target
        .client(db)
        .await?
        .query_one(
            "SELECT count(*), coalesce(sum(hashtext(ROW(id, display_name)::text)), 0) \
             FROM platform.accounts WHERE tenant_id = $1::text::uuid",
            &[&TENANT],
        )
        .await?;
    Ok([
        (at_source.get(0), at_source.get(1)),
        (at_target.get(0), at_target.get(1)),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn two_source_tables_land_in_one_slice_and_are_compared_as_their_union() -> anyhow::Result<()>
{
    let (source, target) = source_and_target(1).await?;
    crm(&source, &target).await?;
    let src = source.client("shop").await?;
    src.batch_execute(
        "UPDATE crm.accounts SET name = left(name, 20); \
         CREATE TABLE crm.archived_accounts (LIKE crm.accounts INCLUDING ALL); \
         INSERT INTO crm.archived_accounts (id, name, email, legacy_code, credit) \
             SELECT g, 'archived ' || g, 'old' || g || '@example.com', 'A' || g, g * 2.5 \
             FROM generate_series(1, 50) g",
    )
    .await?;
    source.hand_tables_to_migrator("shop").await?;
    let job = Job::create(|staging| {
        spec_body("crm-shared", &source, &target, staging).replace(
            "tables: [\"*\"]",
            "tables: [crm.accounts, crm.archived_accounts]",
        ) + "\n"
            + &shared("credit: { drop: true }")
    })?;

    // Sharers filling other columns: refused.
    let refused = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(
            "crm.accounts and crm.archived_accounts land in platform.accounts filling different columns (credit)"
        ),
        "{}",
        describe(&refused)
    );
    let dst = target.client("shop").await?;
    let written: bool = dst
        .query_one("SELECT to_regnamespace('godwit') IS NOT NULL", &[])
        .await?
        .get(0);
    assert!(!written, "the refused run wrote to the target");
    job.edit("credit: { drop: true }", CREDIT)?;

    let ran = run_godwit(&["run", job.spec()], &[])?;
    assert!(ran.status.success(), "{}", describe(&ran));
    let said = String::from_utf8_lossy(&ran.stdout);
    assert!(
        said.contains("2/2 partitions, 250 rows"),
        "each table's partitions counted once:\n{said}"
    );
    let [at_source, at_target] = digests(&source, &target, "shop").await?;
    assert_eq!(at_source, at_target, "the union as landed, and the slice");
    assert_eq!(at_target.0, 250);

    let (code, report) = verified(&job)?;
    assert_eq!(code, Some(0), "{report}");
    dst.execute(
        "UPDATE platform.accounts SET display_name = 'planted' WHERE tenant_id = $1::text::uuid AND id = 2000007",
        &[&TENANT],
    )
    .await?;
    let (code, report) = verified(&job)?;
    assert_eq!(code, Some(1), "{report}");
    let different = report["tables"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["table"] == "platform.accounts"))
        .map(|t| t["content"]["different"].clone())
        .unwrap_or_default();
    assert_eq!(
        different,
        serde_json::json!([{ "key": "(2000007)", "columns": ["display_name"] }]),
        "{report}"
    );

    let review = review_database(&target, "review").await?;
    let replayed = run_godwit(&["replay", job.spec(), "--target", &review], &[])?;
    assert!(replayed.status.success(), "{}", describe(&replayed));
    let [at_source, at_review] = digests(&source, &target, "review").await?;
    assert_eq!(at_source, at_review, "the review copy's slice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_changes_land_in_a_shared_slice_and_in_a_table_the_job_created()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    crm(&source, &target).await?;
    let src = source.client("shop").await?;
    src.batch_execute(
        "UPDATE crm.accounts SET name = left(name, 20); \
         CREATE TABLE crm.archived_accounts (LIKE crm.accounts INCLUDING ALL); \
         INSERT INTO crm.archived_accounts (id, name, email, legacy_code, credit) \
             SELECT g, 'archived ' || g, 'old' || g || '@example.com', 'A' || g, g * 2.5 \
             FROM generate_series(1, 50) g; \
         CREATE TABLE crm.notes (id serial PRIMARY KEY, body text NOT NULL, kind text DEFAULT 'memo'); \
         INSERT INTO crm.notes (body) SELECT 'note ' || g FROM generate_series(1, 30) g",
    )
    .await?;
    source.hand_tables_to_migrator("shop").await?;
    let mapping = shared(CREDIT).replace(
        "legacy_code: { drop: true }",
        "legacy_code: { drop: true }\n        name_length: { drop: true }",
    ) + "    - from: crm.notes\n      to: tenant_new.notes\n      columns:\n        \
         body: { to: text_body }\n";
    let job = Job::create(|staging| {
        spec_body("crm-shared-stream", &source, &target, staging).replace(
            "tables: [\"*\"]",
            "tables: [crm.accounts, crm.archived_accounts, crm.notes]",
        ) + "\nchanges: {}\n"
            + &mapping
    })?;
    let (_run, log_path, url) = listen(&job, "crm-shared-stream").await?;
    src.batch_execute(
        "INSERT INTO crm.accounts (id, name, email, credit) \
             SELECT g, 'new ' || g, 'n' || g || '@example.com', g FROM generate_series(201, 203) g; \
         INSERT INTO crm.archived_accounts (id, name, email, credit) VALUES (51, 'archived 51', NULL, 1); \
         UPDATE crm.archived_accounts SET name = 'renamed a7' WHERE id = 7; \
         DELETE FROM crm.archived_accounts WHERE id = 8; \
         INSERT INTO crm.notes (body) VALUES ('new note'), ('another'); \
         UPDATE crm.notes SET body = 'edited' WHERE id = 3; \
         DELETE FROM crm.notes WHERE id = 4; \
         UPDATE crm.notes SET body = 'last' WHERE id = 10",
    )
    .await?;
    let dst = target.client("shop").await?;
    wait_for_landing(
        &dst,
        "SELECT 1 FROM tenant_new.notes WHERE id = 10 AND text_body = 'last'",
        &log_path,
    )
    .await?;
    verify_and_cut_over(&url, "crm-shared-stream", &log_path)?;

    let [at_source, at_target] = digests(&source, &target, "shop").await?;
    assert_eq!(at_source, at_target, "the union as landed, and the slice");
    assert_eq!(at_target.0, 253);
    let notes = |client: tokio_postgres::Client, sql: &'static str| async move {
        let row = client.query_one(sql, &[]).await?;
        anyhow::Ok((row.get::<_, i64>(0), row.get::<_, i64>(1)))
    };
    assert_eq!(
        notes(
            source.client("shop").await?,
            "SELECT count(*), sum(hashtext(ROW(id, body, kind)::text)) FROM crm.notes"
        )
        .await?,
        notes(
            target.client("shop").await?,
            "SELECT count(*), sum(hashtext(ROW(id, text_body, kind)::text)) FROM tenant_new.notes"
        )
        .await?,
        "the notes, in the table the job created"
    );
    // After the cutover the platform numbers its own notes past the
    // customer's.
    let next: i32 = dst
        .query_one(
            "INSERT INTO tenant_new.notes (text_body) VALUES ('platform') RETURNING id",
            &[],
        )
        .await?
        .get(0);
    assert!(next > 32, "the identity numbers from {next}");
    Ok(())
}
