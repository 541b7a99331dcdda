//! Shared helpers of the integration tests. The e2e binary (`tests/e2e/main.rs`) includes this
//! whole tree; the tests that need no cluster include single files of it (`spec.rs`,
//! `invalid_specs.rs`) with `#[path]`.

pub(crate) mod argocd;
pub(crate) mod audit;
pub(crate) mod control_plane;
pub(crate) mod e2e;
pub(crate) mod helm;
pub(crate) mod invalid_specs;
pub(crate) mod pods;
pub(crate) mod proxy;
pub(crate) mod spec;
