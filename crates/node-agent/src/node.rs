//! The agent's Node: registration, the Ready condition and the node Lease, kept fresh.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde_json::json;

/// Field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "orc-node-agent";
/// Label marking the agent's nodes (kwok leaves nodes without its annotation alone).
pub const AGENT_LABEL: &str = "node.orchestrator.dev/agent";
/// How often the Ready condition and the Lease are renewed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Lease duration: the node lifecycle controller marks the node unknown after this.
pub const LEASE_SECONDS: i32 = 40;
/// The address of every agent's Node: the API server reaches each one's kubelet endpoint here,
/// on the Node's own port.
pub const NODE_IP: &str = "127.0.0.1";
/// The label of a Node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What the agent says about its Node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The Node's name.
    pub name: String,
    /// kubelet version reported.
    pub kube_version: String,
    /// Its zone, if it has one.
    pub zone: Option<String>,
    /// Where its pods' IPs come from.
    pub pod_cidr: String,
    /// Port of its kubelet endpoint.
    pub kubelet_port: u16,
}

fn capacity() -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity("32".into())),
        ("memory".to_string(), Quantity("64Gi".into())),
        ("pods".to_string(), Quantity("250".into())),
        ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
    ])
}

fn status(node: &NodeInfo) -> NodeStatus {
    let (name, kube_version) = (node.name.as_str(), node.kube_version.as_str());
    let now = Time(Timestamp::now());
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    NodeStatus {
        capacity: Some(capacity()),
        allocatable: Some(capacity()),
        conditions: Some(vec![
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "orc-node-agent is posting ready status",
            ),
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "no memory pressure",
            ),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
        ]),
        // No `Hostname` address: the API server would prefer it to reach the kubelet endpoint,
        // and the Node's name does not resolve.
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: NODE_IP.into(),
        }]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(node.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            operating_system: "linux".into(),
            os_image: "local processes".into(),
            kernel_version: "host".into(),
            kubelet_version: kube_version.into(),
            kube_proxy_version: String::new(),
            container_runtime_version: "orc-node-agent://0.1.0".into(),
            machine_id: name.into(),
            system_uuid: name.into(),
            boot_id: name.into(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Creates the Node if missing (or sets its zone label and pod CIDR) and posts a Ready status.
pub async fn register(client: &Client, info: &NodeInfo) -> anyhow::Result<Node> {
    let nodes = Api::<Node>::all(client.clone());
    let name = info.name.as_str();
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        (AGENT_LABEL.to_string(), "true".to_string()),
    ]);
    if let Some(zone) = &info.zone {
        labels.insert(ZONE_LABEL.to_string(), zone.clone());
    }
    match nodes.get_opt(name).await? {
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                spec: Some(NodeSpec {
                    pod_cidr: Some(info.pod_cidr.clone()),
                    pod_cidrs: Some(vec![info.pod_cidr.clone()]),
                    ..NodeSpec::default()
                }),
                ..Node::default()
            };
            nodes.create(&PostParams::default(), &node).await?;
        }
        // A Node kept from an earlier start keeps its cordon and taints; its labels are the
        // agent's again (a zone may have changed). Its pod CIDR cannot change once set.
        Some(_) => {
            let patch = json!({"metadata": {"labels": labels}});
            nodes
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    heartbeat(client, info).await
}

/// Renews the Ready condition and the node Lease.
pub async fn heartbeat(client: &Client, info: &NodeInfo) -> anyhow::Result<Node> {
    let nodes = Api::<Node>::all(client.clone());
    let name = info.name.as_str();
    let patch = json!({"status": status(info)});
    let node = nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.into(),
                uid: node.meta().uid.clone().unwrap_or_default(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.into()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    leases
        .patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&lease))
        .await?;
    Ok(node)
}
