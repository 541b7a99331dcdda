//! Container probes (HTTP GET and TCP socket), run by the agent against the pod IP.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A probe ready to run: where and how often.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    kind: ProbeKind,
    /// Wait before the first run.
    pub initial_delay: Duration,
    /// Time between runs.
    pub period: Duration,
    /// Consecutive failures that count as failed.
    pub failure_threshold: u32,
    /// Consecutive successes that count as succeeded.
    pub success_threshold: u32,
    timeout: Duration,
}

#[derive(Clone, Debug)]
enum ProbeKind {
    Http { port: u16, path: String },
    Tcp { port: u16 },
    Unsupported(String),
}

fn resolve_port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("probe port {p} is out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("probe port {name:?} is not a named port of the container")),
    }
}

impl ProbeSpec {
    /// Prepares `probe` of `container`.
    pub fn new(container: &Container, probe: &Probe) -> Self {
        let kind = if let Some(http) = &probe.http_get {
            match resolve_port(container, &http.port) {
                Ok(port) => ProbeKind::Http {
                    port,
                    path: http.path.clone().unwrap_or_else(|| "/".into()),
                },
                Err(e) => ProbeKind::Unsupported(e),
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            match resolve_port(container, &tcp.port) {
                Ok(port) => ProbeKind::Tcp { port },
                Err(e) => ProbeKind::Unsupported(e),
            }
        } else {
            ProbeKind::Unsupported("only httpGet and tcpSocket probes are supported by the node agent".into())
        };
        let secs = |v: Option<i32>, default: u64| Duration::from_secs(v.map(|v| v.max(0) as u64).unwrap_or(default));
        Self {
            kind,
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_millis(500)),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_millis(500)),
        }
    }

    /// Runs the probe once against `ip`: `Ok` on success, the reason otherwise.
    pub async fn run(&self, client: &reqwest::Client, ip: &str) -> Result<(), String> {
        match &self.kind {
            ProbeKind::Http { port, path } => {
                let url = format!("http://{ip}:{port}{path}");
                let response = client
                    .get(&url)
                    .timeout(self.timeout)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                let status = response.status();
                if status.is_success() || status.is_redirection() {
                    Ok(())
                } else {
                    Err(format!("GET {url}: HTTP {status}"))
                }
            }
            ProbeKind::Tcp { port } => tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect((ip, *port)))
                .await
                .map_err(|_| format!("connect {ip}:{port}: timed out"))?
                .map(|_| ())
                .map_err(|e| format!("connect {ip}:{port}: {e}")),
            ProbeKind::Unsupported(reason) => Err(reason.clone()),
        }
    }
}

/// Counts consecutive results against the thresholds.
#[derive(Debug, Default)]
pub struct ProbeState {
    successes: u32,
    failures: u32,
}

impl ProbeState {
    /// Records a result; returns `Some(passing)` when the probe's verdict is decided.
    pub fn record(&mut self, spec: &ProbeSpec, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= spec.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= spec.failure_threshold).then_some(false)
        }
    }
}
