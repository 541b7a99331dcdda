//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod argocd;
pub mod e2e;
pub mod helm;
pub mod invalid_specs;
