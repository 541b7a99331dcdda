#!/usr/bin/env bash
# Fleet benchmark: for each size in SIZES (default "100 300 1000"), a fresh local cluster, then
# benches/scale (CLUSTERS=<size> OrchestratorClusters of 3 servers on kwok's fake nodes, one
# PostgreSQL, a simulator of the servers' side) against a baseline that applies the same child
# objects with one client. Each size's full output is kept in .local/bench-scale-<size>.log;
# the figures (lines starting with `[scale`) are printed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash hack/setup.sh
export KUBECONFIG="$root/.local/kubeconfig"
mkdir -p .local
cargo bench --locked --features e2e --bench scale --no-run
for size in ${SIZES:-100 300 1000}; do
  bash hack/cluster-down.sh >/dev/null 2>&1 || true
  bash hack/cluster-up.sh >.local/bench-scale-cluster.log 2>&1 || { cat .local/bench-scale-cluster.log; exit 1; }
  log=".local/bench-scale-$size.log"
  if ! CLUSTERS="$size" cargo bench --quiet --locked --features e2e --bench scale >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "[bench-scale] N=$size failed; full output in $log" >&2
    exit 1
  fi
  grep -E "^\[scale" "$log"
done
bash hack/cluster-down.sh >/dev/null 2>&1 || true
