#!/usr/bin/env bash
# The project's checks (README: `make lint`), the one list CI and people run: format, clippy
# on every target and feature (the e2e suites included) with warnings denied, the checked-in
# CRD against the code, no import cycles between modules, hadolint, helm lint and the chart's
# values schema. Installs what is missing first (hack/setup.sh, seconds when warm).
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets and features, warnings denied)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "CRD drift"
cargo run --quiet --locked --bin crdgen | diff -u crds/orchestratorclusters.yaml -
diff -u crds/orchestratorclusters.yaml charts/orchestrator-operator/crds/orchestratorclusters.yaml

step "import cycles between modules"
python3 hack/module-cycles.py

step "hadolint"
hadolint Dockerfile

step "helm lint and values schema"
bash hack/helm-check.sh
