//! The PostgreSQL connector: connections, catalog, schema copy, exported
//! snapshots, the target-side ledger and database-computed checksums.

pub mod catalog;
pub mod checksum;
pub mod ledger;
pub mod schema;
pub mod snapshot;
pub mod tls;

use std::str::FromStr;

use tokio_postgres::{Client, Config};

use crate::{Error, Result};

/// Which side of the migration a connection is for; named in every error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// `host:port/db` of a connection string, without user or password: safe to log.
pub fn describe(conn: &str) -> String {
    let driver_form = tls::split_tls_options(conn).map(|(form, _)| form);
    match driver_form
        .as_deref()
        .map(Config::from_str)
        .unwrap_or_else(|_| Config::from_str(conn))
    {
        Ok(config) => {
            let host = config
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = config.get_ports().first().copied().unwrap_or(5432);
            format!("{host}:{port}/{}", config.get_dbname().unwrap_or(""))
        }
        Err(_) => "<unparsable connection string>".into(),
    }
}

/// Opens a connection with the session settings every godwit query assumes:
/// text output that is identical on both sides for the same value.
pub async fn connect(conn: &str, side: Side) -> Result<Client> {
    let (config, tls) = tls::driver_config(conn, side)?;
    let (client, connection) = config.connect(tls).await.map_err(|e| {
        Error::postgres(
            format!(
                "cannot connect to the {side} database {}; check `{side}` in the job spec",
                describe(conn)
            ),
            e,
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    client
        .batch_execute(
            "SET application_name = 'godwit'; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
             SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'",
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot configure the {side} session"), e))?;
    Ok(client)
}

/// Starts a read-only repeatable-read transaction that sees exactly the
/// exported snapshot `snapshot`.
pub async fn join_snapshot(client: &Client, snapshot: &str) -> Result<()> {
    if !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(Error::Catalog(format!(
            "snapshot name {snapshot:?} is malformed"
        )));
    }
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .map_err(|e| {
            Error::postgres(
                format!("cannot join exported snapshot {snapshot} (the coordinator holding it may have stopped)"),
                e,
            )
        })
}
