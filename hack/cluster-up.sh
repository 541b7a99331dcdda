#!/usr/bin/env bash
# Starts the local cluster: the real kube-apiserver, kube-controller-manager, kube-scheduler and
# etcd (plus kwok's controller for fake nodes), all built by hack/build-tools.sh and bound to
# 127.0.0.1, assembled by `kwokctl create cluster --runtime binary`. Idempotent: a running
# cluster is reused. Writes the kubeconfig to .local/kubeconfig and prints the export line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=hack/versions.env
source "$root/hack/versions.env"
name="${ORC_CLUSTER_NAME:-orchestrator}"
bin="$(bash "$root/hack/build-tools.sh" | tail -n 1)"
export PATH="$bin:$PATH"
export KWOK_WORKDIR="$root/.local/kwok"
kubeconfig="$root/.local/kubeconfig"
mkdir -p "$KWOK_WORKDIR"

if kwokctl get clusters 2>/dev/null | grep -qx "$name" \
  && kubectl --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1 \
  && [ -f "$KWOK_WORKDIR/clusters/$name/logs/audit.log" ]; then
  echo "[cluster-up] cluster $name already running" >&2
else
  kwokctl delete cluster --name "$name" >/dev/null 2>&1 || true
  cat >"$KWOK_WORKDIR/kwokctl.yaml" <<YAML
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeVersion: $KUBE_VERSION
  kubeApiserverBinary: $bin/kube-apiserver
  kubeControllerManagerBinary: $bin/kube-controller-manager
  kubeSchedulerBinary: $bin/kube-scheduler
  kubectlBinary: $bin/kubectl
  etcdBinary: $bin/etcd
  kwokControllerBinary: $bin/kwok
  nodeLeaseDurationSeconds: 20
  # The API server's audit log (.local/kwok/clusters/<name>/logs/audit.log): the tests count
  # the operator's requests from it.
  kubeAuditPolicy: $root/hack/audit-policy.yaml
  kubeControllerManagerNodeMonitorGracePeriodMilliseconds: 30000
componentsPatches:
  # The API server's default Service range (10.0.0.0/24) holds 254 ClusterIPs; make
  # bench-scale runs a thousand clusters, each with a client Service.
  - name: kube-apiserver
    extraArgs:
      - key: service-cluster-ip-range
        value: 10.96.0.0/16
  # One controller-manager and one scheduler, started by kwokctl and by nothing else: with
  # leader election (their default) each exits when it cannot renew its lease for 10 s (an API
  # server restarting), and no kubelet or systemd starts it again here, as one would on a real
  # control plane. Without it they wait for the API server and carry on.
  - name: kube-controller-manager
    extraArgs:
      - key: leader-elect
        value: "false"
  - name: kube-scheduler
    extraArgs:
      - key: leader-elect
        value: "false"
  # kwok's binary runtime manages every node by default; it must leave the node agent's
  # Node and pods alone and only play fake nodes annotated for it (scale tests).
  - name: kwok-controller
    extraArgs:
      - key: manage-all-nodes
        value: "false"
      - key: manage-nodes-with-annotation-selector
        value: kwok.x-k8s.io/node=fake
YAML
  start=$(date +%s)
  kwokctl create cluster --name "$name" --config "$KWOK_WORKDIR/kwokctl.yaml" \
    --kubeconfig "$kubeconfig" --wait 120s >&2
  echo "[cluster-up] cluster $name started in $(( $(date +%s) - start ))s" >&2
fi
KUBECONFIG="$kubeconfig" bash "$root/hack/agent-up.sh"
echo "export KUBECONFIG=$kubeconfig"
