# Entry points; each target is a script under hack/ so that CI and people run the same thing.
.PHONY: demo test bench bench-roll build crds tools cluster-up cluster-down lint

## Run the demo: local cluster, operator, a cluster of three servers (left running).
demo:
	bash hack/demo.sh

## Run every check and test, setting up what is missing (toolchains, PostgreSQL, local cluster).
test:
	bash hack/test.sh

## Throughput of the reference server against a one-connection baseline (prints ratios).
bench:
	bash hack/setup.sh
	cargo bench -p orchestrator-server --bench throughput

## A 4-server rolling upgrade's wall time against its unavoidable part (drains + restarts), 3 runs.
bench-roll:
	bash hack/bench-roll.sh

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

## Format check, clippy, hadolint, helm lint.
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	hadolint Dockerfile
	bash hack/helm-check.sh
