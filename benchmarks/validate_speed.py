"""Throughput of `canarykit validate` on ordinary Istio YAML, end to end and the load alone.

    python benchmarks/validate_speed.py [--megabytes 4] [--repeat 3]

Generates a multi-document stream of ordinary VirtualServices and DestinationRules (header and
cookie matches, weighted splits, retries, timeouts, mirrors, fault injection, subsets with
traffic policies; block style as kubectl and Helm write it), then measures:
- load: `canarykit.core.yamlsafe.load_all` alone (bounds, duplicate keys, construction);
- checks: `validate.analyze` on the loaded objects;
- end to end: `canarykit validate FILE` in a fresh process (start-up included).
Target: at least 5 MB/s end to end. Prints one table; the figure goes to the README with the
core count.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_MB_S = 5.0

VIRTUAL_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: svc-{n}
  namespace: team-{team}
  labels:
    app.kubernetes.io/name: svc-{n}
    app.kubernetes.io/part-of: shop
  annotations:
    owner: "team-{team}@example.com"
spec:
  hosts:
  - svc-{n}
  - svc-{n}.team-{team}.svc.cluster.local
  gateways:
  - mesh
  http:
  - name: internal-canary
    match:
    - headers:
        x-canary-user:
          exact: "true"
    - headers:
        cookie:
          regex: "^(.*?;)?(canary=yes)(;.*)?$"
    route:
    - destination:
        host: svc-{n}
        subset: v2
        port:
          number: 8080
  - name: api
    match:
    - uri:
        prefix: /api/v{n}
      method:
        exact: GET
    route:
    - destination:
        host: svc-{n}
        subset: v1
      weight: 90
    - destination:
        host: svc-{n}
        subset: v2
      weight: 10
    timeout: 2.5s
    retries:
      attempts: 3
      perTryTimeout: 500ms
      retryOn: 5xx,reset,connect-failure,503
    mirror:
      host: svc-{n}
      subset: v2
    mirrorPercentage:
      value: 12.5
  - name: default
    route:
    - destination:
        host: svc-{n}
        subset: v1
      weight: 100
    fault:
      delay:
        percentage:
          value: 0.1
        fixedDelay: 5s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: svc-{n}
  namespace: team-{team}
spec:
  host: svc-{n}
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
      http:
        http1MaxPendingRequests: 1024
        maxRequestsPerConnection: 10
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 50
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpCookie:
            name: user
            ttl: 0s
"""


def ordinary_yaml(megabytes: float) -> str:
    """A multi-document stream of about `megabytes` MB, every object valid."""
    parts: list[str] = []
    size = n = 0
    while size < megabytes * 1_000_000:
        part = VIRTUAL_SERVICE.format(n=n, team=n % 17)
        parts.append(part)
        size += len(part) + 4
        n += 1
    return "---\n".join(parts)


# As an installed package runs: with its bytecode cached (pip compiles it on install; a
# PYTHONDONTWRITEBYTECODE shell would otherwise recompile every module on every start).
INSTALLED = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def best(seconds: list[float]) -> float:
    return min(seconds)


def measure(megabytes: float, repeat: int) -> list[tuple[str, float, float]]:
    from canarykit.core import yamlsafe
    from canarykit.mesh import validate

    text = ordinary_yaml(megabytes)
    size = len(text.encode()) / 1_000_000
    loads, checks, ends = [], [], []
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "mesh.yaml"
        path.write_text(text, encoding="utf-8")
        subprocess.run([sys.executable, "-m", "canarykit", "validate", "--help"], cwd=REPO,
                       capture_output=True, check=True, env=INSTALLED)  # caches the bytecode
        for _ in range(repeat):
            started = time.perf_counter()
            objects = yamlsafe.load_all(text, str(path))
            loads.append(time.perf_counter() - started)
            gc.disable()  # as `canarykit validate` does while it checks
            started = time.perf_counter()
            messages = validate.analyze(objects)
            checks.append(time.perf_counter() - started)
            gc.enable()
            assert not messages, messages[:3]
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "canarykit", "validate", str(path)],
                                  cwd=REPO, capture_output=True, text=True, check=False,
                                  env=INSTALLED)
            ends.append(time.perf_counter() - started)
            assert done.returncode == 0, done.stdout[-500:] + done.stderr[-500:]
    return [(name, size, best(times)) for name, times in
            (("load (yamlsafe.load_all)", loads), ("checks (validate.analyze)", checks),
             ("end to end (canarykit validate)", ends))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = measure(args.megabytes, args.repeat)
    print(f"validate throughput, {rows[0][1]:.2f} MB of ordinary Istio YAML, best of "
          f"{args.repeat}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"{'what':<34}{'seconds':>9}{'MB/s':>9}")
    for name, size, seconds in rows:
        print(f"{name:<34}{seconds:>9.3f}{size / seconds:>9.1f}")
    end_to_end = rows[-1][1] / rows[-1][2]
    verdict = "meets" if end_to_end >= TARGET_MB_S else "MISSES"
    print(f"end to end {end_to_end:.1f} MB/s {verdict} the target of {TARGET_MB_S:g} MB/s")
    return 0 if end_to_end >= TARGET_MB_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
