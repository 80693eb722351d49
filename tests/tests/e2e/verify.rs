//! `godwit verify`: no false alarm on an exact copy of every awkward type,
//! and each kind of difference planted on the target found, named and
//! localised to its primary key (columns named, values never).

use godwit_tests::{Job, describe, run_godwit, source_and_target, spec_body};
use serde_json::Value;

/// Runs `godwit verify` on the job; returns its exit code, stdout and the
/// JSON report.
fn verify(job: &Job, extra: &[&str]) -> anyhow::Result<(Option<i32>, String, Value)> {
    let report_path = job.dir.path().join("report.json");
    let mut args = vec![
        "verify",
        job.spec(),
        "--report",
        report_path.to_str().unwrap_or_default(),
    ];
    args.extend_from_slice(extra);
    let output = run_godwit(&args, &[])?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report: Value = serde_json::from_slice(
        &std::fs::read(&report_path)
            .map_err(|e| anyhow::anyhow!("no report written ({e}): {}", describe(&output)))?,
    )?;
    Ok((output.status.code(), stdout, report))
}

fn table<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .and_then(|tables| tables.iter().find(|t| t["table"] == name))
        .unwrap_or(&Value::Null)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Columns reported as differing for `key` in `table`.
fn differing_columns(report: &Value, name: &str, key: &str) -> Vec<String> {
    table(report, name)["content"]["different"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == key))
        .map(|r| strings(&r["columns"]))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_every_planted_difference_and_no_false_alarm() -> anyhow::Result<()> {
    let (source, target) = source_and_target(2).await?;
    let job = Job::create(|staging| spec_body("verify", &source, &target, staging))?;
    let copied = run_godwit(&["run", job.spec()], &[])?;
    assert!(copied.status.success(), "{}", describe(&copied));

    // An exact copy of every awkward type (jsonb key order, numeric scale,
    // NaN and infinities, TOASTed values, unicode): no false alarm.
    let (code, stdout, report) = verify(&job, &[])?;
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(report["matched"], true);
    assert!(stdout.contains("MATCH"), "{stdout}");

    let dst = target.client("shop").await?;
    // Foreign-key triggers off, as a faulty copy could have left things.
    dst.batch_execute("SET session_replication_role = replica")
        .await?;
    let nth_customer = |n: i64| {
        let dst = &dst;
        async move {
            let row = dst
                .query_one(
                    "SELECT id FROM customers ORDER BY id OFFSET $1 LIMIT 1",
                    &[&n],
                )
                .await?;
            anyhow::Ok(row.get::<_, i64>(0))
        }
    };

    let deleted: i64 = dst
        .query_one("SELECT min(customer_id) FROM orders", &[])
        .await?
        .get(0);
    dst.execute("DELETE FROM customers WHERE id = $1", &[&deleted])
        .await?;
    dst.execute("INSERT INTO surveys (id) VALUES (999999)", &[])
        .await?;
    let mut changed = Vec::new();
    for (offset, column, update) in [
        (10, "name", "name = name || 'x'"),
        (11, "score", "score = coalesce(score, 0) + 0.000001"),
        (
            12,
            "profile",
            "profile = coalesce(profile, '{}') || '{\"k\": 1}'",
        ),
        (
            13,
            "avatar",
            "avatar = CASE WHEN length(avatar) > 0 \
             THEN set_byte(avatar, 0, (get_byte(avatar, 0) + 1) % 256) ELSE '\\x01' END",
        ),
        (
            14,
            "created_at",
            "created_at = created_at + interval '1 microsecond'",
        ),
        (15, "tags", "tags = coalesce(tags, '{}') || 'x'::text"),
        (
            16,
            "email",
            "email = CASE WHEN email IS NULL THEN 'planted@example.com' END",
        ),
    ] {
        let id = nth_customer(offset).await?;
        dst.execute(
            &format!("UPDATE customers SET {update} WHERE id = $1"),
            &[&id],
        )
        .await?;
        changed.push((id, column));
    }
    let nan: i64 = dst
        .query_one("SELECT min(id) FROM customers WHERE rating = 'NaN'", &[])
        .await?
        .get(0);
    dst.execute("UPDATE customers SET rating = NULL WHERE id = $1", &[&nan])
        .await?;
    changed.push((nan, "rating"));
    // Two rows' amounts swapped: counts and the multiset of values unchanged.
    let pair = "SELECT customer_id, order_no, amount, row_number() OVER (ORDER BY customer_id DESC, order_no) AS n \
                FROM orders WHERE amount IS NOT NULL ORDER BY customer_id DESC, order_no LIMIT 2";
    let swapped = dst
        .query(
            &format!("SELECT customer_id, order_no FROM ({pair}) AS p"),
            &[],
        )
        .await?;
    dst.execute(
        &format!(
            "WITH pair AS ({pair}) UPDATE orders AS o \
             SET amount = (SELECT other.amount FROM pair AS other WHERE other.n <> p.n) \
             FROM pair AS p WHERE o.customer_id = p.customer_id AND o.order_no = p.order_no"
        ),
        &[],
    )
    .await?;
    dst.execute(
        "UPDATE events SET kind = kind || 'x' WHERE ctid = '(0,1)'",
        &[],
    )
    .await?;
    dst.batch_execute(
        "DROP INDEX orders_placed_at_idx; \
         ALTER TABLE sales.invoices DROP CONSTRAINT invoices_customer_id_fkey; \
         SELECT setval('customers_id_seq', 1)",
    )
    .await?;

    // Straight to row comparison (small tables), then narrowed through
    // every level of key buckets first: the same findings either way.
    for narrowing in [&[][..], &["--compare-rows-below", "0"][..]] {
        check_planted_differences(&job, narrowing, deleted, &changed, &swapped)?;
    }

    // The last report is kept with the job, sealed: it names keys.
    let shown = run_godwit(&["report", job.spec(), "--json"], &[])?;
    assert!(shown.status.success(), "{}", describe(&shown));
    let stored: Value = serde_json::from_slice(&shown.stdout)?;
    assert_eq!(stored["matched"], false);
    assert_eq!(
        strings(&table(&stored, "public.customers")["content"]["missing"]),
        vec![format!("({deleted})")]
    );
    let sealed = Job::files_under(&job.staging_dir())
        .into_iter()
        .find(|f| f.ends_with("reports/verification.gwc"))
        .ok_or_else(|| anyhow::anyhow!("no report in staging"))?;
    let bytes = std::fs::read(sealed)?;
    assert!(
        !bytes.windows(9).any(|w| w == b"customers"),
        "the stored report is readable without the key"
    );
    Ok(())
}

fn check_planted_differences(
    job: &Job,
    narrowing: &[&str],
    deleted: i64,
    changed: &[(i64, &str)],
    swapped: &[tokio_postgres::Row],
) -> anyhow::Result<()> {
    let key = |id: i64| format!("({id})");
    let (code, stdout, report) = verify(job, narrowing)?;
    eprintln!("{stdout}");
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(report["matched"], false);

    let customers = table(&report, "public.customers");
    assert_eq!(
        strings(&customers["content"]["missing"]),
        vec![key(deleted)],
        "{stdout}"
    );
    assert_eq!(customers["counts_match"], false);
    for (id, column) in changed {
        let columns = differing_columns(&report, "public.customers", &key(*id));
        assert!(
            columns.iter().any(|c| c == column),
            "the change of {column} in customer {id} was not localised: {columns:?}\n{stdout}"
        );
    }
    assert_eq!(
        strings(&table(&report, "public.surveys")["content"]["extra"]),
        vec!["(999999)".to_owned()]
    );
    let orders = table(&report, "public.orders");
    assert_eq!(orders["counts_match"], true);
    let swapped_keys: Vec<String> = swapped
        .iter()
        .map(|r| format!("({},{})", r.get::<_, i64>(0), r.get::<_, i32>(1)))
        .collect();
    for k in &swapped_keys {
        assert_eq!(
            differing_columns(&report, "public.orders", k),
            vec!["amount"],
            "{stdout}"
        );
    }
    let events = table(&report, "public.events");
    assert_eq!(events["content"]["matched"], false);
    assert!(
        events["content"]["localisation"]
            .as_str()
            .is_some_and(|why| why.contains("no primary key")),
        "{stdout}"
    );
    let schema = &report["schema"];
    let missing = strings(&schema["missing_on_target"]);
    assert!(
        missing.contains(&"index public.orders.orders_placed_at_idx".to_owned()),
        "{missing:?}"
    );
    assert!(
        missing.contains(&"foreign key sales.invoices.invoices_customer_id_fkey".to_owned()),
        "{missing:?}"
    );
    assert_eq!(
        schema["sequences_behind"][0]["sequence"],
        "public.customers_id_seq"
    );
    let orphans: u64 = report["foreign_keys"]
        .as_array()
        .map(|fks| {
            fks.iter()
                .filter(|fk| fk["table"] == "public.orders")
                .filter_map(|fk| fk["orphans"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    assert!(
        orphans > 0,
        "orders of the deleted customer are not reported as orphans\n{stdout}"
    );
    // Values never appear in the report: the planted email is a value.
    let text = serde_json::to_string(&report)?;
    assert!(!text.contains("planted@example.com"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_of_an_unknown_table_is_refused_with_its_name() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let job = Job::create(|staging| {
        spec_body("verify-unknown", &source, &target, staging)
            .replace("tables: [\"*\"]", "tables: [public.customers, public.nope]")
    })?;
    let output = run_godwit(&["verify", job.spec()], &[])?;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("public.nope"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_a_table_missing_on_the_target_as_a_difference() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let job = Job::create(|staging| spec_body("verify-dropped", &source, &target, staging))?;
    let copied = run_godwit(&["run", job.spec()], &[])?;
    assert!(copied.status.success(), "{}", describe(&copied));
    // Orders and invoices reference the dropped table: the source's
    // foreign keys lose their parent on the target.
    target
        .client("shop")
        .await?
        .batch_execute("DROP TABLE public.customers CASCADE")
        .await?;
    let (code, stdout, report) = verify(&job, &[])?;
    assert_eq!(code, Some(1), "a missing table is a difference\n{stdout}");
    let customers = table(&report, "public.customers");
    assert_eq!(customers["counts_match"], false, "{customers}");
    assert_eq!(customers["content"]["matched"], false, "{customers}");
    assert_eq!(report["matched"], false);
    assert!(
        stdout.contains("public.customers") && stdout.contains("missing"),
        "{stdout}"
    );
    assert!(
        strings(&report["schema"]["missing_on_target"])
            .iter()
            .any(|o| o.contains("public.customers")),
        "{}",
        report["schema"]
    );
    Ok(())
}

/// A text primary key is cut into ranges by the source's statistics; each
/// range is compared on both sides and a difference still localised.
#[tokio::test(flavor = "multi_thread")]
async fn verify_cuts_a_text_key_into_ranges_and_localises_in_them() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    source
        .client("shop")
        .await?
        .batch_execute(
            "CREATE TABLE codes (code text PRIMARY KEY, label text NOT NULL); \
             INSERT INTO codes SELECT 'c-' || md5(i::text), repeat('x', 40) || i \
             FROM generate_series(1, 4000) AS i; \
             ANALYZE codes",
        )
        .await?;
    let job = Job::create(|staging| {
        spec_body("verify-text-key", &source, &target, staging)
            .replace("partition_size: 512KiB", "partition_size: 64KiB")
    })?;
    let copied = run_godwit(&["run", job.spec()], &[])?;
    assert!(copied.status.success(), "{}", describe(&copied));
    let (code, stdout, report) = verify(&job, &[])?;
    assert_eq!(code, Some(0), "{stdout}");
    let ranges = table(&report, "public.codes")["ranges"].as_u64();
    assert!(ranges > Some(2), "{}", table(&report, "public.codes"));

    let dst = target.client("shop").await?;
    let changed: String = dst
        .query_one(
            "UPDATE codes SET label = label || '!' \
             WHERE code = (SELECT code FROM codes ORDER BY code DESC LIMIT 1) RETURNING code",
            &[],
        )
        .await?
        .get(0);
    let (code, stdout, report) = verify(&job, &[])?;
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        differing_columns(&report, "public.codes", &format!("({changed})")),
        ["label"],
        "{stdout}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spot_check_compares_the_same_seeded_ranges_every_time() -> anyhow::Result<()> {
    let (source, target) = source_and_target(1).await?;
    let job = Job::create(|staging| spec_body("verify-sample", &source, &target, staging))?;
    let copied = run_godwit(&["run", job.spec()], &[])?;
    assert!(copied.status.success(), "{}", describe(&copied));

    for bad in ["0%", "101%", "some"] {
        let refused = run_godwit(&["verify", job.spec(), "--sample", bad], &[])?;
        assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("--sample"),
            "{}",
            describe(&refused)
        );
    }

    let spot = ["--sample", "30%", "--seed", "42"];
    let (code, stdout, first) = verify(&job, &spot)?;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("spot check") && stdout.contains("seed 42"),
        "{stdout}"
    );
    let sample = &first["sample"];
    assert_eq!(sample["seed"], 42, "{first}");
    let (compared, total) = (
        sample["ranges_compared"].as_u64().unwrap_or(0),
        sample["ranges_total"].as_u64().unwrap_or(0),
    );
    assert!(0 < compared && compared < total, "{sample}");
    let ranges = |report: &Value| -> Vec<(String, u64)> {
        report["tables"]
            .as_array()
            .map(|tables| {
                tables
                    .iter()
                    .map(|t| {
                        (
                            t["table"].as_str().unwrap_or_default().to_owned(),
                            t["source_rows"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // The same seed compares the same ranges: the same rows, table by table.
    let (_, _, again) = verify(&job, &spot)?;
    assert_eq!(ranges(&first), ranges(&again));
    assert_eq!(first["sample"], again["sample"]);

    // A difference inside the sampled rows is found by the spot check.
    let (_, _, full) = verify(&job, &[])?;
    assert!(
        ranges(&first) != ranges(&full),
        "a 30% check compared every row"
    );
    target
        .client("shop")
        .await?
        .batch_execute("UPDATE customers SET name = name || ' changed'")
        .await?;
    let (code, stdout, _) = verify(&job, &spot)?;
    assert_eq!(code, Some(1), "{stdout}");
    Ok(())
}
