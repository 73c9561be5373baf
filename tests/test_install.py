"""The wheel, installed into a fresh virtualenv outside the checkout, runs a real rollout.

Nothing here may lean on the repository: the source is copied before the wheel is built (a
stale build/ in the checkout could slip old files in), the virtualenv lives in tmp, and every
command runs from a directory of its own with the checkout off PATH and PYTHONPATH. The lab
is found only through the lines `canarykit lab up` prints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import canarykit
from canarykit.rollout.target import PROMETHEUS_URL_ENV

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "examples" / "plans" / "reviews-canary.yaml"
SHORT = {"preflight": {"baseline_window": "10s", "min_baseline_success_rate": 99},
         "analysis": {"window": "6s", "interval": "2s", "check_every": "2s",
                      "max_duration": "40s", "min_requests": 20},
         "steps": [{"weight": 25}, {"promote": {}}]}


def build_wheel(work: Path) -> Path:
    """The wheel of a copy of the source tree: only what the package declares ships."""
    source = work / "source"
    shutil.copytree(REPO / "canarykit", source / "canarykit",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    quietly([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source),
             "-w", str(work / "dist")], work)
    (wheel,) = (work / "dist").glob("canarykit-*.whl")
    return wheel


def fresh_venv(work: Path, wheel: Path) -> Path:
    """A new virtualenv with the wheel and its lab extra, installed by this interpreter's pip
    (`--no-compile`: byte-compiling plotly and pandas would take longer than the rollout)."""
    venv = work / "venv"
    quietly([sys.executable, "-m", "venv", "--without-pip", str(venv)], work)
    quietly([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
             "-q", "--no-compile", f"{wheel}[lab]"], work)
    return venv


def quietly(argv: list[str], cwd: Path) -> None:
    """Run a setup command; its output only when it fails."""
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"


def environment(venv: Path) -> dict[str, str]:
    """An activated fresh virtualenv: the checkout (and its .venv) off PATH, no overrides.
    Python may cache bytecode there: installed with `--no-compile`, each module is compiled
    by the first process that imports it (with PYTHONDONTWRITEBYTECODE, by every one: every
    lab part, runner and kernel compiled pandas, plotly and kubernetes anew)."""
    dropped = ("PYTHONPATH", "VIRTUAL_ENV", "KUBECONFIG", PROMETHEUS_URL_ENV,
               "CANARYKIT_LAB_DIR", "CANARYKIT_AUDIT_LOG", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(REPO))]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv)
    return env


def exports(text: str) -> dict[str, str]:
    """The `export NAME=VALUE` lines `canarykit lab up` printed."""
    found = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "export":
            name, _, value = words[1].partition("=")
            found[name] = value
    return found


@pytest.mark.lab
@pytest.mark.timeout(900)
def test_the_installed_wheel_runs_a_rollout_from_any_directory(tmp_path):
    began = time.monotonic()
    wheel = build_wheel(tmp_path)
    venv = fresh_venv(tmp_path, wheel)
    installed = time.monotonic()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = environment(venv)

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=timeout)

    version = run("canarykit", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"canarykit {canarykit.__version__}"
    where = run("python", "-c", "import canarykit, importlib.resources as r; "
                "print(canarykit.__file__); "
                "print(' '.join(sorted(p.name for p in (r.files('canarykit') / 'runbooks')"
                ".iterdir())))")
    assert where.returncode == 0, where.stderr
    module, runbooks = where.stdout.splitlines()
    assert Path(module).is_relative_to(venv)
    assert set(runbooks.split()) >= {"preflight.ipynb", "shift-traffic.ipynb", "analyze.ipynb",
                                     "promote.ipynb", "rollback.ipynb", "README.md"}

    up = run("canarykit", "lab", "up", "--data-dir", "lab", "--rate", "100")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        told = exports(up.stdout)
        assert told["KUBECONFIG"] == str(elsewhere / "lab" / "kubeconfig")
        assert told[PROMETHEUS_URL_ENV].startswith("http://127.0.0.1:")
        plan = {**yaml.safe_load(PLAN.read_text()), **SHORT, "kubeconfig": told["KUBECONFIG"],
                "prometheus": {"url": told[PROMETHEUS_URL_ENV]}, "reports": "releases"}
        (elsewhere / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
        time.sleep(10)  # a baseline of stable traffic for the preflight's window
        done = run("canarykit", "rollout", "run", "plan.yaml", timeout=400)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        down = run("canarykit", "lab", "down", "--data-dir", "lab")
    assert down.returncode == 0, down.stderr
    (folder,) = (elsewhere / "releases" / "reviews").iterdir()
    summary = json.loads((folder / "release.json").read_text())
    assert summary["status"] == "promoted", summary
    assert [p["name"] for p in summary["phases"]] == ["preflight", "shift-25", "analyze-25",
                                                      "promote"]
    assert (folder / "report.html").stat().st_size > 0
    assert f"report: {folder / 'report.html'}" in done.stdout
    print(f"install {installed - began:.0f} s, lab and rollout "
          f"{time.monotonic() - installed:.0f} s")
