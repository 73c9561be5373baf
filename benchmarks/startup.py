"""Start-up cost of what users and schedulers call most: the CLI and one runbook phase.

    python benchmarks/startup.py [--repeat 7]

Measures, as wall time of fresh processes (what a cron job or a shell pays):
- `canarykit --version`, `canarykit --help`            target <= 0.3 s
- `canarykit validate examples/reviews.yaml`           target <= 1 s
- `canarykit status reviews` against the local API server   target <= 1.5 s
and the per-phase overhead of a runbook executed the way the driver executes it (papermill
start, kernel start, imports, the phase, reading the result back; papermill already imported, as
in `rollout run`): the shift-traffic runbook, whose phase does no waiting, alternating weights.
Target <= 3 s median. Prints one table; the figures go to the README with the core count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from canarykit.lab import processes as lab  # noqa: E402
from tests.apiserver_fixture import seed, start_apiserver, stop_apiserver_process  # noqa: E402

CLI = [sys.executable, "-m", "canarykit"]
TARGETS = {"--version": 0.3, "--help": 0.3, "validate": 1.0, "status": 1.5, "phase": 3.0}


def wall(command: list[str], repeat: int, cwd: Path) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def phase_overhead(kubeconfig: Path, work: Path, repeat: int) -> list[float]:
    """Execute shift-traffic as the driver does, timing papermill + kernel + read-back."""
    from importlib.resources import files

    from canarykit.rollout import driver, runbook

    papermill = runbook.import_papermill()
    source = files("canarykit") / "runbooks" / "shift-traffic.ipynb"
    times = []
    for number in range(repeat):
        output = work / f"{number:02d}-shift.ipynb"
        started = time.perf_counter()
        papermill.execute_notebook(
            str(source), str(output), kernel_name=driver.KERNEL, progress_bar=False,
            log_output=False, cwd=str(work),
            parameters={"service": "reviews", "namespace": "default", "stable": "v1",
                        "canary": "v2", "kubeconfig": str(kubeconfig),
                        "audit_log": str(work / "audit.jsonl"),
                        "canary_weight": 10 if number % 2 else 20})
        result, error = runbook.read_notebook(output)
        times.append(time.perf_counter() - started)
        if error or not result or result.outcome is not runbook.Outcome.OK:
            raise SystemExit(f"shift-traffic failed: {error or result}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="canarykit-startup-") as tmp:
        work = Path(tmp)
        figures["--version"] = wall([*CLI, "--version"], args.repeat, work)
        figures["--help"] = wall([*CLI, "--help"], args.repeat, work)
        figures["validate"] = wall([*CLI, "validate", str(REPO / "examples/reviews.yaml")],
                                   args.repeat, work)
        server = start_apiserver(work / "apiserver")
        try:
            cfg = lab.LabConfig()
            seed(server, lab.seed_service(cfg), lab.seed_destination_rule(cfg),
                 lab.seed_virtual_service(cfg))
            figures["status"] = wall([*CLI, "status", "reviews", "-n", "default",
                                      "--kubeconfig", str(server.kubeconfig)], args.repeat, work)
            figures["phase"] = phase_overhead(server.kubeconfig, work, args.repeat)
        finally:
            stop_apiserver_process(server.process)
    print(f"{os.cpu_count()} cores, {args.repeat} runs each, seconds")
    print(f"{'measure':12} {'median':>7} {'min':>7} {'max':>7} {'target':>7}")
    for name, times in figures.items():
        print(f"{name:12} {statistics.median(times):7.2f} {min(times):7.2f} {max(times):7.2f} "
              f"{TARGETS[name]:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
