//! Container environment as the kubelet builds it: `envFrom`, `env` with `valueFrom`
//! (Secret, ConfigMap and field references), and `$(VAR)` expansion.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};

/// Reads a ConfigMap or Secret's data; the agent uses the API, tests use a map.
pub trait Sources {
    /// Data of the ConfigMap `name`, `None` when it does not exist.
    fn configmap(&self, name: &str) -> impl Future<Output = Result<Option<BTreeMap<String, String>>, String>> + Send;
    /// Decoded data of the Secret `name`, `None` when it does not exist.
    fn secret(&self, name: &str) -> impl Future<Output = Result<Option<BTreeMap<String, String>>, String>> + Send;
}

/// Sources read from the API server in the pod's namespace.
pub struct ApiSources {
    /// Client of the agent.
    pub client: Client,
    /// Namespace of the pod.
    pub namespace: String,
}

impl Sources for ApiSources {
    async fn configmap(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace);
        let found = api.get_opt(name).await.map_err(|e| e.to_string())?;
        Ok(found.map(|cm| cm.data.unwrap_or_default()))
    }

    async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        let api = Api::<Secret>::namespaced(self.client.clone(), &self.namespace);
        let found = api.get_opt(name).await.map_err(|e| e.to_string())?;
        Ok(found.map(|secret| {
            let mut data: BTreeMap<String, String> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            data.extend(secret.string_data.unwrap_or_default());
            data
        }))
    }
}

/// Builds the environment of `container`, in the kubelet's order: `envFrom` first, then
/// `env`, each `env` value expanded against what came before it. An error names the missing
/// Secret, ConfigMap or key, like the kubelet's `CreateContainerConfigError`.
pub async fn container_env(
    pod: &Pod,
    container: &Container,
    sources: &impl Sources,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, what, optional) = if let Some(cm) = &from.config_map_ref {
            (
                sources.configmap(&cm.name).await?,
                format!("configmap {}", cm.name),
                cm.optional.unwrap_or(false),
            )
        } else if let Some(secret) = &from.secret_ref {
            (
                sources.secret(&secret.name).await?,
                format!("secret {}", secret.name),
                secret.optional.unwrap_or(false),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(&mut env, format!("{prefix}{k}"), v);
                }
            }
            None if optional => {}
            None => return Err(format!("{what} not found")),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(r) = &from.secret_key_ref {
                    match keyed(sources.secret(&r.name).await?, &r.key, "secret", &r.name, r.optional)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    match keyed(
                        sources.configmap(&r.name).await?,
                        &r.key,
                        "configmap",
                        &r.name,
                        r.optional,
                    )? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &from.field_ref {
                    field_value(pod, &r.field_path)?
                } else {
                    return Err(format!(
                        "env {}: only secretKeyRef, configMapKeyRef and fieldRef are supported",
                        var.name
                    ));
                }
            }
            (Some(value), None) => expand(value, &env),
            (None, None) => String::new(),
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

fn keyed(
    data: Option<BTreeMap<String, String>>,
    key: &str,
    kind: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<Option<String>, String> {
    let optional = optional.unwrap_or(false);
    match data {
        None if optional => Ok(None),
        None => Err(format!("{kind} {name:?} not found")),
        Some(data) => match data.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(format!("couldn't find key {key} in {kind} {name}")),
        },
    }
}

/// The value of a downward-API field path.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let map_key = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(|key| map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = map_key("metadata.labels['", &meta.labels) {
        return Ok(v);
    }
    if let Some(v) = map_key("metadata.annotations['", &meta.annotations) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.podIP" => status.pod_ip.unwrap_or_default(),
        "status.hostIP" => status.host_ip.unwrap_or_default(),
        "status.podIPs" => status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .map(|ip| ip.ip)
            .collect::<Vec<_>>()
            .join(","),
        other => return Err(format!("fieldRef {other} is not supported by the node agent")),
    })
}

/// Kubernetes `$(VAR)` expansion: a defined variable is replaced, an undefined one is kept
/// as written, and `$$` escapes a `$`.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(n, _)| n == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector, PodStatus, SecretKeySelector,
    };

    struct Fixed;

    impl Sources for Fixed {
        async fn configmap(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
            Ok((name == "settings").then(|| BTreeMap::from([("PORT".to_string(), "8080".to_string())])))
        }
        async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
            Ok((name == "db").then(|| BTreeMap::from([("password".to_string(), "s3cret".to_string())])))
        }
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..EnvVar::default()
        }
    }

    fn from(name: &str, source: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(source),
            ..EnvVar::default()
        }
    }

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("prod-0".into());
        pod.status = Some(PodStatus {
            pod_ip: Some("127.1.0.7".into()),
            ..PodStatus::default()
        });
        pod
    }

    #[tokio::test]
    async fn resolves_every_source_in_order() {
        let container = Container {
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "settings".into(),
                    optional: None,
                }),
                ..EnvFromSource::default()
            }]),
            env: Some(vec![
                from(
                    "POD_IP",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "status.podIP".into(),
                            api_version: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                from(
                    "PASSWORD",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "db".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                var("ADDR", "$(POD_IP):$(PORT)"),
                var("LITERAL", "$$(POD_IP) $(UNDEFINED)"),
            ]),
            ..Container::default()
        };
        let env = container_env(&pod(), &container, &Fixed).await.unwrap();
        let get = |n: &str| env.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("PORT"), "8080");
        assert_eq!(get("PASSWORD"), "s3cret");
        assert_eq!(get("ADDR"), "127.1.0.7:8080");
        assert_eq!(get("LITERAL"), "$(POD_IP) $(UNDEFINED)");
    }

    #[tokio::test]
    async fn missing_secret_key_is_a_config_error() {
        let container = Container {
            env: Some(vec![from(
                "X",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "db".into(),
                        key: "user".into(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                },
            )]),
            ..Container::default()
        };
        let err = container_env(&pod(), &container, &Fixed).await.unwrap_err();
        assert_eq!(err, "couldn't find key user in secret db");
        let optional = Container {
            env: Some(vec![from(
                "X",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "gone".into(),
                        key: "k".into(),
                        optional: Some(true),
                    }),
                    ..EnvVarSource::default()
                },
            )]),
            ..Container::default()
        };
        assert_eq!(container_env(&pod(), &optional, &Fixed).await.unwrap(), vec![]);
    }
}
