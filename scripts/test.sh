#!/usr/bin/env bash
# The README's test command: installs what the tests need (scripts/setup.sh), checks the code's
# habits (scripts/lint.py: ruff, layer contracts, mypy), then runs the whole suite. As root, tests marked `root` (Mininet, Open vSwitch, Ryu) are required to run: a missing
# prerequisite fails them instead of skipping. Extra arguments go to pytest.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
venv=${NETKV_VENV:-$here/.venv}
if [ "$(id -u)" -eq 0 ]; then export NETKV_REQUIRE_ROOT_TESTS=1; fi
cd "$here"
# the habits first: ruff, the import-linter layer contracts, mypy (scripts/lint.py)
"$venv/bin/python" scripts/lint.py
exec "$venv/bin/python" -m pytest -ra "$@" tests
