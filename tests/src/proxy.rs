//! Fault-injection proxies for failure tests, sitting between a component
//! and the server it talks to on loopback.
//!
//! [`FaultProxy`] forwards TCP: on command it resets every open connection
//! (RST, as a dropped network path or a crashed load balancer would) or
//! refuses new ones, and in front of PostgreSQL it counts the `CopyData`
//! bytes the server sends, so a test can tell how much of the source was
//! read more than once.
//!
//! [`HttpFaultProxy`] forwards HTTP/1.1 one request at a time, so it can
//! answer chosen requests with a 503 or hold them unanswered (a timeout),
//! as an overloaded object store does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxies run on a runtime of their own: a test blocked on a child
/// process (`Command::output`) must not stall the traffic that child sends
/// through them.
struct ProxyRuntime(Option<tokio::runtime::Runtime>);

impl ProxyRuntime {
    fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the proxy's runtime")?;
        Ok(Self(Some(runtime)))
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(runtime) = &self.0 {
            runtime.spawn(task);
        }
    }
}

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A loopback listener on a free port, for a proxy's runtime to accept on.
fn loopback_listener() -> anyhow::Result<(std::net::TcpListener, u16)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

#[derive(Default)]
struct Connections {
    open: Mutex<Vec<JoinHandle<()>>>,
    refusing: AtomicBool,
    /// `CopyData` payload bytes sent by the upstream PostgreSQL server.
    copy_bytes: AtomicU64,
    /// The next client message holding these bytes is delivered, and the
    /// server's reply to it is dropped with the connection (once).
    lose_reply_to: Mutex<Option<Vec<u8>>>,
    /// Replies lost that way.
    replies_lost: AtomicU64,
}

impl Connections {
    fn track(&self, task: JoinHandle<()>) {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|task| !task.is_finished());
            open.push(task);
        }
    }

    fn reset_all(&self) -> usize {
        let Ok(mut open) = self.open.lock() else {
            return 0;
        };
        let live: Vec<_> = open.drain(..).filter(|task| !task.is_finished()).collect();
        for task in &live {
            task.abort();
        }
        live.len()
    }
}

pub struct FaultProxy {
    pub port: u16,
    connections: Arc<Connections>,
    _runtime: ProxyRuntime,
}

impl FaultProxy {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> anyhow::Result<Self> {
        Self::spawn(upstream, false).await
    }

    /// Like [`FaultProxy::start`], in front of a PostgreSQL server whose
    /// `CopyData` bytes it counts (see [`FaultProxy::copy_bytes`]).
    pub async fn postgres(upstream: u16) -> anyhow::Result<Self> {
        Self::spawn(upstream, true).await
    }

    async fn spawn(upstream: u16, count_copy_data: bool) -> anyhow::Result<Self> {
        let (listener, port) = loopback_listener()?;
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream));
        let connections = Arc::new(Connections::default());
        let shared = connections.clone();
        let runtime = ProxyRuntime::start()?;
        runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((client, _)) = listener.accept().await {
                if count_copy_data {
                    // Counted bytes must be bytes the client received: keep
                    // the proxy's own kernel buffers too small to hide more
                    // than a few dozen KiB (autotuned, they reach megabytes).
                    let _ = socket2::SockRef::from(&client).set_send_buffer_size(COUNTING_BUFFER);
                }
                if shared.refusing.load(Ordering::SeqCst) {
                    let _ = client.set_zero_linger();
                    continue;
                }
                let counted = shared.clone();
                let task = tokio::spawn(async move {
                    let Ok(server) = connect_upstream(upstream, count_copy_data).await else {
                        return;
                    };
                    for stream in [&client, &server] {
                        // Dropping a stream then sends RST instead of FIN.
                        let _ = stream.set_zero_linger();
                    }
                    if count_copy_data {
                        let (mut from_client, to_client) = client.into_split();
                        let (from_server, mut to_server) = server.into_split();
                        // The client's end of stream is passed on: the
                        // server then ends the session as it would without
                        // the proxy.
                        let losing = AtomicBool::new(false);
                        let upward = async {
                            let _ = relay_watching_for_query(
                                &mut from_client,
                                &mut to_server,
                                &counted,
                                &losing,
                            )
                            .await;
                            let _ = to_server.shutdown().await;
                        };
                        let downward =
                            relay_counting_copy_data(from_server, to_client, &counted, &losing);
                        tokio::pin!(upward, downward);
                        // A lost reply ends the whole connection at once (the
                        // streams drop with RST), as a broken path would.
                        tokio::select! {
                            () = &mut upward => {
                                let _ = downward.await;
                            }
                            relayed = &mut downward => {
                                if !matches!(relayed, Ok(Relayed::ReplyLost)) {
                                    upward.await;
                                }
                            }
                        }
                    } else {
                        let (mut client, mut server) = (client, server);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                shared.track(task);
            }
        });
        Ok(Self {
            port,
            connections,
            _runtime: runtime,
        })
    }

    /// Resets every connection open through the proxy; returns how many.
    pub fn reset_all(&self) -> usize {
        self.connections.reset_all()
    }

    /// While `refusing`, every connection (open or new) is reset at once, as
    /// a server that went away would do.
    pub fn refuse_connections(&self, refusing: bool) {
        self.connections.refusing.store(refusing, Ordering::SeqCst);
        if refusing {
            self.reset_all();
        }
    }

    /// `CopyData` payload bytes the server has sent through this proxy (only
    /// counted by [`FaultProxy::postgres`]): what `COPY … TO STDOUT` read.
    pub fn copy_bytes(&self) -> u64 {
        self.connections.copy_bytes.load(Ordering::SeqCst)
    }

    /// In front of PostgreSQL ([`FaultProxy::postgres`]): the next query
    /// whose text holds `needle` reaches the server and runs, but its reply
    /// never reaches the client, whose connection is reset once the server
    /// has answered (a network path lost at the worst moment).
    pub fn lose_reply_to(&self, needle: &str) {
        if let Ok(mut armed) = self.connections.lose_reply_to.lock() {
            *armed = Some(needle.as_bytes().to_vec());
        }
    }

    /// Replies lost by [`FaultProxy::lose_reply_to`].
    pub fn replies_lost(&self) -> u64 {
        self.connections.replies_lost.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The runtime, dropped after this, ends the accept loop.
        self.reset_all();
    }
}

/// Kernel buffer size for the counting proxy's sockets.
const COUNTING_BUFFER: usize = 16 * 1024;

async fn connect_upstream(upstream: SocketAddr, small_buffer: bool) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if small_buffer {
        socket.set_recv_buffer_size(COUNTING_BUFFER as u32)?;
    }
    socket.connect(upstream).await
}

/// Relays client-to-server bytes; when they hold the armed needle of
/// [`FaultProxy::lose_reply_to`], marks this connection's reply as lost
/// before the server can see the query.
async fn relay_watching_for_query(
    mut from_client: impl AsyncRead + Unpin,
    mut to_server: impl AsyncWrite + Unpin,
    connections: &Connections,
    losing: &AtomicBool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; COUNTING_BUFFER];
    // The needle may straddle two reads: keep the previous read's tail.
    let mut window: Vec<u8> = Vec::new();
    loop {
        let n = from_client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if let Ok(mut armed) = connections.lose_reply_to.lock()
            && let Some(needle) = armed.clone()
        {
            window.extend_from_slice(&buf[..n]);
            if window.windows(needle.len()).any(|w| w == needle.as_slice()) {
                losing.store(true, Ordering::SeqCst);
                *armed = None;
            }
            let keep = needle.len().min(window.len());
            window.drain(..window.len() - keep);
        }
        to_server.write_all(&buf[..n]).await?;
    }
}

/// How the server-to-client relay ended.
enum Relayed {
    /// The server closed the connection.
    Closed,
    /// The server answered a query whose reply was to be lost.
    ReplyLost,
}

/// Relays server-to-client PostgreSQL protocol bytes, adding each
/// `CopyData` ('d') message's payload length to the counter. While the
/// reply is being lost nothing is passed on; the server's `ReadyForQuery`
/// ends the relay.
async fn relay_counting_copy_data(
    mut from_server: impl AsyncRead + Unpin,
    mut to_client: impl AsyncWrite + Unpin,
    connections: &Connections,
    losing: &AtomicBool,
) -> std::io::Result<Relayed> {
    let mut parser = BackendMessages::default();
    let mut buf = vec![0u8; COUNTING_BUFFER];
    loop {
        let n = from_server.read(&mut buf).await?;
        if n == 0 {
            to_client.shutdown().await?;
            return Ok(Relayed::Closed);
        }
        let read = parser.feed(&buf[..n]);
        connections
            .copy_bytes
            .fetch_add(read.copy_data, Ordering::SeqCst);
        if losing.load(Ordering::SeqCst) {
            if read.ready_for_query {
                connections.replies_lost.fetch_add(1, Ordering::SeqCst);
                return Ok(Relayed::ReplyLost);
            }
            continue;
        }
        to_client.write_all(&buf[..n]).await?;
    }
}

/// Frames the server side of the PostgreSQL protocol: a type byte and a
/// big-endian length (which counts itself) per message.
#[derive(Default)]
struct BackendMessages {
    /// A typed message has been seen: single-byte answers to SSL or GSS
    /// encryption requests ('N') can only come before that.
    started: bool,
    /// The stream went encrypted: nothing more can be framed.
    opaque: bool,
    header: Vec<u8>,
    body_left: usize,
}

impl BackendMessages {
    /// Consumes `bytes`; tells what they held. A full header always has
    /// body bytes left to read.
    fn feed(&mut self, mut bytes: &[u8]) -> Framed {
        let mut framed = Framed::default();
        while !bytes.is_empty() && !self.opaque {
            if self.header.len() == 5 {
                let take = self.body_left.min(bytes.len());
                if self.header[0] == b'd' {
                    framed.copy_data += take as u64;
                }
                self.body_left -= take;
                bytes = &bytes[take..];
                if self.body_left == 0 {
                    self.header.clear();
                }
                continue;
            }
            if !self.started && self.header.is_empty() {
                match bytes[0] {
                    b'N' => {
                        bytes = &bytes[1..];
                        continue;
                    }
                    b'S' | b'G' => {
                        self.opaque = true;
                        break;
                    }
                    _ => {}
                }
            }
            let take = (5 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.header.len() == 5 {
                self.started = true;
                let length = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                self.body_left = length.saturating_sub(4);
                framed.ready_for_query |= self.header[0] == b'Z';
                if self.body_left == 0 {
                    self.header.clear();
                }
            }
        }
        framed
    }
}

/// What a run of server bytes held.
#[derive(Default)]
struct Framed {
    /// `CopyData` payload bytes.
    copy_data: u64,
    /// The start of a `ReadyForQuery` message: the server finished a query.
    ready_for_query: bool,
}

/// What the HTTP proxy does to the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFault {
    /// Answer `503 Service Unavailable` with S3's `SlowDown` error.
    Unavailable,
    /// Read the request, never answer, drop the connection after `hold`.
    Stall { hold: Duration },
}

#[derive(Default)]
struct HttpFaults {
    pending: Mutex<Vec<HttpFault>>,
    injected: AtomicU64,
    forwarded: AtomicU64,
}

impl HttpFaults {
    fn next(&self) -> Option<HttpFault> {
        let mut pending = self.pending.lock().ok()?;
        if pending.is_empty() {
            None
        } else {
            Some(pending.remove(0))
        }
    }
}

pub struct HttpFaultProxy {
    pub port: u16,
    faults: Arc<HttpFaults>,
    _runtime: ProxyRuntime,
}

impl HttpFaultProxy {
    /// Forwards HTTP/1.1 on 127.0.0.1:`port` to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> anyhow::Result<Self> {
        let (listener, port) = loopback_listener()?;
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream));
        let faults = Arc::new(HttpFaults::default());
        let shared = faults.clone();
        let runtime = ProxyRuntime::start()?;
        runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((client, _)) = listener.accept().await {
                let faults = shared.clone();
                tokio::spawn(async move {
                    let _ = serve_http_connection(client, upstream, &faults).await;
                });
            }
        });
        Ok(Self {
            port,
            faults,
            _runtime: runtime,
        })
    }

    /// Applies `fault` to each of the next `requests` requests, whichever
    /// connection they arrive on.
    pub fn inject(&self, fault: HttpFault, requests: usize) {
        if let Ok(mut pending) = self.faults.pending.lock() {
            pending.extend(std::iter::repeat_n(fault, requests));
        }
    }

    /// Requests answered with a fault so far.
    pub fn injected(&self) -> u64 {
        self.faults.injected.load(Ordering::SeqCst)
    }

    /// Requests forwarded to the server so far.
    pub fn forwarded(&self) -> u64 {
        self.faults.forwarded.load(Ordering::SeqCst)
    }
}

/// One HTTP message's head and how its body is delimited.
struct HttpHead {
    raw: Vec<u8>,
    content_length: Option<usize>,
    chunked: bool,
    closes: bool,
}

async fn read_head(
    reader: &mut (impl AsyncBufReadExt + Unpin),
) -> anyhow::Result<Option<HttpHead>> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let n = reader.read_until(b'\n', &mut raw).await?;
        if n == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            bail!("connection closed inside an HTTP head");
        }
        if &raw[before..] == b"\r\n" && before > 0 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let header = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    Ok(Some(HttpHead {
        content_length: header("content-length:").and_then(|v| v.parse().ok()),
        chunked: header("transfer-encoding:").is_some_and(|v| v.contains("chunked")),
        closes: header("connection:").is_some_and(|v| v == "close"),
        raw,
    }))
}

/// Reads a body delimited as `head` says; `to_eof` bodies (responses with
/// neither length nor chunking) run to the end of the connection.
async fn read_body(
    reader: &mut (impl AsyncBufReadExt + Unpin),
    head: &HttpHead,
    to_eof: bool,
) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.chunked {
        loop {
            let start = body.len();
            reader.read_until(b'\n', &mut body).await?;
            let size_line = String::from_utf8_lossy(&body[start..]).to_string();
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                .context("bad chunk size")?;
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk).await?;
            body.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
        }
    } else if let Some(length) = head.content_length {
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
    } else if to_eof {
        reader.read_to_end(&mut body).await?;
    }
    Ok(body)
}

async fn serve_http_connection(
    client: TcpStream,
    upstream: SocketAddr,
    faults: &HttpFaults,
) -> anyhow::Result<()> {
    let (client_read, mut client_write) = client.into_split();
    let mut client_read = BufReader::new(client_read);
    let mut server: Option<(
        BufReader<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    )> = None;
    while let Some(request) = read_head(&mut client_read).await? {
        let body = read_body(&mut client_read, &request, false).await?;
        match faults.next() {
            Some(HttpFault::Unavailable) => {
                faults.injected.fetch_add(1, Ordering::SeqCst);
                let error = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                             <Message>Please reduce your request rate.</Message></Error>";
                let response = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\n\
                     content-length: {}\r\n\r\n{error}",
                    error.len()
                );
                client_write.write_all(response.as_bytes()).await?;
                continue;
            }
            Some(HttpFault::Stall { hold }) => {
                faults.injected.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                return Ok(());
            }
            None => {}
        }
        if server.is_none() {
            let stream = TcpStream::connect(upstream).await?;
            let (read, write) = stream.into_split();
            server = Some((BufReader::new(read), write));
        }
        let Some((server_read, server_write)) = server.as_mut() else {
            bail!("no upstream connection");
        };
        server_write.write_all(&request.raw).await?;
        server_write.write_all(&body).await?;
        faults.forwarded.fetch_add(1, Ordering::SeqCst);
        let Some(response) = read_head(server_read).await? else {
            bail!("the server closed the connection without answering");
        };
        let bodiless = request.raw.starts_with(b"HEAD ")
            || [b"HTTP/1.1 204", b"HTTP/1.1 304"]
                .iter()
                .any(|status| response.raw.starts_with(*status));
        let body = if bodiless {
            Vec::new()
        } else {
            read_body(server_read, &response, true).await?
        };
        client_write.write_all(&response.raw).await?;
        client_write.write_all(&body).await?;
        let to_eof = !bodiless && !response.chunked && response.content_length.is_none();
        if response.closes || request.closes || to_eof {
            break;
        }
    }
    client_write.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{BackendMessages, Framed};

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn counts_copy_data_payloads_however_the_stream_is_split() {
        let mut stream = vec![b'N'];
        stream.extend(message(b'R', &[0, 0, 0, 0]));
        stream.extend(message(b'H', &[0, 0, 2, 0, 0, 0, 0]));
        stream.extend(message(b'd', &[7; 100]));
        stream.extend(message(b'd', &[]));
        stream.extend(message(b'd', &[1; 3]));
        stream.extend(message(b'c', &[]));
        stream.extend(message(b'Z', b"I"));
        for split in 1..stream.len() {
            let mut parser = BackendMessages::default();
            let framed: Vec<Framed> = stream
                .chunks(split)
                .map(|piece| parser.feed(piece))
                .collect();
            let counted: u64 = framed.iter().map(|f| f.copy_data).sum();
            assert_eq!(counted, 103, "split every {split} bytes");
            let ready = framed.iter().filter(|f| f.ready_for_query).count();
            assert_eq!(ready, 1, "split every {split} bytes");
        }
    }
}
