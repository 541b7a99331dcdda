//! `orc-node-agent`: a kubelet stand-in for the local cluster. It registers a Node, keeps its
//! Lease and Ready condition fresh, and runs every pod bound to it as a local process.

mod env;
mod images;
mod kubelet;
mod node;
mod pod;
mod probe;
mod token;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, Event, ExponentialBackoff};
use kube::{Api, Client, ResourceExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

/// Runs pods bound to its Node as local processes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Name of the Node to register.
    #[arg(long, env = "ORC_AGENT_NODE", default_value = "orc-agent-0")]
    node_name: String,

    /// Image-to-executable map entries, `IMAGE_NAME=PATH` (image name without registry and tag).
    #[arg(long = "image", env = "ORC_AGENT_IMAGES", value_delimiter = ',')]
    images: Vec<String>,

    /// Folder of per-pod logs and credentials.
    #[arg(long, env = "ORC_AGENT_STATE_DIR", default_value = ".local/agent")]
    state_dir: PathBuf,

    /// kubelet version reported by the Node.
    #[arg(long, env = "ORC_AGENT_KUBE_VERSION", default_value = "v1.34.4")]
    kube_version: String,

    /// The Node's zone (its `topology.kubernetes.io/zone` label); none when empty.
    #[arg(long, env = "ORC_AGENT_ZONE", default_value = "")]
    zone: String,

    /// The /16 the node's pod IPs come from, `127.N.0.0/16` (each node its own).
    #[arg(long, env = "ORC_AGENT_POD_CIDR", default_value = "127.1.0.0/16")]
    pod_cidr: String,

    /// Port of the kubelet endpoint (`kubectl logs`) on the node's address.
    #[arg(long, env = "ORC_AGENT_KUBELET_PORT", default_value_t = 10250)]
    kubelet_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .init();
    let args = Args::parse();
    let kubeconfig = kube::config::Kubeconfig::read()?;
    let client = Client::try_default().await?;
    let state_dir = std::path::absolute(&args.state_dir)?;
    std::fs::create_dir_all(state_dir.join("pods"))?;
    let ips = pod::IpPool::of_cidr(&args.pod_cidr).map_err(anyhow::Error::msg)?;
    let node = node::NodeInfo {
        name: args.node_name.clone(),
        kube_version: args.kube_version.clone(),
        zone: Some(args.zone.clone()).filter(|z| !z.is_empty()),
        pod_cidr: args.pod_cidr.clone(),
        kubelet_port: args.kubelet_port,
    };
    let logs = kubelet::LogIndex::default();
    // Bound before the Node says where it is: the API server may forward `kubectl logs` at once.
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], args.kubelet_port));
    let kubelet = tokio::spawn(kubelet::serve(address, logs.clone()));
    let agent = Arc::new(pod::Agent {
        client: client.clone(),
        kubeconfig,
        node_name: args.node_name.clone(),
        images: images::ImageMap::parse(&args.images)?,
        state_dir,
        http: reqwest::Client::builder().no_proxy().build()?,
        ips: Mutex::new(ips),
        logs,
        running: Mutex::new(BTreeSet::new()),
    });
    // An API server that is not there yet is waited for, as a kubelet does.
    while let Err(error) = node::register(&client, &node).await {
        tracing::warn!(%error, "cannot register the node yet; retrying");
        tokio::time::sleep(HEARTBEAT_RETRY).await;
    }
    tracing::info!(node = %args.node_name, "node registered");

    let heartbeat = {
        let client = client.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let mut pause = node::HEARTBEAT;
            loop {
                tokio::time::sleep(pause).await;
                // A failed heartbeat (the API server is away) is tried again soon, so the node
                // is renewed as soon as the API server is back, well within the node monitor's
                // grace period, rather than a whole heartbeat later.
                pause = match node::heartbeat(&client, &node).await {
                    Ok(_) => node::HEARTBEAT,
                    Err(error) => {
                        tracing::warn!(%error, "node heartbeat failed; retrying");
                        HEARTBEAT_RETRY
                    }
                };
            }
        })
    };

    let result = tokio::select! {
        result = watch_pods(agent.clone()) => result,
        served = kubelet => served.map_err(anyhow::Error::from).and_then(|r| r).map_err(|e| e.context("the kubelet endpoint stopped")),
        _ = shutdown_signal() => Ok(()),
    };
    heartbeat.abort();
    stop_all(&agent).await;
    result
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("stopping: terminating every container");
}

/// Pause before trying a failed node registration or heartbeat again.
const HEARTBEAT_RETRY: Duration = Duration::from_secs(1);

/// SIGTERM to every container, SIGKILL to those still running two seconds later.
async fn stop_all(agent: &pod::Agent) {
    let groups: Vec<i32> = agent.running.lock().unwrap().iter().copied().collect();
    for pid in &groups {
        let _ = killpg(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for pid in &groups {
        let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
    }
}

/// The pod watch's back-off: from 0.5 s, doubling to at most 3 s, plus a random jitter of up
/// to as much again (backon's), reset after a minute without error. kube-runtime's default
/// grows to 30 s, so after an API server restart the agent learnt of a deleted or new pod up to
/// a minute late while the rest of the cluster waited on it; a kubelet's pod updates are not
/// that late.
fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let policy = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(3))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(ExponentialBackoff::from(policy), Duration::from_secs(60))
}

/// Watches the pods bound to the node and hands each to its worker.
async fn watch_pods(agent: Arc<pod::Agent>) -> anyhow::Result<()> {
    let pods = Api::<Pod>::all(agent.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", agent.node_name));
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let mut events = std::pin::pin!(watcher::watcher(pods, config).backoff(watch_backoff()));
    while let Some(event) = events.next().await {
        // Losing the API server is a wait, not an exit (a kubelet survives a control plane
        // restart): the watcher retries with back-off, running pods keep running.
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "watching pods failed; retrying");
                continue;
            }
        };
        workers.retain(|_, sender| !sender.is_closed());
        match event {
            Event::Init => listed.clear(),
            Event::InitApply(pod) => {
                listed.insert(pod.uid().unwrap_or_default());
                dispatch(&agent, &mut workers, pod);
            }
            Event::InitDone => {
                for (uid, sender) in workers.iter() {
                    if !listed.contains(uid) {
                        let _ = sender.send(None);
                    }
                }
            }
            Event::Apply(pod) => dispatch(&agent, &mut workers, pod),
            Event::Delete(pod) => {
                if let Some(sender) = workers.remove(&pod.uid().unwrap_or_default()) {
                    let _ = sender.send(None);
                }
            }
        }
    }
    Ok(())
}

fn dispatch(agent: &Arc<pod::Agent>, workers: &mut HashMap<String, watch::Sender<Option<Pod>>>, pod: Pod) {
    let uid = pod.uid().unwrap_or_default();
    match workers.get(&uid) {
        Some(sender) => {
            let _ = sender.send(Some(pod));
        }
        None => {
            let (sender, receiver) = watch::channel(Some(pod));
            tokio::spawn(pod::run(agent.clone(), receiver));
            workers.insert(uid, sender);
        }
    }
}
