#!/usr/bin/env bash
# Stops the local cluster and removes its state.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
name="${ORC_CLUSTER_NAME:-orchestrator}"
for pidfile in "$root"/.local/agent/agent.pid "$root"/.local/agent/*/agent.pid; do
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
  fi
  rm -f "$pidfile"
done
bin="$(bash "$root/hack/build-tools.sh" | tail -n 1)"
KWOK_WORKDIR="$root/.local/kwok" "$bin/kwokctl" delete cluster --name "$name" --kubeconfig "$root/.local/kubeconfig"
