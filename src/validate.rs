//! Validate: the resource as one [`ValidSpec`], every value the later steps need parsed once
//! (durations, maintenance windows, the wanted release). A spec the CRD schema accepted but the
//! operator cannot use is a [`SpecError`] here and nowhere else; builders and planners that
//! take a `ValidSpec` cannot fail. Does not need a client.

use std::time::Duration;

use orchestrator_contract::env;

use crate::crd::{MaintenanceWindow, OrchestratorCluster, SpecError, parse_duration};
use crate::planners::autoscale::Policy;
use crate::planners::canary::CanaryPolicy;
use crate::planners::drain::DrainPolicy;
use crate::planners::windows::Calendar;
use crate::release::Release;

/// Operator-wide settings that complete a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildSettings {
    /// Image repository used with `spec.version` as the tag when `spec.image` is unset.
    pub server_image_repository: String,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            server_image_repository: "ghcr.io/orchestrator-dev/orchestrator-server".into(),
        }
    }
}

/// An `OrchestratorCluster` whose spec the operator can act on, with its values parsed.
#[derive(Clone, Debug)]
pub(crate) struct ValidSpec<'a> {
    /// The resource as read.
    pub(crate) cr: &'a OrchestratorCluster,
    /// `maintenance.drainTimeout` and `onDrainTimeout`.
    pub(crate) drain: DrainPolicy,
    /// `maintenance.readyTimeout`.
    pub(crate) ready_timeout: Duration,
    /// `maintenance.windows`.
    pub(crate) calendar: Calendar,
    /// The release the spec asks for: `version` and the image that runs it.
    pub(crate) wanted: Release,
    /// Jobs one server runs at once: `WORKERS` from `template.env` (a literal value), else
    /// the reference server's default.
    pub(crate) workers: i32,
    /// `capacity.autoscale`, when set.
    pub(crate) autoscale: Option<Policy>,
    /// `maintenance.canary`, when set: how many servers, and how they are judged.
    #[allow(dead_code)] // Read by the roll in the next change (issue 17).
    pub(crate) canary: Option<(i32, CanaryPolicy)>,
}

/// `maintenance.canary` parsed.
fn canary(cr: &OrchestratorCluster) -> Result<Option<(i32, CanaryPolicy)>, SpecError> {
    let Some(spec) = &cr.spec.maintenance.canary else {
        return Ok(None);
    };
    Ok(Some((
        spec.servers,
        CanaryPolicy {
            bake: parse_duration("spec.maintenance.canary.bakeTime", &spec.bake_time)?,
            min_jobs: spec.min_jobs,
            max_failure_increase: f64::from(spec.max_failure_increase_percent) / 100.0,
            max_slowdown_factor: f64::from(spec.max_slowdown_factor),
        },
    )))
}

/// `WORKERS` as the servers see it: a literal value in `template.env`, else the default.
fn workers(cr: &OrchestratorCluster) -> i32 {
    cr.spec
        .template
        .env
        .iter()
        .find(|e| e.name == env::WORKERS)
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|w| *w >= 1)
        .unwrap_or(i32::from(env::DEFAULT_WORKERS))
}

/// `capacity.autoscale` parsed; the target defaults to the servers' `WORKERS`.
fn autoscale(cr: &OrchestratorCluster) -> Result<Option<Policy>, SpecError> {
    let Some(spec) = &cr.spec.capacity.autoscale else {
        return Ok(None);
    };
    let windows: Vec<MaintenanceWindow> = spec.schedules.iter().map(|s| s.window.clone()).collect();
    Ok(Some(Policy {
        min: spec.min_replicas,
        max: spec.max_replicas,
        jobs_per_server: spec.jobs_per_server.unwrap_or_else(|| workers(cr)),
        up_window: parse_duration(
            "spec.capacity.autoscale.scaleUp.stabilizationWindow",
            &spec.scale_up.stabilization_window,
        )?,
        down_window: parse_duration(
            "spec.capacity.autoscale.scaleDown.stabilizationWindow",
            &spec.scale_down.stabilization_window,
        )?,
        down_step: spec.scale_down.step,
        schedules: Calendar::parse("spec.capacity.autoscale.schedules", &windows)?,
        schedule_floors: spec.schedules.iter().map(|s| s.min_replicas).collect(),
    }))
}

/// Validates `cr`, completing it with the operator's `settings`.
pub(crate) fn validate<'a>(cr: &'a OrchestratorCluster, settings: &BuildSettings) -> Result<ValidSpec<'a>, SpecError> {
    let maintenance = &cr.spec.maintenance;
    Ok(ValidSpec {
        cr,
        drain: DrainPolicy {
            timeout: maintenance.drain_timeout()?,
            on_timeout: maintenance.on_drain_timeout,
        },
        ready_timeout: maintenance.ready_timeout()?,
        calendar: Calendar::parse("spec.maintenance.windows", &maintenance.windows)?,
        workers: workers(cr),
        autoscale: autoscale(cr)?,
        canary: canary(cr)?,
        wanted: Release {
            version: cr.spec.version.clone(),
            image: cr
                .spec
                .image
                .clone()
                .unwrap_or_else(|| format!("{}:{}", settings.server_image_repository, cr.spec.version)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixtures;

    #[test]
    fn the_wanted_release_uses_the_operator_repository_without_an_image() {
        let settings = BuildSettings::default();
        let minimal = fixtures::minimal();
        let spec = validate(&minimal, &settings).unwrap();
        assert_eq!(spec.wanted.image, "ghcr.io/orchestrator-dev/orchestrator-server:1.0.0");
        assert_eq!(spec.drain.timeout, Duration::from_secs(600));
        let full = fixtures::full();
        assert_eq!(
            validate(&full, &settings).unwrap().wanted.image,
            "registry.example/orchestrator-server:1.0.0"
        );
    }

    #[test]
    fn each_unusable_value_names_its_field() {
        let settings = BuildSettings::default();
        let mut cr = fixtures::minimal();
        cr.spec.maintenance.drain_timeout = "10 minutes".into();
        assert_eq!(
            validate(&cr, &settings).unwrap_err().field,
            "spec.maintenance.drainTimeout"
        );
        let mut cr = fixtures::minimal();
        cr.spec.maintenance.ready_timeout = "soon".into();
        assert_eq!(
            validate(&cr, &settings).unwrap_err().field,
            "spec.maintenance.readyTimeout"
        );
        let mut cr = fixtures::minimal();
        cr.spec.maintenance.windows = vec![crate::crd::MaintenanceWindow {
            days: vec![],
            start: "noon".into(),
            duration: "1h".into(),
        }];
        assert_eq!(validate(&cr, &settings).unwrap_err().field, "spec.maintenance.windows");
    }
}
