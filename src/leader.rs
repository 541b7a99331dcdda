//! Lease-based leader election, so that of several operator replicas only one writes.
//!
//! Built on `kube-lease-manager`, which takes and renews a `coordination.k8s.io` Lease with
//! server-side apply and tolerates clock skew between nodes.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;

/// How the Lease is held.
#[derive(Clone, Debug)]
pub struct LeaderSettings {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// Seconds a holder keeps the Lease without renewing it.
    pub lease_seconds: u64,
}

/// Campaigns for the Lease in the background. The returned channel is `true` while this
/// replica holds it.
pub async fn campaign(client: Client, settings: &LeaderSettings) -> anyhow::Result<watch::Receiver<bool>> {
    let grace = (settings.lease_seconds / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, &settings.lease_name)
        .with_namespace(&settings.namespace)
        .with_parameters(
            LeaseParams::new(&settings.identity, settings.lease_seconds, grace)
                .with_field_manager(crate::context::FIELD_MANAGER),
        )
        .build()
        .await?;
    let (channel, task) = manager.watch().await;
    tokio::spawn(async move {
        if let Ok(Err(error)) = task.await {
            tracing::error!(%error, "leader election stopped");
        }
    });
    Ok(channel)
}

/// Waits until `channel` says this replica leads.
pub async fn until_leading(channel: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    channel.wait_for(|leading| *leading).await?;
    Ok(())
}

/// Completes when this replica stops leading (or the election task ends).
pub async fn until_lost(mut channel: watch::Receiver<bool>) {
    let _ = channel.wait_for(|leading| !*leading).await;
}

/// Default Lease duration.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
