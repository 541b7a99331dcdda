#!/usr/bin/env bash
# helm lint, and `helm template` against values.schema.json: good values render, bad values
# are refused with a message naming the value.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(bash "$root/hack/build-tools.sh" | tail -n 1)"
helm="$bin/helm"
chart="$root/charts/orchestrator-operator"

"$helm" lint --strict "$chart"
"$helm" template ok "$chart" >/dev/null
"$helm" template ok "$chart" --set watchNamespaces='{team-a,team-b}' --set replicaCount=2 \
  --set metrics.serviceMonitor.enabled=true \
  --set-json 'extraEnv=[{"name":"RUST_LOG","value":"info,kube_client=debug"}]' >/dev/null
policy="$("$helm" template ok "$chart" --set admissionPolicy.enabled=true \
  --set 'admissionPolicy.allowedImagePrefixes={registry.example.com/orc/}' \
  --set admissionPolicy.allowSecretKeyRefs=false)"
for kind in ValidatingAdmissionPolicy ValidatingAdmissionPolicyBinding; do
  grep -q "^kind: $kind\$" <<<"$policy" || { echo "admissionPolicy.enabled renders no $kind" >&2; exit 1; }
done
if "$helm" template ok "$chart" | grep -q ValidatingAdmissionPolicy; then
  echo "the admission policy is rendered without admissionPolicy.enabled" >&2
  exit 1
fi

refused() {
  local expect="$1"; shift
  local out
  if out="$("$helm" template bad "$chart" "$@" 2>&1)"; then
    echo "helm template accepted bad values: $*" >&2
    exit 1
  fi
  if ! grep -q -- "$expect" <<<"$out"; then
    echo "helm template refused $* without mentioning '$expect':" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "refused as expected ($expect): $*"
}
refused "logFormat" --set logFormat=xml
refused "replicaCount" --set replicaCount=-1
refused "leaderElection/enabled" --set replicaCount=2 --set leaderElection.enabled=false
refused "watchNamespaces" --set 'watchNamespaces={Not_A_Namespace}'
refused "pullPolicy" --set image.pullPolicy=Sometimes
refused "unknownKey" --set unknownKey=1
refused "extraEnv" --set-json 'extraEnv=[{"value":"no name"}]'
refused "httpListenAddress" --set httpListenAddress=1.2.3.4:80
refused "allowedImagePrefixes" --set 'admissionPolicy.allowedImagePrefixes={it'"'"'s}'
refused "validationActions" --set 'admissionPolicy.validationActions={Block}'
refused "validationActions" --set 'admissionPolicy.validationActions={Deny,Warn}'
refused "allowedImagePrefixes" --set 'admissionPolicy.allowedImagePrefixes={registry.example.com}'
refused "needs a rule" --set admissionPolicy.enabled=true
echo "helm checks passed"
