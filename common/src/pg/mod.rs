//! The PostgreSQL connector: connections, catalog, schema copy, exported
//! snapshots, the target-side ledger and database-computed checksums.

pub mod access;
pub mod apply;
pub mod apply_run;
pub mod catalog;
pub mod changed_keys;
pub mod checksum;
pub mod follow;
pub mod large_objects;
mod passfile;
pub use passfile::carries_password;
pub mod ledger;
pub mod loader;
pub mod pgoutput;
pub mod ranges;
pub mod replica;
pub mod replication;
pub mod schema;
pub mod snapshot;
pub mod stream;
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
    endpoints(conn)
        .ok()
        .and_then(|all| all.into_iter().next())
        .unwrap_or_else(|| "<unparsable connection string>".into())
}

/// Every `host:port/db` a connection string may reach, in the order libpq
/// tries them (a `hostaddr` in place of the host name it stands beside).
pub fn endpoints(conn: &str) -> Result<Vec<String>> {
    use tokio_postgres::config::Host;
    let driver_form = tls::split_tls_options(conn).map(|(form, _)| form);
    let config = driver_form
        .as_deref()
        .map(Config::from_str)
        .unwrap_or_else(|_| Config::from_str(conn))
        .map_err(|e| Error::Spec(format!("unparsable connection string: {e}")))?;
    let db = config.get_dbname().unwrap_or("");
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let addrs = config.get_hostaddrs();
    let hosts: Vec<String> = if !addrs.is_empty() {
        addrs.iter().map(|a| a.to_string()).collect()
    } else if config.get_hosts().is_empty() {
        vec!["localhost".into()]
    } else {
        config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect()
    };
    Ok(hosts
        .iter()
        .enumerate()
        .map(|(i, host)| format!("{host}:{}/{db}", port(i)))
        .collect())
}

/// Opens a connection with the session settings every godwit query assumes:
/// text output that is identical on both sides for the same value, and row
/// security off, so a policy can only make a read fail, never shorten it.
pub async fn connect(conn: &str, side: Side) -> Result<Client> {
    let (config, tls) = tls::driver_config(conn, side)?;
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| connect_error(conn, side, e))?;
    drive(connection);
    configure_session(client, side).await
}

/// Runs a connection's I/O in the background until it ends or is aborted.
fn drive<S, T>(connection: tokio_postgres::Connection<S, T>) -> tokio::task::AbortHandle
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    })
    .abort_handle()
}

/// Like [`connect`], for a session that streams a bulk read: the socket's
/// receive buffer is capped at `receive_buffer` bytes. While the reader
/// pauses (its chunk is loading) the server then stops sending, instead of
/// filling megabytes of kernel buffer that a crash would make it read and
/// send again. Unix sockets and `hostaddr` fall back to [`connect`].
///
/// Dropping the returned [`ReaderSession`] closes the socket at once: the
/// driver would otherwise drain an abandoned `COPY` to its end, making the
/// server read the rest of the table for nothing.
/// A read-only snapshot of one side, exported, and the session that must
/// stay open for others to join it.
pub async fn export_snapshot(conn: &str, side: Side) -> Result<(String, Client)> {
    let session = connect(conn, side).await?;
    session
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| Error::postgres(format!("cannot open a {side} snapshot"), e))?;
    let snapshot: String = session
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| Error::postgres(format!("cannot export a {side} snapshot"), e))?
        .get(0);
    Ok((snapshot, session))
}

/// One of a customer's source session slots, held for the work at hand
/// (`None` inside: the customer's sessions are not capped). A worker opens
/// a session on a customer's source only with one in hand, so the cap on
/// the customer's connections is a type, not a convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSlot(Option<u32>);

impl SessionSlot {
    /// The slot admission took under the work's lease (`None`: uncapped).
    pub fn taken(slot: Option<u32>) -> Self {
        Self(slot)
    }

    pub fn number(self) -> Option<u32> {
        self.0
    }
}

/// A worker's session on the customer's source, opened in `slot`.
pub async fn connect_source(conn: &str, slot: SessionSlot) -> Result<Client> {
    tracing::debug!(slot = ?slot.number(), "opening a source session");
    connect(conn, Side::Source).await
}

/// A worker's streaming reader on the customer's source, opened in `slot`.
pub async fn connect_source_reader(
    conn: &str,
    slot: SessionSlot,
    receive_buffer: u32,
) -> Result<ReaderSession> {
    tracing::debug!(slot = ?slot.number(), "opening a source reader");
    connect_reader(conn, Side::Source, receive_buffer).await
}

pub async fn connect_reader(conn: &str, side: Side, receive_buffer: u32) -> Result<ReaderSession> {
    use tokio_postgres::config::Host;
    use tokio_postgres::tls::MakeTlsConnect;

    let (config, mut tls) = tls::driver_config(conn, side)?;
    let hosts = config.get_hosts();
    if !config.get_hostaddrs().is_empty() || hosts.iter().any(|h| matches!(h, Host::Unix(_))) {
        let (client, connection) = config
            .connect(tls)
            .await
            .map_err(|e| connect_error(conn, side, e))?;
        return ReaderSession::start(client, connection, side).await;
    }
    let unreachable = |detail: String| {
        Error::Unreachable(format!(
            "cannot connect to the {side} database {} ({detail}); check `{side}` in the job spec",
            describe(conn)
        ))
    };
    let ports = config.get_ports();
    let mut last_failure = String::from("no host given");
    for (i, host) in hosts.iter().enumerate() {
        let Host::Tcp(name) = host else { continue };
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let addrs = match tokio::net::lookup_host((name.as_str(), port)).await {
            Ok(addrs) => addrs,
            Err(e) => {
                last_failure = format!("{name}: {e}");
                continue;
            }
        };
        for addr in addrs {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|e| unreachable(e.to_string()))?;
            socket
                .set_recv_buffer_size(receive_buffer)
                .map_err(|e| unreachable(e.to_string()))?;
            let connecting = socket.connect(addr);
            let stream = match config.get_connect_timeout() {
                Some(limit) => match tokio::time::timeout(*limit, connecting).await {
                    Ok(stream) => stream,
                    Err(_) => {
                        last_failure = format!("{addr}: timed out");
                        continue;
                    }
                },
                None => connecting.await,
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    last_failure = format!("{addr}: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let connector = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<
                tokio::net::TcpStream,
            >>::make_tls_connect(&mut tls, name)
            .map_err(|e| unreachable(e.to_string()))?;
            let (client, connection) = config
                .connect_raw(stream, connector)
                .await
                .map_err(|e| connect_error(conn, side, e))?;
            return ReaderSession::start(client, connection, side).await;
        }
    }
    Err(unreachable(last_failure))
}

/// A bulk-reading session; see [`connect_reader`].
pub struct ReaderSession {
    pub client: Client,
    connection: tokio::task::AbortHandle,
}

impl ReaderSession {
    async fn start<S, T>(
        client: Client,
        connection: tokio_postgres::Connection<S, T>,
        side: Side,
    ) -> Result<Self>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Driven before configuring: the session's first queries need it.
        let connection = drive(connection);
        Ok(Self {
            client: configure_session(client, side).await?,
            connection,
        })
    }
}

impl Drop for ReaderSession {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn connect_error(conn: &str, side: Side, e: tokio_postgres::Error) -> Error {
    Error::postgres(
        format!(
            "cannot connect to the {side} database {}; check `{side}` in the job spec",
            describe(conn)
        ),
        e,
    )
}

async fn configure_session(client: Client, side: Side) -> Result<Client> {
    client
        .batch_execute(
            "SET application_name = 'godwit'; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
             SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; \
             SET row_security = off",
        )
        .await
        .map_err(|e| Error::postgres(format!("cannot configure the {side} session"), e))?;
    Ok(client)
}

/// Starts a read-only repeatable-read transaction that sees exactly the
/// exported snapshot `snapshot`.
pub async fn join_snapshot(client: &Client, snapshot: &str) -> Result<()> {
    if !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(Error::Internal(format!(
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
