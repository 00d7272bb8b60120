#!/usr/bin/env bash
# Set up (if needed) and train the smoke recipe: the built-in tiny Qwen2-VL on synthetic data, offline, on CPU.
# Each call trains the smoke run afresh (--overwrite), so the quickstart succeeds however often it is repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vlmtune train recipes/smoke.toml --overwrite "$@"
