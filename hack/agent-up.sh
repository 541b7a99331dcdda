#!/usr/bin/env bash
# Builds the project's binaries and (re)starts the node agents against the local cluster, with
# the image map of the project's images: one agent per Node, as one kubelet per machine.
# ORC_AGENT_NODES (default 3) Nodes `orc-agent-<i>`, in zones z1, z2, z3, ... (label
# topology.kubernetes.io/zone), pod IPs from 127.<i+1>.0.0/16, kubelet endpoint (`kubectl
# logs`) on 127.0.0.1:<10250+i>. Logs: .local/agent/orc-agent-<i>/agent.log; the agents' Nodes
# beyond the count are deleted. Waits until every agent's Node is Ready.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export KUBECONFIG="${KUBECONFIG:-$root/.local/kubeconfig}"
bin="$(bash hack/build-tools.sh | tail -n 1)"
nodes="${ORC_AGENT_NODES:-3}"
state="$root/.local/agent"
mkdir -p "$state"
cargo build --quiet --workspace --locked --bins
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"

# Every agent started before (any count, and the single agent of earlier layouts), waited for
# (at most 10 s each: an agent stops its containers within 2 s) so that its port is free.
old_pids=()
for pidfile in "$state"/agent.pid "$state"/*/agent.pid; do
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    old_pids+=("$(cat "$pidfile")")
    kill "$(cat "$pidfile")" || true
  fi
  rm -f "$pidfile"
done
for pid in "${old_pids[@]}"; do
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
done
images="orc-test-server=$target/orc-test-server,orchestrator-operator=$target/orchestrator-operator"
[ -x "$target/orchestrator-server" ] && images="$images,orchestrator-server=$target/orchestrator-server"
wanted=()
for ((i = 0; i < nodes; i++)); do
  node="orc-agent-$i"
  wanted+=("$node")
  mkdir -p "$state/$node"
  ORC_AGENT_NODE="$node" ORC_AGENT_ZONE="z$((i + 1))" ORC_AGENT_POD_CIDR="127.$((i + 1)).0.0/16" \
    ORC_AGENT_KUBELET_PORT="$((10250 + i))" ORC_AGENT_IMAGES="$images" ORC_AGENT_STATE_DIR="$state/$node" \
    nohup "$target/orc-node-agent" >"$state/$node/agent.log" 2>&1 &
  echo $! >"$state/$node/agent.pid"
done
# Nodes of agents no longer started (a smaller ORC_AGENT_NODES than before) would stay NotReady
# with pods bound to them.
for node in $("$bin/kubectl" get nodes -l node.orchestrator.dev/agent -o name | sed 's|^node/||'); do
  if [[ ! " ${wanted[*]} " =~ " $node " ]]; then
    "$bin/kubectl" delete node "$node" --wait=false >&2
  fi
done
# `--for=condition` fails at once on a Node that does not exist yet (a first start): wait
# for the agent to register it first. On a restart the Node exists and may still show the
# previous agent's Ready.
for node in "${wanted[@]}"; do
  "$bin/kubectl" wait --for=create "node/$node" --timeout=60s >/dev/null
  "$bin/kubectl" wait --for=condition=Ready "node/$node" --timeout=60s >&2
done
echo "[agent-up] $nodes node agents running (${wanted[*]}), images: $images" >&2
