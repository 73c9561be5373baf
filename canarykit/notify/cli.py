"""`canarykit notify test PLAN`: check every notification channel of a plan before a release
needs it, by sending each one a `test` event. Nothing else is touched: no cluster, no
Prometheus, no delivery log."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from canarykit.core import times
from canarykit.core.errors import BadInput, ExitCode
from canarykit.notify.channels import Delivery, Event, Target, deliver, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`canarykit notify test PLAN`."""
    commands = parser.add_subparsers(dest="notify_command", required=True, metavar="COMMAND")
    test = commands.add_parser(
        "test", help="send a test notification to every channel of a plan",
        description="Send a test notification to every channel of a plan's notifications and "
                    "say how each went (exit 0 when all were delivered, 1 otherwise).")
    test.add_argument("plan", type=Path, metavar="PLAN", help="the rollout plan (YAML)")
    test.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                      help="bound on each try to reach a channel (default 5)")


def probe_event(service: str, namespace: str, release: str) -> Event:
    """The `test` event: it reaches every channel whatever its `events` say."""
    now = times.timestamp()
    return Event(kind="test", service=service, namespace=namespace,
                 release=release or "notify-test", phase="notify-test",
                 reason="canarykit notify test: this channel is set up correctly",
                 at=now, key=f"notify-test/{times.compact()}")


def send_probes(targets: list[Target], event: Event, timeout: float) -> list[Delivery]:
    """Deliver `event` to every target at once, so one slow channel does not hold the rest."""
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        return list(pool.map(lambda target: deliver(target, event, timeout=timeout), targets))


def run(args: argparse.Namespace) -> int:
    """0 when every channel got the test, 1 when one did not, 2 on a bad plan."""
    from canarykit.rollout.plan import load_plan

    try:
        plan = load_plan(args.plan)
        if not plan.notifications:
            raise BadInput("notifications", [], "lists no channel to test")
        targets = [resolve(channel) for channel in plan.notifications]
    except BadInput as exc:
        print(f"canarykit notify: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    event = probe_event(plan.service, plan.namespace, plan.release)
    deliveries = send_probes(targets, event, args.timeout)
    for target, delivery in zip(targets, deliveries, strict=True):
        tries = f"{delivery.attempts} attempt{'s' if delivery.attempts != 1 else ''}"
        outcome = (f"delivered in {delivery.seconds:.2f}s" if delivery.ok
                   else f"FAILED: {delivery.error} ({tries})")
        print(f"{target.describe()}: {outcome}")
    failed = sum(not delivery.ok for delivery in deliveries)
    print(f"{len(deliveries) - failed} of {len(deliveries)} channels got the test notification")
    return ExitCode.FAILED if failed else ExitCode.OK
