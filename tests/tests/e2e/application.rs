//! The simulated application of the streaming tests: a writer that keeps
//! changing the source (inserts, updates, key changes, deletes, cascades)
//! and counts what committed and what the source refused, and the checks
//! of what arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use godwit_tests::{PgCluster, wait_until};

/// What the simulated application did to the source.
#[derive(Default)]
pub(crate) struct Writes {
    pub(crate) stop: AtomicBool,
    pub(crate) committed: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) last_error: std::sync::Mutex<String>,
}

/// One application transaction: inserts, an update leaving a TOASTed
/// column unchanged, a key change, deletes, rows of the keyless table, and
/// a customer's delete its foreign keys' actions carry on to its order
/// (`ON DELETE CASCADE`) and invoice (`SET NULL`).
async fn write_once(client: &tokio_postgres::Client, i: u64) -> Result<(), tokio_postgres::Error> {
    let (offset, third) = (i % 50, i.is_multiple_of(3));
    let gone = if i.is_multiple_of(4) {
        i.saturating_sub(2)
    } else {
        u64::MAX
    };
    client
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO customers (name, email, profile, tags) VALUES
                 ('writer {i}', 'writer{i}@example.com', jsonb_build_object('w', {i}), ARRAY['w{i}']);
             UPDATE customers SET visits = coalesce(visits, 0) + 1 WHERE name = 'toasted';
             UPDATE orders SET amount = amount + 1, note = 'changed by writer {i}'
                 WHERE (customer_id, order_no) = (SELECT customer_id, order_no FROM orders ORDER BY order_no OFFSET {offset} LIMIT 1);
             DELETE FROM orders WHERE order_no = (SELECT max(order_no) FROM orders);
             UPDATE sales.invoices SET id = id + 1000000 WHERE id = (SELECT min(id) FROM sales.invoices WHERE id < 1000000);
             INSERT INTO events (at, kind, payload, ratio, body)
                 VALUES (now(), 'writer', jsonb_build_object('i', {i}), {i} / 3.0, 'writer body {i}');
             DELETE FROM events WHERE ctid = (SELECT ctid FROM events WHERE kind = 'writer' AND {third} LIMIT 1);
             INSERT INTO tickets (title) VALUES ('ticket {i}');
             UPDATE tickets SET title = title || '!' WHERE id = (SELECT min(id) FROM tickets);
             INSERT INTO orders (customer_id, order_no, amount)
                 SELECT id, 1, 5 FROM customers WHERE name = 'writer {i}';
             INSERT INTO sales.invoices (customer_id, total)
                 SELECT id, 7 FROM customers WHERE name = 'writer {i}';
             DELETE FROM customers WHERE name = 'writer {gone}';
             COMMIT;"
        ))
        .await
}

/// Writes to the source until told to stop, counting what committed and
/// what the source refused.
pub(crate) fn start_writer(
    source: &PgCluster,
) -> anyhow::Result<(Arc<Writes>, tokio::task::JoinHandle<()>)> {
    let writes = Arc::new(Writes::default());
    let url = source.url("shop");
    let shared = writes.clone();
    let task = tokio::spawn(async move {
        let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
        else {
            return;
        };
        tokio::spawn(connection);
        let mut i = 0u64;
        while !shared.stop.load(Ordering::SeqCst) {
            i += 1;
            match write_once(&client, i).await {
                Ok(()) => {
                    shared.committed.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    shared.refused.fetch_add(1, Ordering::SeqCst);
                    let message = e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |db| db.message().to_owned());
                    if let Ok(mut last) = shared.last_error.lock() {
                        *last = message;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });
    Ok((writes, task))
}

impl Writes {
    /// Waits until the application has committed `more` transactions from
    /// now; returns the count it started from.
    pub(crate) async fn commits_after(&self, more: u64, what: &str) -> anyhow::Result<u64> {
        let from = self.committed.load(Ordering::SeqCst);
        wait_until(what, Duration::from_secs(30), || async {
            Ok((self.committed.load(Ordering::SeqCst) >= from + more).then_some(()))
        })
        .await?;
        Ok(from)
    }
}

/// How many application transactions a database holds: each inserts one
/// ticket, and none deletes one (customers are deleted by later ones).
pub(crate) async fn application_transactions(
    client: &tokio_postgres::Client,
) -> anyhow::Result<u64> {
    let count: i64 = client
        .query_one(
            "SELECT count(*) FROM tickets WHERE title LIKE 'ticket %'",
            &[],
        )
        .await?
        .get(0);
    Ok(count as u64)
}

/// Asserts that at least the application transactions committed from
/// `resumed_at` on reached the target.
pub(crate) async fn assert_writes_arrived(
    dst: &tokio_postgres::Client,
    resumed_at: u64,
) -> anyhow::Result<()> {
    let written = application_transactions(dst).await?;
    assert!(
        written >= resumed_at,
        "{written} of {resumed_at} application transactions arrived"
    );
    Ok(())
}

/// Replication slots and publications left on a source.
pub(crate) async fn stream_leftovers(source: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(source
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
            &[],
        )
        .await?
        .get(0))
}
