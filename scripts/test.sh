#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Tests marked `slurm` run when a cluster is up
# (bash scripts/local-slurm.sh start) and skip with a reason otherwise. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
