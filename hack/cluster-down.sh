#!/usr/bin/env bash
# Stops the local cluster and removes its state.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
name="${ORC_CLUSTER_NAME:-orchestrator}"
pidfile="$root/.local/agent/agent.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  kill "$(cat "$pidfile")"
fi
rm -f "$pidfile"
bin="$(bash "$root/hack/build-tools.sh" | tail -n 1)"
KWOK_WORKDIR="$root/.local/kwok" "$bin/kwokctl" delete cluster --name "$name" --kubeconfig "$root/.local/kubeconfig"
