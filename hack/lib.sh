# Sourced by the scripts behind `make lint|unit|e2e`: strict mode, the repository root as the
# working directory ($root), `step` to title a stage, `bench_cluster` for the benchmarks, and
# the prerequisites (hack/setup.sh installs what is missing; seconds when warm).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
step() { echo; echo "==> $*"; }
step "prerequisites"
bash hack/setup.sh
# `bench_cluster NAME`: the local cluster for benchmark NAME, started unless it runs (its log in
# .local/bench-NAME-cluster.log, shown if it fails to start), and KUBECONFIG pointing at it.
bench_cluster() {
  export KUBECONFIG="$root/.local/kubeconfig"
  mkdir -p "$root/.local"
  local log="$root/.local/bench-$1-cluster.log"
  step "local cluster"
  bash hack/cluster-up.sh >"$log" 2>&1 || { cat "$log"; exit 1; }
}
