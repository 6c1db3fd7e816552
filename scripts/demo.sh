#!/usr/bin/env bash
# The README's main job: install what is needed (scripts/setup.sh), then run the small emulated
# experiment experiments/demo.toml (every policy, 100 requests, k=4 x 4 GPUs) and print the summary
# table and where the plots are. Extra arguments go to `netkv emulate`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
venv=${NETKV_VENV:-$here/.venv}
cd "$here"
exec "$venv/bin/netkv" emulate experiments/demo.toml "$@"
