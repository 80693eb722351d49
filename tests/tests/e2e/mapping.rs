//! Mappings: `godwit plan` resolving a customer's CRM landing in a
//! platform's shared, tenant-sliced table and a tenant schema against both
//! real catalogs, with the conversions that would fail found in the
//! source's rows, and a bad mapping listed problem by problem with exit 2;
//! then a run landing the customer's accounts beside another tenant's
//! rows, checked independently and by `godwit verify` on the tenant's
//! slice.

use godwit_tests::compare::table_digest;
use godwit_tests::pg::LOADER;
use godwit_tests::{Job, PgCluster, describe, run_godwit, source_and_target, spec_body};

pub(crate) const TENANT: &str = "6f1c2a54-0000-4000-8000-000000000001";

/// The customer's CRM on the source, and the platform's shared accounts
/// table on the target, already holding another tenant's row.
pub(crate) async fn crm(source: &PgCluster, target: &PgCluster) -> anyhow::Result<()> {
    source
        .client("shop")
        .await?
        .batch_execute(
            "CREATE SCHEMA crm; \
             CREATE TABLE crm.accounts (id integer PRIMARY KEY, name text NOT NULL, email text, \
                                        legacy_code text, credit numeric, country char(2) NOT NULL DEFAULT 'US', \
                                        name_length integer GENERATED ALWAYS AS (char_length(name)) STORED); \
             CREATE TABLE crm.contacts (id integer PRIMARY KEY, account_id integer REFERENCES crm.accounts (id), \
                                        phone text, note text); \
             INSERT INTO crm.accounts SELECT g, 'account ' || g || CASE WHEN g % 50 = 0 THEN repeat('x', 30) ELSE '' END, \
                    'a' || g || '@example.com', 'L' || g, g * 1.005 FROM generate_series(1, 200) g; \
             INSERT INTO crm.contacts SELECT g, g % 200 + 1, '+1555' || lpad(g::text, 7, '0'), NULL \
                    FROM generate_series(1, 400) g",
        )
        .await?;
    source.hand_tables_to_migrator("shop").await?;
    source
        .client("shop")
        .await?
        .batch_execute("ALTER SCHEMA crm OWNER TO migrator")
        .await?;
    platform_schema(&target.client("shop").await?).await?;
    Ok(())
}

/// The platform's tables: a shared accounts table partitioned by tenant,
/// already holding another tenant's row, and a tenant schema's contacts.
pub(crate) async fn platform_schema(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA platform AUTHORIZATION {LOADER}; \
             CREATE TABLE platform.accounts (tenant_id uuid NOT NULL, id bigserial, \
                 display_name varchar(20) NOT NULL, contact_email text, credit numeric(12, 2), \
                 name_length integer, code varchar(4) DEFAULT 'n/a', country char(2), \
                 PRIMARY KEY (tenant_id, id)) PARTITION BY LIST (tenant_id); \
             CREATE TABLE platform.accounts_acme PARTITION OF platform.accounts \
                 FOR VALUES IN ('{TENANT}', '6f1c2a54-0000-4000-8000-000000000002'); \
             CREATE TABLE platform.accounts_others PARTITION OF platform.accounts DEFAULT; \
             ALTER TABLE platform.accounts OWNER TO {LOADER}; \
             ALTER TABLE platform.accounts_acme OWNER TO {LOADER}; \
             ALTER TABLE platform.accounts_others OWNER TO {LOADER}; \
             INSERT INTO platform.accounts VALUES ('00000000-0000-4000-8000-0000000000aa', 1, 'other tenant', NULL, 1); \
             CREATE SCHEMA tenant_acme AUTHORIZATION {LOADER}; \
             CREATE TABLE tenant_acme.contacts (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                 account_id integer, phone text, note text); \
             ALTER TABLE tenant_acme.contacts OWNER TO {LOADER}"
        ))
        .await?;
    Ok(())
}

/// Contacts into the tenant's table, accounts into the shared one skipping
/// rows other rows reference.
fn uncarried_mapping() -> String {
    "mapping:
  tables:
    - from: crm.contacts
      to: tenant_acme.contacts
    - from: crm.accounts
      to: platform.accounts
      tenant: tenant_id
      add: { tenant_id: \"${customer_uuid}\" }
      columns:
        name: { to: display_name, type: \"varchar(20)\", on_error: skip-row }
        email: { to: contact_email }
        legacy_code: { drop: true }
        credit: { type: \"numeric(12,2)\", on_error: \"null\" }
  values: { customer_uuid: 6f1c2a54-0000-4000-8000-000000000003 }
"
    .to_owned()
}

fn job(source: &PgCluster, target: &PgCluster, mapping: &str) -> anyhow::Result<Job> {
    Job::create(|staging| {
        spec_body("crm-plan", source, target, staging)
            .replace("tables: [\"*\"]", "tables: [crm.accounts, crm.contacts]")
            + "\n"
            + mapping
    })
}

/// The landing below, contacts copied first into the tenant's schema with
/// their phones masked in review copies.
fn good() -> String {
    LANDING.replace("  tables:", "  order: [crm.contacts]\n  tables:")
        + "    - from: crm.*\n      to: tenant_acme.*\n      columns:\n        \
           phone: { mask: tokenise-phone, masked_for: review }\n"
}

/// Plans `job`; asserts exit 2 and that stderr names every `expected` problem.
fn refused(job: &Job, expected: &[&str]) -> anyhow::Result<()> {
    let output = run_godwit(&["plan", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for piece in expected {
        assert!(stderr.contains(piece), "stderr lacks {piece:?}:\n{stderr}");
    }
    Ok(())
}

/// What the target holds outside `platform` and the other tenant's row.
async fn assert_target_untouched(target: &PgCluster) -> anyhow::Result<()> {
    let client = target.client("shop").await?;
    let (tables, ledger, rows): (i64, bool, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')), \
                        to_regnamespace('godwit') IS NOT NULL, \
                        (SELECT count(*) FROM platform.accounts)",
                &[],
            )
            .await?;
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        tables, 4,
        "tables were created on the target (the platform has accounts, its two partitions and contacts)"
    );
    assert!(!ledger, "the godwit schema was created on the target");
    assert_eq!(rows, 1, "the shared table's rows changed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_shows_where_everything_lands_and_what_would_fail_and_a_bad_mapping_every_problem()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    crm(&source, &target).await?;

    let good = job(&source, &target, &good())?;
    let output = run_godwit(&["plan", good.spec()], &[])?;
    assert!(output.status.success(), "{}", describe(&output));
    let plan = String::from_utf8_lossy(&output.stdout);
    // Shown with --no-capture: the README's worked example is this output.
    println!("{plan}");
    let contacts_at = plan.find("crm.contacts → tenant_acme.contacts  (exists, empty)");
    let accounts_at = plan.find(&format!(
        "crm.accounts → platform.accounts  (exists, holds other rows; this job's rows: tenant_id = {TENANT})"
    ));
    assert!(
        matches!((contacts_at, accounts_at), (Some(c), Some(a)) if c < a),
        "`order:` puts crm.contacts first, then crm.accounts in the shared table:\n{plan}"
    );
    for expected in [
        "id: integer → bigint; converted, never fails; offset +1000000\n",
        "account_id: integer; offset +1000000 (follows crm.accounts.id)",
        "name → display_name: text → character varying(20); converted, can fail",
        "email → contact_email: text; tokenised (domain kept) always",
        "phone: text; tokenised (last four kept) in review copies",
        "legacy_code: dropped",
        &format!("+ tenant_id = {TENANT}"),
        // Found in the source's rows: accounts 50, 100, 150 and 200 have
        // 40-character names; odd ids have a third decimal of credit.
        "crm.accounts.name  text → character varying(20): 4 values longer than 20 characters; longest 41 — the job would fail on them",
        "crm.accounts.credit  numeric → numeric(12,2): 100 values with more than 2 decimals or 10 integer digits",
        "they would land as NULL (on_error: null)",
        "crm.accounts.id  offset +1000000 in bigint: 0 ids pushed out",
        "crm.contacts.account_id  offset +1000000 in integer: 0 ids pushed out",
        "crm.accounts → platform.accounts: ",
        "readers at 25.0 MiB/s each, no throttle: limited by the readers; copy about",
    ] {
        assert!(
            plan.contains(expected),
            "the plan lacks {expected:?}:\n{plan}"
        );
    }
    let json = run_godwit(&["plan", good.spec(), "--json"], &[])?;
    assert!(json.status.success(), "{}", describe(&json));
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    let version = parsed["mapping_version"].as_str().unwrap_or_default();
    assert_eq!(version.len(), 16, "{parsed}");
    assert!(
        plan.contains(&format!("mapping version {version}")),
        "{plan}"
    );
    assert_eq!(
        parsed["resolved"]["landings"].as_array().map(Vec::len),
        Some(2)
    );

    // Every problem of a bad mapping at once, each naming where it is.
    let bad = job(
        &source,
        &target,
        "mapping:
  values: { customer_uuid: not-a-uuid }
  tables:
    - from: crm.acounts
      to: platform.accounts
    - from: crm.accounts
      to: platform.accounts
      tenant: tenant_id
      add: { tenant_id: \"${customer_uuid}\" }
      columns:
        nme: { drop: true }
        name: { to: display_name }
        email: { to: nickname }
        legacy_code: { drop: true }
        credit: { type: \"numeric(12,2)\" }
    - from: crm.contacts
      to: tenant_acme.everything
    - from: crm.nothing*
      to: tenant_acme.*
",
    )?;
    refused(
        &bad,
        &[
            "`mapping.tables[0]`: `from: crm.acounts` matches no table the job copies",
            "`mapping.tables[3]`: `from: crm.nothing*` matches no table",
            "`columns.nme`: crm.accounts has no column \"nme\"",
            "\"email\" lands in column \"nickname\", which the target table does not have",
            "crm.accounts.name is text and lands in \"display_name\" as character varying(20), and a value may not convert",
            "`add.tenant_id`: \"not-a-uuid\" is not a value of the target column's type uuid",
        ],
    )?;
    // Two tables in one, neither with a tenant column; a shared table
    // without one; a NOT NULL column fed by nothing.
    let shared = job(
        &source,
        &target,
        "mapping:
  tables:
    - from: crm.*
      to: tenant_acme.everything
    - from: crm.accounts
      to: platform.accounts
      columns:
        email: { drop: true }
        legacy_code: { drop: true }
        name: { drop: true }
        credit: { type: \"numeric(12,2)\", on_error: skip-row }
",
    )?;
    refused(
        &shared,
        &[
            "platform.accounts already holds rows, and without a `tenant:` column godwit cannot tell them",
            "platform.accounts.tenant_id is NOT NULL without a default and nothing feeds it",
            "platform.accounts.display_name is NOT NULL without a default and nothing feeds it",
        ],
    )?;
    // What a run does not carry (yet), the plan already refuses.
    let uncarried = job(&source, &target, &uncarried_mapping())?;
    refused(
        &uncarried,
        &[
            "`on_error: skip-row` would leave rows of crm.contacts pointing at skipped rows of crm.accounts",
        ],
    )?;
    // A table the target lacks is created from the source's definition;
    // a foreign key to a table landing in the platform's is not carried.
    let created = job(
        &source,
        &target,
        &uncarried_mapping().replace("tenant_acme.contacts", "tenant_beta.contacts"),
    )?;
    refused(
        &created,
        &[
            "crm.contacts → tenant_beta.contacts: its foreign key (account_id) references crm.accounts, which \
           the job does not create with it: create tenant_beta.contacts on the target first",
        ],
    )?;
    let bad_remap = job(
        &source,
        &target,
        "mapping:\n  tables:\n    - from: crm.contacts\n      to: tenant_acme.contacts\n      columns:\n        \
         phone: { remap: true }\n",
    )?;
    refused(
        &bad_remap,
        &[
            "crm.contacts: `remap` of \"phone\": new ids are given to a primary key of one column, and \
           crm.contacts's primary key is (id): remap its key, or use `offset`",
        ],
    )?;
    let two_in_one = job(
        &source,
        &target,
        "mapping:\n  tables:\n    - from: crm.*\n      to: tenant_acme.everything\n",
    )?;
    refused(
        &two_in_one,
        &[
            "crm.accounts, crm.contacts all land in tenant_acme.everything and nothing tells their rows apart",
        ],
    )?;

    // A spec-level mistake needs no database: named before connecting.
    let typo = job(
        &source,
        &target,
        "mapping:\n  tables:\n    - from: crm.accounts\n      columns:\n        credit: { on_error: \"null\" }\n",
    )?;
    refused(
        &typo,
        &["column \"credit\": `on_error` applies to a conversion: add `type:`"],
    )?;

    // The plan said four names do not fit and the mapping says fail: the
    // run refuses before anything is written.
    let output = run_godwit(&["run", good.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "crm.accounts.name (text → character varying(20)): 4 values longer than 20 characters"
        ),
        "{stderr}"
    );
    assert_target_untouched(&target).await?;
    Ok(())
}

/// The source's accounts as the mapping lands them, and the target's slice
/// of this tenant, each as (count, digest) computed by its own database.
async fn mapped_digests(
    source: &PgCluster,
    target: &PgCluster,
) -> anyhow::Result<((i64, i64), (i64, i64))> {
    let at_source = source
        .client("shop")
        .await?
        .query_one(
            "SELECT count(*), coalesce(sum(hashtext(ROW((id + 1000000)::bigint, name::varchar(20), name_length, \
                    CASE WHEN round(credit, 2) <> credit THEN NULL ELSE credit END::numeric(12, 2))::text)), 0) \
             FROM crm.accounts",
            &[],
        )
        .await?;
    let at_target = target
        .client("shop")
        .await?
        .query_one(
            "SELECT count(*), coalesce(sum(hashtext(ROW(id, display_name, name_length, credit)::text)), 0) \
             FROM platform.accounts WHERE tenant_id = $1::text::uuid",
            &[&TENANT],
        )
        .await?;
    Ok((
        (at_source.get(0), at_source.get(1)),
        (at_target.get(0), at_target.get(1)),
    ))
}

pub(crate) const LANDING: &str = "mapping:
  values: { customer_uuid: 6f1c2a54-0000-4000-8000-000000000001 }
  tables:
    - from: crm.accounts
      to: platform.accounts
      tenant: tenant_id
      add: { tenant_id: \"${customer_uuid}\" }
      columns:
        id: { offset: 1000000 }
        name: { to: display_name, type: \"varchar(20)\", on_error: fail }
        email: { to: contact_email, mask: tokenise-email }
        legacy_code: { drop: true }
        credit: { type: \"numeric(12,2)\", on_error: \"null\" }
";

/// The tokens the target holds for the tenant's emails, by source id (of
/// the rows landed), each checked against the token computed here from
/// the job's key file.
pub(crate) async fn tokens_by_source_id(
    source: &PgCluster,
    target: &PgCluster,
    job: &Job,
    tenant: &str,
    offset: i64,
) -> anyhow::Result<std::collections::BTreeMap<i32, String>> {
    let key = godwit_common::keys::Kek::from_file(&job.key_path)?.token_key();
    let masker = godwit_common::mapping::mask::Masker {
        key: &key,
        customer: "acme",
    };
    let emails = source
        .client("shop")
        .await?
        .query("SELECT id, email FROM crm.accounts", &[])
        .await?;
    let landed: std::collections::BTreeMap<i64, Option<String>> = target
        .client("shop")
        .await?
        .query(
            "SELECT id, contact_email FROM platform.accounts WHERE tenant_id = $1::text::uuid",
            &[&tenant],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut tokens = std::collections::BTreeMap::new();
    for row in emails {
        let (id, email): (i32, Option<String>) = (row.get(0), row.get(1));
        let expected = masker.apply(
            godwit_common::mapping::Mask::TokeniseEmail,
            None,
            email.as_deref(),
        );
        // A row the job skipped is not there to check.
        let Some(got) = landed.get(&(i64::from(id) + offset)).cloned() else {
            continue;
        };
        anyhow::ensure!(
            got == expected,
            "id {id}: target holds {got:?}, the key gives {expected:?}"
        );
        if let (Some(token), Some(email)) = (&got, &email) {
            anyhow::ensure!(
                token != email && token.ends_with("@example.com"),
                "id {id}: {token}"
            );
        }
        tokens.insert(id, got.unwrap_or_default());
    }
    Ok(tokens)
}

/// `godwit verify` of `job`: exit code and the report.
pub(crate) fn verified(job: &Job) -> anyhow::Result<(Option<i32>, serde_json::Value)> {
    let report = job.staging_dir().with_extension("report.json");
    let path = report.to_string_lossy().into_owned();
    let output = run_godwit(&["verify", job.spec(), "--report", &path], &[])?;
    let parsed = serde_json::from_slice(
        &std::fs::read(&report)
            .map_err(|e| anyhow::anyhow!("no report ({e}): {}", describe(&output)))?,
    )?;
    Ok((output.status.code(), parsed))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customers_table_lands_in_a_shared_table_and_is_verified_by_its_slice()
-> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    crm(&source, &target).await?;
    let job = Job::create(|staging| {
        spec_body("crm-landing", &source, &target, staging)
            .replace("tables: [\"*\"]", "tables: [crm.accounts, public.events]")
            + "\n"
            + LANDING
    })?;

    // Four names are too long for varchar(20) and the mapping says fail:
    // refused before anything is written, naming the table and column.
    let refused = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(
            "crm.accounts.name (text → character varying(20)): 4 values longer than 20 characters"
        ),
        "{stderr}"
    );
    assert_target_untouched(&target).await?;

    // Had such a value appeared after that check, the copy's own read
    // would stop on it, naming the column, the table and the key.
    let src = source.client("shop").await?;
    let spec = godwit_common::spec::JobSpec::from_file(&job.spec_path)?;
    let tables = [godwit_common::spec::TableName::parse("crm.accounts").expect("name")];
    let resolved = godwit_common::mapping::resolve::resolve(
        spec.mapping.as_ref().expect("mapping"),
        &src,
        &target.client("shop").await?,
        &tables,
        false,
    )
    .await?;
    let carried =
        godwit_common::mapping::carry::carry(&resolved.landings[0]).map_err(anyhow::Error::msg)?;
    let read = src
        .query(
            &format!(
                "SELECT {} FROM crm.accounts AS t ORDER BY id",
                carried.select.join(", ")
            ),
            &[],
        )
        .await
        .expect_err("a value that does not convert was read");
    let message = read
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains(
            "godwit: name of crm.accounts at key (50) does not convert to character varying(20)"
        ),
        "{read}"
    );

    src.batch_execute("UPDATE crm.accounts SET name = left(name, 20)")
        .await?;
    let ran = run_godwit(&["run", job.spec()], &[])?;
    assert!(ran.status.success(), "{}", describe(&ran));

    // The tenant's rows as mapped, counted and digested by each database;
    // the other tenant's row as it was; the unmapped table as itself.
    let (at_source, at_target) = mapped_digests(&source, &target).await?;
    assert_eq!(at_source, at_target);
    assert_eq!(at_source.0, 200);
    // Emails land as tokens, domain kept: the ones the customer's key
    // gives, computed here from the key file, and never the address.
    let tokens = tokens_by_source_id(&source, &target, &job, TENANT, 1_000_000).await?;
    assert_eq!(tokens.len(), 200);
    let key_text = std::fs::read_to_string(&job.key_path)?;
    assert!(
        !describe(&ran).contains(key_text.trim()),
        "the key reached the run's output"
    );
    let dst = target.client("shop").await?;
    let other: (i64, String) = {
        let row = dst
            .query_one(
                "SELECT id, display_name FROM platform.accounts WHERE tenant_id <> $1::text::uuid",
                &[&TENANT],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    assert_eq!(other, (1, "other tenant".to_owned()));
    let nulled: i64 = dst
        .query_one(
            "SELECT count(*) FROM platform.accounts WHERE tenant_id = $1::text::uuid AND credit IS NULL",
            &[&TENANT],
        )
        .await?
        .get(0);
    assert_eq!(
        nulled, 100,
        "odd ids' credit has a third decimal: NULL by on_error"
    );
    // The platform's own id sequence now hands out ids above the landed ones.
    let next: i64 = dst
        .query_one(
            "SELECT nextval(pg_get_serial_sequence('platform.accounts', 'id'))",
            &[],
        )
        .await?
        .get(0);
    assert!(next > 1_000_200, "the id sequence hands out {next}");
    let events = "public.events";
    assert_eq!(
        table_digest(&source.client("shop").await?, events).await?,
        table_digest(&dst, events).await?
    );

    let (code, report) = verified(&job)?;
    assert_eq!(code, Some(0), "{report}");
    // The report says which mapping and where each column came from.
    assert_eq!(
        report["mapping"]["version"].as_str().map(str::len),
        Some(16),
        "{report}"
    );
    for line in [
        serde_json::json!({"source": "crm.accounts.id", "target": "platform.accounts.id",
                           "rule": "converted to bigint; offset +1000000"}),
        serde_json::json!({"source": "crm.accounts.name", "target": "platform.accounts.display_name",
                           "rule": "renamed; converted to character varying(20) strictly (on_error: fail)"}),
        serde_json::json!({"source": "crm.accounts.legacy_code", "target": "", "rule": "dropped"}),
        serde_json::json!({"source": "crm.accounts.email", "target": "platform.accounts.contact_email",
                           "rule": "renamed; masked (tokenise-email); compared as masked"}),
        serde_json::json!({"source": "", "target": "platform.accounts.tenant_id",
                           "rule": format!("added: {TENANT}")}),
    ] {
        let listed = report["mapping"]["lineage"]
            .as_array()
            .is_some_and(|lines| lines.contains(&line));
        assert!(listed, "the lineage lacks {line}: {report}");
    }

    // A value changed in the tenant's slice is found, by its key on the
    // target and its column, a token too (masked by the checking process,
    // with the key); a change to another tenant's row is not this job's
    // business.
    let token_of_9: String = dst
        .query_one(
            "SELECT contact_email FROM platform.accounts WHERE tenant_id = $1::text::uuid AND id = 1000009",
            &[&TENANT],
        )
        .await?
        .get(0);
    dst.batch_execute(&format!(
        "UPDATE platform.accounts SET display_name = 'planted' \
         WHERE tenant_id = '{TENANT}' AND id = 1000007; \
         UPDATE platform.accounts SET contact_email = 'u000000000000@example.com' \
         WHERE tenant_id = '{TENANT}' AND id = 1000009; \
         UPDATE platform.accounts SET credit = 99 WHERE tenant_id = '{TENANT}' AND id = 1000011; \
         UPDATE platform.accounts SET name_length = 0 WHERE tenant_id = '{TENANT}' AND id = 1000012; \
         DELETE FROM platform.accounts WHERE tenant_id = '{TENANT}' AND id = 1000013; \
         INSERT INTO platform.accounts (tenant_id, id, display_name) VALUES ('{TENANT}', 1000999, 'extra'); \
         UPDATE platform.accounts SET display_name = 'changed' WHERE id = 1 AND tenant_id <> '{TENANT}'"
    ))
    .await?;
    let (code, report) = verified(&job)?;
    assert_eq!(code, Some(1), "{report}");
    let accounts = report["tables"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["table"] == "platform.accounts"))
        .cloned()
        .unwrap_or_default();
    let mut different: Vec<serde_json::Value> = accounts["content"]["different"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    different.sort_by_key(|d| d["key"].to_string());
    assert_eq!(
        different,
        vec![
            serde_json::json!({ "key": "(1000007)", "columns": ["display_name"] }),
            serde_json::json!({ "key": "(1000009)", "columns": ["contact_email"] }),
            serde_json::json!({ "key": "(1000011)", "columns": ["credit"] }),
            serde_json::json!({ "key": "(1000012)", "columns": ["name_length"] }),
        ],
        "{report}"
    );
    // A row gone from the slice and one that is not the customer's, by
    // their keys as landed (offset).
    assert_eq!(
        accounts["content"]["missing"],
        serde_json::json!(["(1000013)"]),
        "{report}"
    );
    assert_eq!(
        accounts["content"]["extra"],
        serde_json::json!(["(1000999)"]),
        "{report}"
    );
    dst.execute(
        "UPDATE platform.accounts SET display_name = 'account 7' \
         WHERE tenant_id = $1::text::uuid AND id = 1000007",
        &[&TENANT],
    )
    .await?;
    dst.execute(
        "UPDATE platform.accounts SET contact_email = $2 WHERE tenant_id = $1::text::uuid AND id = 1000009",
        &[&TENANT, &token_of_9],
    )
    .await?;
    // Put back as the copy wrote them: credit 11 NULL (a third decimal),
    // account 13 from the source through its rules.
    dst.batch_execute(&format!(
        "UPDATE platform.accounts SET credit = NULL WHERE tenant_id = '{TENANT}' AND id = 1000011; \
         UPDATE platform.accounts SET name_length = 10 WHERE tenant_id = '{TENANT}' AND id = 1000012; \
         DELETE FROM platform.accounts WHERE tenant_id = '{TENANT}' AND id = 1000999"
    ))
    .await?;
    let row13 = source
        .client("shop")
        .await?
        .query_one(
            "SELECT name, email, credit::text FROM crm.accounts WHERE id = 13",
            &[],
        )
        .await?;
    let (name13, email13, credit13): (String, String, String) =
        (row13.get(0), row13.get(1), row13.get(2));
    let key = godwit_common::keys::Kek::from_file(&job.key_path)?.token_key();
    let token13 = godwit_common::mapping::mask::Masker {
        key: &key,
        customer: "acme",
    }
    .apply(
        godwit_common::mapping::Mask::TokeniseEmail,
        None,
        Some(&email13),
    );
    dst.execute(
        "INSERT INTO platform.accounts (tenant_id, id, display_name, contact_email, credit, name_length, country) \
         VALUES ($1::text::uuid, 1000013, $2, $3, CASE WHEN round($4::text::numeric, 2) <> $4::text::numeric THEN NULL ELSE $4::text::numeric END, $5, 'US')",
        &[&TENANT, &name13, &token13, &credit13, &(name13.chars().count() as i32)],
    )
    .await?;
    let (code, report) = verified(&job)?;
    assert_eq!(code, Some(0), "{report}");

    // Running the finished job again checks it again and adds no row.
    let again = run_godwit(&["run", job.spec()], &[])?;
    assert!(again.status.success(), "{}", describe(&again));
    let rows: i64 = dst
        .query_one("SELECT count(*) FROM platform.accounts", &[])
        .await?
        .get(0);
    assert_eq!(rows, 201);

    // Another job of the same customer, for another tenant slice: the same
    // emails give the same tokens, so joins across jobs still hold.
    const OTHER: &str = "6f1c2a54-0000-4000-8000-000000000002";
    let second = Job::create(|staging| {
        spec_body("crm-landing-2", &source, &target, staging)
            .replace("tables: [\"*\"]", "tables: [crm.accounts]")
            + "\n"
            + &LANDING
                .replace("000000000001", "000000000002")
                .replace("offset: 1000000", "offset: 3000000")
                .replace("on_error: \"null\"", "on_error: skip-row")
    })?;
    std::fs::copy(&job.key_path, &second.key_path)?;
    let ran = run_godwit(&["run", second.spec()], &[])?;
    assert!(ran.status.success(), "{}", describe(&ran));
    let again = tokens_by_source_id(&source, &target, &second, OTHER, 3_000_000).await?;
    assert_eq!(
        again.len(),
        100,
        "odd ids' rows are skipped (a third decimal of credit)"
    );
    assert!(
        again
            .iter()
            .all(|(id, token)| tokens.get(id) == Some(token))
    );
    // Verified on what it kept; what it left behind counted and listed.
    let (code, report) = verified(&second)?;
    assert_eq!(code, Some(0), "{report}");
    let skipped = &report["mapping"]["skipped"][0];
    assert_eq!(skipped["table"], "crm.accounts", "{report}");
    assert_eq!(skipped["rows"], 100, "{report}");
    assert_eq!(skipped["keys"][0], "(1)", "{report}");
    assert_eq!(skipped["keys"][1], "(3)", "{report}");

    // The same job under a changed mapping: refused, the change shown,
    // nothing written.
    job.edit("offset: 1000000", "offset: 2000000")?;
    let changed = run_godwit(&["run", job.spec()], &[])?;
    assert_eq!(changed.status.code(), Some(2), "{}", describe(&changed));
    let stderr = String::from_utf8_lossy(&changed.stderr);
    for expected in [
        "job crm-landing already wrote to the target",
        "under another mapping",
        "mapping.tables[0].columns.id.offset: 1000000 → 2000000",
    ] {
        assert!(
            stderr.contains(expected),
            "stderr lacks {expected:?}:\n{stderr}"
        );
    }
    // Verifying under the changed mapping is refused too.
    let output = run_godwit(&["verify", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("wrote to the target under another mapping"),
        "{}",
        describe(&output)
    );

    // A new job into a slice that already holds rows (the first job's
    // tenant): refused before anything is written, naming the slice.
    let third = Job::create(|staging| {
        spec_body("crm-landing-3", &source, &target, staging)
            .replace("tables: [\"*\"]", "tables: [crm.accounts]")
            + "\n"
            + &LANDING.replace("offset: 1000000", "offset: 5000000")
    })?;
    let output = run_godwit(&["run", third.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!(
            "platform.accounts already holds rows with tenant_id = {TENANT}: the job's slice must start empty"
        )),
        "{}",
        describe(&output)
    );
    let rows: i64 = dst
        .query_one("SELECT count(*) FROM platform.accounts", &[])
        .await?
        .get(0);
    assert_eq!(rows, 301);
    Ok(())
}
