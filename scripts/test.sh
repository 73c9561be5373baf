#!/usr/bin/env bash
# The test suite: installs what it needs, checks style, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check canarykit tests benchmarks
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
