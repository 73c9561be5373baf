"""Benchmark: time from the canary turning bad to all traffic back on the stable version.

Starts a lab of its own with the load generator at 100 requests/s, then per repetition runs
`canarykit rollout run` (a subprocess, as a user would) of a plan that shifts 25% to v2 and
analyses it until a verdict, re-checking every 5 s. Once the analysis has watched a healthy
canary for `--healthy` seconds, v2 turns bad (`lab.set_behaviour`: 50% 503s, 300 ms median
latency) and the clock starts. Measured from that moment:

- vs: the VirtualService is back at the pre-rollout split (v1 100, v2 0, no rollout state);
- envoy: Envoy serves a configuration built from that VirtualService (its config version, as
  `lab.wait_for_routing` reads it from the admin API);
- traffic: the last response the load generator got from v2 (its per-version counts stop
  growing; kept-alive connections drain shortly after the new configuration).

Target: traffic <= 30 s. Prints each repetition and the median and max.

Usage: python benchmarks/rollback_time.py [--repeat 3] [--healthy 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from kubernetes import client  # noqa: E402

from canarykit.cluster import client as cluster  # noqa: E402
from canarykit.cluster import state as rollout_state  # noqa: E402
from canarykit.lab import processes as lab  # noqa: E402
from canarykit.lab.processes import LabConfig  # noqa: E402
from canarykit.rollout import driver as rollout  # noqa: E402

TARGET_S = 30.0
QUIET_S = 3.0  # v2's count unchanged this long after Envoy switched: traffic is all on v1


def write_plan(folder: Path, state: lab.LabState) -> Path:
    plan = {
        "service": state.service, "namespace": state.namespace,
        "kubeconfig": state.kubeconfig, "prometheus": {"url": state.prometheus_url},
        "reports": str(folder / "reports"),
        "preflight": {"baseline_window": "10s"},
        "analysis": {"window": "30s", "interval": "5s", "check_every": "5s",
                     "max_duration": "10m", "min_requests": 50},
        "steps": [{"weight": 25}, {"promote": {}}],
    }
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def analysing(kube: cluster.Cluster, service: str) -> bool:
    state = rollout.lease_state(rollout.read_lease(kube, service))
    current = (state.current or {}) if state else {}
    return current.get("name") == "analyze-25" and current.get("status") == "running"


def restored(kube: cluster.Cluster, service: str) -> dict | None:
    """The VirtualService when it is back at all-v1 with no rollout, else None."""
    vs = cluster.find_virtual_service(kube, service)
    split = {d["destination"].get("subset"): d.get("weight")
             for d in vs["spec"]["http"][0]["route"]}
    if split == {"v1": 100, "v2": 0} and rollout_state.read_state(vs) is None:
        return vs
    return None


def wait(condition, what: str, timeout: float, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(every)


def once(state: lab.LabState, plan: Path, work: Path, healthy: float) -> dict:
    lab.reset(state)
    kube = cluster.connect(state.kubeconfig)
    try:
        client.CoordinationV1Api(kube.api).delete_namespaced_lease(
            rollout.lease_name(state.service), state.namespace)
    except client.exceptions.ApiException as exc:
        if exc.status != 404:
            raise
    log = open(work / "rollout.log", "a")  # noqa: SIM115 - closed below
    runner = subprocess.Popen(
        [sys.executable, "-m", "canarykit.rollout.driver", "run", str(plan)], cwd=work,
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait(lambda: analysing(kube, state.service), "the analysis at 25%", 120)
        time.sleep(healthy)  # the analysis watches a healthy canary for a while
        start = time.time()
        lab.set_behaviour(state, "v2", error_rate=0.5, latency_median_ms=300.0)
        vs = wait(lambda: restored(kube, state.service), "the rollback", 120, every=0.02)
        at_vs = time.time()
        version = int(vs["metadata"]["resourceVersion"])
        lab.wait_for_routing(state, {"virtualservices": version}, timeout=30)
        at_envoy = time.time()
        last_count, last_change = lab.load_stats(state).by_version.get("v2", 0), at_envoy
        while time.time() - last_change < QUIET_S:
            count = lab.load_stats(state).by_version.get("v2", 0)
            if count != last_count:
                last_count, last_change = count, time.time()
            time.sleep(0.05)
        code = runner.wait(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        log.close()
    folders = sorted((work / "reports" / state.service).iterdir(), key=os.path.getmtime)
    summary = json.loads((folders[-1] / "release.json").read_text())
    return {"vs_s": round(at_vs - start, 2), "envoy_s": round(at_envoy - start, 2),
            "traffic_s": round(max(last_change, at_envoy) - start, 2), "exit": code,
            "status": summary["status"], "release": str(folders[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--healthy", type=float, default=10.0,
                        help="seconds of healthy canary before it turns bad")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="canarykit-rollback-time-"))
    state = lab.up(LabConfig(data_dir=str(work / "lab"), rate=100))
    runs = []
    try:
        plan = write_plan(work, state)
        for number in range(1, args.repeat + 1):
            run = once(state, plan, work, args.healthy)
            runs.append(run)
            print(f"run {number}: VirtualService restored {run['vs_s']:.2f}s, Envoy serving it "
                  f"{run['envoy_s']:.2f}s, last v2 response {run['traffic_s']:.2f}s after v2 "
                  f"turned bad; release {run['status']} (exit {run['exit']})", flush=True)
    finally:
        lab.down(state.data_dir)
    figures = {key: {"median": statistics.median(r[key] for r in runs),
                     "max": max(r[key] for r in runs)}
               for key in ("vs_s", "envoy_s", "traffic_s")}
    command = "python " + shlex.join(["benchmarks/rollback_time.py", *(argv or sys.argv[1:])])
    print(f"\nv2 bad -> all traffic on v1, over {len(runs)} runs at 100 requests/s, 25% canary, "
          f"checks every 5s:")
    for key, label in (("vs_s", "VirtualService restored"), ("envoy_s", "Envoy serving v1 only"),
                       ("traffic_s", "last v2 response")):
        print(f"  {label:<24} median {figures[key]['median']:.1f}s  max {figures[key]['max']:.1f}s")
    ok = all(r["status"] == "rolled-back" for r in runs) and figures["traffic_s"]["max"] <= TARGET_S
    print(f"target <= {TARGET_S:.0f}s: {'met' if ok else 'NOT met'}    ({command})")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "figures": figures, "command": command},
                                        indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
