//! Changes streamed through a mapping: after the copy of a customer's CRM
//! into the platform's tenant-partitioned `platform.accounts` and a tenant
//! schema, the customer's inserts, updates (a rename, a token, a value that
//! converts to NULL, a key change) and deletes land in the tenant's slice
//! as the mapping says (contacts into a table whose ids the platform numbers
//! `GENERATED ALWAYS`), while the platform writes another tenant's row into
//! the same table; a verification while streaming and the cutover's checks
//! match, and both databases' own digests agree at the end. A generated
//! column carried into a plain one is refused before anything is written;
//! a value that does not convert, and a column added on the source that
//! the mapping does not place, stop the stream by name. With `on_error:
//! skip-row`, rows leave and join the copy as their values stop or start
//! converting.

use std::process::{Command, Stdio};
use std::time::Duration;

use godwit_tests::{
    Job, PgCluster, Running, bin, describe, free_port, run_godwit, source_and_target, spec_body,
    wait_for_streaming, wait_until,
};

use crate::mapping::{LANDING, TENANT, crm, tokens_by_source_id};

const OTHER_TENANT: &str = "00000000-0000-4000-8000-0000000000aa";

/// The accounts and contacts as the mapping lands them, each side's
/// count and digest computed by its own database.
async fn digests(source: &PgCluster, target: &PgCluster) -> anyhow::Result<Vec<(i64, i64)>> {
    let src = source.client("shop").await?;
    let dst = target.client("shop").await?;
    let mut out = Vec::new();
    for (at_source, at_target) in [
        (
            "SELECT count(*), coalesce(sum(hashtext(ROW((id + 1000000)::bigint, name::varchar(20), \
                    CASE WHEN round(credit, 2) <> credit THEN NULL ELSE credit END::numeric(12, 2))::text)), 0) \
             FROM crm.accounts",
            "SELECT count(*), coalesce(sum(hashtext(ROW(id, display_name, credit)::text)), 0) \
             FROM platform.accounts WHERE tenant_id = $1::text::uuid",
        ),
        (
            "SELECT count(*), coalesce(sum(hashtext(ROW(id, account_id + 1000000, phone, note)::text)), 0) \
             FROM crm.contacts",
            "SELECT count(*), coalesce(sum(hashtext(ROW(id, account_id, phone, note)::text)), 0) \
             FROM tenant_acme.contacts WHERE $1::text IS NOT NULL",
        ),
    ] {
        let s = src.query_one(at_source, &[]).await?;
        let t = dst.query_one(at_target, &[&TENANT]).await?;
        out.push((s.get(0), s.get(1)));
        out.push((t.get(0), t.get(1)));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_stream_through_the_mapping_into_the_tenants_slice_and_cut_over()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    crm(&source, &target).await?;
    let src = source.client("shop").await?;
    src.batch_execute("UPDATE crm.accounts SET name = left(name, 20)")
        .await?;
    // The platform's key from a contact to its account joins the tenant
    // column; `order:` asks for contacts first, the key loads accounts
    // first all the same.
    let contacts = "    - from: crm.contacts\n      to: tenant_acme.contacts\n      tenant: tenant_id\n      \
                    add: { tenant_id: \"${customer_uuid}\" }\n";
    let job = Job::create(|staging| {
        spec_body("crm-stream", &source, &target, staging)
            .replace("tables: [\"*\"]", "tables: [crm.accounts, crm.contacts]")
            + "\nchanges: {}\n"
            + &LANDING.replace("  tables:", "  order: [crm.contacts]\n  tables:")
            + contacts
    })?;

    // The source does not stream generated values: carrying one into a
    // plain column is refused, by the plan and by the run, nothing written.
    // Nor a key of the platform's between tables the job lands rows in
    // (here a contact's thread): the copy loads tables in parallel.
    let dst = target.client("shop").await?;
    dst.batch_execute(
        "ALTER TABLE tenant_acme.contacts ADD COLUMN tenant_id uuid NOT NULL, \
             ADD CONSTRAINT contacts_account_fkey FOREIGN KEY (tenant_id, account_id) \
                 REFERENCES platform.accounts (tenant_id, id); \
         ALTER TABLE tenant_acme.contacts ADD COLUMN thread integer \
         REFERENCES tenant_acme.contacts (id) ON DELETE CASCADE",
    )
    .await?;
    let planned = run_godwit(&["plan", job.spec()], &[])?;
    assert_eq!(planned.status.code(), Some(2), "{}", describe(&planned));
    let said = String::from_utf8_lossy(&planned.stderr);
    for expected in [
        "name_length is generated on the source and lands in a plain column",
        "the platform's foreign key contacts_thread_fkey on tenant_acme.contacts references \
         tenant_acme.contacts, its own table, and the job lands rows in it",
    ] {
        assert!(said.contains(expected), "{expected:?} missing:\n{said}");
    }
    let refused = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    let said = String::from_utf8_lossy(&refused.stderr);
    for expected in [
        "name_length is generated on the source and lands in a plain column",
        "the platform's foreign key contacts_thread_fkey",
    ] {
        assert!(said.contains(expected), "{expected:?} missing:\n{said}");
    }
    let written: bool = dst
        .query_one("SELECT to_regnamespace('godwit') IS NOT NULL", &[])
        .await?
        .get(0);
    assert!(!written, "the refused run wrote to the target");
    dst.batch_execute("ALTER TABLE tenant_acme.contacts DROP COLUMN thread")
        .await?;
    job.edit(
        "legacy_code: { drop: true }",
        "legacy_code: { drop: true }\n        name_length: { drop: true }",
    )?;
    let planned = run_godwit(&["plan", job.spec()], &[])?;
    assert!(planned.status.success(), "{}", describe(&planned));
    let plan = String::from_utf8_lossy(&planned.stdout);
    let accounts_at = plan.find("crm.accounts → platform.accounts");
    let contacts_at = plan.find("crm.contacts → tenant_acme.contacts");
    assert!(
        accounts_at.is_some() && contacts_at > accounts_at,
        "the key puts accounts first:\n{plan}"
    );
    assert!(
        plan.contains(
            "loads once the tables before it are loaded: contacts_account_fkey references platform.accounts"
        ),
        "{plan}"
    );

    // The platform's accounts take their time to load: a contact loaded
    // alongside would meet the key before its account is committed.
    dst.batch_execute(
        "CREATE FUNCTION platform.slow_load() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$; \
         CREATE TRIGGER slow_load AFTER INSERT ON platform.accounts \
             FOR EACH STATEMENT EXECUTE FUNCTION platform.slow_load()",
    )
    .await?;
    let (_run, log_path, url) = listen(&job, "crm-stream").await?;
    dst.batch_execute("DROP TRIGGER slow_load ON platform.accounts")
        .await?;

    src.batch_execute(
        "INSERT INTO crm.accounts (id, name, email, legacy_code, credit) \
             SELECT g, 'new ' || g, 'n' || g || '@example.com', 'N', g * 1.5 FROM generate_series(201, 210) g; \
         INSERT INTO crm.contacts SELECT g, g - 200, '+1666' || lpad(g::text, 7, '0'), 'new' \
             FROM generate_series(401, 405) g; \
         UPDATE crm.accounts SET name = 'renamed 7', country = 'DE' WHERE id = 7; \
         UPDATE crm.accounts SET email = 'moved@example.com' WHERE id = 8; \
         UPDATE crm.accounts SET credit = 1.001 WHERE id = 9; \
         UPDATE crm.accounts SET id = 300 WHERE id = 210; \
         DELETE FROM crm.contacts WHERE account_id = 3; \
         DELETE FROM crm.accounts WHERE id = 3; \
         UPDATE crm.contacts SET note = 'called' WHERE id = 10",
    )
    .await?;
    let dst = target.client("shop").await?;
    dst.execute(
        "INSERT INTO platform.accounts (tenant_id, id, display_name) VALUES ($1::text::uuid, 2, 'other 2')",
        &[&OTHER_TENANT],
    )
    .await?;
    wait_until(
        "the last change to land in the tenant's slice",
        Duration::from_secs(60),
        || async {
            Ok(dst
                .query_opt(
                    "SELECT 1 FROM tenant_acme.contacts WHERE id = 10 AND note = 'called'",
                    &[],
                )
                .await?
                .map(|_| ()))
        },
    )
    .await
    .map_err(|e| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let status = run_godwit(&["status", "--coordinator", &url, "crm-stream"], &[])
            .map(|o| describe(&o))
            .unwrap_or_default();
        anyhow::anyhow!("{e}\n{status}\n{log}")
    })?;
    let landed: Vec<(i64, String)> = dst
        .query(
            "SELECT id, display_name FROM platform.accounts WHERE tenant_id = $1::text::uuid \
             AND id IN (1000003, 1000007, 1000210, 1000300) ORDER BY id",
            &[&TENANT],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        landed,
        vec![
            (1_000_007, "renamed 7".to_owned()),
            (1_000_300, "new 210".to_owned())
        ]
    );
    let nulled: bool = dst
        .query_one(
            "SELECT credit IS NULL FROM platform.accounts WHERE tenant_id = $1::text::uuid AND id = 1000009",
            &[&TENANT],
        )
        .await?
        .get(0);
    assert!(nulled, "a third decimal converts to NULL (on_error: null)");
    // char(2) values land whole, streamed ones too.
    let countries: Vec<(String, i64)> = dst
        .query(
            "SELECT country::text, count(*) FROM platform.accounts WHERE tenant_id = $1::text::uuid \
             GROUP BY 1 ORDER BY 1",
            &[&TENANT],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        countries,
        vec![("DE".to_owned(), 1), ("US".to_owned(), 208)]
    );

    verify_and_cut_over(&url, "crm-stream", &log_path)?;

    let sides = digests(&source, &target).await?;
    assert_eq!(
        sides[0], sides[1],
        "accounts: source as mapped, target's slice"
    );
    assert_eq!(sides[2], sides[3], "contacts");
    assert_eq!(sides[0].0, 209);
    assert_eq!(sides[2].0, 403);
    // Every email the target holds is the customer's token of the
    // source's address, the changed one too.
    let tokens = tokens_by_source_id(&source, &target, &job, TENANT, 1_000_000).await?;
    assert_eq!(tokens.len(), 209);
    let others: Vec<(i64, String)> = dst
        .query(
            "SELECT id, display_name FROM platform.accounts WHERE tenant_id = $1::text::uuid ORDER BY id",
            &[&OTHER_TENANT],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        others,
        vec![(1, "other tenant".to_owned()), (2, "other 2".to_owned())]
    );
    // A key the platform adds between the landed tables afterwards would
    // have refused the copy, never the verification of what it carried.
    dst.batch_execute(
        "ALTER TABLE tenant_acme.contacts ADD COLUMN thread integer \
         REFERENCES tenant_acme.contacts (id) ON DELETE CASCADE",
    )
    .await?;
    let verified = run_godwit(&["verify", job.spec()], &[])?;
    assert!(verified.status.success(), "{}", describe(&verified));

    // The check of changed keys the cutover runs, on its own: the stream's
    // keys are the source's, found on the target where they landed; a
    // planted difference in a changed row (a value, a token) is named by
    // its key as landed, another tenant's row never.
    let spec = godwit_common::spec::JobSpec::from_file(&job.spec_path)?;
    let names = [godwit_common::spec::TableName::parse("crm.accounts").expect("name")];
    let resolved = godwit_common::mapping::resolve::resolve(
        spec.mapping.as_ref().expect("mapping"),
        &src,
        &dst,
        &names,
        true,
    )
    .await?;
    let carried =
        godwit_common::mapping::carry::carry(&resolved.landings[0]).map_err(anyhow::Error::msg)?;
    let mut touched = godwit_common::pg::changed_keys::Touched::default();
    for key in ["7", "8", "300"] {
        touched.key(&carried.target, &[key]);
    }
    let key = godwit_common::keys::Kek::from_file(&job.key_path)?.token_key();
    let masker = godwit_common::mapping::mask::Masker {
        key: &key,
        customer: "acme",
    };
    let compare = |touched: godwit_common::pg::changed_keys::Touched| {
        let (src, dst, carried, masker) = (&src, &dst, carried.clone(), &masker);
        async move {
            godwit_common::verify::compare_changed(
                (src, dst),
                &touched,
                (&[carried], Some(masker)),
                godwit_common::verify::Options::default(),
            )
            .await
        }
    };
    let reports = compare(touched.clone()).await?;
    assert!(reports[0].content.matched, "{reports:?}");
    dst.execute(
        "UPDATE platform.accounts SET display_name = 'planted', contact_email = 'x@example.com' \
         WHERE tenant_id = $1::text::uuid AND id = 1000300",
        &[&TENANT],
    )
    .await?;
    dst.execute(
        "UPDATE platform.accounts SET display_name = 'planted' WHERE tenant_id = $1::text::uuid AND id = 1000007",
        &[&OTHER_TENANT],
    )
    .await?;
    let reports = compare(touched).await?;
    let different: Vec<(String, Vec<String>)> = reports[0]
        .content
        .different
        .iter()
        .map(|d| (d.key.clone(), d.columns.clone()))
        .collect();
    assert_eq!(
        different,
        vec![(
            "(1000300)".to_owned(),
            vec!["display_name".to_owned(), "contact_email".to_owned()]
        )],
        "{reports:?}"
    );
    Ok(())
}

/// Starts `godwit run --listen` of a streaming job of the accounts alone
/// (its generated column dropped) into `tenant`'s slice, moved by `offset`;
/// returns it once it streams, with its log.
async fn streaming(
    source: &PgCluster,
    target: &PgCluster,
    name: &str,
    (tenant, offset): (&str, &str),
) -> anyhow::Result<(Running, std::path::PathBuf, Job)> {
    let job = Job::create(|staging| {
        spec_body(name, source, target, staging)
            .replace("tables: [\"*\"]", "tables: [crm.accounts]")
            + "\nchanges: {}\n"
            + &LANDING
                .replace(TENANT, tenant)
                .replace("offset: 1000000", offset)
                .replace(
                    "legacy_code: { drop: true }",
                    "legacy_code: { drop: true }\n        name_length: { drop: true }",
                )
    })?;
    let (run, log_path, _) = listen(&job, name).await?;
    Ok((run, log_path, job))
}

/// `godwit run --listen` of `job` (named `name`), once it streams: the
/// run, its log and the API's URL.
pub(crate) async fn listen(
    job: &Job,
    name: &str,
) -> anyhow::Result<(Running, std::path::PathBuf, String)> {
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let log_path = job.dir.path().join("run.log");
    let run = Running(
        Command::new(bin("godwit")?)
            .args(["run", job.spec(), "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?,
    );
    wait_for_streaming(&url, name).await?;
    Ok((run, log_path, url))
}

/// Waits until `landed` (a query on the target) finds a row: the stream's
/// last change is there. The job's log is in the error otherwise.
pub(crate) async fn wait_for_landing(
    dst: &tokio_postgres::Client,
    landed: &str,
    log_path: &std::path::Path,
) -> anyhow::Result<()> {
    wait_until(
        "the last change to land",
        Duration::from_secs(60),
        || async { Ok(dst.query_opt(landed, &[]).await?.map(|_| ())) },
    )
    .await
    .map_err(|e| {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        anyhow::anyhow!("{e}\n{log}")
    })
}

/// Verifies a streaming job through its coordinator, then cuts it over.
pub(crate) fn verify_and_cut_over(
    url: &str,
    job: &str,
    log_path: &std::path::Path,
) -> anyhow::Result<()> {
    let verified = run_godwit(&["verify", "--coordinator", url, job], &[])?;
    assert!(verified.status.success(), "{}", describe(&verified));
    let cut = run_godwit(&["cutover", "--coordinator", url, job], &[])?;
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(cut.status.success(), "{}\n{log}", describe(&cut));
    Ok(())
}

/// Waits for the job to end with exit 1; returns its log.
async fn stopped(mut run: Running, log_path: &std::path::Path) -> anyhow::Result<String> {
    let status = run
        .exit_status("the job to stop", Duration::from_secs(120))
        .await;
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    let status = status.map_err(|e| anyhow::anyhow!("{e}\n{log}"))?;
    assert_eq!(status.code(), Some(1), "{log}");
    Ok(log)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_that_does_not_convert_or_an_unplaced_new_column_stops_the_stream_by_name()
-> anyhow::Result<()> {
    const SECRET: &str = "secret-value-7f3e";
    let (source, target) = source_and_target(1).await?;
    crm(&source, &target).await?;
    let src = source.client("shop").await?;
    src.batch_execute("UPDATE crm.accounts SET name = left(name, 20)")
        .await?;

    let (run, log_path, _job) = streaming(
        &source,
        &target,
        "crm-unconvertible",
        (TENANT, "offset: 1000000"),
    )
    .await?;
    src.batch_execute(&format!(
        "UPDATE crm.accounts SET name = 'a name too long {SECRET}' WHERE id = 11"
    ))
    .await?;
    let log = stopped(run, &log_path).await?;
    assert!(
        log.contains(
            "a value of name of crm.accounts does not convert to character varying(20) (the row's key is \
             kept out of messages)"
        ),
        "{log}"
    );
    assert!(!log.contains(SECRET), "the log holds the value:\n{log}");

    src.batch_execute("UPDATE crm.accounts SET name = 'account 11' WHERE id = 11")
        .await?;
    let (run, log_path, _job) = streaming(
        &source,
        &target,
        "crm-added-column",
        ("6f1c2a54-0000-4000-8000-000000000002", "offset: 3000000"),
    )
    .await?;
    // Once the stream applies changes (the column is added after the
    // stream took its tables' shapes).
    src.batch_execute("UPDATE crm.accounts SET name = 'account twelve' WHERE id = 12")
        .await?;
    let dst = target.client("shop").await?;
    wait_until(
        "the stream to apply a change",
        Duration::from_secs(60),
        || async {
            Ok(dst
                .query_opt(
                    "SELECT 1 FROM platform.accounts WHERE id = 3000012 AND display_name = 'account twelve'",
                    &[],
                )
                .await?
                .map(|_| ()))
        },
    )
    .await?;
    src.batch_execute(
        "ALTER TABLE crm.accounts ADD COLUMN region text; \
         UPDATE crm.accounts SET region = 'eu' WHERE id = 12",
    )
    .await?;
    let log = stopped(run, &log_path).await?;
    assert!(
        log.contains(
            "the source's crm.accounts has a column region its mapping neither lands nor drops"
        ),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_the_copy_skipped_leave_and_join_it_as_changes_stream() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    crm(&source, &target).await?;
    // Four names are longer than varchar(20): their rows are skipped.
    let job = Job::create(|staging| {
        spec_body("crm-skip-stream", &source, &target, staging)
            .replace("tables: [\"*\"]", "tables: [crm.accounts]")
            + "\nchanges: {}\n"
            + &LANDING
                .replace(
                    "type: \"varchar(20)\", on_error: fail",
                    "type: \"varchar(20)\", on_error: skip-row",
                )
                // Legacy codes masked after their conversion into the
                // platform's varchar(4) (the column's default when too long).
                .replace(
                    "legacy_code: { drop: true }",
                    "legacy_code: { to: code, type: \"varchar(4)\", on_error: default, mask: fake }\n        \
                     name_length: { drop: true }",
                )
    })?;
    let (_run, log_path, url) = listen(&job, "crm-skip-stream").await?;
    let src = source.client("shop").await?;
    src.batch_execute(
        "INSERT INTO crm.accounts (id, name, email, credit) VALUES \
             (201, repeat('z', 30), 'z@example.com', 1), (202, 'short', 's@example.com', 2); \
         UPDATE crm.accounts SET name = 'short now' WHERE id = 50; \
         UPDATE crm.accounts SET name = repeat('y', 30) WHERE id = 7; \
         UPDATE crm.accounts SET credit = 5 WHERE id = 100; \
         DELETE FROM crm.contacts WHERE account_id = 150; \
         DELETE FROM crm.accounts WHERE id = 150; \
         UPDATE crm.accounts SET name = 'renamed 9' WHERE id = 9; \
         UPDATE crm.accounts SET legacy_code = 'LEGACY-13' WHERE id = 13; \
         UPDATE crm.accounts SET legacy_code = 'Q9' WHERE id = 14; \
         UPDATE crm.accounts SET name = 'marker' WHERE id = 11",
    )
    .await?;
    let dst = target.client("shop").await?;
    wait_for_landing(
        &dst,
        "SELECT 1 FROM platform.accounts WHERE id = 1000011 AND display_name = 'marker'",
        &log_path,
    )
    .await?;
    let present: Vec<i64> = dst
        .query(
            "SELECT id - 1000000 FROM platform.accounts WHERE tenant_id = $1::text::uuid \
             AND id - 1000000 IN (7, 9, 50, 100, 150, 201, 202) ORDER BY id",
            &[&TENANT],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        present,
        vec![9, 50, 202],
        "7 left the copy, 50 joined it, 100 and 201 stay skipped, 150 is gone"
    );
    // Converted, then masked, by the worker: the default of a code too
    // long, a code that fits, each the key's stand-in.
    let key = godwit_common::keys::Kek::from_file(&job.key_path)?.token_key();
    let masker = godwit_common::mapping::mask::Masker {
        key: &key,
        customer: "acme",
    };
    let fake = |value: &str| masker.apply(godwit_common::mapping::Mask::Fake, None, Some(value));
    let codes: Vec<Option<String>> = dst
        .query(
            "SELECT code FROM platform.accounts WHERE tenant_id = $1::text::uuid \
             AND id IN (1000013, 1000014) ORDER BY id",
            &[&TENANT],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(codes, vec![fake("n/a"), fake("Q9")]);
    verify_and_cut_over(&url, "crm-skip-stream", &log_path)?;
    let at_source = src
        .query_one(
            "SELECT count(*), coalesce(sum(hashtext(ROW((id + 1000000)::bigint, name::varchar(20))::text)), 0) \
             FROM crm.accounts WHERE char_length(name) <= 20",
            &[],
        )
        .await?;
    let at_target = dst
        .query_one(
            "SELECT count(*), coalesce(sum(hashtext(ROW(id, display_name)::text)), 0) \
             FROM platform.accounts WHERE tenant_id = $1::text::uuid",
            &[&TENANT],
        )
        .await?;
    let sides: [(i64, i64); 2] = [
        (at_source.get(0), at_source.get(1)),
        (at_target.get(0), at_target.get(1)),
    ];
    assert_eq!(sides[0], sides[1], "the rows kept, as landed");
    assert_eq!(sides[1].0, 197);
    Ok(())
}
