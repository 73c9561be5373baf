"""Benchmark: many services rolled out at once, each by `canarykit rollout step` from "cron".

Issue 14 §4. A cluster runs one CronJob per plan; when many services release at the same time,
their `rollout step` runs all hit the API server together, and overlapping runs of one CronJob
(a slow pod still running when the next starts, or two schedulers) race for one lease. This
measures what that costs and checks that nothing is lost or done twice.

For each N (`--services 1,10,50`) it starts a fresh local API server
(`python -m canarykit.lab.apiserver`, the real Kubernetes REST protocol), creates N different
services in one namespace as `canarykit lab` creates its demo (Service, a v1 and a v2
Deployment, DestinationRule, VirtualService; through the official client), and writes one plan
per service: preflight, 10 %, 50 %, promote, no analysis, no pause. Then it ticks: a tick starts
every service's `canarykit rollout step PLAN` process at once, plus (unless `--no-second-runner`)
a second one per service, like two overlapping CronJob pods, and waits for all; ticks repeat
until every release is over. Preflight's baseline queries go to a stub Prometheus in this
process that answers in microseconds (a healthy v1), so what is measured is the driver, its
runbook kernels and the API server.

Reported per N: a tick's wall time, the `rollout step` process durations (p50/p90/max, all of
them and those that executed a phase), the API server's requests per step process (its
GET /debug/requests counts, taken before and after each tick) and the CPU time the step
processes (with their kernels) and the API server used. Wall times depend on what else the
machine runs; CPU seconds much less, so both are reported, with the load average.

Checked, from the API server's watch streams of Leases and VirtualServices and from the
release folders:

- no update lost: every VirtualService ends 100 % on v2 with no rollout in progress, was
  updated exactly as often as the phases should (begin_rollout, one per weight, promote), every
  phase ran exactly once and the release ended promoted, and each release's audit log verifies
  against the cluster (`canarykit audit verify FOLDER --cluster`);
- no lease held twice: a Lease's holder never changes from one runner to another while the
  first one's lease is live, each runner holds it in one unbroken stretch, every step that
  acted (or found nothing to do) held the lease, and every other step said "another runner
  holds lease".

Also reported, as warnings: a holder that wrote its lease after the lease had expired (it
kept acting unrenewed; nobody took the lease meanwhile, but another runner could have).
Exit 0 when every check passes, 1 otherwise.

Usage: python benchmarks/concurrency.py [--services 1,10,50] [--max-parallel K]
       [--output text|json] [--json FILE] [--no-second-runner] [--weights 10,50]
       [--lease-seconds 60] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402

from canarykit.cluster import audit  # noqa: E402
from canarykit.cluster import client as cluster  # noqa: E402
from canarykit.cluster.state import read_state  # noqa: E402
from canarykit.lab import processes as lab  # noqa: E402
from canarykit.rollout import driver as rollout  # noqa: E402

ISTIO = "networking.istio.io"
NAMESPACE = "default"
STABLE, CANARY = "v1", "v2"
START_SECONDS = 30
STEP_TIMEOUT_SECONDS = 900  # one `rollout step` process; killed (by PID) past it
DRAIN_SECONDS = 30  # for the watches to deliver the last changes
WATCH_SECONDS = 6 * 3600
BUSY = "another runner holds lease"
TAKEN_OVER = "was taken over by another runner"  # the driver's LeaseLost
PHASE_LINE = re.compile(r"^\s*\d+\s{2}(\S+)\s+(\S+)\s+[\d.]+s")


# ---------------------------------------------------------------- the API server


@dataclass
class Server:
    process: subprocess.Popen
    kubeconfig: Path
    log: Path


def start_apiserver(work: Path, tls: bool) -> Server:
    """`python -m canarykit.lab.apiserver` on a free loopback port, once its kubeconfig is
    written (as the lab starts it)."""
    kubeconfig, log = work / "kubeconfig", work / "apiserver.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "canarykit.lab.apiserver", "--port", "0", "--host",
             "127.0.0.1", "--data", str(work / "data"), "--kubeconfig", str(kubeconfig),
             *(["--tls"] if tls else [])],
            cwd=work, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_SECONDS
    while not kubeconfig.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise SystemExit(f"the API server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return Server(process, kubeconfig, log)


def stop_process(process: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM by PID, then SIGKILL if it will not stop."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def request_counts(api: client.ApiClient) -> dict[tuple, int]:
    """The API server's GET /debug/requests: (verb, resource, dryRun, code) -> requests."""
    answer = api.call_api(*api.param_serialize("GET", "/debug/requests",
                                               auth_settings=["BearerToken"]))
    answer.read()
    return {(r["verb"], r["resource"], r["dryRun"], r["code"]): r["count"]
            for r in json.loads(answer.data)["requests"]}


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of the processes this one has waited for (and theirs): the step processes
    and their runbook kernels."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def counts_between(before: dict[tuple, int], after: dict[tuple, int]) -> Counter:
    return Counter({key: after[key] - before.get(key, 0) for key in after
                    if after[key] != before.get(key, 0)})


# ---------------------------------------------------------------- services and plans


def service_names(n: int) -> list[str]:
    return [f"svc-{number:03d}" for number in range(1, n + 1)]


def seed(api: client.ApiClient, services: list[str]) -> None:
    """Each service's objects, made by the lab's own builders, through the official client."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    for service in services:
        cfg = lab.LabConfig(service=service, namespace=NAMESPACE)
        core.create_namespaced_service(NAMESPACE, lab.seed_service(cfg))
        for version in (STABLE, CANARY):
            apps.create_namespaced_deployment(NAMESPACE, lab.seed_deployment(cfg, version))
        for plural, body in (("destinationrules", lab.seed_destination_rule(cfg)),
                             ("virtualservices", lab.seed_virtual_service(cfg))):
            custom.create_namespaced_custom_object(ISTIO, "v1", NAMESPACE, plural, body)


def write_plan(folder: Path, service: str, kubeconfig: Path, prometheus: str,
               weights: list[int]) -> Path:
    """Preflight, the weights, promote: no analysis (nothing to judge) and no pause, so every
    tick has a phase due."""
    plan = {"service": service, "namespace": NAMESPACE, "stable": STABLE, "canary": CANARY,
            "kubeconfig": str(kubeconfig), "prometheus": {"url": prometheus},
            "reports": str(folder / "reports"), "pause": "0s",
            "preflight": {"baseline_window": "10s"},
            "steps": [*({"weight": w, "analysis": False} for w in weights), {"promote": {}}]}
    path = folder / "plans" / f"{service}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def expected_phases(weights: list[int]) -> list[str]:
    return ["preflight", *(f"shift-{w}" for w in weights), "promote"]


def expected_vs_updates(weights: list[int]) -> int:
    """begin_rollout (the pre-rollout snapshot, with the first weight's phase), one write per
    weight, one for promote: what the phases should make, no more and no less."""
    return 1 + len(weights) + 1


# ---------------------------------------------------------------- a stub Prometheus


class StubPrometheus(BaseHTTPRequestHandler):
    """Enough of Prometheus's HTTP API for preflight: it answers, v1 has a healthy baseline
    (1000 requests, no 5xx), and every other query has no series."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.answer(parse_qs(urlsplit(self.path).query))

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        self.answer({**parse_qs(urlsplit(self.path).query), **form})

    def answer(self, params: dict[str, list[str]]) -> None:
        query = (params.get("query") or [""])[0]
        at = float((params.get("time") or [time.time()])[0])
        ranged = urlsplit(self.path).path.endswith("/query_range")
        body = json.dumps({"status": "success", "data": {
            "resultType": "matrix" if ranged else "vector",
            "result": [] if ranged else stub_series(query, at)}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def stub_series(query: str, at: float) -> list[dict[str, Any]]:
    if query.strip() == "vector(1)":
        return [{"metric": {}, "value": [at, "1"]}]
    label = re.match(r"sum by \((\w+)\) \(increase\(istio_requests_total\{", query)
    if label and "response_code" not in query:
        return [{"metric": {label[1]: STABLE}, "value": [at, "1000"]}]
    return []


def start_prometheus() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubPrometheus)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="stub-prometheus", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# ---------------------------------------------------------------- the API server's record


class Recorder:
    """Every version of every Lease and VirtualService in the namespace, in the API server's
    order, from two watches started before the first tick (the server's own history of
    changes: nothing a poll could miss)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.lock = threading.Lock()
        # kind -> (event type, object, when it arrived here: the server's time, give or take
        # the watch's delivery)
        self.events: dict[str, list[tuple[str, dict, float]]] = {"leases": [],
                                                                 "virtualservices": []}
        self.latest: dict[tuple[str, str], str] = {}  # (kind, name) -> resourceVersion seen

    def start(self) -> None:
        for kind in self.events:
            api = config.new_client_from_config(config_file=str(self.kubeconfig))
            listing, stream = self.lister(api, kind)
            found = listing()
            for item in found["items"]:
                self.latest[kind, item["metadata"]["name"]] = item["metadata"]["resourceVersion"]
            since = found["metadata"]["resourceVersion"]
            threading.Thread(target=self.follow, args=(kind, stream, since),
                             name=f"watch-{kind}", daemon=True).start()

    @staticmethod
    def lister(api: client.ApiClient, kind: str):
        """(a call listing `kind` as plain JSON, the client method a watch streams)."""
        if kind == "leases":
            leases = client.CoordinationV1Api(api)
            return (lambda: json.loads(leases.list_namespaced_lease(
                NAMESPACE, _preload_content=False).data),
                lambda **kw: leases.list_namespaced_lease(NAMESPACE, **kw))
        custom = client.CustomObjectsApi(api)
        return (lambda: custom.list_namespaced_custom_object(ISTIO, "v1", NAMESPACE, kind),
                lambda **kw: custom.list_namespaced_custom_object(
                    ISTIO, "v1", NAMESPACE, kind, **kw))

    def follow(self, kind: str, stream: Any, since: str) -> None:
        for event in watch.Watch().stream(stream, resource_version=since,
                                          timeout_seconds=WATCH_SECONDS):
            obj = event["raw_object"]
            with self.lock:
                self.events[kind].append((event["type"], obj, time.time()))
                self.latest[kind, obj["metadata"]["name"]] = obj["metadata"]["resourceVersion"]

    def drain(self, api: client.ApiClient) -> None:
        """Wait until the watches have delivered every object as the server has it now."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while True:
            wanted = {}
            for kind in self.events:
                listing, _ = self.lister(api, kind)
                for item in listing()["items"]:
                    wanted[kind, item["metadata"]["name"]] = item["metadata"]["resourceVersion"]
            with self.lock:
                if all(self.latest.get(key) == rv for key, rv in wanted.items()):
                    return
            if time.monotonic() > deadline:
                raise SystemExit("the watches did not deliver every change")
            time.sleep(0.2)

    def history(self, kind: str, name: str) -> list[tuple[str, dict, float]]:
        with self.lock:
            return [e for e in self.events[kind] if e[1]["metadata"]["name"] == name]


# ---------------------------------------------------------------- ticks


@dataclass
class Step:
    """One `rollout step` process and what it said."""

    tick: int
    service: str
    runner: str  # the driver's runner id: HOST:PID
    seconds: float
    ended: float  # when it exited (Unix time)
    code: int
    kind: str  # acted, busy (another runner held the lease), not-due, done, error
    phases: list[str] = field(default_factory=list)
    output: str = ""


def step_command(plan: Path, lease_seconds: int) -> list[str]:
    return [sys.executable, "-m", "canarykit", "rollout", "step", str(plan),
            "--lease-seconds", str(lease_seconds)]


def step_environment() -> dict[str, str]:
    """Ours without the fallbacks a plan could use: each plan names its cluster and
    Prometheus, as a CronJob's would."""
    dropped = ("KUBECONFIG", rollout.PROMETHEUS_URL_ENV)
    return {k: v for k, v in os.environ.items() if k not in dropped}


def classify(code: int, output: str) -> tuple[str, list[str]]:
    phases = [m[1] for m in map(PHASE_LINE.match, output.splitlines()) if m]
    if code != 0:
        return "error", phases
    if phases:
        return "acted", phases
    if BUSY in output:
        return "busy", phases
    if "nothing to do now" in output:
        return "not-due", phases
    return "done", phases


def run_tick(number: int, plans: dict[str, Path], runners: int, lease_seconds: int,
             logs: Path, max_parallel: int | None = None) -> list[Step]:
    """Run every service's step process(es), at most `max_parallel` at a time (all at once by
    default), a service's runners one after the other in the queue so that they still race;
    wait for all of them."""
    folder = logs / f"tick-{number:02d}"
    folder.mkdir(parents=True)
    env = step_environment()
    queue = [(service, plan, index) for service, plan in plans.items() for index in range(runners)]
    limit = max_parallel or len(queue)
    started: list[tuple[str, Path, subprocess.Popen, float]] = []
    ended: dict[int, float] = {}
    while queue or len(ended) < len(started):
        while queue and len(started) - len(ended) < limit:
            service, plan, index = queue.pop(0)
            log = folder / f"{service}-{index}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(step_command(plan, lease_seconds), cwd=logs.parent,
                                           env=env, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
            started.append((service, log, process, time.monotonic()))
        for _, _, process, began in started:
            if process.pid in ended:
                continue
            if process.poll() is None and time.monotonic() - began > STEP_TIMEOUT_SECONDS:
                stop_process(process, grace=5)
            if process.poll() is not None:
                ended[process.pid] = time.monotonic()
        time.sleep(0.01)
    host = socket.gethostname()
    steps = []
    for service, log, process, began in started:
        output = log.read_text(errors="replace")
        kind, phases = classify(process.returncode, output)
        seconds = ended[process.pid] - began
        steps.append(Step(number, service, f"{host}:{process.pid}", seconds,
                          time.time() - (time.monotonic() - ended[process.pid]),
                          process.returncode, kind, phases, output))
    return steps


def release_states(kube: cluster.Cluster, services: list[str]) -> dict[str, Any]:
    return {s: rollout.lease_state(rollout.read_lease(kube, s)) for s in services}


# ---------------------------------------------------------------- checks


def canary_share(vs: dict[str, Any]) -> list[int]:
    """Per HTTP route, the weight its destinations give the canary (a lone one weighs 100)."""
    shares = []
    for route in (vs.get("spec") or {}).get("http") or []:
        destinations = route.get("route") or []
        shares.append(sum(d.get("weight", 100 if len(destinations) == 1 else 0)
                          for d in destinations
                          if (d.get("destination") or {}).get("subset") == CANARY))
    return shares


def update_problems(service: str, kube: cluster.Cluster, recorder: Recorder,
                    steps: list[Step], state: Any, weights: list[int]) -> list[str]:
    """No update lost or made twice, for one service."""
    problems = []
    vs = cluster.find_virtual_service(kube, service)
    if set(canary_share(vs)) != {100} or read_state(vs) is not None:
        problems.append(f"{service}: VirtualService ends at canary shares {canary_share(vs)} "
                        f"with rollout state {read_state(vs)}, not 100 % on {CANARY}")
    updates = sum(t == "MODIFIED" for t, _, _ in recorder.history("virtualservices", service))
    if updates != expected_vs_updates(weights):
        problems.append(f"{service}: {updates} VirtualService updates, the phases make "
                        f"{expected_vs_updates(weights)}")
    ran = [phase for step in steps if step.service == service for phase in step.phases]
    if ran != expected_phases(weights):
        problems.append(f"{service}: the steps ran phases {ran}, the plan has "
                        f"{expected_phases(weights)}")
    if state is None or state.status != "promoted":
        problems.append(f"{service}: release {getattr(state, 'release', None)} is "
                        f"{getattr(state, 'status', 'missing')}, not promoted")
    else:
        recorded = json.loads((Path(state.folder) / "release.json").read_text())["phases"]
        if [(p["name"], p["outcome"]) for p in recorded] != [
                (name, "ok") for name in expected_phases(weights)]:
            problems.append(f"{service}: release.json records phases "
                            f"{[(p['name'], p['outcome'], p.get('error')) for p in recorded]}, "
                            f"not each of {expected_phases(weights)} once and ok")
        check = cluster.verify_log(kube, Path(state.folder) / "audit.jsonl",
                                   key=audit.hmac_key())
        if not check.ok:
            problems.append(f"{service}: audit log {check.status}: {check.problem}")
    return problems


def lease_problems(service: str, recorder: Recorder, steps: list[Step]) -> list[str]:
    """No lease held twice, for one service: from the Lease's every version in the server's
    order, and from what each step process said."""
    problems, holders, last = [], [], None
    for _, obj, _ in recorder.history("leases", rollout.lease_name(service)):
        spec = obj.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        before = ((last or {}).get("spec") or {}).get("holderIdentity") or ""
        if before and holder and holder != before:
            taken = rollout.parse_stamp(spec.get("acquireTime"))
            if not rollout.lease_expired(last, at=taken):
                problems.append(f"{service}: {holder} took the lease at "
                                f"{spec.get('acquireTime')} while {before} held it "
                                f"(renewed {last['spec'].get('renewTime')})")
        if holder and (not holders or holders[-1] != holder):
            holders.append(holder)
        last = obj
    twice = sorted(h for h, n in Counter(holders).items() if n > 1)
    if twice:
        problems.append(f"{service}: {', '.join(twice)} held the lease in separate stretches")
    mine = [s for s in steps if s.service == service]
    for step in mine:
        held = step.runner in holders
        if step.kind in ("acted", "not-due", "done") and not held:
            problems.append(f"tick {step.tick} {service}: {step.runner} {step.kind} without "
                            "ever holding the lease")
        if step.kind == "busy" and held:
            problems.append(f"tick {step.tick} {service}: {step.runner} said another runner "
                            "held the lease, yet held it")
        if step.kind == "error":
            tail = " | ".join(step.output.strip().splitlines()[-3:])
            problems.append(f"tick {step.tick} {service}: {step.runner} exited {step.code}: "
                            f"{tail}")
    problems += false_takeovers(service, recorder, mine)
    strangers = set(holders) - {s.runner for s in mine}
    if strangers:
        problems.append(f"{service}: unknown holders {sorted(strangers)}")
    return problems


def false_takeovers(service: str, recorder: Recorder, steps: list[Step]) -> list[str]:
    """Steps that stopped with "lease ... was taken over by another runner" although nobody
    else wrote the lease from their taking it to their exit."""
    found = []
    history = recorder.history("leases", rollout.lease_name(service))
    for step in steps:
        if TAKEN_OVER not in step.output:
            continue
        mine = [(arrived, obj) for _, obj, arrived in history
                if (obj.get("spec") or {}).get("holderIdentity") == step.runner]
        if not mine:
            continue
        others = [arrived for _, obj, arrived in history
                  if mine[0][0] <= arrived <= step.ended
                  and (obj.get("spec") or {}).get("holderIdentity") != step.runner]
        if not others:
            last = mine[-1][1]
            found.append(f"tick {step.tick} {service}: {step.runner} stopped: lease "
                         f"{TAKEN_OVER}, but nobody else wrote it; the server's last version "
                         f"(resourceVersion {last['metadata']['resourceVersion']}, renewed "
                         f"{last['spec'].get('renewTime')}) is the runner's own write")
    return found


def lease_overruns(service: str, recorder: Recorder) -> list[str]:
    """Writes by a holder after its lease had expired (it still acted, unrenewed): nobody
    else took the lease then, but another runner could have. Reported, not failed: timed by
    the watch's arrival, which lags the server a little."""
    found, last = [], None
    for _, obj, arrived in recorder.history("leases", rollout.lease_name(service)):
        before = ((last or {}).get("spec") or {}).get("holderIdentity")
        after = (obj.get("spec") or {}).get("holderIdentity")
        if before and after in (None, "", before) and rollout.lease_expired(
                last, at=datetime.fromtimestamp(arrived, UTC)):  # its renewal or release
            renewed = rollout.parse_stamp(last["spec"].get("renewTime"))
            late = arrived - renewed.timestamp() - last["spec"]["leaseDurationSeconds"]
            found.append(f"{service}: {before} wrote the lease {late:.1f}s after it expired "
                         f"(renewed {last['spec'].get('renewTime')}, "
                         f"{last['spec']['leaseDurationSeconds']}s)")
        last = obj
    return found


# ---------------------------------------------------------------- one N


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90 (nearest rank) and max, in seconds."""
    if not values:
        return {"p50": math.nan, "p90": math.nan, "max": math.nan}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    return {"p50": round(rank(0.5), 2), "p90": round(rank(0.9), 2), "max": round(ordered[-1], 2)}


def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """N services released together: figures and problems."""
    work = Path(tempfile.mkdtemp(prefix=f"canarykit-concurrency-{n}-", dir=args.keep))
    server = start_apiserver(work, args.tls)
    prometheus, prometheus_url = start_prometheus()
    api = config.new_client_from_config(config_file=str(server.kubeconfig))
    try:
        services = service_names(n)
        seed(api, services)
        plans = {s: write_plan(work, s, server.kubeconfig, prometheus_url, args.weights)
                 for s in services}
        kube = cluster.connect(str(server.kubeconfig), None, NAMESPACE)
        recorder = Recorder(server.kubeconfig)
        recorder.start()
        runners = 1 if args.no_second_runner else 2
        steps, ticks, requests = [], [], Counter()
        states = release_states(kube, services)
        load = os.getloadavg()[0]
        while not all(s is not None and s.done for s in states.values()):
            if len(ticks) >= args.max_ticks:
                break
            before, began = request_counts(api), time.monotonic()
            cpu, server_before = children_cpu(), server_cpu(server.process.pid)
            found = run_tick(len(ticks) + 1, plans, runners, args.lease_seconds, work / "logs",
                             args.max_parallel)
            wall = time.monotonic() - began
            cpu, server_used = children_cpu() - cpu, server_cpu(server.process.pid) - server_before
            counted = counts_between(before, request_counts(api))
            requests.update(counted)
            steps += found
            kinds = Counter(s.kind for s in found)
            ticks.append({"wall_s": round(wall, 2), "steps": len(found),
                          "requests": sum(counted.values()), "kinds": dict(kinds),
                          "steps_cpu_s": round(cpu, 2), "apiserver_cpu_s": round(server_used, 2),
                          "load_average": round(os.getloadavg()[0], 1)})
            print(f"  N={n} tick {len(ticks)}: {wall:.1f}s, {len(found)} steps "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}), "
                  f"{sum(counted.values())} requests, steps {cpu:.1f} CPU-s, API server "
                  f"{server_used:.2f} CPU-s, load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr, flush=True)
            states = release_states(kube, services)
        recorder.drain(api)
        problems, warnings = [], []
        if len(ticks) >= args.max_ticks and not all(s and s.done for s in states.values()):
            problems.append(f"not every release ended within {args.max_ticks} ticks")
        for service in services:
            problems += update_problems(service, kube, recorder, steps, states[service],
                                        args.weights)
            problems += lease_problems(service, recorder, steps)
            warnings += lease_overruns(service, recorder)
    finally:
        api.close()
        prometheus.shutdown()
        stop_process(server.process)
    total = sum(requests.values())
    acted = [s for s in steps if s.kind == "acted"]
    phases = sum(len(s.phases) for s in steps)
    steps_cpu = sum(t["steps_cpu_s"] for t in ticks)
    server_used = sum(t["apiserver_cpu_s"] for t in ticks)
    result = {
        "services": n, "runners_per_service": runners, "max_parallel": args.max_parallel,
        "ticks": len(ticks),
        "tick_wall_s": percentiles([t["wall_s"] for t in ticks]),
        "step_s": percentiles([s.seconds for s in steps]),
        "acting_step_s": percentiles([s.seconds for s in acted]),
        "steps": len(steps), "phases": phases,
        "step_kinds": dict(Counter(s.kind for s in steps)),
        "step_cpu_s_mean": round(steps_cpu / max(len(steps), 1), 2),
        "apiserver_cpu_s": round(server_used, 2),
        "apiserver_cpu_ms_per_request": round(1000 * server_used / max(total, 1), 2),
        "load_average": {"before": round(load, 1),
                         "ticks_max": max((t["load_average"] for t in ticks), default=None)},
        "requests": total, "requests_per_step": round(total / max(len(steps), 1), 1),
        "requests_per_phase": round(total / max(phases, 1), 1),
        "requests_by_kind": {" ".join(map(str, key)): count
                             for key, count in sorted(requests.items(), key=str)},
        "lease_conflicts": sum(c for (verb, res, _, code), c in requests.items()
                               if res == "leases" and code == 409),
        "per_tick": ticks, "problems": problems, "warnings": warnings, "ok": not problems,
        "work": str(work),
    }
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
        result["work"] = None
    return result


# ---------------------------------------------------------------- output


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'N':>3} {'runs':>4} {'K':>3} {'ticks':>5} {'tick wall p50/max s':>19} "
            f"{'step p50/p90/max s':>18} {'acting p50/p90/max s':>20} {'step CPU s':>10} "
            f"{'req/step':>8} {'req/phase':>9} {'srv ms/req':>10} {'409 lease':>9}  checks")
    lines = [head, "-" * len(head)]
    for r in results:
        tick, step, acting = r["tick_wall_s"], r["step_s"], r["acting_step_s"]
        lines.append(
            f"{r['services']:>3} {r['runners_per_service']:>4} {r['max_parallel'] or 'all':>3} "
            f"{r['ticks']:>5} "
            f"{tick['p50']:>9.1f}/{tick['max']:<9.1f} "
            f"{step['p50']:>6.1f}/{step['p90']:.1f}/{step['max']:<5.1f} "
            f"{acting['p50']:>8.1f}/{acting['p90']:.1f}/{acting['max']:<5.1f} "
            f"{r['step_cpu_s_mean']:>10.2f} "
            f"{r['requests_per_step']:>8.1f} {r['requests_per_phase']:>9.1f} "
            f"{r['apiserver_cpu_ms_per_request']:>10.2f} "
            f"{r['lease_conflicts']:>9}  {'ok' if r['ok'] else 'FAILED'}")
    return "\n".join(lines)


def parse_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be whole numbers separated by commas: "
                                         f"{text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be whole numbers above 0: {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=parse_list, default=[1, 10, 50], metavar="N,N",
                        help="how many services roll out together, one measurement each "
                        "(default 1,10,50)")
    parser.add_argument("--no-second-runner", action="store_true",
                        help="one `rollout step` per service per tick (default: two, racing "
                        "for the lease)")
    parser.add_argument("--weights", type=parse_list, default=[10, 50], metavar="W,W",
                        help="the plans' canary weights before promote (default 10,50)")
    parser.add_argument("--lease-seconds", type=int, default=rollout.DEFAULT_LEASE_SECONDS,
                        help="the runners' --lease-seconds (default: the driver's)")
    parser.add_argument("--max-parallel", type=int, default=None, metavar="K",
                        help="at most K step processes at once, as a cluster's nodes bound "
                        "how many pods run (default: all of a tick's at once)")
    parser.add_argument("--max-ticks", type=int, default=20,
                        help="give up (a failed check) after this many ticks")
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                        help="the API server serves HTTPS, as a cluster does (default on)")
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="write the JSON figures here too")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep each run's folder (plans, logs, reports) under DIR")
    args = parser.parse_args(argv)
    if max(args.weights) >= 100:
        parser.error("--weights must be below 100 (promote sends the rest)")
    command = shlex.join(["python", "benchmarks/concurrency.py", *(argv or sys.argv[1:])])
    results = []
    for n in args.services:
        print(f"N={n}: {n} services, {1 if args.no_second_runner else 2} runners each",
              file=sys.stderr, flush=True)
        results.append(measure(n, args))
    ok = all(r["ok"] for r in results)
    document = json.dumps({"command": command, "cores": os.cpu_count(), "results": results,
                           "ok": ok}, indent=2)
    if args.json:
        args.json.write_text(document + "\n")
    if args.output == "json":
        print(document)
    else:
        print()
        print(table(results))
        for r in results:
            if r["warnings"]:
                print(f"  N={r['services']}: {len(r['warnings'])} lease writes by a holder "
                      "after its lease had expired (--json lists them), e.g.")
            for warning in r["warnings"][:3]:
                print(f"    {warning}")
            for problem in r["problems"][:20]:
                print(f"  N={r['services']}: {problem}")
            if len(r["problems"]) > 20:
                print(f"  N={r['services']}: ... and {len(r['problems']) - 20} more problems")
        print(f"\n{'all checks passed' if ok else 'CHECKS FAILED'}    ({command})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
