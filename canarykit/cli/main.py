"""The `canarykit` command: argument parsing and dispatch; the work happens in the modules."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from canarykit import __version__
from canarykit.core.errors import CanaryKitError, ExitCode, exit_code_for


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 0 to 100 (got {text!r})"
        ) from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 100 (got {value})")
    return value


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="SERVICE", help="the service (VirtualService host)")
    parser.add_argument(
        "-n", "--namespace", help="namespace (default: the context's, else default)"
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )
    parser.add_argument(
        "--audit-log",
        type=Path,
        help="audit log (default: $CANARYKIT_AUDIT_LOG or reports/audit.jsonl)",
    )
    parser.add_argument("--output", choices=("text", "json"), default="text")


# Commands whose arguments and work live in a module: (module, help). The module is imported
# only when its command is the one being run, so `--help` and `--version` load nothing heavy.
MODULE_COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("canarykit.mesh.validate",
                 "check Istio YAML files offline, like istioctl analyze"),
    "analyze": ("canarykit.analysis.step", "judge the canary against the stable version"),
    "replay": ("canarykit.analysis.replay",
               "judge recorded per-interval counts offline, as if checking at every row"),
    "rollout": ("canarykit.rollout.driver",
                "run a rollout plan: run, step, status, abort, promote"),
    "report": ("canarykit.rollout.report", "release reports: build"),
    "notify": ("canarykit.notify.cli", "notifications: send a test to every channel of a plan"),
}
# Optional parts (the lab) offer commands the same way through this entry-point group, so the
# product never imports them.
COMMANDS_ENTRY_POINT = "canarykit.commands"
CLUSTER_COMMANDS: dict[str, str] = {
    "status": "show routes, weights, subsets and the rollout",
    "weight": "set the canary's share of traffic",
    "rollback": "restore the traffic as it was before the rollout",
}
ORDER = ("validate", "analyze", "replay", "status", "weight", "rollback", "audit", "rollout",
         "report", "notify")
ALL = "*"


def plugin_commands() -> dict[str, tuple[str, str]]:
    """Commands of installed optional parts: name -> (module, help). A part that fails to load
    is skipped with a warning, so it cannot break every other command."""
    from importlib.metadata import entry_points

    found: dict[str, tuple[str, str]] = {}
    for entry in entry_points(group=COMMANDS_ENTRY_POINT):
        try:
            commands = dict(entry.load())
        except Exception as exc:  # a broken or half-installed plugin, whatever it raises
            problem = " ".join(str(exc).split()) or type(exc).__name__
            print(f"canarykit: warning: skipping the commands of {entry.name} ({entry.value}): "
                  f"{problem}", file=sys.stderr)
            continue
        found.update(commands)
    return found


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (its first word), if any."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def _add_cluster_command(name: str, parser: argparse.ArgumentParser) -> None:
    _add_cluster_arguments(parser)
    if name == "weight":
        parser.add_argument(
            "--canary", type=_percent, required=True, metavar="N", help="canary weight 0..100"
        )
        parser.add_argument("--stable-subset", default="v1", help="stable subset (default v1)")
        parser.add_argument("--canary-subset", default="v2", help="canary subset (default v2)")
        parser.add_argument("--route", help="name of the http route holding the split")
    if name in ("weight", "rollback"):
        parser.add_argument(
            "--dry-run", action="store_true", help="ask the server, change nothing"
        )
    parser.set_defaults(handler={"status": run_status, "weight": run_weight,
                                 "rollback": run_rollback}[name])


def _add_audit_command(parser: argparse.ArgumentParser) -> None:
    audit_commands = parser.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_commands.add_parser("verify", help="check the hash chain of an audit log")
    verify.add_argument(
        "path", type=Path, metavar="PATH", help="audit log file, or a folder holding audit.jsonl"
    )
    verify.set_defaults(handler=run_audit_verify)


def build_parser(command: str | None = ALL) -> argparse.ArgumentParser:
    """The parser; only `command`'s arguments are set up (ALL: every command's)."""
    parser = argparse.ArgumentParser(
        prog="canarykit", description="Istio canary releases as auditable, scheduled notebooks."
    )
    parser.add_argument("--version", action="version", version=f"canarykit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {**MODULE_COMMANDS, **plugin_commands()}
    for name in (*ORDER, *sorted(set(modules) - set(ORDER))):
        if name in modules:
            module, text = modules[name]
        else:
            text = CLUSTER_COMMANDS.get(name, "audit log tools")
        sub = commands.add_parser(name, help=text, description=text)
        if command not in (ALL, name):
            continue
        if name in modules:
            importlib.import_module(module).add_arguments(sub)
            sub.set_defaults(module=module)
        elif name == "audit":
            _add_audit_command(sub)
        else:
            _add_cluster_command(name, sub)
    return parser


def _connect(args: argparse.Namespace):
    from canarykit.cluster import client as cluster

    return cluster.connect(args.kubeconfig, args.context, args.namespace)


def _print_changes(applied: list[Any], args: argparse.Namespace) -> None:
    if args.output == "json":
        print(json.dumps([a.to_dict() for a in applied], indent=2))
        return
    for item in applied:
        ref = item.change.to_dict().get("target", "")
        if not item.change.changed:
            print(f"{ref}: already as asked, nothing to change")
            continue
        print(item.change.diff())
        verb = "would change (server dry run, nothing written)" if item.dry_run else "changed"
        print(f"{ref}: {verb}")


def run_status(args: argparse.Namespace) -> int:
    from canarykit.cluster import client as cluster

    report = cluster.status(_connect(args), args.service)
    if args.output == "json":
        print(json.dumps(report.to_dict(), indent=2))
        return ExitCode.OK
    print(f"service {report.service} in {report.namespace} ({report.server})")
    print(f"VirtualService {report.virtual_service}  DestinationRule {report.destination_rule}")
    print("subsets: " + ", ".join(f"{s.name} {s.labels}" for s in report.subsets))
    for route in report.routes:
        split = ", ".join(
            f"{d.subset or '-'}={d.weight if d.weight is not None else 100}"
            for d in route.destinations
        )
        match = " (match)" if route.match else ""
        print(f"  http[{route.index}] {route.name or '(unnamed)'}{match}: {split}")
    rollout = report.rollout
    if rollout:
        print(
            f"rollout {rollout.release}: {rollout.canary} over {rollout.stable}, "
            f"phase {rollout.phase}, step {rollout.step}, since {rollout.started_at}"
        )
    else:
        print("no rollout in progress")
    return ExitCode.OK


def run_weight(args: argparse.Namespace) -> int:
    from canarykit.cluster import client as cluster

    applied = cluster.set_weight(
        _connect(args),
        args.service,
        args.canary,
        stable=args.stable_subset,
        canary=args.canary_subset,
        route=args.route,
        dry_run=args.dry_run,
        audit_log=args.audit_log,
    )
    _print_changes([applied], args)
    return ExitCode.OK


def run_rollback(args: argparse.Namespace) -> int:
    from canarykit.cluster import client as cluster

    applied = cluster.rollback(
        _connect(args), args.service, dry_run=args.dry_run, audit_log=args.audit_log
    )
    _print_changes(applied, args)
    return ExitCode.OK


def run_audit_verify(args: argparse.Namespace) -> int:
    from canarykit.cluster import audit

    path = args.path / "audit.jsonl" if args.path.is_dir() else args.path
    check = audit.verify_chain(path)
    if check.ok:
        print(f"{path}: audit chain intact, {check.records} records, head {check.head[:16]}")
        return ExitCode.OK
    print(f"{path}: audit chain BROKEN: {check.problem}", file=sys.stderr)
    return ExitCode.FAILED


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # parsing too: a command's arguments may come from a module that cannot load
        args = build_parser(_command_of(argv)).parse_args(argv)
        if hasattr(args, "module"):
            return int(importlib.import_module(args.module).run(args))
        return int(args.handler(args))
    except (CanaryKitError, KeyboardInterrupt) as exc:
        if not isinstance(exc, KeyboardInterrupt):
            print(f"canarykit: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
