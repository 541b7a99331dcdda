#!/usr/bin/env bash
# The README's run command (`make demo`): builds what is missing, starts the local cluster, a
# PostgreSQL and the operator, declares a cluster of three servers, runs the load generator,
# upgrades the servers 2.0.0 -> 2.1.0 with rolling maintenance while showing its progress, and
# ends with the load generator's lost / run-twice counts. Everything is left running.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash hack/setup.sh
eval "$(bash hack/cluster-up.sh)"
bin="$(bash hack/build-tools.sh | tail -n 1)"
kubectl() { "$bin/kubectl" "$@"; }
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
mkdir -p .local/demo

bash hack/postgres.sh start
eval "$(bash hack/postgres.sh env)"
SERVER_VERSION=2.0.0 "$target/orchestrator-server" schema migrate

kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for condition=Established crd/orchestratorclusters.orchestrator.dev --timeout=60s >/dev/null
if [ -f .local/demo/operator.pid ] && kill -0 "$(cat .local/demo/operator.pid)" 2>/dev/null; then
  kill "$(cat .local/demo/operator.pid)"; sleep 1
fi
nohup "$target/orchestrator-operator" --leader-election=false --http-addr 127.0.0.1:18080 \
  --server-image-repository orchestrator-server >.local/demo/operator.log 2>&1 &
echo $! >.local/demo/operator.pid

kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n demo create secret generic process-db --from-literal=username="$DATABASE_USER" \
  --from-literal=password="$DATABASE_PASSWORD" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
cat <<YAML | kubectl -n demo apply -f - >/dev/null
apiVersion: orchestrator.dev/v1alpha1
kind: OrchestratorCluster
metadata:
  name: demo
spec:
  replicas: 3
  version: "2.0.0"
  database: {host: 127.0.0.1, port: $DATABASE_PORT, name: process, sslMode: disable, credentialsSecret: {name: process-db}}
  maintenance: {drainTimeout: 30s, readyTimeout: 2m}
YAML

show() {
  kubectl -n demo get orc demo --no-headers
  kubectl -n demo get orc demo -o jsonpath='{range .status.servers[*]}    {.name}  pod-ready={.ready}  db={.state}  version={.version}  jobs={.runningJobs}  joined={.joined}{"\n"}{end}'
  kubectl -n demo get orc demo -o jsonpath='{.status.maintenance.step}{" "}{.status.maintenance.server}{" "}{.status.maintenance.stage}' | sed 's/^/    maintenance: /'; echo
}
wait_version() {
  for _ in $(seq 1 120); do
    show
    if [ "$(kubectl -n demo get orc demo -o jsonpath='{.status.phase}/{.status.currentVersion}')" = "Ready/$1" ]; then
      return 0
    fi
    sleep 3
  done
  echo "the cluster did not become Ready on $1; see kubectl -n demo describe orc demo" >&2
  return 1
}

echo "==> three servers join one by one"
wait_version 2.0.0
echo "==> load generator: 20 jobs/s for 60s"
"$target/orchestrator-server" loadgen --rate 20 --duration 60 --kind sleep --sleep-ms 300 --batch "demo-$(date +%s)" \
  >.local/demo/loadgen.json 2>.local/demo/loadgen.log &
load=$!
sleep 5
echo "==> upgrade 2.0.0 -> 2.1.0: rolling maintenance, one server at a time"
kubectl -n demo patch orc demo --type merge -p '{"spec":{"version":"2.1.0"}}' >/dev/null
wait_version 2.1.0
echo "==> waiting for the load generator to finish and count"
wait "$load" || true
tail -n 1 .local/demo/loadgen.log
cat <<TXT

The local cluster, node agent, PostgreSQL and operator keep running.
  export KUBECONFIG=$KUBECONFIG PATH=$bin:\$PATH
  kubectl -n demo get orc,pods -o wide
  kubectl -n demo describe orc demo              # conditions and Events
  kubectl explain orchestratorcluster.spec.maintenance
  tail -f .local/demo/operator.log                # operator logs
  ls .local/agent/pods/                           # one log folder per server pod
Tear down:
  kill \$(cat .local/demo/operator.pid); bash hack/postgres.sh stop; make cluster-down
TXT
