//! The ConfigMap of server settings. Its data is hashed into the pod template, so a settings
//! change makes every server outdated and rolling maintenance replaces them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use orchestrator_contract::env;
use sha2::{Digest, Sha256};

use super::{HTTP_PORT, METRICS_PORT, Names, owned_meta};
use crate::validate::ValidSpec;

/// The server settings as environment-style keys (no secrets: the login comes from the Secret).
pub(crate) fn server_settings(spec: &ValidSpec) -> BTreeMap<String, String> {
    let db = &spec.cr.spec.database;
    let drain_seconds = spec.drain.timeout.as_secs().max(1);
    let mut settings = BTreeMap::from([
        (env::DATABASE_HOST.to_string(), db.host.clone()),
        (env::DATABASE_PORT.to_string(), db.port.to_string()),
        (env::DATABASE_NAME.to_string(), db.name.clone()),
        (env::DATABASE_SSLMODE.to_string(), db.ssl_mode.as_str().to_string()),
        (env::HTTP_PORT.to_string(), HTTP_PORT.to_string()),
        (env::METRICS_PORT.to_string(), METRICS_PORT.to_string()),
        // A friendly shutdown waits this long for running jobs, then hands them back.
        (env::DRAIN_TIMEOUT_SECONDS.to_string(), drain_seconds.to_string()),
    ]);
    // Only when the spec says it: the server derives the same default from the sslmode, and a
    // key added to every ConfigMap would change every pod template's hash (an operator upgrade
    // rolling every cluster).
    if db.channel_binding.is_some() {
        settings.insert(
            env::DATABASE_CHANNEL_BINDING.to_string(),
            db.channel_binding().as_str().to_string(),
        );
    }
    settings
}

/// Builds the ConfigMap.
pub(crate) fn build(spec: &ValidSpec) -> ConfigMap {
    ConfigMap {
        metadata: owned_meta(spec.cr, Names::configmap(spec.cr)),
        data: Some(server_settings(spec)),
        ..ConfigMap::default()
    }
}

/// A short, stable hash of the ConfigMap's data (keys are sorted by the BTreeMap).
pub(crate) fn data_hash(configmap: &ConfigMap) -> String {
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
    use crate::testing::{fixtures, valid};

    #[test]
    fn holds_database_settings_but_no_credentials() {
        let cm = build(&valid(&fixtures::full()));
        let data = cm.data.unwrap();
        assert_eq!(data["DATABASE_HOST"], "db.example.internal");
        assert_eq!(data["DATABASE_PORT"], "5433");
        assert_eq!(data["DATABASE_SSLMODE"], "require");
        assert!(
            !data.contains_key("DATABASE_CHANNEL_BINDING"),
            "the server derives the default itself"
        );
        assert_eq!(data["DRAIN_TIMEOUT_SECONDS"], "300");
        let text = serde_json::to_string(&data).unwrap();
        assert!(!text.contains("orchestrator_prod") && !text.contains("change-me"));
        assert_eq!(cm.metadata.name.as_deref(), Some("prod-config"));
    }

    #[test]
    fn an_explicit_channel_binding_reaches_the_servers() {
        let mut cr = fixtures::full();
        cr.spec.database.channel_binding = Some(crate::crd::ChannelBinding::Prefer);
        let data = build(&valid(&cr)).data.unwrap();
        assert_eq!(data["DATABASE_CHANNEL_BINDING"], "prefer");
    }

    #[test]
    fn hash_follows_the_data_only() {
        let cr = fixtures::minimal();
        let base = data_hash(&build(&valid(&cr)));
        assert_eq!(base.len(), 16);
        let mut scaled = cr.clone();
        scaled.spec.replicas = 7;
        scaled.spec.maintenance.paused = true;
        assert_eq!(data_hash(&build(&valid(&scaled))), base);
        let mut moved = cr.clone();
        moved.spec.database.port = 6432;
        assert_ne!(data_hash(&build(&valid(&moved))), base);
    }
}
