//! The ConfigMap of server settings. Its data is hashed into the pod template, so a settings
//! change makes every server outdated and rolling maintenance replaces them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};

use super::{HTTP_PORT, METRICS_PORT, Names, owned_meta};
use crate::crd::{OrchestratorCluster, SpecError};

/// The server settings as environment-style keys (no secrets: the login comes from the Secret).
pub fn server_settings(cr: &OrchestratorCluster) -> Result<BTreeMap<String, String>, SpecError> {
    let db = &cr.spec.database;
    let drain_seconds = cr.spec.maintenance.drain_timeout()?.as_secs().max(1);
    Ok(BTreeMap::from([
        ("DATABASE_HOST".to_string(), db.host.clone()),
        ("DATABASE_PORT".to_string(), db.port.to_string()),
        ("DATABASE_NAME".to_string(), db.name.clone()),
        ("DATABASE_SSLMODE".to_string(), db.ssl_mode.as_str().to_string()),
        ("HTTP_PORT".to_string(), HTTP_PORT.to_string()),
        ("METRICS_PORT".to_string(), METRICS_PORT.to_string()),
        // A friendly shutdown waits this long for running jobs, then hands them back.
        ("DRAIN_TIMEOUT_SECONDS".to_string(), drain_seconds.to_string()),
    ]))
}

/// Builds the ConfigMap.
pub fn build(cr: &OrchestratorCluster) -> Result<ConfigMap, SpecError> {
    Ok(ConfigMap {
        metadata: owned_meta(cr, Names::configmap(cr)),
        data: Some(server_settings(cr)?),
        ..ConfigMap::default()
    })
}

/// A short, stable hash of the ConfigMap's data (keys are sorted by the BTreeMap).
pub fn data_hash(configmap: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in configmap.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures;

    #[test]
    fn holds_database_settings_but_no_credentials() {
        let cm = build(&fixtures::full()).unwrap();
        let data = cm.data.unwrap();
        assert_eq!(data["DATABASE_HOST"], "db.example.internal");
        assert_eq!(data["DATABASE_PORT"], "5433");
        assert_eq!(data["DATABASE_SSLMODE"], "require");
        assert_eq!(data["DRAIN_TIMEOUT_SECONDS"], "300");
        let text = serde_json::to_string(&data).unwrap();
        assert!(!text.contains("orchestrator_prod") && !text.contains("change-me"));
        assert_eq!(cm.metadata.name.as_deref(), Some("prod-config"));
    }

    #[test]
    fn hash_follows_the_data_only() {
        let cr = fixtures::minimal();
        let base = data_hash(&build(&cr).unwrap());
        assert_eq!(base.len(), 16);
        let mut scaled = cr.clone();
        scaled.spec.replicas = 7;
        scaled.spec.maintenance.paused = true;
        assert_eq!(data_hash(&build(&scaled).unwrap()), base);
        let mut moved = cr.clone();
        moved.spec.database.port = 6432;
        assert_ne!(data_hash(&build(&moved).unwrap()), base);
    }
}
