#!/usr/bin/env bash
# The README's run command (`make demo`): builds what is missing, starts the local cluster and a
# PostgreSQL, installs the operator with its Helm chart (the operator runs as a pod under the
# chart's ServiceAccount), declares a cluster of three servers, runs the load generator,
# upgrades the servers 2.0.0 -> 2.1.0 with rolling maintenance while showing its progress, and
# ends with the load generator's lost / run-twice counts. Everything is left running.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
step() { echo "==> $*"; }
bash hack/setup.sh
bin="$(bash hack/build-tools.sh | tail -n 1)"
export PATH="$bin:$PATH"
export KUBECONFIG="$root/.local/kubeconfig"
agent_pid="$root/.local/agent/orc-agent-0/agent.pid"
if kubectl get --raw /readyz >/dev/null 2>&1 && [ -f "$agent_pid" ] && kill -0 "$(cat "$agent_pid")" 2>/dev/null; then
  # A running cluster is reused as it is (restarting the node agent would restart every pod).
  step "local cluster already running; building the binaries its pods run"
  cargo build --quiet --workspace --locked --bins
else
  step "starting the local cluster (real kube-apiserver, controller-manager, scheduler + node agent)"
  eval "$(bash hack/cluster-up.sh)"
fi
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
mkdir -p .local/demo

step "PostgreSQL on 127.0.0.1, schema for servers 2.x"
bash hack/postgres.sh start
eval "$(bash hack/postgres.sh env)"
SERVER_VERSION=2.0.0 "$target/orchestrator-server" schema migrate

# Earlier demos ran the operator as a host process; the chart's pod replaces it.
if [ -f .local/demo/operator.pid ] && kill -0 "$(cat .local/demo/operator.pid)" 2>/dev/null; then
  kill "$(cat .local/demo/operator.pid)"
fi
rm -f .local/demo/operator.pid

kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
step "helm install: the operator as a pod, watching namespace demo"
# The chart installs the CRD only when it is absent (Helm never upgrades CRDs); this working
# tree's CRD may be newer than an installed one.
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
helm upgrade --install orchestrator-operator charts/orchestrator-operator \
  --namespace orchestrator-system --create-namespace \
  --set image.repository=orchestrator-operator --set serverImageRepository=orchestrator-server \
  --set 'watchNamespaces={demo}' --wait --timeout 2m >/dev/null
kubectl -n orchestrator-system get deploy,pods,lease

step "a cluster of three servers in namespace demo"
kubectl -n demo create secret generic process-db --from-literal=username="$DATABASE_USER" \
  --from-literal=password="$DATABASE_PASSWORD" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n demo label secret process-db orchestrator.dev/credentials=true --overwrite >/dev/null
cat >.local/demo/cluster.yaml <<YAML
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
kubectl -n demo apply -f .local/demo/cluster.yaml

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

step "three servers join one by one (a rerun first brings an existing demo back to 2.0.0)"
wait_version 2.0.0
kubectl -n demo wait --for=condition=Ready orc/demo --timeout=5m
step "load generator: 20 jobs/s for 60s"
"$target/orchestrator-server" loadgen --rate 20 --duration 60 --kind sleep --sleep-ms 300 --batch "demo-$(date +%s)" \
  >.local/demo/loadgen.json 2>.local/demo/loadgen.log &
load=$!
sleep 5
step "upgrade 2.0.0 -> 2.1.0: rolling maintenance, one server at a time"
kubectl -n demo patch orc demo --type merge -p '{"spec":{"version":"2.1.0"}}' >/dev/null
wait_version 2.1.0
step "waiting for the load generator to finish and count"
wait "$load" || true
tail -n 1 .local/demo/loadgen.log
step "the last lines of a server's log and of the operator's (kubectl logs, through the API server)"
kubectl -n demo logs demo-0 --tail 3
kubectl -n orchestrator-system logs deploy/orchestrator-operator --tail 3
cat <<TXT

The local cluster, node agent, PostgreSQL and operator keep running. Look around:
  export KUBECONFIG=$KUBECONFIG PATH=$bin:\$PATH
  kubectl get nodes -L topology.kubernetes.io/zone  # three node agents, one per zone
  kubectl -n demo get orc,pods -o wide             # the servers spread across the zones
  kubectl -n demo describe orc demo               # conditions and Events
  kubectl explain orchestratorcluster.spec.maintenance
  kubectl -n orchestrator-system get deploy,pods,lease
  helm -n orchestrator-system status orchestrator-operator
  kubectl -n orchestrator-system logs -f deploy/orchestrator-operator
  kubectl -n demo logs demo-1 --previous          # the run before a restart, if it had one
Tear down:
  helm -n orchestrator-system uninstall orchestrator-operator; bash hack/postgres.sh stop; make cluster-down
TXT
