//! A TCP fault-injection proxy for failure tests: sits between a component
//! and the server it talks to on loopback, forwards bytes, and on command
//! resets every open connection (RST, as a dropped network path or a
//! crashed load balancer would).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Connections {
    open: Mutex<Vec<JoinHandle<()>>>,
    resets: AtomicU64,
}

pub struct FaultProxy {
    pub port: u16,
    connections: Arc<Connections>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let port = listener.local_addr()?.port();
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream));
        let connections = Arc::new(Connections::default());
        let accepting = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    for stream in [&client, &server] {
                        // Dropping a stream then sends RST instead of FIN.
                        let _ = stream.set_zero_linger();
                    }
                    let (mut client, mut server) = (client, server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                if let Ok(mut open) = accepting.open.lock() {
                    open.retain(|task| !task.is_finished());
                    open.push(task);
                }
            }
        });
        Ok(Self {
            port,
            connections,
            accept,
        })
    }

    /// Resets every connection open through the proxy; returns how many.
    pub fn reset_all(&self) -> usize {
        let Ok(mut open) = self.connections.open.lock() else {
            return 0;
        };
        let live: Vec<_> = open.drain(..).filter(|task| !task.is_finished()).collect();
        for task in &live {
            task.abort();
        }
        self.connections
            .resets
            .fetch_add(live.len() as u64, Ordering::Relaxed);
        live.len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}
