//! Replica semantics on the target without superuser. PostgreSQL's own
//! subscriber applies changes with `session_replication_role = replica`:
//! the target's own triggers (an `updated_at` stamp, an audit insert) do not
//! fire on replicated rows, and foreign keys are not checked row by row.
//! Setting that role needs superuser, which the platform's database rarely
//! grants. Godwit's target role owns the tables it created, so while changes
//! stream it does the equivalent itself: it disables the tables' user
//! triggers and makes their immediate foreign keys deferrable (each batch
//! defers them to its commit, where the source had checked them per
//! statement), records in `godwit.replica_mode` how each object was, and
//! puts every one back exactly so when the stream ends (at cutover, on
//! cancel or failure). Foreign keys are still checked, at commit. Never
//! touches an object outside the job's tables (and their partitioned parents).

use tokio_postgres::{Client, Transaction};

use crate::spec::{TableName, quote_ident};
use crate::{Error, Result};

pub const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS godwit.replica_mode (
    job_id     text NOT NULL,
    table_name text NOT NULL,
    -- 'trigger' or 'foreign key'
    kind       text NOT NULL,
    name       text NOT NULL,
    -- a trigger's pg_trigger.tgenabled (O, R, A); 'immediate' for a key
    was        text NOT NULL,
    PRIMARY KEY (job_id, table_name, kind, name)
);
";

const TRIGGER: &str = "trigger";
const FOREIGN_KEY: &str = "foreign key";
/// A foreign key with a referential action (`ON DELETE CASCADE`, `SET
/// NULL`, `RESTRICT`, …): the target would act on the parent's change
/// itself, then meet the source's own cascaded changes to rows it already
/// changed. Its actions cannot be deferred or disabled without superuser,
/// so while changes stream it is replaced by the same key without actions
/// (checked at commit), and put back as the source defines it after.
const FOREIGN_KEY_ACTION: &str = "foreign key action";
/// A foreign key put back `NOT VALID` (its check of every row would run
/// while the source is frozen), to validate once the stream has ended.
const FOREIGN_KEY_TO_VALIDATE: &str = "foreign key to validate";

/// Switches the target's `tables` to replica mode (see the module docs) in
/// one transaction. Idempotent: an object already recorded keeps its first
/// record. Returns how many objects it changed.
pub async fn enter(target: &mut Client, job: &str, tables: &[TableName]) -> Result<usize> {
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    let tx = target
        .transaction()
        .await
        .map_err(|e| Error::postgres("cannot begin putting the target in replica mode", e))?;
    tx.batch_execute(SCHEMA_SQL)
        .await
        .map_err(|e| Error::postgres("cannot create godwit.replica_mode on the target", e))?;
    let rows = tx
        .query(
            "WITH job AS (SELECT to_regclass(x) AS oid FROM unnest($1::text[]) AS x), \
                  owners AS (SELECT oid FROM job UNION \
                             SELECT a.relid FROM job, pg_partition_ancestors(job.oid) a) \
             SELECT format('%I.%I', n.nspname, c.relname), 'trigger', t.tgname, t.tgenabled::text \
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND c.oid IN (SELECT oid FROM job) \
             UNION ALL \
             SELECT format('%I.%I', n.nspname, c.relname), \
                    CASE WHEN con.confdeltype = 'a' AND con.confupdtype = 'a' THEN 'foreign key' \
                         ELSE 'foreign key action' END, \
                    con.conname, \
                    CASE WHEN con.confdeltype = 'a' AND con.confupdtype = 'a' THEN 'immediate' \
                         ELSE pg_get_constraintdef(con.oid) END \
             FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE con.contype = 'f' AND con.conparentid = 0 \
               AND (NOT con.condeferrable OR con.confdeltype <> 'a' OR con.confupdtype <> 'a') \
               AND c.oid IN (SELECT oid FROM owners) \
             ORDER BY 1, 2, 3",
            &[&names],
        )
        .await
        .map_err(|e| Error::postgres("cannot list the target's triggers and foreign keys", e))?;
    for row in &rows {
        let (table, kind, name, was): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        tx.execute(
            "INSERT INTO godwit.replica_mode (job_id, table_name, kind, name, was) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&job, &table, &kind, &name, &was],
        )
        .await
        .map_err(|e| Error::postgres("cannot record an object in godwit.replica_mode", e))?;
        let change = match kind.as_str() {
            TRIGGER => format!("DISABLE TRIGGER {}", quote_ident(&name)),
            FOREIGN_KEY_ACTION => replace_key(&name, &without_actions(&tx, &table, &name).await?),
            _ => format!(
                "ALTER CONSTRAINT {} DEFERRABLE INITIALLY IMMEDIATE",
                quote_ident(&name)
            ),
        };
        alter(&tx, &table, &kind, &name, &change).await?;
    }
    tx.commit()
        .await
        .map_err(|e| Error::postgres("cannot commit putting the target in replica mode", e))?;
    Ok(rows.len())
}

/// Puts back everything `enter` changed for `job`, as it was; one
/// transaction, so the target never holds half of it. Returns how many
/// objects it restored.
pub async fn leave(target: &mut Client, job: &str) -> Result<usize> {
    let tx = target
        .transaction()
        .await
        .map_err(|e| Error::postgres("cannot begin leaving replica mode on the target", e))?;
    if !recorded(&tx).await? {
        return Ok(0);
    }
    let rows = tx
        .query(
            "DELETE FROM godwit.replica_mode WHERE job_id = $1 AND kind <> $2 \
             RETURNING table_name, kind, name, was",
            &[&job, &FOREIGN_KEY_TO_VALIDATE],
        )
        .await
        .map_err(|e| Error::postgres("cannot read godwit.replica_mode", e))?;
    let mut restored = 0;
    for row in &rows {
        let (table, kind, name, was): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        // The table, or the trigger or key itself, may have been dropped
        // on the target since: nothing is left to put back.
        let present: bool = tx
            .query_one(
                "SELECT CASE WHEN to_regclass($1) IS NULL THEN false \
                        WHEN $2 = 'trigger' THEN EXISTS (SELECT 1 FROM pg_trigger \
                             WHERE tgrelid = to_regclass($1) AND tgname = $3) \
                        ELSE EXISTS (SELECT 1 FROM pg_constraint \
                             WHERE conrelid = to_regclass($1) AND conname = $3) END",
                &[&table, &kind, &name],
            )
            .await
            .map_err(|e| Error::postgres("cannot read the target catalog", e))?
            .get(0);
        if !present {
            continue;
        }
        let change = match (kind.as_str(), was.as_str()) {
            (TRIGGER, "R") => format!("ENABLE REPLICA TRIGGER {}", quote_ident(&name)),
            (TRIGGER, "A") => format!("ENABLE ALWAYS TRIGGER {}", quote_ident(&name)),
            (TRIGGER, _) => format!("ENABLE TRIGGER {}", quote_ident(&name)),
            (FOREIGN_KEY, _) => format!("ALTER CONSTRAINT {} NOT DEFERRABLE", quote_ident(&name)),
            (FOREIGN_KEY_ACTION, definition) => {
                let partitioned: bool = tx
                    .query_one(
                        "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass($1)",
                        &[&table],
                    )
                    .await
                    .map_err(|e| Error::postgres("cannot read the target catalog", e))?
                    .get(0);
                // PostgreSQL cannot add a NOT VALID key to a partitioned
                // table: that one is checked here, row by row.
                let definition = if partitioned || definition.ends_with(" NOT VALID") {
                    definition.to_owned()
                } else {
                    tx.execute(
                        "INSERT INTO godwit.replica_mode (job_id, table_name, kind, name, was) \
                         VALUES ($1, $2, $3, $4, '') ON CONFLICT DO NOTHING",
                        &[&job, &table, &FOREIGN_KEY_TO_VALIDATE, &name],
                    )
                    .await
                    .map_err(|e| {
                        Error::postgres("cannot record an object in godwit.replica_mode", e)
                    })?;
                    format!("{definition} NOT VALID")
                };
                replace_key(&name, &definition)
            }
            (other, _) => {
                return Err(Error::Corrupt {
                    what: "godwit.replica_mode on the target".into(),
                    reason: format!("unknown kind {other:?} for {name} on {table}"),
                });
            }
        };
        alter(&tx, &table, &kind, &name, &change).await?;
        restored += 1;
    }
    tx.commit()
        .await
        .map_err(|e| Error::postgres("cannot commit leaving replica mode on the target", e))?;
    Ok(restored)
}

/// Validates the foreign keys `leave` put back `NOT VALID` (each scans its
/// table, while the table stays writable). Returns how many it validated.
pub async fn validate_restored(target: &Client, job: &str) -> Result<usize> {
    if !recorded(target).await? {
        return Ok(0);
    }
    let rows = target
        .query(
            "SELECT table_name, name, EXISTS (SELECT FROM pg_constraint \
                 WHERE conrelid = to_regclass(table_name) AND conname = name AND NOT convalidated) \
             FROM godwit.replica_mode WHERE job_id = $1 AND kind = $2",
            &[&job, &FOREIGN_KEY_TO_VALIDATE],
        )
        .await
        .map_err(|e| Error::postgres("cannot read godwit.replica_mode", e))?;
    let mut validated = 0;
    for row in &rows {
        let (table, name, pending): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
        if pending {
            let sql = format!(
                "ALTER TABLE {table} VALIDATE CONSTRAINT {}",
                quote_ident(&name)
            );
            target.batch_execute(&sql).await.map_err(|e| {
                Error::postgres(
                    format!("cannot validate foreign key {name} of {table} on the target"),
                    e,
                )
            })?;
            validated += 1;
        }
        target
            .execute(
                "DELETE FROM godwit.replica_mode WHERE job_id = $1 AND kind = $2 AND table_name = $3 AND name = $4",
                &[&job, &FOREIGN_KEY_TO_VALIDATE, &table, &name],
            )
            .await
            .map_err(|e| Error::postgres("cannot update godwit.replica_mode", e))?;
    }
    Ok(validated)
}

/// The definition of foreign key `name` of `table` without its actions,
/// deferrable, and not checked against the rows already there (they
/// satisfied the key it replaces).
async fn without_actions(tx: &Transaction<'_>, table: &str, name: &str) -> Result<String> {
    let row = tx
        .query_one(
            "SELECT format('FOREIGN KEY (%s) REFERENCES %s (%s)%s DEFERRABLE%s', \
                 (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.i) \
                  FROM unnest(con.conkey) WITH ORDINALITY k(n, i) \
                  JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n), \
                 con.confrelid::regclass, \
                 (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.i) \
                  FROM unnest(con.confkey) WITH ORDINALITY k(n, i) \
                  JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n), \
                 CASE con.confmatchtype WHEN 'f' THEN ' MATCH FULL' ELSE '' END, \
                 CASE WHEN c.relkind = 'p' THEN '' ELSE ' NOT VALID' END) \
             FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid \
             WHERE con.conrelid = to_regclass($1) AND con.conname = $2 AND con.contype = 'f'",
            &[&table, &name],
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot read foreign key {name} of {table}"), e))?;
    Ok(row.get(0))
}

/// The `ALTER TABLE` clauses that swap foreign key `name` for `definition`.
fn replace_key(name: &str, definition: &str) -> String {
    let name = quote_ident(name);
    format!("DROP CONSTRAINT {name}, ADD CONSTRAINT {name} {definition}")
}

/// Whether the target has `godwit.replica_mode` at all (nothing was ever
/// put in replica mode there otherwise).
async fn recorded(client: &impl tokio_postgres::GenericClient) -> Result<bool> {
    Ok(client
        .query_one("SELECT to_regclass('godwit.replica_mode') IS NOT NULL", &[])
        .await
        .map_err(|e| Error::postgres("cannot read the target ledger", e))?
        .get(0))
}

async fn alter(
    tx: &Transaction<'_>,
    table: &str,
    kind: &str,
    name: &str,
    change: &str,
) -> Result<()> {
    // A partitioned table's key is altered with its partitions' clones.
    let only = if kind == TRIGGER { "ONLY " } else { "" };
    tx.batch_execute(&format!("ALTER TABLE {only}{table} {change}"))
        .await
        .map_err(|e| {
            Error::postgres(
                format!(
                    "cannot change {kind} {name} of {table} on the target (the target role must own the \
                     table, as it does the tables godwit created)"
                ),
                e,
            )
        })
}

/// A foreign key replica mode changed, as it will be put back.
#[derive(Debug, Clone)]
pub struct AlteredKey {
    /// Schema-qualified and quoted, as the schema layer names tables.
    pub table: String,
    /// Quoted as PostgreSQL's `quote_ident` does (only where it must).
    pub quoted_name: String,
    /// The definition it will be put back with, where replica mode
    /// replaced the key; None where it only made it deferrable or left it
    /// to validate.
    pub restored_as: Option<String>,
    /// Made deferrable: put back not deferrable.
    pub made_deferrable: bool,
}

/// The foreign keys replica mode changed, of any job: the schema layer
/// compares them as they will be put back.
pub async fn altered_keys(target: &Client) -> Result<Vec<AlteredKey>> {
    if !recorded(target).await? {
        return Ok(Vec::new());
    }
    let rows = target
        .query(
            "SELECT DISTINCT table_name, quote_ident(name), CASE WHEN kind = $1 THEN was END, kind = $2 \
             FROM godwit.replica_mode WHERE kind IN ($1, $2, $3)",
            &[&FOREIGN_KEY_ACTION, &FOREIGN_KEY, &FOREIGN_KEY_TO_VALIDATE],
        )
        .await
        .map_err(|e| Error::postgres("cannot read godwit.replica_mode", e))?;
    Ok(rows
        .iter()
        .map(|row| AlteredKey {
            table: row.get(0),
            quoted_name: row.get(1),
            restored_as: row.get(2),
            made_deferrable: row.get(3),
        })
        .collect())
}
