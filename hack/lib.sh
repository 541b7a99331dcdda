# Sourced by the scripts behind `make lint|unit|e2e`: strict mode, the repository root as the
# working directory ($root), `step` to title a stage, and the prerequisites (hack/setup.sh
# installs what is missing; seconds when warm).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
step() { echo; echo "==> $*"; }
step "prerequisites"
bash hack/setup.sh
