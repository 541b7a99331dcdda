#!/usr/bin/env bash
# Rolling-maintenance benchmark on the local cluster: the version-bump e2e test (4 servers,
# real PostgreSQL, load generator running) prints the roll's wall time against the sum of what
# no operator can avoid (each server's drain + restart-to-joined), as a ratio from the same run;
# then the anchor, the same servers and PodDisruptionBudget in a plain StatefulSet rolled by
# the StatefulSet controller (RollingUpdate), prints the same figures. The two run one after
# the other, RUNS times (default 3), because these machines are shared and noisy.
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
bench_cluster roll
for run in $(seq 1 "${RUNS:-3}"); do
  cargo test --quiet --locked --features e2e --test e2e -- --test-threads 1 --nocapture \
    maintenance::version_bump maintenance::statefulset_rolling_update_anchor 2>&1 \
    | grep -E "roll measure|test result" | sed "s/^/[run $run] /"
done
