#!/usr/bin/env bash
# The README's run command: builds what is missing, starts the local cluster and the operator,
# declares a cluster of three servers and shows it coming up. Leaves everything running and
# prints how to look around and how to tear down.
#
# Until the reference server lands, the servers run the project's small test server image
# (orc-test-server): the operator's objects, pods, probes and status are all real.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash hack/setup.sh
eval "$(bash hack/cluster-up.sh)"
bin="$(bash hack/build-tools.sh | tail -n 1)"
kubectl() { "$bin/kubectl" "$@"; }
mkdir -p .local/demo

kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for condition=Established crd/orchestratorclusters.orchestrator.dev --timeout=60s >/dev/null

if [ -f .local/demo/operator.pid ] && kill -0 "$(cat .local/demo/operator.pid)" 2>/dev/null; then
  kill "$(cat .local/demo/operator.pid)"; sleep 1
fi
nohup target/debug/orchestrator-operator --leader-election=false --http-addr 127.0.0.1:18080 \
  --server-image-repository orc-test-server >.local/demo/operator.log 2>&1 &
echo $! >.local/demo/operator.pid

kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
sed -e 's/version: "1.0.0"/version: "demo"/' examples/minimal.yaml | kubectl -n demo apply -f - >/dev/null

echo "Waiting for OrchestratorCluster demo/minimal to become Ready..."
for _ in $(seq 1 60); do
  phase="$(kubectl -n demo get orc minimal -o jsonpath='{.status.phase}' 2>/dev/null || true)"
  kubectl -n demo get orc minimal --no-headers 2>/dev/null || true
  [ "$phase" = "Ready" ] && break
  sleep 2
done
echo
kubectl -n demo get orc,statefulset,service,pdb,configmap,pods -o wide
cat <<TXT

The local cluster, node agent and operator keep running.
  export KUBECONFIG=$KUBECONFIG
  export PATH=$bin:\$PATH
  kubectl -n demo describe orc minimal        # conditions and Events
  kubectl explain orchestratorcluster.spec.maintenance
  tail -f .local/demo/operator.log            # operator logs
  ls .local/agent/pods/                       # one log folder per pod
Tear down:
  kill \$(cat .local/demo/operator.pid); make cluster-down
TXT
