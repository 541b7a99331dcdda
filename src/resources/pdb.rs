//! The PodDisruptionBudget: at most one server down at a time, whether a cluster admin drains
//! a node or the operator evicts a server during maintenance.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Names, owned_meta, selector_labels};
use crate::crd::OrchestratorCluster;

/// Builds the PodDisruptionBudget (`maxUnavailable: 1`). An unready server can always be
/// evicted (`unhealthyPodEvictionPolicy: AlwaysAllow`): it serves nothing, so replacing it costs
/// no availability, and a drained server (unready by design) or a crash-looping one must never
/// be stuck behind a budget that another unready pod has used up.
pub(crate) fn build(cr: &OrchestratorCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owned_meta(cr, Names::pdb(cr)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cr)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixtures;

    #[test]
    fn allows_one_server_down() {
        let pdb = build(&fixtures::full());
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(spec.unhealthy_pod_eviction_policy.as_deref(), Some("AlwaysAllow"));
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/instance"],
            "prod"
        );
        assert_eq!(pdb.metadata.name.as_deref(), Some("prod"));
    }
}
