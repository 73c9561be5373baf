"""Commands start fast: the modules behind `--help`, validation and plans load no heavy library.

Each import runs in a fresh interpreter, so what another test imported cannot hide a regression.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("pandas", "scipy", "plotly", "jsonschema", "nbformat", "papermill",
         "prometheus_api_client")
# Phases connect to the cluster and read metrics, so pandas and kubernetes may load there.
NOTEBOOK_AND_STATS = ("scipy", "plotly", "jsonschema", "nbformat", "papermill")


def loaded_after_import(module: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of `candidates` are in sys.modules after importing `module` in a new interpreter."""
    code = (f"import json, sys, {module}\n"
            f"print(json.dumps([n for n in {list(candidates)!r} if n in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", [
    "canarykit.cli.main",
    "canarykit.mesh.validate",
    "canarykit.rollout.plan",
    "canarykit.rollout.report",
    "canarykit.analysis.settings",
    "canarykit.cluster.audit",
])
def test_light_modules_load_no_heavy_library(module: str):
    assert loaded_after_import(module, HEAVY) == []


def test_phases_load_no_notebook_or_statistics_library():
    assert loaded_after_import("canarykit.rollout.phases", NOTEBOOK_AND_STATS) == []


def test_the_check_sees_a_heavy_import():
    assert loaded_after_import("pandas", HEAVY) == ["pandas"]
