#!/usr/bin/env bash
# Create .venv and install vlmtune with its test tools. Safe to run again (fast when nothing changed).
# CPU machines get the CPU build of torch first, so the open `torch` range in pyproject.toml installs nothing
# more (an unpinned torch would pull a multi-GB CUDA build). On a GPU machine set VLMTUNE_TORCH to the torch
# requirement you want instead (e.g. VLMTUNE_TORCH="torch==2.13.0"), or install torch yourself first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${VLMTUNE_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.vlmtune-setup
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install --quiet "$TORCH"
.venv/bin/python -m pip install --quiet -e ".[test]"
# torchvision is never wanted on CPU machines here: the only reachable build breaks transformers' AutoProcessor.
if .venv/bin/python -m pip show torchvision >/dev/null 2>&1 && ! .venv/bin/python -c "import torchvision" 2>/dev/null; then
  echo "setup: uninstalling a broken torchvision (it breaks transformers.AutoProcessor)" >&2
  .venv/bin/python -m pip uninstall --quiet -y torchvision
fi
echo "$want" > "$stamp"
