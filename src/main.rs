//! `orchestrator-operator`: the controller binary.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{ArgAction, Parser, ValueEnum};
use futures::FutureExt;
use kube::Client;
use orchestrator_operator::http::{self, HttpState};
use orchestrator_operator::leader::{self, LeaderSettings, Leadership};
use orchestrator_operator::{
    BuildSettings, Context, DEFAULT_CONCURRENT_RECONCILES, DEFAULT_CONCURRENT_ROLLS, Metrics, StopReason,
    run_controllers,
};
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

    /// Clusters whose servers are replaced at once by rolling maintenance (0: no limit); the
    /// others wait their turn with MaintenanceBlocked/RollLimit.
    #[arg(long, env = "MAX_CONCURRENT_ROLLS", default_value_t = DEFAULT_CONCURRENT_ROLLS)]
    max_concurrent_rolls: usize,

    /// Reconciles that may run at once, each of a different cluster (0: no limit).
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = DEFAULT_CONCURRENT_RECONCILES)]
    max_concurrent_reconciles: u16,

    /// Take a Lease before acting, so that only one of several replicas writes.
    #[arg(long, env = "LEADER_ELECTION", action = ArgAction::Set, default_value_t = true)]
    leader_election: bool,

    /// Namespace of the leader Lease (defaults to the pod's namespace, then `default`).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,

    /// Name of the leader Lease.
    #[arg(long, env = "LEADER_ELECTION_LEASE", default_value = "orchestrator-operator")]
    leader_election_lease: String,

    /// Seconds the leader keeps the Lease without renewing it: a standby takes over this long
    /// after the last renewal. At least 18, so that the margin the leader keeps before it
    /// (a third) covers the 6 s a database write may take to land after the leader's last
    /// check (API writes carry preconditions instead); smaller values are refused.
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE_SECONDS",
        default_value_t = leader::DEFAULT_LEASE.as_secs(),
        value_parser = lease_seconds,
    )]
    leader_election_lease_seconds: u64,

    /// This replica's identity for leader election and Events (the pod name). The Lease names
    /// each process as this identity, `_` and a random suffix.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Namespace of this replica's pod.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,

    /// Image repository of servers whose spec sets no image; `spec.version` is the tag.
    #[arg(long, env = "SERVER_IMAGE_REPOSITORY", default_value_t = BuildSettings::default().server_image_repository)]
    server_image_repository: String,
}

/// Parses `--leader-election-lease-seconds`, refusing a lease shorter than
/// [`leader::MIN_LEASE`].
fn lease_seconds(value: &str) -> Result<u64, String> {
    let seconds = value
        .parse::<u64>()
        .map_err(|error| format!("{value:?} is not a number of seconds: {error}"))?;
    leader::check_lease(seconds).map_err(|error| error.to_string())?;
    Ok(seconds)
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
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
    // Three kinds of API traffic, each with its own client (and connection pool): requests,
    // with deadlines; watches, which stay silent for minutes when all is well; and the leader
    // Lease, whose renewals must not queue behind reconcile traffic.
    let config = kube::Config::infer().await?;
    let client = Client::try_from(Context::request_config(config.clone()))?;
    let watch_client = Client::try_from(Context::watch_config(config.clone()))?;
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
    let mut eviction_config = Context::request_config(config.clone());
    eviction_config.default_retry = false;

    let campaign = if args.leader_election {
        let leader_settings = LeaderSettings {
            lease_name: args.leader_election_lease.clone(),
            namespace: args
                .leader_election_namespace
                .clone()
                .or(args.pod_namespace.clone())
                .unwrap_or_else(|| "default".into()),
            identity: identity.clone(),
            lease_seconds: args.leader_election_lease_seconds,
        };
        let lease_client = Client::try_from(Context::request_config(config))?;
        let campaign = leader::campaign(lease_client, &leader_settings)?;
        tracing::info!(
            lease = %leader_settings.lease_name,
            namespace = %leader_settings.namespace,
            identity = %campaign.holder_identity(),
            "waiting to lead"
        );
        Some(campaign)
    } else {
        None
    };
    let leadership = campaign
        .as_ref()
        .map_or_else(Leadership::always, leader::Campaign::leadership);
    let ctx = Arc::new(
        Context::new(client, metrics.clone(), settings, Some(identity))
            .with_eviction_client(Client::try_from(eviction_config)?)
            .with_watch_client(watch_client)
            .with_max_concurrent_reconciles(args.max_concurrent_reconciles)
            .with_max_concurrent_rolls(args.max_concurrent_rolls)
            .with_leadership(leadership),
    );
    ready.store(true, Ordering::Relaxed);

    let mut campaign = campaign;
    loop {
        campaign = match campaign {
            None => None,
            // A termination request while still a standby ends the campaign (and clears the
            // Lease if a take of this process landed), like a clean stop of the leader.
            Some(campaign) => match campaign.until_leading(terminate.clone()).await {
                Some(campaign) => {
                    tracing::info!("leading: starting controllers");
                    Some(campaign)
                }
                None => return finish(http_task).await,
            },
        };
        metrics.leader.set(1);
        let stopped = run_controllers(ctx.clone(), args.watch_namespaces.clone(), terminate.clone()).await;
        metrics.leader.set(0);
        match (stopped, campaign) {
            (StopReason::LostLeadership, Some(lost)) => {
                // The controllers were dropped with the term, their reconciles in flight
                // aborted; what a step recorded is what the next term resumes from. Campaign
                // again: a Lease nobody took (the API server was away) is taken back at once.
                tracing::warn!(
                    "stopped leading (the leader Lease was taken over, or not renewed before the local deadline); every reconcile stopped; campaigning again"
                );
                // A standby holds no database connection and exports no cluster's figures;
                // again once the campaign's margin has passed, for what an aborted reconcile
                // still running on another thread did meanwhile.
                ctx.stand_down();
                campaign = Some(lost.again().await);
                ctx.stand_down();
            }
            (StopReason::LostLeadership, None) => {
                // Without leader election the leadership is never lost.
                anyhow::bail!("the controllers stopped for a lost leadership without leader election");
            }
            (StopReason::Shutdown, campaign) => {
                // Every reconcile has finished: nothing writes any more, so the Lease can go to
                // a standby at once instead of after a lease duration.
                if let Some(campaign) = campaign {
                    campaign.release().await;
                }
                return finish(http_task).await;
            }
        }
    }
}

async fn finish(http_task: tokio::task::JoinHandle<std::io::Result<()>>) -> anyhow::Result<ExitCode> {
    http_task.await??;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn a_lease_shorter_than_the_minimum_is_refused_at_startup() {
        let minimum = leader::MIN_LEASE.as_secs();
        let parse = |seconds: u64| {
            Args::try_parse_from([
                "orchestrator-operator",
                "--leader-election-lease-seconds",
                &seconds.to_string(),
            ])
        };
        assert_eq!(parse(minimum).unwrap().leader_election_lease_seconds, minimum);
        let refused = parse(minimum - 1).unwrap_err().to_string();
        assert!(refused.contains(&format!("at least {minimum} s")), "{refused}");
        let help = Args::command()
            .get_arguments()
            .find(|arg| arg.get_id() == "leader_election_lease_seconds")
            .and_then(|arg| arg.get_help().map(ToString::to_string))
            .unwrap();
        assert!(help.contains(&format!("At least {minimum},")), "{help}");
        assert!(
            help.contains(&format!("the {} s a database write", leader::LONGEST_WRITE.as_secs())),
            "{help}"
        );
    }
}
