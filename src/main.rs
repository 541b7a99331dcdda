//! `orchestrator-operator`: the controller binary.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{ArgAction, Parser, ValueEnum};
use futures::FutureExt;
use kube::Client;
use orchestrator_operator::http::{self, HttpState};
use orchestrator_operator::leader::{self, LeaderSettings};
use orchestrator_operator::{BuildSettings, Context, Metrics, run_controllers};
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Runs OrchestratorCluster resources: servers, their database, their maintenance.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Namespaces to watch, comma-separated; empty watches all namespaces.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,

    /// Take a Lease before acting, so that only one of several replicas writes.
    #[arg(long, env = "LEADER_ELECTION", action = ArgAction::Set, default_value_t = true)]
    leader_election: bool,

    /// Namespace of the leader Lease (defaults to the pod's namespace, then `default`).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,

    /// Name of the leader Lease.
    #[arg(long, env = "LEADER_ELECTION_LEASE", default_value = "orchestrator-operator")]
    leader_election_lease: String,

    /// Seconds the leader keeps the Lease without renewing it.
    #[arg(long, env = "LEADER_ELECTION_LEASE_SECONDS", default_value_t = leader::DEFAULT_LEASE.as_secs())]
    leader_election_lease_seconds: u64,

    /// This replica's identity for leader election and Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Namespace of this replica's pod.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,

    /// Image repository of servers whose spec sets no image; `spec.version` is the tag.
    #[arg(long, env = "SERVER_IMAGE_REPOSITORY", default_value_t = BuildSettings::default().server_image_repository)]
    server_image_repository: String,
}

fn init_tracing(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn,kube_lease_manager=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("termination requested; shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::try_default().await?;
    let version = client.apiserver_version().await?;
    tracing::info!(server = %version.git_version, "connected to the Kubernetes API");

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let terminate = termination_signal().boxed().shared();
    let http_state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let http_task = tokio::spawn(http::serve(args.http_addr, http_state, terminate.clone()));

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "orchestrator-operator".into());
    let settings = BuildSettings {
        server_image_repository: args.server_image_repository.clone(),
    };
    // Evictions get a client without kube's retry of 429 answers: a PodDisruptionBudget's
    // refusal is a wait of the roll, not a reconcile blocked in retries.
    let mut eviction_config = kube::Config::infer().await?;
    eviction_config.default_retry = false;
    let ctx = Arc::new(
        Context::new(client.clone(), metrics.clone(), settings, Some(identity.clone()))
            .with_eviction_client(Client::try_from(eviction_config)?),
    );
    ready.store(true, Ordering::Relaxed);

    let mut lost_leadership = false;
    if args.leader_election {
        let leader_settings = LeaderSettings {
            lease_name: args.leader_election_lease.clone(),
            namespace: args
                .leader_election_namespace
                .clone()
                .or(args.pod_namespace.clone())
                .unwrap_or_else(|| "default".into()),
            identity,
            lease_seconds: args.leader_election_lease_seconds,
        };
        let mut channel = leader::campaign(client.clone(), &leader_settings).await?;
        tracing::info!(lease = %leader_settings.lease_name, namespace = %leader_settings.namespace, "waiting to lead");
        tokio::select! {
            leading = leader::until_leading(&mut channel) => leading?,
            _ = terminate.clone() => return finish(http_task, false).await,
        }
        tracing::info!("leading: starting controllers");
        metrics.leader.set(1);
        let lost = leader::until_lost(channel).shared();
        let stop = futures::future::select(terminate.clone(), lost.clone()).map(|_| ());
        run_controllers(ctx, args.watch_namespaces.clone(), stop).await;
        metrics.leader.set(0);
        lost_leadership = lost.now_or_never().is_some() && terminate.clone().now_or_never().is_none();
    } else {
        metrics.leader.set(1);
        run_controllers(ctx, args.watch_namespaces.clone(), terminate.clone()).await;
    }
    finish(http_task, lost_leadership).await
}

async fn finish(
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
    lost_leadership: bool,
) -> anyhow::Result<ExitCode> {
    if lost_leadership {
        tracing::error!("lost the leader Lease; exiting so that a restart campaigns again");
        http_task.abort();
        return Ok(ExitCode::FAILURE);
    }
    http_task.await??;
    Ok(ExitCode::SUCCESS)
}
