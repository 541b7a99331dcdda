#!/usr/bin/env bash
# Plan benchmark on the local cluster: the time from a spec change to its status.plan seen on
# a watch (p50/p99 over 50 changes held by approval: Manual, so nothing moves), against the
# same watch round trip of a write the operator ignores, measured in the same run.
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
bench_cluster plan
step "spec change -> status.plan"
cargo test --quiet --locked --features e2e --test e2e -- --ignored --test-threads 1 --nocapture \
  maintenance::bench_spec_change_to_plan 2>&1 | grep -E "plan measure|test result|panicked"
