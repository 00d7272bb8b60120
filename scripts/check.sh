#!/usr/bin/env bash
# Static checks, as CI runs them before the tests: ruff format --check, ruff check, basedpyright (basic mode).
# Sets up .venv first (scripts/setup.sh) and installs basedpyright into it (its wheel brings its own Node.js).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! .venv/bin/python -c "import basedpyright" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "basedpyright>=1.20"
fi
.venv/bin/ruff format --check vlmtune_cli tests benchmarks noxfile.py
.venv/bin/ruff check vlmtune_cli tests benchmarks noxfile.py
PATH="$PWD/.venv/bin:$PATH" .venv/bin/basedpyright  # the venv first on PATH: it finds the packages there
