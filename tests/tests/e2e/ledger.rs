//! The target-side ledger against a real PostgreSQL: exactly-once loads and
//! fencing of a partition's previous holder.

use bytes::Bytes;
use godwit_common::Error;
use godwit_common::pg::ledger::{self, ChunkLoad, LoadOutcome};
use godwit_common::pg::{self, Side};
use godwit_common::pgcopy::{CopyFormat, Ctid};
use godwit_tests::PgCluster;

fn chunk<'a>(columns: &'a [String], seq: u64, fence: i64, rows: &str) -> ChunkLoad<'a> {
    ChunkLoad {
        job: "ledger-job",
        table_quoted: "public.t",
        table_name: "public.t",
        copy_columns: columns,
        format: CopyFormat::Text,
        partition: 0,
        seq,
        rows: rows.lines().count() as u64,
        sha256: b"not checked here",
        last_ctid: Some(Ctid {
            block: 0,
            offset: seq as u16 + 1,
        }),
        fence,
        tuples: Bytes::from(rows.to_owned()),
        remaps: &[],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn loads_are_exactly_once_and_a_replaced_holder_is_fenced() -> anyhow::Result<()> {
    let cluster = PgCluster::start()?;
    cluster.create_database("ledger").await?;
    let mut client = pg::connect(&cluster.url("ledger"), Side::Target).await?;
    client.batch_execute("CREATE TABLE t (id int)").await?;
    ledger::ensure_schema(&client).await?;
    let columns = vec!["id".to_owned()];

    ledger::take_partition(&client, &cluster.url("ledger"), "ledger-job", 0, 1).await?;
    assert_eq!(
        ledger::load_chunk(&mut client, chunk(&columns, 0, 1, "1\n2\n")).await?,
        LoadOutcome::Applied
    );
    assert_eq!(
        ledger::load_chunk(&mut client, chunk(&columns, 0, 1, "1\n2\n")).await?,
        LoadOutcome::AlreadyApplied,
        "a chunk was applied twice"
    );

    // A new holder takes over; the old one's next chunk is refused.
    ledger::take_partition(&client, &cluster.url("ledger"), "ledger-job", 0, 2).await?;
    let late = ledger::load_chunk(&mut client, chunk(&columns, 1, 1, "3\n")).await;
    assert!(
        matches!(&late, Err(Error::LeaseLost { reason, .. }) if reason.contains("fenced")),
        "late write by the replaced holder: {late:?}"
    );
    assert_eq!(
        ledger::load_chunk(&mut client, chunk(&columns, 1, 2, "3\n")).await?,
        LoadOutcome::Applied
    );

    let ids: Vec<i32> = client
        .query("SELECT id FROM t ORDER BY id", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let resume = ledger::resume_point(&client, "ledger-job", 0).await?;
    assert_eq!(
        (resume.next_seq, resume.rows, resume.after),
        (
            2,
            3,
            Some(Ctid {
                block: 0,
                offset: 2
            })
        )
    );
    Ok(())
}

/// The changed-key log keeps one row per table per batch; what it names
/// comes back whole (quotes, backslashes, braces and commas in keys), the
/// same key from several batches once, and a log an older release wrote
/// one row per key is folded in, not lost.
#[tokio::test(flavor = "multi_thread")]
async fn the_changed_key_log_round_trips_and_folds_an_older_layout() -> anyhow::Result<()> {
    use godwit_common::pg::changed_keys::{self, Touch, Touched};
    use godwit_common::spec::TableName;

    let cluster = PgCluster::start()?;
    cluster.create_database("keys").await?;
    let client = pg::connect(&cluster.url("keys"), Side::Target).await?;
    client
        .batch_execute(
            "CREATE SCHEMA godwit;
             CREATE TABLE godwit.changed_keys (
                 job_id text NOT NULL, schema_name text NOT NULL, table_name text NOT NULL,
                 key text NOT NULL, lsn pg_lsn NOT NULL,
                 PRIMARY KEY (job_id, schema_name, table_name, key));
             INSERT INTO godwit.changed_keys VALUES
                 ('j', 'public', 'old', '[\"1\"]', '0/10'),
                 ('j', 'public', 'old', '[\"2\"]', '0/20')",
        )
        .await?;
    ledger::ensure_schema(&client).await?;
    ledger::ensure_schema(&client).await?;

    let (a, b) = (
        TableName {
            schema: "public".into(),
            name: "a".into(),
        },
        TableName {
            schema: "public".into(),
            name: "b".into(),
        },
    );
    let mut first = Touched::default();
    first.key(&a, &["it's \"x\\", "{a,b}"]);
    first.key(&a, &["2", ""]);
    first.whole(&b);
    let mut second = Touched::default();
    second.key(&a, &["2", ""]);
    for (lsn, touched) in [(0x30, &first), (0x40, &second)] {
        client.batch_execute("BEGIN").await?;
        changed_keys::record(&client, "j", lsn, touched).await?;
        client.batch_execute("COMMIT").await?;
    }

    let all = changed_keys::since(&client, "j", 0).await?;
    let tables: Vec<(String, Touch)> = all
        .tables()
        .map(|(t, touch)| (t.name.clone(), touch.clone()))
        .collect();
    let keys = |list: &[&[&str]]| {
        Touch::Keys(
            list.iter()
                .map(|k| serde_json::to_string(k).expect("json"))
                .collect(),
        )
    };
    assert_eq!(
        tables,
        vec![
            ("a".into(), keys(&[&["it's \"x\\", "{a,b}"], &["2", ""]])),
            ("b".into(), Touch::Whole),
            ("old".into(), keys(&[&["1"], &["2"]])),
        ]
    );
    changed_keys::forget_through(&client, "j", 0x30).await?;
    let rest = changed_keys::since(&client, "j", 0).await?;
    assert_eq!(rest.keys(), 1, "{rest:?}");
    Ok(())
}
