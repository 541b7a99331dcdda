//! The two Services: a headless one that gives each server a stable DNS name, and the client
//! Service in front of every server's web service.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{HTTP_PORT, METRICS_PORT, Names, owned_meta, selector_labels};
use crate::crd::OrchestratorCluster;

fn ports() -> Vec<ServicePort> {
    [("http", HTTP_PORT), ("metrics", METRICS_PORT)]
        .into_iter()
        .map(|(name, port)| ServicePort {
            name: Some(name.into()),
            port,
            target_port: Some(IntOrString::String(name.into())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        })
        .collect()
}

/// The headless Service named in the StatefulSet's `serviceName`. It publishes servers that
/// are not ready yet too, so that peers and the operator can reach a joining server.
pub(crate) fn build_headless(cr: &OrchestratorCluster) -> Service {
    Service {
        metadata: owned_meta(cr, Names::headless_service(cr)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cr)),
            ports: Some(ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The client Service: the web-service front, routing only to ready servers.
pub(crate) fn build_client(cr: &OrchestratorCluster) -> Service {
    Service {
        metadata: owned_meta(cr, Names::client_service(cr)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(cr)),
            ports: Some(ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixtures;

    #[test]
    fn headless_and_client_select_the_same_pods() {
        let cr = fixtures::minimal();
        let headless = build_headless(&cr);
        let client = build_client(&cr);
        assert_eq!(headless.metadata.name.as_deref(), Some("minimal-servers"));
        assert_eq!(client.metadata.name.as_deref(), Some("minimal"));
        let hs = headless.spec.unwrap();
        let cs = client.spec.unwrap();
        assert_eq!(hs.cluster_ip.as_deref(), Some("None"));
        assert_eq!(hs.publish_not_ready_addresses, Some(true));
        assert_eq!(cs.publish_not_ready_addresses, None);
        assert_eq!(hs.selector, cs.selector);
        assert_eq!(hs.selector.unwrap().len(), 2);
        let names: Vec<_> = cs
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(names, vec![("http".into(), 8080), ("metrics".into(), 9090)]);
        let owner = &headless.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("OrchestratorCluster", Some(true))
        );
    }
}
