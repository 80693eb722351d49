//! What the source role may read, checked before anything is written: a
//! table it cannot select, or whose row-level security policies would hide
//! rows from it, would otherwise be copied and checked short by the same
//! amount on both sides and reported as a match. Sessions run with
//! `row_security = off` (as `pg_dump` does), so a policy that would still
//! apply makes the read fail instead of filtering it; this module says so
//! up front, naming the tables and the fix. It never grants anything.

use tokio_postgres::Client;

use crate::spec::TableName;
use crate::{Error, Result};

/// Why the source role cannot read a table whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// No `SELECT` privilege on the table.
    NoSelect(TableName),
    /// Row-level security is enabled (or forced on the owner) and the role
    /// neither bypasses it nor owns the table.
    RowSecurity(TableName),
}

/// The job's tables the source role cannot read in full, in name order.
pub async fn unreadable_tables(client: &Client, tables: &[TableName]) -> Result<Vec<Unreadable>> {
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    let rows = client
        .query(
            "WITH me AS (SELECT rolsuper OR rolbypassrls AS bypass FROM pg_roles WHERE rolname = current_user) \
             SELECT n.nspname, c.relname, NOT has_table_privilege(c.oid, 'SELECT'), \
                    c.relrowsecurity AND NOT (SELECT bypass FROM me) \
                    AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE')) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid IN (SELECT to_regclass(x) FROM unnest($1::text[]) AS x) \
             ORDER BY 1, 2",
            &[&names],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the source role's privileges", e))?;
    let mut found = Vec::new();
    for row in rows {
        let table = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        if row.get::<_, bool>(2) {
            found.push(Unreadable::NoSelect(table));
        } else if row.get::<_, bool>(3) {
            found.push(Unreadable::RowSecurity(table));
        }
    }
    Ok(found)
}

/// The refusal for `unreadable`, naming every table and the fix for each kind.
pub fn refusal(role: &str, unreadable: &[Unreadable]) -> Option<Error> {
    let list = |pick: fn(&Unreadable) -> Option<&TableName>| {
        unreadable
            .iter()
            .filter_map(pick)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    let no_select = list(|u| match u {
        Unreadable::NoSelect(t) => Some(t),
        _ => None,
    });
    let row_security = list(|u| match u {
        Unreadable::RowSecurity(t) => Some(t),
        _ => None,
    });
    let mut problems = Vec::new();
    if !no_select.is_empty() {
        problems.push(format!(
            "the source role {role} cannot read table(s) {}: GRANT SELECT ON them TO {role}",
            no_select.join(", ")
        ));
    }
    if !row_security.is_empty() {
        problems.push(format!(
            "table(s) {} on the source have row-level security, whose policies would hide rows from the \
             source role {role}: ALTER ROLE {role} BYPASSRLS, or migrate as the tables' owner (without \
             FORCE ROW LEVEL SECURITY)",
            row_security.join(", ")
        ));
    }
    (!problems.is_empty()).then(|| Error::Precondition(problems.join("; ")))
}

/// The role a session runs as, for messages.
pub async fn current_role(client: &Client) -> Result<String> {
    Ok(client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| Error::postgres("cannot read the session's role", e))?
        .get(0))
}
