# Entry points; each target is a script under hack/ so that CI and people run the same thing.
# `make` alone lists them: the `## ` line above a target is what `make help` prints for it.
.DEFAULT_GOAL := help
.PHONY: help test lint unit e2e demo bench bench-roll bench-scale bench-autoscale bench-plan bench-canary build crds tools cluster-up cluster-down

## List the targets and what they do (the default target).
help:
	@awk '/^## / { desc = substr($$0, 4); next } \
	     /^[a-z][a-z0-9-]*:/ { sub(/:.*/, "", $$1); printf "  make %-13s %s\n", $$1, desc } \
	     { desc = "" }' $(firstword $(MAKEFILE_LIST))

## Everything CI runs (.ci/run): lint, unit, e2e, installing what is missing and starting the local cluster.
test:
	bash hack/test.sh

## The one list of checks: fmt, clippy (all targets/features, warnings denied), CRD drift, import cycles, hadolint, helm.
lint:
	bash hack/lint.sh

## Tests that need no cluster: unit, property, mock-API and PostgreSQL tests (cargo test --workspace).
unit:
	bash hack/unit.sh

## The end-to-end suites (cargo test --features e2e --test e2e), starting the local cluster if needed.
e2e:
	bash hack/e2e.sh

## Run the demo: local cluster, operator, a cluster of three servers (left running).
demo:
	bash hack/demo.sh

## Throughput of the reference server against a one-connection baseline (prints ratios).
bench:
	bash hack/setup.sh
	cargo bench -p orchestrator-server --bench throughput

## A 4-server rolling upgrade's wall time against its unavoidable part (drains + restarts), 3 runs.
bench-roll:
	bash hack/bench-roll.sh

## The same burst against an autoscaled cluster, a fixed minimum and a fixed maximum (prints ratios).
bench-autoscale:
	bash hack/bench-autoscale.sh

## Time from a spec change to its status.plan (p50/p99 of 50) against a watch round trip.
bench-plan:
	bash hack/bench-plan.sh

## A failing release's first failed job to its canary's rollback, against the minJobs floor.
bench-canary:
	bash hack/bench-canary.sh

## A fleet of 100, 300 and 1,000 clusters on kwok's fake nodes: convergence, steady-state load, reaction times.
bench-scale:
	bash hack/bench-scale.sh

## Build the operator and the project's binaries.
build:
	cargo build --workspace --locked

## Regenerate the CRD from the Rust types (checked in under crds/ and the chart).
crds:
	cargo run --quiet --bin crdgen > crds/orchestratorclusters.yaml
	cp crds/orchestratorclusters.yaml charts/orchestrator-operator/crds/orchestratorclusters.yaml

## Build the local cluster's tools into the cache (seconds when warm).
tools:
	bash hack/build-tools.sh

## Start the local cluster; prints the KUBECONFIG export line.
cluster-up:
	@bash hack/cluster-up.sh

## Stop the local cluster.
cluster-down:
	bash hack/cluster-down.sh
