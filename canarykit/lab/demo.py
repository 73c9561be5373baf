"""The main job: three complete canary releases of `reviews` against the local lab.

1. A healthy v2 goes through `canarykit rollout run` (preflight, internal users, 10 %,
   25 %, 50 %, a person's approval, promote) and ends promoted; the demo approves it with
   `canarykit rollout approve` once the release waits for it.
2. The lab is reset and v2 is rolled out again, this time in scheduled mode
   (`canarykit rollout step`, one phase per call, as cron would run it). Once v2 holds
   25 % of the traffic it turns bad (5xx and latency); the analysis FAILs and the
   driver rolls back by itself.
3. The lab restarts with the service routed by a Gateway API HTTPRoute instead of a
   VirtualService (`canarykit lab up --router gateway-api`: versions are the Services
   reviews-v1 and reviews-v2), and a healthy v2 goes through `rollout run` (preflight,
   internal users by header, 10 %, 25 %, 50 %, promote) with the same runbooks and report.

Each release leaves a folder of executed notebooks, its audit chain and an HTML report. Both
announce what they do to a signed webhook channel, a receiver the demo starts on a loopback
port; the demo prints the messages it got.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import yaml

from canarykit.cluster import client as cluster
from canarykit.lab import processes as lab
from canarykit.lab.receiver import Receiver
from canarykit.rollout import driver as rollout

EVENTS_URL_ENV, EVENTS_SECRET_ENV = "CANARYKIT_DEMO_EVENTS_URL", "CANARYKIT_DEMO_EVENTS_SECRET"

PLAN = {
    "service": "reviews",
    "namespace": "default",
    "stable": "v1",
    "canary": "v2",
    "pause": "0s",
    "preflight": {"baseline_window": "20s", "min_baseline_success_rate": 99},
    "inconclusive": {"hold_steps": 2, "then": "rollback"},
    "analysis": {
        "window": "20s",
        "interval": "5s",
        "check_every": "5s",
        "max_duration": "60s",
        "min_success_rate": 99,
        "max_p99_ms": 500,
        "min_requests": 50,
        "judges": ["success-rate", "latency", "sequential"],
    },
    "steps": [
        {"internal-canary": {}},
        {"weight": 10},
        {"weight": 25},
        {"weight": 50},
        {"approve": {"timeout": "5m", "check_every": "2s"}},
        {"promote": {}},
    ],
    "notifications": [{"kind": "webhook", "name": "demo-events", "url_env": EVENTS_URL_ENV,
                       "secret_env": EVENTS_SECRET_ENV}],
}
BAD_V2 = {"error_rate": 0.25, "latency_median_ms": 400.0}
# Release 3: the same plan for the lab routed by an HTTPRoute, without the approval step.
GATEWAY_PLAN = {
    **PLAN, "router": "gateway-api", "stable": "reviews-v1", "canary": "reviews-v2",
    "steps": [{"internal-canary": {"header": "x-canary-user", "header_value": "true"}},
              {"weight": 10}, {"weight": 25}, {"weight": 50}, {"promote": {}}],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="where releases land")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="lab load, requests/s (default 100)"
    )


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _write_plan(path: Path, reports: Path, state: lab.LabState,
                base: dict | None = None) -> Path:
    """The plan names the lab's kubeconfig and Prometheus: nothing finds the lab by itself."""
    plan = {**(base or PLAN), "kubeconfig": state.kubeconfig,
            "prometheus": {"url": state.prometheus_url}, "reports": str(reports.resolve())}
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def _releases(reports: Path) -> set[Path]:
    return {p for p in (reports / "reviews").glob("*") if (p / "release.json").exists()}


def _canary_weight(kubeconfig: str) -> int | None:
    routes = cluster.status(cluster.connect(kubeconfig), "reviews").routes
    for destination in routes[-1].destinations:
        if destination.subset == "v2":
            return destination.weight
    return None


def _healthy_release(plan: Path, state: lab.LabState) -> int:
    _say("release 1: a healthy v2, the whole plan in one process (canarykit rollout run)")
    approver = threading.Thread(target=_approve_when_asked, args=(plan, state), daemon=True)
    approver.start()
    code = rollout.main(["run", str(plan)])
    approver.join(5)
    return code


def _approve_when_asked(plan: Path, state: lab.LabState) -> None:
    """The person in the loop: approve once the release waits at its approve step."""
    kube = cluster.connect(state.kubeconfig, None, "default")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        waiting = rollout.lease_state(rollout.read_lease(kube, "reviews"))
        if waiting is not None and waiting.waiting and not waiting.done:
            _say("the release waits for approval: canarykit rollout approve PLAN")
            rollout.main(["approve", str(plan), "--reason", "demo: dashboards look fine"])
            return
        time.sleep(1)


def _show_messages(receiver: Receiver) -> None:
    for signed, message in receiver.messages:
        if not isinstance(message, dict):
            continue
        reason = message.get("reason") or ""
        _say(f"message {'(signed)' if signed else '(BAD SIGNATURE)'}: {message.get('kind')} "
             f"{message.get('release')} {message.get('phase') or ''} "
             f"{message.get('verdict') or ''} {reason[:100]}".rstrip())


def _bad_release(plan: Path, state: lab.LabState, reports: Path) -> int:
    _say("release 2: v2 again, one phase per call (canarykit rollout step), as a scheduler would")
    earlier, turned_bad = _releases(reports), False
    for call in range(60):
        rollout.main(["step", str(plan), *(["--new-release"] if call == 0 else [])])
        folder = max(_releases(reports) - earlier, key=lambda p: p.stat().st_mtime, default=None)
        status = json.loads((folder / "release.json").read_text())["status"] if folder else ""
        if status and status != "in-progress":
            return 0 if status == "rolled-back" else 1
        if not turned_bad and _canary_weight(state.kubeconfig) == 25:
            lab.set_behaviour(state, "v2", **BAD_V2)
            turned_bad = True
            _say("v2 now answers 25 % of requests with 503 and a 400 ms median latency")
    return 1


def _gateway_release(tmp: Path, reports: Path, rate: float) -> int:
    data_dir = tmp / "gateway-lab"
    state = lab.up(lab.LabConfig(data_dir=str(data_dir), rate=rate, router="gateway-api"))
    _say(f"lab up again, reviews routed by HTTPRoute default/reviews (Gateway API): Envoy "
         f"{state.envoy_url}")
    try:
        _say("release 3: a healthy v2 behind the HTTPRoute (canarykit rollout run)")
        time.sleep(5)  # a baseline for preflight: requests to reviews-v1, scraped
        plan = _write_plan(tmp / "gateway-plan.yaml", reports, state, GATEWAY_PLAN)
        return rollout.main(["run", str(plan)])
    finally:
        stopped = lab.down(data_dir)
        _say(f"lab down: {len(stopped)} processes stopped")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    reports = args.reports.resolve()
    before = _releases(reports)
    with tempfile.TemporaryDirectory(prefix="canarykit-demo-") as tmp, Receiver() as receiver:
        os.environ[EVENTS_URL_ENV], os.environ[EVENTS_SECRET_ENV] = receiver.url, receiver.secret
        data_dir = Path(tmp) / "lab"
        state = lab.up(lab.LabConfig(data_dir=str(data_dir), rate=args.rate))
        _say(f"lab up: Envoy {state.envoy_url}, Prometheus {state.prometheus_url}; release "
             f"messages go to {receiver.url}")
        try:
            plan = _write_plan(Path(tmp) / "plan.yaml", reports, state)
            first = _healthy_release(plan, state)
            lab.reset(state)
            second = _bad_release(plan, state, reports)
        finally:
            stopped = lab.down(data_dir)
            _say(f"lab down: {len(stopped)} processes stopped")
        third = _gateway_release(Path(tmp), reports, args.rate)
        _show_messages(receiver)
    new = sorted(_releases(reports) - before, key=lambda p: p.stat().st_mtime)
    for folder in new:
        print(f"report: {folder}")
        print(f"report: {folder / 'report.html'}")
    _say(f"finished in {time.monotonic() - started:.0f} s (exit codes {first}, {second}, "
         f"{third})")
    return 0 if (first, second, third, len(new)) == (0, 0, 0, 3) else 1
