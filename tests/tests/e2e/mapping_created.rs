//! A mapped table the target does not have: the customer's CRM lands in a
//! tenant schema the job creates, under mapped names (a renamed column, a
//! masked one, a dropped one, offset contact ids). What such a table
//! cannot carry (an expression index, a generated column over a renamed
//! one) is refused by `godwit plan` and the run, nothing written; then the
//! tables are created with their primary keys, unique constraint, check,
//! index, foreign key and an identity numbering after the copied ids;
//! both databases' digests agree, `godwit verify` matches, and a replay
//! into an empty database creates them the same way.

use godwit_tests::{
    Job, PgCluster, describe, run_godwit, run_godwit_at_terminal, source_and_target, spec_body,
};

use crate::mapping::verified;
use crate::mapping_review::empty_database;

async fn source_crm(source: &PgCluster) -> anyhow::Result<()> {
    source
        .client("shop")
        .await?
        .batch_execute(
            "CREATE SCHEMA crm; \
             CREATE TABLE crm.accounts (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, \
                 credit numeric CHECK (credit >= 0), tier text NOT NULL DEFAULT 'basic', legacy text, \
                 name_length integer GENERATED ALWAYS AS (char_length(name)) STORED); \
             CREATE TABLE crm.contacts (id integer PRIMARY KEY, \
                 account_id integer NOT NULL REFERENCES crm.accounts (id) ON DELETE CASCADE, phone text); \
             CREATE INDEX contacts_phone ON crm.contacts (phone); \
             CREATE INDEX contacts_lower_phone ON crm.contacts (lower(phone)); \
             ALTER TABLE crm.contacts ADD CONSTRAINT contacts_phone_once UNIQUE (phone) DEFERRABLE; \
             INSERT INTO crm.accounts (name, email, credit, legacy) \
                 SELECT 'account ' || g, 'a' || g || '@example.com', g * 1.5, 'L' || g \
                 FROM generate_series(1, 200) g; \
             INSERT INTO crm.contacts SELECT g, g % 200 + 1, '+1555' || lpad(g::text, 7, '0') \
                 FROM generate_series(1, 400) g",
        )
        .await?;
    source.hand_tables_to_migrator("shop").await?;
    source
        .client("shop")
        .await?
        .batch_execute("ALTER SCHEMA crm OWNER TO migrator")
        .await?;
    Ok(())
}

const MAPPING: &str = "mapping:
  tables:
    - from: crm.accounts
      to: tenant_new.accounts
      columns:
        name: { to: display_name }
        email: { mask: tokenise-email }
        legacy: { drop: true }
    - from: crm.contacts
      to: tenant_new.contacts
      columns:
        id: { offset: 1000 }
";

/// The source as mapped and the target's tables, (count, digest) each,
/// by each database; the emails compared by count only (tokens).
async fn digests(
    source: &PgCluster,
    target: &PgCluster,
    db: &str,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let src = source.client("shop").await?;
    let dst = target.client(db).await?;
    let mut out = Vec::new();
    for (at_source, at_target) in [
        (
            "SELECT count(*), coalesce(sum(hashtext(ROW(id, name, credit, tier, name_length)::text)), 0) \
             FROM crm.accounts",
            "SELECT count(*), coalesce(sum(hashtext(ROW(id, display_name, credit, tier, name_length)::text)), 0) \
             FROM tenant_new.accounts",
        ),
        (
            "SELECT count(*), coalesce(sum(hashtext(ROW(id + 1000, account_id, phone)::text)), 0) \
             FROM crm.contacts",
            "SELECT count(*), coalesce(sum(hashtext(ROW(id, account_id, phone)::text)), 0) \
             FROM tenant_new.contacts",
        ),
    ] {
        let s = src.query_one(at_source, &[]).await?;
        let t = dst.query_one(at_target, &[]).await?;
        out.push((s.get(0), s.get(1)));
        out.push((t.get(0), t.get(1)));
    }
    Ok(out)
}

/// The created tables' constraints by kind, and their plain indexes.
async fn objects(target: &PgCluster, db: &str) -> anyhow::Result<Vec<String>> {
    Ok(target
        .client(db)
        .await?
        .query(
            "SELECT c.relname || ' ' || con.contype::text FROM pg_constraint con \
             JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'tenant_new' \
             UNION ALL SELECT t.relname || ' index ' || pg_get_indexdef(i.indexrelid, 1, true) \
             FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = 'tenant_new' \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid) \
             ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_the_target_lacks_is_created_under_the_mapped_names_with_its_keys_and_indexes()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    source_crm(&source).await?;
    let job = Job::create(|staging| {
        spec_body("crm-created", &source, &target, staging)
            .replace("tables: [\"*\"]", "tables: [crm.accounts, crm.contacts]")
            + "\n"
            + MAPPING
    })?;

    for command in ["plan", "run"] {
        let refused = run_godwit(&[command, job.spec()], &[])?;
        assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
        let said = String::from_utf8_lossy(&refused.stderr);
        for expected in [
            "crm.contacts → tenant_new.contacts: the index contacts_lower_phone is not a plain index",
            "crm.contacts → tenant_new.contacts: the unique constraint contacts_phone_once (UNIQUE (phone) \
             DEFERRABLE) is not a plain one",
            "crm.accounts → tenant_new.accounts: the generated column name_length is computed from name, \
             which the mapping renames",
        ] {
            assert!(
                said.contains(expected),
                "{command}: {expected:?} missing:\n{said}"
            );
        }
    }
    let dst = target.client("shop").await?;
    let written: bool = dst
        .query_one(
            "SELECT to_regnamespace('godwit') IS NOT NULL OR to_regnamespace('tenant_new') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    assert!(!written, "the refused run wrote to the target");

    source
        .client("shop")
        .await?
        .batch_execute(
            "DROP INDEX crm.contacts_lower_phone; \
             ALTER TABLE crm.contacts DROP CONSTRAINT contacts_phone_once; \
             ALTER TABLE crm.accounts DROP COLUMN name_length; \
             ALTER TABLE crm.accounts ADD COLUMN name_length integer \
                 GENERATED ALWAYS AS (char_length(tier)) STORED",
        )
        .await?;
    let planned = run_godwit(&["plan", job.spec()], &[])?;
    assert!(planned.status.success(), "{}", describe(&planned));
    let plan = String::from_utf8_lossy(&planned.stdout);
    for line in [
        "crm.accounts → tenant_new.accounts  (created by the job)",
        "its primary key, then after the copy 2 unique constraints, checks and indexes, 0 foreign keys",
        "its primary key, then after the copy 1 unique constraints, checks and indexes, 1 foreign keys",
    ] {
        assert!(plan.contains(line), "the plan lacks {line:?}:\n{plan}");
    }

    // Its spans go to the suite's collector: an embedded run is one trace
    // too, under `godwit run`.
    let collector = godwit_tests::otlp::OtlpReceiver::start().await?;
    let ran = run_godwit(&["run", job.spec()], &collector.env())?;
    assert!(ran.status.success(), "{}", describe(&ran));
    let sides = digests(&source, &target, "shop").await?;
    assert_eq!(sides[0], sides[1], "accounts as mapped");
    assert_eq!(sides[2], sides[3], "contacts as mapped");
    assert_eq!((sides[1].0, sides[3].0), (200, 400));
    let tree = crate::traces::Tree::of_job(&collector, "crm-created").await?;
    crate::traces::assert_copy_tree(
        &tree,
        "godwit run",
        &[
            ("tenant_new.accounts".to_owned(), sides[0].0),
            ("tenant_new.contacts".to_owned(), sides[2].0),
        ]
        .into(),
    )?;
    let expected_objects = vec![
        "accounts c".to_owned(),
        "accounts p".to_owned(),
        "accounts u".to_owned(),
        "contacts f".to_owned(),
        "contacts index phone".to_owned(),
        "contacts p".to_owned(),
    ];
    assert_eq!(objects(&target, "shop").await?, expected_objects);
    let tokens: i64 = dst
        .query_one(
            "SELECT count(*) FROM tenant_new.accounts WHERE email LIKE '%@example.com' \
             AND email NOT LIKE 'a%@example.com'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(tokens, 200, "every email is a token that keeps its domain");
    let (code, report) = verified(&job)?;
    assert_eq!(code, Some(0), "{report}");
    // The customer's debrief as one HTML document and as a PDF: what
    // moved, when, the verification's layers, the lineage, the audit
    // trail's head; no value.
    let html = String::from_utf8(crate::debrief::report(job.spec(), "html", &[])?)?;
    for expected in [
        "<!DOCTYPE html>",
        "<h1>Migration of job crm-created</h1>",
        "<h2>What moved</h2>",
        "<td>tenant_new.accounts</td><td>1</td><td>1</td><td>200</td>",
        "<td>tenant_new.contacts</td>",
        "<h2>Mapping lineage</h2>",
        "<td>crm.accounts.name</td><td>tenant_new.accounts.display_name</td><td>renamed</td>",
        "<td>crm.accounts.legacy</td><td></td><td>dropped</td>",
        "<svg",
    ] {
        assert!(html.contains(expected), "{expected:?} missing:\n{html}");
    }
    let head = crate::debrief::audit_head(&job)?;
    crate::debrief::assert_copy_sections(&html, &head)?;
    assert!(
        !html.contains("@example.com"),
        "a value reached the debrief"
    );
    assert!(!html.contains("<script"), "the debrief runs nothing");
    // Headless Chromium reads it as the document it says it is.
    let dom = crate::debrief::browse(job.dir.path(), &html)?;
    assert!(
        dom.contains("<title>Migration of job crm-created</title>"),
        "{dom}"
    );
    assert!(dom.matches("<table>").count() >= 5, "{dom}");
    assert!(dom.contains("<td>tenant_new.accounts</td>"), "{dom}");
    assert!(dom.contains("<polyline"), "no chart drawn: {dom}");
    // The PDF, as pdftotext reads it.
    let pdf = crate::debrief::report(job.spec(), "pdf", &[])?;
    let text = crate::debrief::pdf_text(job.dir.path(), &pdf)?;
    crate::debrief::assert_copy_sections(&text, &head)?;
    for expected in [
        "Migration of job crm-created",
        "tenant_new.accounts",
        "crm.accounts.name",
        "tenant_new.accounts.display_name",
        "renamed",
        "match",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    assert!(!text.contains("@example.com"), "a value reached the PDF");
    // At a terminal the PDF is refused, not printed as noise.
    let at_terminal = run_godwit_at_terminal(&["report", job.spec(), "--format", "pdf"])?;
    assert_eq!(
        at_terminal.status.code(),
        Some(2),
        "{}",
        describe(&at_terminal)
    );
    assert!(
        String::from_utf8_lossy(&at_terminal.stdout).contains("a PDF is not for the terminal"),
        "{}",
        describe(&at_terminal)
    );
    // The same material as JSON, for automation.
    let json: serde_json::Value =
        serde_json::from_slice(&crate::debrief::report(job.spec(), "json", &[])?)?;
    assert_eq!(json["report"]["matched"], true, "{json}");
    assert_eq!(json["audit"]["intact"]["head"], head.as_str(), "{json}");
    assert!(
        json["history"]["phases"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "copying")),
        "{json}"
    );
    assert_eq!(json["history"]["moved"][0]["rows"], 200, "{json}");
    // At a terminal, the verification draws its ranges' bar.
    let at_terminal = run_godwit_at_terminal(&["verify", job.spec()])?;
    assert!(at_terminal.status.success(), "{}", describe(&at_terminal));
    let drawn = String::from_utf8_lossy(&at_terminal.stdout);
    assert!(
        drawn.contains(&format!("verify crm-created [{}]", "=".repeat(30)))
            && drawn.contains("ranges"),
        "{drawn}"
    );

    // A review copy in an empty database creates the tables the same way;
    // at a terminal it draws its chunks' bar.
    let review = empty_database(&target, "review").await?;
    let replayed = run_godwit_at_terminal(&["replay", job.spec(), "--target", &review])?;
    assert!(replayed.status.success(), "{}", describe(&replayed));
    let drawn = String::from_utf8_lossy(&replayed.stdout);
    assert!(
        drawn.contains(&format!("replay crm-created [{}]", "=".repeat(30)))
            && drawn.contains("chunks"),
        "{drawn}"
    );
    let sides = digests(&source, &target, "review").await?;
    assert_eq!(sides[0], sides[1], "accounts of the review copy");
    assert_eq!(sides[2], sides[3], "contacts of the review copy");
    assert_eq!(objects(&target, "review").await?, expected_objects);

    // The platform's own next account is numbered after the copied ids,
    // and the carried check still holds.
    let next: i32 = dst
        .query_one(
            "INSERT INTO tenant_new.accounts (display_name) VALUES ('platform') RETURNING id",
            &[],
        )
        .await?
        .get(0);
    assert!(next > 200, "the identity numbers from {next}");
    let refused = dst
        .execute(
            "INSERT INTO tenant_new.accounts (display_name, credit) VALUES ('negative', -1)",
            &[],
        )
        .await;
    assert!(refused.is_err(), "the check was not carried");
    Ok(())
}
