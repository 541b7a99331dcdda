#!/usr/bin/env bash
# Every test that needs no cluster (README: `make unit`): `cargo test` of the workspace, i.e.
# unit and property tests, the mock API server, the CRD schema table and the PostgreSQL tests
# of crates/ (hack/setup.sh installs PostgreSQL). The e2e suites are not even built: they need
# `--features e2e` (hack/e2e.sh). Ends with the cargo test summaries (log: .local/unit-test.log).
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

step "cargo test (unit, property, mock API, PostgreSQL)"
mkdir -p .local
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee .local/unit-test.log
status=${PIPESTATUS[0]}
set -e
step "cargo test summaries (unit)"
grep -E "^test result:|Running " .local/unit-test.log || true
exit "$status"
