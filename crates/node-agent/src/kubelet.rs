//! The kubelet's read-only log endpoint, so that `kubectl logs` (`-f`, `--previous`,
//! `--tail`, `--limit-bytes`) works through the API server for every pod of the node.
//!
//! The API server reaches a kubelet at its Node's `InternalIP` and
//! `status.daemonEndpoints.kubeletEndpoint.Port`, over HTTPS, and forwards `pods/log` to
//! `GET /containerLogs/{namespace}/{pod}/{container}`. The agent serves a self-signed
//! certificate made at start (the local API server is not given a kubelet CA, so it does not
//! check one, as kwokctl sets it up) and only on the loopback address. Every container run
//! writes its own file (`{container}.{run}.log` in the pod's folder), so `--previous` is the
//! last run that ended before a restart, as the kubelet's `lastState.terminated`. Lines carry no timestamps here:
//! `--timestamps`, `--since` and `--since-time` are refused with a clear error rather than
//! answered with something else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// One container's logs as its pod's worker keeps them up to date.
#[derive(Clone, Debug)]
pub struct ContainerLogs {
    /// The pod's folder.
    pub dir: PathBuf,
    /// The container's name.
    pub container: String,
    /// The current run, or the last one while none runs (numbered from 0 in the pod's folder,
    /// one more per start, across agent restarts).
    pub run: i32,
    /// Whether the current run's process is running.
    pub running: bool,
    /// The last run that ended, if one did: what `--previous` shows (the kubelet's
    /// `lastState.terminated`; while a crashed container waits to restart, that same run).
    pub last_terminated: Option<i32>,
}

impl ContainerLogs {
    /// The file of run `run`.
    pub fn path(&self, run: i32) -> PathBuf {
        log_file(&self.dir, &self.container, run)
    }
}

/// The file a container's run `run` writes.
pub fn log_file(dir: &std::path::Path, container: &str, run: i32) -> PathBuf {
    dir.join(format!("{container}.{run}.log"))
}

/// The containers of the node's pods, by `namespace/pod`.
pub type LogIndex = Arc<Mutex<HashMap<String, ContainerLogs>>>;

/// The query `kubectl logs` sends (the API server passes it on).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<bool>,
    previous: Option<bool>,
    tail_lines: Option<i64>,
    limit_bytes: Option<i64>,
    timestamps: Option<bool>,
    since_seconds: Option<i64>,
    since_time: Option<String>,
}

/// How often a followed log is read again for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Serves the log endpoint on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, index: LogIndex) -> anyhow::Result<()> {
    let certified = rcgen::generate_simple_self_signed(vec![addr.ip().to_string(), "localhost".to_string()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let chain = vec![CertificateDer::from(certified.cert.der().to_vec())];
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let listener = TlsListener::start(TcpListener::bind(addr).await?, TlsAcceptor::from(Arc::new(config)))?;
    tracing::info!(%addr, "kubelet log endpoint listening");
    let app = Router::new()
        .route("/containerLogs/{namespace}/{pod}/{container}", get(container_logs))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(index);
    axum::serve(listener, app).await?;
    Ok(())
}

/// TCP with a TLS handshake, as axum's listener: connections are accepted by a task of their
/// own and each handshake runs in a task of its own, so a client that stalls its handshake
/// holds up no other.
struct TlsListener {
    local: SocketAddr,
    handshaken: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    fn start(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (ready, handshaken) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                if ready.is_closed() {
                    break;
                }
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "kubelet endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, ready) = (acceptor.clone(), ready.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "kubelet endpoint: TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "kubelet endpoint: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, handshaken })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accepting task ended (it never does): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

async fn container_logs(
    State(index): State<LogIndex>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<LogQuery>,
) -> Response {
    if query.timestamps == Some(true) || query.since_seconds.is_some() || query.since_time.is_some() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the node agent does not record when each line was written: --timestamps, --since and --since-time are not supported (use --tail)".into(),
        );
    }
    let key = format!("{namespace}/{pod}");
    let Some(logs) = index.lock().unwrap().get(&key).cloned() else {
        return refuse(StatusCode::NOT_FOUND, format!("pod {key} is not running on this node"));
    };
    if logs.container != container {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "container {container} is not valid for pod {pod} (its container is {})",
                logs.container
            ),
        );
    }
    let run = if query.previous == Some(true) {
        let Some(previous) = logs.last_terminated else {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
            );
        };
        previous
    } else {
        logs.run
    };
    let path = logs.path(run);
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("container \"{container}\" in pod \"{pod}\" has not written a log yet (it is waiting to start)"),
        );
    };
    let mut start = 0;
    if let Some(lines) = query.tail_lines.filter(|n| *n >= 0) {
        match tail_offset(&mut file, lines as usize).await {
            Ok(offset) => start = offset,
            Err(error) => {
                return refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("read {}: {error}", path.display()),
                );
            }
        }
    }
    if let Err(error) = file.seek(std::io::SeekFrom::Start(start)).await {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("read {}: {error}", path.display()),
        );
    }
    let follow = query.follow == Some(true) && run == logs.run && logs.running;
    let limit = query.limit_bytes.filter(|n| *n > 0).map(|n| n as u64);
    let chunks = futures::stream::unfold(
        Reader {
            file,
            follow,
            index,
            key,
            dir: logs.dir.clone(),
            run,
            left: limit,
        },
        Reader::next,
    );
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(chunks.map(Ok::<_, std::io::Error>)))
        .unwrap_or_else(|error| refuse(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))
}

/// How much of a log's end is read at a time to find where its last lines begin.
const TAIL_CHUNK: u64 = 64 * 1024;

/// The byte offset where the last `lines` lines of the file begin, read backwards a chunk at a
/// time (a long log is not read whole for a few lines).
async fn tail_offset(file: &mut tokio::fs::File, lines: usize) -> std::io::Result<u64> {
    let size = file.metadata().await?.len();
    if lines == 0 {
        return Ok(size);
    }
    let mut end = size;
    // Newlines still to pass: one more when the log ends with one (it ends the last line).
    let mut wanted = lines;
    let mut first = true;
    while end > 0 {
        let begin = end.saturating_sub(TAIL_CHUNK);
        let mut chunk = vec![0; (end - begin) as usize];
        file.seek(std::io::SeekFrom::Start(begin)).await?;
        file.read_exact(&mut chunk).await?;
        if first && chunk.last() == Some(&b'\n') {
            wanted += 1;
        }
        first = false;
        if let Some(at) = nth_newline_from_end(&chunk, &mut wanted) {
            return Ok(begin + at as u64 + 1);
        }
        end = begin;
    }
    Ok(0)
}

/// The index of the `wanted`-th newline of `chunk` from its end; when there are fewer,
/// `wanted` is counted down by those passed.
fn nth_newline_from_end(chunk: &[u8], wanted: &mut usize) -> Option<usize> {
    for (at, byte) in chunk.iter().enumerate().rev() {
        if *byte == b'\n' {
            *wanted -= 1;
            if *wanted == 0 {
                return Some(at);
            }
        }
    }
    None
}

/// A log file read to its end, then (when following) as it grows, until its run ends.
struct Reader {
    file: tokio::fs::File,
    follow: bool,
    index: LogIndex,
    key: String,
    /// The followed pod's folder: a new pod of the same name is not the followed one.
    dir: PathBuf,
    run: i32,
    left: Option<u64>,
}

impl Reader {
    /// Whether the followed run still runs.
    fn still_running(&self) -> bool {
        self.index
            .lock()
            .unwrap()
            .get(&self.key)
            .is_some_and(|logs| logs.dir == self.dir && logs.run == self.run && logs.running)
    }

    async fn next(mut self) -> Option<(Vec<u8>, Self)> {
        loop {
            if self.left == Some(0) {
                return None;
            }
            let mut buffer = vec![0; 64 * 1024];
            let want = self.left.map_or(buffer.len(), |left| buffer.len().min(left as usize));
            let read = match self.file.read(&mut buffer[..want]).await {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(%error, key = %self.key, "reading a container log failed");
                    return None;
                }
            };
            if read > 0 {
                buffer.truncate(read);
                if let Some(left) = self.left.as_mut() {
                    *left -= read as u64;
                }
                return Some((buffer, self));
            }
            if !self.follow {
                return None;
            }
            if !self.still_running() {
                // One last read: what the process wrote before it exited.
                self.follow = false;
                continue;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tail(content: &[u8], lines: usize) -> String {
        let name = format!("orc-tail-{}-{lines}-{}.log", std::process::id(), content.len());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, content).unwrap();
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        let at = tail_offset(&mut file, lines).await.unwrap() as usize;
        std::fs::remove_file(&path).unwrap();
        String::from_utf8_lossy(&content[at..]).into_owned()
    }

    #[tokio::test]
    async fn tail_starts_at_the_last_lines() {
        let log = b"one\ntwo\nthree\n";
        assert_eq!(tail(log, 2).await, "two\nthree\n");
        assert_eq!(tail(log, 1).await, "three\n");
        assert_eq!(tail(log, 5).await, "one\ntwo\nthree\n");
        assert_eq!(tail(log, 0).await, "");
        assert_eq!(
            tail(b"one\ntwo", 1).await,
            "two",
            "a last line still being written counts"
        );
        assert_eq!(tail(b"", 3).await, "");
        // Lines across chunk boundaries: the last 3 of 100 000 lines, and all of them.
        let long: String = (0..100_000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(tail(long.as_bytes(), 3).await, "line 99997\nline 99998\nline 99999\n");
        assert_eq!(tail(long.as_bytes(), 100_000).await, long);
    }
}
