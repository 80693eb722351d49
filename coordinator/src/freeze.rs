//! The cutover's freeze of the source: the job's tables locked against
//! writes (reads go on) in one open transaction, then either released
//! (the source stays authoritative) or made permanent with a trigger that
//! refuses every write, naming the job. Never applies changes.

use godwit_common::pg::{self, Side};
use godwit_common::spec::{JobSpec, TableName, quote_literal};
use godwit_common::{Error, Result};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// The longest one attempt at the freeze waits for the tables' locks.
const ATTEMPT_WAIT: Duration = Duration::from_millis(100);

/// The source's tables locked against writes (reads go on) in one open
/// transaction: the application's writes wait rather than fail, and if this
/// process dies the transaction ends and the source is writable again.
pub(crate) struct Freezer {
    session: Client,
}

impl Freezer {
    pub(crate) async fn freeze(
        spec: &JobSpec,
        tables: &[TableName],
        timeout_ms: u64,
    ) -> Result<Self> {
        let session = pg::connect(&spec.source, Side::Source).await?;
        let list: Vec<String> = tables.iter().map(TableName::quoted).collect();
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            // An application transaction that writes to two of the tables
            // can hold one while it waits for another this lock already
            // holds. Each attempt waits at most ATTEMPT_WAIT, far below
            // PostgreSQL's deadlock_timeout (1 s by default), so the
            // attempt gives way before the deadlock check could end the
            // application's transaction; the freeze then tries again within
            // what is left of its time.
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(ATTEMPT_WAIT).as_millis().max(1);
            let locked = session
                .batch_execute(&format!(
                    "SET lock_timeout = {wait}; BEGIN; LOCK TABLE {} IN EXCLUSIVE MODE",
                    list.join(", ")
                ))
                .await;
            let Err(e) = locked else { break };
            let _ = session.batch_execute("ROLLBACK").await;
            let gave_way = e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
                || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED);
            if gave_way && Instant::now() < deadline {
                tracing::debug!(job_id = %spec.job, "cutover: the freeze gave way to an application transaction; locking again");
                continue;
            }
            return Err(Error::postgres(
                format!(
                    "cannot freeze the source's tables within {timeout_ms} ms (a session holds a \
                     conflicting lock or a long write transaction is open; see pg_locks on the \
                     source, then retry the cutover or raise changes.freeze_timeout_ms)"
                ),
                e,
            ));
        }
        Ok(Self { session })
    }

    /// Unfreezes: the source stays authoritative.
    pub(crate) async fn release(self) {
        let _ = self.session.batch_execute("ROLLBACK").await;
    }

    /// Makes the freeze permanent for the migrated tables, then ends it: a
    /// trigger refuses every write with a message naming the job, so writes
    /// that were waiting, and any later ones, fail instead of landing on a
    /// source that is no longer copied.
    pub(crate) async fn keep_frozen(self, spec: &JobSpec, tables: &[TableName]) -> Result<()> {
        let job = &spec.job;
        let job_literal = quote_literal(job.as_str());
        let mut sql = String::from(
            "CREATE SCHEMA IF NOT EXISTS godwit; \
             CREATE OR REPLACE FUNCTION godwit.refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $fn$ \
             BEGIN \
               RAISE EXCEPTION 'table %.% was migrated by godwit job %: write to the target database instead', \
                 TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0] \
                 USING ERRCODE = 'read_only_sql_transaction', \
                       HINT = 'to write here again, drop trigger godwit_migrated on the table'; \
             END $fn$; ",
        );
        for table in tables {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS godwit_migrated ON {t}; \
                 CREATE TRIGGER godwit_migrated BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t} \
                 FOR EACH STATEMENT EXECUTE FUNCTION godwit.refuse_writes({job_literal}); ",
                t = table.quoted()
            ));
        }
        sql.push_str("COMMIT");
        if let Err(e) = self.session.batch_execute(&sql).await {
            let _ = self.session.batch_execute("ROLLBACK").await;
            // The COMMIT may have taken effect with only its reply lost: the
            // source then refuses writes already, and saying "rolled back"
            // would send the application back to a source no longer copied.
            match refusing_writes(spec, tables).await {
                Ok(true) => {
                    tracing::warn!(job_id = %job, error = %e, "cutover: the reply to COMMIT was lost, but the source's tables refuse writes: the cutover took effect");
                    return Ok(());
                }
                Ok(false) => {}
                Err(check) => {
                    return Err(Error::Internal(format!(
                        "cutover outcome unknown: the COMMIT that makes the source refuse writes failed ({e}) \
                         and whether it took effect cannot be read ({check}); look for trigger godwit_migrated \
                         on the source's tables before writing anywhere"
                    )));
                }
            }
            return Err(Error::postgres(
                "cannot leave the source's tables refusing writes (the source role needs CREATE on the \
                 database and must own the tables)",
                e,
            ));
        }
        Ok(())
    }
}

/// Whether every one of `tables` on the source carries this job's
/// `godwit_migrated` trigger, read in a fresh session.
async fn refusing_writes(spec: &JobSpec, tables: &[TableName]) -> Result<bool> {
    let session = pg::connect(&spec.source, Side::Source).await?;
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    let marked: i64 = session
        .query_one(
            "SELECT count(*) FROM pg_trigger t \
             WHERE t.tgname = 'godwit_migrated' \
               AND t.tgrelid IN (SELECT to_regclass(x) FROM unnest($1::text[]) AS x) \
               AND encode(t.tgargs, 'escape') = $2 || '\\000'",
            &[&names, &spec.job.as_str()],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the source's triggers", e))?
        .get(0);
    Ok(usize::try_from(marked).unwrap_or(0) == tables.len())
}
