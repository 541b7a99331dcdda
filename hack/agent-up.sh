#!/usr/bin/env bash
# Builds the project's binaries and (re)starts the node agent against the local cluster, with
# the image map of the project's images. Logs: .local/agent/agent.log; per-pod logs under
# .local/agent/pods/. Waits until the agent's Node is Ready.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export KUBECONFIG="${KUBECONFIG:-$root/.local/kubeconfig}"
bin="$(bash hack/build-tools.sh | tail -n 1)"
state="$root/.local/agent"
mkdir -p "$state"
cargo build --quiet --workspace --locked --bins
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"

if [ -f "$state/agent.pid" ] && kill -0 "$(cat "$state/agent.pid")" 2>/dev/null; then
  kill "$(cat "$state/agent.pid")" && sleep 3
fi
images="orc-test-server=$target/orc-test-server,orchestrator-operator=$target/orchestrator-operator"
[ -x "$target/orchestrator-server" ] && images="$images,orchestrator-server=$target/orchestrator-server"
ORC_AGENT_IMAGES="$images" ORC_AGENT_STATE_DIR="$state" \
  nohup "$target/orc-node-agent" >"$state/agent.log" 2>&1 &
echo $! >"$state/agent.pid"
# `--for=condition` fails at once on a Node that does not exist yet (a first start): wait
# for the agent to register it first. On a restart the Node exists and may still show the
# previous agent's Ready.
"$bin/kubectl" wait --for=create node/orc-agent-0 --timeout=60s >/dev/null
"$bin/kubectl" wait --for=condition=Ready node/orc-agent-0 --timeout=60s >&2
echo "[agent-up] node agent running (pid $(cat "$state/agent.pid")), images: $images" >&2
