//! The stream's row in the target ledger (`godwit.applied_changes`): the
//! end of the last source transaction applied, and the fencing token of
//! the stream's holder. Written in the same transaction as the changes;
//! never applies a change itself.

use tokio_postgres::Client;

use crate::pg::pgoutput::format_lsn;
use crate::{Error, Result};

/// The ledger's record of the last source transaction applied for `job`.
pub async fn applied_lsn(target: &Client, job: &str) -> Result<Option<u64>> {
    let row = target
        .query_opt(
            "SELECT lsn::text FROM godwit.applied_changes WHERE job_id = $1",
            &[&job],
        )
        .await
        .map_err(|e| Error::postgres("cannot read applied changes from the target ledger", e))?;
    Ok(row.and_then(|r| crate::pg::pgoutput::parse_lsn(&r.get::<_, String>(0))))
}

/// Starts the ledger of a stream at the slot's starting point, unless it
/// has a position already (a stream resumed by another worker goes on
/// from there).
pub async fn start_ledger(target: &Client, job: &str, lsn: u64) -> Result<()> {
    target
        .execute(
            "INSERT INTO godwit.applied_changes (job_id, lsn) VALUES ($1, $2::text::pg_lsn) \
             ON CONFLICT (job_id) DO NOTHING",
            &[&job, &format_lsn(lsn)],
        )
        .await
        .map_err(|e| Error::postgres("cannot start the change ledger on the target", e))?;
    Ok(())
}

/// Locks the job's ledger row inside the caller's open transaction and
/// returns its position. The row names the stream's holder: a holder whose
/// token is no longer there lost the stream to another worker and must not
/// write, whatever it believes.
pub(in crate::pg) async fn lock_ledger(tx: &Client, job: &str, token: i64) -> Result<u64> {
    let row = tx
        .query_opt(
            "SELECT lsn::text, token FROM godwit.applied_changes WHERE job_id = $1 FOR UPDATE",
            &[&job],
        )
        .await
        .map_err(|e| Error::postgres("cannot read applied changes from the target ledger", e))?
        .ok_or_else(|| {
            Error::Internal(format!(
                "the target ledger has no change position for job {job}"
            ))
        })?;
    let holder: Option<i64> = row.get(1);
    if holder != Some(token) {
        return Err(Error::LeaseLost {
            key: format!("change stream of job {job}"),
            reason: "fenced: another worker has taken the stream over".into(),
        });
    }
    let text: String = row.get(0);
    crate::pg::pgoutput::parse_lsn(&text)
        .ok_or_else(|| Error::Internal(format!("the target ledger holds LSN {text:?}")))
}

/// Records, inside the caller's transaction, the end of the last source
/// transaction it applied.
pub(in crate::pg) async fn record_ledger(tx: &Client, job: &str, end_lsn: u64) -> Result<()> {
    tx.execute(
        "UPDATE godwit.applied_changes \
         SET lsn = GREATEST(lsn, $2::text::pg_lsn), applied_at = now() WHERE job_id = $1",
        &[&job, &format_lsn(end_lsn)],
    )
    .await
    .map_err(|e| Error::postgres("cannot record applied changes in the target ledger", e))?;
    Ok(())
}
