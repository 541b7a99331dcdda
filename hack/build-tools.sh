#!/usr/bin/env bash
# Builds the local cluster's tools from the Go module proxy into a cache keyed by version:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes),
# etcd (etcdmain), kwok + kwokctl (sigs.k8s.io/kwok) and helm (helm.sh/helm/v3).
# A tool already in the cache is not rebuilt, so a warm run takes seconds.
# Prints the bin directory on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=hack/versions.env
source "$here/versions.env"
cache="${ORC_TOOLS_CACHE:-$HOME/.cache/orchestrator-operator}"
bin="$cache/bin"
mkdir -p "$bin" "$cache/work"
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED=0

log() { echo "[build-tools] $*" >&2; }

# have NAME VERSION: true when the cached binary exists.
have() { [ -x "$bin/$1-$2" ]; }
# link NAME VERSION: the unversioned name points at the versioned binary.
link() { ln -sf "$1-$2" "$bin/$1"; }

build_kubernetes() {
  local v="$KUBE_VERSION" minor patch staging work missing=()
  for t in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    have "$t" "$v" || missing+=("$t")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    work="$cache/work/kubernetes-$v"
    mkdir -p "$work"
    minor="$(echo "$v" | cut -d. -f2)"
    patch="$(echo "$v" | cut -d. -f3)"
    staging="v0.$minor.$patch"
    log "resolving k8s.io/kubernetes@$v (staging modules at $staging)"
    (cd "$work" && rm -f go.mod go.sum && go mod init orchestrator.dev/kube-tools >/dev/null 2>&1)
    local gomod
    gomod="$(cd "$work" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    {
      echo "require k8s.io/kubernetes $v"
      # every staging module k8s.io/kubernetes replaces with ./staging is pinned to its tag instead
      grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging/' "$gomod" | awk -v s="$staging" '{print "replace " $1 " => " $1 " " s}'
    } >>"$work/go.mod"
    local ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags="$ldflags -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    for t in "${missing[@]}"; do
      log "building $t $v"
      (cd "$work" && go build -ldflags "$ldflags" -o "$bin/$t-$v" "k8s.io/kubernetes/cmd/$t")
    done
  fi
  for t in kube-apiserver kube-controller-manager kube-scheduler kubectl; do link "$t" "$v"; done
}

build_etcd() {
  local v="$ETCD_VERSION" work="$cache/work/etcd-$ETCD_VERSION"
  if ! have etcd "$v"; then
    mkdir -p "$work"
    log "building etcd $v"
    cat >"$work/main.go" <<'GO'
// Command etcd is etcd's own entry point, built as a standalone binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    (cd "$work" && rm -f go.mod go.sum && go mod init orchestrator.dev/etcd >/dev/null 2>&1 \
      && go get "go.etcd.io/etcd/server/v3@$v" >/dev/null 2>&1 \
      && go build -ldflags "-s -w" -o "$bin/etcd-$v" .)
  fi
  link etcd "$v"
}

# go_install NAME VERSION PACKAGE: a module without replace directives installs directly.
go_install() {
  local name="$1" v="$2" pkg="$3"
  if ! have "$name" "$v"; then
    log "building $name $v"
    local tmp
    tmp="$(mktemp -d)"
    GOBIN="$tmp" go install -ldflags "-s -w" "$pkg@$v"
    mv "$tmp/$name" "$bin/$name-$v"
    rm -rf "$tmp"
  fi
  link "$name" "$v"
}

start=$(date +%s)
build_etcd
go_install kwokctl "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwokctl
go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
build_kubernetes
log "tools ready in $(( $(date +%s) - start ))s"
echo "$bin"
