#!/usr/bin/env bash
# Autoscaling benchmark on the local cluster: the same burst (20 jobs/s of 500 ms for 20 s,
# real PostgreSQL and servers) against an autoscaled cluster (1 to 4 servers), a fixed one at
# 1 and a fixed one at 4, one after the other; prints each one's time until the backlog is
# back under target, p95 queue wait, server-minutes (all measured from PostgreSQL), and the
# autoscaled one's ratios to the fixed ones from the same run.
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
bench_cluster autoscale
step "burst: autoscaled, fixed minimum, fixed maximum"
cargo test --quiet --locked --features e2e --test e2e -- --ignored --test-threads 1 --nocapture \
  autoscale::bench_burst 2>&1 | grep -E -A4 "autoscale measure|test result|panicked"
