//! The PodDisruptionBudget: at most one server down at a time, whether a cluster admin drains
//! a node or the operator evicts a server during maintenance.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Names, owned_meta, selector_labels};
use crate::crd::OrchestratorCluster;

/// Builds the PodDisruptionBudget (`maxUnavailable: 1`). The unhealthy-pod policy stays the
/// default (`IfHealthyBudget`), not `AlwaysAllow`: readiness needs the database, so in a
/// database outage every server is unready, and `AlwaysAllow` would let a node drain evict them
/// all at once. The operator's own eviction of a drained (unready) server goes through as long
/// as the others are healthy, and waits (a 429) otherwise, which is never two servers down.
pub(crate) fn build(cr: &OrchestratorCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owned_meta(cr, Names::pdb(cr)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
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
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/instance"],
            "prod"
        );
        assert_eq!(pdb.metadata.name.as_deref(), Some("prod"));
    }
}
