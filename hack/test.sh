#!/usr/bin/env bash
# The project's test command (README: `make test`): installs what is missing, checks format,
# lints, starts the local cluster and runs every test, unit to end-to-end.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
step() { echo; echo "==> $*"; }

step "prerequisites"
bash hack/setup.sh
bin="$(bash hack/build-tools.sh | tail -n 1)"
export PATH="$bin:$PATH"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "CRD drift"
cargo run --quiet --locked --bin crdgen | diff -u crds/orchestratorclusters.yaml -
diff -u crds/orchestratorclusters.yaml charts/orchestrator-operator/crds/orchestratorclusters.yaml

step "hadolint"
hadolint Dockerfile

step "helm lint and values schema"
bash hack/helm-check.sh

step "local cluster"
if [ "${CI:-}" = "true" ]; then
  # CI leaves nothing running behind it.
  trap 'bash "$root/hack/cluster-down.sh" >/dev/null 2>&1 || true' EXIT
fi
start=$(date +%s)
eval "$(bash hack/cluster-up.sh)"
echo "cluster and node agent up in $(( $(date +%s) - start ))s"
echo "KUBECONFIG=$KUBECONFIG"

step "cargo test (unit, mock API, end-to-end)"
# The end-to-end tests mostly wait on watches: run more of them at once than there are cores
# (but not so many that two cores cannot keep every server's heartbeat on time).
set +e
cargo test --workspace --locked --no-fail-fast -- --test-threads 4 2>&1 | tee "$root/.local/cargo-test.log"
status=${PIPESTATUS[0]}
set -e
echo
echo "==> cargo test summaries"
grep -E "^test result:|Running " "$root/.local/cargo-test.log"
exit "$status"
