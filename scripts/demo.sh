#!/usr/bin/env bash
# The main job: installs what it needs, then runs `canarykit demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/canarykit demo "$@"
