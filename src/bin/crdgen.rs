//! Prints the `OrchestratorCluster` CRD as YAML; its output is checked in as
//! `crds/orchestratorclusters.yaml`.

fn main() {
    print!("{}", orchestrator_operator::crd::crd_yaml());
}
