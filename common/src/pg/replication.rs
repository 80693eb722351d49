//! The source's change stream over PostgreSQL's streaming replication
//! protocol (`START_REPLICATION … LOGICAL` on a `replication=database`
//! session): the walsender decodes the WAL once and sends each pgoutput
//! message as it decodes it. Reading the slot through SQL functions made
//! every read decode again from the slot's restart position, which trails
//! by up to the 15 s between two running-transaction records, and so cost
//! the source more the busier it was.
//!
//! Owns the session: its connection (TLS as for every other source session,
//! password or SCRAM authentication), the copy-both framing, and the
//! standby status updates that confirm what the target holds. Never decides
//! what is applied, nor when a position may be confirmed.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::{Host, SslMode};

use super::pgoutput::format_lsn;
use super::stream::RawChange;
use super::{Side, describe, tls};
use crate::spec::quote_ident;
use crate::{Error, Result};

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
/// Largest backend message accepted: a pgoutput message carries one row,
/// and a row is at most 1 GB per value.
const MAX_MESSAGE: usize = 1 << 30;

/// What the walsender sent next.
#[derive(Debug)]
pub enum Received {
    /// One pgoutput message, with the WAL position it came from.
    Change(RawChange),
    /// The walsender has sent everything it decoded before `sent_through`.
    /// With `reply_requested`, it ends the session unless a status update
    /// ([`ReplicationStream::status`]) follows soon.
    Keepalive {
        sent_through: u64,
        reply_requested: bool,
    },
}

/// A running `START_REPLICATION` session on the source.
pub struct ReplicationStream {
    io: Box<dyn Io>,
    inbox: BytesMut,
    outbox: BytesMut,
    slot: String,
}

impl ReplicationStream {
    /// Connects as `conn` says and starts streaming `slot`'s changes of
    /// `publication` from `from` (the walsender starts at the slot's
    /// confirmed position when that is later).
    pub async fn start(conn: &str, slot: &str, publication: &str, from: u64) -> Result<Self> {
        let (config, client_tls) = tls::driver_parts(conn, Side::Source)?;
        let unreachable = |detail: String| {
            Error::Unreachable(format!(
                "cannot open a replication session on the source database {} ({detail}); check `source` in the job spec",
                describe(conn)
            ))
        };
        let io = open_socket(&config, client_tls)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut stream = Self {
            io,
            inbox: BytesMut::with_capacity(64 * 1024),
            outbox: BytesMut::new(),
            slot: slot.to_owned(),
        };
        stream.authenticate(&config).await?;
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
            quote_ident(slot),
            format_lsn(from),
            crate::spec::quote_literal(&quote_ident(publication))
        );
        frontend::query(&command, &mut stream.outbox).map_err(|e| stream.io_error(e))?;
        stream.flush().await?;
        loop {
            let (tag, body) = stream.message().await?;
            match tag {
                b'W' => return Ok(stream),
                b'N' => continue,
                b'E' => return Err(stream.refused("start streaming", &body)),
                other => return Err(stream.unexpected(other, "starting to stream")),
            }
        }
    }

    /// The next message of the stream; cancel-safe (a message is either
    /// returned whole or left for the next call), because it never writes.
    pub async fn receive(&mut self) -> Result<Received> {
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'd' => {}
                b'E' => return Err(self.refused("stream changes", &body)),
                b'c' => {
                    return Err(Error::Unreachable(format!(
                        "the source ended the replication stream of slot {}",
                        self.slot
                    )));
                }
                b'N' => continue,
                other => return Err(self.unexpected(other, "streaming")),
            }
            let mut data = &body[..];
            if data.is_empty() {
                continue;
            }
            let kind = data.get_u8();
            match kind {
                b'w' if data.len() >= 24 => {
                    let start = data.get_u64();
                    let _wal_end = data.get_u64();
                    let _sent_at = data.get_i64();
                    return Ok(Received::Change(RawChange {
                        lsn: start,
                        data: data.to_vec(),
                    }));
                }
                b'k' if data.len() >= 17 => {
                    let sent_through = data.get_u64();
                    let _sent_at = data.get_i64();
                    let reply_requested = data.get_u8() == 1;
                    return Ok(Received::Keepalive {
                        sent_through,
                        reply_requested,
                    });
                }
                _ => {
                    return Err(Error::Internal(format!(
                        "replication stream of slot {}: a copy message of kind {kind:#04x} and {} bytes",
                        self.slot,
                        data.len() + 1
                    )));
                }
            }
        }
    }

    /// Tells the source the target holds everything before `lsn` (the slot
    /// may recycle that WAL); with `reply`, asks for a keepalive that says
    /// how far the walsender has sent. `lsn` 0 confirms nothing new.
    pub async fn status(&mut self, lsn: u64, reply: bool) -> Result<()> {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64)
            - PG_EPOCH_OFFSET_US;
        let mut update = BytesMut::with_capacity(34);
        update.put_u8(b'r');
        update.put_u64(lsn);
        update.put_u64(lsn);
        update.put_u64(lsn);
        update.put_i64(now_us);
        update.put_u8(u8::from(reply));
        frontend::CopyData::new(update.freeze())
            .map_err(|e| self.io_error(e))?
            .write(&mut self.outbox);
        self.flush().await
    }

    async fn authenticate(&mut self, config: &tokio_postgres::Config) -> Result<()> {
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let database = config.get_dbname().unwrap_or(&user).to_owned();
        // The session settings every godwit session has: the walsender
        // renders values as text with them, and the target parses that
        // text under the same ones.
        let params = [
            ("user", user.as_str()),
            ("database", database.as_str()),
            ("replication", "database"),
            ("application_name", "godwit stream"),
            ("TimeZone", "UTC"),
            ("DateStyle", "ISO, YMD"),
            ("IntervalStyle", "postgres"),
            ("extra_float_digits", "1"),
            ("bytea_output", "hex"),
        ];
        frontend::startup_message(params, &mut self.outbox).map_err(|e| self.io_error(e))?;
        self.flush().await?;
        let password = config.get_password().map(<[u8]>::to_vec);
        let missing_password = || {
            Error::Spec(
                "the source asks for a password and none was found: name a password file with \
                 `passfile=PATH` in `source`"
                    .into(),
            )
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'R' => {
                    let mut data = &body[..];
                    if data.len() < 4 {
                        return Err(self.unexpected(tag, "authenticating"));
                    }
                    match data.get_i32() {
                        0 => {}
                        3 => {
                            let password = password.as_deref().ok_or_else(missing_password)?;
                            frontend::password_message(password, &mut self.outbox)
                                .map_err(|e| self.io_error(e))?;
                            self.flush().await?;
                        }
                        5 if data.len() >= 4 => {
                            let password = password.as_deref().ok_or_else(missing_password)?;
                            let salt = [data[0], data[1], data[2], data[3]];
                            let hashed = md5_hash(user.as_bytes(), password, salt);
                            frontend::password_message(hashed.as_bytes(), &mut self.outbox)
                                .map_err(|e| self.io_error(e))?;
                            self.flush().await?;
                        }
                        10 => {
                            let offered: Vec<&[u8]> =
                                data.split(|b| *b == 0).filter(|m| !m.is_empty()).collect();
                            if !offered.contains(&sasl::SCRAM_SHA_256.as_bytes()) {
                                return Err(Error::Unreachable(format!(
                                    "the source offers no SASL mechanism godwit speaks for its replication session (it offers {})",
                                    offered
                                        .iter()
                                        .map(|m| String::from_utf8_lossy(m).into_owned())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )));
                            }
                            let password = password.as_deref().ok_or_else(missing_password)?;
                            let exchange = sasl::ScramSha256::new(
                                password,
                                sasl::ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                sasl::SCRAM_SHA_256,
                                exchange.message(),
                                &mut self.outbox,
                            )
                            .map_err(|e| self.io_error(e))?;
                            scram = Some(exchange);
                            self.flush().await?;
                        }
                        11 => {
                            let exchange = scram
                                .as_mut()
                                .ok_or_else(|| self.unexpected(tag, "authenticating"))?;
                            exchange.update(data).map_err(|e| self.auth_error(e))?;
                            frontend::sasl_response(exchange.message(), &mut self.outbox)
                                .map_err(|e| self.io_error(e))?;
                            self.flush().await?;
                        }
                        12 => {
                            let exchange = scram
                                .as_mut()
                                .ok_or_else(|| self.unexpected(tag, "authenticating"))?;
                            exchange.finish(data).map_err(|e| self.auth_error(e))?;
                        }
                        code => {
                            return Err(Error::Unreachable(format!(
                                "the source asks for an authentication method godwit does not speak (code {code}) for its replication session"
                            )));
                        }
                    }
                }
                b'E' => return Err(self.refused("open a replication session", &body)),
                b'S' | b'K' | b'N' => {}
                b'Z' => return Ok(()),
                other => return Err(self.unexpected(other, "authenticating")),
            }
        }
    }

    /// The next backend message: its tag and body.
    async fn message(&mut self) -> Result<(u8, BytesMut)> {
        loop {
            if self.inbox.len() >= 5 {
                let len = i32::from_be_bytes([
                    self.inbox[1],
                    self.inbox[2],
                    self.inbox[3],
                    self.inbox[4],
                ]);
                let len = usize::try_from(len).unwrap_or(0);
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(Error::Internal(format!(
                        "replication stream of slot {}: a message of length {len}",
                        self.slot
                    )));
                }
                if self.inbox.len() > len {
                    let mut message = self.inbox.split_to(len + 1);
                    let tag = message.get_u8();
                    message.advance(4);
                    return Ok((tag, message));
                }
                self.inbox.reserve(len + 1 - self.inbox.len());
            }
            let read = self
                .io
                .read_buf(&mut self.inbox)
                .await
                .map_err(|e| self.io_error(e))?;
            if read == 0 {
                return Err(Error::Unreachable(format!(
                    "the source closed the replication session of slot {}",
                    self.slot
                )));
            }
        }
    }

    async fn flush(&mut self) -> Result<()> {
        let pending = self.outbox.split();
        self.io
            .write_all(&pending)
            .await
            .map_err(|e| self.io_error(e))?;
        self.io.flush().await.map_err(|e| self.io_error(e))
    }

    fn io_error(&self, e: std::io::Error) -> Error {
        Error::Unreachable(format!(
            "the replication session of slot {} failed: {e}",
            self.slot
        ))
    }

    fn auth_error(&self, e: std::io::Error) -> Error {
        Error::Unreachable(format!(
            "the source's password exchange for the replication session of slot {} failed: {e}",
            self.slot
        ))
    }

    fn unexpected(&self, tag: u8, when: &str) -> Error {
        Error::Internal(format!(
            "replication session of slot {}: unexpected message {:?} while {when}",
            self.slot, tag as char
        ))
    }

    /// The source's refusal, as its error fields say it.
    fn refused(&self, what: &str, body: &[u8]) -> Error {
        let mut code = String::new();
        let mut message = String::new();
        for field in body.split(|b| *b == 0) {
            let Some((&kind, value)) = field.split_first() else {
                continue;
            };
            let value = String::from_utf8_lossy(value);
            match kind {
                b'C' => code = value.into_owned(),
                b'M' => message = value.into_owned(),
                _ => {}
            }
        }
        let text = format!(
            "the source refused to {what} for slot {} ({code}): {message}",
            self.slot
        );
        match code.as_str() {
            // Privileges, a missing slot or publication: asking again
            // changes nothing.
            "42501" | "28000" | "28P01" | "42704" | "55000" => Error::Spec(text),
            // In use by another session for a moment, or the server going
            // away: worth another attempt.
            _ => Error::Unreachable(text),
        }
    }
}

/// A socket to the first host that answers, with TLS as `sslmode` says.
async fn open_socket(
    config: &tokio_postgres::Config,
    client_tls: rustls::ClientConfig,
) -> std::io::Result<Box<dyn Io>> {
    let ports = config.get_ports();
    let mut last = std::io::Error::other("no host given");
    for (i, host) in config.get_hosts().iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        match host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                match tokio::net::UnixStream::connect(&path).await {
                    Ok(socket) => return Ok(Box::new(socket)),
                    Err(e) => last = e,
                }
            }
            Host::Tcp(name) => {
                let socket = match tokio::net::TcpStream::connect((name.as_str(), port)).await {
                    Ok(socket) => socket,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                return negotiate_tls(socket, name, config.get_ssl_mode(), client_tls).await;
            }
        }
    }
    Err(last)
}

async fn negotiate_tls(
    mut socket: tokio::net::TcpStream,
    host: &str,
    mode: SslMode,
    client_tls: rustls::ClientConfig,
) -> std::io::Result<Box<dyn Io>> {
    if mode == SslMode::Disable {
        return Ok(Box::new(socket));
    }
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    socket.write_all(&request).await?;
    let mut answer = [0u8; 1];
    socket.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        if mode == SslMode::Require {
            return Err(std::io::Error::other(
                "the server does not offer TLS, which sslmode requires",
            ));
        }
        return Ok(Box::new(socket));
    }
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| std::io::Error::other(format!("host name {host}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls));
    Ok(Box::new(connector.connect(name, socket).await?))
}
