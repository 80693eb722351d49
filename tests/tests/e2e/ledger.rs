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
