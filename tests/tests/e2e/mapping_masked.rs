//! Masks on a table copied as it is: the awkward fixture migrated table for
//! table, its customers' emails tokenised and names faked by a mapping
//! entry that keeps the table's name. The table is created from the
//! source's definition like the others; the masked columns never reach
//! the target as they are; everything else is identical by both databases'
//! digests; a replay gives the same masked rows; the verification matches,
//! then names a changed token by key.

use godwit_tests::compare::table_digest;
use godwit_tests::{Job, describe, run_godwit, source_and_target, spec_body};

const MASKED: &str = "mapping:
  tables:
    - from: public.customers
      columns:
        email: { mask: tokenise-email }
        name: { mask: fake }
    - from: public.events
      columns:
        body: { mask: hash }
";

#[tokio::test(flavor = "multi_thread")]
async fn a_table_copied_as_it_is_lands_with_its_masked_columns_masked() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let job = Job::create(|staging| {
        spec_body("masked-as-is", &source, &target, staging) + "\n" + MASKED
    })?;
    let ran = run_godwit(&["run", job.spec()], &[])?;
    assert!(ran.status.success(), "{}", describe(&ran));

    let (src, dst) = (source.client("shop").await?, target.client("shop").await?);
    // The other tables as they are.
    for table in ["public.orders", "sales.invoices"] {
        assert_eq!(
            table_digest(&src, table).await?,
            table_digest(&dst, table).await?,
            "{table}"
        );
    }
    // The customers' other columns as they are, by each database's digest.
    let rest = "SELECT count(*), coalesce(sum(hashtext(ROW(id, mood, created_at, score, tags, profile, avatar, \
                ip, external_id, home, visits)::text)), 0) FROM public.customers";
    let (a, b) = (
        src.query_one(rest, &[]).await?,
        dst.query_one(rest, &[]).await?,
    );
    assert_eq!(
        (a.get::<_, i64>(0), a.get::<_, i64>(1)),
        (b.get(0), b.get(1))
    );
    // The masked ones: the key's tokens, fakes of the same shape, never the
    // values; the target computes its generated column from the fake.
    let key = godwit_common::keys::Kek::from_file(&job.key_path)?.token_key();
    let masker = godwit_common::mapping::mask::Masker {
        key: &key,
        customer: "acme",
    };
    let sources: Vec<(i64, String, Option<String>)> = src
        .query(
            "SELECT id, name, email FROM public.customers ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let targets: Vec<(i64, String, Option<String>, String)> = dst
        .query(
            "SELECT id, name, email, name_upper FROM public.customers ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(sources.len(), targets.len());
    for ((id, name, email), (_, landed_name, landed_email, upper)) in sources.iter().zip(&targets) {
        use godwit_common::mapping::Mask;
        assert_eq!(
            landed_email,
            &masker.apply(Mask::TokeniseEmail, None, email.as_deref()),
            "customer {id}"
        );
        assert_eq!(
            Some(landed_name.clone()),
            masker.apply(Mask::Fake, None, Some(name)),
            "customer {id}"
        );
        assert_ne!(landed_name, name, "customer {id}: the name is not masked");
        assert_eq!(upper, &landed_name.to_uppercase(), "customer {id}");
    }
    let log = describe(&ran);
    assert!(!log.contains("c7@example.com"), "{log}");

    // A table without a key: its hashed bodies land hashed, its other
    // columns as they are; the bodies cannot be paired with the source's
    // to be compared, and the report says so.
    let events = "SELECT count(*), coalesce(sum(hashtext(ROW(at, kind, payload, ratio)::text)), 0), \
                  count(*) FILTER (WHERE body ~ '^[0-9a-f]{64}$') FROM public.events";
    let (a, b) = (
        src.query_one(events, &[]).await?,
        dst.query_one(events, &[]).await?,
    );
    assert_eq!(
        (a.get::<_, i64>(0), a.get::<_, i64>(1)),
        (b.get(0), b.get(1))
    );
    assert_eq!(
        b.get::<_, i64>(2),
        b.get::<_, i64>(0),
        "every body is a SHA-256"
    );
    let (code, report) = crate::mapping::verified(&job)?;
    assert_eq!(code, Some(0), "{report}");
    let body = serde_json::json!({
        "source": "public.events.body",
        "target": "public.events.body",
        "rule": "masked (hash); not compared: the table has no primary key to pair masked values by"
    });
    assert!(
        report["mapping"]["lineage"]
            .as_array()
            .is_some_and(|lines| lines.contains(&body)),
        "{report}"
    );
    // Replayed elsewhere from the staged copy: created from the schema dump,
    // the same masked rows.
    target.create_database("again").await?;
    let replayed = run_godwit(
        &["replay", job.spec(), "--target", &target.url("again")],
        &[],
    )?;
    assert!(replayed.status.success(), "{}", describe(&replayed));
    let again = target.client("again").await?;
    for table in ["public.customers", "public.events"] {
        assert_eq!(
            table_digest(&dst, table).await?,
            table_digest(&again, table).await?,
            "{table}"
        );
    }
    dst.batch_execute(
        "UPDATE public.customers SET email = 'u000000@example.com' \
         WHERE id = (SELECT min(id) FROM public.customers WHERE email IS NOT NULL); \
         UPDATE public.customers SET name = 'Not A Fake' WHERE id = (SELECT max(id) FROM public.customers)",
    )
    .await?;
    let verified = run_godwit(&["verify", job.spec()], &[])?;
    assert_eq!(verified.status.code(), Some(1), "{}", describe(&verified));
    let said = String::from_utf8_lossy(&verified.stdout);
    let max_id: i64 = dst
        .query_one("SELECT max(id) FROM public.customers", &[])
        .await?
        .get(0);
    for expected in [
        "differs in email".to_owned(),
        format!("key ({max_id}) differs in name"),
    ] {
        assert!(
            said.contains(&expected),
            "{expected:?} missing: {}",
            describe(&verified)
        );
    }
    Ok(())
}
