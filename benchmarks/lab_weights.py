"""Lab benchmark: how fast a weight change reaches Envoy, and how much the lab carries.

Starts a lab of its own (load generator paused), then:
- propagation: `cluster.set_weight` alternates the canary between 0 and 100; for each change it
  measures the time from `set_weight` returning to (a) the new config version appearing in
  Envoy's admin `/config_dump` and (b) the first response from the new split, probed with a
  new connection per request (keep-alive connections keep the old route until Envoy drains
  them, about a second). Median and p95 over `--changes` changes; also `set_weight` itself
  (validation, dry run, apply and audit record).
- the pipeline alone: the same changes as a plain merge patch of the VirtualService through the
  official client, from sending the patch to the new version in `/config_dump` (watch event,
  translation, file move, Envoy reload), next to the patch call's own duration. The config
  usually reaches Envoy before the API server's answer reaches the client, so the times after
  a call returns are one admin poll (~2 ms), the resolution of this measurement.
- throughput: requests per second through Envoy to v1/v2 at a 50/50 split, from the load
  generator at an unreachable rate (closed loop, `--concurrency` connections) for `--seconds`;
  everything (Envoy, replicas, load generator, Prometheus) shares the machine's cores.

Usage: python benchmarks/lab_weights.py [--changes 50] [--seconds 10] [--concurrency 32]
                                        [--json FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client, config  # noqa: E402

from canarykit.cluster import client as cluster  # noqa: E402
from canarykit.lab import processes as lab  # noqa: E402
from canarykit.lab.loadgen import LoadGenerator  # noqa: E402
from canarykit.lab.processes import LabConfig, VersionSettings  # noqa: E402
from canarykit.lab.workload import VERSION_HEADER  # noqa: E402
from canarykit.mesh.istio import ISTIO_GROUP  # noqa: E402

TIMEOUT_S = 20.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))]


def probe(state: lab.LabState) -> str:
    """The version answering one request on a new connection ("none" without an answer)."""
    host, port = state.envoy_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": state.service, "Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.getheader(VERSION_HEADER) or "none"
    except OSError:
        return "none"
    finally:
        conn.close()


def propagation(state: lab.LabState, changes: int, audit_log: Path) -> dict[str, list[float]]:
    kube = cluster.connect(state.kubeconfig)
    out: dict[str, list[float]] = {"apply": [], "config": [], "response": []}
    previous = lab.envoy_version(state)
    for i in range(changes + 1):
        canary = 100 if i % 2 == 0 else 0
        target = "v2" if canary == 100 else "v1"
        started = time.perf_counter()
        cluster.set_weight(kube, state.service, canary, audit_log=audit_log)
        applied = time.perf_counter()
        config_at = response_at = None
        while config_at is None or response_at is None:
            now = time.perf_counter()
            if now - applied > TIMEOUT_S:
                raise SystemExit(f"change {i} did not reach Envoy within {TIMEOUT_S:g}s")
            if config_at is None and lab.envoy_version(state) not in (None, previous):
                config_at = time.perf_counter()
            if response_at is None and probe(state) == target:
                response_at = time.perf_counter()
        previous = lab.envoy_version(state)
        if i == 0:
            continue  # the first change also begins the rollout (one more write): not counted
        out["apply"].append((applied - started) * 1e3)
        out["config"].append((config_at - applied) * 1e3)
        out["response"].append((response_at - applied) * 1e3)
    return out


def raw_patches(state: lab.LabState, changes: int) -> dict[str, list[float]]:
    """Patch sent -> new config version in Envoy (watch, translate, reload); patch call time."""
    api = config.new_client_from_config(config_file=state.kubeconfig)
    custom = client.CustomObjectsApi(api)
    out: dict[str, list[float]] = {"patch_call": [], "patch": []}
    try:
        previous = lab.envoy_version(state)
        for i in range(changes + 1):
            canary = 50 if i == 0 else 100 if i % 2 else 0  # the first only sets a known start
            patch = {"spec": {"http": [{"name": "primary", "route": [
                {"destination": {"host": state.service, "subset": "v1"}, "weight": 100 - canary},
                {"destination": {"host": state.service, "subset": "v2"}, "weight": canary}]}]}}
            sent = time.perf_counter()
            custom.patch_namespaced_custom_object(ISTIO_GROUP, "v1", state.namespace,
                                                  "virtualservices", state.service, patch)
            written = time.perf_counter()
            while (version := lab.envoy_version(state)) in (None, previous):
                if time.perf_counter() - written > TIMEOUT_S:
                    raise SystemExit(f"patch {i} did not reach Envoy within {TIMEOUT_S:g}s")
            if i:
                out["patch"].append((time.perf_counter() - sent) * 1e3)
                out["patch_call"].append((written - sent) * 1e3)
            previous = version
    finally:
        api.close()
    return out


def throughput(state: lab.LabState, seconds: float, concurrency: int,
               audit_log: Path) -> dict[str, float]:
    cluster.set_weight(cluster.connect(state.kubeconfig), state.service, 50, audit_log=audit_log)
    lab.wait_for_routing(state)
    generator = LoadGenerator(state.envoy_url, state.service, rate=1e6, mix="plain=1",
                              concurrency=concurrency, timeout=10).start()
    time.sleep(1.0)  # warm up: connections open, threads running
    generator.reset()
    started = time.perf_counter()
    time.sleep(seconds)
    stats = generator.stats()
    elapsed = time.perf_counter() - started
    generator.stop()
    latency = stats.latency_summary()
    return {"requests": stats.sent, "seconds": elapsed, "rps": stats.sent / elapsed,
            "errors": stats.sent - stats.by_status.get("200", 0),
            "v2_share": stats.share("v2"), "p50_ms": latency["p50"], "p99_ms": latency["p99"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=1.0,
                        help="median latency of the replicas (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    command = "python benchmarks/lab_weights.py " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="canarykit-bench-") as work:
        replicas = {"latency_median_ms": args.latency_ms, "latency_sigma": 0.2}
        config = LabConfig(data_dir=str(Path(work) / "lab"), rate=0,
                           versions={"v1": VersionSettings(**replicas),
                                     "v2": VersionSettings(**replicas)})
        state = lab.up(config)
        try:
            audit_log = Path(work) / "audit.jsonl"
            times = propagation(state, args.changes, audit_log)
            times.update(raw_patches(state, args.changes))
            load = throughput(state, args.seconds, args.concurrency, audit_log)
        finally:
            lab.down(state.data_dir)
    rows = [("set_weight call (validate, dry run, apply, audit)", times["apply"]),
            ("set_weight returned -> new version in Envoy /config_dump", times["config"]),
            ("set_weight returned -> first response from the new split", times["response"]),
            ("VirtualService merge patch call (official client)", times["patch_call"]),
            ("VirtualService patch sent -> new version in Envoy /config_dump", times["patch"])]
    print(f"# lab benchmark: {args.changes} weight changes (0 <-> 100), "
          f"{os.cpu_count()} CPUs\n")
    print("| measure | median ms | p95 ms | max ms |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in rows:
        print(f"| {name} | {statistics.median(values):.1f} | {percentile(values, 0.95):.1f} | "
              f"{max(values):.1f} |")
    print(f"\nthroughput through Envoy (50/50 split, {args.concurrency} connections, "
          f"{load['seconds']:.1f} s): {load['rps']:.0f} requests/s, {load['errors']} errors, "
          f"v2 share {load['v2_share']:.3f}, p50 {load['p50_ms']:.1f} ms, "
          f"p99 {load['p99_ms']:.1f} ms")
    print(f"\ncommand: {command}")
    if args.json:
        summary = {name: {"median_ms": statistics.median(v), "p95_ms": percentile(v, 0.95),
                          "max_ms": max(v), "values_ms": v} for name, v in rows}
        args.json.write_text(json.dumps({"command": command, "changes": args.changes,
                                         "cpus": os.cpu_count(), "propagation": summary,
                                         "throughput": load}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
