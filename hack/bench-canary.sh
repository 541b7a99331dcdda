#!/usr/bin/env bash
# Canary benchmark on the local cluster: a release that fails every job, rolled to 3 servers
# under a 200-job load with a canary of one server (minJobs 10). Prints the time from the bad
# release's first failed job to the rollback's first step (the canary's drain), against the
# floor measured in the same run (until the 10th failed job: no judge can decide before), and
# the share of the load that ran on the bad release. Both times are on PostgreSQL's clock.
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
bench_cluster canary
step "bad release: first failed job -> rollback"
for _ in $(seq "${RUNS:-1}"); do
  cargo test --quiet --locked --features e2e --test e2e -- --exact --nocapture \
    canary::a_release_that_fails_its_jobs_is_rolled_back_from_its_canary 2>&1 |
    grep -E "canary measure|test result|panicked"
done
