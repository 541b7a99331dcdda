//! The agent's Node: registration, the Ready condition and the node Lease, kept fresh.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
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

fn capacity() -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity("32".into())),
        ("memory".to_string(), Quantity("64Gi".into())),
        ("pods".to_string(), Quantity("250".into())),
        ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
    ])
}

fn status(name: &str, kube_version: &str) -> NodeStatus {
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
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: "127.0.0.1".into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.into(),
            },
        ]),
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

/// Creates the Node `name` if missing and posts a Ready status.
pub async fn register(client: &Client, name: &str, kube_version: &str) -> anyhow::Result<Node> {
    let nodes = Api::<Node>::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("kubernetes.io/arch".to_string(), "amd64".to_string()),
                (AGENT_LABEL.to_string(), "true".to_string()),
            ])),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    if nodes.get_opt(name).await?.is_none() {
        nodes.create(&PostParams::default(), &node).await?;
    }
    heartbeat(client, name, kube_version).await
}

/// Renews the Ready condition and the node Lease.
pub async fn heartbeat(client: &Client, name: &str, kube_version: &str) -> anyhow::Result<Node> {
    let nodes = Api::<Node>::all(client.clone());
    let patch = json!({"status": status(name, kube_version)});
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
