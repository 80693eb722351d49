//! The job's consistent snapshot: a logical replication slot created on a
//! replication connection, which exports the snapshot at exactly the slot's
//! start point (so change data capture can later resume there). The snapshot
//! stays importable only while that connection stays open and idle, so the
//! holder keeps it open until the copy is done.
//!
//! The replication protocol is spoken through libpq's `psql` (which also
//! brings TLS and every libpq auth method), because the Rust driver cannot
//! open replication connections.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use super::{Side, connect, describe};
use crate::{Error, Result};

const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct SnapshotHolder {
    child: Child,
    /// Closing it would end the session, and the snapshot with it.
    _stdin: ChildStdin,
    pub slot: String,
    pub snapshot: String,
    pub consistent_lsn: String,
}

/// The replication slot (and publication) of a job. Slot names allow only
/// `a-z 0-9 _`, so the readable part folds `-` into `_`; a digest of the
/// exact id keeps `acme-1` and `acme_1` apart. At most 63 characters.
pub fn slot_name(job: &crate::ids::JobId) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(job.as_str().as_bytes()));
    format!("godwit_{}_{}", job.as_str().replace('-', "_"), &digest[..7])
}

/// Appends `replication=database` to a URL or key=value connection string.
fn replication_conninfo(conn: &str) -> String {
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let separator = if conn.contains('?') { '&' } else { '?' };
        format!("{conn}{separator}replication=database")
    } else {
        format!("{conn} replication=database")
    }
}

impl SnapshotHolder {
    /// Creates the job's slot and exports its snapshot. A `temporary` slot
    /// (for a job that does not stream) lives only as long as this
    /// session: however the process ends, it leaves no slot pinning WAL on
    /// the customer's server.
    pub async fn create(conn: &str, slot: &str, temporary: bool) -> Result<Self> {
        if !slot
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(Error::Internal(format!("slot name {slot:?} is not valid")));
        }
        // The password goes in the environment: a command line is visible
        // to every user of the machine.
        let (without_password, password) = super::tls::split_password(conn);
        let mut child = Command::new("psql");
        if let Some(password) = password {
            child.env("PGPASSWORD", password);
        }
        let mut child = child
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(replication_conninfo(&without_password))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Precondition(format!("cannot start psql to hold the snapshot (is the PostgreSQL client installed?): {e}")))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Internal("psql stdin unavailable".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Internal("psql stdout unavailable".into()))?;
        stdin
            .write_all(
                format!(
                    "CREATE_REPLICATION_SLOT {slot}{} LOGICAL pgoutput (SNAPSHOT 'export');\n",
                    if temporary { " TEMPORARY" } else { "" }
                )
                .as_bytes(),
            )
            .await
            .map_err(|e| Error::Internal(format!("cannot talk to psql: {e}")))?;
        stdin
            .flush()
            .await
            .map_err(|e| Error::Internal(format!("cannot talk to psql: {e}")))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(CREATE_TIMEOUT, lines.next_line()).await;
        let line = match line {
            Ok(Ok(Some(line))) => line,
            other => {
                drop(stdin);
                let output = child.wait_with_output().await.ok();
                let stderr = output
                    .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                    .unwrap_or_default();
                let hint = if stderr.contains("wal_level") {
                    "; set wal_level = logical on the source and restart it"
                } else if stderr.contains("permission") || stderr.contains("replication") {
                    "; the source role needs the REPLICATION attribute (ALTER ROLE … REPLICATION)"
                } else {
                    ""
                };
                let detail = match other {
                    Err(_) => format!("timed out after {CREATE_TIMEOUT:?}"),
                    _ => stderr,
                };
                return Err(Error::Precondition(format!(
                    "cannot create replication slot {slot} on the source {}: {detail}{hint}",
                    describe(conn)
                )));
            }
        };
        let fields: Vec<&str> = line.trim().split('|').collect();
        let [slot_name, lsn, snapshot, _plugin] = fields[..] else {
            return Err(Error::Internal(format!(
                "unexpected CREATE_REPLICATION_SLOT answer {line:?}"
            )));
        };
        Ok(Self {
            child,
            _stdin: stdin,
            slot: slot_name.to_owned(),
            snapshot: snapshot.to_owned(),
            consistent_lsn: lsn.to_owned(),
        })
    }

    /// Ends the exporting session; the snapshot can no longer be joined.
    pub async fn release(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Locks `tables` against DDL for as long as the caller's transaction (one
/// that joined the job's snapshot) lasts, as `pg_dump` does, then checks
/// that none was truncated or rewritten between the snapshot and the lock.
/// A `TRUNCATE`, `VACUUM FULL`, `CLUSTER` or rewriting `ALTER TABLE` is not
/// MVCC-safe: under the older snapshot the table would look empty, and the
/// copy and the check would agree on the missing rows. `ACCESS SHARE`
/// blocks those statements (and any `ALTER TABLE`) until the job lets go;
/// reads and writes go on.
pub async fn lock_tables(
    client: &tokio_postgres::Client,
    tables: &[crate::spec::TableName],
) -> Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = tables.iter().map(crate::spec::TableName::only).collect();
    client
        .batch_execute(&format!(
            "LOCK TABLE {} IN ACCESS SHARE MODE",
            list.join(", ")
        ))
        .await
        .map_err(|e| {
            Error::postgres("cannot lock the job's tables on the source against DDL", e)
        })?;
    let names: Vec<String> = tables.iter().map(crate::spec::TableName::quoted).collect();
    // `pg_class` as the snapshot saw it against the catalog as it is now.
    let rewritten: Vec<String> = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid IN (SELECT to_regclass(x) FROM unnest($1::text[]) AS x) \
               AND c.relfilenode IS DISTINCT FROM pg_relation_filenode(c.oid) ORDER BY 1",
            &[&names],
        )
        .await
        .map_err(|e| Error::postgres("cannot check the job's tables for rewrites", e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !rewritten.is_empty() {
        return Err(Error::Precondition(format!(
            "table(s) {} on the source were truncated or rewritten (TRUNCATE, VACUUM FULL, CLUSTER or a \
             rewriting ALTER TABLE) after the job's snapshot was taken: their rows are invisible to it and \
             would be missing from the copy; run the job again, and hold such statements until it has \
             copied",
            rewritten.join(", ")
        )));
    }
    Ok(())
}

/// Drops the job's slot at once, ending the session that holds it if one
/// does (the job is being aborted): a slot left behind would pin the
/// customer's WAL until its disk fills. Bounded by `limit`.
pub async fn drop_slot_now(conn: &str, slot: &str, limit: Duration) -> Result<()> {
    let attempt = async {
        let client = connect(conn, Side::Source).await?;
        loop {
            client
                .execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND active_pid IS NOT NULL AND active_pid <> pg_backend_pid()",
                    &[&slot],
                )
                .await
                .map_err(|e| Error::postgres(format!("cannot end the session holding slot {slot}"), e))?;
            match client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
            {
                Ok(_) => return Ok(()),
                // Still active for a moment after its session was ended.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(Error::postgres(format!("cannot drop replication slot {slot}"), e));
                }
            }
        }
    };
    tokio::time::timeout(limit, attempt).await.map_err(|_| {
        Error::Unreachable(format!(
            "dropping replication slot {slot} took over {limit:?}"
        ))
    })?
}

/// Drops the job's slot, so the source does not retain WAL for it.
pub async fn drop_slot(conn: &str, slot: &str) -> Result<()> {
    let client = connect(conn, Side::Source).await?;
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot drop replication slot {slot}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobId;

    #[test]
    fn slot_names_are_distinct_valid_and_short() {
        let id = |s: &str| JobId::parse(s).expect("valid job id");
        let dashed = slot_name(&id("acme-1"));
        let underscored = slot_name(&id("acme_1"));
        assert_ne!(dashed, underscored);
        let longest = slot_name(&id(&"a-".repeat(24)));
        for name in [&dashed, &underscored, &longest] {
            assert!(name.len() <= 63, "{name} is too long for a slot name");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
    }
}
