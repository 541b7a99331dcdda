#!/usr/bin/env bash
# The project's test command (README: `make test`; `.ci/run` calls it): lint, unit and e2e,
# the same scripts as `make lint`, `make unit` and `make e2e`. On a fresh machine it installs
# what is missing (hack/setup.sh: toolchains, PostgreSQL, the local cluster's tools) and starts
# the local cluster. A lint failure stops it; unit and e2e both run even when the other fails,
# and the summaries of both cargo test runs close the output.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
logs=(.local/unit-test.log .local/e2e-test.log)
rm -f "${logs[@]}"

bash hack/lint.sh

set +e
bash hack/unit.sh
unit=$?
bash hack/e2e.sh
e2e=$?
set -e

echo
echo "==> cargo test summaries (unit, then e2e)"
for log in "${logs[@]}"; do
  if [ -f "$log" ]; then
    grep -E "^test result:|Running " "$log" || true
  fi
done
echo "unit exit $unit, e2e exit $e2e"
if [ "$unit" != 0 ]; then exit "$unit"; fi
exit "$e2e"
