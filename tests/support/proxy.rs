//! A TCP proxy in front of PostgreSQL that injects network faults on command: it passes bytes
//! through, refuses new connections (the listener is closed: connecting gets ECONNREFUSED, as
//! from a database that is down), drops every open connection, or hangs (connections are
//! accepted and held, and no byte moves either way: a database that accepts and never
//! answers). Real sockets and a real PostgreSQL behind it: the operator and the servers see
//! the fault exactly as they would see the network's.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Bytes pass both ways.
    Pass,
    /// New connections are refused and open ones are closed.
    Refuse,
    /// New connections are accepted; no byte moves on any connection until the mode changes.
    Hang,
}

/// A running proxy; stops when dropped.
pub(crate) struct Proxy {
    /// The port it listens on (127.0.0.1).
    pub(crate) port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 forwarding to `127.0.0.1:upstream`.
    pub(crate) async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream));
        let (mode, modes) = watch::channel(Mode::Pass);
        let task = tokio::spawn(listen(Some(listener), port, upstream, modes));
        Self { port, mode, task }
    }

    /// Switches to `mode`.
    pub(crate) fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts while the mode lets it; the listener is closed while refusing and bound again after.
async fn listen(mut listener: Option<TcpListener>, port: u16, upstream: SocketAddr, mut modes: watch::Receiver<Mode>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let refusing = *modes.borrow_and_update() == Mode::Refuse;
        if refusing {
            listener = None;
        } else if listener.is_none() {
            // The port was just released: binding it again can take a few tries.
            for _ in 0..100 {
                if let Ok(bound) = TcpListener::bind(("127.0.0.1", port)).await {
                    listener = Some(bound);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(listener.is_some(), "the proxy could not listen on port {port} again");
        }
        tokio::select! {
            accepted = async { listener.as_ref().unwrap().accept().await }, if listener.is_some() => {
                if let Ok((client, _)) = accepted {
                    connections.spawn(forward(client, upstream, modes.clone()));
                }
            }
            changed = modes.changed() => if changed.is_err() { return },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One client connection: bytes both ways while passing, held while hanging, closed when
/// refusing.
async fn forward(client: TcpStream, upstream: SocketAddr, modes: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pipe(client_read, server_write, modes.clone()) => {}
        _ = pipe(server_read, client_write, modes) => {}
    }
}

/// Copies `from` to `to`, chunk by chunk, each chunk only while the mode is `Pass`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut modes: watch::Receiver<Mode>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        // Nothing is read while hanging either: the peer's writes fill the socket buffers.
        if !passing(&mut modes).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = modes.changed() => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !passing(&mut modes).await {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits out a hang; whether bytes may pass now (false: refusing, or the proxy is gone).
async fn passing(modes: &mut watch::Receiver<Mode>) -> bool {
    matches!(modes.wait_for(|m| *m != Mode::Hang).await.map(|m| *m), Ok(Mode::Pass))
}
