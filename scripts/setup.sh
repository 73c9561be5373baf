#!/usr/bin/env bash
# Installs what canarykit needs on a fresh Debian/Ubuntu machine: apt packages where
# missing, a virtualenv in .venv, and the package with its extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing apt packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need_apt[@]}" | sort -u) >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating virtualenv .venv"
  python3 -m venv .venv
fi
stamp=.venv/.canarykit-installed
want=$(cat pyproject.toml scripts/setup.sh scripts/constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing canarykit and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c scripts/constraints.txt -e '.[dev]'
  # kubernetes-validate (the tests check rendered manifests with it) goes beside the
  # environment, not on its path: the kubernetes client imports it, and with it jsonschema
  # (seconds), at every start whenever it can.
  .venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/kubernetes-validate \
    'kubernetes-validate>=1.30' importlib-resources  # its other needs are in the environment
  # hera (Argo Workflows' OpenAPI schema as Pydantic models: the tests validate the rendered
  # WorkflowTemplate and CronWorkflow with it) goes beside the environment too, off its path.
  # Pinned: hera 7.1.0 is Argo v4.0.5's schema; its needs (pydantic 2) are in the environment.
  .venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/argo-schema 'hera==7.1.0'
  echo "$want" > "$stamp"
fi
