//! Shared unit-test fixtures: the README's examples as structs, a chainable builder of a
//! cluster, server rows and pods, and the validated spec of a cluster.

use orchestrator_contract::Member;
use serde::Deserialize;

use crate::crd::OrchestratorCluster;
use crate::planners::servers::PodView;
use crate::validate::{BuildSettings, ValidSpec, validate};

pub(crate) mod fixtures {
    //! The README's minimal and full examples as plain structs.
    use super::*;

    /// Parses an example file shipped under `examples/` (the cluster document only).
    pub(crate) fn example(file: &str) -> OrchestratorCluster {
        let text = std::fs::read_to_string(format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let mut cr = serde_yaml::Deserializer::from_str(&text)
            .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
            .find(|v| v["kind"] == "OrchestratorCluster")
            .map(|v| serde_yaml::from_value::<OrchestratorCluster>(v).unwrap())
            .expect("example has an OrchestratorCluster");
        cr.metadata.namespace.get_or_insert_with(|| "automation".into());
        cr.metadata.uid = Some("5f1c7a52-0000-4000-8000-000000000001".into());
        cr
    }

    /// `examples/minimal.yaml`.
    pub(crate) fn minimal() -> OrchestratorCluster {
        example("minimal.yaml")
    }

    /// `examples/full.yaml`.
    pub(crate) fn full() -> OrchestratorCluster {
        example("full.yaml")
    }
}

/// The validated spec of `cr` with the default settings (panics on an invalid spec).
pub(crate) fn valid(cr: &OrchestratorCluster) -> ValidSpec<'_> {
    validate(cr, &BuildSettings::default()).expect("a valid spec")
}

/// A cluster built from an example, changed step by step.
pub(crate) struct Cluster(OrchestratorCluster);

impl Cluster {
    /// `examples/minimal.yaml`.
    pub(crate) fn minimal() -> Self {
        Self(fixtures::minimal())
    }

    /// `spec.version`.
    pub(crate) fn version(mut self, version: &str) -> Self {
        self.0.spec.version = version.into();
        self
    }

    /// The resource.
    pub(crate) fn build(self) -> OrchestratorCluster {
        self.0
    }
}

/// The database clock of [`member`]'s rows, in seconds since the Unix epoch.
pub(crate) const NOW: f64 = 1_800_000_000.0;

/// A row of the `servers` table: server `id` in `state`, its heartbeat `age` seconds old (at
/// [`NOW`]), one job running.
pub(crate) fn member(id: &str, state: &str, age: f64) -> Member {
    Member {
        server_id: id.into(),
        version: "2.0.0".into(),
        state: state.into(),
        running_jobs: 1,
        heartbeat_age_seconds: age,
        heartbeat_at: NOW - age,
        drain_requested_seconds: None,
        owned_jobs: 0,
    }
}

/// A server pod `name` with `ordinal`, ready or not.
pub(crate) fn pod(name: &str, ordinal: i32, ready: bool) -> PodView {
    PodView {
        name: name.into(),
        ordinal,
        ready,
        ..PodView::default()
    }
}
