//! The StatefulSet of servers. `updateStrategy: OnDelete` gives the operator alone the choice
//! of which server is replaced when; pod names are the servers' ids in the database.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretKeySelector, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orchestrator_contract::env;

use super::{
    CONFIG_HASH_ANNOTATION, GRACE_MARGIN_SECONDS, HTTP_PORT, METRICS_PORT, Names, owned_meta, selector_labels,
};
use crate::crd::OrchestratorCluster;
use crate::release::Release;
use crate::validate::ValidSpec;

/// User id the server runs as (non-root, as Pod Security "restricted" requires).
pub(crate) const SERVER_UID: i64 = 65532;
/// Name of the server container.
pub(crate) const CONTAINER_NAME: &str = "server";

/// Builds the StatefulSet running `release` with `replicas` pods and the ConfigMap hash in its
/// pod template (the release is the wanted one once the schema gate lets it through).
pub(crate) fn build(spec: &ValidSpec, release: &Release, replicas: i32, config_hash: &str) -> StatefulSet {
    let cr = spec.cr;
    StatefulSet {
        metadata: owned_meta(cr, Names::statefulset(cr)),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(Names::headless_service(cr)),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(selector_labels(cr)),
                ..LabelSelector::default()
            },
            template: pod_template(spec, release, config_hash),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The release the live StatefulSet's pod template runs (`None` without a server container).
pub(crate) fn running_release(statefulset: &StatefulSet) -> Option<Release> {
    release_of(statefulset.spec.as_ref()?.template.spec.as_ref()?)
}

/// The release a server pod spec runs: its server container's image and `SERVER_VERSION`.
pub(crate) fn release_of(pod: &PodSpec) -> Option<Release> {
    let container = pod.containers.iter().find(|c| c.name == CONTAINER_NAME)?;
    let version = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == env::SERVER_VERSION)?
        .value
        .clone()?;
    Some(Release {
        version,
        image: container.image.clone()?,
    })
}

/// The servers' pod template (also the base of the schema Jobs' pods).
pub(crate) fn pod_template(spec: &ValidSpec, release: &Release, config_hash: &str) -> PodTemplateSpec {
    let cr = spec.cr;
    let template = &cr.spec.template;
    let drain_seconds = i64::try_from(spec.drain.timeout.as_secs()).unwrap_or(i64::MAX / 2);
    let mut labels = template.labels.clone();
    labels.extend(selector_labels(cr));
    let mut annotations = template.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![server_container(cr, release)],
            termination_grace_period_seconds: Some(drain_seconds + GRACE_MARGIN_SECONDS),
            automount_service_account_token: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(SERVER_UID),
                run_as_group: Some(SERVER_UID),
                fs_group: Some(SERVER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            volumes: Some(vec![Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            node_selector: non_empty(template.node_selector.clone()),
            tolerations: (!template.tolerations.is_empty()).then(|| template.tolerations.clone()),
            affinity: template.affinity.clone(),
            priority_class_name: template.priority_class_name.clone(),
            topology_spread_constraints: match &template.topology_spread_constraints {
                Some(theirs) => (!theirs.is_empty()).then(|| theirs.clone()),
                None => Some(vec![zone_spread(cr)]),
            },
            ..PodSpec::default()
        }),
    }
}

/// The label of a Node's zone.
pub(crate) const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The default spread of a cluster's servers: across zones, at most one more in a zone than in
/// another where the scheduler can, anywhere when it cannot (a zone cordoned for a drain, a
/// cluster without zones): a server that cannot be placed evenly is better than none.
fn zone_spread(cr: &OrchestratorCluster) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        topology_key: ZONE_LABEL.into(),
        max_skew: 1,
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(cr)),
            ..LabelSelector::default()
        }),
        ..TopologySpreadConstraint::default()
    }
}

fn non_empty(map: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then_some(map)
}

fn server_container(cr: &OrchestratorCluster, release: &Release) -> Container {
    let probe = |path: &str, period, failures, initial_delay| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        initial_delay_seconds: Some(initial_delay),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(release.image.clone()),
        args: Some(vec!["serve".into()]),
        ports: Some(vec![
            container_port("http", HTTP_PORT),
            container_port("metrics", METRICS_PORT),
        ]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: Names::configmap(cr),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        env: Some(server_env(cr, release)),
        readiness_probe: Some(probe("/readyz", 2, 3, 1)),
        liveness_probe: Some(probe("/livez", 10, 6, 10)),
        resources: cr.spec.template.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// Environment of the server container: identity from the pod, credentials by reference to
/// the Secret (never their values), then the user's extra variables.
fn server_env(cr: &OrchestratorCluster, release: &Release) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: Some("v1".into()),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let secret = &cr.spec.database.credentials_secret;
    let secret_key = |name: &str, key: &str, optional: bool| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: key.into(),
                optional: Some(optional),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mut env = vec![
        field(env::SERVER_ID, "metadata.name"),
        field(env::POD_NAMESPACE, "metadata.namespace"),
        // The server binds its HTTP and metrics ports on the pod IP.
        field(env::POD_IP, "status.podIP"),
        EnvVar {
            name: env::SERVER_VERSION.into(),
            value: Some(release.version.clone()),
            ..EnvVar::default()
        },
        secret_key(env::DATABASE_USER, &secret.username_key, false),
        secret_key(env::DATABASE_PASSWORD, &secret.password_key, false),
        // The CA of the database's certificate, for sslMode verify-ca / verify-full.
        secret_key(env::DATABASE_CA, crate::database::preflight::CA_KEY, true),
    ];
    env.extend(cr.spec.template.env.iter().cloned());
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::configmap;
    use crate::testing::{fixtures, valid};

    fn build_for(cr: &OrchestratorCluster) -> StatefulSet {
        let spec = valid(cr);
        let hash = configmap::data_hash(&configmap::build(&spec));
        build(&spec, &spec.wanted, cr.spec.replicas, &hash)
    }

    fn pod_spec(sts: &StatefulSet) -> PodSpec {
        sts.spec.clone().unwrap().template.spec.unwrap()
    }

    #[test]
    fn the_running_release_is_read_back_from_the_template() {
        let cr = fixtures::full();
        let release = running_release(&build_for(&cr)).unwrap();
        assert_eq!(release, valid(&cr).wanted);
        assert_eq!(running_release(&StatefulSet::default()), None);
    }

    #[test]
    fn minimal_example_statefulset() {
        let cr = fixtures::minimal();
        let sts = build_for(&cr);
        let spec = sts.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("minimal-servers"));
        assert_eq!(spec.update_strategy.unwrap().type_.as_deref(), Some("OnDelete"));
        assert_eq!(spec.selector.match_labels.as_ref(), Some(&selector_labels(&cr)));
        let template_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in selector_labels(&cr) {
            assert_eq!(template_labels[&k], v, "template carries selector label {k}");
        }
        let owner = &sts.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.name, "minimal");
        assert_eq!(owner.uid, cr.metadata.uid.clone().unwrap());
        assert_eq!(owner.controller, Some(true));
        let pod = pod_spec(&build_for(&cr));
        assert_eq!(pod.termination_grace_period_seconds, Some(600 + GRACE_MARGIN_SECONDS));
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/orchestrator-dev/orchestrator-server:1.0.0")
        );
        let readiness = c.readiness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(readiness.path.as_deref(), Some("/readyz"));
        let liveness = c.liveness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(liveness.path.as_deref(), Some("/livez"));
        let ports: Vec<_> = c.ports.clone().unwrap().into_iter().map(|p| p.container_port).collect();
        assert_eq!(ports, vec![HTTP_PORT, METRICS_PORT]);
    }

    #[test]
    fn credentials_only_by_secret_reference() {
        let cr = fixtures::full();
        let sts = build_for(&cr);
        let c = &pod_spec(&sts).containers[0];
        let env = c.env.clone().unwrap();
        let by_name = |n: &str| env.iter().find(|e| e.name == n).unwrap().clone();
        let user = by_name("DATABASE_USER").value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!((user.name.as_str(), user.key.as_str()), ("prod-process-db", "user"));
        let password = by_name("DATABASE_PASSWORD");
        assert_eq!(password.value, None);
        let password = password.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!(
            (password.name.as_str(), password.key.as_str()),
            ("prod-process-db", "pass")
        );
        let server_id = by_name("SERVER_ID").value_from.unwrap().field_ref.unwrap();
        assert_eq!(server_id.field_path, "metadata.name");
        assert_eq!(by_name("WORKERS").value.as_deref(), Some("8"));
        let text = serde_json::to_string(&sts).unwrap();
        assert!(!text.contains("change-me-too") && !text.contains("orchestrator_prod"));
    }

    #[test]
    fn the_builders_set_exactly_the_reserved_names() {
        let mut cr = fixtures::full();
        // The user's own variables are not the operator's.
        cr.spec.template.env.clear();
        // Emitted only when the spec sets it.
        cr.spec.database.channel_binding = Some(crate::crd::ChannelBinding::Require);
        let spec = valid(&cr);
        let configmap = configmap::build(&spec);
        let container = pod_spec(&build_for(&cr)).containers[0].clone();
        let mut emitted: Vec<String> = container.env.unwrap().into_iter().map(|e| e.name).collect();
        emitted.extend(configmap.data.unwrap().into_keys());
        emitted.sort();
        let mut reserved: Vec<String> = env::OPERATOR_SET.iter().map(|n| n.to_string()).collect();
        reserved.sort();
        assert_eq!(emitted, reserved);
        assert_eq!(crate::crd::RESERVED_ENV_NAMES, env::OPERATOR_SET);
    }

    #[test]
    fn restricted_security_context() {
        let pod = pod_spec(&build_for(&fixtures::minimal()));
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }

    #[test]
    fn full_example_template_settings() {
        let cr = fixtures::full();
        let sts = build_for(&cr);
        let template = sts.spec.clone().unwrap().template;
        let meta = template.metadata.unwrap();
        assert_eq!(meta.labels.unwrap()["example.com/tier"], "backend");
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations["example.com/team"], "automation");
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION].len(), 16);
        let pod = template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(300 + GRACE_MARGIN_SECONDS));
        assert_eq!(pod.node_selector.unwrap()["kubernetes.io/os"], "linux");
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("dedicated"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example/orchestrator-server:1.0.0"));
        assert!(c.resources.clone().unwrap().requests.unwrap().contains_key("cpu"));
    }

    #[test]
    fn template_changes_only_when_it_should() {
        let cr = fixtures::minimal();
        let template = |cr: &OrchestratorCluster| build_for(cr).spec.unwrap().template;
        let base = template(&cr);
        let mut same = cr.clone();
        same.spec.replicas = 5;
        same.spec.capacity.max_replicas = 9;
        same.spec.maintenance.paused = true;
        same.spec.maintenance.ready_timeout = "1m".into();
        assert_eq!(
            template(&same),
            base,
            "scaling or maintenance policy must not touch the pod template"
        );
        let mut new_version = cr.clone();
        new_version.spec.version = "1.0.1".into();
        assert_ne!(template(&new_version), base);
        let mut new_db = cr.clone();
        new_db.spec.database.name = "other".into();
        let changed = template(&new_db);
        let hash =
            |t: &PodTemplateSpec| t.metadata.clone().unwrap().annotations.unwrap()[CONFIG_HASH_ANNOTATION].clone();
        assert_ne!(hash(&changed), hash(&base), "database settings change the config hash");
    }
}
