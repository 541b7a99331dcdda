#!/usr/bin/env bash
# The end-to-end suites (README: `make e2e`): starts the local cluster unless it is running
# (with CI=true it is torn down at exit), then runs the one e2e test binary,
# `cargo test --features e2e --test e2e`. Arguments are test-name filters
# (`bash hack/e2e.sh maintenance::`). Ends with the cargo test summaries (log:
# .local/e2e-test.log).
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
bin="$(bash hack/build-tools.sh | tail -n 1)"
export PATH="$bin:$PATH"

step "local cluster"
if [ "${CI:-}" = "true" ]; then
  # CI leaves nothing running behind it.
  trap 'bash "$root/hack/cluster-down.sh" >/dev/null 2>&1 || true' EXIT
fi
start=$(date +%s)
eval "$(bash hack/cluster-up.sh)"
echo "cluster and node agent up in $(( $(date +%s) - start ))s"
echo "KUBECONFIG=$KUBECONFIG"

step "cargo test --features e2e (end-to-end)"
# The end-to-end tests mostly wait on watches: run more of them at once than there are cores
# (but not so many that two cores cannot keep every server's heartbeat on time). The tests of
# module `serial` are the only `#[ignore]`d ones: they stop the control plane or load the whole
# machine, so they run after the others, one at a time, with `--ignored` and the same
# arguments (filters select among them; do not pass `--test-threads`).
mkdir -p .local
: >.local/e2e-test.log
run_tests() {
  cargo test --locked --features e2e --test e2e --no-fail-fast -- "$@" 2>&1 | tee -a .local/e2e-test.log
  return "${PIPESTATUS[0]}"
}
set +e
run_tests --test-threads 4 "$@"
status=$?
step "cargo test --features e2e, module serial (alone, one test at a time)"
if [ "$#" -eq 0 ]; then
  run_tests --ignored --test-threads 1 serial::
else
  run_tests --ignored --test-threads 1 "$@"
fi
serial_status=$?
[ "$serial_status" -eq 0 ] || status=$serial_status
set -e
step "cargo test summaries (e2e)"
grep -E "^test result:|Running " .local/e2e-test.log || true
exit "$status"
